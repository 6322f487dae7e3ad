"""Inputs the parity suite's random params and grads never hold, where a rule's guards matter.

Found by mutation testing (tests/MUTATION.md): a rule that always took its momentum branch, or
always added its weight-decay term, gives the same numbers on finite random inputs, since the
extra term is 0 * something.  It stops being 0 where that something is inf, which these tests
feed in, checking each step against the float64 reference."""
import numpy as np
import pytest

from cases import CASES, TOLERANCE, case_id, make_params, optimizer
from reference import RULES

SHAPES = [(7, 5), (5,), ()]
STEPS = 3


def random_grads(params, step):
    """Grads independent of the params (make_grads adds 0.1 * param, which is inf below)."""
    rng = np.random.default_rng((3, step))
    return [rng.standard_normal(p.shape).astype(p.dtype) for p in params]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_clip_value_clamps_infinite_grads(case):
    """clip_value clamps +-inf grads to +-clip_value before the rule sees them (torch's
    clip_grad_value_ then step): no inf may leak into the update through a term the options
    switch off, e.g. RMSprop's or SGD's momentum buffer when momentum is 0."""
    name, kwargs = case
    params = make_params(np.float64, shapes=SHAPES)
    ref, ref_state = [p.copy() for p in params], [{} for _ in params]
    opt = optimizer(name, params, **kwargs)
    for step in range(1, STEPS + 1):
        grads = random_grads(params, step)
        grads[0][1, 2], grads[0][3, 4], grads[1][0] = np.inf, -np.inf, np.inf
        opt.step(grads, clip_value=0.5)
        for p, g, s in zip(ref, grads, ref_state):
            RULES[name](p, np.clip(g, -0.5, 0.5), s, **kwargs)
    for p, r in zip(params, ref):
        assert np.all(np.isfinite(p))
        np.testing.assert_allclose(p, r, **TOLERANCE[np.float64])


NO_DECAY = [case for case in CASES if not case[1].get("weight_decay") and case[0] != "AdamW"]


@pytest.mark.parametrize("case", NO_DECAY, ids=case_id)
def test_infinite_params_stay_infinite_without_weight_decay(case):
    """A param that overflowed to +-inf (a diverged run) stays +-inf, not NaN, when there is no
    weight decay: torch adds no decay term then, and 0 * inf would be NaN."""
    name, kwargs = case
    params = make_params(np.float64, shapes=SHAPES)
    params[0][2, 1], params[0][4, 0], params[1][3] = np.inf, -np.inf, -np.inf
    ref, ref_state = [p.copy() for p in params], [{} for _ in params]
    opt = optimizer(name, params, **kwargs)
    for step in range(1, STEPS + 1):
        grads = random_grads(params, step)
        opt.step(grads)
        for p, g, s in zip(ref, grads, ref_state):
            RULES[name](p, g, s, **kwargs)
    assert params[0][2, 1] == np.inf and params[0][4, 0] == -np.inf and params[1][3] == -np.inf
    for p, r in zip(params, ref):
        np.testing.assert_allclose(p, r, **TOLERANCE[np.float64])
    for state in opt.state:  # and the moments never saw the inf param
        for key, buffer in state.items():
            if key in opt.state_names and key != "ax":  # ASGD's ax averages the params
                assert np.all(np.isfinite(buffer)), key
