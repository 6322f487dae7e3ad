"""Faulty state is refused whole, with a message naming what is wrong, and nothing changes:
saved optimizer states (missing buffers, step counts that disagree with the buffers, host
scalars out of range, malformed containers), hyper-parameters, the functional layer's aliased
arrays, and lr scheduler states and arguments."""
import itertools

import numpy as np
import pytest

import numba_opt as nopt
import numba_opt.functional as F
from numba_opt import lr_scheduler as S
from cases import CASES, case_id, make_grads, make_params, optimizer
from test_validation import arrays, assert_untouched, good_grads, snapshot

OPTIMIZERS = sorted({name for name, _ in CASES})

# the hyper-parameters that switch a buffer on, with values that do
SWITCHES = {"SGD": {"momentum": 0.9}, "Adam": {"amsgrad": True}, "AdamW": {"amsgrad": True},
            "RMSprop": {"centered": True, "momentum": 0.9}}


def small_params():
    return make_params(np.float64, shapes=[(3,), (2, 2)])


def stepped(name, kwargs, steps=2):
    params = small_params()
    opt = optimizer(name, params, **kwargs)
    for step in range(1, steps + 1):
        opt.step(make_grads(params, step))
    return opt, params


def refused(opt, params, state_dict, error, message):
    """load_state_dict raises ``error`` matching ``message`` and changes nothing."""
    before = snapshot(opt, params)
    with pytest.raises(error, match=message):
        opt.load_state_dict(state_dict)
    assert_untouched(before, opt, params)


# ------------------------------------------------------------------- buffers and step counts
def layout_buffers(name):
    """The buffer names of ``_layout`` for every combination of the defaults' flags, and of
    zero and non-zero for each number: what the optimizer's steps can create."""
    opt = optimizer(name, [np.zeros(2)])
    choices = {k: (False, True) if isinstance(v, bool) else (0.0, 0.5) if isinstance(v, float)
               else (v,) for k, v in opt.defaults.items()}
    return [set(opt._layout(dict(zip(choices, values)))[1])
            for values in itertools.product(*choices.values())]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_switched_states_are_exactly_the_buffers_some_layout_lacks(name):
    """The declared table load_state_dict relies on agrees with the kernels' layouts: every
    buffer in every layout is required of a stepped param, the others may be absent."""
    cls = getattr(nopt, name)
    layouts = layout_buffers(name)
    always, ever = set.intersection(*layouts), set.union(*layouts)
    assert ever == set(cls.state_names)
    assert set(cls.switched_states) == ever - always


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_a_stepped_param_missing_a_buffer_every_step_makes_is_refused(case):
    name, kwargs = case
    opt, params = stepped(name, kwargs)
    required = [k for k in opt.state_names if k not in opt.switched_states]
    assert required or name == "SGD"  # SGD's only buffer is switched on by momentum
    for buffer in required:
        saved = opt.state_dict()
        del saved["state"][1][buffer]
        refused(opt, params, saved, ValueError,
                rf"state_dict\['state'\]\[1\] \(params\[1\]\) has stepped 2 times but lacks "
                rf"\['{buffer}'\]")


