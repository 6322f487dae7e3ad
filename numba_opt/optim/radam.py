from .. import functional as F
from .base import Optimizer


class RAdam(Optimizer):
    """RAdam (torch.optim.RAdam): Adam with a rectified adaptive learning rate.

    While rho_t <= 5 the step is lr * m_hat (momentum SGD); after it, lr * m_hat * r_t *
    sqrt(1 - beta2^t) / (sqrt(v) + eps).  ``decoupled_weight_decay=True`` decays like AdamW.
    """
    state_names = ("exp_avg", "exp_avg_sq")
    hyper_checks = F.RADAM_HYPER
    step_fields = F.RADAM_STEP_FIELDS

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False, maximize=False, device="auto", *,
                 state_dtype=None, master_weights=False, stochastic_rounding=False,
                 rounding_seed=None):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize), device,
                         state_dtype, master_weights, stochastic_rounding, rounding_seed)

    def _layout(self, hyper):
        return F.radam_layout()

    def _scalars(self, hyper, step, fresh):
        return F.radam_scalars(step=step, **hyper)

    def _step_scalars(self, hyper, step):
        return F.radam_step_scalars(step, hyper["betas"])
