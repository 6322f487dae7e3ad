from __future__ import annotations

from typing import Any

from .. import functional as F
from .._typing import Device, Params, Real
from .base import Optimizer


class Adadelta(Optimizer):
    """Adadelta (torch.optim.Adadelta): v <- rho*v + (1 - rho)*g^2;
    d = sqrt(u + eps)/sqrt(v + eps)*g; u <- rho*u + (1 - rho)*d^2; p <- p - lr*d."""
    state_names = ("square_avg", "acc_delta")
    hyper_checks = F.ADADELTA_HYPER
    param_docs = {"rho": "decay rate of the squared-gradient and squared-update averages"}

    def __init__(self, params: Params, lr: Real = 1.0, rho: Real = 0.9, eps: Real = 1e-6,
                 weight_decay: Real = 0.0, maximize: bool = False, device: Device = "auto", *,
                 state_dtype: str | None = None, master_weights: bool = False,
                 stochastic_rounding: bool = False, rounding_seed: int | None = None,
                 stream: Any = None) -> None:
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize), device,
                         state_dtype, master_weights, stochastic_rounding, rounding_seed,
                         stream)

    def _layout(self, hyper):
        return F.adadelta_layout()

    def _scalars(self, hyper, step, fresh):
        return F.adadelta_scalars(**hyper)
