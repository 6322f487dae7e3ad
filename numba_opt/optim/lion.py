from .. import functional as F
from .base import Optimizer


class Lion(Optimizer):
    """Lion (lion-pytorch / optax semantics): p <- p*(1 - lr*wd);
    p <- p - lr*sign(beta1*m + (1 - beta1)*g); m <- beta2*m + (1 - beta2)*g."""
    state_names = ("exp_avg",)
    hyper_checks = F.LION_HYPER

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, maximize=False,
                 device="auto", *,
                 state_dtype=None, master_weights=False, stochastic_rounding=False,
                 rounding_seed=None):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay,
                                      maximize=maximize), device,
                         state_dtype, master_weights, stochastic_rounding, rounding_seed)

    def _layout(self, hyper):
        return F.lion_layout()

    def _scalars(self, hyper, step, fresh):
        return F.lion_scalars(**hyper)
