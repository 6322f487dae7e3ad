"""Bad input raises a TypeError/ValueError naming the culprit, and modifies nothing."""
import copy

import numpy as np
import pytest

import numba_opt as nopt
import numba_opt.functional as F


def arrays():
    rng = np.random.default_rng(0)
    return [rng.standard_normal((4, 3)).astype(np.float32), np.zeros(3, np.float32)]


def good_grads():
    return [np.ones((4, 3), np.float32), np.ones(3, np.float32)]


# ---------------------------------------------------------------------------- construction
def readonly():
    a = np.zeros(3, np.float32)
    a.flags.writeable = False
    return [a]


def overlapping():
    base = np.zeros(10, np.float32)
    return [base[:6], base[4:]]


CONSTRUCTION_ERRORS = [
    ("set", lambda: nopt.Adam(set()), TypeError, "ordered sequence"),
    ("empty", lambda: nopt.Adam([]), ValueError, "params is empty"),
    ("single array", lambda: nopt.Adam(np.zeros(3)), TypeError, "wrap it in a list"),
    ("not an array", lambda: nopt.Adam([[1.0, 2.0]]), TypeError, r"params\[0\] must be"),
    ("int dtype", lambda: nopt.SGD([np.zeros(3, np.int64)]), TypeError, r"params\[0\] has dtype int64"),
    ("complex64", lambda: nopt.SGD([np.zeros(3, np.complex64)]), TypeError,
     "float32, float64, bfloat16 .ml_dtypes. or float16"),
    ("strided", lambda: nopt.SGD([np.zeros((4, 4))[:, 1]]), ValueError, "not contiguous"),
    ("read-only", lambda: nopt.SGD(readonly()), ValueError, "read-only"),
    ("duplicate", lambda: nopt.SGD([arrays()[0]] * 2), ValueError, r"params\[1\] shares memory"),
    ("overlap", lambda: nopt.SGD(overlapping()), ValueError, "shares memory"),
    ("dup across groups", lambda: (lambda a: nopt.SGD([{"params": [a]}, {"params": [a]}]))(
        np.zeros(2)), ValueError, "shares memory"),
    ("mixed groups", lambda: nopt.SGD([{"params": [np.zeros(2)]}, np.zeros(2)]), TypeError,
     "mixes arrays and group dicts"),
    ("group without params", lambda: nopt.SGD([{"lr": 0.1}]), ValueError, "no 'params'"),
    ("unknown hyper", lambda: nopt.SGD([{"params": [np.zeros(2)], "betas": (0.9, 0.9)}]),
     ValueError, "unknown hyper-parameter"),
    ("unknown kwarg", lambda: nopt.SGD([np.zeros(2)], betas=(0.9, 0.9)), TypeError, "betas"),
    ("negative lr", lambda: nopt.Adam(arrays(), lr=-1e-3), ValueError, "lr must be >= 0"),
    ("nan lr", lambda: nopt.Adam(arrays(), lr=float("nan")), ValueError, "lr must be finite"),
    ("bool lr", lambda: nopt.Adam(arrays(), lr=True), TypeError, "lr must be a real number"),
    ("string lr", lambda: nopt.Adam(arrays(), lr="0.1"), TypeError, "lr must be a real number"),
    ("negative eps", lambda: nopt.Adam(arrays(), eps=-1.0), ValueError, "eps must be >= 0"),
    ("beta1 = 1", lambda: nopt.Adam(arrays(), betas=(1.0, 0.999)), ValueError, r"betas\[0\]"),
    ("beta2 < 0", lambda: nopt.Adam(arrays(), betas=(0.9, -0.1)), ValueError, r"betas\[1\]"),
    ("betas not a pair", lambda: nopt.Adam(arrays(), betas=0.9), TypeError, "betas must be a pair"),
    ("amsgrad not bool", lambda: nopt.Adam(arrays(), amsgrad=1), TypeError, "amsgrad must be"),
    ("nesterov w/o momentum", lambda: nopt.SGD(arrays(), nesterov=True), ValueError, "nesterov"),
    ("alpha > 1", lambda: nopt.RMSprop(arrays(), alpha=1.5), ValueError, "alpha must be in"),
    ("negative momentum", lambda: nopt.RMSprop(arrays(), momentum=-0.5), ValueError, "momentum"),
    ("negative lr_decay", lambda: nopt.Adagrad(arrays(), lr_decay=-1), ValueError, "lr_decay"),
    ("negative accumulator", lambda: nopt.Adagrad(arrays(), initial_accumulator_value=-1),
     ValueError, "initial_accumulator_value"),
    ("unknown device", lambda: nopt.Adam(arrays(), device="tpu"), ValueError, "device must be"),
    ("cuda with host arrays", lambda: nopt.Adam(arrays(), device="cuda"), TypeError,
     r"params\[0\] lives on cpu but the optimizer runs on cuda"),
]


