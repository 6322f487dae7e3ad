from __future__ import annotations

from typing import Any

from .. import functional as F
from .._typing import Betas, Device, Params, Real
from .base import Optimizer


class NAdam(Optimizer):
    """NAdam (torch.optim.NAdam): Adam with Nesterov momentum and a momentum schedule
    mu_t = beta1 (1 - 0.5 * 0.96^(t * momentum_decay)).

    p <- p - lr (1 - mu_t) / (1 - prod mu_1..t) * g / d - lr mu_t+1 / (1 - prod mu_1..t+1) * m / d,
    d = sqrt(v / (1 - beta2^t)) + eps.  The running product is kept per param on the host
    (``state[i]["mu_product"]``), so changing beta1 or momentum_decay mid-run behaves as in torch.
    ``decoupled_weight_decay=True`` decays like AdamW.
    """
    state_names = ("exp_avg", "exp_avg_sq")
    hyper_checks = F.NADAM_HYPER
    step_fields = F.NADAM_STEP_FIELDS
    host_state = {"mu_product": 1.0}
    param_docs = {"momentum_decay": "psi in the momentum schedule mu_t"}
    host_checks = F.NADAM_HOST_CHECKS

    def __init__(self, params: Params, lr: Real = 2e-3, betas: Betas = (0.9, 0.999),
                 eps: Real = 1e-8, weight_decay: Real = 0.0, momentum_decay: Real = 4e-3,
                 decoupled_weight_decay: bool = False, maximize: bool = False,
                 device: Device = "auto", *, state_dtype: str | None = None,
                 master_weights: bool = False,
                 stochastic_rounding: bool = False, rounding_seed: int | None = None,
                 stream: Any = None) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize), device,
                         state_dtype, master_weights, stochastic_rounding, rounding_seed,
                         stream)

    def _layout(self, hyper):
        return F.nadam_layout()

    def _advance_host(self, hyper, step, host):
        mu = F.nadam_momentum(step, hyper["betas"][0], hyper["momentum_decay"])
        return {"mu_product": host["mu_product"] * mu}

    def _scalars(self, hyper, step, fresh, mu_product):
        return F.nadam_scalars(step=step, mu_product=mu_product, **hyper)

    def _step_scalars(self, hyper, step, mu_product):
        return F.nadam_step_scalars(step, hyper["lr"], hyper["betas"], hyper["momentum_decay"],
                                    mu_product)
