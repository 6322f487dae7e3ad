"""The per-element update rules: the ONLY place the optimizer equations live.

Each rule is a scalar function ``rule(param, grad, *state, h) -> (param, *state)`` compiled with
``inline="always"`` so that the CPU prange loops (``_cpu.py``) and the CUDA kernels (``_cuda.py``)
both inline the very same arithmetic.  ``h`` is a namedtuple of scalars that the host computed once
per step in float64 (``functional.py``) and that reach the kernels cast to the array dtype: the
rules never build a float constant of their own (``math.sqrt``, not ``** 0.5``), so float32
kernels stay float32 and never compile a second signature.  Flags travel as 0.0 / 1.0.

The CPU kernels receive the scalars as a small array of the param dtype (numba unboxes an array
in a fraction of the time a namedtuple takes: 1.2 us against 3.9 us per call) and turn it back
into the namedtuple with ``unpack_<family>`` before their loop; CUDA launches pass the namedtuple.

Semantics follow torch.optim (see DESIGN.md); comments name where a convention differs.
"""
import math
import types
from collections import namedtuple

from numba import njit

from . import _codecs

_rule = njit(inline="always", error_model="numpy")

# Every scalars namedtuple starts with the fields all rules share: the gradient's (see
# prepared_grad; grad_scale carries maximize as its sign), and the salt of this step's stochastic
# rounding (a whole number below 2**24; 0 and unused unless the kernel rounds stochastically).
_GRAD_FIELDS = "grad_scale clip_value rounding_salt "

SGDScalars = namedtuple(
    "SGDScalars",
    _GRAD_FIELDS + "lr momentum one_minus_dampening weight_decay nesterov first_momentum_step")
RMSpropScalars = namedtuple(
    "RMSpropScalars",
    _GRAD_FIELDS + "lr alpha one_minus_alpha eps weight_decay momentum centered eps_inside_sqrt")
AdamScalars = namedtuple(
    "AdamScalars",
    # param_scale is 1 - lr*weight_decay for AdamW's decoupled decay, exactly 1 otherwise;
    # weight_decay is the coupled L2 term (0 for AdamW).
    _GRAD_FIELDS + "step_size beta1 one_minus_beta1 beta2 one_minus_beta2 eps "
    "bias_correction2_sqrt weight_decay param_scale amsgrad")
AdagradScalars = namedtuple("AdagradScalars", _GRAD_FIELDS + "clr eps weight_decay")
AdamaxScalars = namedtuple(
    "AdamaxScalars", _GRAD_FIELDS + "clr beta1 one_minus_beta1 beta2 eps weight_decay")
RAdamScalars = namedtuple(
    "RAdamScalars",
    # rectify is 1 once the variance of the adaptive lr is tractable (rho_t > 5), and rect is the
    # rectification factor r_t then; param_scale / weight_decay as in AdamScalars
    _GRAD_FIELDS + "lr beta1 one_minus_beta1 beta2 one_minus_beta2 eps weight_decay "
    "param_scale bias_correction1 bias_correction2_sqrt rect rectify")
NAdamScalars = namedtuple(
    "NAdamScalars",
    # grad_coef = lr (1 - mu_t) / (1 - prod mu_1..t), avg_coef = lr mu_t+1 / (1 - prod mu_1..t+1):
    # the Nesterov look-ahead; param_scale / weight_decay as in AdamScalars
    _GRAD_FIELDS + "beta1 one_minus_beta1 beta2 one_minus_beta2 eps weight_decay param_scale "
    "bias_correction2 grad_coef avg_coef")
AdadeltaScalars = namedtuple(
    "AdadeltaScalars", _GRAD_FIELDS + "lr rho one_minus_rho eps weight_decay")
LionScalars = namedtuple(
    "LionScalars", _GRAD_FIELDS + "lr beta1 one_minus_beta1 beta2 one_minus_beta2 param_scale")
RpropScalars = namedtuple(
    "RpropScalars",
    # first_step (re)starts step_size at lr and prev at 0, as torch's state initialisation;
    # zero is 0 in the kernel's dtype (a literal 0.0 is float64 and would promote float32 rules)
    _GRAD_FIELDS + "lr etaminus etaplus step_size_min step_size_max first_step zero")
