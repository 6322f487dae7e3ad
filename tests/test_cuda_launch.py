"""How the CUDA backend launches (issue 16): one launch per bucket of separate arrays, no host
sync in a step unless a norm is read, the grad norm deterministic and kept on the device, every
launch on the step's stream, numba's low-occupancy warning silenced where we launch.

Under the simulator (``NUMBA_ENABLE_CUDASIM=1``) spies on numba's simulated kernels and arrays
count launches and host syncs; streams are recorded as the launches are configured."""
import math
import warnings

import numpy as np
import pytest

import numba_opt as nopt
from cases import TOLERANCE, make_grads, make_params

cuda = pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
from numba import config  # noqa: E402

SIMULATED = bool(config.ENABLE_CUDASIM)
pytestmark = pytest.mark.skipif(not SIMULATED, reason="spies on the CUDA simulator")
SHAPES = [(7, 5), (5,), (3, 2, 2), (0,), ()]


@pytest.fixture(autouse=True)
def small_launches(monkeypatch):
    from numba_opt import _cuda
    monkeypatch.setattr(_cuda, "THREADS_PER_BLOCK", 4)
    monkeypatch.setattr(_cuda, "MAX_BLOCKS", 3)


@pytest.fixture
def spy(monkeypatch):
    """Every kernel launch (its name and stream) and every host sync from now on."""
    from numba.cuda.simulator import api, kernel
    from numba.cuda.simulator.cudadrv import devicearray
    record = {"launches": [], "syncs": [], "streams": []}
    call, getitem = kernel.FakeCUDAKernel.__call__, kernel.FakeCUDAKernel.__getitem__

    def launch(self, *args):
        if not self._device and kernel._kernel_context is None:  # not a device function
            record["launches"].append(self.__name__)
        return call(self, *args)

    def configure(self, configuration):
        record["streams"].append(configuration[2] if len(configuration) > 2 else 0)
        return getitem(self, configuration)

    def sync(what, original):
        def synced(*args, **kwargs):
            record["syncs"].append(what)
            return original(*args, **kwargs)
        return synced
    monkeypatch.setattr(kernel.FakeCUDAKernel, "__call__", launch)
    monkeypatch.setattr(kernel.FakeCUDAKernel, "__getitem__", configure)
    monkeypatch.setattr(devicearray.FakeCUDAArray, "copy_to_host",
                        sync("copy_to_host", devicearray.FakeCUDAArray.copy_to_host))
    monkeypatch.setattr(api.stream, "synchronize", sync("stream", api.stream.synchronize))
    monkeypatch.setattr(api.Event, "synchronize", sync("event", api.Event.synchronize))
    monkeypatch.setattr(cuda, "synchronize", sync("device", cuda.synchronize))

    def clear():
        for key in ("launches", "syncs", "streams"):
            record[key].clear()
    record["clear"] = clear
    return record


def to_device(arrays):
    """Device copies of host arrays, None (an absent grad) kept."""
    return [None if a is None else cuda.to_device(a) for a in arrays]


def test_a_bucket_of_separate_arrays_steps_in_one_launch_without_host_syncs(spy):
    host = make_params(np.float32, shapes=SHAPES) + make_params(np.float64, shapes=[(4,), (3,)])
    device = to_device(host)
    gpu, cpu = nopt.Adam(device, lr=0.01), nopt.Adam(host, lr=0.01)
    for step in range(1, 5):
        grads = make_grads(host, step)
        device_grads = to_device(grads)  # new arrays every step, as a training loop makes
        spy["clear"]()
        assert gpu.step(device_grads) is None
        cpu.step(grads)
        if step > 1:  # (the first step also fills the new state buffers)
            # a float32 bucket and a float64 bucket: one launch each, whatever their arrays
            assert len(spy["launches"]) == 2, spy["launches"]
            assert spy["syncs"] == []
    for d, h in zip(device, host):
        np.testing.assert_allclose(d.copy_to_host(), h, **TOLERANCE[h.dtype.type])


