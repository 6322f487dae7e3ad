from __future__ import annotations

import itertools
import math
from typing import Any

from .. import dispatch, functional as F
from .._interface import shape_of
from .._typing import Device, Params, Real
from .base import Optimizer

FACTORED = ("row_var", "col_var")
UNFACTORED = ("variance",)


class Adafactor(Optimizer):
    """Adafactor (torch.optim.Adafactor): a second moment factored into row and column means
    for params of 2 dims or more (over the last two dims, leading dims batched), a full one for
    0-d and 1-D params, and a step size relative to the param's RMS.  With t the param's step,
    G the gradient (negated to maximize), beta2_t weight w = t^beta2_decay:

    rho_t = min(lr, 1/sqrt(t)); alpha = max(eps2, RMS(p)) * rho_t (p before this step);
    p <- p * (1 - lr*weight_decay);
    factored: R <- lerp(R, mean over the last dim of G^2, w), C <- lerp(C, mean over the
    second-last dim of G^2, w), V = R C / max(mean(R), eps1); else V <- lerp(V, G^2, w);
    U = G / sqrt(max(V, eps1^2)); p <- p - alpha * U / max(1, RMS(U) / d).

    State per param, as torch's: ``step``, and ``row_var`` (shape[:-1] + (1,)) and ``col_var``
    (shape[:-2] + (1, shape[-1])) for factored params, ``variance`` for the others.

    Not elementwise, so it has loops of its own (``numba_opt._factored``, CUDA
    ``_factored_cuda``): several passes per param, one param at a time, and a host sync per
    pass on the GPU for the sums (torch's ``.item()`` calls).  Params must be float32 or
    float64, and C-contiguous from 2 dims on.  ``state_dtype``, ``master_weights`` and
    ``stochastic_rounding`` are refused (a ValueError): the factored state is already small,
    and there is no low-precision path; ``ZeroRedundancyOptimizer`` refuses Adafactor (its
    element-range shards would cut the rows and columns the factors average over).
    ``max_grad_norm`` and ``clip_value`` of ``step`` work as for the other optimizers.

    One difference from torch: with ``eps=(None, ...)`` each param uses its own dtype's machine
    epsilon, where torch's loop takes the first stepping param's for the whole group (the same
    unless a group mixes float32 and float64 params).
    """
    state_names = FACTORED + UNFACTORED
    hyper_checks = F.ADAFACTOR_HYPER
    elementwise = False  # row, column and whole-param reductions

    param_docs = {"lr": "the largest relative step size rho_t = min(lr, 1/sqrt(t)), and the "
                        "weight decay's factor",
                  "beta2_decay": "the second moment's lerp weight is t^beta2_decay (beta2_t = "
                                 "1 - t^beta2_decay); <= 0",
                  "eps": "(eps1, eps2): eps1 bounds the variance estimate below by eps1^2 and "
                         "the row factor's mean by eps1 (None: the param dtype's machine "
                         "epsilon); eps2 bounds RMS(param) below in the step size",
                  "d": "the clipping threshold: the update is scaled down to RMS(U) <= d; >= 1",
                  "weight_decay": "decoupled weight decay: p <- p*(1 - lr*weight_decay) before "
                                  "the update",
                  "state_dtype": "must stay None (Adafactor keeps its small factored state in "
                                 "the param's dtype)",
                  "master_weights": "must stay False (Adafactor updates float32 and float64 "
                                    "params only)",
                  "stochastic_rounding": "must stay False (nothing is stored in bfloat16 or "
                                         "float16)",
                  "rounding_seed": "must stay None (see stochastic_rounding)"}

    def __init__(self, params: Params, lr: Real = 1e-2, beta2_decay: Real = -0.8,
                 eps: tuple[Real | None, Real] = (None, 1e-3), d: Real = 1.0,
                 weight_decay: Real = 0.0, *, maximize: bool = False, device: Device = "auto",
                 state_dtype: str | None = None, master_weights: bool = False,
                 stochastic_rounding: bool = False, rounding_seed: int | None = None,
                 stream: Any = None) -> None:
        refused = [f"{name}={value!r}" for name, value, default in (
            ("state_dtype", state_dtype, None), ("master_weights", master_weights, False),
            ("stochastic_rounding", stochastic_rounding, False),
            ("rounding_seed", rounding_seed, None)) if value is not default]
        if refused:
            raise ValueError(f"Adafactor does not take {', '.join(refused)}: its state is "
                             "factored in the param's dtype, and it updates float32 and "
                             "float64 params only")
        super().__init__(params, dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d,
                                      weight_decay=weight_decay, maximize=maximize), device,
                         stream=stream)

    # --------------------------------------------------------------- buckets and their state
    def _group_buckets(self, gi, indices, params, labels):
        for i in indices:  # at construction and in add_param_group, before anything changes
            F.check_adafactor_param(params[i], labels[i])
        return super()._group_buckets(gi, indices, params, labels)

    def _state_kinds(self, members, params):
        """Factored and unfactored params in buckets of their own: each bucket has one set of
        state names."""
        factored = [i for i in members if len(shape_of(params[i])) >= 2]
        vectors = [i for i in members if len(shape_of(params[i])) < 2]
        return [(part, None) for part in (factored, vectors) if part]

    def _layout(self, hyper):
        return "adafactor", self.state_names

    def _bucket_names(self, bucket):
        return FACTORED if len(shape_of(bucket.params[0])) >= 2 else UNFACTORED

    def _use_layout(self, bucket, hyper, kernel_name, names):
        mine = self._bucket_names(bucket)
        for name in mine:
            if name not in bucket.buffers:
                self._allocate(bucket, name, hyper)
        bucket.layout, bucket.names = (kernel_name, names), mine

    def _allocate(self, bucket, name, hyper):
        """One flat buffer per state over the bucket, each param's part of its state's size."""
        sizes = [math.prod(F.adafactor_state_shapes(shape_of(p))[name]) for p in bucket.params]
        buffer = self._backend.full(sum(sizes), bucket.state_dtype, 0.0)
        ends = list(itertools.accumulate(sizes))
        bounds = list(zip([0] + ends[:-1], ends))
        bucket.buffers[name] = buffer
        bucket.views[name] = [buffer[start:stop] for start, stop in bounds]
        bucket.state_bounds = {**getattr(bucket, "state_bounds", {}), name: bounds}

    def _part(self, bucket, name, j, buffer):
        start, stop = bucket.state_bounds[name][j]  # its own sizes, not the param's
        return buffer[start:stop]

    def _state_view(self, i, name, flat, shape):
        # torch's shapes: row_var (..., m, 1), col_var (..., 1, n); params are C-contiguous
        return flat.reshape(self._buffer_shape(i, name))

    def _buffer_shape(self, i, name):
        return F.adafactor_state_shapes(shape_of(self._params[i]))[name]

    def _buffer_dtype(self, i, name):
        return self._bucket_of[i][0].state_dtype if name in self._state_names_of(i) else None

    def _state_names_of(self, i):
        return self._bucket_names(self._bucket_of[i][0])

    # ------------------------------------------------------------------------------- stepping
    def _step_bucket(self, bucket, grads, grad_span, grad_addresses):
        step = bucket.step + 1
        for j in range(len(bucket.params)):
            self._step_param(bucket, j, grads[j], step)
        bucket.step = step
        bucket.started.update(bucket.names)

    def _step_params(self, bucket, grads, all_grads=None):
        """Param by param, each with its own step count (once some grads were None)."""
        bucket.diverge()
        for j, (grad, history) in enumerate(zip(grads, bucket.per_param)):
            if grad is None:
                continue
            history[0] += 1
            self._step_param(bucket, j, grad, history[0])
            history[1].update(bucket.names)

    def _step_param(self, bucket, j, grad, step):
        hyper = self._group_cache[bucket.group_index][0]
        grad_scale, clip_value = self._grad_fields  # adafactor_update_param signs it to maximize
        F.adafactor_update_param(
            dispatch.factored(self._backend), bucket.flat_params[j], grad,
            tuple(bucket.views[name][j] for name in bucket.names),
            F.adafactor_dims(shape_of(bucket.params[j])), step=step, grad_scale=grad_scale,
            clip_value=clip_value, **hyper)

