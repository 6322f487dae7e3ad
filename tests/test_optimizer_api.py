"""Param groups, named params, editable hyper-parameters, None grads, state_dict round trips."""
import os

import numpy as np
import pytest

import numba_opt as nopt
from cases import CASES, TOLERANCE, case_id, make_grads, make_params, optimizer
from reference import RULES


def run_reference(name, params, grads_per_step, kwargs_per_param):
    ref = [p.astype(np.float64) for p in params]
    states = [{} for _ in params]
    for grads in grads_per_step:
        for p, g, s, kw in zip(ref, grads, states, kwargs_per_param):
            if g is not None:
                RULES[name](p, g.astype(np.float64), s, **kw)
    return ref


def test_param_groups_use_their_own_hyper_parameters():
    params = make_params(np.float64)
    groups = [{"params": params[:2], "lr": 0.1, "momentum": 0.9},
              {"params": params[2:], "weight_decay": 0.01}]
    opt = nopt.SGD(groups, lr=0.02)
    assert opt.param_groups[1]["lr"] == 0.02  # missing keys come from the defaults
    assert opt.param_groups[1]["momentum"] == 0.0
    initial = [p.copy() for p in params]
    steps = [make_grads(params, s) for s in range(1, 21)]
    for grads in steps:
        opt.step(grads)
    kwargs = [dict(lr=0.1, momentum=0.9)] * 2 + [dict(lr=0.02, weight_decay=0.01)] * 3
    for p, r in zip(params, run_reference("SGD", initial, steps, kwargs)):
        np.testing.assert_allclose(p, r, **TOLERANCE[np.float64])


def test_named_params_take_named_grads():
    rng = np.random.default_rng(3)
    model = {"W": rng.standard_normal((4, 3)), "b": np.zeros(3)}
    initial = {k: v.copy() for k, v in model.items()}
    opt = nopt.Adam(model, lr=0.01)
    grads = {"b": np.ones(3), "W": np.full((4, 3), 0.5)}  # order of the dict does not matter
    opt.step(grads)
    ref = run_reference("Adam", [initial["W"], initial["b"]], [[grads["W"], grads["b"]]],
                        [dict(lr=0.01)] * 2)
    np.testing.assert_allclose(model["W"], ref[0], rtol=1e-12)
    np.testing.assert_allclose(model["b"], ref[1], rtol=1e-12)
    with pytest.raises(ValueError, match="missing \\['b'\\]"):
        opt.step({"W": grads["W"]})
    with pytest.raises(TypeError, match="must be a dict"):
        opt.step([grads["W"], grads["b"]])


def test_editing_lr_between_steps_takes_effect():
    params = make_params(np.float64)
    initial = [p.copy() for p in params]
    opt = nopt.RMSprop(params, lr=0.01, centered=True)
    steps = [make_grads(params, s) for s in range(1, 21)]
    for k, grads in enumerate(steps):
        if k == 10:
            opt.param_groups[0]["lr"] = 0.001
        opt.step(grads)
    ref = [p.astype(np.float64) for p in initial]
    states = [{} for _ in ref]
    for k, grads in enumerate(steps):
        for p, g, s in zip(ref, grads, states):
            RULES["RMSprop"](p, g, s, lr=0.01 if k < 10 else 0.001, centered=True)
    for p, r in zip(params, ref):
        np.testing.assert_allclose(p, r, **TOLERANCE[np.float64])


def test_turning_momentum_on_later_starts_the_buffer_like_torch():
    params = make_params(np.float64)
    initial = [p.copy() for p in params]
    opt = nopt.SGD(params, lr=0.01)
    steps = [make_grads(params, s) for s in range(1, 11)]
    for k, grads in enumerate(steps):
        if k == 5:
            opt.param_groups[0]["momentum"] = 0.9
        opt.step(grads)
    ref = [p.copy() for p in initial]
    states = [{} for _ in ref]
    for k, grads in enumerate(steps):
        for p, g, s in zip(ref, grads, states):
            RULES["SGD"](p, g, s, lr=0.01, momentum=0.9 if k >= 5 else 0.0)
    for p, r in zip(params, ref):
        np.testing.assert_allclose(p, r, **TOLERANCE[np.float64])


