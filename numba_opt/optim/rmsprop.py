from .. import _validation as check, functional as F
from .base import Optimizer


class RMSprop(Optimizer):
    """RMSprop (torch.optim.RMSprop): plain, centered, with momentum, with L2 weight decay.

    v <- alpha*v + (1 - alpha)*g^2; denom = sqrt(v) + eps (centered: sqrt(v - gbar^2) + eps).
    ``eps_inside_sqrt=True`` switches to the TF/Keras denominator sqrt(v + eps).
    ``initial_square_avg``: where v starts (torch: 0; autograd's rmsprop: 1).
    """
    state_names = ("square_avg", "grad_avg", "momentum_buffer")
    switched_states = ("grad_avg", "momentum_buffer")  # by centered, by momentum > 0
    hyper_checks = {**F.RMSPROP_HYPER, "initial_square_avg": check.non_negative}
    hyper_added_later = {"initial_square_avg": 0.0}

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, maximize=False, eps_inside_sqrt=False, initial_square_avg=0.0,
                 device="auto", *, state_dtype=None, master_weights=False,
                 stochastic_rounding=False, rounding_seed=None):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered, maximize=maximize,
                                      eps_inside_sqrt=eps_inside_sqrt,
                                      initial_square_avg=initial_square_avg), device,
                         state_dtype, master_weights, stochastic_rounding, rounding_seed)

    def _layout(self, hyper):
        return F.rmsprop_layout(hyper["centered"], hyper["momentum"])

    def _scalars(self, hyper, step, fresh):
        return F.rmsprop_scalars(**{k: v for k, v in hyper.items() if k != "initial_square_avg"})

    def _initial_value(self, name, hyper):
        return hyper["initial_square_avg"] if name == "square_avg" else 0.0


RMSProp = RMSprop  # the spelling of the Keras / course material
