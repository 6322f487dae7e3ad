from .. import functional as F
from .base import Optimizer


class Adadelta(Optimizer):
    """Adadelta (torch.optim.Adadelta): v <- rho*v + (1 - rho)*g^2;
    d = sqrt(u + eps)/sqrt(v + eps)*g; u <- rho*u + (1 - rho)*d^2; p <- p - lr*d."""
    state_names = ("square_avg", "acc_delta")
    hyper_checks = F.ADADELTA_HYPER

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False,
                 device="auto", *,
                 state_dtype=None, master_weights=False, stochastic_rounding=False,
                 rounding_seed=None):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize), device,
                         state_dtype, master_weights, stochastic_rounding, rounding_seed)

    def _layout(self, hyper):
        return F.adadelta_layout()

    def _scalars(self, hyper, step, fresh):
        return F.adadelta_scalars(**hyper)