def test_when_some_grads_are_none_the_params_alike_step_in_one_launch(spy):
    """A param left out twice falls two steps behind: from then on the others (same step
    count) step in one launch over a table of them, it in its own; all as on the CPU."""
    host = make_params(np.float32, shapes=SHAPES) + make_params(np.float32, shapes=[(4,)], seed=3)
    gpu, cpu = nopt.Adam(to_device(host), lr=0.01), nopt.Adam(host, lr=0.01)
    for step in range(1, 7):
        grads = make_grads(host, step)
        if step in (2, 3):
            grads[1] = None
        if step == 5:
            grads[5] = None
        spy["clear"]()
        gpu.step(to_device(grads),
                 max_grad_norm=1.0 if step == 3 else None)
        cpu.step(grads, max_grad_norm=1.0 if step == 3 else None)
        launches = [name for name in spy["launches"] if name != "_fill"]  # (state, unscale)
        # 2: the five with grads together; 3: their squares summed over the same table, the
        # clip scale, the update; 4: four together, param 1 (two behind) alone; 6: params 0, 2,
        # 3, 4 together, param 1 and param 5 (one behind) one each
        assert len(launches) == {1: 1, 2: 1, 3: 3, 4: 2, 5: 2, 6: 3}[step], (step, launches)
        assert spy["syncs"] == []
    for i, (d, h) in enumerate(zip(gpu._params, host)):
        np.testing.assert_allclose(d.copy_to_host(), h, **TOLERANCE[np.float32])
        for key, value in cpu.state[i].items():
            if isinstance(value, np.ndarray):
                np.testing.assert_allclose(gpu.state[i][key].copy_to_host(), value,
                                           **TOLERANCE[np.float32])
            else:
                assert gpu.state[i][key] == value, (i, key)
    assert gpu.state_dict()["state"][1]["step"] == 4 and gpu.state_dict()["state"][5]["step"] == 5


def test_params_whose_histories_meet_again_step_over_the_whole_table(spy):
    """Param 1 misses step 1 and param 0 step 2: both have stepped once, so from step 3 on
    they are alike again and step together over the bucket's own table."""
    host = make_params(np.float32, shapes=[(3, 2), (5,)])
    gpu, cpu = nopt.Adam(to_device(host), lr=0.01), nopt.Adam(host, lr=0.01)
    for step, left_out in ((1, 1), (2, 0), (3, None), (4, None)):
        grads = make_grads(host, step)
        if left_out is not None:
            grads[left_out] = None
        spy["clear"]()
        gpu.step(to_device(grads))
        cpu.step(grads)
    assert [name for name in spy["launches"] if name != "_fill"] == ["kernel"]
    assert gpu._buckets[0].per_param is not None  # still stepped as histories, alike
    for d, h in zip(gpu._params, host):
        np.testing.assert_allclose(d.copy_to_host(), h, **TOLERANCE[np.float32])


@pytest.mark.parametrize("tables", [8, 1])
def test_past_its_tables_for_none_patterns_a_bucket_steps_param_by_param(spy, monkeypatch,
                                                                          tables):
    """Step 2 meets a second pattern (params 2 and 3 alike, param 0 a step behind): with room
    for one table only, params 2 and 3 step one launch each; the result is the same."""
    from numba_opt.optim import _buckets
    monkeypatch.setattr(_buckets, "MAX_SUBSET_TABLES", tables)
    host = make_params(np.float32, shapes=[(3,), (4,), (5,), (2, 3)])
    gpu = nopt.SGD(to_device(host), lr=0.1, momentum=0.9)
    cpu = nopt.SGD(host, lr=0.1, momentum=0.9)
    for step, left_out in ((1, 0), (2, 1)):
        grads = make_grads(host, step)
        grads[left_out] = None
        spy["clear"]()
        gpu.step(to_device(grads))
        cpu.step(grads)
    launches = [name for name in spy["launches"] if name != "_fill"]
    assert len(launches) == (2 if tables == 8 else 3), launches  # param 0 alone, then 2 and 3
    for d, h in zip(gpu._params, host):
        np.testing.assert_allclose(d.copy_to_host(), h, **TOLERANCE[np.float32])