@pytest.mark.parametrize("make, error, message",
                         [c[1:] for c in CONSTRUCTION_ERRORS], ids=[c[0] for c in CONSTRUCTION_ERRORS])
def test_construction_rejects(make, error, message):
    with pytest.raises(error, match=message):
        make()


# ------------------------------------------------------------------------------------ step
def snapshot(opt, params):
    return (copy.deepcopy(params), copy.deepcopy(opt.state), copy.deepcopy(opt.param_groups),
            opt.step_count)


def assert_untouched(before, opt, params):
    params_before, state_before, groups_before, count_before = before
    for a, b in zip(params, params_before):
        np.testing.assert_array_equal(a, b)
    assert opt.step_count == count_before
    assert len(opt.state) == len(state_before)
    for now, then in zip(opt.state, state_before):
        assert now.keys() == then.keys()
        for key in now:
            np.testing.assert_array_equal(now[key], then[key])
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == \
        [{k: v for k, v in g.items() if k != "params"} for g in groups_before]


def edit_group(key, value):
    def edit(opt):
        opt.param_groups[-1][key] = value
    return edit


def swap(index, value):
    def grads():
        g = good_grads()
        g[index] = value
        return g
    return grads


STEP_ERRORS = [
    ("too few grads", lambda: good_grads()[:1], None, ValueError, "got 1 grads for 2 params"),
    ("grads not a list", lambda: np.ones((2, 3)), None, TypeError, "grads must be a list"),
    ("grad shape", swap(1, np.ones(4, np.float32)), None, ValueError,
     r"grad for params\[1\] has shape \(4,\)"),
    ("grad dtype", swap(0, np.ones((4, 3), np.float64)), None, TypeError,
     r"grad for params\[0\] has dtype float64"),
    ("grad not array", swap(1, [1.0, 1.0, 1.0]), None, TypeError, "must be a NumPy array"),
    ("grad scalar", swap(1, np.float32(1.0)), None, TypeError, "must be a NumPy array"),
    ("grad strided", swap(0, np.ones((4, 6), np.float32)[:, ::2]), None, ValueError,
     "not contiguous in the same memory order"),
    ("grad fortran", swap(0, np.asfortranarray(np.ones((4, 3), np.float32))), None, ValueError,
     "not contiguous in the same memory order"),
    ("grad int", swap(1, np.ones(3, np.int32)), None, TypeError,
     r"grad for params\[1\] has dtype int32"),
    ("lr edited negative", good_grads, edit_group("lr", -0.1), ValueError,
     r"param_groups\[1\]: lr must be >= 0"),
    ("beta edited", good_grads, edit_group("betas", (0.9, 1.0)), ValueError, r"betas\[1\]"),
    ("unknown key edited", good_grads, edit_group("momentum", 0.9), ValueError,
     "unknown hyper-parameter"),
]


@pytest.mark.parametrize("make_grads, edit, error, message", [c[1:] for c in STEP_ERRORS],
                         ids=[c[0] for c in STEP_ERRORS])
def test_step_rejects_and_modifies_nothing(make_grads, edit, error, message):
    a, b = arrays()
    # two groups, so an error found in the second must not leave the first updated
    opt = nopt.Adam([{"params": [a]}, {"params": [b], "lr": 0.01}], amsgrad=True)
    opt.step(good_grads())
    opt.step(good_grads())
    if edit:
        edit(opt)
    before = snapshot(opt, [a, b])
    with pytest.raises(error, match=message):
        opt.step(make_grads())
    if edit is None:
        assert_untouched(before, opt, [a, b])
    else:  # the edit itself is the user's; nothing else moved
        params_before, state_before, _, count = before
        np.testing.assert_array_equal(a, params_before[0])
        np.testing.assert_array_equal(b, params_before[1])
        assert opt.step_count == count


def test_a_stream_is_refused_on_the_cpu_when_made_and_when_stepped():
    with pytest.raises(TypeError, match="stream= orders the CUDA kernels, but the optimizer "
                                        "runs on cpu"):
        nopt.SGD([np.zeros(3)], stream=0)
    opt = nopt.SGD([np.zeros(3)], lr=0.1)
    with pytest.raises(TypeError, match="stream= orders the CUDA kernels"):
        opt.step([np.ones(3)], stream=0)
    assert opt.step_count == 0