ASGDScalars = namedtuple(
    "ASGDScalars",
    # eta and mu are the ones torch computed at the end of the previous step; param_scale is
    # 1 - lambd*eta; average is 0 while mu == 1 (ax is then a copy of the param)
    _GRAD_FIELDS + "eta param_scale weight_decay mu average")

AdafactorScalars = namedtuple(
    "AdafactorScalars",
    # Adafactor is not elementwise: its per-element rules below are run by the reductions and
    # loops of ``_factored`` (CPU) and ``_factored_cuda``.  beta2_weight is t^beta2_decay (the
    # lerp weight); eps1 clamps the row factor's mean, eps1_sq the variance estimate;
    # param_scale is 1 - lr*weight_decay; neg_step is -alpha / max(1, RMS(U)/d), known only
    # after the pass that sums U^2 (0 until then); one is 1 in the kernel's dtype.
    _GRAD_FIELDS + "beta2_weight eps1 eps1_sq param_scale neg_step one")


# The array -> namedtuple unpackers (a test checks each against its namedtuple's fields).
@_rule
def unpack_sgd(v):
    return SGDScalars(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8])


@_rule
def unpack_rmsprop(v):
    return RMSpropScalars(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10])


@_rule
def unpack_adam(v):
    return AdamScalars(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11],
                       v[12])


@_rule
def unpack_adagrad(v):
    return AdagradScalars(v[0], v[1], v[2], v[3], v[4], v[5])


@_rule
def unpack_adamax(v):
    return AdamaxScalars(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8])


@_rule
def unpack_radam(v):
    return RAdamScalars(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11],
                        v[12], v[13], v[14])


@_rule
def unpack_nadam(v):
    return NAdamScalars(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11],
                        v[12])


@_rule
def unpack_adadelta(v):
    return AdadeltaScalars(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7])


@_rule
def unpack_lion(v):
    return LionScalars(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8])


@_rule
def unpack_rprop(v):
    return RpropScalars(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9])


@_rule
def unpack_asgd(v):
    return ASGDScalars(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7])


@_rule
def unpack_adafactor(v):
    return AdafactorScalars(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8])


SCALARS = {"lion": LionScalars, "sgd": SGDScalars, "rmsprop": RMSpropScalars, "adam": AdamScalars,
           "adamax": AdamaxScalars, "radam": RAdamScalars, "nadam": NAdamScalars,
           "adadelta": AdadeltaScalars, "adagrad": AdagradScalars, "rprop": RpropScalars,
           "asgd": ASGDScalars,
           "adafactor": AdafactorScalars}


@_rule
def prepared_grad(grad, h):
    """What every rule does to the gradient first: the global-norm clipping scale, negated for
    maximize (1 or -1 when off), then clamping to [-clip_value, clip_value] (inf when off; NaN
    passes, as in torch).  Folding these in spares a write pass over the grads.

    Written for the vectorizer: a branch on maximize, or an if/elif clamp, made the whole SGD
    momentum loop 1.5-2x slower; the sign rides on the scale (-(g*s) == g*(-s) exactly, and the
    clamp is symmetric) and the clamp is two selects."""
    grad = grad * h.grad_scale
    grad = h.clip_value if grad > h.clip_value else grad
    return -h.clip_value if grad < -h.clip_value else grad


@_rule
def sgd(param, grad, momentum_buffer, h):
    """SGD with optional momentum/Nesterov. ``momentum_buffer`` is ignored when momentum == 0."""
    grad = prepared_grad(grad, h)
    if h.weight_decay != 0:
        grad = grad + h.weight_decay * param
    if h.momentum != 0:
        if h.first_momentum_step:
            # torch: the buffer starts as a copy of the gradient, undampened
            momentum_buffer = grad
        else:
            momentum_buffer = h.momentum * momentum_buffer + h.one_minus_dampening * grad
        if h.nesterov:
            grad = grad + h.momentum * momentum_buffer
        else:
            grad = momentum_buffer
    return param - h.lr * grad, momentum_buffer


