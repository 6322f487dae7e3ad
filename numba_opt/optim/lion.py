from __future__ import annotations

from typing import Any

from .. import functional as F
from .._typing import Betas, Device, Params, Real
from .base import Optimizer


class Lion(Optimizer):
    """Lion (lion-pytorch / optax semantics): p <- p*(1 - lr*wd);
    p <- p - lr*sign(beta1*m + (1 - beta1)*g); m <- beta2*m + (1 - beta2)*g."""
    state_names = ("exp_avg",)
    hyper_checks = F.LION_HYPER
    param_docs = {"betas": "(beta1, beta2): beta1 interpolates the update direction, beta2 "
                           "decays the momentum m",
                  "weight_decay": "decoupled: p <- p*(1 - lr*weight_decay) before the update"}

    def __init__(self, params: Params, lr: Real = 1e-4, betas: Betas = (0.9, 0.99),
                 weight_decay: Real = 0.0, maximize: bool = False, device: Device = "auto", *,
                 state_dtype: str | None = None, master_weights: bool = False,
                 stochastic_rounding: bool = False, rounding_seed: int | None = None,
                 stream: Any = None) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay,
                                      maximize=maximize), device,
                         state_dtype, master_weights, stochastic_rounding, rounding_seed,
                         stream)

    def _layout(self, hyper):
        return F.lion_layout()

    def _scalars(self, hyper, step, fresh):
        return F.lion_scalars(**hyper)
