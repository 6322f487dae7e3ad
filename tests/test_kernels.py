"""The CPU kernels: parallel == serial bit for bit, one signature per dtype, no recompiles."""
import numpy as np
import pytest
from numba import types

import numba_opt as nopt
from numba_opt import _cpu, _math
from cases import CASES, case_id, make_grads, make_params, optimizer


def kernel_calls(name, kwargs, dtype, size=40_000):
    """The kernel one step of the optimizer calls, and arguments for it (state after step 1)."""
    params = make_params(dtype, shapes=[(size,)])
    opt = optimizer(name, params, **kwargs)
    opt.step(make_grads(params, 1))  # creates the state
    hyper = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    kernel_name, names = opt._layout(hyper)
    host = opt._advance_host(hyper, 2, {k: opt.state[0][k] for k in opt.host_state})
    scalars = _cpu.scalars_argument(opt._scalars(hyper, 2, (), **host), dtype)
    states = tuple(opt.state[0][n].reshape(-1) for n in names)
    return getattr(_cpu, kernel_name), (params[0], make_grads(params, 2)[0], states, scalars)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_parallel_and_serial_kernels_agree_bit_for_bit(case, dtype):
    kernel, args = kernel_calls(*case, dtype)
    results = []
    param, grad, states, h = args
    for dispatcher in kernel.dispatchers():
        copies = [param.copy(), *(s.copy() for s in states)]
        dispatcher(copies[0], grad, *copies[1:], h)
        results.append(copies)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(results[0][0], param), "the kernel did not update the param"


def test_size_threshold_picks_the_serial_or_parallel_loop(monkeypatch):
    used = []
    monkeypatch.setattr(_cpu.adam, "parallel", lambda *a: used.append("parallel"))
    monkeypatch.setattr(_cpu.adam, "serial", lambda *a: used.append("serial"))
    small = np.zeros(_cpu.SERIAL_BELOW - 1, np.float32)
    large = np.zeros(_cpu.SERIAL_BELOW, np.float32)
    opt = nopt.Adam([small, large])
    opt.step([np.ones_like(small), np.ones_like(large)])
    assert used == ["serial", "parallel"]


def _all_signatures():
    return {d: list(d.signatures) for k in _cpu.KERNELS for d in k.dispatchers()}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_no_recompile_after_the_second_step(case):
    name, kwargs = case
    params = make_params(np.float32) + make_params(np.float64, seed=5)
    opt = optimizer(name, params, **kwargs)
    for step in (1, 2):
        opt.step(make_grads(params, step))
    before = _all_signatures()
    for step in range(3, 8):
        opt.param_groups[0]["lr"] = opt.param_groups[0]["lr"] * 0.5  # new values, same types
        opt.step(make_grads(params, step))
    assert _all_signatures() == before


def test_float32_kernels_see_only_float32():
    """The host casts every scalar to the array dtype: no float64 leaks into a float32 kernel."""
    for name, kwargs in CASES:  # compile every kernel, serial and parallel, for float32
        params = make_params(np.float32, shapes=[(3,), (_cpu.SERIAL_BELOW,)])
        optimizer(name, params, **kwargs).step(make_grads(params, 1))
    for kernel in _cpu.KERNELS:
        for dispatcher in kernel.dispatchers():
            for signature in dispatcher.signatures:
                assert all(isinstance(t, types.Array) for t in signature)
                dtypes = {t.dtype for t in signature}  # the scalars are an array too
                assert len(dtypes) == 1, f"{dispatcher.py_func.__name__}{signature}"
    assert all(d.signatures for k in _cpu.KERNELS for d in k.dispatchers())


@pytest.mark.parametrize("family", sorted(_math.SCALARS))
def test_each_unpacker_maps_every_field_in_order(family):
    fields = _math.SCALARS[family]._fields
    values = np.arange(1.0, len(fields) + 1)
    unpacked = getattr(_math, "unpack_" + family)(values)
    assert tuple(unpacked) == tuple(values) and type(unpacked)._fields == fields
