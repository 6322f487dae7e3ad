"""Fault injection around step(): a step is all or nothing, whatever goes wrong, and one
optimizer used from several threads (or forked mid-step) behaves like some sequential order.

Issue 12 items 1, 2, 7 and 8: a param made read-only after construction, np.matrix and masked
params, a failure while a step allocates its state, an lr given as an array, concurrent steps
and snapshots, and a fork while another thread is inside a step."""
import hashlib
import os
import re
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import numba_opt as nopt
import numba_opt.functional as F
from numba_opt import _cpu


def model(dtypes=(np.float32, np.float32)):
    rng = np.random.default_rng(1)
    return [rng.standard_normal(n).astype(d) for n, d in zip((40, 20_000), dtypes)]


def grads_like(params, seed=2):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(p.shape).astype(p.dtype) for p in params]


def snapshot(opt, params):
    """Everything a step may change, copied."""
    return ([p.copy() for p in params], opt.step_count,
            [{k: np.array(v, copy=True) for k, v in st.items()} for st in opt.state])


def assert_unchanged(before, opt, params):
    after = snapshot(opt, params)
    for a, b in zip(before[0], after[0]):
        np.testing.assert_array_equal(a, b)
    assert before[1] == after[1]
    assert len(before[2]) == len(after[2])
    for a, b in zip(before[2], after[2]):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def stepped_twin(name, kwargs, params, grads, steps):
    """The same optimizer on copies, stepped ``steps`` times without any fault."""
    twin = [p.copy() for p in params]
    opt = getattr(nopt, name)(twin, **kwargs)
    for _ in range(steps):
        opt.step(grads)
    return twin


# ------------------------------------------------------------------ read-only after construction
@pytest.mark.parametrize("layout", ["list", "dict", "flat"])
def test_a_param_made_read_only_after_construction_is_refused_before_any_change(layout):
    params = model()
    start = [p.copy() for p in params]
    grads = grads_like(params)
    if layout == "flat":
        flat = nopt.FlatParams(params)
        params = flat.params
        grads_arg = grads
        opt = nopt.Adam(flat, lr=1e-2)
    elif layout == "dict":
        opt = nopt.Adam({"w": params[0], "b": params[1]}, lr=1e-2)
        grads_arg = {"w": grads[0], "b": grads[1]}
    else:
        opt = nopt.Adam(params, lr=1e-2)
        grads_arg = grads
    opt.step(grads_arg)
    before = snapshot(opt, params)
    params[1].flags.writeable = False  # the second param: the first must not be touched either
    label = "params['b']" if layout == "dict" else "params[1]"
    with pytest.raises(ValueError, match=re.escape(label) + " is read-only"):
        opt.step(grads_arg)
    assert_unchanged(before, opt, params)
    # writeable again: the run goes on as if nothing had happened
    params[1].flags.writeable = True
    opt.step(grads_arg)
    expected = stepped_twin("Adam", {"lr": 1e-2}, start, grads, 2)
    for got, want in zip(params, expected):
        np.testing.assert_array_equal(got, want)


def test_the_functional_layer_refuses_a_read_only_param():
    param, grad = np.ones(5, np.float32), np.ones(5, np.float32)
    param.flags.writeable = False
    with pytest.raises(ValueError, match="param is read-only"):
        F.sgd_step(param, grad, step=1, lr=0.1)


# ------------------------------------------------------------------------ matrix and masked
@pytest.mark.parametrize("make", [
    lambda: np.matrix(np.ones((3, 2), np.float32)),
    lambda: np.ma.masked_array(np.ones(4, np.float32), mask=[0, 1, 0, 0]),
], ids=["matrix", "masked"])
def test_matrix_and_masked_params_are_refused_up_front(make):
    good = np.ones(6, np.float32)
    odd = make()
    with pytest.raises(TypeError, match=rf"params\[1\] is a {type(odd).__name__}"):
        nopt.Adam([good, odd])
    with pytest.raises(TypeError, match=r"param is a"):
        F.adam_step(odd, np.ones(odd.shape, np.float32), np.zeros(odd.shape, np.float32),
                    np.zeros(odd.shape, np.float32), step=1)
    np.testing.assert_array_equal(good, 1.0)


def test_a_memmap_param_is_an_ordinary_array_to_the_optimizer(tmp_path):
    """ndarray subclasses without matrix or mask semantics are updated like plain arrays."""
    mapped = np.memmap(tmp_path / "w.bin", dtype=np.float32, mode="w+", shape=(30_000,))
    mapped[:] = np.linspace(-1, 1, mapped.size, dtype=np.float32)
    plain = np.array(mapped)
    grads = grads_like([plain])
    for params in ([mapped], [plain]):
        opt = nopt.Adam(params, lr=1e-2)
        for _ in range(3):
            opt.step(grads)
    np.testing.assert_array_equal(np.asarray(mapped), plain)


