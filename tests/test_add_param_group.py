"""Optimizer.add_param_group: torch's semantics, checked whole before anything changes.

A group added later behaves exactly as if it had been there from the start with no grads until
then (a None grad skips a param, its step counter too): the params after the next steps equal
a fresh optimizer's built with both groups, bit for bit."""
import inspect

import numpy as np
import pytest

import numba_opt as nopt
from numba_opt import lr_scheduler
from cases import CASES, make_grads

NAMES = sorted({name for name, _ in CASES})
STEPS_BEFORE, STEPS_AFTER = 3, 4


def arrays(seed, shapes, dtypes=np.float32):
    rng = np.random.default_rng(seed)
    dtypes = dtypes if isinstance(dtypes, (list, tuple)) else [dtypes] * len(shapes)
    return [rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes)]


def run_both(name, first, second, extra, build=None, **kwargs):
    """(params stepped by an optimizer over ``first`` that gets ``second`` by add_param_group
    after STEPS_BEFORE steps, the same by one made with both groups whose second group's grads
    are None until then, the two optimizers); ``build(arrays) -> params argument`` wraps the
    first group."""
    build = build or (lambda a: a)
    cls = getattr(nopt, name)
    late = [a.copy() for a in first], [a.copy() for a in second]
    fresh = [a.copy() for a in first], [a.copy() for a in second]
    opt = cls(build(late[0]), **kwargs)
    both = cls([{"params": fresh[0]}, {"params": fresh[1], **extra}], **kwargs)
    for step in range(STEPS_BEFORE):
        grads = make_grads(first, step)
        opt.step(grads)
        both.step(grads + [None] * len(second))
    opt.add_param_group({"params": late[1], **extra})
    for step in range(STEPS_BEFORE, STEPS_BEFORE + STEPS_AFTER):
        grads = make_grads(first + second, step)
        opt.step(grads)
        both.step(grads)
    return list(opt._params), fresh[0] + fresh[1], opt, both  # a FlatParams copies the arrays


@pytest.mark.parametrize("name", NAMES)
def test_a_group_added_later_steps_as_one_there_from_the_start(name):
    first = arrays(0, [(7, 5), (130, 130)])
    second = arrays(1, [(3,), (4, 2)], [np.float32, np.float64])
    extra = {"lr": 3e-3}
    if "weight_decay" in inspect.signature(getattr(nopt, name)).parameters:  # not Rprop's
        extra["weight_decay"] = 0.01
    late, fresh, opt, both = run_both(name, first, second, extra)
    for a, b in zip(late, fresh):
        np.testing.assert_array_equal(a, b)
    assert opt.param_groups[1]["lr"] == 3e-3 and len(opt.param_groups) == 2
    for key in opt.defaults:
        assert key in opt.param_groups[1]  # missing hyper-parameters come from the defaults
    assert opt.step_count == both.step_count == STEPS_BEFORE + STEPS_AFTER
    assert [s.get("step") for s in opt.state] == [s.get("step") for s in both.state]


def test_int8_state_keeps_small_added_params_in_float32_and_quantizes_large_ones():
    first = arrays(0, [(100,)])          # small: float32 state, so no scales yet
    second = arrays(1, [(70, 70), (5,)])  # one large enough for codes and scales
    late, fresh, opt, both = run_both("Adam", first, second, {}, state_dtype="int8")
    for a, b in zip(late, fresh):
        np.testing.assert_array_equal(a, b)
    assert opt.state_names == both.state_names and "exp_avg_absmax" in opt.state_names
    assert opt.state[1]["exp_avg"].dtype == np.uint8
    assert opt.state[2]["exp_avg"].dtype == np.float32


def test_a_flatparams_optimizer_takes_separate_arrays():
    flat = nopt.FlatParams(arrays(0, [(6, 4), (4,)]))
    late, fresh, opt, _ = run_both("Adam", [p.copy() for p in flat.params], arrays(1, [(3,)]),
                                   {}, build=lambda a: nopt.FlatParams(a))
    for a, b in zip(late, fresh):
        np.testing.assert_array_equal(a, b)
    # the added param stays its own array: not in the flat buffer
    assert not np.shares_memory(opt._params[2], opt._params[0].base)