def test_an_empty_view_inside_another_param_shares_no_memory():
    """An empty param or grad owns no bytes, wherever its data pointer lies (np.shares_memory
    agrees): it is accepted at construction, in an added group and as a grad, and steps."""
    buffer = np.zeros(10, np.float32)
    opt = nopt.SGD([buffer, buffer[3:][:0]], lr=0.5)  # its data pointer is 12 bytes in
    opt.add_param_group({"params": [buffer[5:][:0]]})
    opt.step([np.ones(10, np.float32), np.ones(0, np.float32), np.ones(0, np.float32)])
    opt.step([np.ones(10, np.float32), None, buffer[7:][:0]])  # an empty view as a grad too
    np.testing.assert_array_equal(buffer, np.full(10, -1.0, np.float32))
    # a grad whose bytes hold an empty param's data pointer shares nothing with it either
    other = np.full(6, 2.0, np.float32)
    param = np.zeros(6, np.float32)
    opt = nopt.SGD([param, other[2:][:0]], lr=0.5)
    opt.step([other, None])
    np.testing.assert_array_equal(param, np.full(6, -1.0, np.float32))


def test_grads_sharing_memory_with_params_are_refused():
    """Reading a param the kernel is updating gives order-dependent results: a grad may be
    its own param (the same memory exactly), never another param or a shifted view."""
    buffer = np.zeros(40, np.float32)
    a, b = buffer[:12].reshape(4, 3), buffer[20:23]
    opt = nopt.SGD([a, b], lr=0.1)
    opt.step(good_grads())
    before = snapshot(opt, [a, b])
    cases = [([np.ones((4, 3), np.float32), a[0]], r"grad for params\[1\] shares memory with "
              r"params\[0\]"),
             ([buffer[1:13].reshape(4, 3), np.ones(3, np.float32)], r"grad for params\[0\] "
              r"shares memory with params\[0\]"),
             ([buffer[3:15].reshape(4, 3), np.ones(3, np.float32)], "shares memory")]
    for grads, message in cases:
        with pytest.raises(ValueError, match=message):
            opt.step(grads)
        assert_untouched(before, opt, [a, b])
    opt.step([a, np.ones(3, np.float32)])  # a param as its own grad: allowed (p -= lr * p)
    np.testing.assert_allclose(a, before[0][0] * 0.9, rtol=1e-6)


# ------------------------------------------------------------------------ load_state_dict
def stepped_adam():
    params = arrays()
    opt = nopt.Adam(params, amsgrad=True)
    opt.step(good_grads())
    return opt, params


def altered(change):
    def make():
        opt, params = stepped_adam()
        sd = opt.state_dict()
        change(sd)
        return sd
    return make


LOAD_ERRORS = [
    ("not a dict", lambda: [1, 2], TypeError, "must be a dict"),
    ("other optimizer", lambda: (lambda o: o.state_dict())(nopt.SGD(arrays())), ValueError,
     "comes from SGD"),
    ("missing key", altered(lambda sd: sd.pop("state")), ValueError, "missing"),
    ("bad format", altered(lambda sd: sd.update(format=99)), ValueError, "format 99"),
    ("shape", altered(lambda sd: sd["state"][0].update(exp_avg=np.zeros((3, 4), np.float32))),
     ValueError, r"\['exp_avg'\] has shape"),
    ("dtype", altered(lambda sd: sd["state"][0].update(exp_avg=np.zeros((4, 3)))), TypeError,
     "has dtype float64"),
    ("unknown state", altered(lambda sd: sd["state"][0].update(velocity=np.zeros((4, 3)))),
     ValueError, "has no state 'velocity'"),
    ("param index", altered(lambda sd: sd["state"].update({5: {}})), ValueError, "param 5"),
    ("group count", altered(lambda sd: sd["param_groups"].append(sd["param_groups"][0])),
     ValueError, "2 param groups"),
    ("bad hyper", altered(lambda sd: sd["param_groups"][0].update(lr=-1)), ValueError,
     "lr must be >= 0"),
    ("negative step", altered(lambda sd: sd["state"][1].update(step=-1)), ValueError, ">= 0"),
]


@pytest.mark.parametrize("make_sd, error, message", [c[1:] for c in LOAD_ERRORS],
                         ids=[c[0] for c in LOAD_ERRORS])