def test_a_bucket_of_int8_state_steps_in_one_launch_without_host_syncs(spy, monkeypatch):
    """Quantized params (lowered MIN_SIZE: three of them, blocks straddling no param) step in
    one blockwise launch over the bucket's table, clipped or not, like the CPU's per-param
    loop; a step leaving a grad out steps the others over a table of them."""
    from numba_opt import _quant
    monkeypatch.setattr(_quant, "MIN_SIZE", 8)
    shapes = [(3, 7), (5,), (9,), (4, 4)]  # the (5,) param keeps float32 state
    host = make_params(np.float32, shapes=shapes)
    gpu = nopt.AdamW(to_device(host), lr=0.01, state_dtype="int8")
    cpu = nopt.AdamW(host, lr=0.01, state_dtype="int8")
    for step in range(1, 5):
        grads = make_grads(host, step)
        if step == 4:
            grads[2] = None
        spy["clear"]()
        gpu.step(to_device(grads), max_grad_norm=1.0 if step == 3 else None)
        cpu.step(grads, max_grad_norm=1.0 if step == 3 else None)
        kernels = [name for name in spy["launches"] if name.startswith("kernel")]
        if step == 2:  # the int8 bucket and the float32 one
            assert len(spy["launches"]) == 2 and spy["syncs"] == [], spy["launches"]
        if step == 4:  # the two quantized params with grads over a table of them (their
            # state and scales at their places in the bucket's), and the float32 bucket
            assert len(kernels) == 2, spy["launches"]
    assert spy["syncs"] == []
    for i, (d, h) in enumerate(zip(gpu._params, host)):
        assert d.copy_to_host().tobytes() == h.tobytes(), f"param {i}"
        for key, value in cpu.state[i].items():
            if isinstance(value, np.ndarray):
                assert gpu.state[i][key].copy_to_host().tobytes() == value.tobytes(), key


def test_the_grad_table_is_uploaded_only_when_the_grads_change():
    host = make_params(np.float32, shapes=SHAPES)
    gpu = nopt.SGD(to_device(host), lr=0.1)
    grads = to_device(make_grads(host, 1))
    gpu.step(grads)
    gpu.step(grads)  # the same arrays: the table of the last step
    table = gpu._buckets[0].table[1]
    assert table.uploads == 1
    gpu.step(to_device(make_grads(host, 2)))
    assert table.uploads == 2


def test_a_clipped_step_keeps_the_norm_and_scale_on_the_device(spy):
    host = make_params(np.float32, shapes=SHAPES)
    gpu, cpu = nopt.Adam(to_device(host), lr=0.01), nopt.Adam(host, lr=0.01)
    for step in range(1, 4):
        grads = make_grads(host, step)
        device_grads = to_device(grads)
        spy["clear"]()
        norm = gpu.step(device_grads, max_grad_norm=1.0)
        cpu_norm = cpu.step(grads, max_grad_norm=1.0)
        assert spy["syncs"] == []  # the clip scale never left the device
        if step > 1:  # the sums of squares, their combination, the update
            assert len(spy["launches"]) == 3, spy["launches"]
        assert float(norm) == pytest.approx(cpu_norm, rel=1e-12)
        assert norm == pytest.approx(cpu_norm, rel=1e-12) and f"{norm:.3f}" == f"{cpu_norm:.3f}"
        assert len(spy["syncs"]) == 1  # read once, then kept
    # an unclipped step after a clipped one sets the scales back to 1 (no sync), then none
    for step in (4, 5):
        grads = make_grads(host, step)
        spy["clear"]()
        gpu.step(to_device(grads))
        cpu.step(grads)
        assert spy["syncs"] == []
        assert len(spy["launches"]) == (3 if step == 4 else 1), spy["launches"]
    for d, h in zip(gpu._params, host):
        np.testing.assert_allclose(d.copy_to_host(), h, **TOLERANCE[np.float32])


