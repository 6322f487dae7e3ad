"""Stateless step functions, and the host-side half of every update rule.

For each optimizer this module holds:
- ``<name>_layout(...)``: which kernel runs and which state buffers it updates, in kernel order;
- ``<name>_scalars(...)``: every per-step scalar (bias corrections, 1 - beta, lr / bc1 ...)
  computed once in float64, packed in the ``_math`` namedtuple (the backend casts it to the
  dtype the kernel computes in, float32 for bfloat16 and float16 params: ``scalars_argument``);
- ``<name>_step(param, grad, *state, ...)``: the public function for users who keep their own
  state.  It validates everything, then updates ``param`` and the state arrays in place.

The optimizer classes (``numba_opt.optim``) use the same layout and scalars functions, so the host
arithmetic exists once.  Each ``*_step`` works on one array; its state arrays must match the param
in shape, memory order and device, and are updated in place.  They share one dtype: the param's,
or float32 or bfloat16 for float32, bfloat16 and float16 params (what ``state_dtype=`` gives the
classes); the grad has the param's.  No two of param and state may share memory, nor the grad
with either (the grad may be exactly the param, as in the classes).
"""
from __future__ import annotations

import math

import numpy as np

from . import _codecs, _math, _validation as check, dispatch
from ._interface import dtype_of, layout, shape_of
from ._typing import Array, Betas, Device, Real


def _pack(scalars_type, maximize, **fields):
    """A scalars namedtuple with the fields every rule shares: clipping off (clip_value inf;
    ``optim.base`` sets the fields per step when asked), grad_scale 1, or -1 to maximize, and
    rounding_salt 0 (``optim.base`` sets it per step under stochastic rounding)."""
    return scalars_type(grad_scale=-1.0 if maximize else 1.0, clip_value=math.inf,
                        rounding_salt=0.0, **fields)


# ----------------------------------------------------------------------------------------- SGD
def sgd_layout(momentum):
    if momentum != 0:
        return "sgd_momentum", ("momentum_buffer",)
    return "sgd", ()


def sgd_scalars(*, lr, momentum, dampening, weight_decay, nesterov, maximize,
                first_momentum_step):
    return _pack(_math.SGDScalars, maximize, lr=lr, momentum=momentum,
                 one_minus_dampening=1.0 - dampening, weight_decay=weight_decay,
                 nesterov=nesterov, first_momentum_step=first_momentum_step)


SGD_HYPER = dict(lr=check.non_negative, momentum=check.non_negative, dampening=check.real,
                 weight_decay=check.non_negative, nesterov=check.flag, maximize=check.flag)


def check_sgd(**hyper):
    check_hyper(SGD_HYPER, hyper)
    if hyper["nesterov"] and (hyper["momentum"] <= 0 or hyper["dampening"] != 0):
        raise ValueError("nesterov=True requires momentum > 0 and dampening == 0")


def sgd_step(param: Array, grad: Array, momentum_buffer: Array | None = None, *, step: int,
             lr: Real = 1e-3, momentum: Real = 0.0, dampening: Real = 0.0, weight_decay: Real = 0.0,
             nesterov: bool = False, maximize: bool = False, device: Device = "auto") -> None:
    """One SGD step on ``param`` in place.  With momentum, ``momentum_buffer`` is required; at
    ``step == 1`` it is overwritten with the gradient (torch's first-step rule)."""
    check_sgd(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
              nesterov=nesterov, maximize=maximize)
    step = check.step_number("step", step)
    kernel, names = sgd_layout(momentum)
    h = sgd_scalars(lr=lr, momentum=momentum, dampening=dampening,
                    weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                    first_momentum_step=step == 1)
    _run(kernel, device, param, grad, names, dict(momentum_buffer=momentum_buffer), h)


# ------------------------------------------------------------------------------------- RMSprop
def rmsprop_layout(centered, momentum):
    names = ("square_avg",) + (("grad_avg",) if centered else ()) + (
        ("momentum_buffer",) if momentum > 0 else ())
    kernel = "rmsprop" + ("_centered" if centered else "") + ("_momentum" if momentum > 0 else "")
    return kernel, names


def rmsprop_scalars(*, lr, alpha, eps, weight_decay, momentum, centered, eps_inside_sqrt,
                    maximize):
    return _pack(_math.RMSpropScalars, maximize, lr=lr, alpha=alpha, one_minus_alpha=1.0 - alpha,
                 eps=eps, weight_decay=weight_decay, momentum=momentum, centered=centered,
                 eps_inside_sqrt=eps_inside_sqrt)


RMSPROP_HYPER = dict(lr=check.non_negative, alpha=check.unit_interval, eps=check.non_negative,
                     weight_decay=check.non_negative, momentum=check.non_negative,
                     centered=check.flag, eps_inside_sqrt=check.flag, maximize=check.flag)


def rmsprop_step(param: Array, grad: Array, square_avg: Array, grad_avg: Array | None = None,
                 momentum_buffer: Array | None = None, *, lr: Real = 1e-2, alpha: Real = 0.99,
                 eps: Real = 1e-8, weight_decay: Real = 0.0, momentum: Real = 0.0,
                 centered: bool = False, eps_inside_sqrt: bool = False, maximize: bool = False,
                 device: Device = "auto") -> None:
    """One RMSprop step in place; ``grad_avg`` is needed when centered, ``momentum_buffer`` when
    momentum > 0.  ``eps_inside_sqrt=True`` uses the TF/Keras denominator sqrt(v + eps)."""
    check_hyper(RMSPROP_HYPER, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                    momentum=momentum, centered=centered,
                                    eps_inside_sqrt=eps_inside_sqrt, maximize=maximize))
    kernel, names = rmsprop_layout(centered, momentum)
    h = rmsprop_scalars(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                        momentum=momentum, centered=centered, eps_inside_sqrt=eps_inside_sqrt,
                        maximize=maximize)
    _run(kernel, device, param, grad, names, dict(square_avg=square_avg, grad_avg=grad_avg,
                                                  momentum_buffer=momentum_buffer), h)


