from __future__ import annotations

from typing import Any

from .. import functional as F
from .._typing import Betas, Device, Params, Real
from .base import Optimizer


class Adam(Optimizer):
    """Adam with bias correction (torch.optim.Adam), optional AMSGrad and L2 weight decay.

    m <- beta1*m + (1 - beta1)*g; v <- beta2*v + (1 - beta2)*g^2;
    p <- p - lr/(1 - beta1^t) * m / (sqrt(v)/sqrt(1 - beta2^t) + eps).
    ``decoupled_weight_decay=True`` makes it AdamW.
    """
    state_names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    switched_states = ("max_exp_avg_sq",)  # by amsgrad
    hyper_checks = F.ADAM_HYPER
    step_fields = F.ADAM_STEP_FIELDS

    def __init__(self, params: Params, lr: Real = 1e-3, betas: Betas = (0.9, 0.999),
                 eps: Real = 1e-8, weight_decay: Real = 0.0, amsgrad: bool = False,
                 maximize: bool = False, decoupled_weight_decay: bool = False,
                 device: Device = "auto", *, state_dtype: str | None = None,
                 master_weights: bool = False,
                 stochastic_rounding: bool = False, rounding_seed: int | None = None,
                 stream: Any = None) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize,
                                      decoupled_weight_decay=decoupled_weight_decay), device,
                         state_dtype, master_weights, stochastic_rounding, rounding_seed,
                         stream)

    def _layout(self, hyper):
        return F.adam_layout(hyper["amsgrad"])

    def _scalars(self, hyper, step, fresh):
        return F.adam_scalars(step=step, **hyper)

    def _step_scalars(self, hyper, step):
        return F.adam_step_scalars(step, hyper["lr"], hyper["betas"])


class AdamW(Adam):
    """Adam with decoupled weight decay (torch.optim.AdamW): p <- p*(1 - lr*wd) before the update."""
    param_docs = {"weight_decay": "decoupled: p <- p*(1 - lr*weight_decay) before the update"}

    def __init__(self, params: Params, lr: Real = 1e-3, betas: Betas = (0.9, 0.999),
                 eps: Real = 1e-8, weight_decay: Real = 1e-2, amsgrad: bool = False,
                 maximize: bool = False, device: Device = "auto", *, state_dtype: str | None = None,
                 master_weights: bool = False,
                 stochastic_rounding: bool = False, rounding_seed: int | None = None,
                 stream: Any = None) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=True,
                         device=device, state_dtype=state_dtype,
                         master_weights=master_weights,
                         stochastic_rounding=stochastic_rounding, rounding_seed=rounding_seed,
                         stream=stream)
