"""Train a NumPy MLP on scikit-learn's bundled digits with each optimizer; table + loss curves.

No downloads: the 8x8 digits (1,797 images) ship inside scikit-learn.  The model is a 64-H-10
MLP with ReLU and softmax cross-entropy, backprop written by hand in float32.  Its params live in
a ``FlatParams``, so each optimizer step is one kernel call over the whole model.  Every
optimizer starts from the same weights and sees the same mini-batches.
"""
import time

import numpy as np

import numba_opt as nopt

from . import registry

# name -> (optimizer class name, its settings for this model): the registry's, for this use
OPTIMIZERS = {name: (entry.cls, registry.settings(name, "demo"))
              for name, entry in registry.OPTIMIZERS.items()}


def load_digits(seed):
    from sklearn.datasets import load_digits as sk_load_digits
    data = sk_load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    split = int(0.8 * len(x))
    return (x[:split], y[:split]), (x[split:], y[split:])


class MLP:
    """64-H-10 ReLU MLP whose params and grads are views of one FlatParams buffer each."""

    def __init__(self, n_in, n_hidden, n_out, seed):
        rng = np.random.default_rng(seed)
        self.flat = nopt.FlatParams([
            (rng.standard_normal((n_in, n_hidden)) * np.sqrt(2 / n_in)).astype(np.float32),
            np.zeros(n_hidden, np.float32),
            (rng.standard_normal((n_hidden, n_out)) * np.sqrt(1 / n_hidden)).astype(np.float32),
            np.zeros(n_out, np.float32),
        ])

    def logits(self, x):
        w1, b1, w2, b2 = self.flat.params
        return np.maximum(x @ w1 + b1, 0) @ w2 + b2

    def loss_and_grads(self, x, y):
        """Mean cross-entropy; the gradients are written into ``self.flat.grads``."""
        w1, b1, w2, b2 = self.flat.params
        hidden = np.maximum(x @ w1 + b1, 0)
        z = hidden @ w2 + b2
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        loss = -np.log(p[np.arange(len(y)), y] + 1e-12).mean()
        dz = p
        dz[np.arange(len(y)), y] -= 1
        dz /= len(y)
        gw1, gb1, gw2, gb2 = self.flat.grads
        np.matmul(hidden.T, dz, out=gw2)
        gb2[...] = dz.sum(axis=0)
        dh = dz @ w2.T
        dh[hidden <= 0] = 0
        np.matmul(x.T, dh, out=gw1)
        gb1[...] = dh.sum(axis=0)
        return float(loss)


def make_optimizer(name, flat, comm=None):
    """The named optimizer over ``flat``; with an MPI ``comm``, the same one data parallel with
    its state sharded over the ranks (numba_opt.distributed's ZeroRedundancyOptimizer)."""
    class_name, settings = OPTIMIZERS[name]
    cls = getattr(nopt, class_name)
    if comm is None:
        return cls(flat, **settings)
    from numba_opt import distributed as dist
    dist.broadcast_params(flat, comm, root=0)  # every rank starts from rank 0's weights
    if not cls.elementwise:
        # ZeRO's element-range shards would cut the rows and columns Adafactor's factors
        # average over: every rank keeps the whole state and steps with the mean grads
        return _AveragedGrads(cls(flat, **settings), comm, dist.average_gradients)
    return dist.ZeroRedundancyOptimizer(flat, cls, comm=comm, **settings)


class _AveragedGrads:
    """Plain data parallel: ``step`` averages the grads over the ranks, then steps."""

    def __init__(self, optimizer, comm, average):
        self.optimizer, self.comm, self.average = optimizer, comm, average

    def step(self, grads):
        return self.optimizer.step(self.average(grads, self.comm))

    @property
    def step_count(self):
        return self.optimizer.step_count


def train(name, train_set, test_set, epochs, hidden, seed, batch=64, progress=None, comm=None):
    """Returns (per-epoch mean loss list, test accuracy, seconds, steps).  With an MPI ``comm``
    every rank takes its share of each mini-batch (rank r of N: every N-th example from r); the
    grads are weighted so that their mean over the ranks is the whole batch's mean gradient, so
    N ranks follow the one-process run (to float rounding)."""
    (x, y), (xt, yt) = train_set, test_set
    model = MLP(x.shape[1], hidden, 10, seed)
    opt = make_optimizer(name, model.flat, comm)
    rank, ranks = (0, 1) if comm is None else (comm.Get_rank(), comm.Get_size())
    rng = np.random.default_rng(seed + 1)
    history = []
    start = time.perf_counter()
    for _ in range(epochs):
        order = rng.permutation(len(x))
        losses = []
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            mine = idx[rank::ranks]
            loss = model.loss_and_grads(x[mine], y[mine]) if len(mine) else 0.0
            if ranks > 1:  # this rank's mean times its share of the batch, times N (mean of N)
                weight = len(mine) * ranks / len(idx)
                model.flat.grad *= weight
                loss = comm.allreduce(loss * len(mine)) / len(idx)
            losses.append(loss)
            opt.step(model.flat.grads)
        history.append(float(np.mean(losses)))
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{history[-1]:.4f}")
    seconds = time.perf_counter() - start
    accuracy = float((model.logits(xt).argmax(axis=1) == yt).mean())
    return history, accuracy, seconds, opt.step_count


def plot_losses(histories, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, history in histories.items():
        ax.plot(range(1, len(history) + 1), history, marker="o", markersize=3, label=name)
    ax.set(yscale="log", xlabel="epoch", ylabel="mean training loss (cross-entropy)",
           title="NumPy MLP on the digits data, one optimizer per line")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(optimizers, epochs, hidden, seed, out_png, show_progress=True, comm=None):
    """Train each named optimizer, print the table, write the loss-curve PNG.  With an MPI
    ``comm`` (``demo --distributed`` under mpiexec) the ranks train together and rank 0 prints
    and draws."""
    from tqdm import tqdm
    train_set, test_set = load_digits(seed)
    lead = comm is None or comm.Get_rank() == 0
    say = print if lead else (lambda *args, **kwargs: None)
    where = "" if comm is None else (f", data parallel over {comm.Get_size()} MPI ranks "
                                     "(ZeRO-1: optimizer state sharded)")
    say(f"digits: {len(train_set[0])} train / {len(test_set[0])} test images, "
        f"MLP 64-{hidden}-10 in a FlatParams, {epochs} epochs, batch 64, float32{where}")
    results, histories = [], {}
    for name in optimizers:
        with tqdm(total=epochs, desc=f"{name:<16}", unit="epoch", leave=False,
                  disable=not (show_progress and lead)) as bar:
            history, accuracy, seconds, steps = train(name, train_set, test_set, epochs, hidden,
                                                      seed, progress=bar, comm=comm)
        histories[name] = history
        results.append((name, history[-1], accuracy, steps, seconds))
    if not lead:
        return results
    print(f"{'optimizer':<18} {'last-epoch loss':>15} {'test accuracy':>13} {'steps':>6} "
          f"{'seconds':>8}")
    for name, loss, accuracy, steps, seconds in results:
        print(f"{name:<18} {loss:>15.4f} {accuracy:>13.3f} {steps:>6} {seconds:>8.2f}")
    print("(seconds include each optimizer's first-step kernel compile or cache load)")
    plot_losses(histories, out_png)
    return results
