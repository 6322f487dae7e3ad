from .. import functional as F
from .base import Optimizer


class Adamax(Optimizer):
    """Adamax (torch.optim.Adamax): Adam with the infinity norm.

    m <- beta1*m + (1 - beta1)*g; u <- max(beta2*u, |g| + eps);
    p <- p - lr/(1 - beta1^t) * m / u.
    """
    state_names = ("exp_avg", "exp_inf")
    hyper_checks = F.ADAMAX_HYPER
    step_fields = F.ADAMAX_STEP_FIELDS

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 maximize=False, device="auto", *,
                 state_dtype=None, master_weights=False, stochastic_rounding=False,
                 rounding_seed=None):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      maximize=maximize), device,
                         state_dtype, master_weights, stochastic_rounding, rounding_seed)

    def _layout(self, hyper):
        return F.adamax_layout()

    def _scalars(self, hyper, step, fresh):
        return F.adamax_scalars(step=step, **hyper)

    def _step_scalars(self, hyper, step):
        return F.adamax_step_scalars(step, hyper["lr"], hyper["betas"])
