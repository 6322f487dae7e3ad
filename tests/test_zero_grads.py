"""Exactly-zero grads (masked rows, frozen embedding rows, dead ReLU units) follow the reference.

Random grads are never exactly 0, so rules that treat 0 specially (Lion's sign(0) = 0, a 0 / 0
in a denominator with eps = 0 guarded by eps, moments that stay exactly 0) need their own test:
some rows of every param get a zero grad at every step, other elements at random steps."""
import numba
import numpy as np
import pytest

from cases import CASES, STEPS, TOLERANCE, case_id, make_grads, make_params, optimizer
from reference import RULES

SHAPES = [(7, 5), (40, 30), (300, 70)]  # the last one above SERIAL_BELOW: parallel loops too
if numba.config.DISABLE_JIT:  # the mutation runs (tests/MUTATION.md): no parallel loops, Python speed
    SHAPES = SHAPES[:-1]


def frozen_rows(param):
    """A mask of the param's rows that never get a gradient (every third row)."""
    mask = np.zeros(param.shape, dtype=bool)
    mask[::3] = True
    return mask


def zeroed_grads(params, step):
    """make_grads with the frozen rows exactly 0, plus about 30% of the other elements exactly
    0 at this step."""
    rng = np.random.default_rng((7, step))
    grads = make_grads(params, step)
    for grad, param in zip(grads, params):
        grad[frozen_rows(param) | (rng.random(param.shape) < 0.3)] = 0.0
    return grads


def decays(name, kwargs):
    """A weight decay moves params even where the grad is 0 (AdamW's default is 1e-2), and so
    does ASGD's decay term lambd (default 1e-4)."""
    if name == "ASGD" and kwargs.get("lambd", 1e-4) != 0.0:
        return True
    return kwargs.get("weight_decay", 1e-2 if name == "AdamW" else 0.0) != 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_exactly_zero_grads_follow_the_reference(case, dtype):
    name, kwargs = case
    params = make_params(dtype, shapes=SHAPES)
    start = [p.copy() for p in params]
    ref_params = [p.astype(np.float64) for p in params]
    ref_state = [{} for _ in params]
    opt = optimizer(name, params, **kwargs)
    for step in range(1, STEPS + 1):
        grads = zeroed_grads(params, step)
        opt.step(grads)
        for p, g, s in zip(ref_params, grads, ref_state):
            RULES[name](p, g.astype(np.float64), s, **kwargs)
    for i, (p, ref, p0) in enumerate(zip(params, ref_params, start)):
        np.testing.assert_allclose(p, ref, **TOLERANCE[dtype], err_msg=f"param {i}")
        frozen = frozen_rows(p)
        if not decays(name, kwargs):
            # no grad and no decay: the frozen rows have not moved at all, and a moment of
            # theirs that the reference keeps at exactly 0 is exactly 0 (one that starts
            # elsewhere, RMSprop's initial_square_avg, decays within the float tolerance)
            np.testing.assert_array_equal(p[frozen], p0[frozen], err_msg=f"param {i} moved")
            for key, buffer in opt.state[i].items():
                if isinstance(buffer, np.ndarray):
                    got, want = buffer[frozen], ref_state[i][key][frozen]
                    zero = want == 0.0
                    np.testing.assert_array_equal(
                        got[zero], 0.0, err_msg=f"state {key} of param {i}: not exactly 0")
                    np.testing.assert_allclose(got, want, **TOLERANCE[dtype],
                                               err_msg=f"state {key} of param {i}")
        assert not np.array_equal(p[~frozen], p0[~frozen]), "the live rows did not move"


@pytest.mark.parametrize("case", [c for c in CASES if c[0] == "Lion"], ids=case_id)
def test_lion_does_not_move_a_param_whose_direction_is_exactly_zero(case):
    """sign(0) = 0: a zero grad with zero momentum leaves the param where it is (torch's
    convention; a rule with ``direction <= 0`` would move it by +lr every step)."""
    name, kwargs = case
    kwargs = {k: v for k, v in kwargs.items() if k != "weight_decay"}
    param = np.linspace(-1.0, 1.0, 20_000).astype(np.float32)
    before = param.copy()
    opt = optimizer(name, [param], **kwargs)
    for _ in range(3):
        opt.step([np.zeros_like(param)])
    np.testing.assert_array_equal(param, before)
    np.testing.assert_array_equal(opt.state[0]["exp_avg"], 0.0)