@_rule
def rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, h):
    """RMSprop; ``grad_avg`` is used only when centered, ``momentum_buffer`` only when
    momentum > 0."""
    grad = prepared_grad(grad, h)
    if h.weight_decay != 0:
        grad = grad + h.weight_decay * param
    square_avg = h.alpha * square_avg + h.one_minus_alpha * grad * grad
    variance = square_avg
    if h.centered:
        grad_avg = h.alpha * grad_avg + h.one_minus_alpha * grad
        variance = square_avg - grad_avg * grad_avg
    if h.eps_inside_sqrt:
        denom = math.sqrt(variance + h.eps)  # TF/Keras: sqrt(v + eps)
    else:
        denom = math.sqrt(variance) + h.eps  # torch: sqrt(v) + eps
    if h.momentum > 0:
        momentum_buffer = h.momentum * momentum_buffer + grad / denom
        param = param - h.lr * momentum_buffer
    else:
        param = param - h.lr * (grad / denom)
    return param, square_avg, grad_avg, momentum_buffer


@_rule
def adam_moments(param, grad, exp_avg, exp_avg_sq, h):
    """What Adam, RAdam and NAdam do first: the prepared grad, weight decay (decoupled: param
    scaled by ``param_scale`` before the moments, AdamW; coupled: the L2 term in the grad) and
    the two moment updates.  Returns (param, grad, exp_avg, exp_avg_sq)."""
    grad = prepared_grad(grad, h)
    param = param * h.param_scale
    if h.weight_decay != 0:
        grad = grad + h.weight_decay * param
    exp_avg = h.beta1 * exp_avg + h.one_minus_beta1 * grad
    exp_avg_sq = h.beta2 * exp_avg_sq + h.one_minus_beta2 * grad * grad
    return param, grad, exp_avg, exp_avg_sq


@_rule
def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, h):
    """Adam / AdamW with bias correction; ``max_exp_avg_sq`` is used only with amsgrad."""
    param, grad, exp_avg, exp_avg_sq = adam_moments(param, grad, exp_avg, exp_avg_sq, h)
    second_moment = exp_avg_sq
    if h.amsgrad:
        # max on the raw (uncorrected) second moment, NaN-propagating like torch.maximum
        if exp_avg_sq > max_exp_avg_sq or exp_avg_sq != exp_avg_sq:
            max_exp_avg_sq = exp_avg_sq
        second_moment = max_exp_avg_sq
    denom = math.sqrt(second_moment) / h.bias_correction2_sqrt + h.eps
    return param - h.step_size * exp_avg / denom, exp_avg, exp_avg_sq, max_exp_avg_sq


@_rule
def adagrad(param, grad, state_sum, h):
    """Adagrad; ``h.clr`` already holds lr / (1 + (t - 1) * lr_decay)."""
    grad = prepared_grad(grad, h)
    if h.weight_decay != 0:
        grad = grad + h.weight_decay * param
    state_sum = state_sum + grad * grad
    return param - h.clr * grad / (math.sqrt(state_sum) + h.eps), state_sum


@_rule
def adamax(param, grad, exp_avg, exp_inf, h):
    """Adamax (Adam with the infinity norm); ``h.clr`` already holds lr / (1 - beta1^t)."""
    grad = prepared_grad(grad, h)
    if h.weight_decay != 0:
        grad = grad + h.weight_decay * param
    exp_avg = h.beta1 * exp_avg + h.one_minus_beta1 * grad
    # u <- max(beta2*u, |g| + eps), NaN-propagating like torch.amax
    decayed, fresh = h.beta2 * exp_inf, abs(grad) + h.eps
    exp_inf = fresh if (fresh > decayed or fresh != fresh) else decayed
    return param - h.clr * exp_avg / exp_inf, exp_avg, exp_inf


@_rule
def radam(param, grad, exp_avg, exp_avg_sq, h):
    """RAdam: Adam whose adaptive lr is used only once its variance is tractable (rectify)."""
    param, grad, exp_avg, exp_avg_sq = adam_moments(param, grad, exp_avg, exp_avg_sq, h)
    update = exp_avg / h.bias_correction1 * h.lr
    if h.rectify:
        update = update * (h.bias_correction2_sqrt / (math.sqrt(exp_avg_sq) + h.eps)) * h.rect
    return param - update, exp_avg, exp_avg_sq


