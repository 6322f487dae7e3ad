from .. import functional as F
from .base import Optimizer


class Adagrad(Optimizer):
    """Adagrad (torch.optim.Adagrad): s <- s + g^2; p <- p - clr*g/(sqrt(s) + eps),
    clr = lr / (1 + (t - 1)*lr_decay); s starts at ``initial_accumulator_value``."""
    state_names = ("sum",)
    hyper_checks = F.ADAGRAD_HYPER
    step_fields = F.ADAGRAD_STEP_FIELDS

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, maximize=False, device="auto", *,
                 state_dtype=None, master_weights=False, stochastic_rounding=False,
                 rounding_seed=None):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize), device,
                         state_dtype, master_weights, stochastic_rounding, rounding_seed)

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
