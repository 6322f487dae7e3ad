"""Low-precision state inside the training loop: Adam over FlatParams with float32, bfloat16 and
int8 state, interleaved iteration by iteration in one process (issue 14's speed targets were
measured on back-to-back steps; this is the loop users run).

    python bench/lowp_loop.py [--model mlp|transformer] [--iterations 40] [--busy]

Each round runs one iteration of every contender (the training-loop suite's NumPy fwd+bwd into
fresh grads, then the step), after BURN_IN rounds; the medians of the step time and of the whole
iteration are compared with float32 state's.  ``--busy`` starts one CPU-bound background process
(as the suite's busy load) for the run.
"""
import argparse
import contextlib
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import training_loop as tl  # noqa: E402

CONTENDERS = ("numba_opt FlatParams", *tl.LOW_PRECISION)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["mlp", "transformer"], default="mlp")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--busy", action="store_true", help="beside one CPU-bound process")
    args = parser.parse_args()
    model = next(m for name, m in tl.MODELS.items() if name.startswith(args.model))
    trained = {name: tl.CONTENDERS[name](model()) for name in CONTENDERS}
    times = {name: ([], []) for name in CONTENDERS}  # (step, whole iteration) seconds
    load = tl.BusyLoad()
    others = tl.OtherLoad(load)
    with load if args.busy else contextlib.nullcontext():
        others.start()
        for k in range(tl.BURN_IN + args.iterations):
            for name, contender in trained.items():
                model_seconds, step_seconds = tl.timed_iteration(contender)
                if k >= tl.BURN_IN:
                    times[name][0].append(step_seconds)
                    times[name][1].append(model_seconds + step_seconds)
        other_cores = others.stop()
    base_step, base_iteration = (statistics.median(t) for t in times[CONTENDERS[0]])
    print(f"{args.model}, {'busy' if args.busy else 'idle'}, medians of {args.iterations} "
          f"interleaved iterations (other processes kept {other_cores or 0:.1f} cores busy):")
    print(f"{'':40s} {'step ms':>8s} {'vs f32':>7s} {'iter ms':>8s} {'vs f32':>7s}")
    for name in CONTENDERS:
        step, iteration = (statistics.median(t) for t in times[name])
        print(f"{name:40s} {step * 1e3:8.2f} {base_step / step:6.2f}x {iteration * 1e3:8.2f} "
              f"{base_iteration / iteration:6.2f}x")


if __name__ == "__main__":
    main()