@_rule
def nadam(param, grad, exp_avg, exp_avg_sq, h):
    """NAdam (Dozat 2016, torch form): Adam whose first moment looks one step ahead, with a
    momentum schedule mu_t; torch divides by bias_correction2 inside the square root."""
    param, grad, exp_avg, exp_avg_sq = adam_moments(param, grad, exp_avg, exp_avg_sq, h)
    denom = math.sqrt(exp_avg_sq / h.bias_correction2) + h.eps
    param = param - h.grad_coef * (grad / denom) - h.avg_coef * (exp_avg / denom)
    return param, exp_avg, exp_avg_sq


@_rule
def adadelta(param, grad, square_avg, acc_delta, h):
    """Adadelta: the step is rescaled by the RMS of past steps over the RMS of gradients."""
    grad = prepared_grad(grad, h)
    if h.weight_decay != 0:
        grad = grad + h.weight_decay * param
    square_avg = h.rho * square_avg + h.one_minus_rho * grad * grad
    delta = math.sqrt(acc_delta + h.eps) / math.sqrt(square_avg + h.eps) * grad
    acc_delta = h.rho * acc_delta + h.one_minus_rho * delta * delta
    return param - h.lr * delta, square_avg, acc_delta


@_rule
def lion(param, grad, exp_avg, h):
    """Lion (Chen et al. 2023; lion-pytorch / optax): the step is the sign of an interpolation
    of momentum and gradient; the momentum itself uses beta2.  Decoupled decay first."""
    grad = prepared_grad(grad, h)
    param = param * h.param_scale
    direction = h.beta1 * exp_avg + h.one_minus_beta1 * grad
    if direction > 0:
        param = param - h.lr
    elif direction < 0:
        param = param + h.lr
    elif direction != direction:  # NaN propagates, as torch.sign does
        param = param + direction
    exp_avg = h.beta2 * exp_avg + h.one_minus_beta2 * grad
    return param, exp_avg


@_rule
def rprop(param, grad, prev, step_size, h):
    """Rprop (torch.optim.Rprop): each element's step size grows by etaplus while its gradient
    keeps its sign and shrinks by etaminus when the sign flips, clamped to [step_size_min,
    step_size_max]; the param moves by the step size against the gradient's sign.  After a flip
    the gradient counts as 0 (no move, and no sign to compare next step)."""
    grad = prepared_grad(grad, h)
    if h.first_step:
        step_size, prev = h.lr, h.zero
    product = grad * prev
    if product > 0:
        step_size = step_size * h.etaplus
    elif product < 0:
        step_size = step_size * h.etaminus
        grad = h.zero
    elif product != product:  # NaN: torch's sign of it is NaN, and so is the step size
        step_size = step_size * product
    # clamped even when unchanged (a first step's lr beyond the bounds); NaN passes, as in torch
    step_size = h.step_size_min if step_size < h.step_size_min else step_size
    step_size = h.step_size_max if step_size > h.step_size_max else step_size
    if grad > 0:
        param = param - step_size
    elif grad < 0:
        param = param + step_size
    else:  # 0 or NaN: torch's sign(grad) * step_size, NaN when either is NaN (or 0 * inf)
        param = param - grad * step_size
    return param, grad, step_size


@_rule
def asgd(param, grad, ax, h):
    """ASGD (torch.optim.ASGD): SGD with a decaying step eta and a decay of the param by
    lambd*eta, and ax, the running average of the params once t exceeds t0 (mu = 1/(t - t0))."""
    grad = prepared_grad(grad, h)
    if h.weight_decay != 0:
        grad = grad + h.weight_decay * param
    param = param * h.param_scale - h.eta * grad
    if h.average:
        ax = ax + (param - ax) * h.mu
    else:  # mu == 1: torch copies the param (ax + (param - ax) could round differently)
        ax = param
    return param, ax


@_rule
def torch_lerp(start, end, weight, one):
    """torch.lerp's formula, exact at both ends (weight 1, Adafactor's first step, gives
    ``end``): start + w*(end - start) for w < 1/2, else end - (end - start)*(1 - w).  The test
    is w + w < 1: a literal 0.5 would be float64."""
    diff = end - start
    if weight + weight < one:
        return start + weight * diff
    return end - diff * (one - weight)


@_rule
def adafactor_variance(grad, variance, h):
    """Adafactor's second moment of an unfactored (0-d or 1-D) param, ``grad`` prepared:
    V <- lerp(V, g^2, t^beta2_decay)."""
    return torch_lerp(variance, grad * grad, h.beta2_weight, h.one)


