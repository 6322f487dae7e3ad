"""Float64 NumPy reference optimizers, written straight from the equations in DESIGN.md.

Deliberately plain: whole-array NumPy, float64, no shared code with numba_opt.  Each function
updates ``param`` (a float64 array) and the ``state`` dict in place for one step.
"""
import numpy as np


def sgd(param, grad, state, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
        nesterov=False, maximize=False):
    g = -grad if maximize else grad.copy()
    if weight_decay:
        g = g + weight_decay * param
    if momentum:
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = g.copy()
        else:
            state["momentum_buffer"] = momentum * state["momentum_buffer"] + (1 - dampening) * g
        b = state["momentum_buffer"]
        g = g + momentum * b if nesterov else b
    param -= lr * g


def rmsprop(param, grad, state, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
            centered=False, maximize=False, eps_inside_sqrt=False, initial_square_avg=0.0):
    g = -grad if maximize else grad.copy()
    if weight_decay:
        g = g + weight_decay * param
    v = state["square_avg"] = (alpha * state.get("square_avg", initial_square_avg)
                               + (1 - alpha) * g * g)
    if centered:
        gbar = state["grad_avg"] = alpha * state.get("grad_avg", 0.0) + (1 - alpha) * g
        v = v - gbar * gbar
    denom = np.sqrt(v + eps) if eps_inside_sqrt else np.sqrt(v) + eps
    if momentum > 0:
        b = state["momentum_buffer"] = momentum * state.get("momentum_buffer", 0.0) + g / denom
        param -= lr * b
    else:
        param -= lr * g / denom


def _adam_moments(param, grad, state, lr, betas, weight_decay, decoupled_weight_decay, maximize):
    """The part Adam, RAdam and NAdam share: step count, weight decay (coupled or decoupled,
    applied to param in place) and the two moments; returns (t, g, m, v), g the decayed grad."""
    b1, b2 = betas
    t = state["step"] = state.get("step", 0) + 1
    g = -grad if maximize else grad.copy()
    if weight_decay:
        if decoupled_weight_decay:
            param *= 1 - lr * weight_decay
        else:
            g = g + weight_decay * param
    m = state["exp_avg"] = b1 * state.get("exp_avg", 0.0) + (1 - b1) * g
    v = state["exp_avg_sq"] = b2 * state.get("exp_avg_sq", 0.0) + (1 - b2) * g * g
    return t, g, m, v


def adam(param, grad, state, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
         amsgrad=False, maximize=False, decoupled_weight_decay=False):
    b1, b2 = betas
    t, _, m, v = _adam_moments(param, grad, state, lr, betas, weight_decay,
                               decoupled_weight_decay, maximize)
    if amsgrad:
        v = state["max_exp_avg_sq"] = np.maximum(state.get("max_exp_avg_sq", 0.0), v)
    bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
    param -= (lr / bc1) * m / (np.sqrt(v) / np.sqrt(bc2) + eps)


def adamw(param, grad, state, weight_decay=1e-2, **kw):
    adam(param, grad, state, weight_decay=weight_decay, decoupled_weight_decay=True, **kw)


def adagrad(param, grad, state, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
            initial_accumulator_value=0.0, eps=1e-10, maximize=False):
    t = state["step"] = state.get("step", 0) + 1
    g = -grad if maximize else grad.copy()
    if weight_decay:
        g = g + weight_decay * param
    s = state["sum"] = state.get("sum", initial_accumulator_value) + g * g
    clr = lr / (1 + (t - 1) * lr_decay)
    param -= clr * g / (np.sqrt(s) + eps)


def adamax(param, grad, state, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
           maximize=False):
    b1, b2 = betas
    t = state["step"] = state.get("step", 0) + 1
    g = -grad if maximize else grad.copy()
    if weight_decay:
        g = g + weight_decay * param
    m = state["exp_avg"] = b1 * state.get("exp_avg", 0.0) + (1 - b1) * g
    u = state["exp_inf"] = np.maximum(b2 * state.get("exp_inf", 0.0), np.abs(g) + eps)
    param -= lr / (1 - b1 ** t) * m / u


