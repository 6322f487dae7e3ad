from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import functional as F
from .._typing import Device, Params, Real
from . import _groups
from .base import Optimizer

_BUFFER = "momentum_buffer"


class Muon(Optimizer):
    """Muon (torch.optim.Muon; Keller Jordan 2024): momentum, then the update of each 2-D param
    is orthogonalized by a Newton-Schulz iteration (the nearest matrix with all singular values
    about 1), so every direction of the matrix moves at a similar rate.  2-D params only: give
    biases, embeddings and the like to another optimizer, such as AdamW.

    B <- lerp(B, g, 1 - momentum) = momentum*B + (1 - momentum)*g;
    U <- lerp(g, B, momentum) with nesterov, else B;
    O <- NS(U): X <- U/max(||U||_F, eps) (U^T when rows > cols), then ns_steps times
    A <- X X^T, X <- a X + (b A + c A A) X with (a, b, c) = ns_coefficients;
    p <- p*(1 - lr*weight_decay) - lr'*O, where lr' = lr*sqrt(max(1, rows/cols)) (adjust_lr_fn
    None or 'original') or 0.2*lr*sqrt(max(rows, cols)) ('match_rms_adamw').

    As torch does, the iteration runs in bfloat16 (``ns_dtype='bfloat16'``: every product
    rounded to bfloat16, summed in float32; NumPy's BLAS on the CPU, a tiled matrix-product
    kernel on CUDA arrays); ``ns_dtype=None`` runs it in the param's dtype instead.  Clipping
    options of ``step`` act on the grad before the momentum.  Unlike torch, bad ns_steps and
    ns_coefficients are refused when the optimizer is made, not at the first step.
    ``ZeroRedundancyOptimizer`` refuses Muon: it shards the state by element ranges, and the
    orthogonalization needs whole matrices.
    """
    state_names = (_BUFFER,)
    hyper_checks = F.MUON_HYPER
    #: the update of an element depends on its whole matrix (see ZeroRedundancyOptimizer)
    elementwise = False

    param_docs = {
        "weight_decay": "decoupled decay: p <- p*(1 - lr*weight_decay) before the update",
        "momentum": "the momentum buffer's decay: B <- lerp(B, g, 1 - momentum)",
        "nesterov": "orthogonalize lerp(g, B, momentum) instead of B",
        "ns_coefficients": "(a, b, c): the Newton-Schulz polynomial X <- a X + (b A + c A A) X, "
                           "A = X X^T",
        "eps": "the floor of the Frobenius norm the update is divided by first",
        "ns_steps": "how many Newton-Schulz iterations (0 to 99)",
        "adjust_lr_fn": "None or 'original': lr*sqrt(max(1, rows/cols)); 'match_rms_adamw': "
                        "0.2*lr*sqrt(max(rows, cols)), so AdamW's lr and weight_decay carry over",
        "ns_dtype": "what the Newton-Schulz iteration computes in: 'bfloat16' (torch's: every "
                    "operation rounded to bfloat16, products summed in float32), 'float32', "
                    "or None (the param's dtype, float64 for float64 params)",
        "state_dtype": "None only: the momentum buffer takes the param's dtype (given to "
                       "refuse other values clearly)",
        "master_weights": "False only: Muon takes float32 and float64 params",
        "stochastic_rounding": "False only: Muon stores nothing in bfloat16 or float16",
    }

    def __init__(self, params: Params, lr: Real = 1e-3, weight_decay: Real = 0.1,
                 momentum: Real = 0.95, nesterov: bool = True,
                 ns_coefficients: tuple[Real, Real, Real] = F.MUON_COEFFICIENTS,
                 eps: Real = F.MUON_EPS, ns_steps: int = F.MUON_NS_STEPS,
                 adjust_lr_fn: str | None = None, device: Device = "auto", *,
                 ns_dtype: str | None = "bfloat16", state_dtype: str | None = None,
                 master_weights: bool = False, stochastic_rounding: bool = False,
                 stream: Any = None) -> None:
        for name, value, default in (("state_dtype", state_dtype, None),
                                     ("master_weights", master_weights, False),
                                     ("stochastic_rounding", stochastic_rounding, False)):
            if value is not default and value != default:
                raise ValueError(f"Muon does not take {name}={value!r}: its momentum buffer "
                                 "has the param's dtype, and its params are float32 or float64")
        self._ns_dtype = F.check_ns_dtype(ns_dtype)
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      nesterov=nesterov, ns_coefficients=ns_coefficients,
                                      eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn),
                         device, stream=stream)
        for param, label in zip(self._params, self._labels):
            F.check_matrix(param, label)

    @property
    def ns_dtype(self) -> str | None:
        """What the Newton-Schulz iteration computes in (see the constructor); settable."""
        return self._ns_dtype

    @ns_dtype.setter
    def ns_dtype(self, value):
        self._ns_dtype = F.check_ns_dtype(value)

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """As ``Optimizer.add_param_group``; the new params must be 2-D too."""
        if isinstance(param_group, Mapping) and "params" in param_group:
            gi = len(self.param_groups)
            arrays, names = _groups._added_params(self, param_group["params"],
                                                  f"param_groups[{gi}]['params']")
            labels = ([f"params[{n!r}]" for n in names] if names is not None
                      else [f"params[{len(self._params) + k}]" for k in range(len(arrays))])
            for array, label in zip(arrays, labels):
                F.check_matrix(array, label)
        super().add_param_group(param_group)

    def _layout(self, hyper):
        return "muon", (_BUFFER,)

    def _step_buckets(self, seen):
        """Each param with a grad: momentum, orthogonalization and update (one param's update
        needs its whole matrix, so there is no one-call-per-bucket path)."""
        stepping = [bucket for bucket, (_, presence, _) in zip(self._buckets, seen[1])
                    if presence != "none"]
        for bucket in stepping:  # every buffer exists before any param changes
            if _BUFFER not in bucket.buffers:
                self._allocate(bucket, _BUFFER, self._group_cache[bucket.group_index][0])
        grads = seen[0]
        for bucket in stepping:
            hyper = self._group_cache[bucket.group_index][0]
            every = bucket.per_param is None and all(grads[i] is not None
                                                     for i in bucket.indices)
            if not every:  # step counts diverge from here on
                bucket.diverge()
            for j, i in enumerate(bucket.indices):
                if grads[i] is None:
                    continue
                param = self._params[i]
                F.muon_run(self.device, param, grads[i],
                           self._backend.shaped(bucket.views[_BUFFER][j], param), hyper,
                           self._ns_dtype, self._grad_fields)
                if not every:
                    bucket.per_param[j][0] += 1
                    bucket.per_param[j][1].add(_BUFFER)
            if every:
                bucket.step += 1
                bucket.started.add(_BUFFER)