# ---------------------------------------------------------------------------------- Adam/AdamW
def adam_layout(amsgrad):
    if amsgrad:
        return "adam_amsgrad", ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    return "adam", ("exp_avg", "exp_avg_sq")


ADAM_STEP_FIELDS = ("step_size", "bias_correction2_sqrt")


def adam_step_scalars(step, lr, betas):
    """The Adam scalars that change every step (``ADAM_STEP_FIELDS``): the bias corrections."""
    beta1, beta2 = betas
    return lr / (1.0 - beta1 ** step), math.sqrt(1.0 - beta2 ** step)


def adam_scalars(*, step, lr, betas, eps, weight_decay, amsgrad, maximize,
                 decoupled_weight_decay):
    beta1, beta2 = betas
    step_size, bias_correction2_sqrt = adam_step_scalars(step, lr, betas)
    decoupled = decoupled_weight_decay
    return _pack(
        _math.AdamScalars, maximize, step_size=step_size, beta1=beta1, one_minus_beta1=1.0 - beta1,
        beta2=beta2, one_minus_beta2=1.0 - beta2, eps=eps,
        bias_correction2_sqrt=bias_correction2_sqrt,
        weight_decay=0.0 if decoupled else weight_decay,
        param_scale=1.0 - lr * weight_decay if decoupled else 1.0,
        amsgrad=amsgrad)


ADAM_HYPER = dict(lr=check.non_negative, betas=check.betas, eps=check.non_negative,
                  weight_decay=check.non_negative, amsgrad=check.flag, maximize=check.flag,
                  decoupled_weight_decay=check.flag)


def adam_step(param: Array, grad: Array, exp_avg: Array, exp_avg_sq: Array,
              max_exp_avg_sq: Array | None = None, *, step: int, lr: Real = 1e-3,
              betas: Betas = (0.9, 0.999), eps: Real = 1e-8, weight_decay: Real = 0.0,
              amsgrad: bool = False, maximize: bool = False, decoupled_weight_decay: bool = False,
              device: Device = "auto") -> None:
    """One Adam step in place (AdamW with ``decoupled_weight_decay=True``).  ``step`` is this
    step's 1-based count, used for bias correction; ``max_exp_avg_sq`` is needed with amsgrad."""
    check_hyper(ADAM_HYPER, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                 amsgrad=amsgrad, maximize=maximize,
                                 decoupled_weight_decay=decoupled_weight_decay))
    step = check.step_number("step", step)
    kernel, names = adam_layout(amsgrad)
    h = adam_scalars(step=step, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                     amsgrad=amsgrad, maximize=maximize,
                     decoupled_weight_decay=decoupled_weight_decay)
    _run(kernel, device, param, grad, names, dict(exp_avg=exp_avg, exp_avg_sq=exp_avg_sq,
                                                  max_exp_avg_sq=max_exp_avg_sq), h)


def adamw_step(param: Array, grad: Array, exp_avg: Array, exp_avg_sq: Array,
               max_exp_avg_sq: Array | None = None, *, step: int, lr: Real = 1e-3,
               betas: Betas = (0.9, 0.999), eps: Real = 1e-8, weight_decay: Real = 1e-2,
               amsgrad: bool = False, maximize: bool = False, device: Device = "auto") -> None:
    """One AdamW step in place: Adam with decoupled weight decay (torch's AdamW defaults)."""
    adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step=step, lr=lr, betas=betas,
              eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
              decoupled_weight_decay=True, device=device)


# ------------------------------------------------------------------------------------- Adagrad
def adagrad_layout():
    return "adagrad", ("sum",)


ADAGRAD_STEP_FIELDS = ("clr",)


def adagrad_step_scalars(step, lr, lr_decay):
    """The Adagrad scalar that changes every step (``ADAGRAD_STEP_FIELDS``): the decayed lr."""
    return (lr / (1.0 + (step - 1) * lr_decay),)


def adagrad_scalars(*, step, lr, lr_decay, eps, weight_decay, maximize):
    (clr,) = adagrad_step_scalars(step, lr, lr_decay)
    return _pack(_math.AdagradScalars, maximize, clr=clr, eps=eps, weight_decay=weight_decay)


ADAGRAD_HYPER = dict(lr=check.non_negative, lr_decay=check.non_negative,
                     weight_decay=check.non_negative, initial_accumulator_value=check.non_negative,
                     eps=check.non_negative, maximize=check.flag)


def adagrad_step(param: Array, grad: Array, state_sum: Array, *, step: int, lr: Real = 1e-2,
                 lr_decay: Real = 0.0, weight_decay: Real = 0.0, eps: Real = 1e-10,
                 maximize: bool = False, device: Device = "auto") -> None:
    """One Adagrad step in place; ``state_sum`` starts at initial_accumulator_value."""
    check_hyper(ADAGRAD_HYPER, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                    initial_accumulator_value=0.0, eps=eps, maximize=maximize))
    step = check.step_number("step", step)
    kernel, names = adagrad_layout()
    h = adagrad_scalars(step=step, lr=lr, lr_decay=lr_decay, eps=eps,
                        weight_decay=weight_decay, maximize=maximize)
    _run(kernel, device, param, grad, names, {"sum": state_sum}, h)