def test_none_grad_skips_its_param_and_its_step_counter():
    params = make_params(np.float32)
    frozen = params[1].copy()
    opt = nopt.Adam(params)
    for step in range(1, 4):
        grads = make_grads(params, step)
        grads[1] = None
        opt.step(grads)
    np.testing.assert_array_equal(params[1], frozen)
    assert opt.state[1] == {}
    assert opt.state[0]["step"] == 3 and opt.step_count == 3


@pytest.mark.parametrize("flat", [False, True], ids=["list", "FlatParams"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_the_params_beside_a_none_grad_step_like_the_reference(case, flat):
    """A None grad sends its bucket through the per-param path; the other params there must get
    the same update as ever (grad scale and clip value included, and maximize's sign), in
    separate arrays or in one FlatParams span."""
    name, kwargs = case
    params = make_params(np.float64)
    start = [p.copy() for p in params]
    if flat:
        params = nopt.FlatParams(params)
    opt = optimizer(name, params, **kwargs)
    params = params.params if flat else params
    steps = []
    for step in range(1, 4):
        grads = make_grads(params, step)
        grads[step % len(grads)] = None
        opt.step(grads, clip_value=0.5 if step == 3 else None)
        if step == 3:
            grads = [None if g is None else np.clip(g, -0.5, 0.5) for g in grads]
        steps.append(grads)
    expected = run_reference(name, start, steps, [kwargs] * len(params))
    for i, (p, ref) in enumerate(zip(params, expected)):
        np.testing.assert_allclose(p, ref, **TOLERANCE[np.float64], err_msg=f"param {i}")


def test_nadam_keeps_a_mu_product_per_param_through_skips_edits_and_resume():
    """NAdam's running product of the momentum schedule is per-param host state: a param whose
    grad is None does not advance it, an edited beta1 changes only later factors, and a
    state_dict carries it.  Checked against the reference (and torch when installed)."""
    params = make_params(np.float64, shapes=[(6,), (3, 2)])
    start = [p.copy() for p in params]
    opt = nopt.NAdam(params, lr=0.01)
    ref = [p.copy() for p in start]
    ref_state = [{}, {}]

    def both_step(step, betas):
        grads = make_grads(params, step)
        if step in (3, 4):
            grads[1] = None
        opt.step(grads)
        for p, g, st in zip(ref, grads, ref_state):
            if g is not None:
                RULES["NAdam"](p, g, st, lr=0.01, betas=betas)
        return grads

    history = [both_step(step, (0.9, 0.999)) for step in range(1, 6)]
    assert opt.state[0]["step"] == 5 and opt.state[1]["step"] == 3
    assert opt.state[0]["mu_product"] != opt.state[1]["mu_product"]
    checkpoint = opt.state_dict()
    assert checkpoint["state"][1]["mu_product"] == opt.state[1]["mu_product"]
    saved = [p.copy() for p in params]
    opt.param_groups[0]["betas"] = (0.8, 0.99)
    history += [both_step(step, (0.8, 0.99)) for step in range(6, 11)]
    for p, r in zip(params, ref):
        np.testing.assert_allclose(p, r, **TOLERANCE[np.float64])
    for state, ref_entry in zip(opt.state, ref_state):
        assert state["mu_product"] == pytest.approx(ref_entry["mu_product"], rel=1e-14)

    resumed_params = [p.copy() for p in saved]
    resumed = nopt.NAdam(resumed_params, lr=0.01)
    resumed.load_state_dict(checkpoint)
    resumed.param_groups[0]["betas"] = (0.8, 0.99)
    for grads in history[5:]:
        resumed.step(grads)
    for a, b in zip(params, resumed_params):
        np.testing.assert_array_equal(a, b)

    torch = pytest.importorskip("torch")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # torch's mu_product in float64, like ours
    try:
        tensors = [torch.tensor(p) for p in start]
        torch_opt = torch.optim.NAdam(tensors, lr=0.01, foreach=False)
        for step, grads in enumerate(history, 1):
            if step == 6:
                torch_opt.param_groups[0]["betas"] = (0.8, 0.99)
            for t, g in zip(tensors, grads):
                t.grad = None if g is None else torch.from_numpy(g)
            torch_opt.step()
    finally:
        torch.set_default_dtype(previous)
    for p, t in zip(params, tensors):
        np.testing.assert_allclose(p, t.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_resume_from_state_dict_repeats_the_trajectory_exactly(case):
    name, kwargs = case
    params = make_params(np.float32)
    opt = optimizer(name, params, **kwargs)
    for step in range(1, 11):
        opt.step(make_grads(params, step))
    checkpoint = opt.state_dict()
    saved_params = [p.copy() for p in params]
    for step in range(11, 21):
        opt.step(make_grads(params, step))

    resumed_params = [p.copy() for p in saved_params]
    resumed = optimizer(name, resumed_params, **kwargs)
    resumed.load_state_dict(checkpoint)
    assert resumed.step_count == 10
    for step in range(11, 21):
        resumed.step(make_grads(resumed_params, step))
    for a, b in zip(params, resumed_params):
        np.testing.assert_array_equal(a, b)


def test_state_dict_holds_copies_and_loading_copies_in():
    params = make_params(np.float64)
    opt = nopt.Adam(params)
    opt.step(make_grads(params, 1))
    sd = opt.state_dict()
    assert sd["optimizer"] == "Adam" and sd["param_groups"][0]["params"] == [0, 1, 2, 3, 4]
    sd["state"][0]["exp_avg"][...] = 123.0
    assert not np.any(opt.state[0]["exp_avg"] == 123.0)
    opt.load_state_dict(sd)
    sd["state"][0]["exp_avg"][...] = 7.0
    assert np.all(opt.state[0]["exp_avg"] == 123.0)


def test_fortran_ordered_params_are_updated_in_place():
    rng = np.random.default_rng(0)
    param = np.asfortranarray(rng.standard_normal((6, 4)))
    grad = np.asfortranarray(rng.standard_normal((6, 4)))
    expected = param.copy(order="C")
    RULES["Adam"](expected, grad.copy(order="C"), {}, lr=0.1)
    nopt.Adam([param], lr=0.1).step([grad])
    assert param.flags.f_contiguous
    np.testing.assert_allclose(param, expected, rtol=1e-12)


def test_repr_names_the_groups():
    opt = nopt.AdamW([np.zeros(3, np.float32)])
    assert "AdamW(device='cpu', params=1" in repr(opt) and "weight_decay=0.01" in repr(opt)


def test_a_state_dict_from_before_initial_square_avg_loads_with_the_old_behaviour():
    """RMSprop's initial_square_avg came later: a saved group without it means 0.0 (what every
    earlier version did), and the resumed run equals the uninterrupted one."""
    params = [np.linspace(-1, 1, 12).reshape(3, 4)]
    opt = nopt.RMSprop(params, lr=0.01)
    opt.step([np.ones((3, 4))])
    saved = opt.state_dict()
    for group in saved["param_groups"]:
        del group["initial_square_avg"]
    resumed = [params[0].copy()]
    other = nopt.RMSprop(resumed, lr=0.01, initial_square_avg=1.0)
    other.load_state_dict(saved)
    assert other.param_groups[0]["initial_square_avg"] == 0.0
    for grad in (np.full((3, 4), 0.5), np.full((3, 4), -2.0)):
        opt.step([grad])
        other.step([grad])
    np.testing.assert_array_equal(resumed[0], params[0])
    with pytest.raises(ValueError, match="initial_square_avg must be >= 0"):
        nopt.RMSprop(params, initial_square_avg=-1.0)


def test_a_0d_array_or_numpy_scalar_works_as_a_hyper_parameter_like_a_torch_tensor():
    """lr=np.array(0.1) acts as torch's tensor lr: its value is read every step (an in-place
    edit takes effect), and state_dict stores the number, sharing nothing with the group."""
    params = [np.ones(6)]
    lr = np.array(0.1)
    opt = nopt.SGD(params, lr=lr, momentum=np.float32(0.5))
    opt.step([np.ones(6)])
    np.testing.assert_allclose(params[0], 1 - 0.1)
    lr[...] = 0.5  # in place, as one would fill_() a tensor
    opt.step([np.ones(6)])
    np.testing.assert_allclose(params[0], 0.9 - 0.5 * (0.5 * 1 + 1))
    saved = opt.state_dict()["param_groups"][0]
    assert saved["lr"] == 0.5 and type(saved["lr"]) is float
    lr[...] = -1.0  # an invalid in-place value is caught at the next step, naming lr
    before = params[0].copy()
    with pytest.raises(ValueError, match=r"param_groups\[0\]: lr must be >= 0"):
        opt.step([np.ones(6)])
    np.testing.assert_array_equal(params[0], before)
    adam = nopt.Adam([np.ones(3)], betas=[np.array(0.8), np.array(0.9)])
    adam.step([np.ones(3)])
    adam.param_groups[0]["betas"][0][...] = 0.5  # an array inside a list, edited in place
    assert adam._stale_groups() == [0]
    with pytest.raises(TypeError, match="lr must be a real number, got ndarray"):
        nopt.SGD([np.ones(2)], lr=np.array([0.1, 0.2]))
    with pytest.raises(TypeError, match="lr must be a real number"):
        nopt.SGD([np.ones(2)], lr=np.array(True))


def test_a_scheduler_keeps_the_number_of_a_0d_array_lr():
    lr = np.array(0.2)
    opt = nopt.SGD([np.ones(2)], lr=lr)
    scheduler = nopt.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    lr[...] = 7.0
    assert scheduler.base_lrs == [0.2]
    scheduler.step()  # torch's chainable form scales the group's current lr, as edited
    assert opt.param_groups[0]["lr"] == pytest.approx(3.5)


def test_state_is_readable_by_param_name_when_params_were_named():
    params = {"W": np.ones((3, 2)), "b": np.zeros(2)}
    opt = nopt.Adam(params, lr=0.1)
    opt.step({"W": np.ones((3, 2)), "b": np.ones(2)})
    state = opt.state
    assert state["W"] is not None and state["b"]["step"] == 1
    np.testing.assert_array_equal(state["W"]["exp_avg"], state[0]["exp_avg"])
    assert state["b"]["exp_avg"].shape == (2,) and state[1]["exp_avg"].shape == (2,)
    with pytest.raises(KeyError, match="no param named 'w'"):
        state["w"]
    with pytest.raises(TypeError):  # a list of positions when params had no names
        nopt.Adam([np.ones(2)]).state["W"]


def test_a_state_dict_of_format_1_keeps_loading():
    """tests/data/state_dict_format_1.pickle is NAdam's state_dict (format 1, with the host
    scalar mu_product) after two steps of a seeded run, pickled as numba_opt made it: every
    later version must load it, and step on exactly as that run does (to float32 rounding)."""
    import pickle
    rng = np.random.default_rng(11)
    params = [rng.standard_normal((2, 3)).astype(np.float32),
              rng.standard_normal(5).astype(np.float32)]
    resumed = [p.copy() for p in params]
    run = nopt.NAdam(params, lr=0.01)
    for _ in range(2):
        run.step([rng.standard_normal(p.shape).astype(np.float32) for p in params])
    with open(os.path.join(os.path.dirname(__file__), "data", "state_dict_format_1.pickle"),
              "rb") as f:
        saved = pickle.load(f)
    assert saved["format"] == 1
    opt = nopt.NAdam(resumed, lr=0.5)
    opt.load_state_dict(saved)
    for p, q in zip(resumed, params):  # the params are not in a state_dict: set them
        p[...] = q
    grads = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
    run.step(grads)
    opt.step(grads)
    for a, b in zip(resumed, params):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert opt.state[0]["mu_product"] == pytest.approx(run.state[0]["mu_product"], rel=1e-12)