def test_a_checkpoint_file_missing_a_buffer_is_refused_by_load(tmp_path):
    """nopt.load goes through load_state_dict: a file without a buffer changes nothing."""
    opt, params = stepped("Adam", {})
    path = tmp_path / "run.npz"
    nopt.save(opt, path)
    with np.load(path) as archive:
        kept = {k: archive[k] for k in archive.files if k != "state/0/exp_avg_sq"}
    np.savez(path, **kept)
    opt.step(make_grads(params, 3))  # moved on, so a load would show
    before = snapshot(opt, params)
    with pytest.raises(ValueError, match=r"\[0\] \(params\[0\]\) has stepped 2 times but "
                                         r"lacks \['exp_avg_sq'\]"):
        nopt.load(opt, path)
    assert_untouched(before, opt, params)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_a_state_saved_right_after_a_switch_loads_and_resumes_exactly(case):
    """A buffer switched on mid-run starts at the next step; a state_dict saved in between
    lacks it, and must still load (our own state_dict always loads back) and resume."""
    name, kwargs = case
    opt, params = stepped(name, kwargs)
    switch = {k: v for k, v in SWITCHES.get(name, {}).items() if not opt.param_groups[0][k]}
    opt.param_groups[0].update(switch)
    saved, saved_params = opt.state_dict(), [p.copy() for p in params]
    if switch:  # the case under test: a stepped param without a switched buffer
        assert set(opt.switched_states) - set(saved["state"][0])
    for step in range(3, 6):
        opt.step(make_grads(params, step))

    resumed_params = [p.copy() for p in saved_params]
    resumed = optimizer(name, resumed_params, **kwargs)
    resumed.load_state_dict(saved)
    resumed.load_state_dict(resumed.state_dict())  # and what it saves loads back too
    for key, value in switch.items():
        assert resumed.param_groups[0][key] == value
    for step in range(3, 6):
        resumed.step(make_grads(resumed_params, step))
    for a, b in zip(params, resumed_params):
        np.testing.assert_array_equal(a, b)


def test_a_param_that_never_stepped_loads_beside_ones_that_did():
    """A None grad leaves a param without state: its entry is absent, or step 0 and empty."""
    opt, params = stepped("Adam", {})
    opt.step([None, make_grads(params, 3)[1]])
    saved = opt.state_dict()
    fresh = optimizer("Adam", small_params())
    fresh.step([make_grads(params, 1)[0], None])
    fresh.load_state_dict({**saved, "state": {1: saved["state"][1], 0: {"step": 0}}})
    assert fresh.state[0] == {} and fresh.state[1]["step"] == 3


@pytest.mark.parametrize("change, message", [
    (lambda entry: entry.update(step=0),
     r"\[0\] \(params\[0\]\) has step 0 but holds \['exp_avg', 'exp_avg_sq'\]"),
    (lambda entry: [entry.clear(), entry.update(step=0, exp_avg_sq=np.zeros(3))],
     r"has step 0 but holds \['exp_avg_sq'\]"),
    (lambda entry: [entry.pop("exp_avg"), entry.pop("exp_avg_sq")],
     r"has stepped 2 times but lacks \['exp_avg', 'exp_avg_sq'\]"),
], ids=["step 0 with buffers", "only a buffer", "stepped without buffers"])
def test_step_count_and_buffers_must_agree(change, message):
    opt, params = stepped("Adam", {})
    saved = opt.state_dict()
    change(saved["state"][0])
    refused(opt, params, saved, ValueError, message)


def test_a_never_stepped_nadam_param_keeps_its_initial_mu_product():
    opt, params = stepped("NAdam", {})
    saved = opt.state_dict()
    saved["state"][0] = {"step": 0, "mu_product": 0.5}
    refused(opt, params, saved, ValueError,
            r"has step 0 but \['mu_product'\] differ from their initial values \[1.0\]")


# --------------------------------------------------------------------------- host scalars
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_host_scalar_has_a_check(name):
    cls = getattr(nopt, name)
    assert set(cls.host_checks) == set(cls.host_state)


@pytest.mark.parametrize("value", [5.0, 1.0 + 1e-12, -0.1, -np.inf])
def test_nadam_mu_product_outside_zero_one_is_refused(value):
    """mu_product starts at 1.0 and is multiplied by factors in [0, 1) each step."""
    opt, params = stepped("NAdam", {})
    assert 0.0 < opt.state[0]["mu_product"] < 1.0
    saved = opt.state_dict()
    saved["state"][0]["mu_product"] = value
    refused(opt, params, saved, ValueError,
            r"state_dict\['state'\]\[0\]\['mu_product'\] must be (in \[0.0, 1.0\]|finite)")


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_nadam_mu_product_at_the_ends_of_its_range_loads(value):
    opt, params = stepped("NAdam", {})
    saved = opt.state_dict()
    saved["state"][0]["mu_product"] = value
    opt.load_state_dict(saved)
    assert opt.state[0]["mu_product"] == value