# -------------------------------------------------------------------------------------- Adamax
def adamax_layout():
    return "adamax", ("exp_avg", "exp_inf")


ADAMAX_STEP_FIELDS = ("clr",)


def adamax_step_scalars(step, lr, betas):
    """The Adamax scalar that changes every step (``ADAMAX_STEP_FIELDS``): lr / (1 - beta1^t)."""
    return (lr / (1.0 - betas[0] ** step),)


def adamax_scalars(*, step, lr, betas, eps, weight_decay, maximize):
    (clr,) = adamax_step_scalars(step, lr, betas)
    beta1, beta2 = betas
    return _pack(_math.AdamaxScalars, maximize, clr=clr, beta1=beta1,
                 one_minus_beta1=1.0 - beta1, beta2=beta2, eps=eps, weight_decay=weight_decay)


ADAMAX_HYPER = dict(lr=check.non_negative, betas=check.betas, eps=check.non_negative,
                    weight_decay=check.non_negative, maximize=check.flag)


def adamax_step(param: Array, grad: Array, exp_avg: Array, exp_inf: Array, *, step: int,
                lr: Real = 2e-3, betas: Betas = (0.9, 0.999), eps: Real = 1e-8,
                weight_decay: Real = 0.0, maximize: bool = False, device: Device = "auto") -> None:
    """One Adamax step in place (torch.optim.Adamax); ``step`` is this step's 1-based count."""
    check_hyper(ADAMAX_HYPER, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                   maximize=maximize))
    step = check.step_number("step", step)
    kernel, names = adamax_layout()
    h = adamax_scalars(step=step, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                       maximize=maximize)
    _run(kernel, device, param, grad, names, dict(exp_avg=exp_avg, exp_inf=exp_inf), h)


# --------------------------------------------------------------------------------------- RAdam
def radam_layout():
    return "radam", ("exp_avg", "exp_avg_sq")


RADAM_STEP_FIELDS = ("bias_correction1", "bias_correction2_sqrt", "rect", "rectify")


def radam_step_scalars(step, betas):
    """The RAdam scalars that change every step (``RADAM_STEP_FIELDS``): the bias corrections
    and the rectification, rho_inf = 2/(1 - beta2) - 1, rho_t = rho_inf - 2t beta2^t/bc2."""
    beta1, beta2 = betas
    bias_correction1 = 1.0 - beta1 ** step
    bias_correction2 = 1.0 - beta2 ** step
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * step * beta2 ** step / bias_correction2
    rectify = rho_t > 5.0
    rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                     / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) if rectify else 1.0
    return bias_correction1, math.sqrt(bias_correction2), rect, rectify


def radam_scalars(*, step, lr, betas, eps, weight_decay, decoupled_weight_decay, maximize):
    beta1, beta2 = betas
    bc1, bc2_sqrt, rect, rectify = radam_step_scalars(step, betas)
    decoupled = decoupled_weight_decay
    return _pack(
        _math.RAdamScalars, maximize, lr=lr, beta1=beta1, one_minus_beta1=1.0 - beta1, beta2=beta2,
        one_minus_beta2=1.0 - beta2, eps=eps, weight_decay=0.0 if decoupled else weight_decay,
        param_scale=1.0 - lr * weight_decay if decoupled else 1.0, bias_correction1=bc1,
        bias_correction2_sqrt=bc2_sqrt, rect=rect, rectify=rectify)


RADAM_HYPER = dict(lr=check.non_negative, betas=check.betas, eps=check.non_negative,
                   weight_decay=check.non_negative, decoupled_weight_decay=check.flag,
                   maximize=check.flag)


def radam_step(param: Array, grad: Array, exp_avg: Array, exp_avg_sq: Array, *, step: int,
               lr: Real = 1e-3, betas: Betas = (0.9, 0.999), eps: Real = 1e-8,
               weight_decay: Real = 0.0, decoupled_weight_decay: bool = False,
               maximize: bool = False, device: Device = "auto") -> None:
    """One RAdam step in place (torch.optim.RAdam); ``step`` is this step's 1-based count."""
    hyper = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                 decoupled_weight_decay=decoupled_weight_decay, maximize=maximize)
    check_hyper(RADAM_HYPER, hyper)
    step = check.step_number("step", step)
    kernel, names = radam_layout()
    _run(kernel, device, param, grad, names, dict(exp_avg=exp_avg, exp_avg_sq=exp_avg_sq),
         radam_scalars(step=step, **hyper))


# --------------------------------------------------------------------------------------- NAdam
def nadam_layout():
    return "nadam", ("exp_avg", "exp_avg_sq")


NADAM_STEP_FIELDS = ("bias_correction2", "grad_coef", "avg_coef")


def nadam_momentum(step, beta1, momentum_decay):
    """NAdam's momentum schedule mu_t = beta1 (1 - 0.5 * 0.96^(t * momentum_decay))."""
    return beta1 * (1.0 - 0.5 * 0.96 ** (step * momentum_decay))


