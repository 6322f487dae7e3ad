"""One training-loop contender in a fresh process, for paired A/B runs of whole processes.

    python bench/loop_pair.py CONTENDER [--model mlp|transformer] [--iterations 60]

Runs the training-loop suite's model and contender (bench/training_loop.py) for BURN_IN + N
iterations and prints one line: the median fwd+bwd and step times of the last N, in ms.  Run two
contenders in turn (A B A B ...) and compare the printed medians pair by pair: the user's own
fwd+bwd under each optimizer, measured close together in time on a noisy machine.
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import training_loop as tl  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("contender", choices=list(tl.CONTENDERS))
    parser.add_argument("--model", choices=["mlp", "transformer"], default="mlp")
    parser.add_argument("--iterations", type=int, default=60)
    args = parser.parse_args()
    model = next(m for name, m in tl.MODELS.items() if name.startswith(args.model))()
    trained = tl.CONTENDERS[args.contender](model)
    fwd_bwd, step = [], []
    for k in range(tl.BURN_IN + args.iterations):
        model_seconds, step_seconds = tl.timed_iteration(trained)
        if k >= tl.BURN_IN:
            fwd_bwd.append(model_seconds)
            step.append(step_seconds)
    print(f"{args.contender} | {args.model} | fwd+bwd {statistics.median(fwd_bwd) * 1e3:.3f} ms"
          f" | step {statistics.median(step) * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
