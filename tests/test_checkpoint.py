"""numba_opt.save / numba_opt.load: exact resume, atomic writes, clear errors on bad files."""
import json
import os

import numpy as np
import pytest

import numba_opt as nopt
from numba_opt import checkpoint
from cases import CASES, case_id, make_grads, make_params, optimizer


def snapshot(opt, params):
    return ([p.copy() for p in params],
            [{k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in s.items()}
             for s in opt.state], opt.step_count)


def assert_same(before, opt, params):
    params_before, state_before, count = before
    for a, b in zip(params, params_before):
        np.testing.assert_array_equal(a, b)
    assert opt.step_count == count
    for now, then in zip(opt.state, state_before):
        assert now.keys() == then.keys()
        for key in now:
            np.testing.assert_array_equal(now[key], then[key])


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_save_load_resumes_the_run_exactly(case, tmp_path):
    """Every optimizer and option: params and state saved mid-run, loaded into a new optimizer
    over fresh arrays, continue on the uninterrupted trajectory bit for bit."""
    name, kwargs = case
    params = make_params(np.float32)
    opt = optimizer(name, params, **kwargs)
    for step in range(1, 6):
        opt.step(make_grads(params, step))
    path = tmp_path / "run.npz"
    nopt.save(opt, path)
    for step in range(6, 11):
        opt.step(make_grads(params, step))

    fresh = make_params(np.float32, seed=99)  # other values: load must overwrite them
    resumed = optimizer(name, fresh, **kwargs)
    nopt.load(resumed, path)
    assert resumed.step_count == 5
    for step in range(6, 11):
        resumed.step(make_grads(fresh, step))
    for a, b in zip(params, fresh):
        np.testing.assert_array_equal(a, b)


def test_params_false_keeps_the_params_and_restores_the_state(tmp_path):
    params = make_params(np.float64)
    opt = nopt.Adam(params, lr=0.01, betas=[0.8, 0.9])  # a list: comes back as a list or tuple
    opt.step(make_grads(params, 1))
    nopt.save(opt, tmp_path / "state.npz", params=False)
    assert "params/0" not in np.load(tmp_path / "state.npz").files
    other = make_params(np.float64, seed=5)
    kept = [p.copy() for p in other]
    resumed = nopt.Adam(other)
    nopt.load(resumed, tmp_path / "state.npz", params=False)
    for a, b in zip(other, kept):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(resumed.state[0]["exp_avg"], opt.state[0]["exp_avg"])
    assert resumed.param_groups[0]["lr"] == 0.01
    assert tuple(resumed.param_groups[0]["betas"]) == (0.8, 0.9)
    with pytest.raises(ValueError, match="holds no params"):
        nopt.load(resumed, tmp_path / "state.npz")