def nadam_step_scalars(step, lr, betas, momentum_decay, mu_product):
    """The NAdam scalars that change every step (``NADAM_STEP_FIELDS``); ``mu_product`` is the
    running product mu_1 ... mu_t including this step's mu_t."""
    beta1, beta2 = betas
    mu = nadam_momentum(step, beta1, momentum_decay)
    mu_next = nadam_momentum(step + 1, beta1, momentum_decay)
    return (1.0 - beta2 ** step, lr * (1.0 - mu) / (1.0 - mu_product),
            lr * mu_next / (1.0 - mu_product * mu_next))


def nadam_scalars(*, step, mu_product, lr, betas, eps, weight_decay, momentum_decay,
                  decoupled_weight_decay, maximize):
    beta1, beta2 = betas
    bias_correction2, grad_coef, avg_coef = nadam_step_scalars(step, lr, betas, momentum_decay,
                                                               mu_product)
    decoupled = decoupled_weight_decay
    return _pack(
        _math.NAdamScalars, maximize, beta1=beta1, one_minus_beta1=1.0 - beta1, beta2=beta2,
        one_minus_beta2=1.0 - beta2, eps=eps, weight_decay=0.0 if decoupled else weight_decay,
        param_scale=1.0 - lr * weight_decay if decoupled else 1.0,
        bias_correction2=bias_correction2, grad_coef=grad_coef, avg_coef=avg_coef)


# mu_product is 1.0 before the first step, then a product of factors mu_t in [0, 1)
NADAM_HOST_CHECKS = dict(mu_product=check.unit_interval)

NADAM_HYPER = dict(lr=check.non_negative, betas=check.betas, eps=check.non_negative,
                   weight_decay=check.non_negative, momentum_decay=check.non_negative,
                   decoupled_weight_decay=check.flag, maximize=check.flag)


def nadam_step(param: Array, grad: Array, exp_avg: Array, exp_avg_sq: Array, *, step: int,
               mu_product: float | None = None, lr: Real = 2e-3, betas: Betas = (0.9, 0.999),
               eps: Real = 1e-8, weight_decay: Real = 0.0, momentum_decay: Real = 4e-3,
               decoupled_weight_decay: bool = False, maximize: bool = False,
               device: Device = "auto") -> float:
    """One NAdam step in place (torch.optim.NAdam); returns the running product of the momentum
    schedule mu_1 ... mu_step, to pass as ``mu_product`` next step.  ``mu_product`` is that
    product up to the previous step (1.0 at step 1); None computes it from ``step`` assuming
    beta1 and momentum_decay never changed."""
    hyper = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                 momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
                 maximize=maximize)
    check_hyper(NADAM_HYPER, hyper)
    step = check.step_number("step", step)
    if mu_product is None:
        mu_product = math.prod(nadam_momentum(k, betas[0], momentum_decay)
                               for k in range(1, step))
    else:
        mu_product = NADAM_HOST_CHECKS["mu_product"]("mu_product", mu_product)
    mu_product = mu_product * nadam_momentum(step, betas[0], momentum_decay)
    kernel, names = nadam_layout()
    _run(kernel, device, param, grad, names, dict(exp_avg=exp_avg, exp_avg_sq=exp_avg_sq),
         nadam_scalars(step=step, mu_product=mu_product, **hyper))
    return mu_product


# ------------------------------------------------------------------------------------ Adadelta
def adadelta_layout():
    return "adadelta", ("square_avg", "acc_delta")


def adadelta_scalars(*, lr, rho, eps, weight_decay, maximize):
    return _pack(_math.AdadeltaScalars, maximize, lr=lr, rho=rho, one_minus_rho=1.0 - rho,
                 eps=eps, weight_decay=weight_decay)


ADADELTA_HYPER = dict(lr=check.non_negative, rho=check.unit_interval, eps=check.non_negative,
                      weight_decay=check.non_negative, maximize=check.flag)


def adadelta_step(param: Array, grad: Array, square_avg: Array, acc_delta: Array, *, lr: Real = 1.0,
                  rho: Real = 0.9, eps: Real = 1e-6, weight_decay: Real = 0.0,
                  maximize: bool = False, device: Device = "auto") -> None:
    """One Adadelta step in place (torch.optim.Adadelta)."""
    hyper = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize)
    check_hyper(ADADELTA_HYPER, hyper)
    kernel, names = adadelta_layout()
    _run(kernel, device, param, grad, names, dict(square_avg=square_avg, acc_delta=acc_delta),
         adadelta_scalars(**hyper))


# ---------------------------------------------------------------------------------------- Lion
def lion_layout():
    return "lion", ("exp_avg",)


def lion_scalars(*, lr, betas, weight_decay, maximize):
    beta1, beta2 = betas
    return _pack(_math.LionScalars, maximize, lr=lr, beta1=beta1, one_minus_beta1=1.0 - beta1,
                 beta2=beta2, one_minus_beta2=1.0 - beta2, param_scale=1.0 - lr * weight_decay)


LION_HYPER = dict(lr=check.non_negative, betas=check.betas, weight_decay=check.non_negative,
                  maximize=check.flag)


def lion_step(param: Array, grad: Array, exp_avg: Array, *, lr: Real = 1e-4,
              betas: Betas = (0.9, 0.99), weight_decay: Real = 0.0, maximize: bool = False,
              device: Device = "auto") -> None:
    """One Lion step in place (lion-pytorch / optax semantics; decoupled weight decay)."""
    hyper = dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize)
    check_hyper(LION_HYPER, hyper)
    kernel, names = lion_layout()
    _run(kernel, device, param, grad, names, dict(exp_avg=exp_avg), lion_scalars(**hyper))