@_rule
def adafactor_factored_update(grad, row_var, col_var, row_mean, h):
    """Adafactor's update U of one element of a factored param (``grad`` prepared): the variance
    estimate R_i C_j / max(mean(R), eps1) (``row_mean`` is that max), clamped to eps1^2, then
    U = g / sqrt(it), in torch's order of roundings (rsqrt as 1 / sqrt)."""
    estimate = row_var * col_var / row_mean
    estimate = h.eps1_sq if estimate < h.eps1_sq else estimate  # NaN passes, as clamp_
    return grad * (h.one / math.sqrt(estimate))


@_rule
def adafactor_vector_update(grad, variance, h):
    """Adafactor's update U of an unfactored element from its (updated) second moment."""
    estimate = h.eps1_sq if variance < h.eps1_sq else variance
    return grad * (h.one / math.sqrt(estimate))


@_rule
def adafactor_param(param, update, h):
    """The param write: decoupled weight decay p*(1 - lr*wd), then p - alpha*U/max(1, RMS(U)/d)
    (two roundings, as torch's mul_ then add_)."""
    param = param * h.param_scale
    return param + h.neg_step * update


# ------------------------------------------------------------------------------------------------
# Appliers: one per kernel variant, ``name_at(i, param, grad, *states, h)``, applying a rule to
# element i of 1-D arrays; ``states`` are the buffers that variant updates, in the order
# ``functional.<name>_layout`` lists them.  Both backends loop over i and call these, so the
# mapping from buffers to rule arguments exists once.  Where a variant has no buffer for a state
# the rule takes, the loaded grad stands in: a value at hand, which the rule's flags ignore.
# (The buffers are separate arguments, not a tuple: numba's parallel regions lose writes made
# through a tuple of arrays, numba issues #7135 and #10338.)
#
# Elements are loaded and stored through codecs (``_codecs``): ``load_param`` / ``store_param``,
# ``load_grad``, ``load_state`` / ``store_state`` are names the appliers leave free, bound per
# kernel by ``applier(name, storage)``: identity for float32 / float64 arrays, widening and
# round-to-nearest-even for the bits of bfloat16 / float16 ones (or stochastic rounding, salted
# by ``h.rounding_salt``: the stores take ``h``).  The rules above never see storage.
def bound(function, name, **names):
    """A copy of ``function`` whose free names ``names`` are bound, under its own (qualified)
    name; the globals of its module stay visible."""
    clone = types.FunctionType(function.__code__, {**function.__globals__, **names}, name)
    clone.__qualname__ = name
    return clone


# The multi-tensor loops (CPU and GPU) always pass four state buffers (the missing ones empty
# stand-ins, never read); these adapt an applier of 0-4 buffers to that call (``apply_at``
# bound per kernel by ``bound``).
def _with0(i, param, grad, a, b, d, e, h):
    apply_at(i, param, grad, h)  # noqa: F821


def _with1(i, param, grad, a, b, d, e, h):
    apply_at(i, param, grad, a, h)  # noqa: F821


def _with2(i, param, grad, a, b, d, e, h):
    apply_at(i, param, grad, a, b, h)  # noqa: F821


def _with3(i, param, grad, a, b, d, e, h):
    apply_at(i, param, grad, a, b, d, h)  # noqa: F821


def _with4(i, param, grad, a, b, d, e, h):
    apply_at(i, param, grad, a, b, d, e, h)  # noqa: F821


WITH_FOUR = (_with0, _with1, _with2, _with3, _with4)


# How a kernel's stores call their codec (``store`` bound by ``applier``): nearest-even codecs
# take the value alone, stochastic ones the step's salt too.
def _store_nearest(value, h):
    return store(value)  # noqa: F821


def _store_stochastic(value, h):
    return store(value, h.rounding_salt)  # noqa: F821


APPLIERS = {}  # kernel variant -> its applier, a plain function (its codecs not yet bound)
# the codec names as the appliers see them until ``applier`` binds a kernel's own
load_param = load_grad = load_state = _codecs.native_load
store_param = store_state = _rule(bound(_store_nearest, "store_native",
                                        store=_codecs.native_store))


