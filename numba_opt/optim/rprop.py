from .. import functional as F
from .base import Optimizer


class Rprop(Optimizer):
    """Rprop, resilient backpropagation (torch.optim.Rprop): a step size per element, grown by
    etaplus while the gradient keeps its sign and shrunk by etaminus when it flips, clamped to
    ``step_sizes``; the param moves by it against the gradient's sign.

    ``step_size`` starts at lr at a param's first step (torch's state initialisation), so later
    changes of lr do not act; ``prev`` is the last gradient, 0 where its sign flipped.
    """
    state_names = ("prev", "step_size")
    hyper_checks = F.RPROP_HYPER

    def __init__(self, params, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50), maximize=False,
                 device="auto", *, state_dtype=None, master_weights=False):
        super().__init__(params, dict(lr=lr, etas=etas, step_sizes=step_sizes,
                                      maximize=maximize), device, state_dtype, master_weights)

    def _layout(self, hyper):
        return F.rprop_layout()

    def _scalars(self, hyper, step, fresh):
        # the first step of a param's state (re)starts its step sizes at the lr of that moment
        return F.rprop_scalars(**hyper, first_step="step_size" in fresh)
