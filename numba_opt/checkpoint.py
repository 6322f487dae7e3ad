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
``params/<i>`` (each param); bfloat16 arrays, which ``np.save`` would describe only as two bytes
('<V2'), as their uint16 bits, listed in the meta's ``encodings``.  ``save`` never leaves a
half-written file under ``path``: a crash mid-write leaves the previous checkpoint intact, and
its temp file (``<name>.<writer pid>.<random>.tmp``) is removed by the next ``save`` or ``load``
of that path once its writer is dead.  ``load`` reads and checks the whole file before changing
anything: each member's declared shape, dtype and size against the optimizer before its data is
read (a crafted file cannot make it read or allocate beyond the optimizer's own shapes), then zip
CRCs, format, optimizer, hyper-parameters; a corrupt, truncated or crafted file is a
``ValueError`` naming the path and what is wrong.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import reprlib
import struct
import tempfile
import zipfile
import zlib
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib import format as npy

from . import _codecs
from ._interface import describe

if TYPE_CHECKING:
    from .optim import Optimizer

CHECKPOINT_FORMAT = 1
_META = "meta"
_META_MAX_BYTES = 64 << 20  # the JSON metadata of any real model is far smaller
_COMPRESSIONS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # np.savez, np.savez_compressed
_HEADER_READERS = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
# what zipfile, zlib and numpy's header parser raise on damaged bytes; OSError here comes from
# reading an already opened file (opening it is outside, so PermissionError and the like pass)
_CORRUPT = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
            NotImplementedError, zlib.error, struct.error, OverflowError, RecursionError)
_CHUNK = 1 << 20


def save(optimizer: Optimizer, path: str | bytes | os.PathLike, *, params: bool = True) -> None:
    """Write ``optimizer``'s state (and its params' values unless ``params=False``) to ``path``
    (str, bytes or path-like, used as given: no ``.npz`` is appended).  Atomic: ``path`` holds
    either the old file or the complete new one."""
    _require_optimizer(optimizer)
    path = _fspath(path)
    _on_ranks(optimizer, lambda: _refuse_directory(path))
    state_dict, values = _snapshot(optimizer, params)  # collective for a sharded optimizer

    def write():
        arrays = _members(state_dict, values, optimizer.state_names, params)
        _remove_dead_temps(path)
        _write_atomically(path, arrays)
    _on_ranks(optimizer, write, every_rank=False)


def _refuse_directory(path):
    if os.path.isdir(path):  # refuse now, not after writing the whole temp file
        raise IsADirectoryError(errno.EISDIR, "cannot save a checkpoint over a directory", path)


def _on_ranks(optimizer, action, every_rank=True):
    """``action()``.  A sharded optimizer (``numba_opt.distributed``) runs it on every rank, or
    on its writing rank only, and raises on every rank if it failed on any, so that no rank is
    left waiting in the next collective."""
    collective = getattr(optimizer, "_checkpoint_collective", None)
    return action() if collective is None else collective(action, every_rank)


def _snapshot(optimizer, params):
    """(state_dict, host copies of the params): one consistent moment of the optimizer.  The
    params are copied (to_host may hand back the array itself) so that a step running while the
    file is written cannot change what is written."""
    with optimizer._lock:  # no step between the state and the params (one from another thread)
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
    encodings = _encode(arrays)
    meta = {"checkpoint_format": CHECKPOINT_FORMAT, "params": bool(params),
            **{k: v for k, v in state_dict.items() if k != "state"}, "state": state_meta,
            **({"encodings": encodings} if encodings else {})}
    try:
        text = json.dumps(meta, default=_json_scalar, allow_nan=True)
    except TypeError as exc:
        raise TypeError(f"cannot save the hyper-parameters: {exc}") from None
    arrays[_META] = np.frombuffer(text.encode(), dtype=np.uint8)
    return arrays


# dtypes np.save cannot describe -> (their name in the meta's "encodings", the dtype stored)
_ENCODED = {} if _codecs.BFLOAT16 is None else {_codecs.BFLOAT16: ("bfloat16", _codecs.BITS)}
_DECODED = {name: dtype for dtype, (name, _) in _ENCODED.items()}


def _encode(arrays):
    """Replace the arrays of dtypes ``np.save`` cannot describe by their bits; returns
    {member: encoding} of those, for the meta."""
    encodings = {}
    for name, array in arrays.items():
        if array.dtype in _ENCODED:
            encodings[name], stored = _ENCODED[array.dtype]
            arrays[name] = array.view(stored)
    return encodings


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