def test_the_file_is_plain_npz_with_a_format_version(tmp_path):
    params = make_params(np.float32)
    opt = nopt.NAdam(params)
    opt.step(make_grads(params, 1))
    nopt.save(opt, tmp_path / "c.npz")
    with np.load(tmp_path / "c.npz", allow_pickle=False) as archive:
        meta = json.loads(archive["meta"].tobytes().decode())
        assert meta["checkpoint_format"] == checkpoint.CHECKPOINT_FORMAT
        assert meta["optimizer"] == "NAdam"
        assert meta["state"]["0"]["mu_product"] == opt.state[0]["mu_product"]
        np.testing.assert_array_equal(archive["state/0/exp_avg"], opt.state[0]["exp_avg"])
        np.testing.assert_array_equal(archive["params/2"], params[2])


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    params = make_params(np.float32)
    opt = nopt.Adam(params)
    path = tmp_path / "run.npz"
    opt.step(make_grads(params, 1))
    nopt.save(opt, path)
    good = path.read_bytes()
    opt.step(make_grads(params, 2))

    def crash(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        nopt.save(opt, path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["run.npz"]  # no temp file left behind


def stepped(tmp_path):
    params = make_params(np.float32)
    opt = nopt.Adam(params, amsgrad=True)
    opt.step(make_grads(params, 1))
    path = tmp_path / "c.npz"
    nopt.save(opt, path)
    opt.step(make_grads(params, 2))
    return opt, params, path


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside an array member: its CRC no longer matches
    path.write_bytes(bytes(data))


def rewrite(change):
    """Rewrite the checkpoint with ``change(members)`` applied to its {name: array}."""
    def apply(path):
        with np.load(path) as archive:
            members = {k: archive[k] for k in archive.files}
        change(members)
        with open(path, "wb") as f:
            np.savez(f, **members)
    return apply


def edit_meta(change):
    def members(m):
        meta = json.loads(m["meta"].tobytes().decode())
        change(meta)
        m["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    return rewrite(members)


BAD_FILES = [
    ("truncated", truncate, ValueError, "corrupt or truncated"),
    ("flipped byte", flip_a_byte, ValueError, "corrupt or truncated"),
    ("not a zip", lambda p: p.write_bytes(b"hello"), ValueError, "not a readable checkpoint"),
    ("plain npz", lambda p: np.savez(p.open("wb"), a=np.zeros(3)), ValueError,
     "not a numba_opt checkpoint"),
    ("newer format", edit_meta(lambda m: m.update(checkpoint_format=2)), ValueError,
     "checkpoint format 2"),
    ("other optimizer", edit_meta(lambda m: m.update(optimizer="SGD")), ValueError,
     "comes from SGD"),
    ("state shape", rewrite(lambda m: m.update({"state/0/exp_avg": np.zeros(3, np.float32)})),
     ValueError, "has shape"),
    # the same number of elements in another shape must not load silently (a (7, 5) param
    # saved, a (5, 7) one restored)
    ("param shape", rewrite(lambda m: m.update({"params/0": m["params/0"].reshape(5, 7)})),
     ValueError, r"the saved params\[0\] has shape \(5, 7\), the optimizer's has \(7, 5\)$"),
    ("param dtype", rewrite(lambda m: m.update({"params/1": m["params/1"].astype(np.float64)})),
     TypeError, r"the saved params\[1\] has dtype float64, the optimizer's has float32$"),
    ("param missing", rewrite(lambda m: m.pop("params/4")), ValueError, "holds 4 params"),
    ("unknown entry", rewrite(lambda m: m.update(extra=np.zeros(1))), ValueError,
     "unexpected entry 'extra'"),
    ("bad hyper", edit_meta(lambda m: m["param_groups"][0].update(lr=-1)), ValueError,
     r"lr must be >= 0, got -1\.0$"),  # the optimizer's own message, not clipped
]


@pytest.mark.parametrize("damage, error, message", [b[1:] for b in BAD_FILES],
                         ids=[b[0] for b in BAD_FILES])
def test_a_bad_file_raises_and_changes_nothing(damage, error, message, tmp_path):
    opt, params, path = stepped(tmp_path)
    damage(path)
    before = snapshot(opt, params)
    with pytest.raises(error, match=message):
        nopt.load(opt, path)
    assert_same(before, opt, params)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_hyper_parameters_come_back_as_they_were_saved(case, tmp_path):
    """Types included: a pair (betas, etas, step_sizes) is a tuple again, not JSON's list."""
    name, kwargs = case
    opt = optimizer(name, make_params(np.float32, shapes=[(3,)]), **kwargs)
    nopt.save(opt, tmp_path / "c.npz")
    twin = optimizer(name, make_params(np.float32, shapes=[(3,)]), lr=0.5)
    nopt.load(twin, tmp_path / "c.npz")
    for saved, loaded in zip(opt.param_groups, twin.param_groups):
        for key, value in saved.items():
            if key != "params":
                assert loaded[key] == value and type(loaded[key]) is type(value), key


def test_bfloat16_params_round_trip_through_their_encoding(tmp_path):
    """np.save cannot describe bfloat16: the file holds its bits and the meta says so; loading
    gives the same bfloat16 values back (no step needed, so no kernel is compiled)."""
    bfloat16 = pytest.importorskip("ml_dtypes").bfloat16
    values = np.array([0.0, -1.5, 3.0e38, 1e-40, np.inf], np.float32).astype(bfloat16)
    opt = nopt.Adam([values.copy(), np.zeros(3, np.float32)])
    nopt.save(opt, tmp_path / "c.npz")
    params = [np.zeros(5, bfloat16), np.ones(3, np.float32)]
    nopt.load(nopt.Adam(params), tmp_path / "c.npz")
    assert params[0].dtype == bfloat16
    np.testing.assert_array_equal(params[0].view(np.uint16), values.view(np.uint16))
    np.testing.assert_array_equal(params[1], np.zeros(3, np.float32))


def test_missing_file_and_wrong_arguments(tmp_path):
    opt, params, path = stepped(tmp_path)
    with pytest.raises(FileNotFoundError):
        nopt.load(opt, tmp_path / "nope.npz")
    with pytest.raises(TypeError, match="numba_opt optimizer"):
        nopt.save(object(), path)
    opt.param_groups[0]["lr"] = np.float32(0.5)  # NumPy scalars are stored as numbers
    nopt.save(opt, path)
    nopt.load(opt, path)
    assert opt.param_groups[0]["lr"] == 0.5



def test_a_gpu_checkpoint_loads_on_the_cpu_and_back(tmp_path, monkeypatch):
    """Checkpoints hold host copies: written from CUDA arrays, read into NumPy ones, and back."""
    cuda = pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
    from numba import config
    if not config.ENABLE_CUDASIM and not cuda.is_available():
        pytest.skip("no GPU; run with NUMBA_ENABLE_CUDASIM=1")
    if config.ENABLE_CUDASIM:  # every simulated thread is a Python thread
        from numba_opt import _cuda
        monkeypatch.setattr(_cuda, "THREADS_PER_BLOCK", 4)
    host = make_params(np.float32, shapes=[(6, 2), (3,)])
    device = [cuda.to_device(p) for p in host]
    gpu = nopt.NAdam(device, lr=0.01)
    for step in range(1, 4):
        gpu.step([cuda.to_device(g) for g in make_grads(host, step)])
    nopt.save(gpu, tmp_path / "gpu.npz")
    cpu_params = make_params(np.float32, shapes=[(6, 2), (3,)], seed=7)
    cpu = nopt.NAdam(cpu_params, lr=0.01)
    nopt.load(cpu, tmp_path / "gpu.npz")
    for c, d in zip(cpu_params, device):
        np.testing.assert_array_equal(c, d.copy_to_host())
    assert cpu.state[1]["mu_product"] == gpu.state[1]["mu_product"]
    nopt.save(cpu, tmp_path / "cpu.npz")
    again = [cuda.to_device(np.zeros_like(p)) for p in cpu_params]
    back = nopt.NAdam(again, lr=0.01)
    nopt.load(back, tmp_path / "cpu.npz")
    for step in range(4, 6):
        grads = make_grads(host, step)
        gpu.step([cuda.to_device(g) for g in grads])
        back.step([cuda.to_device(g) for g in grads])
    for a, b in zip(device, again):
        np.testing.assert_array_equal(a.copy_to_host(), b.copy_to_host())


def test_a_sharded_optimizer_is_asked_to_check_and_read_on_every_rank_and_write_on_one(tmp_path):
    """What save and load ask of a sharded optimizer's ``_checkpoint_collective`` (the hook of
    numba_opt.distributed): the directory check and the read on every rank (each takes its
    shard), the write and the dead-temp cleanup on the writing rank only."""
    asked = []

    class Sharded(nopt.Adam):
        def _checkpoint_collective(self, action, every_rank):
            asked.append(every_rank)
            return action()

    params = make_params(np.float32, shapes=[(7, 5), (5,)])
    opt = Sharded(params)
    opt.step(make_grads(params, 1))
    nopt.save(opt, tmp_path / "c.npz")
    assert asked == [True, False]  # the directory check, then the write
    asked.clear()
    twin = Sharded([np.zeros_like(p) for p in params])
    nopt.load(twin, tmp_path / "c.npz")
    assert asked == [False, True]  # the temp cleanup, then the read
    for loaded, saved in zip(twin._params, params):
        np.testing.assert_array_equal(loaded, saved)


def test_params_is_keyword_only_and_path_may_be_named(tmp_path):
    params = make_params(np.float32, shapes=[(3,)])
    opt = nopt.SGD(params, lr=0.1)
    for call in (nopt.save, nopt.load):
        with pytest.raises(TypeError):
            call(opt, tmp_path / "c.npz", False)
    nopt.save(opt, path=tmp_path / "c.npz", params=False)
    nopt.load(opt, path=tmp_path / "c.npz", params=False)


def test_a_file_written_by_format_1_keeps_loading():
    """tests/data/checkpoint_format_1.npz was saved by numba_opt (checkpoint format 1): Adam
    with amsgrad, two steps from a seeded run.  Every later version must read it, with the same
    values a fresh run of those two steps gives (to float32 rounding, across CPUs)."""
    rng = np.random.default_rng(7)
    params = [rng.standard_normal((3, 2)).astype(np.float32),
              rng.standard_normal(4).astype(np.float32)]
    run = nopt.Adam(params, lr=0.01, amsgrad=True)
    for _ in range(2):
        run.step([rng.standard_normal(p.shape).astype(np.float32) for p in params])
    loaded = [np.zeros((3, 2), np.float32), np.zeros(4, np.float32)]
    opt = nopt.Adam(loaded, lr=0.5)
    nopt.load(opt, os.path.join(os.path.dirname(__file__), "data", "checkpoint_format_1.npz"))
    assert opt.step_count == 2 and opt.param_groups[0]["lr"] == 0.01
    assert opt.param_groups[0]["amsgrad"] is True
    for a, b in zip(loaded, params):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    for a, b in zip(opt.state, run.state):
        assert a.keys() == b.keys() and a["step"] == b["step"] == 2
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-6)