def test_a_non_finite_check_reads_the_norm_once(spy):
    host = make_params(np.float32, shapes=SHAPES)
    gpu = nopt.SGD(to_device(host), lr=0.1)
    grads = make_grads(host, 1)
    grads[0][1, 1] = np.inf
    spy["clear"]()
    norm = gpu.step(to_device(grads), skip_if_nonfinite=True)
    assert len(spy["syncs"]) == 1 and math.isinf(norm) and gpu.step_count == 0


def test_norms_kept_unread_across_many_steps_stay_right():
    from numba_opt import _cuda_norm
    host = make_params(np.float32, shapes=SHAPES)
    gpu, cpu = nopt.SGD(to_device(host), lr=0.01), nopt.SGD(host, lr=0.01)
    kept, expected = [], []
    for step in range(1, _cuda_norm.SLOTS + 4):  # more steps than the device keeps norms
        grads = make_grads(host, step)
        kept.append(gpu.step(to_device(grads), max_grad_norm=2.0))
        expected.append(cpu.step(grads, max_grad_norm=2.0))
    np.testing.assert_allclose([float(n) for n in kept], expected, rtol=1e-12)


def test_the_norm_is_deterministic_and_independent_of_the_layout():
    """The same grads give the same norm bit for bit, as one span (FlatParams) or as separate
    arrays, in a fresh optimizer (a resumed run clips exactly as the original)."""
    host = make_params(np.float32, shapes=[s for s in SHAPES if s != (0,)])
    grads = make_grads(host, 3)
    flat = nopt.FlatParams(to_device(host))
    for view, grad in zip(flat.grads, grads):
        view.copy_to_device(grad)
    norms = [float(nopt.SGD(flat, lr=0.1).step(flat.grads, max_grad_norm=1.0))]
    for _ in range(2):
        norms.append(float(nopt.SGD(to_device(host), lr=0.1).step(to_device(grads),
                                                                   max_grad_norm=1.0)))
    assert norms[0] == norms[1] == norms[2]
    assert norms[0] == pytest.approx(math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2))
                                                   for g in grads)), rel=1e-12)


def test_some_grads_none_step_param_by_param_and_clip_alike():
    host = make_params(np.float32, shapes=SHAPES)
    gpu, cpu = nopt.Adam(to_device(host), lr=0.01), nopt.Adam(host, lr=0.01)
    for step in range(1, 4):
        grads = make_grads(host, step)
        if step == 2:
            grads[1] = None
        device_grads = to_device(grads)
        assert float(gpu.step(device_grads, max_grad_norm=0.5)) == pytest.approx(
            cpu.step(grads, max_grad_norm=0.5), rel=1e-12)
    for d, h in zip(gpu._params, host):
        np.testing.assert_allclose(d.copy_to_host(), h, **TOLERANCE[np.float32])


# ------------------------------------------------------------------------------- streams
def test_every_launch_of_a_step_goes_on_the_optimizer_stream(spy):
    host = make_params(np.float32, shapes=SHAPES)
    ours, other = cuda.stream(), cuda.stream()
    gpu = nopt.Adam(to_device(host), lr=0.01, stream=ours)
    spy["clear"]()
    gpu.step(to_device(make_grads(host, 1)), max_grad_norm=1.0)  # allocation, norm, update
    assert spy["streams"] and all(s is ours for s in spy["streams"]), spy["streams"]
    spy["clear"]()
    gpu.step(to_device(make_grads(host, 2)), stream=other)  # this step only
    assert spy["streams"] and all(s is other for s in spy["streams"])
    spy["clear"]()
    gpu.step(to_device(make_grads(host, 3)))
    assert spy["streams"] and all(s is ours for s in spy["streams"])