def _applier(function):
    APPLIERS[function.__name__[:-len("_at")]] = function
    return function


@_applier
def sgd_at(i, param, grad, h):
    g = load_grad(grad[i])
    p, _ = sgd(load_param(param[i]), g, g, h)
    param[i] = store_param(p, h)


@_applier
def sgd_momentum_at(i, param, grad, momentum_buffer, h):
    p, b = sgd(load_param(param[i]), load_grad(grad[i]), load_state(momentum_buffer[i]), h)
    param[i], momentum_buffer[i] = store_param(p, h), store_state(b, h)


@_applier
def rmsprop_at(i, param, grad, square_avg, h):
    g = load_grad(grad[i])
    p, v, _, _ = rmsprop(load_param(param[i]), g, load_state(square_avg[i]), g, g, h)
    param[i], square_avg[i] = store_param(p, h), store_state(v, h)


@_applier
def rmsprop_centered_at(i, param, grad, square_avg, grad_avg, h):
    g = load_grad(grad[i])
    p, v, a, _ = rmsprop(load_param(param[i]), g, load_state(square_avg[i]),
                         load_state(grad_avg[i]), g, h)
    param[i], square_avg[i], grad_avg[i] = store_param(p, h), store_state(v, h), store_state(a, h)


@_applier
def rmsprop_momentum_at(i, param, grad, square_avg, momentum_buffer, h):
    g = load_grad(grad[i])
    p, v, _, b = rmsprop(load_param(param[i]), g, load_state(square_avg[i]), g,
                         load_state(momentum_buffer[i]), h)
    param[i] = store_param(p, h)
    square_avg[i], momentum_buffer[i] = store_state(v, h), store_state(b, h)


@_applier
def rmsprop_centered_momentum_at(i, param, grad, square_avg, grad_avg, momentum_buffer, h):
    p, v, a, b = rmsprop(load_param(param[i]), load_grad(grad[i]),
                         load_state(square_avg[i]), load_state(grad_avg[i]),
                         load_state(momentum_buffer[i]), h)
    param[i], square_avg[i] = store_param(p, h), store_state(v, h)
    grad_avg[i], momentum_buffer[i] = store_state(a, h), store_state(b, h)


@_applier
def adam_at(i, param, grad, exp_avg, exp_avg_sq, h):
    g = load_grad(grad[i])
    p, m, v, _ = adam(load_param(param[i]), g, load_state(exp_avg[i]),
                      load_state(exp_avg_sq[i]), g, h)
    param[i], exp_avg[i], exp_avg_sq[i] = store_param(p, h), store_state(m, h), store_state(v, h)


@_applier
def adam_amsgrad_at(i, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, h):
    p, m, v, vmax = adam(load_param(param[i]), load_grad(grad[i]),
                         load_state(exp_avg[i]), load_state(exp_avg_sq[i]),
                         load_state(max_exp_avg_sq[i]), h)
    param[i], exp_avg[i] = store_param(p, h), store_state(m, h)
    exp_avg_sq[i], max_exp_avg_sq[i] = store_state(v, h), store_state(vmax, h)


@_applier
def adagrad_at(i, param, grad, state_sum, h):
    p, s = adagrad(load_param(param[i]), load_grad(grad[i]), load_state(state_sum[i]), h)
    param[i], state_sum[i] = store_param(p, h), store_state(s, h)


@_applier
def adamax_at(i, param, grad, exp_avg, exp_inf, h):
    p, m, u = adamax(load_param(param[i]), load_grad(grad[i]), load_state(exp_avg[i]),
                     load_state(exp_inf[i]), h)
    param[i], exp_avg[i], exp_inf[i] = store_param(p, h), store_state(m, h), store_state(u, h)


@_applier
def radam_at(i, param, grad, exp_avg, exp_avg_sq, h):
    p, m, v = radam(load_param(param[i]), load_grad(grad[i]), load_state(exp_avg[i]),
                    load_state(exp_avg_sq[i]), h)
    param[i], exp_avg[i], exp_avg_sq[i] = store_param(p, h), store_state(m, h), store_state(v, h)


@_applier
def nadam_at(i, param, grad, exp_avg, exp_avg_sq, h):
    p, m, v = nadam(load_param(param[i]), load_grad(grad[i]), load_state(exp_avg[i]),
                    load_state(exp_avg_sq[i]), h)
    param[i], exp_avg[i], exp_avg_sq[i] = store_param(p, h), store_state(m, h), store_state(v, h)


