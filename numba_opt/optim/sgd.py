from __future__ import annotations

from typing import Any

from .. import functional as F
from .._typing import Device, Params, Real
from .base import Optimizer


class SGD(Optimizer):
    """SGD with optional momentum, dampening, Nesterov momentum and L2 weight decay (torch.optim.SGD).

    With momentum, the first step sets the buffer to the gradient (no dampening), later steps
    b <- momentum*b + (1 - dampening)*g; Nesterov uses g + momentum*b; then p <- p - lr*g.
    """
    state_names = ("momentum_buffer",)
    switched_states = ("momentum_buffer",)  # by momentum > 0
    param_docs = {"dampening": "dampening for momentum: b <- momentum*b + (1 - dampening)*g",
                  "nesterov": "Nesterov momentum: step along g + momentum*b"}

    def __init__(self, params: Params, lr: Real = 1e-3, momentum: Real = 0.0, dampening: Real = 0.0,
                 weight_decay: Real = 0.0, nesterov: bool = False, maximize: bool = False,
                 device: Device = "auto", *, state_dtype: str | None = None,
                 master_weights: bool = False,
                 stochastic_rounding: bool = False, rounding_seed: int | None = None,
                 stream: Any = None) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize), device,
                         state_dtype, master_weights, stochastic_rounding, rounding_seed,
                         stream)

    def _check(self, hyper):
        F.check_sgd(**hyper)

    def _layout(self, hyper):
        return F.sgd_layout(hyper["momentum"])

    def _scalars(self, hyper, step, fresh):
        return F.sgd_scalars(first_momentum_step="momentum_buffer" in fresh, **hyper)