def load(optimizer: Optimizer, path: str | bytes | os.PathLike, *, params: bool = True) -> None:
    """Restore a checkpoint written by ``save`` into ``optimizer`` (and its params' values
    unless ``params=False``).  Everything is read and checked first: on any error nothing is
    modified."""
    _require_optimizer(optimizer)
    path = _fspath(path)
    _on_ranks(optimizer, lambda: _remove_dead_temps(path), every_rank=False)

    def read():  # on every rank of a sharded optimizer: each takes its shard from the file
        meta, arrays = _read(path, _expected(optimizer, params))
        return (_state_dict(meta, arrays, path, optimizer.state_names),
                _param_values(meta, arrays, path, len(optimizer._params)) if params else None)
    state_dict, values = _on_ranks(optimizer, read)
    with optimizer._lock:  # state and params restored together, between two steps
        try:
            optimizer.load_state_dict(state_dict)  # validates all of it before changing anything
        except (TypeError, ValueError, OverflowError) as exc:  # a bad value in the file
            raise ValueError(f"{path}: {_clip(str(exc))}") from exc
        if values is not None:
            backend = optimizer._backend
            for value, param in zip(values, optimizer._params):
                backend.upload(backend.flat(param), value, param)


def _require_optimizer(optimizer):
    from .optim import Optimizer
    # numba_opt.distributed's ZeroRedundancyOptimizer wraps an Optimizer and takes part
    if not (isinstance(optimizer, Optimizer) or hasattr(optimizer, "_checkpoint_collective")):
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


# --------------------------------------------------------------------------------- reading
def _expected(optimizer, want_params):
    """{member name: (shape, dtype, what it is)} of every member a checkpoint of this optimizer
    may hold (the dtype as in memory); None for members allowed but not read (the params when
    ``want_params`` is false)."""
    expected = {_META: None}
    for i, (param, label) in enumerate(zip(optimizer._params, optimizer._labels)):
        described = describe(param)
        shape, dtype = described.shape, described.dtype
        expected[f"params/{i}"] = (shape, dtype, f"the saved {label}") if want_params else None
        for name in optimizer._state_names_of(i):
            expected[f"state/{i}/{name}"] = (optimizer._buffer_shape(i, name),
                                              optimizer._buffer_dtype(i, name),
                                              f"the saved {name!r} of {label}")
    return expected


def _read(path, expected):
    """(meta dict, {name: array}) of the checkpoint at ``path``: every member it holds must be
    one of ``expected`` and match its shape, dtype and size; each is checked before its data is
    read, then read whole (CRC-checked)."""
    with open(path, "rb") as file:  # a missing or unreadable file raises as it is
        with _damaged(path):
            archive = zipfile.ZipFile(file)
        with archive:
            infos = _infos(archive, path)
            meta = _read_meta(archive, infos.pop(_META), path)
            encodings = _encodings(meta, infos, path)
            arrays = {}
            for name, info in infos.items():
                if name not in expected:
                    raise ValueError(f"{path}: unexpected entry {_short(name)}")
                if expected[name] is not None:
                    arrays[name] = _read_array(archive, info, expected[name], path,
                                               encodings.get(name))
    return meta, arrays


def _encodings(meta, infos, path):
    """The meta's {member: encoding} (see _encode), checked: known encodings of members the
    file holds."""
    encodings = meta.get("encodings", {})
    if not isinstance(encodings, dict) or not all(
            isinstance(k, str) and k in infos and v in _DECODED for k, v in encodings.items()):
        raise ValueError(f"{path}: its metadata's encodings {_short(encodings)} do not name "
                         f"entries of the file and encodings among {sorted(_DECODED)}")
    return encodings


@contextlib.contextmanager
def _damaged(path, member=None):
    """Turn what zipfile, zlib and numpy raise on damaged bytes into one ValueError."""
    try:
        yield
    except _CORRUPT as exc:
        where = path if member is None else f"{path} (entry {_short(member)})"
        raise ValueError(f"{where} is not a readable checkpoint (corrupt or truncated?): "
                         f"{_clip(str(exc))}") from None