def radam(param, grad, state, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
          decoupled_weight_decay=False, maximize=False):
    b1, b2 = betas
    t, _, m, v = _adam_moments(param, grad, state, lr, betas, weight_decay,
                               decoupled_weight_decay, maximize)
    m_hat = m / (1 - b1 ** t)
    rho_inf = 2 / (1 - b2) - 1
    rho_t = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
    if rho_t > 5:
        r = np.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        param -= lr * m_hat * r * np.sqrt(1 - b2 ** t) / (np.sqrt(v) + eps)
    else:
        param -= lr * m_hat


def nadam(param, grad, state, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
          momentum_decay=4e-3, decoupled_weight_decay=False, maximize=False):
    """Dozat's NAdam as torch writes it: a momentum schedule mu_t and a Nesterov look-ahead."""
    b1, b2 = betas
    t, g, m, v = _adam_moments(param, grad, state, lr, betas, weight_decay,
                               decoupled_weight_decay, maximize)
    mu = b1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))
    mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
    prod = state["mu_product"] = state.get("mu_product", 1.0) * mu
    denom = np.sqrt(v / (1 - b2 ** t)) + eps
    param -= (lr * (1 - mu) / (1 - prod) * g
              + lr * mu_next / (1 - prod * mu_next) * m) / denom


def adadelta(param, grad, state, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False):
    g = -grad if maximize else grad.copy()
    if weight_decay:
        g = g + weight_decay * param
    v = state["square_avg"] = rho * state.get("square_avg", 0.0) + (1 - rho) * g * g
    u = state.get("acc_delta", 0.0)
    delta = np.sqrt(u + eps) / np.sqrt(v + eps) * g
    state["acc_delta"] = rho * u + (1 - rho) * delta * delta
    param -= lr * delta


def lion(param, grad, state, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, maximize=False):
    """lion-pytorch's update (Chen et al. 2023, Algorithm 2)."""
    b1, b2 = betas
    g = -grad if maximize else grad.copy()
    m = state.get("exp_avg", np.zeros_like(param))
    param *= 1 - lr * weight_decay
    param -= lr * np.sign(b1 * m + (1 - b1) * g)
    state["exp_avg"] = b2 * m + (1 - b2) * g


def rprop(param, grad, state, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50), maximize=False):
    """Resilient backprop: per-element step sizes that grow while the gradient keeps its sign
    and shrink when it flips (a flipped gradient then counts as 0)."""
    etaminus, etaplus = etas
    g = -grad if maximize else grad.copy()
    product = g * state.get("prev", 0.0)
    # the factor is NaN where the product is NaN, as torch's sign of it
    factor = np.select([product > 0, product < 0, product == 0], [etaplus, etaminus, 1.0],
                       np.nan)
    step_size = np.clip(state.get("step_size", lr) * factor, *step_sizes)
    g = np.where(product < 0, 0.0, g)
    param -= np.sign(g) * step_size
    state["prev"], state["step_size"] = g, step_size


def asgd(param, grad, state, lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0.0,
         maximize=False):
    """Averaged SGD; eta and mu are computed at the end of a step, for the next one."""
    t = state["step"] = state.get("step", 0) + 1
    eta, mu = state.get("eta", lr), state.get("mu", 1.0)
    g = -grad if maximize else grad.copy()
    if weight_decay:
        g = g + weight_decay * param
    param *= 1 - lambd * eta
    param -= eta * g
    if mu == 1:
        state["ax"] = param.copy()
    else:
        state["ax"] = state["ax"] + mu * (param - state["ax"])
    state["eta"] = lr / (1 + lambd * lr * t) ** alpha
    state["mu"] = 1 / max(1, t - t0)