def test_load_state_dict_rejects_and_modifies_nothing(make_sd, error, message):
    opt, params = stepped_adam()
    opt.step(good_grads())
    before = snapshot(opt, params)
    with pytest.raises(error, match=message):
        opt.load_state_dict(make_sd())
    assert_untouched(before, opt, params)


@pytest.mark.parametrize("change, error, message", [
    (lambda entry: entry.pop("mu_product"), ValueError, r"\[0\] has no 'mu_product'"),
    (lambda entry: entry.update(mu_product="0.5"), TypeError, "must be a real number"),
    (lambda entry: entry.update(mu_product=float("nan")), ValueError, "must be finite"),
], ids=["missing", "string", "nan"])
def test_load_state_dict_checks_host_scalars(change, error, message):
    params = arrays()
    opt = nopt.NAdam(params)
    opt.step(good_grads())
    sd = opt.state_dict()
    change(sd["state"][0])
    before = snapshot(opt, params)
    with pytest.raises(error, match=message):
        opt.load_state_dict(sd)
    assert_untouched(before, opt, params)


# ------------------------------------------------------------------------------ functional
def test_functional_requires_the_state_its_options_need():
    p, g = np.zeros(3), np.ones(3)
    with pytest.raises(ValueError, match="momentum_buffer is required"):
        F.sgd_step(p, g, step=1, momentum=0.9)
    with pytest.raises(ValueError, match="max_exp_avg_sq is required"):
        F.adam_step(p, g, np.zeros(3), np.zeros(3), step=1, amsgrad=True)
    with pytest.raises(ValueError, match="step must be >= 1"):
        F.adam_step(p, g, np.zeros(3), np.zeros(3), step=0)
    with pytest.raises(ValueError, match="exp_avg has shape"):
        F.adam_step(p, g, np.zeros(2), np.zeros(3), step=1)
    with pytest.raises(ValueError, match=r"mu_product must be in \[0.0, 1.0\]"):
        F.nadam_step(p, g, np.zeros(3), np.zeros(3), step=2, mu_product=1.5)
    np.testing.assert_array_equal(p, 0.0)


def test_grads_by_name_must_have_exactly_the_params_names():
    """A grad under a name the optimizer does not have (a param added to the model later)
    would never be trained: it is refused like a missing one, before anything changes."""
    a, b = arrays()
    opt = nopt.Adam({"W": a, "b": b})
    opt.step(dict(zip("Wb", good_grads())))
    before = snapshot(opt, [a, b])
    for grads, message in (({"W": good_grads()[0]}, r"missing \['b'\], unknown \[\]"),
                           ({**dict(zip("Wb", good_grads())), "W2": np.ones(2, np.float32)},
                            r"missing \[\], unknown \['W2'\]")):
        with pytest.raises(ValueError, match=message):
            opt.step(grads)
        assert_untouched(before, opt, [a, b])


def test_a_list_hyper_parameter_edited_in_place_acts_like_a_reassignment():
    """betas given as a list and edited in place: checked at the next step (nothing changes
    when the edit is bad) and used whole by the kernels and the bias corrections alike; the
    state_dict holds copies, not the live lists (issue 12, item 3)."""
    def run(edit):
        params = arrays()
        opt = nopt.Adam(params, lr=0.01, betas=[0.9, 0.999])
        opt.step(good_grads())
        edit(opt.param_groups[0])
        opt.step(good_grads())
        return opt, params
    in_place, p1 = run(lambda g: g["betas"].__setitem__(0, 0.5))
    reassigned, p2 = run(lambda g: g.__setitem__("betas", [0.5, 0.999]))
    for a, b in zip(p1, p2):
        np.testing.assert_array_equal(a, b)
    unchanged, p3 = run(lambda g: None)
    assert not np.array_equal(p1[0], p3[0])  # the edit did reach the update
    before = snapshot(in_place, p1)
    in_place.param_groups[0]["betas"][0] = 5.0
    with pytest.raises(ValueError, match=r"betas\[0\] must be in \[0.0, 1.0\)"):
        in_place.step(good_grads())
    params_before, state_before, _, count = before  # the edit itself is the user's
    for a, b in zip(p1, params_before):
        np.testing.assert_array_equal(a, b)
    for now, then in zip(in_place.state, state_before):
        for key in now:
            np.testing.assert_array_equal(now[key], then[key])
    assert in_place.step_count == count
    in_place.param_groups[0]["betas"][0] = 0.5
    saved = in_place.state_dict()
    saved["param_groups"][0]["betas"][0] = 0.1  # editing the snapshot leaves the optimizer be
    assert in_place.param_groups[0]["betas"] == [0.5, 0.999]
