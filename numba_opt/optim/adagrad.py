from __future__ import annotations

from typing import Any

from .. import functional as F
from .._typing import Device, Params, Real
from .base import Optimizer


class Adagrad(Optimizer):
    """Adagrad (torch.optim.Adagrad): s <- s + g^2; p <- p - clr*g/(sqrt(s) + eps),
    clr = lr / (1 + (t - 1)*lr_decay); s starts at ``initial_accumulator_value``."""
    state_names = ("sum",)
    hyper_checks = F.ADAGRAD_HYPER
    step_fields = F.ADAGRAD_STEP_FIELDS
    param_docs = {"lr_decay": "clr = lr / (1 + (t - 1)*lr_decay)",
                  "initial_accumulator_value": "the value the sum of squares s starts from"}

    def __init__(self, params: Params, lr: Real = 1e-2, lr_decay: Real = 0.0,
                 weight_decay: Real = 0.0, initial_accumulator_value: Real = 0.0, eps: Real = 1e-10,
                 maximize: bool = False, device: Device = "auto", *, state_dtype: str | None = None,
                 master_weights: bool = False,
                 stochastic_rounding: bool = False, rounding_seed: int | None = None,
                 stream: Any = None) -> None:
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize), device,
                         state_dtype, master_weights, stochastic_rounding, rounding_seed,
                         stream)

    def _layout(self, hyper):
        return F.adagrad_layout()

    def _scalars(self, hyper, step, fresh):
        return F.adagrad_scalars(step=step, lr=hyper["lr"], lr_decay=hyper["lr_decay"],
                                 eps=hyper["eps"], weight_decay=hyper["weight_decay"],
                                 maximize=hyper["maximize"])

    def _step_scalars(self, hyper, step):
        return F.adagrad_step_scalars(step, hyper["lr"], hyper["lr_decay"])

    def _initial_value(self, name, hyper):
        return hyper["initial_accumulator_value"]