# --------------------------------------------------------------------------------------- Rprop
def rprop_layout():
    return "rprop", ("prev", "step_size")


def rprop_scalars(*, lr, etas, step_sizes, maximize, first_step):
    etaminus, etaplus = etas
    step_size_min, step_size_max = step_sizes
    return _pack(_math.RpropScalars, maximize, lr=lr, etaminus=etaminus, etaplus=etaplus,
                 step_size_min=step_size_min, step_size_max=step_size_max,
                 first_step=first_step, zero=0.0)


def _etas(name, value):
    """Rprop's (etaminus, etaplus): 0 < etaminus < 1 < etaplus (torch's check), finite."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a pair (etaminus, etaplus), got {value!r}")
    etaminus, etaplus = check.real(f"{name}[0]", value[0]), check.real(f"{name}[1]", value[1])
    if not 0.0 < etaminus < 1.0 < etaplus:
        raise ValueError(f"{name} must satisfy 0 < etaminus < 1 < etaplus, got {value!r}")
    return etaminus, etaplus


def _step_sizes(name, value):
    """Rprop's (step_size_min, step_size_max): 0 <= min <= max, finite (torch checks none: a
    negative step size would climb, and min > max would pin every step size at max)."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a pair (step_size_min, step_size_max), got {value!r}")
    low = check.non_negative(f"{name}[0]", value[0])
    high = check.non_negative(f"{name}[1]", value[1])
    if low > high:
        raise ValueError(f"{name} must satisfy step_size_min <= step_size_max, got {value!r}")
    return low, high


RPROP_HYPER = dict(lr=check.non_negative, etas=_etas, step_sizes=_step_sizes,
                   maximize=check.flag)


def rprop_step(param: Array, grad: Array, prev: Array, step_size: Array, *, step: int,
               lr: Real = 1e-2, etas: Betas = (0.5, 1.2), step_sizes: Betas = (1e-6, 50),
               maximize: bool = False, device: Device = "auto") -> None:
    """One Rprop step in place (torch.optim.Rprop).  At ``step == 1`` ``step_size`` is filled
    with lr and ``prev`` counts as 0 (torch's state initialisation); later, lr is not used."""
    hyper = dict(lr=lr, etas=etas, step_sizes=step_sizes, maximize=maximize)
    check_hyper(RPROP_HYPER, hyper)
    step = check.step_number("step", step)
    kernel, names = rprop_layout()
    _run(kernel, device, param, grad, names, dict(prev=prev, step_size=step_size),
         rprop_scalars(**hyper, first_step=step == 1))


# ---------------------------------------------------------------------------------------- ASGD
def asgd_layout():
    return "asgd", ("ax",)


ASGD_STEP_FIELDS = ("eta", "param_scale", "mu", "average")


def asgd_initial_host(lr):
    """ASGD's host scalars for a param's first step: torch starts eta at the group's lr then,
    and mu at 1."""
    return {"eta": float(lr), "mu": 1.0}


def asgd_advance(step, lr, lambd, alpha, t0):
    """ASGD's host scalars after step number ``step``, for the next step (torch computes them
    at the end of a step, in float64 on the host): eta = lr / (1 + lambd lr t)^alpha,
    mu = 1 / max(1, t - t0)."""
    try:
        decay = (1.0 + lambd * lr * step) ** alpha
    except OverflowError:  # where torch's Python float raises, the limit: eta = 0
        decay = math.inf
    return {"eta": lr / decay, "mu": 1.0 / max(1.0, step - t0)}


def asgd_step_scalars(lambd, eta, mu):
    """The ASGD scalars that change every step (``ASGD_STEP_FIELDS``), from the host scalars
    eta and mu this step uses."""
    return eta, 1.0 - lambd * eta, mu, mu != 1.0


def asgd_scalars(*, eta, mu, lr, lambd, alpha, t0, weight_decay, maximize):
    eta, param_scale, mu, average = asgd_step_scalars(lambd, eta, mu)
    return _pack(_math.ASGDScalars, maximize, eta=eta, param_scale=param_scale,
                 weight_decay=weight_decay, mu=mu, average=average)


def _mu(name, value):
    value = check.real(name, value)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value}")
    return value


# eta is a step size lr / (1 + lambd lr t)^alpha >= 0; mu = 1 / max(1, t - t0) is in (0, 1]
ASGD_HOST_CHECKS = dict(eta=check.non_negative, mu=_mu)

# torch checks lr and weight_decay; a negative lambd could make 1 + lambd lr t negative (its
# power complex), a negative alpha would make eta grow
ASGD_HYPER = dict(lr=check.non_negative, lambd=check.non_negative, alpha=check.non_negative,
                  t0=check.real, weight_decay=check.non_negative, maximize=check.flag)