def adafactor(param, grad, state, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0,
              weight_decay=0.0, maximize=False, eps_dtype=np.float64):
    """Adafactor as torch states it: second moment factored over the last two dims for params
    of 2 dims or more; ``eps_dtype``: whose machine epsilon eps1=None means (the param's)."""
    g = -grad if maximize else grad.copy()
    eps1, eps2 = eps
    if eps1 is None:
        eps1 = float(np.finfo(eps_dtype).eps)
    t = state["step"] = state.get("step", 0) + 1
    w = t ** beta2_decay  # 1 - beta2_t
    rho = min(lr, 1 / np.sqrt(t))
    alpha = max(eps2, np.sqrt(np.mean(param * param))) * rho
    param *= 1 - lr * weight_decay
    if g.ndim >= 2:
        r = state["row_var"] = ((1 - w) * state.get("row_var", 0.0)
                                + w * np.mean(g * g, axis=-1, keepdims=True))
        c = state["col_var"] = ((1 - w) * state.get("col_var", 0.0)
                                + w * np.mean(g * g, axis=-2, keepdims=True))
        v = r * c / np.maximum(np.mean(r, axis=-2, keepdims=True), eps1)
    else:
        v = state["variance"] = (1 - w) * state.get("variance", 0.0) + w * g * g
    u = g / np.sqrt(np.maximum(v, eps1 * eps1))
    param -= alpha * u / max(1.0, np.sqrt(np.mean(u * u)) / d)


def muon(param, grad, state, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
         ns_coefficients=(3.4445, -4.7750, 2.0315), eps=1e-7, ns_steps=5, adjust_lr_fn=None):
    """Muon (torch.optim.Muon's equations) for a 2-D param, all in float64: no bfloat16."""
    buf = state["momentum_buffer"] = (momentum * state.get("momentum_buffer", 0.0)
                                      + (1 - momentum) * grad)
    update = (1 - momentum) * grad + momentum * buf if nesterov else buf
    rows, cols = param.shape
    x = update.T if rows > cols else update
    x = x / max(np.sqrt(np.sum(x * x)), eps)
    a, b, c = ns_coefficients
    for _ in range(ns_steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    orthogonal = x.T if rows > cols else x
    if adjust_lr_fn == "match_rms_adamw":
        adjusted_lr = 0.2 * lr * np.sqrt(max(rows, cols))
    else:
        adjusted_lr = lr * np.sqrt(max(1.0, rows / cols))
    param *= 1 - lr * weight_decay
    param -= adjusted_lr * orthogonal


RULES = {"SGD": sgd, "RMSprop": rmsprop, "Adam": adam, "AdamW": adamw, "Adagrad": adagrad,
         "Adamax": adamax, "RAdam": radam, "NAdam": nadam, "Adadelta": adadelta,
         "Rprop": rprop, "ASGD": asgd, "Lion": lion, "Adafactor": adafactor}


def stored_step(name, param, grad, state, param_dtype, state_dtype, **kwargs):
    """One step of ``RULES[name]`` in float64 on values kept in lower-precision storage, as a
    kernel storing them rounds them: after the step ``param`` is rounded to ``param_dtype`` (a
    master copy: float32) and every state array to ``state_dtype``, to nearest even (NumPy's and
    ml_dtypes' casts).  Host scalars (step, mu_product, eta, mu: Python numbers) stay as they
    are; a 0-d param's buffers are NumPy scalars.  The arithmetic itself is float64, where the
    kernels compute in float32: see the tolerance where this is used."""
    RULES[name](param, grad, state, **kwargs)
    param[...] = param.astype(param_dtype).astype(np.float64)
    for key, value in state.items():
        if is_buffer(value):
            state[key] = np.asarray(value).astype(state_dtype).astype(np.float64)


def is_buffer(value):
    """A state buffer of the functions above (a host scalar is a Python number)."""
    return isinstance(value, (np.ndarray, np.generic))