# ------------------------------------------------------------------- failure inside a step
class FailingAllocation:
    """backend.full that fails on its ``fail_at``-th call (a MemoryError for a big bucket)."""

    def __init__(self, real, fail_at):
        self.real, self.fail_at, self.calls = real, fail_at, 0

    def __call__(self, size, dtype, value):
        self.calls += 1
        if self.calls == self.fail_at:
            raise MemoryError("injected: no memory for a state buffer")
        return self.real(size, dtype, value)


@pytest.mark.parametrize("fail_at", [2, 3, 4])
def test_a_failure_allocating_state_leaves_every_param_as_it_was(monkeypatch, fail_at):
    """Two buckets (float32, float64), two buffers each: a failure at any allocation after the
    first bucket's changes nothing anywhere, and the next step goes on as if it never happened."""
    params = model((np.float32, np.float64))
    start = [p.copy() for p in params]
    grads = grads_like(params)
    opt = nopt.Adam(params, lr=1e-2)
    before = snapshot(opt, params)
    monkeypatch.setattr(_cpu, "full", FailingAllocation(_cpu.full, fail_at))
    with pytest.raises(MemoryError, match="injected"):
        opt.step(grads)
    assert_unchanged(before, opt, params)
    assert opt.state == [{}, {}]
    monkeypatch.undo()
    opt.step(grads)
    opt.step(grads)
    for got, want in zip(params, stepped_twin("Adam", {"lr": 1e-2}, start, grads, 2)):
        np.testing.assert_array_equal(got, want)


def test_a_layout_change_mid_run_allocates_before_any_update(monkeypatch):
    """Turning momentum on mid-run allocates new buffers: failing there changes nothing."""
    params = model((np.float32, np.float64))
    grads = grads_like(params)
    opt = nopt.SGD(params, lr=1e-2)
    opt.step(grads)
    opt.param_groups[0]["momentum"] = 0.9
    before = snapshot(opt, params)
    monkeypatch.setattr(_cpu, "full", FailingAllocation(_cpu.full, 2))
    with pytest.raises(MemoryError):
        opt.step(grads)
    assert_unchanged(before, opt, params)


# ----------------------------------------------------------------------- hyper-parameters
@pytest.mark.parametrize("value", [np.array([0.1, 0.2]), np.array([]), [0.1]])
def test_an_lr_that_is_not_a_number_is_named_and_nothing_changes(value):
    params = model()
    grads = grads_like(params)
    opt = nopt.Adam(params, lr=1e-2)
    opt.step(grads)
    before = snapshot(opt, params)
    opt.param_groups[0]["lr"] = value
    with pytest.raises(TypeError, match=r"param_groups\[0\]: lr must be a real number"):
        opt.step(grads)
    assert_unchanged(before, opt, params)


# --------------------------------------------------------------------------------- threads
def digest(state_dict):
    """A hash of a snapshot's step counts and buffers (identical snapshots, identical hash)."""
    h = hashlib.sha256(repr((state_dict["step_count"], sorted(
        (i, st["step"]) for i, st in state_dict["state"].items()))).encode())
    for i in sorted(state_dict["state"]):
        for name in ("exp_avg", "exp_avg_sq"):
            h.update(state_dict["state"][i][name].tobytes())
    return h.hexdigest()


def test_steps_and_snapshots_from_several_threads_are_some_sequential_order():
    """Three threads step one optimizer (same grads each step, so the result after t steps does
    not depend on which thread took which step) while a fourth takes snapshots: every step is
    counted once, and every snapshot is the state after some whole number of steps."""
    rng = np.random.default_rng(3)
    sizes = (300_000, 50_000, 100)  # parallel loops release the GIL: steps really overlap
    params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    grads = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    per_thread, steps = 12, 36

    reference = [p.copy() for p in params]
    ref_opt = nopt.Adam(reference, lr=1e-3)
    expected = {}
    for _ in range(steps):
        ref_opt.step(grads)
        expected[ref_opt.step_count] = digest(ref_opt.state_dict())

    opt = nopt.Adam(params, lr=1e-3)
    snapshots, errors, done = [], [], threading.Event()
    barrier = threading.Barrier(4)

    def stepper():
        try:
            barrier.wait()
            for _ in range(per_thread):
                opt.step(grads)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    def snapshotter():
        barrier.wait()
        while not done.is_set():
            snapshots.append(opt.state_dict())

    workers = [threading.Thread(target=stepper) for _ in range(3)]
    watcher = threading.Thread(target=snapshotter)
    for t in [*workers, watcher]:
        t.start()
    for t in workers:
        t.join()
    done.set()
    watcher.join()
    assert not errors, errors
    assert opt.step_count == steps
    assert all(st["step"] == steps for st in opt.state)
    np.testing.assert_array_equal(params[0], reference[0])
    taken = [s for s in snapshots if s["step_count"] > 0]
    assert taken, "no snapshot was taken while the threads stepped"
    for s in taken:
        assert digest(s) == expected[s["step_count"]], f"torn snapshot at {s['step_count']}"