def test_named_params_take_a_dict_of_new_names():
    w, b, extra = arrays(0, [(4, 3), (3,), (2,)])
    opt = nopt.Adam({"w": w, "b": b}, lr=0.1)
    opt.step({"w": np.ones_like(w), "b": np.ones_like(b)})
    opt.add_param_group({"params": {"head": extra}, "lr": 0.5})
    before = extra.copy()
    opt.step({"w": np.ones_like(w), "b": np.ones_like(b), "head": np.ones_like(extra)})
    np.testing.assert_allclose(extra, before - 0.5, rtol=1e-6)
    assert opt.state["head"]["step"] == 1 and opt.state["w"]["step"] == 2
    with pytest.raises(ValueError, match="head"):
        opt.step({"w": np.ones_like(w), "b": np.ones_like(b)})  # every name needs its grad
    # names must be strings: the message names the first that is not
    with pytest.raises(TypeError, match=r"^param names must be strings, got 7$"):
        opt.add_param_group({"params": {"ok": np.ones(2), 7: np.ones(2), 8: np.ones(2)}})
    assert len(opt.param_groups) == 2
    with pytest.raises(TypeError, match=r"^param names must be strings, got 3$"):
        nopt.Adam({"a": np.ones(2), 3: np.ones(2), 4: np.ones(2)})


def test_state_dict_and_checkpoint_files_after_adding(tmp_path):
    first, second = arrays(0, [(5, 3)]), arrays(1, [(4,)])
    opt = nopt.Adam([a.copy() for a in first], lr=1e-2)
    opt.step(make_grads(first, 0))
    opt.add_param_group({"params": [a.copy() for a in second], "lr": 1e-3})
    opt.step(make_grads(first + second, 1))
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1]]
    nopt.save(opt, tmp_path / "run.npz")
    one_group = nopt.Adam([a.copy() for a in first], lr=1e-2)
    with pytest.raises(ValueError, match="2 param groups"):
        one_group.load_state_dict(sd)
    resumed = []
    for how in ("state_dict", "file"):
        other = nopt.Adam([a.copy() for a in first], lr=1e-2)
        other.add_param_group({"params": [a.copy() for a in second]})
        if how == "file":
            nopt.load(other, tmp_path / "run.npz")
        else:
            other.load_state_dict(sd)
            for p, q in zip(other._params, opt._params):
                p[...] = q
        assert other.param_groups[1]["lr"] == 1e-3
        resumed.append(other)
    for step in range(2, 5):
        grads = make_grads(first + second, step)
        for o in (opt, *resumed):
            o.step(grads)
    for o in resumed:
        for p, q in zip(o._params, opt._params):
            np.testing.assert_array_equal(p, q)


def test_schedulers_follow_torch_after_a_group_is_added():
    """torch 2.13: a chainable scheduler made before scales every group's current lr, the new
    one's too; one made after takes the new group's lr then as its initial lr."""
    first, second = arrays(0, [(3,)]), arrays(1, [(2,)])
    opt = nopt.SGD(first, lr=1.0)
    before = lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.add_param_group({"params": second, "lr": 0.2})
    before.step()
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.1]
    assert before.base_lrs == [1.0]
    after = lr_scheduler.ExponentialLR(opt, gamma=0.1)
    assert after.base_lrs == [1.0, 0.1]  # the first group's initial lr, the new group's lr
    after.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.01])


# schedulers made before a group is added, with the same arguments here and in torch
SCHEDULERS_BEFORE_AN_ADDITION = {
    "StepLR": dict(step_size=2, gamma=0.5),
    "MultiStepLR": dict(milestones=[2, 4]),
    "ExponentialLR": dict(gamma=0.9),
    "LinearLR": dict(start_factor=0.5, total_iters=4),
    "ConstantLR": dict(factor=0.5, total_iters=3),
    "PolynomialLR": dict(total_iters=4),
    "CosineAnnealingLR": dict(T_max=2),  # its formula reads base_lrs at epoch 3
    "CosineAnnealingWarmRestarts": dict(T_0=3),
    "LambdaLR": dict(lr_lambda=lambda t: 1.0 / (t + 1)),
    "MultiplicativeLR": dict(lr_lambda=lambda t: 0.9),
    "CyclicLR": dict(base_lr=0.1, max_lr=1.0, step_size_up=2),
    "OneCycleLR": dict(max_lr=1.0, total_steps=20),
    "ReduceLROnPlateau": dict(patience=0, factor=0.5),
    "ReduceLROnPlateau-list": dict(patience=0, factor=0.5, min_lr=[0.01]),
}