@_applier
def adadelta_at(i, param, grad, square_avg, acc_delta, h):
    p, v, u = adadelta(load_param(param[i]), load_grad(grad[i]),
                       load_state(square_avg[i]), load_state(acc_delta[i]), h)
    param[i], square_avg[i], acc_delta[i] = store_param(p, h), store_state(v, h), store_state(u, h)


@_applier
def lion_at(i, param, grad, exp_avg, h):
    p, m = lion(load_param(param[i]), load_grad(grad[i]), load_state(exp_avg[i]), h)
    param[i], exp_avg[i] = store_param(p, h), store_state(m, h)


@_applier
def rprop_at(i, param, grad, prev, step_size, h):
    p, g, s = rprop(load_param(param[i]), load_grad(grad[i]), load_state(prev[i]),
                    load_state(step_size[i]), h)
    param[i], prev[i], step_size[i] = store_param(p, h), store_state(g, h), store_state(s, h)


@_applier
def asgd_at(i, param, grad, ax, h):
    p, a = asgd(load_param(param[i]), load_grad(grad[i]), load_state(ax[i]), h)
    param[i], ax[i] = store_param(p, h), store_state(a, h)


# With master weights the rule updates the float32 master copy, the kernel's last buffer (its
# param codec is native), and the param receives the rounded result: one wrapper per number of
# state buffers, ``rule_at`` and ``round_param`` bound per kernel.
def _master0(i, param, grad, master, h):
    rule_at(i, master, grad, h)  # noqa: F821 (bound per kernel, as below)
    param[i] = round_param(master[i], h)  # noqa: F821


def _master1(i, param, grad, a, master, h):
    rule_at(i, master, grad, a, h)  # noqa: F821
    param[i] = round_param(master[i], h)  # noqa: F821


def _master2(i, param, grad, a, b, master, h):
    rule_at(i, master, grad, a, b, h)  # noqa: F821
    param[i] = round_param(master[i], h)  # noqa: F821


def _master3(i, param, grad, a, b, d, master, h):
    rule_at(i, master, grad, a, b, d, h)  # noqa: F821
    param[i] = round_param(master[i], h)  # noqa: F821


_MASTERS = (_master0, _master1, _master2, _master3)


def applier(name, storage, wrap=None, codecs=None, stochastic=None):
    """The applier of kernel variant ``name`` (``name_at(i, param, grad, *states, h)``, plus
    the master buffer after the states when ``storage.master``), its elements loaded and stored
    through the codecs of ``storage`` (a ``_codecs.Storage``).  ``wrap`` makes each function a
    device function: compiled to inline by default; the CUDA simulator keeps them Python, with
    its own ``codecs`` and ``stochastic`` stores (``_codecs.PYTHON_CODECS``,
    ``PYTHON_STOCHASTIC_STORES``)."""
    wrap, codecs = wrap or _rule, codecs or _codecs.CODECS
    stochastic = stochastic or _codecs.STOCHASTIC_STORES

    def store(codec, rounding=storage.stochastic):
        if rounding and codec in stochastic:
            return wrap(bound(_store_stochastic, f"store_{codec}_sr", store=stochastic[codec]))
        return wrap(bound(_store_nearest, f"store_{codec}", store=codecs[codec][1]))
    param_codec = "native" if storage.master else storage.param
    tag = _codecs.tag(storage)
    rule_at = wrap(bound(APPLIERS[name], f"{name}_at_{tag}", load_param=codecs[param_codec][0],
                         store_param=store(param_codec), load_grad=codecs[storage.param][0],
                         load_state=codecs[storage.state][0], store_state=store(storage.state)))
    if not storage.master:
        return rule_at
    # the param copy of a master weight rounds to nearest: the master holds the exact value
    return wrap(bound(_MASTERS[KERNELS[name][0]], f"{name}_at_{tag}_master", rule_at=rule_at,
                      round_param=store(storage.param, rounding=False)))


