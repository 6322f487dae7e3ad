"""Checkpoints on disk: ``numba_opt.save(opt, path)`` and ``numba_opt.load(opt, path)``.

A checkpoint is one ``.npz`` file (NumPy's zip of arrays, read without pickle) holding the
optimizer's state_dict and, by default, the values of its params, so that a run resumes exactly
where it was saved:

    nopt.save(opt, "run.npz")            # atomically: a temp file beside it, then a rename
    ...
    opt = nopt.Adam(params)              # a new process, the same model layout
    nopt.load(opt, "run.npz")            # params and optimizer state restored in place

What is stored: ``meta`` (UTF-8 JSON: the checkpoint format, the optimizer's name, hyper-parameters,
step counts and host scalars), ``state/<i>/<name>`` (each state buffer, host copy) and
``params/<i>`` (each param).  ``save`` never leaves a half-written file under ``path``: a crash
mid-write leaves the previous checkpoint intact, and its temp file
(``<name>.<writer pid>.<random>.tmp``) is removed by the next ``save`` or ``load`` of that path
once its writer is dead.  ``load`` reads and checks the whole file (zip CRCs, format, optimizer,
shapes, dtypes) before changing anything; a corrupt or truncated file is a ``ValueError``
saying so.
"""
import contextlib
import errno
import json
import os
import re
import tempfile
import zipfile

import numpy as np

CHECKPOINT_FORMAT = 1
_META = "meta"


def save(optimizer, path, *, params=True):
    """Write ``optimizer``'s state (and its params' values unless ``params=False``) to ``path``
    (str, bytes or path-like, used as given: no ``.npz`` is appended).  Atomic: ``path`` holds
    either the old file or the complete new one."""
    _require_optimizer(optimizer)
    path = _fspath(path)
    if os.path.isdir(path):  # refuse now, not after writing the whole temp file
        raise IsADirectoryError(errno.EISDIR, "cannot save a checkpoint over a directory", path)
    state_dict, values = _snapshot(optimizer, params)
    arrays = _members(state_dict, values, optimizer.state_names, params)
    _remove_dead_temps(path)
    _write_atomically(path, arrays)


def _snapshot(optimizer, params):
    """(state_dict, host copies of the params): one consistent moment of the optimizer.  The
    params are copied (to_host may hand back the array itself) so that a step running while the
    file is written cannot change what is written."""
    state_dict = optimizer.state_dict()
    to_host = optimizer._backend.to_host
    values = [np.array(to_host(p), copy=True) for p in optimizer._params] if params else []
    return state_dict, values


def _members(state_dict, values, state_names, params):
    """{member name: array} of the file, ``meta`` (the JSON of everything but arrays) included."""
    arrays, state_meta = {}, {}
    for i, entry in state_dict["state"].items():
        state_meta[str(i)] = {k: v for k, v in entry.items() if k not in state_names}
        for name in state_names:
            if name in entry:
                arrays[f"state/{i}/{name}"] = entry[name]
    for i, value in enumerate(values):
        arrays[f"params/{i}"] = value
    meta = {"checkpoint_format": CHECKPOINT_FORMAT, "params": bool(params),
            **{k: v for k, v in state_dict.items() if k != "state"}, "state": state_meta}
    try:
        text = json.dumps(meta, default=_json_scalar, allow_nan=True)
    except TypeError as exc:
        raise TypeError(f"cannot save the hyper-parameters: {exc}") from None
    arrays[_META] = np.frombuffer(text.encode(), dtype=np.uint8)
    return arrays


