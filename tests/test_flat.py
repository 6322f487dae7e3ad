"""FlatParams and multi-tensor stepping: one kernel call per bucket, same numbers as per tensor."""
import numpy as np
import pytest

import numba_opt as nopt
from numba_opt import _cpu
from cases import CASES, case_id, count_kernel_calls, make_grads, make_params, optimizer

SHAPES = [(7, 5), (5,), (3, 4, 2), (), (130, 130)]


@pytest.fixture
def kernel_calls(monkeypatch):
    return count_kernel_calls(monkeypatch, _cpu.Kernel)


def test_flat_params_copy_values_into_one_buffer():
    params = dict(zip("abcde", make_params(np.float32, shapes=SHAPES)))
    flat = nopt.FlatParams(params)
    assert flat.data.shape == (sum(int(np.prod(s)) for s in SHAPES),)
    for name, original in params.items():
        view = flat.params[name]
        assert view.shape == original.shape and np.shares_memory(view, flat.data)
        np.testing.assert_array_equal(view, original)
        assert np.shares_memory(flat.grads[name], flat.grad) and not flat.grads[name].any()
    flat.grads["a"][...] = 3.0
    flat.zero_grad()
    assert not flat.grad.any()
    assert "5 arrays" in repr(flat)


def test_flat_params_reject_bad_input():
    with pytest.raises(ValueError, match="params is empty"):
        nopt.FlatParams([])
    with pytest.raises(TypeError, match=r"params\[1\] has dtype float64"):
        nopt.FlatParams([np.zeros(2, np.float32), np.zeros(2)])
    with pytest.raises(TypeError, match=r"params\[0\] has dtype int64"):
        nopt.FlatParams([np.zeros(2, np.int64)])


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_flat_step_is_one_call_and_equals_the_per_tensor_step(case, kernel_calls):
    name, kwargs = case
    scattered = make_params(np.float32, shapes=SHAPES)
    flat = nopt.FlatParams([p.copy() for p in scattered])
    flat_opt = optimizer(name, flat, **kwargs)
    per_tensor = optimizer(name, scattered, **kwargs)
    for step in range(1, 6):
        grads = make_grads(scattered, step)
        for view, grad in zip(flat.grads, grads):
            view[...] = grad
        del kernel_calls[:]
        flat_opt.step(flat.grads)
        assert len(kernel_calls) == 1 and kernel_calls[0][1] == flat.data.size
        del kernel_calls[:]
        per_tensor.step(grads)  # separate arrays: one multi-tensor call
        assert len(kernel_calls) == 1 and kernel_calls[0][1] == flat.data.size
    for a, b in zip(flat.params, scattered):
        np.testing.assert_array_equal(a, b)  # the same per-element arithmetic, bit for bit
    for i in range(len(SHAPES)):
        for key, value in per_tensor.state[i].items():
            np.testing.assert_array_equal(flat_opt.state[i][key], value)


def test_state_views_share_the_flat_buffers():
    flat = nopt.FlatParams(make_params(np.float64, shapes=SHAPES))
    opt = nopt.Adam(flat)
    opt.step(flat.grads)
    buffer = opt._buckets[0].buffers["exp_avg"]
    for i, shape in enumerate(SHAPES):
        view = opt.state[i]["exp_avg"]
        assert view.shape == shape and np.shares_memory(view, buffer)


def test_new_grad_arrays_each_step_are_one_table_call(kernel_calls):
    flat = nopt.FlatParams(make_params(np.float32, shapes=SHAPES))
    opt = nopt.SGD(flat, lr=0.1, momentum=0.9)
    opt.step(make_grads(flat.params, 1))  # separate arrays: not one span, one table
    assert kernel_calls == [("sgd_momentum", flat.data.size)]
    del kernel_calls[:]
    opt.step(flat.grads)
    assert len(kernel_calls) == 1


def test_none_grad_in_a_flat_bucket_keeps_per_param_steps():
    from reference import RULES
    flat = nopt.FlatParams(make_params(np.float64, shapes=SHAPES))
    ref = [p.copy() for p in flat.params]
    ref_state = [{} for _ in ref]
    opt = nopt.Adam(flat, lr=0.01)
    for step in range(1, 8):
        grads = make_grads(ref, step)
        if step == 3:
            grads[2] = None
        for view, grad in zip(flat.grads, grads):
            if grad is not None:
                view[...] = grad
        opt.step([None if g is None else v for v, g in zip(flat.grads, grads)])
        for p, g, s in zip(ref, grads, ref_state):
            if g is not None:
                RULES["Adam"](p, g, s, lr=0.01)
    for p, r in zip(flat.params, ref):
        np.testing.assert_allclose(p, r, rtol=1e-12, atol=1e-13)
    assert [s["step"] for s in opt.state] == [7, 7, 6, 7, 7]


def test_flat_checkpoint_resumes_exactly():
    flat = nopt.FlatParams(make_params(np.float32, shapes=SHAPES))
    opt = nopt.Adam(flat, amsgrad=True)
    for step in range(1, 4):
        for view, grad in zip(flat.grads, make_grads(flat.params, step)):
            view[...] = grad
        opt.step(flat.grads)
    checkpoint = opt.state_dict()
    resumed = nopt.FlatParams([p.copy() for p in flat.params])
    opt2 = nopt.Adam(resumed, amsgrad=True)
    opt2.load_state_dict(checkpoint)
    for step in range(4, 7):
        for f in (flat, resumed):
            for view, grad in zip(f.grads, make_grads(flat.params, step)):
                view[...] = grad
        opt.step(flat.grads)
        opt2.step(resumed.grads)
    np.testing.assert_array_equal(flat.data, resumed.data)