def asgd_step(param: Array, grad: Array, ax: Array, *, step: int, eta: Real | None = None,
              mu: Real | None = None, lr: Real = 1e-2, lambd: Real = 1e-4, alpha: Real = 0.75,
              t0: Real = 1e6, weight_decay: Real = 0.0, maximize: bool = False,
              device: Device = "auto") -> tuple[float, float]:
    """One ASGD step in place (torch.optim.ASGD); returns ``(eta, mu)`` for the next step, to
    pass as ``eta=`` and ``mu=`` then.  ``eta`` and ``mu`` are those the previous step returned
    (at step 1: lr and 1); None computes them from ``step`` assuming the hyper-parameters never
    changed.  ``ax``, the averaged param, starts at 0 (it copies the param while mu == 1)."""
    hyper = dict(lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay,
                 maximize=maximize)
    check_hyper(ASGD_HYPER, hyper)
    step = check.step_number("step", step)
    host = asgd_initial_host(lr) if step == 1 else asgd_advance(step - 1, lr, lambd, alpha, t0)
    for name, value in (("eta", eta), ("mu", mu)):
        if value is not None:
            host[name] = ASGD_HOST_CHECKS[name](name, value)
    kernel, names = asgd_layout()
    _run(kernel, device, param, grad, names, dict(ax=ax), asgd_scalars(**host, **hyper))
    after = asgd_advance(step, lr, lambd, alpha, t0)
    return after["eta"], after["mu"]


# ----------------------------------------------------------------------------------- Adafactor
def _adafactor_eps(name, value):
    """Adafactor's (eps1, eps2): eps1 None (the param dtype's machine epsilon) or >= 0 (torch's
    "epsilon1 should be >= 0"), eps2 >= 0."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a pair (eps1, eps2), eps1 None or a number, got "
                        f"{value!r}")
    eps1 = None if value[0] is None else check.non_negative(f"{name}[0]", value[0])
    return eps1, check.non_negative(f"{name}[1]", value[1])


def _beta2_decay(name, value):
    value = check.real(name, value)
    if value > 0:  # beta2_t = 1 - t^beta2_decay would leave [0, 1)
        raise ValueError(f"{name} must be <= 0, got {value}")
    return value


def _clipping_threshold(name, value):
    value = check.real(name, value)
    if value < 1:
        raise ValueError(f"{name} (the clipping threshold) must be >= 1, got {value}")
    return value


ADAFACTOR_HYPER = dict(lr=check.non_negative, beta2_decay=_beta2_decay, eps=_adafactor_eps,
                       d=_clipping_threshold, weight_decay=check.non_negative,
                       maximize=check.flag)


def adafactor_dims(shape):
    """(batches, rows, cols) of a param factored over its last two dims (the leading ones
    batched), or None for 0-d and 1-D params, which keep a full second moment."""
    shape = tuple(shape)
    if len(shape) < 2:
        return None
    return math.prod(shape[:-2]), shape[-2], shape[-1]


def adafactor_state_shapes(shape):
    """name -> shape of Adafactor's state buffers for a param of ``shape`` (torch's: the
    factors keep the reduced dim as 1)."""
    shape = tuple(shape)
    if len(shape) < 2:
        return {"variance": shape}
    return {"row_var": shape[:-1] + (1,), "col_var": shape[:-2] + (1, shape[-1])}


def adafactor_update_param(kernels, param, grad, states, dims, *, step, lr, beta2_decay, eps,
                           d, weight_decay, maximize, grad_scale=1.0, clip_value=math.inf):
    """One Adafactor step of one param (torch's single-tensor loop), run by ``kernels``
    (``_factored`` or ``_factored_cuda``) on flat views: ``states`` is (variance,) or (row_var,
    col_var); ``dims`` as ``adafactor_dims``.  The host arithmetic, in float64, as torch's:
    alpha = max(eps2, RMS(param)) * min(lr, 1/sqrt(t)) from the param before its decay, and
    the update's clipping max(1, RMS(U)/d) once U's sum of squares is known.
    ``grad_scale`` is the global-norm clipping factor, negated here to maximize."""
    if param.size == 0:  # nothing to update (torch's RMS would divide 0 by 0)
        return
    eps1, eps2 = eps
    dtype = np.dtype(param.dtype)
    if eps1 is None:
        eps1 = float(np.finfo(dtype).eps)
    size = param.size
    step = float(step)
    rho = min(lr, 1.0 / math.sqrt(step))
    alpha = max(eps2, math.sqrt(kernels.sum_squares(param)) / math.sqrt(size)) * rho
    h = _math.AdafactorScalars(
        grad_scale=-grad_scale if maximize else grad_scale, clip_value=clip_value,
        rounding_salt=0.0, beta2_weight=step ** beta2_decay, eps1=eps1, eps1_sq=eps1 * eps1,
        param_scale=1.0 - lr * weight_decay, neg_step=0.0, one=1.0)
    scalars = kernels.scalars(h, dtype)
    if dims is None:
        (variance,) = states
        update_sq = kernels.vector_update_sq(grad, variance, scalars)
    else:
        row_var, col_var = states
        row_mean = kernels.factored_moments(grad, row_var, col_var, dims, scalars)
        update_sq = kernels.factored_update_sq(grad, row_var, col_var, row_mean, dims, scalars)
    clipping = max(1.0, math.sqrt(update_sq) / (math.sqrt(size) * d))
    scalars = kernels.scalars(h._replace(neg_step=-alpha / clipping), dtype)
    if dims is None:
        kernels.vector_apply(param, grad, variance, scalars)
    else:
        kernels.factored_apply(param, grad, row_var, col_var, row_mean, dims, scalars)


def check_adafactor_param(param, name):
    """Adafactor's extra demands on a param: float32 or float64 (its reductions have no
    bfloat16 / float16 path), and C order when factored (the factors are over the last two
    dims as laid out in memory)."""
    if dtype_of(param) not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"{name} has dtype {dtype_of(param)}; Adafactor updates float32 and float64 "
                        "params")
    if len(shape_of(param)) >= 2 and not layout(param)[0]:
        raise ValueError(f"{name} is not C-contiguous; Adafactor factors the last two dims "
                         "and needs them in C order")


def adafactor_step(param: Array, grad: Array, row_var: Array | None = None,
                   col_var: Array | None = None, variance: Array | None = None, *, step: int,
                   lr: Real = 1e-2, beta2_decay: Real = -0.8,
                   eps: tuple[Real | None, Real] = (None, 1e-3), d: Real = 1.0,
                   weight_decay: Real = 0.0, maximize: bool = False,
                   device: Device = "auto") -> None:
    """One Adafactor step in place (torch.optim.Adafactor).  A param of 2 dims or more takes
    ``row_var`` (shape[:-1] + (1,)) and ``col_var`` (shape[:-2] + (1, shape[-1])), a 0-d or 1-D
    one ``variance`` (its shape); all in the param's dtype, C order, starting at 0."""
    hyper = dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay,
                 maximize=maximize)
    check_hyper(ADAFACTOR_HYPER, hyper)
    step = check.step_number("step", step)
    check.check_param(param, "param")
    check_adafactor_param(param, "param")
    check.check_like(grad, param, "grad", "param")
    given = dict(row_var=row_var, col_var=col_var, variance=variance)
    shape = shape_of(param)
    shapes = adafactor_state_shapes(shape)
    for name, state in given.items():
        if name not in shapes:
            if state is not None:
                raise ValueError(f"{name} is not used for a param of shape "
                                 f"{shape}: give {sorted(shapes)}")
            continue
        if state is None:
            raise ValueError(f"{name} is required for a param of shape {shape}")
        check._require_array(state, name)
        if shape_of(state) != shapes[name]:
            raise ValueError(f"{name} has shape {shape_of(state)}, a param of shape "
                             f"{shape} needs {shapes[name]}")
        if dtype_of(state) != dtype_of(param):
            raise TypeError(f"{name} has dtype {dtype_of(state)} but param has dtype {dtype_of(param)}")
        c_contiguous, _, readonly = layout(state)
        if not c_contiguous or readonly:
            raise ValueError(f"{name} must be a writeable C-contiguous array")
    states = [given[name] for name in shapes]
    named = [("param", param), ("grad", grad), *zip(shapes, states)]
    backend = dispatch.backend(dispatch.resolve_device(device, named))
    _reject_shared_memory(named)
    flat = backend.flat
    adafactor_update_param(dispatch.factored(backend), flat(param), flat(grad),
                         tuple(flat(s) for s in states), adafactor_dims(shape),
                         step=step, **hyper)
