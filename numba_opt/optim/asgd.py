from __future__ import annotations

import math
from typing import Any

from .. import functional as F
from .._typing import Device, Params, Real
from .base import Optimizer


class ASGD(Optimizer):
    """ASGD, averaged SGD (torch.optim.ASGD): p <- p (1 - lambd eta) - eta g with a decaying
    eta = lr / (1 + lambd lr t)^alpha, and ``ax``, the average of the params from step t0 on
    (ax <- ax + mu (p - ax), mu = 1 / max(1, t - t0)).

    As in torch, eta and mu are per-param host scalars (``state[i]["eta"]``, ``["mu"]``, in
    float64) computed at the end of each step for the next one, with that step's
    hyper-parameters; a param's first step uses eta = lr and mu = 1.
    """
    state_names = ("ax",)
    hyper_checks = F.ASGD_HYPER
    step_fields = F.ASGD_STEP_FIELDS
    # eta has no value before a param's first step, which starts it at the lr of that moment
    host_state = {"eta": math.nan, "mu": 1.0}
    host_checks = F.ASGD_HOST_CHECKS

    param_docs = {"lambd": "decay term: eta_t = lr / (1 + lambd*lr*t)^alpha, and the param "
                           "shrinks by 1 - lambd*eta",
                  "alpha": "power of eta's decay",
                  "t0": "the step from which the params are averaged into ax"}

    def __init__(self, params: Params, lr: Real = 1e-2, lambd: Real = 1e-4, alpha: Real = 0.75,
                 t0: Real = 1e6, weight_decay: Real = 0.0, maximize: bool = False,
                 device: Device = "auto", *, state_dtype: str | None = None,
                 master_weights: bool = False, stochastic_rounding: bool = False,
                 rounding_seed: int | None = None,
                 stream: Any = None) -> None:
        super().__init__(params, dict(lr=lr, lambd=lambd, alpha=alpha, t0=t0,
                                      weight_decay=weight_decay, maximize=maximize), device,
                         state_dtype, master_weights, stochastic_rounding, rounding_seed,
                         stream)

    def _layout(self, hyper):
        return F.asgd_layout()

    def _advance_host(self, hyper, step, host):
        return F.asgd_advance(step, hyper["lr"], hyper["lambd"], hyper["alpha"], hyper["t0"])

    def _host_for_step(self, hyper, step, before, after):
        return F.asgd_initial_host(hyper["lr"]) if step == 1 else before

    def _scalars(self, hyper, step, fresh, eta, mu):
        return F.asgd_scalars(eta=eta, mu=mu, **hyper)

    def _step_scalars(self, hyper, step, eta, mu):
        return F.asgd_step_scalars(hyper["lambd"], eta, mu)
