"""The settings the README gives for porting from other NumPy optimizer code reproduce it.

Each reference below is written here from that library's published update equations (autograd's
``autograd.misc.optimizers``, numpy-ml's ``neural_nets.optimizers``, Karpathy's min-char-rnn
Adagrad), float64, and run beside numba_opt configured as the README says for 30 steps."""
import numpy as np
import pytest

import numba_opt as nopt

STEPS = 30


def grads_for(step, shape=(6, 4)):
    rng = np.random.default_rng((11, step))
    return rng.standard_normal(shape) * (1.0 + 0.5 * np.sin(step))


# ------------------------------------------------------------------- the other libraries' rules
def autograd_sgd(x, steps, step_size, mass):
    velocity = np.zeros_like(x)
    for t in range(1, steps + 1):
        velocity = mass * velocity - (1.0 - mass) * grads_for(t)
        x = x + step_size * velocity
    return x


def autograd_rmsprop(x, steps, step_size, gamma, eps):
    avg_sq_grad = np.ones_like(x)  # autograd starts the square average at ones
    for t in range(1, steps + 1):
        g = grads_for(t)
        avg_sq_grad = avg_sq_grad * gamma + g ** 2 * (1 - gamma)
        x = x - step_size * g / (np.sqrt(avg_sq_grad) + eps)
    return x


def autograd_adam(x, steps, step_size, b1, b2, eps):
    m, v = np.zeros_like(x), np.zeros_like(x)
    for t in range(1, steps + 1):
        g = grads_for(t)
        m = (1 - b1) * g + b1 * m
        v = (1 - b2) * g ** 2 + b2 * v
        x = x - step_size * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return x


def numpy_ml_sgd(x, steps, lr, momentum):
    update = np.zeros_like(x)  # numpy-ml keeps lr inside the running update
    for t in range(1, steps + 1):
        update = momentum * update + lr * grads_for(t)
        x = x - update
    return x


def numpy_ml_adagrad(x, steps, lr, eps=1e-7):
    cache = np.zeros_like(x)
    for t in range(1, steps + 1):
        g = grads_for(t)
        cache = cache + g ** 2
        x = x - lr * g / (np.sqrt(cache) + eps)
    return x


def numpy_ml_rmsprop(x, steps, lr, decay=0.9, eps=1e-7):
    cache = np.zeros_like(x)
    for t in range(1, steps + 1):
        g = grads_for(t)
        cache = decay * cache + (1 - decay) * g ** 2
        x = x - lr * g / (np.sqrt(cache) + eps)
    return x


def numpy_ml_adam(x, steps, lr, decay1=0.9, decay2=0.999, eps=1e-7):
    mean, var = np.zeros_like(x), np.zeros_like(x)
    for t in range(1, steps + 1):
        g = grads_for(t)
        var = decay2 * var + (1 - decay2) * g ** 2
        mean = decay1 * mean + (1 - decay1) * g
        x = x - lr * (mean / (1 - decay1 ** t)) / (np.sqrt(var / (1 - decay2 ** t)) + eps)
    return x


def min_char_rnn_adagrad(x, steps, learning_rate=1e-1):
    mem = np.zeros_like(x)
    for t in range(1, steps + 1):
        g = grads_for(t)
        mem += g * g
        x = x - learning_rate * g / np.sqrt(mem + 1e-8)  # eps inside the root
    return x


# ------------------------------------------------------------- the README's numba_opt settings
PORTS = [
    ("autograd sgd", lambda x: autograd_sgd(x, STEPS, 0.1, 0.9),
     lambda p: nopt.SGD(p, lr=0.1 * (1 - 0.9), momentum=0.9)),
    ("autograd rmsprop", lambda x: autograd_rmsprop(x, STEPS, 0.1, 0.9, 1e-8),
     lambda p: nopt.RMSprop(p, lr=0.1, alpha=0.9, eps=1e-8, initial_square_avg=1.0)),
    ("autograd adam", lambda x: autograd_adam(x, STEPS, 0.001, 0.9, 0.999, 1e-8),
     lambda p: nopt.Adam(p, lr=0.001, betas=(0.9, 0.999), eps=1e-8)),
    ("numpy-ml SGD", lambda x: numpy_ml_sgd(x, STEPS, 0.01, 0.9),
     lambda p: nopt.SGD(p, lr=0.01, momentum=0.9)),
    ("numpy-ml AdaGrad", lambda x: numpy_ml_adagrad(x, STEPS, 0.01),
     lambda p: nopt.Adagrad(p, lr=0.01, eps=1e-7)),
    ("numpy-ml RMSProp", lambda x: numpy_ml_rmsprop(x, STEPS, 0.001),
     lambda p: nopt.RMSprop(p, lr=0.001, alpha=0.9, eps=1e-7)),
    ("numpy-ml Adam", lambda x: numpy_ml_adam(x, STEPS, 0.001),
     lambda p: nopt.Adam(p, lr=0.001, betas=(0.9, 0.999), eps=1e-7)),
    ("min-char-rnn Adagrad", lambda x: min_char_rnn_adagrad(x, STEPS),
     lambda p: nopt.Adagrad(p, lr=0.1, eps=0.0, initial_accumulator_value=1e-8)),
]


@pytest.mark.parametrize("reference, make", [p[1:] for p in PORTS], ids=[p[0] for p in PORTS])
def test_the_readme_settings_reproduce_the_other_library(reference, make):
    start = np.random.default_rng(5).standard_normal((6, 4))
    expected = reference(start.copy())
    param = start.copy()
    opt = make([param])
    for t in range(1, STEPS + 1):
        opt.step([grads_for(t)])
    np.testing.assert_allclose(param, expected, rtol=1e-12, atol=1e-14)
    assert not np.allclose(param, start), "the run did not move the param"


def test_the_readme_lists_every_port():
    import pathlib
    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("### Porting from other NumPy code"):]
    for setting in ("lr=step_size * (1 - mass), momentum=mass", "initial_square_avg=1.0",
                    "eps=1e-7", "eps=0.0, initial_accumulator_value=1e-8"):
        assert setting in section, setting
