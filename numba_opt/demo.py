"""Train a small NumPy MLP on scikit-learn's bundled digits with each optimizer; print a table.

    python -m numba_opt.demo [--epochs N] [--hidden H] [--seed S]

No downloads: the 8x8 digits (1,797 images) ship inside scikit-learn.  The model is a
64-H-10 MLP with ReLU and softmax cross-entropy, backprop written by hand in float32; every
optimizer starts from the same weights and sees the same mini-batches.
"""
import argparse
import time

import numpy as np

import numba_opt as nopt

OPTIMIZERS = [
    ("SGD", lambda p: nopt.SGD(p, lr=0.1)),
    ("SGD momentum", lambda p: nopt.SGD(p, lr=0.05, momentum=0.9)),
    ("SGD nesterov", lambda p: nopt.SGD(p, lr=0.05, momentum=0.9, nesterov=True)),
    ("RMSprop", lambda p: nopt.RMSprop(p, lr=1e-3)),
    ("RMSprop centered", lambda p: nopt.RMSprop(p, lr=1e-3, centered=True, momentum=0.5)),
    ("Adam", lambda p: nopt.Adam(p, lr=3e-3)),
    ("Adam amsgrad", lambda p: nopt.Adam(p, lr=3e-3, amsgrad=True)),
    ("AdamW", lambda p: nopt.AdamW(p, lr=3e-3, weight_decay=1e-2)),
    ("Adagrad", lambda p: nopt.Adagrad(p, lr=3e-2)),
]


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
    """64-H-10 ReLU MLP; ``params`` and ``grads`` are lists of float32 arrays, grads reused."""

    def __init__(self, n_in, n_hidden, n_out, seed):
        rng = np.random.default_rng(seed)
        self.params = [
            (rng.standard_normal((n_in, n_hidden)) * np.sqrt(2 / n_in)).astype(np.float32),
            np.zeros(n_hidden, np.float32),
            (rng.standard_normal((n_hidden, n_out)) * np.sqrt(1 / n_hidden)).astype(np.float32),
            np.zeros(n_out, np.float32),
        ]
        self.grads = [np.zeros_like(p) for p in self.params]

    def logits(self, x):
        w1, b1, w2, b2 = self.params
        return np.maximum(x @ w1 + b1, 0) @ w2 + b2

    def loss_and_grads(self, x, y):
        w1, b1, w2, b2 = self.params
        hidden = np.maximum(x @ w1 + b1, 0)
        z = hidden @ w2 + b2
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        loss = -np.log(p[np.arange(len(y)), y] + 1e-12).mean()
        dz = p
        dz[np.arange(len(y)), y] -= 1
        dz /= len(y)
        gw1, gb1, gw2, gb2 = self.grads
        np.matmul(hidden.T, dz, out=gw2)
        gb2[...] = dz.sum(axis=0)
        dh = dz @ w2.T
        dh[hidden <= 0] = 0
        np.matmul(x.T, dh, out=gw1)
        gb1[...] = dh.sum(axis=0)
        return float(loss)


def train(make_optimizer, train_set, test_set, epochs, hidden, seed, batch=64):
    (x, y), (xt, yt) = train_set, test_set
    model = MLP(x.shape[1], hidden, 10, seed)
    opt = make_optimizer(model.params)
    rng = np.random.default_rng(seed + 1)
    start = time.perf_counter()
    for _ in range(epochs):
        order = rng.permutation(len(x))
        losses = []
        for i in range(0, len(x), batch):
            idx = order[i:i + batch]
            losses.append(model.loss_and_grads(x[idx], y[idx]))
            opt.step(model.grads)
    seconds = time.perf_counter() - start
    accuracy = float((model.logits(xt).argmax(axis=1) == yt).mean())
    return float(np.mean(losses)), accuracy, seconds, opt.step_count


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m numba_opt.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=15, help="passes over the data (default 15)")
    parser.add_argument("--hidden", type=int, default=64, help="hidden units (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="weights and batch order (default 0)")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.hidden < 1:
        parser.error("--epochs and --hidden must be >= 1")
    train_set, test_set = load_digits(args.seed)
    print(f"digits: {len(train_set[0])} train / {len(test_set[0])} test images, "
          f"MLP 64-{args.hidden}-10, {args.epochs} epochs, batch 64, float32")
    print(f"{'optimizer':<18} {'last-epoch loss':>15} {'test accuracy':>13} {'steps':>6} {'seconds':>8}")
    for label, make in OPTIMIZERS:
        loss, accuracy, seconds, steps = train(make, train_set, test_set, args.epochs,
                                               args.hidden, args.seed)
        print(f"{label:<18} {loss:>15.4f} {accuracy:>13.3f} {steps:>6} {seconds:>8.2f}", flush=True)
    print("(seconds include each optimizer's first-step kernel compile or cache load)")


if __name__ == "__main__":
    main()