# ---------------------------------------------------------------------------------------- Muon
MUON_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # torch's (Keller Jordan's) quintic
MUON_EPS = 1e-7
MUON_NS_STEPS = 5
MUON_ADJUST_LR_FNS = (None, "original", "match_rms_adamw")
MUON_NS_MAX_STEPS = 100  # torch refuses this many and more ("for computational efficiency")


def muon_scalars(*, momentum, nesterov):
    """Muon's momentum scalars (``_math.MuonScalars``); clipping off, as ``_pack`` makes it."""
    return _pack(_math.MuonScalars, False, momentum=momentum, one_minus_momentum=1.0 - momentum,
                 one=1.0, nesterov=nesterov)


def muon_adjusted_lr(lr, adjust_lr_fn, shape):
    """The lr the orthogonalized update of an (A, B) param is scaled by: lr*sqrt(max(1, A/B))
    ('original', and None), or 0.2*lr*sqrt(max(A, B)) ('match_rms_adamw', Moonshot's: the
    update's RMS then matches AdamW's)."""
    rows, cols = shape
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr * math.sqrt(max(1.0, rows / cols))


def _ns_coefficients(name, value):
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        raise TypeError(f"{name} must be three numbers (a, b, c), got {value!r}")
    return tuple(check.real(f"{name}[{k}]", v) for k, v in enumerate(value))


def _ns_steps(name, value):
    value = check.count(name, value)
    if value >= MUON_NS_MAX_STEPS:
        raise ValueError(f"{name} must be below {MUON_NS_MAX_STEPS} (torch's bound), got {value}")
    return value


def _adjust_lr_fn(name, value):
    if value not in MUON_ADJUST_LR_FNS:
        raise ValueError(f"{name}: Adjust learning rate function {value} is not supported "
                         f"(torch's words); one of {MUON_ADJUST_LR_FNS}")
    return value


MUON_HYPER = dict(lr=check.non_negative, weight_decay=check.non_negative,
                  momentum=check.non_negative, nesterov=check.flag,
                  ns_coefficients=_ns_coefficients, eps=check.non_negative, ns_steps=_ns_steps,
                  adjust_lr_fn=_adjust_lr_fn)


def check_ns_dtype(ns_dtype):
    from ._newton_schulz import ROUNDINGS
    if ns_dtype not in ROUNDINGS:
        raise ValueError(f"ns_dtype must be one of {ROUNDINGS}, got {ns_dtype!r}")
    return ns_dtype


def check_matrix(param, label):
    """Muon orthogonalizes whole matrices: 2-D float32 or float64 params only."""
    if len(param.shape) != 2:
        raise ValueError(f"{label} has shape {tuple(param.shape)}: Muon only supports 2D "
                         "parameters (give biases, embeddings and the like to another "
                         "optimizer, such as AdamW)")
    if np.dtype(param.dtype) not in (np.float32, np.float64):
        raise TypeError(f"{label} is {np.dtype(param.dtype)}: Muon takes float32 and float64 "
                        "params")


