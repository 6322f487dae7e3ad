from .. import functional as F
from .base import Optimizer


class SGD(Optimizer):
    """SGD with optional momentum, dampening, Nesterov momentum and L2 weight decay (torch.optim.SGD).

    With momentum, the first step sets the buffer to the gradient (no dampening), later steps
    b <- momentum*b + (1 - dampening)*g; Nesterov uses g + momentum*b; then p <- p - lr*g.
    """
    state_names = ("momentum_buffer",)
    switched_states = ("momentum_buffer",)  # by momentum > 0

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, maximize=False, device="auto", *,
                 state_dtype=None, master_weights=False, stochastic_rounding=False,
                 rounding_seed=None):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize), device,
                         state_dtype, master_weights, stochastic_rounding, rounding_seed)

    def _check(self, hyper):
        F.check_sgd(**hyper)

    def _layout(self, hyper):
        return F.sgd_layout(hyper["momentum"])

    def _scalars(self, hyper, step, fresh):
        return F.sgd_scalars(first_momentum_step="momentum_buffer" in fresh, **hyper)
