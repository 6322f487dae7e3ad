"""Faulty state is refused whole, with a message naming what is wrong, and nothing changes:
saved optimizer states (missing buffers, step counts that disagree with the buffers, host
scalars out of range, malformed containers), hyper-parameters, the functional layer's aliased
arrays, and lr scheduler states and arguments."""
import numpy as np
import pytest

import numba_opt as nopt
from cases import optimizer
from test_validation import arrays, assert_untouched, good_grads, snapshot


# ------------------------------------------------------------------------ hyper-parameters
@pytest.mark.parametrize("name, key", [("Adam", "eps"), ("SGD", "nesterov"),
                                       ("NAdam", "momentum_decay"), ("RMSprop", "centered")])
def test_a_group_missing_a_hyper_parameter_is_refused_at_step(name, key):
    a, b = arrays()
    opt = optimizer(name, [a, b])
    opt.step(good_grads())
    before = snapshot(opt, [a, b])
    del opt.param_groups[0][key]
    with pytest.raises(ValueError, match=rf"param_groups\[0\] is missing hyper-parameter\(s\) "
                                         rf"\['{key}'\] of {name}"):
        opt.step(good_grads())
    params_before, state_before, _, count = before  # the deletion itself is the user's
    for now, then in zip([a, b], params_before):
        np.testing.assert_array_equal(now, then)
    assert opt.step_count == count
    for now, then in zip(opt.state, state_before):
        for k in now:
            np.testing.assert_array_equal(now[k], then[k])


@pytest.mark.parametrize("huge", [10 ** 400, -10 ** 400])
def test_an_int_too_large_for_a_float_is_a_value_error(huge):
    import numba_opt.functional as F
    with pytest.raises(ValueError, match="lr must be finite, got a number too large"):
        nopt.Adam(arrays(), lr=huge)
    p = np.zeros(3)
    with pytest.raises(ValueError, match="lr must be finite"):
        F.adam_step(p, np.ones(3), np.zeros(3), np.zeros(3), step=1, lr=huge)
    np.testing.assert_array_equal(p, 0.0)
    a, b = arrays()
    opt = nopt.Adam([a, b])
    opt.step(good_grads())
    before = snapshot(opt, [a, b])
    opt.param_groups[0]["lr"] = huge
    with pytest.raises(ValueError, match=r"param_groups\[0\]: lr must be finite"):
        opt.step(good_grads())
    opt.param_groups[0]["lr"] = before[2][0]["lr"]
    assert_untouched(before, opt, [a, b])