# The blockwise (int8 state) loops keep each state of a block in float32 scratch arrays s0..s2
# and call ``arranged(i, p, g, s0, s1, s2, mst, h)``, which passes the applier as many of them
# as it has, then the master copy ``mst`` if any: one wrapper per (number of states, master).
def _arranged1(i, p, g, s0, s1, s2, mst, h):
    rule_at(i, p, g, s0, h)  # noqa: F821 (bound per kernel, as below)


def _arranged2(i, p, g, s0, s1, s2, mst, h):
    rule_at(i, p, g, s0, s1, h)  # noqa: F821


def _arranged3(i, p, g, s0, s1, s2, mst, h):
    rule_at(i, p, g, s0, s1, s2, h)  # noqa: F821


def _arranged1_master(i, p, g, s0, s1, s2, mst, h):
    rule_at(i, p, g, s0, mst, h)  # noqa: F821


def _arranged2_master(i, p, g, s0, s1, s2, mst, h):
    rule_at(i, p, g, s0, s1, mst, h)  # noqa: F821


def _arranged3_master(i, p, g, s0, s1, s2, mst, h):
    rule_at(i, p, g, s0, s1, s2, mst, h)  # noqa: F821


_ARRANGED = {(1, False): _arranged1, (2, False): _arranged2, (3, False): _arranged3,
             (1, True): _arranged1_master, (2, True): _arranged2_master,
             (3, True): _arranged3_master}


def arranged(name, storage, wrap=None, codecs=None):
    """The applier of variant ``name`` for the blockwise loops: ``(i, p, g, s0, s1, s2, mst,
    h)`` with its states in the float32 scratch s0.. (their codec native) and the master copy
    (if ``storage.master``) in ``mst``; ``wrap`` and ``codecs`` as for ``applier``."""
    wrap = wrap or _rule
    n_states = KERNELS[name][0]
    rule_at = applier(name, storage._replace(state="native", signs=()), wrap, codecs)
    return wrap(bound(_ARRANGED[n_states, storage.master],
                      f"{name}_at_{_codecs.tag(storage)}_arranged", rule_at=rule_at))


# ---------------------------------------------------------------------------------------- Muon
# Muon's elementwise halves; the Newton-Schulz orthogonalization between them is matrix work
# (numba_opt._newton_schulz).  Its own loops call these, not the KERNELS table: the update
# they produce is a whole matrix, not a new param value.
MuonScalars = namedtuple(
    "MuonScalars",
    # one: 1 in the param's dtype, for torch.lerp's 1 - weight (see torch_lerp)
    _GRAD_FIELDS + "momentum one_minus_momentum one nesterov")


@_rule
def muon_momentum(grad, momentum_buffer, h):
    """Muon's momentum (torch.optim.Muon): an average, B <- lerp(B, g, 1 - mu), and the matrix
    to orthogonalize, lerp(g, B, mu) with Nesterov, else B.  Returns (buffer, update).  torch
    takes 1 - weight in the param's dtype (1 - (1 - mu) is not always mu), as torch_lerp does."""
    grad = prepared_grad(grad, h)
    momentum_buffer = torch_lerp(momentum_buffer, grad, h.one_minus_momentum, h.one)
    if h.nesterov:
        return momentum_buffer, torch_lerp(grad, momentum_buffer, h.momentum, h.one)
    return momentum_buffer, momentum_buffer


@_rule
def muon_apply(param, orthogonal, param_scale, adjusted_lr):
    """Muon's param update: decoupled decay p*(1 - lr*weight_decay), then the orthogonalized
    update O times the shape-adjusted lr."""
    return param * param_scale - adjusted_lr * orthogonal


# kernel variant -> (how many state buffers it updates, its rule family)
KERNELS = {"sgd": (0, "sgd"), "sgd_momentum": (1, "sgd"), "rmsprop": (1, "rmsprop"),
           "rmsprop_centered": (2, "rmsprop"), "rmsprop_momentum": (2, "rmsprop"),
           "rmsprop_centered_momentum": (3, "rmsprop"), "adam": (2, "adam"),
           "adam_amsgrad": (3, "adam"), "adagrad": (1, "adagrad"), "adamax": (2, "adamax"),
           "radam": (2, "radam"), "nadam": (2, "nadam"), "adadelta": (2, "adadelta"),
           "lion": (1, "lion"), "rprop": (2, "rprop"), "asgd": (1, "asgd")}