# -------------------------------------------------------------------- malformed containers
def adam_state_dict(change):
    opt, params = stepped("Adam", {"amsgrad": True})
    saved = opt.state_dict()
    change(saved)
    return opt, params, saved


def drop_eps(saved):
    del saved["param_groups"][0]["eps"]


@pytest.mark.parametrize("change, error, message", [
    (lambda sd: sd.update(state=[sd["state"][0], sd["state"][1]]), TypeError,
     r"state_dict\['state'\] must be a dict from param index to that param's state, got list"),
    (lambda sd: sd.update(param_groups=sd["param_groups"][0]), TypeError,
     r"state_dict\['param_groups'\] must be a list of dicts, got dict"),
    (lambda sd: sd.update(param_groups=[list(sd["param_groups"][0].items())]), TypeError,
     r"state_dict\['param_groups'\]\[0\] must be a dict, got list"),
    (lambda sd: sd["state"].update({1: [("step", 2)]}), TypeError,
     r"state_dict\['state'\]\[1\] \(params\[1\]'s state\) must be a dict, got list"),
    (lambda sd: sd["param_groups"][0].update(params=5), ValueError,
     r"state_dict\['param_groups'\]\[0\] holds params 5"),
    (drop_eps, ValueError,
     r"state_dict\['param_groups'\]\[0\] is missing hyper-parameter\(s\) \['eps'\] of Adam"),
    (lambda sd: sd.update(state={0: sd["state"][0], True: sd["state"][1]}), ValueError,
     "has an entry for param True"),
], ids=["state a list", "groups a dict", "group not a dict", "entry not a dict",
        "group params not a list", "group missing eps", "bool index"])
def test_malformed_state_dicts_are_refused_by_name(change, error, message):
    opt, params, saved = adam_state_dict(change)
    refused(opt, params, saved, error, message)


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


@pytest.mark.parametrize("name", ["Adam", "NAdam", "Adagrad"])
def test_a_step_count_too_large_for_a_float_is_refused(name):
    """It would load, then fail the next step with a bare OverflowError (beta ** step)."""
    opt, params = stepped(name, {})
    saved = opt.state_dict()
    saved["state"][0]["step"] = 10 ** 400
    refused(opt, params, saved, ValueError, r"\['step'\] must be < 2\*\*63")
    p = np.zeros(3)
    with pytest.raises(ValueError, match=r"step must be < 2\*\*63"):
        F.adam_step(p, np.ones(3), np.zeros(3), np.zeros(3), step=2 ** 63)
    np.testing.assert_array_equal(p, 0.0)


@pytest.mark.parametrize("huge", [10 ** 400, -10 ** 400])
def test_an_int_too_large_for_a_float_is_a_value_error(huge):
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


