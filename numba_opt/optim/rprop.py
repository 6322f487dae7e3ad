from __future__ import annotations

from typing import Any

from .. import functional as F
from .._typing import Betas, Device, Params, Real
from .base import Optimizer


class Rprop(Optimizer):
    """Rprop, resilient backpropagation (torch.optim.Rprop): a step size per element, grown by
    etaplus while the gradient keeps its sign and shrunk by etaminus when it flips, clamped to
    ``step_sizes``; the param moves by it against the gradient's sign.

    s <- clamp(s * etaplus, step_sizes) where g*prev > 0, clamp(s * etaminus, step_sizes)
    where g*prev < 0 (and g <- 0 there); p <- p - sign(g)*s; prev <- g.

    ``step_size`` starts at lr at a param's first step (torch's state initialisation), so later
    changes of lr do not act; ``prev`` is the last gradient, 0 where its sign flipped.
    """
    state_names = ("prev", "step_size")
    hyper_checks = F.RPROP_HYPER

    param_docs = {"lr": "the initial step size of every element (read at a param's first step "
                        "only)",
                  "etas": "(etaminus, etaplus): the step size's factors when the gradient's sign "
                          "flips / keeps",
                  "step_sizes": "(min, max): the bounds of every step size"}

    def __init__(self, params: Params, lr: Real = 1e-2, etas: Betas = (0.5, 1.2),
                 step_sizes: Betas = (1e-6, 50), maximize: bool = False,
                 device: Device = "auto", *, state_dtype: str | None = None,
                 master_weights: bool = False, stochastic_rounding: bool = False,
                 rounding_seed: int | None = None,
                 stream: Any = None) -> None:
        super().__init__(params, dict(lr=lr, etas=etas, step_sizes=step_sizes,
                                      maximize=maximize), device, state_dtype, master_weights,
                         stochastic_rounding, rounding_seed, stream)

    def _layout(self, hyper):
        return F.rprop_layout()

    def _scalars(self, hyper, step, fresh):
        # the first step of a param's state (re)starts its step sizes at the lr of that moment
        return F.rprop_scalars(**hyper, first_step="step_size" in fresh)
