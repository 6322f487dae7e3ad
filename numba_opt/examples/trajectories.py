"""Optimizer paths on classic 2-D test functions, and what Adam's bias correction does.

Each path is a real numba_opt optimizer stepping a 2-element float64 param with the function's
analytic gradient.  The bias-correction figure runs numba_opt's Adam next to the same update
without the corrections (written out in NumPy), on one stream of noisy gradients of mean 1.
"""
import functools

import numpy as np

import numba_opt as nopt

from . import registry


def rosenbrock(p):
    x, y = p
    return (1 - x) ** 2 + 100 * (y - x * x) ** 2


def rosenbrock_grad(p):
    x, y = p
    return np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])


def beale(p):
    x, y = p
    return ((1.5 - x + x * y) ** 2 + (2.25 - x + x * y ** 2) ** 2
            + (2.625 - x + x * y ** 3) ** 2)


def beale_grad(p):
    x, y = p
    a, b, c = 1.5 - x + x * y, 2.25 - x + x * y ** 2, 2.625 - x + x * y ** 3
    return np.array([2 * a * (y - 1) + 2 * b * (y ** 2 - 1) + 2 * c * (y ** 3 - 1),
                     2 * a * x + 4 * b * x * y + 6 * c * x * y ** 2])


def saddle(p):
    x, y = p
    return x * x - y * y


def saddle_grad(p):
    x, y = p
    return np.array([2 * x, -2 * y])


# name -> (f, grad, start, minimum or None, plot box (x0, x1, y0, y1), log-spaced contours?)
FUNCTIONS = {
    "Rosenbrock": (rosenbrock, rosenbrock_grad, (-1.5, 2.0), (1.0, 1.0), (-2, 2, -1, 3), True),
    "Beale": (beale, beale_grad, (1.0, 1.4), (3.0, 0.5), (-0.5, 4, -1.5, 2), True),
    "saddle x^2 - y^2": (saddle, saddle_grad, (1.5, 1e-3), None, (-2, 2, -2, 2), False),
}


def make_optimizer(name, params, lr_scale):
    """The registry's optimizer ``name`` with its plot settings, its lr times ``lr_scale``."""
    settings = registry.settings(name, "plot")
    return registry.class_of(name)(params, **{**settings, "lr": settings["lr"] * lr_scale})


# name -> factory(params, lr scale); the lr scale is per function (their gradients differ a lot)
OPTIMIZERS = {name: functools.partial(make_optimizer, name) for name in registry.OPTIMIZERS}
LR_SCALE = {"Rosenbrock": 1.0, "Beale": 1.0, "saddle x^2 - y^2": 5.0}


def path(function, optimizer, steps):
    """The (steps + 1, 2) path of one optimizer from the function's start; stops if it blows up."""
    _, grad, start, *_ = FUNCTIONS[function]
    param = np.array(start, dtype=np.float64)
    opt = OPTIMIZERS[optimizer]([param], LR_SCALE[function])
    points = [param.copy()]
    for _ in range(steps):
        opt.step([grad(param)])
        if not np.all(np.isfinite(param)) or np.abs(param).max() > 1e6:
            break
        points.append(param.copy())
    return np.array(points)


def plot_trajectories(optimizers, steps, out_png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(FUNCTIONS), figsize=(6 * len(FUNCTIONS), 5.2))
    for ax, (name, (f, _, start, minimum, box, log_levels)) in zip(axes, FUNCTIONS.items()):
        xs, ys = np.meshgrid(np.linspace(box[0], box[1], 300), np.linspace(box[2], box[3], 300))
        zs = f((xs, ys))
        if log_levels:
            ax.contour(xs, ys, zs, levels=np.logspace(-1, np.log10(zs.max()), 25), cmap="Greys",
                       linewidths=0.6)
        else:
            ax.contour(xs, ys, zs, levels=25, cmap="Greys", linewidths=0.6)
        for optimizer in optimizers:
            points = path(name, optimizer, steps)
            ax.plot(points[:, 0], points[:, 1], linewidth=1.4, label=optimizer)
            ax.plot(*points[-1], "o", markersize=4, color=ax.lines[-1].get_color())
        ax.plot(*start, "ks", markersize=6)
        if minimum is not None:
            ax.plot(*minimum, "r*", markersize=14)
        ax.set(xlim=box[:2], ylim=box[2:], title=f"{name}: {steps} steps from the square",
               xlabel="x", ylabel="y")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def bias_correction_curves(steps=60, lr=1e-2, betas=(0.9, 0.999), seed=0):
    """Per step: Adam's raw first moment m, its corrected m_hat (numba_opt's state), and the
    update size in units of lr with and without both corrections."""
    beta1, beta2 = betas
    grads = 1.0 + 0.3 * np.random.default_rng(seed).standard_normal(steps)
    param = np.zeros(1)
    opt = nopt.Adam([param], lr=lr, betas=betas, eps=1e-8)
    m = v = 0.0
    raw_m, corrected_m, with_correction, without_correction = [], [], [], []
    for t, g in enumerate(grads, start=1):
        before = param[0]
        opt.step([np.array([g])])
        exp_avg = opt.state[0]["exp_avg"][0]
        raw_m.append(exp_avg)
        corrected_m.append(exp_avg / (1 - beta1 ** t))
        with_correction.append(abs(param[0] - before) / lr)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        without_correction.append(abs(m / (np.sqrt(v) + 1e-8)))
    return dict(grads=grads, raw_m=np.array(raw_m), corrected_m=np.array(corrected_m),
                with_correction=np.array(with_correction),
                without_correction=np.array(without_correction))


def plot_bias_correction(out_png, steps=60):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    curves = bias_correction_curves(steps)
    t = np.arange(1, steps + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    left.plot(t, curves["grads"], ".", color="0.7", label="gradient (noisy, mean 1)")
    left.plot(t, curves["raw_m"], label="m: raw first moment (starts near 0)")
    left.plot(t, curves["corrected_m"], linewidth=2, label="m / (1 - beta1^t): bias-corrected")
    left.axhline(1.0, color="k", linestyle=":", linewidth=1)
    left.set(xlabel="step t", ylabel="estimate of the mean gradient",
             title="Bias correction enlarges the early moment estimates")
    left.legend(fontsize=8)
    right.plot(t, curves["with_correction"], linewidth=2, label="Adam (numba_opt): both corrected")
    right.plot(t, curves["without_correction"], label="m / sqrt(v): no correction")
    right.axhline(1.0, color="k", linestyle=":", linewidth=1)
    right.set(xlabel="step t", ylabel="update size / lr",
              title="Update size, betas=(0.9, 0.999): corrected steps start at lr")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