def test_the_default_stream_is_the_producers(monkeypatch):
    from numba_opt import _cuda_launch

    class CupyLike:  # a version-3 interface names the stream its producer works on
        __cuda_array_interface__ = {"shape": (2,), "typestr": "<f4", "data": (0, False),
                                    "strides": None, "version": 3, "stream": 0xC0FFEE}

    class TorchLike:  # torch's interface (version 2) names none: torch's current stream
        __module__ = "torch"
        device = "cuda:0"
        __cuda_array_interface__ = {"shape": (2,), "typestr": "<f4", "data": (0, False),
                                    "strides": None, "version": 2}

    torch = pytest.importorskip("torch")

    class CurrentStream:
        cuda_stream = 0xBEEF
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: CurrentStream())
    assert _cuda_launch.producer_stream(CupyLike()).handle == 0xC0FFEE
    assert _cuda_launch.producer_stream(TorchLike()).handle == 0xBEEF
    assert _cuda_launch.producer_stream(cuda.to_device(np.zeros(2))) == 0  # the default
    # stream= takes numba, torch and CuPy streams and raw handles
    assert _cuda_launch.as_stream(CurrentStream()).handle == 0xBEEF
    assert _cuda_launch.as_stream(type("CupyStream", (), {"ptr": 0xF00D})()).handle == 0xF00D
    assert _cuda_launch.as_stream(0) == 0
    with pytest.raises(TypeError, match="stream must be"):
        _cuda_launch.as_stream("stream")


def test_foreign_arrays_are_wrapped_without_a_host_sync(monkeypatch):
    from numba_opt import _cuda
    calls = []

    def as_cuda_array(obj, sync=True):
        calls.append(sync)
        return cuda.to_device(np.zeros(2, np.float32))
    monkeypatch.setattr(cuda, "as_cuda_array", as_cuda_array, raising=False)
    monkeypatch.setattr(_cuda, "_SIMULATED", False)  # the hardware path's wrapping call

    class Foreign:
        __cuda_array_interface__ = {"shape": (2,), "typestr": "<f4", "data": (0, False),
                                    "strides": None, "version": 3, "stream": 5}
    _cuda.flat(Foreign())
    assert calls == [False]


def test_stream_is_refused_on_the_cpu():
    with pytest.raises(TypeError, match="stream= orders the CUDA kernels"):
        nopt.SGD([np.zeros(3)], stream=0)
    with pytest.raises(TypeError, match="stream= orders the CUDA kernels"):
        nopt.SGD([np.zeros(3)]).step([np.zeros(3)], stream=0)


