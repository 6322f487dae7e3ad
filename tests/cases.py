"""The table of optimizers under test and the problem they are run on."""
import numba
import numpy as np

import numba_opt as nopt

# (optimizer name, constructor kwargs): every option each optimizer has, alone and combined.
CASES = [
    ("SGD", {}),
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.01, "momentum": 0.9}),
    ("SGD", {"lr": 0.01, "momentum": 0.9, "dampening": 0.3}),
    ("SGD", {"lr": 0.01, "momentum": 0.9, "nesterov": True}),
    ("SGD", {"lr": 0.01, "momentum": 0.5, "weight_decay": 0.1, "maximize": True}),
    ("RMSprop", {}),
    ("RMSprop", {"centered": True}),
    ("RMSprop", {"momentum": 0.9}),
    ("RMSprop", {"centered": True, "momentum": 0.5, "weight_decay": 0.05}),
    ("RMSprop", {"alpha": 0.9, "eps": 1e-6, "maximize": True}),
    ("RMSprop", {"eps_inside_sqrt": True, "eps": 1e-7}),
    ("RMSprop", {"eps_inside_sqrt": True, "centered": True, "momentum": 0.9}),
    ("RMSprop", {"initial_square_avg": 1.0, "alpha": 0.9}),  # autograd's rmsprop
    ("Adam", {}),
    ("Adam", {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6}),
    ("Adam", {"amsgrad": True}),
    ("Adam", {"weight_decay": 0.1, "maximize": True}),
    ("Adam", {"weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("AdamW", {}),
    ("AdamW", {"lr": 1e-2, "weight_decay": 0.3, "amsgrad": True}),
    ("Adagrad", {}),
    ("Adagrad", {"lr_decay": 0.05}),
    ("Adagrad", {"initial_accumulator_value": 0.1, "eps": 1e-6}),
    ("Adagrad", {"weight_decay": 0.1, "maximize": True}),
    ("Adamax", {}),
    ("Adamax", {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1,
                "maximize": True}),
    ("RAdam", {}),  # rho_t > 5 from step 6 on: both branches run in 25 steps
    ("RAdam", {"lr": 1e-2, "betas": (0.8, 0.99), "weight_decay": 0.1, "maximize": True}),
    ("RAdam", {"weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("NAdam", {}),
    ("NAdam", {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6, "momentum_decay": 0.05,
               "weight_decay": 0.1, "maximize": True}),
    ("NAdam", {"weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("Adadelta", {}),
    ("Adadelta", {"lr": 0.5, "rho": 0.95, "eps": 1e-5, "weight_decay": 0.1, "maximize": True}),
    ("Rprop", {}),
    # lr beyond step_size_max: the first step clamps it; both bounds are reached in 25 steps
    ("Rprop", {"lr": 0.5, "etas": (0.3, 1.5), "step_sizes": (1e-3, 0.2), "maximize": True}),
    ("ASGD", {}),  # t0 = 1e6: ax copies the param
    # averaging from step 12 on (mu = 1 / (t - t0)), with eta decaying fast
    ("ASGD", {"lr": 0.05, "lambd": 1e-3, "alpha": 0.5, "t0": 10.0, "weight_decay": 0.1,
              "maximize": True}),
    ("Lion", {}),
    ("Lion", {"lr": 1e-3, "betas": (0.95, 0.98), "weight_decay": 0.1, "maximize": True}),
]

# torch.optim has every option above except the TF/Keras denominator and the initial square
# average, and has no Lion
TORCH_UNSUPPORTED = {"eps_inside_sqrt", "initial_square_avg"}
NOT_IN_TORCH = {"Lion"}

# Small shapes (serial kernels), a 0-d param, and one above SERIAL_BELOW (parallel kernels).
SHAPES = [(7, 5), (5,), (3, 4, 2), (), (130, 130)]
if numba.config.DISABLE_JIT:
    # The mutation runs (tests/MUTATION.md) step the rules as Python: there are no parallel
    # kernels to reach, and 16900 elements x 25 steps per case would take minutes.  Still five
    # params: tests count them.
    SHAPES = SHAPES[:-1] + [(6, 4)]
STEPS = 25

TOLERANCE = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


def case_id(case):
    name, kwargs = case
    return name + ("-" + "-".join(f"{k}={v}" for k, v in kwargs.items()) if kwargs else "")


def make_params(dtype, seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for shape in shapes]


def make_grads(params, step, seed=1):
    """Deterministic per step; scaled so that early and late steps differ in size."""
    rng = np.random.default_rng((seed, step))
    scale = 1.0 + 0.5 * np.sin(step)
    return [np.asarray(scale * rng.standard_normal(p.shape) + 0.1 * p, dtype=p.dtype) for p in params]


def optimizer(name, params, **kwargs):
    return getattr(nopt, name)(params, **kwargs)


def count_kernel_calls(monkeypatch, kernel_class):
    """Record (kernel name, size) for every call of a backend's kernels (``_cpu.Kernel`` or
    ``_cuda.Launcher``) bound from now on: span calls and multi-tensor table calls alike (the
    size of a table call is its total number of elements)."""
    calls = []

    def counting(original):
        def bind(self, size):
            call = original(self, size)

            def counted(*args):
                calls.append((self.__name__, size))
                return call(*args)
            return counted
        return bind
    for method in ("bind", "bind_table"):
        if hasattr(kernel_class, method):
            monkeypatch.setattr(kernel_class, method, counting(getattr(kernel_class, method)))
    return calls


def model_in(params, layout):
    """(the params, what the optimizer is given) in a layout: a FlatParams (its views), or the
    list itself."""
    if layout == "FlatParams":
        flat = nopt.FlatParams(params)
        return flat.params, flat
    return params, params


def grads_in(model, grads, layout, step):
    """A step's grads as the layout passes them: written into the FlatParams's grads, or with
    a None at step 2 for the per-param layout (its bucket then goes param by param)."""
    if layout == "FlatParams":
        for view, grad in zip(model.grads, grads):
            view[...] = grad
        return model.grads
    if layout == "per-param" and step == 2:
        grads[1] = None
    return grads
