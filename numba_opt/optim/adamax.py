from __future__ import annotations

from typing import Any

from .. import functional as F
from .._typing import Betas, Device, Params, Real
from .base import Optimizer


class Adamax(Optimizer):
    """Adamax (torch.optim.Adamax): Adam with the infinity norm.

    m <- beta1*m + (1 - beta1)*g; u <- max(beta2*u, |g| + eps);
    p <- p - lr/(1 - beta1^t) * m / u.
    """
    state_names = ("exp_avg", "exp_inf")
    hyper_checks = F.ADAMAX_HYPER
    step_fields = F.ADAMAX_STEP_FIELDS

    def __init__(self, params: Params, lr: Real = 2e-3, betas: Betas = (0.9, 0.999),
                 eps: Real = 1e-8, weight_decay: Real = 0.0, maximize: bool = False,
                 device: Device = "auto", *, state_dtype: str | None = None,
                 master_weights: bool = False,
                 stochastic_rounding: bool = False, rounding_seed: int | None = None,
                 stream: Any = None) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize), device,
                         state_dtype, master_weights, stochastic_rounding, rounding_seed,
                         stream)

    def _layout(self, hyper):
        return F.adamax_layout()

    def _scalars(self, hyper, step, fresh):
        return F.adamax_scalars(step=step, **hyper)

    def _step_scalars(self, hyper, step):
        return F.adamax_step_scalars(step, hyper["lr"], hyper["betas"])
