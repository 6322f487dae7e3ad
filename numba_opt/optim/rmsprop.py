from __future__ import annotations

from typing import Any

from .. import _validation as check, functional as F
from .._typing import Device, Params, Real
from .base import Optimizer


class RMSprop(Optimizer):
    """RMSprop (torch.optim.RMSprop): plain, centered, with momentum, with L2 weight decay.

    v <- alpha*v + (1 - alpha)*g^2; denom = sqrt(v) + eps (centered: gbar <- alpha*gbar +
    (1 - alpha)*g and denom = sqrt(v - gbar^2) + eps); p <- p - lr*g/denom (momentum:
    b <- momentum*b + g/denom; p <- p - lr*b).
    ``eps_inside_sqrt=True`` switches to the TF/Keras denominator sqrt(v + eps).
    ``initial_square_avg``: where v starts (torch: 0; autograd's rmsprop: 1).
    """
    state_names = ("square_avg", "grad_avg", "momentum_buffer")
    switched_states = ("grad_avg", "momentum_buffer")  # by centered, by momentum > 0
    hyper_checks = {**F.RMSPROP_HYPER, "initial_square_avg": check.non_negative}
    hyper_added_later = {"initial_square_avg": 0.0}
    param_docs = {"alpha": "smoothing constant of the squared-gradient average v",
                  "centered": "divide by an estimate of the variance, sqrt(v - gbar^2)",
                  "eps_inside_sqrt": "TF/Keras denominator sqrt(v + eps) instead of sqrt(v) + eps",
                  "initial_square_avg": "the value v starts from (torch: 0; autograd: 1)"}

    def __init__(self, params: Params, lr: Real = 1e-2, alpha: Real = 0.99, eps: Real = 1e-8,
                 weight_decay: Real = 0.0, momentum: Real = 0.0, centered: bool = False,
                 maximize: bool = False, eps_inside_sqrt: bool = False,
                 initial_square_avg: Real = 0.0, device: Device = "auto", *,
                 state_dtype: str | None = None, master_weights: bool = False,
                 stochastic_rounding: bool = False, rounding_seed: int | None = None,
                 stream: Any = None) -> None:
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, maximize=maximize,
                                      eps_inside_sqrt=eps_inside_sqrt,
                                      initial_square_avg=initial_square_avg), device,
                         state_dtype, master_weights, stochastic_rounding, rounding_seed,
                         stream)

    def _layout(self, hyper):
        return F.rmsprop_layout(hyper["centered"], hyper["momentum"])

    def _scalars(self, hyper, step, fresh):
        return F.rmsprop_scalars(**{k: v for k, v in hyper.items() if k != "initial_square_avg"})

    def _initial_value(self, name, hyper):
        return hyper["initial_square_avg"] if name == "square_avg" else 0.0


RMSProp = RMSprop  # the spelling of the Keras / course material
