"""Fault injection for numba_opt.save / numba_opt.load: crafted and damaged files, odd paths,
and writers killed mid-save.  The rule: a bad file is a ValueError naming the path and what is
wrong, and a failed load changes nothing."""
import builtins
import errno
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import numba_opt as nopt
from cases import make_grads, make_params

SHAPES = [(7, 5), (5,), (3, 4, 2), ()]  # small: each load is a millisecond or so


def state_of(opt, params):
    return ([p.copy() for p in params],
            [{k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in s.items()}
             for s in opt.state], opt.step_count)


def assert_state(opt, params, expected):
    saved_params, saved_state, count = expected
    for a, b in zip(params, saved_params):
        np.testing.assert_array_equal(a, b)
    assert opt.step_count == count
    for now, then in zip(opt.state, saved_state):
        assert now.keys() == then.keys()
        for key in now:
            np.testing.assert_array_equal(now[key], then[key])


@pytest.fixture
def saved(tmp_path):
    """(optimizer, its params, checkpoint path, what the file holds): the optimizer has stepped
    since the save, so a load that changes anything is seen."""
    params = make_params(np.float32, shapes=SHAPES)
    opt = nopt.Adam(params, amsgrad=True)
    opt.step(make_grads(params, 1))
    path = tmp_path / "c.npz"
    nopt.save(opt, path)
    in_file = state_of(opt, params)
    opt.step(make_grads(params, 2))
    return opt, params, path, in_file


# ------------------------------------------------------------------------------------ paths
def test_a_bytes_path_saves_and_loads(saved):
    opt, params, path, _ = saved
    after = state_of(opt, params)
    nopt.save(opt, os.fsencode(path))
    opt.step(make_grads(params, 3))
    nopt.load(opt, os.fsencode(path))
    assert_state(opt, params, after)


@pytest.mark.parametrize("bad", [3, None, ["c.npz"]])
def test_a_path_of_another_type_is_a_type_error_naming_path(saved, bad):
    opt, params, _, _ = saved
    for call in (nopt.save, nopt.load):
        with pytest.raises(TypeError, match=f"path must be a str, bytes or os.PathLike, got "
                                            f"{type(bad).__name__}"):
            call(opt, bad)


@pytest.mark.parametrize("bad", ["", "c\0.npz", b"c\0.npz"])
def test_an_empty_path_or_one_holding_nul_is_a_value_error(saved, bad):
    opt, _, _, _ = saved
    for call in (nopt.save, nopt.load):
        with pytest.raises(ValueError, match="is empty or holds a NUL character"):
            call(opt, bad)


def test_a_directory_is_a_clear_error(saved, tmp_path):
    opt, params, path, _ = saved
    listing = sorted(os.listdir(tmp_path))
    with pytest.raises(IsADirectoryError, match=re.escape(str(tmp_path))):
        nopt.save(opt, tmp_path)
    assert sorted(os.listdir(tmp_path)) == listing  # nothing written beside it
    before = state_of(opt, params)
    with pytest.raises(IsADirectoryError, match=re.escape(str(tmp_path))):
        nopt.load(opt, tmp_path)
    assert_state(opt, params, before)