def test_checkpoints_saved_from_another_thread_hold_one_whole_step(tmp_path):
    """nopt.save while another thread steps: each file holds the params and the state after the
    same whole number of steps (the snapshot and the params' copy are taken together)."""
    rng = np.random.default_rng(4)
    sizes = (400_000, 100)
    params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    grads = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    steps = 30
    reference = [p.copy() for p in params]
    ref_opt = nopt.Adam(reference, lr=1e-3)
    expected = {0: [p.copy() for p in reference]}
    for _ in range(steps):
        ref_opt.step(grads)
        expected[ref_opt.step_count] = (digest(ref_opt.state_dict()),
                                        [p.copy() for p in reference])

    opt = nopt.Adam(params, lr=1e-3)
    done = threading.Event()
    paths = []

    def saver():
        k = 0
        while not done.is_set():
            path = tmp_path / f"c{k}.npz"
            nopt.save(opt, path)
            paths.append(path)
            k += 1

    watcher = threading.Thread(target=saver)
    watcher.start()
    for step in range(1, steps + 1):
        opt.step(grads)
        if step % 10 == 0:  # let the saver finish a save mid-run (a first compile or a slow
            saved = len(paths)  # disk could otherwise leave it behind all the steps)
            deadline = time.monotonic() + 60
            while len(paths) == saved and time.monotonic() < deadline:
                time.sleep(0.001)
    done.set()
    watcher.join()
    checked = 0
    for path in paths:
        restored = [np.zeros_like(p) for p in params]
        fresh = nopt.Adam(restored, lr=1e-3)
        nopt.load(fresh, path)
        if fresh.step_count == 0:
            continue
        state_digest, values = expected[fresh.step_count]
        assert digest(fresh.state_dict()) == state_digest, f"torn state in {path.name}"
        for got, want in zip(restored, values):
            np.testing.assert_array_equal(got, want, err_msg=f"params of {path.name}")
        checked += 1
    assert checked, "no checkpoint was written while the optimizer stepped"


FORK_MID_STEP = textwrap.dedent("""
    import os, sys, threading, time, faulthandler
    import numpy as np
    import numba_opt as nopt

    rng = np.random.default_rng(0)
    params = [rng.standard_normal(1_000_000).astype(np.float32) for _ in range(2)]
    grads = [rng.standard_normal(1_000_000).astype(np.float32) for _ in range(2)]
    shared = nopt.Adam(params, lr=1e-3)
    stop, started = threading.Event(), threading.Event()

    def stepper():   # from its first step on: compiling, then parallel loops without the GIL
        while not stop.is_set():
            started.set()
            shared.step(grads)

    thread = threading.Thread(target=stepper)
    thread.start()
    started.wait()
    outcomes = []
    for k in range(5):
        time.sleep(0.002 * k)
        pid = os.fork()
        if pid == 0:
            faulthandler.dump_traceback_later(60, exit=True)   # a hang fails, with its stack
            p = [np.ones(100_000, np.float32)]
            nopt.SGD(p, lr=0.5).step([np.ones(100_000, np.float32)])
            count = shared.step_count
            shared.step(grads)           # the inherited optimizer: whole, and usable
            sd = shared.state_dict()
            ok = (p[0][0] == 0.5 and shared.step_count == count + 1
                  and all(st["step"] == count + 1 for st in sd["state"].values()))
            os._exit(0 if ok else 3)
        outcomes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    stop.set()
    thread.join()
    print("outcomes", outcomes)
    sys.exit(0 if outcomes == [0] * 5 else 1)
""")


@pytest.mark.parametrize("layer", ["default", "workqueue"])
def test_a_child_forked_while_another_thread_steps_does_not_hang(layer):
    """A fork waits for the step (and any compilation) in progress, so the child inherits no
    held lock and a whole optimizer, under numba's default layer and under 'workqueue'."""
    env = dict(os.environ)
    if layer != "default":
        env["NUMBA_THREADING_LAYER"] = layer
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", FORK_MID_STEP], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
