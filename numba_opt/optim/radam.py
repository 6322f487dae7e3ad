from __future__ import annotations

from typing import Any

from .. import functional as F
from .._typing import Betas, Device, Params, Real
from .base import Optimizer


class RAdam(Optimizer):
    """RAdam (torch.optim.RAdam): Adam with a rectified adaptive learning rate.

    m <- beta1*m + (1 - beta1)*g; v <- beta2*v + (1 - beta2)*g^2; m_hat = m/(1 - beta1^t);
    rho_inf = 2/(1 - beta2) - 1, rho_t = rho_inf - 2t*beta2^t/(1 - beta2^t).  While rho_t <= 5:
    p <- p - lr*m_hat (momentum SGD); after it, p <- p - lr*m_hat*r_t*sqrt(1 - beta2^t) /
    (sqrt(v) + eps), r_t = sqrt((rho_t - 4)(rho_t - 2)rho_inf / ((rho_inf - 4)(rho_inf - 2)rho_t)).
    ``decoupled_weight_decay=True`` decays like AdamW.
    """
    state_names = ("exp_avg", "exp_avg_sq")
    hyper_checks = F.RADAM_HYPER
    step_fields = F.RADAM_STEP_FIELDS

    def __init__(self, params: Params, lr: Real = 1e-3, betas: Betas = (0.9, 0.999),
                 eps: Real = 1e-8, weight_decay: Real = 0.0, decoupled_weight_decay: bool = False,
                 maximize: bool = False, device: Device = "auto", *, state_dtype: str | None = None,
                 master_weights: bool = False,
                 stochastic_rounding: bool = False, rounding_seed: int | None = None,
                 stream: Any = None) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize), device,
                         state_dtype, master_weights, stochastic_rounding, rounding_seed,
                         stream)

    def _layout(self, hyper):
        return F.radam_layout()

    def _scalars(self, hyper, step, fresh):
        return F.radam_scalars(step=step, **hyper)

    def _step_scalars(self, hyper, step):
        return F.radam_step_scalars(step, hyper["betas"])