def _write_atomically(path, arrays):
    directory, base = os.path.split(os.path.abspath(path))
    # the writer's pid in the name lets a later save or load tell a dead writer's leftover
    handle, temp = tempfile.mkstemp(dir=directory, prefix=f"{base}.{os.getpid()}.",
                                    suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
    _fsync_directory(directory)


def load(optimizer, path, *, params=True):
    """Restore a checkpoint written by ``save`` into ``optimizer`` (and its params' values
    unless ``params=False``).  Everything is read and checked first: on any error nothing is
    modified."""
    _require_optimizer(optimizer)
    path = _fspath(path)
    _remove_dead_temps(path)
    meta, arrays = _read(path)
    state_dict = _state_dict(meta, arrays, path)
    values = None
    if params:
        if not meta.get("params"):
            raise ValueError(f"{path} holds no params (saved with params=False); load it with "
                             "params=False")
        expected = [f"params/{i}" for i in range(len(optimizer._params))]
        saved = [k for k in arrays if k.startswith("params/")]
        if sorted(saved) != sorted(expected):
            raise ValueError(f"{path} holds {len(saved)} params, the optimizer has "
                             f"{len(expected)}")
        values = [arrays[k] for k in expected]
        for value, param, label in zip(values, optimizer._params, optimizer._labels):
            if value.shape != tuple(param.shape):
                raise ValueError(f"{path}: the saved {label} has shape {value.shape}, the "
                                 f"optimizer's has {tuple(param.shape)}")
            if value.dtype != param.dtype:
                raise TypeError(f"{path}: the saved {label} has dtype {value.dtype}, the "
                                f"optimizer's has {param.dtype}")
    optimizer.load_state_dict(state_dict)  # validates all of it before changing anything
    if values is not None:
        backend = optimizer._backend
        for value, param in zip(values, optimizer._params):
            backend.upload(backend.flat(param), value, param)


def _require_optimizer(optimizer):
    from .optim import Optimizer
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a numba_opt optimizer, got {type(optimizer).__name__}")


def _fspath(path):
    """``path`` as a str (bytes are decoded as the OS does), or a TypeError naming it."""
    try:
        path = os.fsdecode(os.fspath(path))
    except TypeError:
        raise TypeError(f"path must be a str, bytes or os.PathLike, got "
                        f"{type(path).__name__}") from None
    if not path or "\0" in path:
        raise ValueError(f"path {path!r} is empty or holds a NUL character")
    return path


# --------------------------------------------------------------------------- orphan temp files
_TEMP_TAIL = re.compile(r"\.([1-9][0-9]{0,9})\.[^.]+\.tmp")  # after the basename: .pid.random.tmp


def _remove_dead_temps(path):
    """Remove the temp files of saves to ``path`` whose writer died (kill -9, power loss).
    Best effort: a listing or removal that fails is left for next time.  A live writer's temp is
    never touched, nor this process's own (a save to ``path`` may be running in another
    thread)."""
    if os.name != "posix":  # elsewhere os.kill(pid, 0) is no liveness probe: it kills
        return
    directory, base = os.path.split(os.path.abspath(path))
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        pid = _temp_writer(name, base)
        if pid is None or pid == os.getpid() or _alive(pid):
            continue
        with contextlib.suppress(OSError):  # e.g. another process removed it first
            os.unlink(os.path.join(directory, name))


def _temp_writer(name, base):
    """The writer pid of ``name`` if it is a temp file of a save to ``base``, else None.  The
    random part has no dots, so a temp of ``base + ".x"`` never parses as one of ``base``."""
    if not name.startswith(base + "."):
        return None
    match = _TEMP_TAIL.fullmatch(name, len(base))
    return int(match.group(1)) if match else None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # someone else's process; not a pid: leave it
        return True
    return True


def _read(path):
    """(meta dict, {name: array}) of a checkpoint file, every member read (CRC-checked)."""
    with open(path, "rb") as file:  # a missing or unreadable file raises as it is
        try:
            with np.load(file, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            raise ValueError(f"{path} is not a readable checkpoint (corrupt or truncated?): "
                             f"{exc}") from None
    if _META not in arrays or arrays[_META].dtype != np.uint8:
        raise ValueError(f"{path} is not a numba_opt checkpoint (no '{_META}' entry)")
    try:
        meta = json.loads(arrays.pop(_META).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: its '{_META}' entry is corrupt: {exc}") from None
    if not isinstance(meta, dict) or "checkpoint_format" not in meta:
        raise ValueError(f"{path} is not a numba_opt checkpoint (no checkpoint_format)")
    if meta["checkpoint_format"] != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} has checkpoint format {meta['checkpoint_format']!r}; this "
                         f"numba_opt reads format {CHECKPOINT_FORMAT}")
    return meta, arrays


def _state_dict(meta, arrays, path):
    """The optimizer state_dict a checkpoint holds (load_state_dict checks its contents)."""
    missing = {"format", "optimizer", "step_count", "param_groups", "state"} - set(meta)
    if missing:
        raise ValueError(f"{path}: its metadata lacks {sorted(missing)}")
    state = {}
    for key, scalars in meta["state"].items():
        if not key.isdigit() or not isinstance(scalars, dict):
            raise ValueError(f"{path}: bad state entry {key!r}")
        state[int(key)] = dict(scalars)
    for name, array in arrays.items():
        if name.startswith("state/"):
            parts = name.split("/")
            if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) not in state:
                raise ValueError(f"{path}: unexpected entry {name!r}")
            state[int(parts[1])][parts[2]] = array
        elif not name.startswith("params/"):
            raise ValueError(f"{path}: unexpected entry {name!r}")
    groups = [{k: tuple(v) if k == "betas" and isinstance(v, list) else v
               for k, v in group.items()} for group in meta["param_groups"]]
    return {"format": meta["format"], "optimizer": meta["optimizer"],
            "step_count": meta["step_count"], "param_groups": groups, "state": state}


def _json_scalar(value):
    """NumPy scalars in hyper-parameters (lr=np.float32(0.1)) are stored as Python numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{value!r} ({type(value).__name__}) is not a number, bool or tuple")


def _fsync_directory(directory):
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