# ----------------------------------------------------------------- functional layer aliasing
# each step function, its state names in argument order, and keywords that need them all
FUNCTIONS = [
    (F.sgd_step, ["momentum_buffer"], dict(step=2, momentum=0.9)),
    (F.rmsprop_step, ["square_avg", "grad_avg", "momentum_buffer"],
     dict(centered=True, momentum=0.9)),
    (F.adam_step, ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"], dict(step=2, amsgrad=True)),
    (F.adamw_step, ["exp_avg", "exp_avg_sq"], dict(step=2)),
    (F.adagrad_step, ["sum"], dict(step=2)),
    (F.adamax_step, ["exp_avg", "exp_inf"], dict(step=2)),
    (F.radam_step, ["exp_avg", "exp_avg_sq"], dict(step=2)),
    (F.nadam_step, ["exp_avg", "exp_avg_sq"], dict(step=2)),
    (F.adadelta_step, ["square_avg", "acc_delta"], {}),
    (F.lion_step, ["exp_avg"], {}),
    (F.rprop_step, ["prev", "step_size"], dict(step=2)),
    (F.asgd_step, ["ax"], dict(step=2)),
]
SIZE = 4


def call_on_pool(fn, kwargs, offsets):
    """Call ``fn`` on views of one pool: param, grad and each state start at ``offsets``;
    returns the pool (every array's memory)."""
    pool = np.random.default_rng(0).uniform(0.5, 1.0, 64)
    fn(*(pool[o:o + SIZE] for o in offsets), **kwargs)
    return pool


def apart(names):
    """Offsets at which param, grad and the states are separate (but adjacent) arrays."""
    return [0, SIZE] + [SIZE * (2 + k) for k in range(len(names))]


def aliasing_cases(names):
    """(case id, offsets, the two names the error must give) for every kind of sharing."""
    first, last = names[0], names[-1]
    cases = [("state is param", {2: 0}, first, "param"),
             ("state overlaps param", {2: SIZE - 1}, first, "param"),
             ("grad is a state", {1: apart(names)[-1]}, last, "grad"),
             ("grad overlaps param", {1: 1}, "grad", "param")]
    if len(names) > 1:
        cases += [("state is another state", {len(names) + 1: 2 * SIZE}, last, first),
                  ("states overlap", {3: 2 * SIZE + 1}, names[1], first)]
    for case_name, moved, culprit, other in cases:
        offsets = apart(names)
        for index, offset in moved.items():
            offsets[index] = offset
        yield case_name, offsets, culprit, other


@pytest.mark.parametrize("fn, names, kwargs", FUNCTIONS, ids=[f[0].__name__ for f in FUNCTIONS])
def test_functional_steps_refuse_arrays_that_share_memory(fn, names, kwargs):
    expected = np.random.default_rng(0).uniform(0.5, 1.0, 64)
    for case_name, offsets, culprit, other in aliasing_cases(names):
        pool = expected.copy()
        with pytest.raises(ValueError, match=rf"^{culprit} shares memory with {other} "):
            fn(*(pool[o:o + SIZE] for o in offsets), **kwargs)
        np.testing.assert_array_equal(pool, expected, err_msg=case_name)


@pytest.mark.parametrize("fn, names, kwargs", FUNCTIONS, ids=[f[0].__name__ for f in FUNCTIONS])
@pytest.mark.parametrize("grad_is_param", [False, True])
def test_functional_steps_take_adjacent_views_and_a_grad_that_is_its_param(fn, names, kwargs,
                                                                          grad_is_param):
    """Views of one buffer that do not overlap are separate arrays; a param may be its own
    grad, as in the classes (p -= lr * p).  Either computes what separate copies do."""
    offsets = apart(names)
    if grad_is_param:
        offsets[1] = 0
    pool = call_on_pool(fn, kwargs, offsets)
    start = np.random.default_rng(0).uniform(0.5, 1.0, 64)
    copies = [start[o:o + SIZE].copy() for o in offsets]
    fn(*copies, **kwargs)
    assert not np.array_equal(copies[0], start[:SIZE])  # the step did move the param
    for k, (offset, array) in enumerate(zip(offsets, copies)):
        if not (grad_is_param and k == 1):  # that grad was read, then updated as the param
            np.testing.assert_array_equal(pool[offset:offset + SIZE], array)


# ----------------------------------------------------------------------- scheduler states
def two_groups(name="SGD", **kwargs):
    return optimizer(name, [{"params": [np.zeros(2)], "lr": 0.1},
                            {"params": [np.zeros(3)], "lr": 0.05}], **kwargs)


SCHEDULERS = {
    "StepLR": lambda o: S.StepLR(o, step_size=3, gamma=0.5),
    "MultiStepLR": lambda o: S.MultiStepLR(o, milestones=[2, 5, 5, 9], gamma=0.3),
    "ExponentialLR": lambda o: S.ExponentialLR(o, gamma=0.9),
    "CosineAnnealingLR": lambda o: S.CosineAnnealingLR(o, T_max=7, eta_min=1e-3),
    "LinearLR": lambda o: S.LinearLR(o, start_factor=0.25, total_iters=4),
    "OneCycleLR": lambda o: S.OneCycleLR(o, max_lr=[0.5, 0.2], total_steps=31),
    "OneCycleLR-3phase-flat": lambda o: S.OneCycleLR(
        o, max_lr=0.3, total_steps=32, three_phase=True, cycle_momentum=False),
    "ChainedScheduler": lambda o: S.ChainedScheduler(
        [S.LinearLR(o, start_factor=0.5, total_iters=3), S.ExponentialLR(o, gamma=0.95)]),
    "SequentialLR": lambda o: S.SequentialLR(
        o, [S.ExponentialLR(o, gamma=0.8), S.LinearLR(o, start_factor=0.2, total_iters=3),
            S.MultiStepLR(o, milestones=[2, 4], gamma=0.5)], milestones=[3, 8]),
    "ReduceLROnPlateau": lambda o: S.ReduceLROnPlateau(o, factor=0.5, patience=1, cooldown=2),
}


def advance(scheduler, epochs):
    for epoch in range(epochs):
        if isinstance(scheduler, S.ReduceLROnPlateau):
            scheduler.step(1.0 + (epoch % 3 == 0))  # mostly no improvement: it reduces
        else:
            scheduler.step()


def scheduler_snapshot(scheduler, opt):
    return (repr(scheduler.state_dict()), [dict(g) for g in opt.param_groups],
            opt._scheduler_initial_lrs)


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("epochs", [0, 4, 9])
@pytest.mark.parametrize("named", [True, False], ids=["with class name", "without"])
def test_scheduler_states_load_back_and_resume_exactly(name, epochs, named):
    """Our own state_dict always loads (without the class name too, as saved before it was
    added) into a scheduler made alike, and both go on with the same lrs."""
    opt = two_groups()
    scheduler = SCHEDULERS[name](opt)
    advance(scheduler, epochs)
    saved, saved_opt = scheduler.state_dict(), opt.state_dict()
    assert saved.pop("scheduler") == type(scheduler).__name__
    if named:
        saved["scheduler"] = type(scheduler).__name__
    resumed_opt = two_groups()
    resumed = SCHEDULERS[name](resumed_opt)
    resumed_opt.load_state_dict(saved_opt)
    resumed.load_state_dict(saved)
    assert resumed.state_dict() == scheduler.state_dict()
    advance(scheduler, 6)
    advance(resumed, 6)
    assert resumed.get_last_lr() == scheduler.get_last_lr()
    assert [g["lr"] for g in resumed_opt.param_groups] == [g["lr"] for g in opt.param_groups]


def scheduler_refuses(name, change, error, message, make=None):
    opt = two_groups()
    scheduler = SCHEDULERS[name](opt)
    advance(scheduler, 4)
    saved = scheduler.state_dict()
    change(saved)  # in place
    target = make(opt) if make else scheduler
    before = scheduler_snapshot(target, opt)
    with pytest.raises(error, match=message):
        target.load_state_dict(saved)
    assert scheduler_snapshot(target, opt) == before


def without_name(state):
    del state["scheduler"]


def sub_state(k, **changes):
    def change(state):
        state["schedulers"][k].update(changes)
    return change


@pytest.mark.parametrize("source, target, message", [
    ("StepLR", "CosineAnnealingLR", r"state_dict comes from 'StepLR', not CosineAnnealingLR"),
    ("ChainedScheduler", "SequentialLR",
     r"state_dict comes from 'ChainedScheduler', not SequentialLR"),
    ("ExponentialLR", "StepLR", "comes from 'ExponentialLR', not StepLR"),
])
@pytest.mark.parametrize("named", [True, False], ids=["with class name", "without"])
def test_another_schedulers_state_is_refused(source, target, message, named):
    if not named:  # the keys tell them apart
        message = rf"state_dict is not a {target} state: missing keys"
    scheduler_refuses(source, lambda sd: None if named else without_name(sd), ValueError,
                      message, make=SCHEDULERS[target])


BAD_STATES = [
    ("StepLR", lambda sd: sd.update(junk=1), ValueError, r"unknown keys \['junk'\]"),
    ("StepLR", lambda sd: sd.pop("gamma"), ValueError, r"missing keys \['gamma'\]"),
    ("StepLR", lambda sd: sd.update(last_epoch=-2), ValueError,
     r"\['last_epoch'\] must be >= -1"),
    ("StepLR", lambda sd: sd.update(last_epoch=2.0), TypeError,
     r"\['last_epoch'\] must be an int"),
    ("StepLR", lambda sd: sd.update(step_size=0), ValueError, r"\['step_size'\] must be >= 1"),
    ("StepLR", lambda sd: sd.update(gamma=float("nan")), ValueError, "gamma'] must be finite"),
    ("StepLR", lambda sd: sd.update(base_lrs=[0.1]), ValueError,
     r"\['base_lrs'\] has 1 lrs for 2 param groups"),
    ("StepLR", lambda sd: sd.update(base_lrs=0.1), TypeError, r"\['base_lrs'\] must be a list"),
    ("StepLR", lambda sd: sd.update(_last_lr=[0.1, "0.05"]), TypeError,
     r"\['_last_lr'\]\[1\] must be a real number"),
    ("StepLR", lambda sd: sd.update(_last_lr=[0.1, -1.0]), ValueError, r"must be >= 0"),
    ("MultiStepLR", lambda sd: sd.update(milestones=[2, 5]), TypeError,
     "must be a dict from epoch to count"),
    ("MultiStepLR", lambda sd: sd.update(milestones={2: 1, 0: 1}), ValueError,
     r"\['milestones'\] key must be >= 1"),
    ("CosineAnnealingLR", lambda sd: sd.update(T_max=0), ValueError, r"T_max'\] must be >= 1"),
    ("LinearLR", lambda sd: sd.update(start_factor=0.0), ValueError, "start_factor'] must be > 0"),
    ("LinearLR", lambda sd: sd.update(end_factor=2.0), ValueError, r"end_factor'\] must be in"),
    ("OneCycleLR", lambda sd: sd.update(anneal_strategy="exp"), ValueError,
     r"anneal_strategy'\] must be one of \['cos', 'linear'\]"),
    ("OneCycleLR", lambda sd: sd.update(total_steps=40), ValueError,
     r"\['phases'\] ends at step 30.0, but total_steps is 40: it must end at 39"),
    ("OneCycleLR", lambda sd: sd.update(last_epoch=32), ValueError,
     r"\['last_epoch'\] is 32, past total_steps \(31\)"),
    ("OneCycleLR", lambda sd: sd["phases"].pop(), ValueError, r"\['phases'\] has 1 phases"),
    ("OneCycleLR", lambda sd: sd["phases"].__setitem__(0, (0.0, *sd["phases"][0][1:])),
     ValueError, r"\['phases'\] gives phase 0 of the schedule no length"),
    ("OneCycleLR", lambda sd: sd["phases"].__setitem__(1, (30, "min_lr", "max_lr", "a", "b")),
     ValueError, r"\['phases'\]\[1\] must be \(end step, max_lr, min_lr"),
    ("OneCycleLR", lambda sd: sd["limits"][1].pop("max_momentum"), ValueError,
     r"\['limits'\]\[1\] must have the keys"),
    ("OneCycleLR", lambda sd: sd.update(use_beta1=True), ValueError,
     r"\['use_beta1'\] is True, but SGD cycles momentum"),
    ("OneCycleLR", lambda sd: sd.update(cycle_momentum=False), ValueError,
     r"unknown keys \['use_beta1'\]"),
    ("OneCycleLR-3phase-flat", lambda sd: sd.update(cycle_momentum=True), ValueError,
     r"missing keys \['use_beta1'\]"),
    ("ReduceLROnPlateau", lambda sd: sd.update(mode="up"), ValueError, "mode'] must be one of"),
    ("ReduceLROnPlateau", lambda sd: sd.update(best=float("nan")), ValueError,
     "best'] must be finite"),
    ("ReduceLROnPlateau", lambda sd: sd.update(factor=1.0), ValueError,
     r"factor'\] must be in \[0.0, 1.0\)"),
    ("ReduceLROnPlateau", lambda sd: sd.update(cooldown_counter=3), ValueError,
     r"cooldown_counter'\] is 3, more than its cooldown \(2\)"),
    ("ReduceLROnPlateau", lambda sd: sd.update(min_lrs=[0.0]), ValueError, "has 1 lrs for 2"),
    ("ChainedScheduler", lambda sd: sd["schedulers"].pop(), ValueError,
     r"\['schedulers'\] has 1 scheduler states for 2 schedulers"),
    # the first sub-state is fine: nothing of it may be applied before the second is checked
    ("ChainedScheduler", sub_state(1, gamma=-1.0), ValueError,
     r"state_dict\['schedulers'\]\[1\]\['gamma'\] must be >= 0"),
    ("ChainedScheduler", sub_state(1, scheduler="StepLR"), ValueError,
     r"state_dict\['schedulers'\]\[1\] comes from 'StepLR', not ExponentialLR"),
    ("SequentialLR", sub_state(2, milestones={0: 1}), ValueError,
     r"state_dict\['schedulers'\]\[2\]\['milestones'\] key must be >= 1"),
    ("SequentialLR", lambda sd: sd.update(milestones=[8, 3]), ValueError,
     r"\['milestones'\] must be strictly increasing"),
    ("SequentialLR", lambda sd: sd.update(milestones=[3]), ValueError,
     r"\['milestones'\] has 1 milestones; this SequentialLR's schedulers need 2"),
    ("SequentialLR", lambda sd: sd.update(last_epoch=-1), ValueError,
     r"\['last_epoch'\] must be >= 0"),
]


@pytest.mark.parametrize("name, change, error, message", BAD_STATES,
                         ids=[f"{case[0]}-{k}" for k, case in enumerate(BAD_STATES)])
def test_bad_scheduler_states_are_refused_whole(name, change, error, message):
    scheduler_refuses(name, change, error, message)


def test_a_scheduler_state_must_be_a_dict():
    opt = two_groups()
    scheduler = SCHEDULERS["StepLR"](opt)
    before = scheduler_snapshot(scheduler, opt)
    with pytest.raises(TypeError, match=r"state_dict must be a dict \(a StepLR state_dict\), "
                                        "got list"):
        scheduler.load_state_dict([1, 2])
    assert scheduler_snapshot(scheduler, opt) == before


def test_a_refused_sequential_state_leaves_every_sub_scheduler_alone():
    """The state of the last sub-scheduler is bad: the earlier ones must not have loaded."""
    opt = two_groups()
    scheduler = SCHEDULERS["SequentialLR"](opt)
    advance(scheduler, 9)
    saved = scheduler.state_dict()
    fresh_opt = two_groups()
    fresh = SCHEDULERS["SequentialLR"](fresh_opt)
    before = [s.state_dict() for s in fresh._schedulers]
    saved["schedulers"][2]["gamma"] = -0.5
    with pytest.raises(ValueError, match=r"\['schedulers'\]\[2\]\['gamma'\] must be >= 0"):
        fresh.load_state_dict(saved)
    assert [s.state_dict() for s in fresh._schedulers] == before
    assert fresh.last_epoch == 0


# ------------------------------------------------------------------- scheduler arguments
@pytest.mark.parametrize("make, error, message", [
    (lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=10, div_factor=0), ValueError,
     "div_factor must be > 0"),
    (lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=10, final_div_factor=0), ValueError,
     "final_div_factor must be > 0"),
    (lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=10, div_factor=-25.0), ValueError,
     "div_factor must be > 0"),
    (lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=10, final_div_factor=float("inf")),
     ValueError, "final_div_factor must be finite"),
    # torch fails these with ZeroDivisionError: at the last step, or at once
    (lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=10, pct_start=1.0), ValueError,
     r"pct_start=1.0 with total_steps=10 gives phase 1 of the schedule no length"),
    (lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=10, pct_start=0.1), ValueError,
     "gives phase 0 of the schedule no length"),
    (lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=4, pct_start=0.625, three_phase=True),
     ValueError, "gives phase 2 of the schedule no length"),
    (lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=10, pct_start=1.5), ValueError,
     r"pct_start must be in \[0.0, 1.0\]"),
    (lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=10, three_phase="yes"), TypeError,
     "three_phase must be True or False"),
    (lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=10, last_epoch=3), ValueError,
     "last_epoch"),
    (lambda o: S.OneCycleLR(object(), max_lr=0.1, total_steps=10), TypeError,
     "optimizer must be a numba_opt optimizer, got object"),
    (lambda o: S.ReduceLROnPlateau(object()), TypeError, "optimizer must be a numba_opt"),
    (lambda o: S.MultiStepLR(o, milestones=3), TypeError,
     "milestones must be a list of epochs, got int"),
    (lambda o: S.ChainedScheduler([object()]), TypeError,
     r"schedulers\[0\] must be a scheduler"),
])
def test_bad_scheduler_arguments_are_refused_and_change_nothing(make, error, message):
    opt = two_groups(momentum=0.9)
    before = ([dict(g) for g in opt.param_groups], opt._scheduler_initial_lrs)
    with pytest.raises(error, match=message):
        make(opt)
    assert ([dict(g) for g in opt.param_groups], opt._scheduler_initial_lrs) == before