def _lr_run(module, optimizer, tensor, kind, steps, resume_from=None):
    """(group lrs after each step, the error a step raised or None, optimizer, scheduler) of a
    scheduler made over one group, a second group added after 2 steps.  ``resume_from`` =
    (optimizer, scheduler) state_dicts: the run is rebuilt the same way up to the addition,
    then loads them and steps on."""
    first, second = arrays(0, [(3,)]), arrays(1, [(2,)])
    opt = optimizer([tensor(a) for a in first], lr=1.0, momentum=0.9)
    scheduler = getattr(module, kind.split("-")[0])(opt, **SCHEDULERS_BEFORE_AN_ADDITION[kind])
    step = (lambda: scheduler.step(1.0)) if "Plateau" in kind else scheduler.step
    lrs = []
    for t in range(steps):
        if t == 2:
            opt.add_param_group({"params": [tensor(a) for a in second], "lr": 0.2})
            if resume_from is not None:
                opt.load_state_dict(resume_from[0])
                scheduler.load_state_dict(resume_from[1])
        try:
            step()
        except (ValueError, RuntimeError, KeyError) as error:
            return lrs, error, opt, scheduler
        lrs.append([float(g["lr"]) for g in opt.param_groups])
    return lrs, None, opt, scheduler


@pytest.mark.parametrize("kind", sorted(SCHEDULERS_BEFORE_AN_ADDITION))
def test_a_scheduler_made_before_add_param_group_follows_torch_and_resumes(kind):
    """torch 2.13: a chainable schedule scales every group's current lr, the added one's too;
    a step whose formula needs an added group's initial lr raises (here a ValueError saying
    what to do, the step undone); a plateau with one min_lr covers the new group.  A state
    saved after the addition loads into the scheduler and into a run rebuilt the same way,
    whose lrs continue the first run's."""
    torch = pytest.importorskip("torch")
    ours = _lr_run(lr_scheduler, nopt.SGD, np.copy, kind, 9)
    theirs = _lr_run(torch.optim.lr_scheduler, torch.optim.SGD,
                     lambda a: torch.tensor(a, dtype=torch.float64), kind, 9)
    assert len(ours[0]) == len(theirs[0])
    for a, b in zip(ours[0], theirs[0]):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    assert (ours[1] is None) == (theirs[1] is None), (ours[1], theirs[1])
    if ours[1] is not None:
        assert isinstance(ours[1], ValueError) and "add_param_group" in str(ours[1])
        opt, scheduler = ours[2:]
        before = scheduler.state_dict(), [dict(g, params=None) for g in opt.param_groups]
        with pytest.raises(ValueError, match="add_param_group"):
            scheduler.step(1.0) if "Plateau" in kind else scheduler.step()
        assert (scheduler.state_dict(), [dict(g, params=None) for g in opt.param_groups]) \
            == before  # the refused step changed nothing
        return
    _, _, opt, scheduler = _lr_run(lr_scheduler, nopt.SGD, np.copy, kind, 6)
    saved = opt.state_dict(), scheduler.state_dict()
    scheduler.load_state_dict(saved[1])  # its own state, saved after the addition
    assert scheduler.state_dict() == saved[1]
    resumed = _lr_run(lr_scheduler, nopt.SGD, np.copy, kind, 5, saved)
    assert resumed[1] is None and resumed[0][2:] == ours[0][6:]


def test_a_scheduler_state_with_too_many_or_too_few_lrs_is_refused():
    opt = nopt.SGD(arrays(0, [(3,)]), lr=1.0)
    scheduler = lr_scheduler.StepLR(opt, step_size=2)
    opt.add_param_group({"params": arrays(1, [(2,)]), "lr": 0.2})
    scheduler.step()
    for key, lrs, match in [("base_lrs", [1.0, 0.2], "2 lrs for 1 param groups"),
                            ("_last_lr", [1.0, 0.2, 0.3], "3 lrs for 1 to 2 param groups"),
                            ("_last_lr", [], "0 lrs for 1 to 2")]:
        sd = scheduler.state_dict()
        sd[key] = lrs
        before = scheduler.state_dict()
        with pytest.raises(ValueError, match=match):
            scheduler.load_state_dict(sd)
        assert scheduler.state_dict() == before