def _infos(archive, path):
    """{array name: ZipInfo} of the archive, after the checks that need no member read."""
    infos = {}
    for info in archive.infolist():
        name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        if name in infos:
            raise ValueError(f"{path} holds the entry {_short(name)} twice")
        if info.compress_type not in _COMPRESSIONS:
            raise ValueError(f"{path} is not a readable checkpoint: entry {_short(name)} uses "
                             f"zip compression method {info.compress_type} (only stored or "
                             "deflated are read)")
        if info.flag_bits & 0x1:
            raise ValueError(f"{path} is not a readable checkpoint: entry {_short(name)} is "
                             "encrypted")
        infos[name] = info
    if _META not in infos:
        raise ValueError(f"{path} is not a numba_opt checkpoint (no '{_META}' entry)")
    return infos


def _read_meta(archive, info, path):
    text = _read_array(archive, info, None, path).tobytes()
    try:
        meta = json.loads(text.decode())
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, giant ints, deep nesting
        raise ValueError(f"{path}: its '{_META}' entry is corrupt: {_clip(str(exc))}") from None
    if not isinstance(meta, dict) or "checkpoint_format" not in meta:
        raise ValueError(f"{path} is not a numba_opt checkpoint (no checkpoint_format)")
    version = meta["checkpoint_format"]
    if isinstance(version, bool) or version != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} has checkpoint format {_short(version)}; this numba_opt reads "
                         f"format {CHECKPOINT_FORMAT}")
    return meta


def _read_array(archive, info, expected, path, encoding=None):
    """One member as an array, its .npy header checked against ``expected`` ((shape, dtype,
    what); None for the meta bytes) before any of its data is read; ``encoding``: what the meta
    says its bits hold (bfloat16 stored as uint16)."""
    name = info.filename
    with _damaged(path, name):
        member = archive.open(info)
    with member:
        with _damaged(path, name):
            header = _npy_header(member)
        _check_header(header, info, expected, path)
        shape, fortran, dtype, _ = header
        if encoding is not None and dtype != _ENCODED[_DECODED[encoding]][1]:
            raise ValueError(f"{path}: its entry {_short(name)} is listed as {encoding} but "
                             f"holds {dtype}, not {_ENCODED[_DECODED[encoding]][1]} bits")
        array = np.empty(shape, dtype, order="F" if fortran else "C")
        with _damaged(path, name):
            _fill(member, array)
    if encoding is not None:
        array, dtype = array.view(_DECODED[encoding]), _DECODED[encoding]
    if expected is not None and dtype != expected[1]:
        # only now, the CRC having vouched for the header: a flipped byte is "corrupt", while
        # a float64 checkpoint for float32 params is a TypeError like any dtype mismatch
        raise TypeError(f"{path}: {expected[2]} has dtype {dtype}, the optimizer's has "
                        f"{expected[1]}")
    return array


def _npy_header(member):
    """(shape, fortran_order, dtype, header length) of an .npy stream; only versions 1 and 2
    (3 is for structured dtypes with non-Latin-1 names, which a checkpoint never holds)."""
    version = npy.read_magic(member)
    if version not in _HEADER_READERS:
        raise ValueError(f"unsupported .npy format version {version}")
    shape, fortran, dtype = _HEADER_READERS[version](member)
    return shape, fortran, dtype, member.tell()


def _check_header(header, info, expected, path):
    """Refuse a member whose header does not fit what is expected, or whose size in the zip is
    not exactly header + data: nothing is allocated or read beyond the optimizer's shapes."""
    shape, _, dtype, offset = header
    what = f"its '{_META}' entry" if expected is None else expected[2]
    if dtype.hasobject or dtype.kind not in "biufc" or dtype.fields or dtype.subdtype:
        raise ValueError(f"{path}: {what} has dtype {dtype}, not numbers")
    if expected is None:
        if dtype != np.uint8 or len(shape) != 1 or not 0 <= shape[0] <= _META_MAX_BYTES:
            raise ValueError(f"{path} is not a numba_opt checkpoint: {what} is not JSON bytes "
                             f"of at most {_META_MAX_BYTES} bytes (dtype {dtype}, shape "
                             f"{_short(shape)})")
    elif shape != expected[0]:
        raise ValueError(f"{path}: {what} has shape {_short(shape)}, the optimizer's has "
                         f"{expected[0]}")
    size = offset + math.prod(shape) * dtype.itemsize
    if info.file_size != size:
        raise ValueError(f"{path} is not a readable checkpoint (corrupt or truncated?): its "
                         f"entry {_short(info.filename)} holds {info.file_size} bytes, its "
                         f"header declares {size}")


