"""Every optimizer x option x dtype follows the float64 reference written from the equations."""
import numpy as np
import pytest

from cases import CASES, STEPS, TOLERANCE, case_id, make_grads, make_params, optimizer
from reference import RULES


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_float64_reference(case, dtype):
    name, kwargs = case
    params = make_params(dtype)
    ref_params = [p.astype(np.float64) for p in params]
    ref_state = [{} for _ in params]
    opt = optimizer(name, params, **kwargs)
    for step in range(1, STEPS + 1):
        grads = make_grads(params, step)
        opt.step(grads)
        for p, g, s in zip(ref_params, grads, ref_state):
            RULES[name](p, g.astype(np.float64), s, **kwargs)
    for i, (p, ref) in enumerate(zip(params, ref_params)):
        assert p.dtype == dtype
        np.testing.assert_allclose(p, ref, **TOLERANCE[dtype], err_msg=f"param {i}")
        assert not np.array_equal(p, make_params(dtype)[i]), "the step did not move the param"
        for key, buffer in opt.state[i].items():
            if key == "step":
                assert buffer == STEPS
                continue
            if key in opt.host_state:  # a float64 host scalar (NAdam's mu_product)
                assert buffer == pytest.approx(ref_state[i][key], rel=1e-13)
                continue
            assert buffer.dtype == dtype, f"state {key} of param {i} changed dtype"
            # A momentum buffer is a running sum: where it crosses zero its float32 error is
            # relative to the size of the terms summed, so atol scales with the buffer's range.
            scale = max(1.0, float(np.max(np.abs(ref_state[i][key]))))
            tol = TOLERANCE[dtype]
            np.testing.assert_allclose(buffer, ref_state[i][key], rtol=tol["rtol"],
                                       atol=tol["atol"] * scale,
                                       err_msg=f"state {key} of param {i}")
    assert opt.step_count == STEPS


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_functional_matches_class(case):
    """The stateless functions compute exactly what the classes compute."""
    import numba_opt.functional as F
    name, kwargs = case
    params = make_params(np.float32)
    mine = [p.copy() for p in params]
    opt = optimizer(name, params, **kwargs)
    states = [{} for _ in mine]
    fn = {"SGD": F.sgd_step, "RMSprop": F.rmsprop_step, "Adam": F.adam_step,
          "AdamW": F.adamw_step, "Adagrad": F.adagrad_step, "Adamax": F.adamax_step,
          "RAdam": F.radam_step, "NAdam": F.nadam_step, "Adadelta": F.adadelta_step,
          "Rprop": F.rprop_step, "ASGD": F.asgd_step, "Lion": F.lion_step}[name]
    for step in range(1, 6):
        grads = make_grads(params, step)
        opt.step(grads)
        for p, g, st in zip(mine, grads, states):
            if not st:  # the functions take the state as given: start it as the class does
                fill = {"sum": kwargs.get("initial_accumulator_value", 0.0),
                        "square_avg": kwargs.get("initial_square_avg", 0.0)}
                st.update({k: np.full_like(p, fill.get(k, 0.0)) for k in opt.state_names})
            call = {k: v for k, v in kwargs.items()
                    if k not in ("initial_accumulator_value", "initial_square_avg")}
            if name not in ("RMSprop", "Adadelta", "Lion"):
                call["step"] = step
            fn(p, g, *st.values(), **call)
    for p, q in zip(params, mine):
        np.testing.assert_array_equal(p, q)


def test_nadam_step_returns_the_mu_product_to_pass_on():
    """Passing nadam_step's return value back in equals the closed form (mu_product=None) and
    the class; a changed beta1 needs the running product, as the class keeps it."""
    import numba_opt.functional as F
    params = make_params(np.float64, shapes=[(9,)])
    chained, closed = params[0].copy(), params[0].copy()
    states = [np.zeros(9) for _ in range(4)]
    opt = optimizer("NAdam", params)
    mu_product = 1.0
    for step in range(1, 8):
        grad = make_grads(params, step)[0]
        opt.step([grad])
        mu_product = F.nadam_step(chained, grad, *states[:2], step=step, mu_product=mu_product)
        F.nadam_step(closed, grad, *states[2:], step=step)
    assert mu_product == opt.state[0]["mu_product"]
    np.testing.assert_array_equal(chained, params[0])
    np.testing.assert_array_equal(closed, params[0])