def refusals():
    w = np.zeros((4, 3), np.float32)
    readonly = np.zeros(3, np.float32)
    readonly.flags.writeable = False
    return w, [
        ("not a dict", lambda: [np.zeros(2, np.float32)], TypeError, "dict"),
        ("no params", lambda: {"lr": 0.1}, ValueError, "'params'"),
        ("unknown hyper", lambda: {"params": [np.zeros(2, np.float32)], "momentun": 0.9},
         ValueError, "momentun"),
        ("bad lr", lambda: {"params": [np.zeros(2, np.float32)], "lr": -1.0}, ValueError,
         "lr"),
        ("param twice", lambda: {"params": [np.zeros(2, np.float32), w]}, ValueError,
         r"params\[0\]"),
        ("view of a param", lambda: {"params": [w[1:]]}, ValueError, "shares memory"),
        ("same new array twice", lambda: (lambda a: {"params": [a, a]})(
            np.zeros(2, np.float32)), ValueError, "shares memory"),
        ("int dtype", lambda: {"params": [np.zeros(2, np.int32)]}, TypeError, "dtype"),
        ("read-only", lambda: {"params": [readonly]}, ValueError, "writeable|read-only"),
        ("not contiguous", lambda: {"params": [np.zeros((4, 4), np.float32)[:, ::2]]},
         ValueError, "contiguous"),
        ("a set", lambda: {"params": {np.zeros(2, np.float32).tobytes()}}, TypeError, "set"),
        ("empty", lambda: {"params": []}, ValueError, "empty"),
        ("names for an unnamed optimizer", lambda: {"params": {"x": np.zeros(2, np.float32)}},
         TypeError, "no names"),
    ]


def snapshot(opt):
    sd = opt.state_dict()
    return (len(opt.param_groups), [dict(g, params=list(map(id, g["params"])))
                                    for g in opt.param_groups],
            repr(sd["param_groups"]), {i: {k: np.array(v, copy=True) for k, v in s.items()}
                                       for i, s in sd["state"].items()},
            [p.copy() for p in opt._params], list(opt.state_names), len(opt._buckets))


def assert_same(a, b):
    assert a[:3] == b[:3] and a[5:] == b[5:]
    assert a[3].keys() == b[3].keys()
    for i in a[3]:
        for k in a[3][i]:
            np.testing.assert_array_equal(a[3][i][k], b[3][i][k])
    for x, y in zip(a[4], b[4]):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("index", range(len(refusals()[1])), ids=[r[0] for r in refusals()[1]])
def test_each_refusal_changes_nothing(index):
    w, cases = refusals()
    _, make, error, match = cases[index]
    opt = nopt.Adam([w], lr=0.1)
    grads = [np.ones_like(w)]
    opt.step(grads)
    before = snapshot(opt)
    with pytest.raises(error, match=match):
        opt.add_param_group(make())
    assert_same(snapshot(opt), before)
    opt.step(grads)  # still steps its one param
    assert opt.state[0]["step"] == 2


def test_named_refusals_change_nothing():
    w = np.zeros(3, np.float32)
    opt = nopt.SGD({"w": w}, lr=0.1)
    before = snapshot(opt)
    for group, error, match in [
            ({"params": [np.zeros(2, np.float32)]}, TypeError, "dict name -> array"),
            ({"params": {"w": np.zeros(2, np.float32)}}, ValueError, "already has"),
            ({"params": {1: np.zeros(2, np.float32)}}, TypeError, "strings")]:
        with pytest.raises(error, match=match):
            opt.add_param_group(group)
        assert_same(snapshot(opt), before)
    assert opt._names == ["w"]


def test_a_device_array_is_refused_on_a_cpu_optimizer():
    cuda = pytest.importorskip("numba.cuda")
    opt = nopt.Adam([np.zeros(3, np.float32)])
    try:
        device_array = cuda.to_device(np.zeros(2, np.float32))
    except Exception as exc:  # no GPU and no simulator
        pytest.skip(f"no CUDA arrays here: {exc}")
    with pytest.raises(TypeError, match="never copies"):
        opt.add_param_group({"params": [device_array]})
    assert len(opt.param_groups) == 1


def test_a_single_array_and_a_flatparams_are_accepted():
    opt = nopt.SGD([np.zeros(3, np.float32)], lr=0.1)
    single = np.zeros(2, np.float32)
    opt.add_param_group({"params": single})
    flat = nopt.FlatParams([np.zeros(2, np.float64), np.zeros(1, np.float64)])
    opt.add_param_group({"params": flat, "lr": 1.0})
    assert [len(g["params"]) for g in opt.param_groups] == [1, 1, 2]
    assert opt.param_groups[1]["params"][0] is single
    opt.step([np.ones(3, np.float32), np.ones(2, np.float32), *[np.ones_like(g)
                                                               for g in flat.grads]])
    np.testing.assert_array_equal(flat.params[0], [-1.0, -1.0])
