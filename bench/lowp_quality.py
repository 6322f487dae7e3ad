"""Does low-precision optimizer state train as well as float32 state?  (issue 14's quality targets)

    python bench/lowp_quality.py [--quick] [--seeds 3] [--out DIR]

Two tasks, each trained from the same initial weights on the same mini-batches for every storage
of the optimizer, over several seeds:

- **digits MLP** (numba_opt/examples/mlp.py's model and data, 64-128-10, so its first weight has
  8,192 elements, above the 4,096 under which int8 state stays float32), Adam and AdamW with
  examples/mlp.py's settings, 30 epochs of batch 64: final training loss (the whole training set,
  after the last step) and test accuracy;
- **synthetic regression**: a linear map of 256 features to 64 outputs (a 16,384-element weight
  and a bias) learnt with Adam from fresh noisy mini-batches (feature scales spread over a factor
  10, so Adam's second moments matter), 6,000 steps with a cosine learning-rate decay: the
  expected loss over the data distribution, computed exactly from the weights (no sampling noise).

Storages: float32 state (the reference), ``state_dtype="bfloat16"``, ``state_dtype="int8"``
(when numba_opt has it), bfloat16 params with bfloat16 state, and the same with float32 master
weights (``master_weights=True``), and bfloat16 state, then bfloat16 params and state without
master weights, rounded stochastically (``stochastic_rounding=True``).  The model's forward and
backward run in float32; with bfloat16 params they run on a float32 copy of the params refreshed
from the bfloat16 params after every step, and the float32 grads are rounded to bfloat16 for the
optimizer.  Targets: every low-precision storage's final loss within 2% of float32 state's (mean
over the seeds; lower is fine) and its test accuracy within 1 point.  Writes results.json,
results.md and loss_curves.png under --out (bench/results/low-precision-quality).
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numba_opt as nopt  # noqa: E402
from numba_opt import _codecs, lr_scheduler  # noqa: E402
from numba_opt.examples import mlp  # noqa: E402

# label -> (dtype of the params the optimizer updates, optimizer options)
STORAGES = {
    "float32": ("float32", {}),
    "bfloat16 state": ("float32", dict(state_dtype="bfloat16")),
    "int8 state": ("float32", dict(state_dtype="int8")),
    "bfloat16 params+state": ("bfloat16", {}),
    "bfloat16 params+state, float32 master": ("bfloat16", dict(master_weights=True,
                                                                state_dtype="bfloat16")),
    "bfloat16 state, stochastic rounding": ("float32", dict(state_dtype="bfloat16",
                                                             stochastic_rounding=True)),
    "bfloat16 params+state, stochastic rounding": ("bfloat16", dict(stochastic_rounding=True)),
}
REFERENCE = "float32"
LOSS_TOLERANCE, ACCURACY_POINTS = 0.02, 1.0  # the targets
SETTINGS = dict(epochs=30, hidden=128, steps=6000, seeds=3)
QUICK = dict(epochs=8, hidden=128, steps=1500, seeds=2)

# the synthetic regression task
FEATURES, OUTPUTS, BATCH, NOISE, REGRESSION_LR = 256, 64, 64, 0.1, 1e-3


def storages():
    """The storages this numba_opt offers; int8 state only where ``_codecs`` lists it."""
    names = [name for name, (_, options) in STORAGES.items()
             if options.get("state_dtype", "float32") in _codecs.STATE_DTYPES]
    for name in STORAGES.keys() - set(names):
        print(f"note: {name!r} skipped: state_dtype {STORAGES[name][1]['state_dtype']!r} is not "
              f"in this numba_opt's STATE_DTYPES {_codecs.STATE_DTYPES}")
    return names


class Stepper:
    """One storage's optimizer over float32 compute arrays ``params`` with float32 ``grads``.
    On float32 storage it updates ``params`` itself; on bfloat16 storage it updates bfloat16
    copies of them (rounded from their initial values), writes them back into ``params`` after
    every step, and takes the grads rounded to bfloat16."""

    def __init__(self, optimizer, settings, storage, params, grads):
        dtype, options = STORAGES[storage]
        self.params, self.grads = params, grads
        if dtype == "float32":
            self.stored, self.stored_grads = params, grads
        else:
            self.stored = [p.astype(_codecs.BFLOAT16) for p in params]
            self.stored_grads = [np.empty_like(p) for p in self.stored]
            self._refresh()
        self.optimizer = getattr(nopt, optimizer)(self.stored, **settings, **options)

    def _refresh(self):
        if self.stored is not self.params:
            for param, stored in zip(self.params, self.stored):
                param[...] = stored

    def step(self):
        if self.stored_grads is not self.grads:
            for stored, grad in zip(self.stored_grads, self.grads):
                stored[...] = grad  # rounded to nearest, ties to even (ml_dtypes' cast)
        self.optimizer.step(self.stored_grads)
        self._refresh()


# ------------------------------------------------------------------------------- digits MLP
def train_mlp(optimizer, storage, seed, data, epochs, hidden, batch=64, max_steps=None):
    """{'history': mean mini-batch loss per epoch, 'loss': final loss on the whole training set,
    'accuracy': test accuracy, 'steps', 'seconds'} of examples/mlp.py's MLP (the same initial
    weights and mini-batches for every storage of one seed)."""
    (x, y), (xt, yt) = data
    model = mlp.MLP(x.shape[1], hidden, 10, seed)
    _, settings = mlp.OPTIMIZERS[optimizer]
    stepper = Stepper(optimizer, settings, storage, model.flat.params, model.flat.grads)
    rng = np.random.default_rng(seed + 1)
    history, steps, start = [], 0, time.perf_counter()
    for _ in range(epochs):
        order, losses = rng.permutation(len(x)), []
        for i in range(0, len(x), batch):
            losses.append(model.loss_and_grads(x[order[i:i + batch]], y[order[i:i + batch]]))
            stepper.step()
            steps += 1
            if steps == max_steps:
                break
        history.append(float(np.mean(losses)))
        if steps == max_steps:
            break
    return dict(history=history, loss=model.loss_and_grads(x, y),
                accuracy=float((model.logits(xt).argmax(axis=1) == yt).mean()), steps=steps,
                seconds=time.perf_counter() - start)


# --------------------------------------------------------------------- synthetic regression
def regression_problem(seed):
    """(the true weight and bias, the features' scales): y = (z * scales) @ W + b + noise."""
    rng = np.random.default_rng(10_000 + seed)
    weight = (rng.standard_normal((FEATURES, OUTPUTS)) / np.sqrt(FEATURES)).astype(np.float32)
    bias = rng.standard_normal(OUTPUTS).astype(np.float32)
    scales = np.geomspace(1.0, 0.1, FEATURES).astype(np.float32)
    return weight, bias, scales


def expected_loss(weight, bias, problem):
    """E[0.5 * mean over outputs of (prediction - y)^2] over the data distribution (z standard
    normal): 0.5 / outputs * (sum of (scale * weight error)^2 + |bias error|^2) + 0.5 noise^2."""
    true_weight, true_bias, scales = problem
    dw = (weight - true_weight).astype(np.float64) * scales[:, None]
    db = (bias - true_bias).astype(np.float64)
    return float(0.5 * ((dw ** 2).sum() + (db ** 2).sum()) / OUTPUTS + 0.5 * NOISE ** 2)


def train_regression(storage, seed, steps, every=None):
    """{'history': [(step, expected loss)], 'loss': the expected loss after the last step,
    'steps', 'seconds'}: Adam (lr decayed by a cosine to 0) on fresh noisy mini-batches, the
    same for every storage of one seed."""
    problem = regression_problem(seed)
    true_weight, true_bias, scales = problem
    weight, bias = np.zeros((FEATURES, OUTPUTS), np.float32), np.zeros(OUTPUTS, np.float32)
    grad_weight, grad_bias = np.empty_like(weight), np.empty_like(bias)
    stepper = Stepper("Adam", dict(lr=REGRESSION_LR), storage, [weight, bias],
                      [grad_weight, grad_bias])
    schedule = lr_scheduler.CosineAnnealingLR(stepper.optimizer, T_max=steps)
    rng = np.random.default_rng(seed + 1)
    every = every or max(1, steps // 100)
    history, start = [(0, expected_loss(weight, bias, problem))], time.perf_counter()
    for step in range(1, steps + 1):
        x = rng.standard_normal((BATCH, FEATURES), np.float32) * scales
        y = x @ true_weight + true_bias + NOISE * rng.standard_normal((BATCH, OUTPUTS),
                                                                      np.float32)
        err = (x @ weight + bias - y) / np.float32(BATCH * OUTPUTS)  # d(0.5 mean err^2)/d pred
        np.matmul(x.T, err, out=grad_weight)
        grad_bias[...] = err.sum(axis=0)
        stepper.step()
        schedule.step()
        if step % every == 0 or step == steps:
            history.append((step, expected_loss(weight, bias, problem)))
    return dict(history=history, loss=history[-1][1], steps=steps,
                seconds=time.perf_counter() - start)


# ------------------------------------------------------------------------------ experiment
def run(seeds, epochs, hidden, steps, names=None, max_steps=None, say=print):
    """Every task x storage x seed: {'settings', 'tasks': {task: {storage: [one dict per seed]}}}.
    ``max_steps`` cuts each MLP run short (for tests)."""
    names = names or storages()
    tasks = {f"digits MLP, {opt}": opt for opt in ("Adam", "AdamW")}
    tasks["regression 256->64, Adam"] = None
    total, done = len(tasks) * len(names) * len(seeds), 0
    results = {task: {name: [] for name in names} for task in tasks}
    for seed in seeds:
        data = mlp.load_digits(seed)
        for task, optimizer in tasks.items():
            for name in names:
                if optimizer is None:
                    result = train_regression(name, seed, steps)
                else:
                    result = train_mlp(optimizer, name, seed, data, epochs, hidden,
                                       max_steps=max_steps)
                results[task][name].append(dict(result, seed=seed))
                done += 1
                accuracy = f", test accuracy {result['accuracy']:.3f}" if optimizer else ""
                say(f"[{done}/{total}] {task} | {name} | seed {seed}: final loss "
                    f"{result['loss']:.5g}{accuracy} ({result['steps']} steps, "
                    f"{result['seconds']:.1f} s)")
    return dict(settings=dict(seeds=list(seeds), epochs=epochs, hidden=hidden,
                              regression_steps=steps, regression_lr=REGRESSION_LR,
                              mlp_optimizers={o: mlp.OPTIMIZERS[o][1] for o in ("Adam", "AdamW")},
                              storages={n: STORAGES[n] for n in names},
                              loss_tolerance=LOSS_TOLERANCE, accuracy_points=ACCURACY_POINTS),
                tasks=results)


def summary(results):
    """One row per task and storage: mean final loss and accuracy over the seeds, their ratio /
    difference to float32 state's, the float32 seeds' own spread, and PASS/MISS per target."""
    rows = []
    for task, by_storage in results["tasks"].items():
        base = by_storage[REFERENCE]
        base_loss = np.mean([r["loss"] for r in base])
        base_accuracy = np.mean([r["accuracy"] for r in base]) if "accuracy" in base[0] else None
        for name, runs in by_storage.items():
            loss = float(np.mean([r["loss"] for r in runs]))
            row = dict(task=task, storage=name, loss=loss, loss_ratio=loss / base_loss,
                       losses=[r["loss"] for r in runs],
                       loss_pass=bool(loss <= (1 + LOSS_TOLERANCE) * base_loss))
            if base_accuracy is not None:
                accuracy = float(np.mean([r["accuracy"] for r in runs]))
                row.update(accuracy=accuracy, accuracy_points=100 * (accuracy - base_accuracy),
                           accuracies=[r["accuracy"] for r in runs],
                           accuracy_pass=bool(100 * (base_accuracy - accuracy) <= ACCURACY_POINTS))
            else:  # the regression: also how far above the noise floor each storage ends
                floor = 0.5 * NOISE ** 2
                row.update(excess_ratio=(loss - floor) / (base_loss - floor))
            rows.append(row)
    return rows


def table(rows, settings):
    verdict = {True: "PASS", False: "MISS", None: ""}
    lines = [f"Seeds {settings['seeds']}; MLP {settings['epochs']} epochs, hidden "
             f"{settings['hidden']}; regression {settings['regression_steps']} steps.  Targets: "
             f"final loss <= {1 + LOSS_TOLERANCE:.2f}x float32 state's, test accuracy at most "
             f"{ACCURACY_POINTS:g} point below (means over the seeds).", "",
             "| task | storage | final loss (mean) | per seed | vs float32 | loss target | "
             "test accuracy (mean) | vs float32 (points) | accuracy target | loss above the "
             "noise floor, vs float32 |",
             "|---|---|---:|---|---:|---|---:|---:|---|---:|"]
    for r in rows:
        reference = r["storage"] == REFERENCE
        seeds = ", ".join(f"{v:.4g}" for v in r["losses"])
        accuracy = points = ""
        if "accuracy" in r:
            accuracy, points = f"{100 * r['accuracy']:.2f}%", f"{r['accuracy_points']:+.2f}"
        lines.append(
            f"| {r['task']} | {r['storage']} | {r['loss']:.5g} | {seeds} | {r['loss_ratio']:.4f}x"
            f" | {'' if reference else verdict[r['loss_pass']]} | {accuracy} | {points} | "
            f"{'' if reference else verdict[r.get('accuracy_pass')]} | "
            f"{'' if 'excess_ratio' not in r else format(r['excess_ratio'], '.3f') + 'x'} |")
    return "\n".join(lines) + "\n"


def plot(results, path):
    """One panel per task, a line per storage: the mean over the seeds, shaded between the seeds'
    lowest and highest, log-scaled loss."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tasks = results["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.8), squeeze=False)
    for ax, (task, by_storage) in zip(axes[0], tasks.items()):
        for name, runs in by_storage.items():
            if "accuracy" in runs[0]:
                x = np.arange(1, len(runs[0]["history"]) + 1)
                curves = np.array([r["history"] for r in runs])
            else:
                x = np.array([s for s, _ in runs[0]["history"]])
                curves = np.array([[v for _, v in r["history"]] for r in runs])
            line, = ax.plot(x, curves.mean(axis=0), label=name,
                            linestyle="-" if name == REFERENCE else "--")
            ax.fill_between(x, curves.min(axis=0), curves.max(axis=0), alpha=0.15,
                            color=line.get_color())
        mlp_task = "accuracy" in next(iter(by_storage.values()))[0]
        ax.set(yscale="log", title=task,
               xlabel="epoch" if mlp_task else "step",
               ylabel="mean mini-batch loss of the epoch (cross-entropy)" if mlp_task
               else "expected loss (0.5 MSE; noise floor 0.005)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results, out):
    """results.json, results.md and loss_curves.png under ``out``; returns their paths."""
    os.makedirs(out, exist_ok=True)
    rows = summary(results)
    paths = dict(json=os.path.join(out, "results.json"), markdown=os.path.join(out, "results.md"),
                 plot=os.path.join(out, "loss_curves.png"))
    with open(paths["json"], "w") as f:
        json.dump(dict(results, summary=rows), f, indent=1)
    with open(paths["markdown"], "w") as f:
        f.write(table(rows, results["settings"]))
    plot(results, paths["plot"])
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"shorter runs, 2 seeds ({QUICK}); the full run is {SETTINGS}")
    parser.add_argument("--seeds", type=int, help="how many seeds (0, 1, ...)")
    parser.add_argument("--out", default=os.path.join("bench", "results",
                                                      "low-precision-quality"))
    args = parser.parse_args(argv)
    settings = dict(QUICK if args.quick else SETTINGS)
    seeds = range(args.seeds or settings.pop("seeds"))
    settings.pop("seeds", None)
    results = run(seeds, **settings)
    paths = write(results, args.out)
    print(open(paths["markdown"]).read())
    print("wrote " + ", ".join(paths.values()))


if __name__ == "__main__":
    main()
