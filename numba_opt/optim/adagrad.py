from .. import functional as F
from .base import Optimizer


class Adagrad(Optimizer):
    """Adagrad (torch.optim.Adagrad): s <- s + g^2; p <- p - clr*g/(sqrt(s) + eps),
    clr = lr / (1 + (t - 1)*lr_decay); s starts at ``initial_accumulator_value``."""
    state_names = ("sum",)

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, maximize=False, device="auto"):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize), device)

    def _check(self, hyper):
        F.check_hyper(F.ADAGRAD_HYPER, hyper)

    def _layout(self, group):
        return F.adagrad_layout()

    def _scalars(self, group, dtype, step, fresh):
        return F.adagrad_scalars(dtype, step=step, lr=group["lr"], lr_decay=group["lr_decay"],
                                 eps=group["eps"], weight_decay=group["weight_decay"],
                                 maximize=group["maximize"])

    def _initial_value(self, name, group):
        return group["initial_accumulator_value"]
