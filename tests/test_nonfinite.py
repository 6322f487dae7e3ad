"""Non-finite gradients, on the CPU and the CUDA backend: by default inf/NaN propagate exactly as
in the float64 reference (and torch); ``skip_if_nonfinite`` changes nothing; ``error_if_nonfinite``
raises naming the grad and changes nothing."""
import copy

import numpy as np
import pytest

import numba_opt as nopt
from cases import make_grads, make_params, optimizer
from reference import RULES

SHAPES = [(7, 5), (5,), (3, 2, 2), ()]
OPTIMIZERS = [("SGD", {"lr": 0.1, "momentum": 0.9}), ("RMSprop", {"centered": True}),
              ("Adam", {"amsgrad": True}), ("Adamax", {}), ("NAdam", {}), ("Lion", {}),
              ("Rprop", {}), ("ASGD", {"t0": 0.5})]


def backend_arrays(device):
    """(to the backend, back to the host) for a device name; skips CUDA without a GPU or the
    simulator."""
    if device == "cpu":
        return (lambda a: a), (lambda a: a)
    cuda = pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
    from numba import config
    if not config.ENABLE_CUDASIM and not cuda.is_available():
        pytest.skip("no GPU; run with NUMBA_ENABLE_CUDASIM=1")
    return cuda.to_device, (lambda a: a.copy_to_host())


def host_state(opt, back):
    return [{k: (back(v) if k in opt.state_names else v) for k, v in s.items()}
            for s in opt.state]


def poisoned_grads(params, bad):
    grads = make_grads(params, 2)
    grads[0][1, 2] = bad
    grads[2].flat[5] = -bad
    return grads


@pytest.fixture
def small_launches(monkeypatch):
    from numba import config
    if config.ENABLE_CUDASIM:
        from numba_opt import _cuda
        monkeypatch.setattr(_cuda, "THREADS_PER_BLOCK", 4)
        monkeypatch.setattr(_cuda, "MAX_BLOCKS", 3)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("bad", [np.inf, np.nan], ids=["inf", "nan"])
@pytest.mark.parametrize("case", OPTIMIZERS, ids=[c[0] for c in OPTIMIZERS])
def test_by_default_nonfinite_values_propagate_like_the_reference(case, bad, device,
                                                                  small_launches):
    name, kwargs = case
    to, back = backend_arrays(device)
    host = make_params(np.float64, shapes=SHAPES)
    ref, ref_state = [p.copy() for p in host], [{} for _ in host]
    params = [to(p) for p in host]
    opt = optimizer(name, params, **kwargs)
    for grads in (make_grads(host, 1), poisoned_grads(host, bad), make_grads(host, 3)):
        opt.step([to(g) for g in grads])
        with np.errstate(invalid="ignore", over="ignore"):  # NumPy's warnings for inf - inf
            for p, g, s in zip(ref, grads, ref_state):
                RULES[name](p, g, s, **kwargs)
    results = [back(p) for p in params]
    # it reached the param, or (Lion: sign(inf) is a finite step) the state; Rprop too takes
    # an inf grad's sign only, and the next grad replaces it in prev: nothing keeps an inf
    touched = [results[0]] + [v for k, v in host_state(opt, back)[0].items()
                              if k in opt.state_names]
    if not (name == "Rprop" and np.isinf(bad)):
        assert any(not np.isfinite(a[1, 2]) for a in touched), "the bad value vanished"
    for got, expected in zip(results, ref):
        # equal_nan: the same elements are NaN/inf, the others equal the reference
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("bad", [np.inf, np.nan], ids=["inf", "nan"])
def test_skip_if_nonfinite_changes_nothing(bad, device, small_launches):
    to, back = backend_arrays(device)
    host = make_params(np.float32, shapes=SHAPES)
    params = [to(p) for p in host]
    opt = nopt.Adam(params)
    opt.step([to(g) for g in make_grads(host, 1)])
    before = ([back(p) for p in params], host_state(opt, back), opt.step_count)
    norm = opt.step([to(g) for g in poisoned_grads(host, bad)], skip_if_nonfinite=True)
    assert not np.isfinite(norm)
    assert_unchanged(before, opt, params, back)
    # a finite step afterwards runs and returns a finite norm
    assert np.isfinite(opt.step([to(g) for g in make_grads(host, 3)], skip_if_nonfinite=True))
    assert opt.step_count == before[2] + 1


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_error_if_nonfinite_names_the_grad_and_changes_nothing(device, small_launches):
    to, back = backend_arrays(device)
    host = make_params(np.float32, shapes=SHAPES)
    params = [to(p) for p in host]
    opt = nopt.RMSprop(params, momentum=0.9)
    opt.step([to(g) for g in make_grads(host, 1)])
    before = ([back(p) for p in params], host_state(opt, back), opt.step_count)
    grads = make_grads(host, 2)
    grads[2].flat[3] = np.nan
    with pytest.raises(ValueError, match=r"grad for params\[2\] has non-finite values"):
        opt.step([to(g) for g in grads], error_if_nonfinite=True)
    assert_unchanged(before, opt, params, back)


def assert_unchanged(before, opt, params, back):
    params_before, state_before, count = before
    for p, q in zip(params, params_before):
        np.testing.assert_array_equal(back(p), q)
    for now, then in zip(host_state(opt, back), state_before):
        assert now.keys() == then.keys()
        for key in now:
            np.testing.assert_array_equal(now[key], then[key])
    assert opt.step_count == count


def test_skip_and_error_together_are_refused():
    params = make_params(np.float32, shapes=SHAPES)
    before = copy.deepcopy(params)
    opt = nopt.SGD(params, lr=0.1)
    with pytest.raises(ValueError, match="not both"):
        opt.step(make_grads(params, 1), skip_if_nonfinite=True, error_if_nonfinite=True)
    with pytest.raises(TypeError, match="error_if_nonfinite must be True or False"):
        opt.step(make_grads(params, 1), error_if_nonfinite="yes")
    for a, b in zip(params, before):
        np.testing.assert_array_equal(a, b)


def test_nonfinite_grads_propagate_like_torch():
    torch = pytest.importorskip("torch")
    host = make_params(np.float32, shapes=SHAPES)
    tensors = [torch.tensor(p.copy()) for p in host]
    opt, torch_opt = nopt.Adam(host), torch.optim.Adam(tensors, foreach=False)
    for grads in (make_grads(host, 1), poisoned_grads(host, np.nan), make_grads(host, 3)):
        opt.step(grads)
        for t, g in zip(tensors, grads):
            t.grad = torch.from_numpy(g.copy())
        torch_opt.step()
    for p, t in zip(host, tensors):
        np.testing.assert_array_equal(np.isnan(p), np.isnan(t.numpy()))
        np.testing.assert_allclose(p, t.numpy(), rtol=1e-5, atol=1e-6)
