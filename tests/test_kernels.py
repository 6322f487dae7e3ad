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
    for dispatcher in (kernel.parallel, kernel.serial):
        copies = [param.copy(), *(s.copy() for s in states)]
        dispatcher(copies[0], grad, *copies[1:], h)
        results.append(copies)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(results[0][0], param), "the kernel did not update the param"


# Sizes that cross chunk boundaries of the multi-tensor loops, with empty arrays among them.
TABLE_SIZES = [5, _cpu.TABLE_CHUNK + 7, 0, 2 * _cpu.TABLE_CHUNK, 3, 0, 1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_table_loops_equal_the_span_loop_bit_for_bit(case, dtype):
    """The multi-tensor loops (parallel and serial) update separate arrays exactly as the span
    loop updates the same values laid end to end."""
    kernel, (_, _, states, h) = kernel_calls(*case, dtype, size=sum(TABLE_SIZES))
    rng = np.random.default_rng(3)
    params = [rng.standard_normal(n).astype(dtype) for n in TABLE_SIZES]
    grads = [rng.standard_normal(n).astype(dtype) for n in TABLE_SIZES]
    expected = [np.concatenate(params), *(s.copy() for s in states)]
    kernel.serial(expected[0], np.concatenate(grads), *expected[1:], h)
    members = np.arange(len(params), dtype=np.int64)[::-1].copy()  # addresses in any order
    for loop in (kernel.table_parallel, kernel.table_serial):
        copies = [p.copy() for p in params]
        state_copies = [s.copy() for s in states]
        loop(_cpu.addresses(copies)[::-1].copy(), _cpu.addresses(grads)[::-1].copy(), members,
             *_cpu.table_layout(TABLE_SIZES), *_cpu.table_states(state_copies, dtype), h)
        np.testing.assert_array_equal(np.concatenate(copies), expected[0])
        for a, b in zip(state_copies, expected[1:]):
            np.testing.assert_array_equal(a, b)


def test_size_threshold_picks_the_serial_or_parallel_loop(monkeypatch):
    used = []
    for kind in ("parallel", "serial", "table_parallel", "table_serial"):
        monkeypatch.setattr(_cpu.adam, kind, lambda *a, kind=kind: used.append(kind))
    small = np.zeros(_cpu.SERIAL_BELOW - 1, np.float32)
    large = np.zeros(_cpu.SERIAL_BELOW, np.float32)
    for params, expected in (([small], "serial"), ([large], "parallel"),
                             ([small[:5], small[5:]], "table_serial"),
                             ([small, large], "table_parallel")):
        del used[:]
        nopt.Adam(params).step([np.ones_like(p) for p in params])
        assert used == [expected]  # the first call of a timed call site is parallel


class FakeClock:
    """Stands in for time.perf_counter in _cpu: the fake loops advance it by their cost."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def timed_site(monkeypatch, costs):
    """A _Timed call site whose loops cost costs['parallel'] / costs['serial'] fake seconds
    (changeable between calls); returns (call, the list of loops run)."""
    clock, used = FakeClock(), []
    monkeypatch.setattr(_cpu, "time", clock)
    monkeypatch.setattr(_cpu, "LOOPS", "timed")

    def loop(kind):
        def run():
            used.append(kind)
            clock.now += costs[kind]
        return run
    return _cpu._Timed(loop("parallel"), loop("serial")), used


def test_a_timed_call_site_runs_the_faster_loop_and_retries_the_other(monkeypatch):
    costs = {"parallel": 1.0, "serial": 3.0}
    call, used = timed_site(monkeypatch, costs)
    for _ in range(4):
        call()
    assert used == ["parallel", "serial", "parallel", "serial"]  # warm-up
    del used[:]
    for _ in range(200):
        call()
    retries = [i for i, kind in enumerate(used) if kind == "serial"]
    # the losing loop is retried after 8 calls, then ever less often (16, 32, ...)
    assert retries[:3] == [7, 7 + 16, 7 + 16 + 32] and len(retries) == 4
    costs["parallel"] = 10.0  # a busy process appears: parallel is now the slow one
    del used[:]
    for _ in range(20):
        call()
    assert used[-10:] == ["serial"] * 10 and call.choice() == "serial"
    costs["parallel"] = 0.5  # and leaves: parallel wins its next retry and is used again
    for _ in range(300):
        call()
    assert used[-5:] == ["parallel"] * 5 and call.choice() == "parallel"


def test_loops_can_be_fixed_to_parallel_or_serial(monkeypatch):
    from numba_opt import threads
    call, used = timed_site(monkeypatch, {"parallel": 1.0, "serial": 3.0})
    threads.set_loops("serial")
    for _ in range(5):
        call()
    threads.set_loops("parallel")
    call()
    assert used == ["serial"] * 5 + ["parallel"]
    with pytest.raises(ValueError, match="loops must be one of"):
        threads.set_loops("fastest")
    assert _cpu.LOOPS == "parallel"  # unchanged by the refused call


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
    for name, kwargs in CASES:  # compile every kernel, span and table, serial and parallel
        for shapes in ([(3,)], [(_cpu.SERIAL_BELOW,)], [(3,), (_cpu.SERIAL_BELOW,)]):
            params = make_params(np.float32, shapes=shapes)
            opt = optimizer(name, params, **kwargs)
            for step in (1, 2):  # a timed call site runs parallel, then serial
                opt.step(make_grads(params, step))
    for kernel in _cpu.KERNELS:
        for dispatcher in kernel.dispatchers():
            for signature in dispatcher.signatures:
                assert all(isinstance(t, types.Array) for t in signature)
                # the scalars are an array too; the tables' addresses and layout are int64
                dtypes = {t.dtype for t in signature} - {types.int64}
                assert len(dtypes) == 1, f"{dispatcher.py_func.__name__}{signature}"
    assert all(d.signatures for k in _cpu.KERNELS for d in k.dispatchers())


@pytest.mark.parametrize("family", sorted(_math.SCALARS))
def test_each_unpacker_maps_every_field_in_order(family):
    fields = _math.SCALARS[family]._fields
    values = np.arange(1.0, len(fields) + 1)
    unpacked = getattr(_math, "unpack_" + family)(values)
    assert tuple(unpacked) == tuple(values) and type(unpacked)._fields == fields