def _fill(member, array):
    """Read ``array``'s bytes from ``member`` in chunks, then to the end (zipfile checks the
    CRC there)."""
    view = memoryview(array.reshape(-1, order="A").view(np.uint8))
    done = 0
    while done < len(view):
        got = member.readinto(view[done:done + _CHUNK])
        if not got:
            raise EOFError(f"the data ends after {done} of {len(view)} bytes")
        done += got
    if member.read(1):
        raise ValueError("data beyond the declared array")


# --------------------------------------------------------------------------- the state_dict
def _state_dict(meta, arrays, path, state_names):
    """The optimizer state_dict a checkpoint holds.  Only its structure is checked here (what
    would otherwise crash); load_state_dict checks the values."""
    missing = {"format", "optimizer", "step_count", "param_groups", "state"} - set(meta)
    if missing:
        raise ValueError(f"{path}: its metadata lacks {sorted(missing)}")
    if not isinstance(meta["optimizer"], str) or not _is_int(meta["format"]):
        raise ValueError(f"{path}: its metadata's optimizer or format is not a name or number")
    state = _state_scalars(meta["state"], path, state_names)
    for name, array in arrays.items():
        if name.startswith("state/"):
            _, i, key = name.split("/")
            if int(i) not in state:
                raise ValueError(f"{path}: unexpected entry {name!r} (param {i} has no state)")
            state[int(i)][key] = array
    seed = _codecs.ROUNDING_SEED  # stochastic rounding's, with stochastic_rounding=True
    seed = {seed: meta[seed]} if seed in meta else {}
    return {"format": meta["format"], "optimizer": meta["optimizer"],
            "step_count": meta["step_count"], "param_groups": _groups(meta["param_groups"], path),
            "state": state, **seed}


def _state_scalars(saved, path, state_names):
    """{param index: {step and host scalars}} of the metadata's "state"."""
    if not isinstance(saved, dict):
        raise ValueError(f"{path}: its metadata's state is a {type(saved).__name__}, not a dict")
    state = {}
    for key, scalars in saved.items():
        # canonical decimal only: "01" or "²" would alias or crash int()
        if not (key.isascii() and key.isdigit() and str(int(key)) == key):
            raise ValueError(f"{path}: bad state entry {_short(key)}")
        if not isinstance(scalars, dict) or not all(map(_is_scalar, scalars.values())):
            raise ValueError(f"{path}: state entry {key} is not a dict of numbers")
        if set(scalars) & set(state_names):
            raise ValueError(f"{path}: state entry {key} holds a state buffer in its metadata")
        state[int(key)] = dict(scalars)
    return state


def _groups(groups, path):
    """The param_groups of the metadata, betas lists back to tuples."""
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise ValueError(f"{path}: its metadata's param_groups is not a list of dicts")
    result = []
    for gi, group in enumerate(groups):
        indices = group.get("params")
        if not isinstance(indices, list) or not all(_is_int(i) for i in indices):
            raise ValueError(f"{path}: param_groups[{gi}]['params'] is not a list of indices")
        for key, value in group.items():
            if key != "params" and not (_is_scalar(value) or isinstance(value, list)
                                        and all(map(_is_scalar, value))):
                raise ValueError(f"{path}: param_groups[{gi}][{_short(key)}] is not a number, "
                                 "bool or list of them")
        # JSON turned the pairs (betas, Rprop's etas and step_sizes) into lists: tuples again
        result.append({k: tuple(v) if k != "params" and isinstance(v, list) else v
                       for k, v in group.items()})
    return result


def _param_values(meta, arrays, path, count):
    """The saved params in order, all of them present."""
    if not meta.get("params"):
        raise ValueError(f"{path} holds no params (saved with params=False); load it with "
                         "params=False")
    saved = [k for k in arrays if k.startswith("params/")]
    if len(saved) != count:  # the names were checked against the optimizer: counting suffices
        raise ValueError(f"{path} holds {len(saved)} params, the optimizer has {count}")
    return [arrays[f"params/{i}"] for i in range(count)]


def _is_scalar(value):
    return value is None or isinstance(value, (bool, int, float, str))


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value):
    """A repr short enough for a message, whatever a crafted file holds."""
    return reprlib.repr(value)


def _clip(text, limit=500):
    return text if len(text) <= limit else text[:limit] + "..."


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