def test_onecycle_beta1_must_stay_below_one_and_nothing_changes():
    """OneCycleLR writes max_momentum into Adam's betas; 1.5 would fail the next step."""
    opt = two_groups("Adam")
    before = [dict(g) for g in opt.param_groups]
    with pytest.raises(ValueError, match=r"max_momentum must be in \[0.0, 1.0\)"):
        S.OneCycleLR(opt, max_lr=0.1, total_steps=10, max_momentum=1.5)
    assert [dict(g) for g in opt.param_groups] == before and opt._scheduler_initial_lrs is None


class HalvingLR(S.LRScheduler):
    """A user's own schedule with an attribute of its own."""

    def __init__(self, optimizer, every):
        self.every = every
        super().__init__(optimizer)

    def get_lr(self):
        halve = self.last_epoch and self.last_epoch % self.every == 0
        return [lr / 2 if halve else lr for lr in self._current()]


def test_a_users_scheduler_subclass_loads_its_own_attributes_back():
    opt = two_groups()
    scheduler = HalvingLR(opt, every=2)
    advance(scheduler, 5)
    saved = scheduler.state_dict()
    resumed = HalvingLR(two_groups(), every=3)
    resumed.load_state_dict(saved)
    assert resumed.every == 2 and resumed.last_epoch == 5
    saved["junk"] = 1  # the key set is still exactly the class's
    with pytest.raises(ValueError, match=r"unknown keys \['junk'\]"):
        resumed.load_state_dict(saved)


class EveryOtherStepLR(S.StepLR):
    def __init__(self, optimizer):
        self.note = "mine"
        super().__init__(optimizer, step_size=2)


def test_a_users_subclass_of_a_builtin_scheduler_loads_back():
    scheduler = EveryOtherStepLR(two_groups())
    advance(scheduler, 3)
    resumed = EveryOtherStepLR(two_groups())
    resumed.load_state_dict(scheduler.state_dict())
    assert resumed.state_dict() == scheduler.state_dict()
    saved = scheduler.state_dict()
    saved["gamma"] = -1.0  # the attributes it inherits are still checked
    with pytest.raises(ValueError, match=r"\['gamma'\] must be >= 0"):
        resumed.load_state_dict(saved)