def test_permission_denied_on_load_is_not_reported_as_corrupt(saved, monkeypatch):
    opt, params, path, _ = saved
    real_open = builtins.open

    def denied(file, *args, **kwargs):  # a chmod would not stop root, who runs some CI
        if file == str(path):
            raise PermissionError(errno.EACCES, "Permission denied", file)
        return real_open(file, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", denied)
    with pytest.raises(PermissionError, match=re.escape(str(path))):
        nopt.load(opt, path)


def test_permission_denied_on_save_surfaces_and_leaves_no_temp(saved, monkeypatch, tmp_path):
    opt, params, path, _ = saved
    good = path.read_bytes()

    def denied(source, target):
        raise PermissionError(errno.EACCES, "Permission denied", target)
    monkeypatch.setattr(os, "replace", denied)
    with pytest.raises(PermissionError, match=re.escape(str(path))):
        nopt.save(opt, path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["c.npz"]


def test_a_missing_directory_stays_file_not_found(saved, tmp_path):
    opt, _, _, _ = saved
    with pytest.raises(FileNotFoundError):
        nopt.save(opt, tmp_path / "nowhere" / "c.npz")
    with pytest.raises(FileNotFoundError):
        nopt.load(opt, tmp_path / "nowhere" / "c.npz")


# ------------------------------------------------------------------------------- snapshots
def test_a_param_changed_while_the_file_is_written_is_not_in_it(saved, monkeypatch):
    """save writes copies taken at one moment: even from a backend whose to_host hands back
    the array itself, a step running during the write does not reach the file."""
    opt, params, path, _ = saved
    at_save = [p.copy() for p in params]
    monkeypatch.setattr(opt, "_backend", _SharingBackend(opt._backend))
    real_savez = np.savez

    def savez_during_a_step(file, **arrays):
        for p in params:
            p += 1.0  # what a concurrent step does to the params, in place
        real_savez(file, **arrays)
    monkeypatch.setattr(np, "savez", savez_during_a_step)
    nopt.save(opt, path)
    monkeypatch.undo()
    nopt.load(opt, path)
    for a, b in zip(params, at_save):
        np.testing.assert_array_equal(a, b)


class _SharingBackend:
    """The CPU backend, but to_host returns the array itself (as a host backend may)."""

    def __init__(self, backend):
        self._backend = backend

    def __getattr__(self, name):
        return getattr(self._backend, name)

    @staticmethod
    def to_host(array):
        return array


# ------------------------------------------------------------------------ orphan temp files
def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()  # reaped: a zombie would still count as alive
    return child.pid


def test_save_and_load_remove_dead_writers_temps_only(saved, tmp_path):
    opt, params, path, _ = saved
    dead, me, alive = dead_pid(), os.getpid(), os.getppid()
    kept = [f"c.npz.{alive}.k2j4_9ab.tmp",       # a live writer in another process
            f"c.npz.{me}.k2j4_9ab.tmp",          # this process: a save may be running
            f"c.npz.5.{dead}.k2j4_9ab.tmp",      # a temp of c.npz.5, not of c.npz
            f"d.npz.{dead}.k2j4_9ab.tmp",        # another path
            "c.npz.k2j4_9ab.tmp",                # no pid (an older numba_opt): unknown
            f"c.npz.{dead}.tmp"]                 # not the pattern
    for name in kept:
        (tmp_path / name).write_bytes(b"x")
    for call in (nopt.save, nopt.load):
        orphan = tmp_path / f"c.npz.{dead}.a8_3kq0z.tmp"
        orphan.write_bytes(b"half a zip")
        call(opt, path)
        assert not orphan.exists()
        assert sorted(os.listdir(tmp_path)) == sorted(kept + ["c.npz"])


CHILD = """
import os, sys, time
import numpy as np
import numba_opt as nopt
path, mode = sys.argv[1], sys.argv[2]
param = np.zeros((512, 512), np.float32)
opt = nopt.Adam([param])
nopt.load(opt, path)
if mode == "stuck":  # hang inside the write, the temp file written and not yet renamed
    def stuck(fd):
        print("writing", flush=True)
        time.sleep(60)
    os.fsync = stuck
print("ready", flush=True)
k = 0
while True:  # each save holds params all equal to k
    k += 1
    param[...] = k
    nopt.save(opt, path)
"""


def test_kill_9_mid_save_keeps_the_checkpoint_and_its_temp_is_cleaned(tmp_path):
    """A writer saving a 3 MB checkpoint in a loop is SIGKILLed at varying moments, or while
    its temp file is certainly there: the checkpoint always loads whole, and the next load
    removes the dead writer's temp file."""
    path = tmp_path / "run.npz"
    param = np.full((512, 512), -1.0, np.float32)
    opt = nopt.Adam([param])
    state = opt.state_dict()  # state without compiling a step: set it directly
    state["state"] = {0: {"step": 3, "exp_avg": np.full_like(param, 0.5),
                          "exp_avg_sq": np.full_like(param, 0.25)}}
    opt.load_state_dict(state)
    nopt.save(opt, path)
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(Path(nopt.__file__).parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    for attempt in range(12):
        mode = "stuck" if attempt % 3 == 0 else "loop"
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), mode],
                                 stdout=subprocess.PIPE, env=env)
        try:
            assert child.stdout.readline() == b"ready\n"
            if mode == "stuck":
                assert child.stdout.readline() == b"writing\n"
            else:
                time.sleep(0.01 * attempt)
        finally:
            child.kill()
            child.wait()
            child.stdout.close()
        temps = [n for n in os.listdir(tmp_path) if n != "run.npz"]
        assert all(re.fullmatch(rf"run\.npz\.{child.pid}\.[^.]+\.tmp", n) for n in temps)
        if mode == "stuck":
            assert len(temps) == 1
        param[...] = np.nan
        nopt.load(opt, path)  # whole: one value throughout, and the state as saved
        assert param[0, 0] == -1 or param[0, 0] >= 1
        assert np.all(param == param[0, 0])
        assert opt.state[0]["step"] == 3 and np.all(opt.state[0]["exp_avg_sq"] == 0.25)
        assert os.listdir(tmp_path) == ["run.npz"]  # the dead writer's temp is gone
        nopt.save(opt, path)
        assert os.listdir(tmp_path) == ["run.npz"]