# --------------------------------------------------------------- low-occupancy warning
def test_low_occupancy_warnings_are_silenced_around_our_launches_only(monkeypatch):
    """On hardware numba warns at every configuration of a grid under 128 blocks (the
    simulator does not): make the simulator warn the same way, then step under -W error."""
    from numba.cuda.simulator import kernel
    from numba_opt._cuda_launch import NumbaPerformanceWarning
    getitem = kernel.FakeCUDAKernel.__getitem__

    def warning_configure(self, configuration):
        warnings.warn(NumbaPerformanceWarning("Grid size 1 will likely result in GPU "
                                              "under-utilization due to low occupancy."))
        return getitem(self, configuration)
    monkeypatch.setattr(kernel.FakeCUDAKernel, "__getitem__", warning_configure)
    host = make_params(np.float32, shapes=SHAPES)
    gpu = nopt.Adam(to_device(host), lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in range(1, 3):
            float(gpu.step(to_device(make_grads(host, step)), max_grad_norm=1.0))
        with pytest.raises(NumbaPerformanceWarning):  # outside our launches it still warns
            cuda.jit(lambda x: None)[1, 1]


def test_configurations_in_many_threads_leave_the_warning_filters_as_they_were(monkeypatch):
    """catch_warnings swaps the process-wide filter list: two threads inside it at once can
    restore each other's copy and leave numba's warning ignored for good.  Slow configurations
    in eight threads at once, then the filters must be the ones before."""
    import threading
    import time
    from numba.cuda.simulator import kernel
    from numba_opt import _cuda_launch
    getitem = kernel.FakeCUDAKernel.__getitem__

    def slow_configure(self, configuration):
        time.sleep(0.01)  # a window for another thread to enter and leave
        return getitem(self, configuration)
    monkeypatch.setattr(kernel.FakeCUDAKernel, "__getitem__", slow_configure)
    noop = cuda.jit(lambda x: None)
    before = list(warnings.filters)
    start = threading.Barrier(8)

    def configure_often():
        start.wait()
        for _ in range(5):
            _cuda_launch.configure(noop, 1, 1)
    threads = [threading.Thread(target=configure_often) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert warnings.filters == before


def test_the_gpu_bench_counts_launches_and_syncs(monkeypatch):
    """bench/gpu_roof.py's smoke run under the simulator: the counts it will report on a GPU."""
    import sys
    from bench import gpu_roof
    monkeypatch.setattr(sys, "argv", ["gpu_roof.py"])
    records = gpu_roof.main()
    # FlatParams, list, and list with grad 0 None (the other two over a table of them): one
    # update launch, and with clipping the sums, the clip scale and the update; no host sync
    assert [(r["launches"], r["host_syncs"]) for r in records] == [(1, 0), (3, 0)] * 3


def test_grad_tables_upload_from_two_pinned_buffers_waiting_only_for_a_queued_one(monkeypatch):
    """The hardware upload path, with stand-ins for the pinned buffers, the device table and
    the events: the host rewrites a staging buffer only once its last copy is done."""
    from numba_opt import _cuda_table
    waits, copies = [], []

    class Event:
        done = False

        def query(self):
            return self.done

        def synchronize(self):
            waits.append(self)
            self.done = True

        def record(self, stream=0):
            self.done = False

    class DeviceTable:
        def copy_to_device(self, ary, stream=0):
            copies.append(list(ary))
    monkeypatch.setattr(_cuda_table.cuda, "event", lambda timing=False: Event())
    table = object.__new__(_cuda_table.DeviceTable)
    table.count, table._grads, table._turn, table.uploads = 2, DeviceTable(), 0, 0
    table._staging = [np.zeros(2, np.int64) for _ in range(2)]
    table._uploaded, table._grad_addresses = [None, None], None
    table._upload([1, 2])
    table._upload([3, 4])  # the other buffer: nothing to wait for
    assert waits == []
    table._upload([5, 6])  # the first buffer again, its copy still queued: wait for it
    assert len(waits) == 1
    table._uploaded[1].done = True  # the second buffer's copy has run
    table._upload([7, 8])
    assert len(waits) == 1
    assert copies == [[1, 2], [3, 4], [5, 6], [7, 8]] and table.uploads == 4


def test_a_step_on_a_new_stream_waits_for_the_last_one_without_a_host_sync(monkeypatch):
    """The hardware path of a stream change, with a stand-in event: the new stream waits for
    the work queued on the old one (the tables and buffers it may still read)."""
    from numba_opt import _cuda_launch
    log = []

    class Event:
        def record(self, stream=0):
            log.append(("record", stream))

        def wait(self, stream=0):
            log.append(("wait", stream))

        def synchronize(self):
            log.append(("host sync",))
    monkeypatch.setattr(_cuda_launch, "_SIMULATED", False)
    monkeypatch.setattr(_cuda_launch.cuda, "event", lambda timing=False: Event())
    context = _cuda_launch.LaunchContext()
    a, b = cuda.stream(), cuda.stream()
    for stream in (a, a, b):
        with context.active(stream, None):
            assert _cuda_launch.current_stream() is stream
    assert log == [("record", 0), ("wait", a), ("record", a), ("wait", b)]
    assert _cuda_launch.current_stream() == 0  # outside a step: the default stream
