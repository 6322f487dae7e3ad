"""Fault injection for numba_opt.save / numba_opt.load: crafted and damaged files, odd paths,
and writers killed mid-save.  The rule: a bad file is a ValueError naming the path and what is
wrong, and a failed load changes nothing."""

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