def muon_step(param: Array, grad: Array, momentum_buffer: Array, *, lr: Real = 1e-3,
              weight_decay: Real = 0.1, momentum: Real = 0.95, nesterov: bool = True,
              ns_coefficients: tuple[Real, Real, Real] = MUON_COEFFICIENTS,
              eps: Real = MUON_EPS, ns_steps: int = MUON_NS_STEPS,
              adjust_lr_fn: str | None = None, device: Device = "auto",
              ns_dtype: str | None = "bfloat16") -> None:
    """One Muon step in place (torch.optim.Muon) on the 2-D ``param``: ``momentum_buffer``
    (the param's shape and dtype, zeros at the first step) averages the grads, and the param
    moves by the Newton-Schulz orthogonalization of the (Nesterov) update; see ``nopt.Muon``.
    The step count does not enter the rule."""
    hyper = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                 ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps,
                 adjust_lr_fn=adjust_lr_fn)
    check_hyper(MUON_HYPER, hyper)
    check_ns_dtype(ns_dtype)
    check.check_param(param, "param")
    check_matrix(param, "param")
    check.check_like(grad, param, "grad", "param")
    check.check_like(momentum_buffer, param, "momentum_buffer", "param", writeable=True)
    named = [("param", param), ("grad", grad), ("momentum_buffer", momentum_buffer)]
    device = dispatch.resolve_device(device, named)
    dispatch.backend(device)  # CUDA available (or the clear error)
    _reject_shared_memory(named)
    muon_run(device, param, grad, momentum_buffer, hyper, ns_dtype, grad_fields=None)


def muon_run(device, param, grad, momentum_buffer, hyper, ns_dtype, grad_fields):
    """Muon's step of one checked param (the class calls it too): the scalars from ``hyper``,
    ``grad_fields`` the (grad_scale, clip_value) of clipping or None."""
    from . import _newton_schulz
    dtype = np.dtype(param.dtype).type
    h = muon_scalars(momentum=hyper["momentum"], nesterov=hyper["nesterov"])
    if grad_fields is not None:
        h = h._replace(grad_scale=grad_fields[0], clip_value=grad_fields[1])
    h = type(h)(*(dtype(v) for v in h))
    lr = float(hyper["lr"])  # a 0-d array counts as its number
    _newton_schulz.backend(device).muon_update(
        param, grad, momentum_buffer, h, hyper["ns_coefficients"], hyper["ns_steps"],
        float(hyper["eps"]), ns_dtype, 1.0 - lr * float(hyper["weight_decay"]),
        muon_adjusted_lr(lr, hyper["adjust_lr_fn"], tuple(param.shape)))


# -------------------------------------------------------------------------------------- common
def check_hyper(checks, hyper):
    """Validate hyper-parameters with a table of ``name -> check(name, value)`` (the tables above
    are also what the optimizer classes validate their groups with)."""
    for name, value in hyper.items():
        checks[name](name, value)


def _run(kernel_name, device, param, grad, state_names, given, h):
    """Validate one param, its grad and the state arrays the kernel needs (picked by name from
    ``given``; the others are ignored), then run the kernel on flat views.  The state arrays
    share one dtype: the param's, or float32 or bfloat16 as ``state_dtype`` would make them."""
    check.check_param(param, "param")
    check.check_like(grad, param, "grad", "param")
    states = [given[name] for name in state_names]
    for name, state in zip(state_names, states):
        if state is None:
            raise ValueError(f"{name} is required with these options")
    storage = _codecs.NATIVE
    if states:
        check.check_like(states[0], param, state_names[0], "param", writeable=True,
                         dtype=dtype_of(states[0]))  # all but its dtype, checked next
        state_dtype = dtype_of(states[0])
        option = None if state_dtype == dtype_of(param) else state_dtype.name
        if option is not None and option not in _codecs.STATE_DTYPES:
            check.check_like(states[0], param, state_names[0], "param")  # the dtype error
        storage = _codecs.storage(dtype_of(param), _codecs.state_dtype_option(option), False)[0]
        for name, state in zip(state_names, states):
            check.check_like(state, param, name, "param", writeable=True, dtype=state_dtype)
    named = [("param", param), ("grad", grad), *zip(state_names, states)]
    backend = dispatch.backend(dispatch.resolve_device(device, named))
    _reject_shared_memory(named)  # after resolve_device: the spans are in one address space
    flat = backend.flat
    backend.kernel(kernel_name, storage)(
        flat(param), flat(grad), tuple(flat(s) for s in states),
        backend.scalars_argument(h, _codecs.compute_dtype(dtype_of(param))))


def _reject_shared_memory(named):
    """The kernel reads and writes param and state element by element: two of them sharing
    memory (the same array twice, or overlapping views) would each see the other's update.
    As in the classes, the grad may be exactly its param's memory (p -= lr * p), nothing
    else: no state, and no part of a param."""
    spans = [(name, *check.data_span(array)) for name, array in named]
    for k, (name, start, end) in enumerate(spans):
        for other, other_start, other_end in spans[:k]:
            overlap = start < other_end and other_start < end
            grad_is_param = ({name, other} == {"param", "grad"}
                             and (start, end) == (other_start, other_end))
            if overlap and not grad_is_param:
                raise ValueError(f"{name} shares memory with {other} (the same array, or "
                                 "overlapping views); each must be its own array")
