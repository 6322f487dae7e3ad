"""Fault injection for numba_opt.save / numba_opt.load: crafted and damaged files, odd paths,
and writers killed mid-save.  The rule: a bad file is a ValueError naming the path and what is
wrong, and a failed load changes nothing."""
import builtins
import errno
import io
import json
import os
import random
import re
import struct
import subprocess
import sys
import time
import tracemalloc
import warnings
import zipfile
import zlib
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


def refused(opt, params, path, match):
    """load raises a ValueError matching ``match`` and naming the path; nothing changes."""
    before = state_of(opt, params)
    with pytest.raises(ValueError, match=match) as info:
        nopt.load(opt, path)
    assert str(path) in str(info.value)
    assert_state(opt, params, before)


# ------------------------------------------------------------------------ building zip files
def npy(array):
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def npy_header(shape, descr):
    """The bytes of an .npy header alone: what a crafted member declares."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False,
                                              "shape": shape})
    return buf.getvalue()


def members(path):
    """{member name: raw .npy bytes} of a checkpoint."""
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def write(path, entries):
    """A stored zip of {name: bytes}, duplicates allowed (a list of pairs)."""
    pairs = entries.items() if isinstance(entries, dict) else entries
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in pairs:
                archive.writestr(name, data)


def with_meta(path, change):
    """Rewrite the checkpoint's meta JSON text with ``change(dict or text)``."""
    entries = members(path)
    meta = json.loads(np.load(io.BytesIO(entries["meta.npy"])).tobytes())
    text = change(meta)
    if not isinstance(text, (str, bytes)):
        text = json.dumps(meta)
    data = text.encode() if isinstance(text, str) else text
    entries["meta.npy"] = npy(np.frombuffer(data, np.uint8))
    write(path, entries)


def set_compression(path, name, method):
    """Patch the compression method of ``name`` in its local and its central header."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        offset = archive.getinfo(name).header_offset
    struct.pack_into("<H", data, offset + 8, method)
    encoded = name.encode()
    for found in re.finditer(re.escape(b"PK\x01\x02"), bytes(data)):
        start = found.start()
        if data[start + 46:start + 46 + len(encoded)] == encoded:
            struct.pack_into("<H", data, start + 10, method)
    path.write_bytes(bytes(data))


def zip_by_hand(path, entries):
    """A zip of (name, method, raw bytes, crc, uncompressed size): sizes and CRCs as given,
    so that a member can be a pre-built deflate stream."""
    central, offset = [], 0
    with open(path, "wb") as f:
        for name, method, raw, crc, size in entries:
            encoded = name.encode()
            fields = (method, 0, 0x21, crc, len(raw), size, len(encoded), 0)
            f.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, *fields) + encoded + raw)
            central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, *fields,
                                       0, 0, 0, 0, offset) + encoded)
            offset += 30 + len(encoded) + len(raw)
        directory = b"".join(central)
        f.write(directory + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries),
                                        len(entries), len(directory), offset, 0))


def deflated_zeros(head, count, chunk=1 << 20):
    """(raw deflate stream, crc) of ``head`` then ``count`` MiB of zeros, ~1 KB per MiB: after
    a full flush every block is independent, so one compressed MiB is repeated."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(chunk)
    first = compressor.compress(head + zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(head + zeros)
    for _ in range(count - 1):
        crc = zlib.crc32(zeros, crc)
    return first + block * (count - 1) + compressor.flush(), crc


# ------------------------------------------------------------------------- crafted members
def test_an_unsupported_compression_method_is_a_value_error(saved):
    opt, params, path, _ = saved
    set_compression(path, "params/1.npy", 99)
    refused(opt, params, path, "compression method 99")


def test_deeply_nested_json_is_a_value_error(saved):
    opt, params, path, _ = saved
    with_meta(path, lambda meta: "[" * 100_000)
    refused(opt, params, path, "'meta' entry is corrupt")


def test_a_member_declaring_a_giant_shape_is_refused_unread(saved):
    opt, params, path, _ = saved
    entries = members(path)
    entries["params/0.npy"] = npy_header((2 ** 40,), "<f8")  # 8 TiB, and no data at all
    write(path, entries)
    refused(opt, params, path, r"params\[0\] has shape \(1099511627776,\)")


@pytest.mark.parametrize("declared, message", [
    (2 ** 40, r"'meta' entry is not JSON bytes of at most 67108864 bytes \(dtype uint8"),
    (64 * 2 ** 20 + 1, "not JSON bytes of at most 67108864 bytes"),
    (64 * 2 ** 20, r"holds \d+ bytes, its header declares 67108\d+$")])  # the cap: then the size
def test_a_meta_member_declaring_a_giant_size_is_refused_unread(saved, declared, message):
    """The meta is JSON of at most 64 MiB; a header declaring more is refused before anything
    is read, and one declaring 64 MiB exactly is held to its size in the zip."""
    opt, params, path, _ = saved
    entries = members(path)
    entries["meta.npy"] = npy_header((declared,), "|u1")
    write(path, entries)
    refused(opt, params, path, message)


def test_a_meta_member_of_two_dims_is_refused(saved):
    opt, params, path, _ = saved
    entries = members(path)
    text = np.load(io.BytesIO(entries["meta.npy"]))
    entries["meta.npy"] = npy(np.stack([text, text]))  # uint8, but (2, n)
    write(path, entries)
    refused(opt, params, path, "its 'meta' entry is not JSON bytes")


def test_damage_is_reported_with_the_entry_it_is_in(saved):
    """A member whose .npy header is cut short names that entry; a file that is no zip at all
    names the file alone."""
    opt, params, path, _ = saved
    entries = members(path)
    entries["params/1.npy"] = entries["params/1.npy"][:8]
    write(path, entries)
    refused(opt, params, path, r"c\.npz \(entry 'params/1\.npy'\) is not a readable checkpoint")
    path.write_bytes(b"not a zip file at all")
    refused(opt, params, path, r"c\.npz is not a readable checkpoint")


def test_a_member_larger_than_its_header_says_is_refused(saved):
    opt, params, path, _ = saved
    entries = members(path)
    size = len(entries["params/1.npy"])
    entries["params/1.npy"] += bytes(64)  # right header, then more data than it declares
    write(path, entries)
    refused(opt, params, path, f"holds {size + 64} bytes, its header declares {size}")


def test_an_object_array_is_refused_never_unpickled(saved):
    opt, params, path, _ = saved
    entries = members(path)
    entries["params/1.npy"] = npy_header((5,), "|O") + b"\x80\x04N." * 5
    write(path, entries)
    refused(opt, params, path, "has dtype object, not numbers")


def test_members_with_npy_format_2_headers_load(saved):
    """np.save writes format 2.0 when a header outgrows 1.0's 64 KiB; both are read."""
    opt, params, path, in_file = saved
    entries = members(path)
    for name in [n for n in entries if n.startswith("params/")]:
        array = np.load(io.BytesIO(entries[name]))
        buf = io.BytesIO()
        np.lib.format.write_array(buf, array, version=(2, 0), allow_pickle=False)
        entries[name] = buf.getvalue()
    write(path, entries)
    nopt.load(opt, path)
    assert_state(opt, params, in_file)


# ... and a float32 with named int16 fields over its bytes (kind 'f', but with fields)
@pytest.mark.parametrize("descr", ["<U1", "|S4", "<M8[s]", "|V4",
                                   ("<f4", [("a", "<i2"), ("b", "<i2")])])
def test_a_member_of_text_dates_or_raw_bytes_is_refused_as_not_numbers(saved, descr):
    opt, params, path, _ = saved
    entries = members(path)
    entries["params/1.npy"] = npy_header((5,), descr) + bytes(4 * 5 * (2 if "M8" in descr else 1))
    write(path, entries)
    refused(opt, params, path, r"has dtype .+, not numbers$")


@pytest.mark.parametrize("declared", [(2 ** 27,), None], ids=["giant shape", "right shape"])
def test_a_zip_bomb_is_refused_before_it_is_inflated(saved, declared):
    """1 GiB of deflated zeros in a 1 MB file: its header (a giant shape, or the param's own
    shape with far more data than it) is refused before the member is inflated."""
    opt, params, path, _ = saved
    head = npy_header(declared or (5,), "<f8" if declared else "<f4")
    raw, crc = deflated_zeros(head, 1024)
    size = len(head) + (1 << 30)
    entries = [(name, zipfile.ZIP_STORED, data, zlib.crc32(data), len(data))
               for name, data in members(path).items() if name != "params/1.npy"]
    zip_by_hand(path, entries + [("params/1.npy", zipfile.ZIP_DEFLATED, raw, crc, size)])
    assert path.stat().st_size < 2 << 20
    with zipfile.ZipFile(path) as archive:  # a real bomb: zipfile inflates it
        assert archive.getinfo("params/1.npy").file_size == size
        start = archive.open("params/1.npy").read(1 << 20)
    assert start == head + bytes((1 << 20) - len(head))
    tracemalloc.start()
    try:
        refused(opt, params, path, "has shape" if declared else "its header declares")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20


def test_unknown_and_duplicate_members_are_refused(saved, tmp_path):
    opt, params, path, _ = saved
    entries = members(path)
    write(path, {**entries, "state/0/momentum_buffer.npy": entries["state/0/exp_avg.npy"]})
    refused(opt, params, path, "unexpected entry 'state/0/momentum_buffer'")
    write(path, {**entries, "state/00/exp_avg.npy": entries["state/0/exp_avg.npy"]})
    refused(opt, params, path, "unexpected entry 'state/00/exp_avg'")
    write(path, [*entries.items(), ("params/2.npy", entries["params/2.npy"])])
    refused(opt, params, path, "holds the entry 'params/2' twice")


def test_an_encrypted_member_is_refused(saved):
    opt, params, path, _ = saved
    data = bytearray(path.read_bytes())
    for found in re.finditer(re.escape(b"PK\x01\x02"), bytes(data)):
        data[found.start() + 8] |= 1  # the central directory's "encrypted" flag bit
    path.write_bytes(bytes(data))
    refused(opt, params, path, "is encrypted")


def test_a_float64_file_for_float32_params_stays_a_type_error(saved):
    """A dtype mismatch in an intact file is the optimizer's TypeError (checked once the CRC
    vouched for the header), whatever the member."""
    opt, params, path, _ = saved
    entries = members(path)
    entries["state/2/exp_avg.npy"] = npy(np.zeros((3, 4, 2), np.float64))
    write(path, entries)
    before = state_of(opt, params)
    with pytest.raises(TypeError, match=r"'exp_avg' of params\[2\] has dtype float64"):
        nopt.load(opt, path)
    assert_state(opt, params, before)


def test_fortran_ordered_members_load_by_value(saved):
    opt, params, path, in_file = saved
    entries = members(path)
    array = np.load(io.BytesIO(entries["params/2.npy"]))
    entries["params/2.npy"] = npy(np.asfortranarray(array))
    assert entries["params/2.npy"] != npy(array)  # the header says fortran_order: True
    write(path, entries)
    nopt.load(opt, path)
    assert_state(opt, params, in_file)


ODD_META = [
    ("state is a list", lambda m: m.update(state=[]), "state is a list, not a dict"),
    ("state entry a list", lambda m: m["state"].update({"0": [1]}), "not a dict of numbers"),
    ("state key not decimal", lambda m: m["state"].update({"²": {}}), "bad state entry '²'"),
    ("state key with zero", lambda m: m["state"].update({"01": m["state"]["0"]}),
     "bad state entry '01'"),
    ("buffer in the meta", lambda m: m["state"]["0"].update(exp_avg=1.0),
     "holds a state buffer in its metadata"),
    ("no state for a buffer", lambda m: m["state"].pop("1"), "param 1 has no state"),
    ("groups a dict", lambda m: m.update(param_groups={"0": {}}), "not a list of dicts"),
    ("groups of numbers", lambda m: m.update(param_groups=[1, 2]), "not a list of dicts"),
    ("group params a string", lambda m: m["param_groups"][0].update(params="0123"),
     r"\['params'\] is not a list of indices"),
    ("group params bools", lambda m: m["param_groups"][0].update(params=[True]),
     "not a list of indices"),
    ("nested hyper", lambda m: m["param_groups"][0].update(betas=[[0.9], [0.99]]),
     r"\['betas'\] is not a number"),
    ("hyper a string", lambda m: m["param_groups"][0].update(lr="fast"),
     "lr must be a real number, got str"),
    ("hyper a huge int", lambda m: m["param_groups"][0].update(lr=10 ** 400),
     "lr must be finite, got a number too large"),
    ("step a float", lambda m: m["state"]["0"].update(step=1.5), "must be an int, got float"),
    ("step count a list", lambda m: m.update(step_count=[1]), "must be an int, got list"),
    ("optimizer a list", lambda m: m.update(optimizer=["Adam"]), "optimizer or format"),
    ("format a string", lambda m: m.update(format="1"), "optimizer or format"),
    ("format missing", lambda m: m.pop("format"), r"lacks \['format'\]"),
    ("checkpoint format true", lambda m: m.update(checkpoint_format=True),
     "checkpoint format True"),
    ("meta a list", lambda m: "[1, 2]", "no checkpoint_format"),
    ("meta without its format", lambda m: m.pop("checkpoint_format"), "no checkpoint_format"),
    ("meta not UTF-8", lambda m: b"\xff\xfe{}", "'meta' entry is corrupt"),
    ("meta empty", lambda m: b"", "'meta' entry is corrupt"),
    ("encoding of an absent entry", lambda m: m.update(encodings={"params/9": "bfloat16"}),
     "encodings .* do not name entries of the file"),
    ("unknown encoding", lambda m: m.update(encodings={"params/1": "float8"}),
     "encodings .* do not name entries of the file"),
    ("meta a huge int", lambda m: "9" * 5000, "'meta' entry is corrupt"),
    ("float32 entry listed as bfloat16", lambda m: m.update(encodings={"params/1": "bfloat16"}),
     r"its entry 'params/1.npy' is listed as bfloat16 but holds float32, not uint16 bits$"),
]


@pytest.mark.parametrize("change, message", [c[1:] for c in ODD_META],
                         ids=[c[0] for c in ODD_META])
def test_odd_metadata_is_a_value_error(saved, change, message):
    opt, params, path, _ = saved
    with_meta(path, change)
    refused(opt, params, path, message)


@pytest.mark.parametrize("extra", [0, 1, 600])
def test_what_a_crafted_file_says_is_cut_after_500_characters(saved, extra):
    """A crafted file can name anything (here a long optimizer name); the message keeps the
    path and the first 500 characters of the reason, then '...'."""
    opt, params, path, _ = saved
    reason = "state_dict comes from {}, not Adam"
    name = "A" * (500 - len(reason.format("")) + extra)  # a reason of 500 + extra characters
    with_meta(path, lambda m: m.update(optimizer=name))
    with pytest.raises(ValueError) as info:
        nopt.load(opt, path)
    expected = reason.format(name)
    assert len(expected) == 500 + extra
    assert str(info.value) == f"{path}: " + (expected if not extra else expected[:500] + "...")


# ---------------------------------------------------------------------------- damaged bytes
def test_truncated_at_any_offset_is_a_value_error(saved):
    opt, params, path, _ = saved
    good = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        edges = [i.header_offset + d for i in archive.infolist() for d in (0, 1, 30, 60, 200)]
    for size in sorted(set(range(0, len(good), 37)) | set(edges) | {len(good) - 1}):
        path.write_bytes(good[:size])
        refused(opt, params, path, "not a readable checkpoint|not a numba_opt checkpoint")


def test_flipped_bytes_load_identically_or_are_a_value_error(saved):
    """A few hundred seeded random byte changes: each either loads exactly what was saved (it
    hit a byte nothing reads, such as a timestamp) or is a ValueError changing nothing."""
    opt, params, path, in_file = saved
    good = path.read_bytes()
    rng = random.Random(12)
    outcomes = {"loaded": 0, "refused": 0}
    for _ in range(300):
        data = bytearray(good)
        data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
        path.write_bytes(bytes(data))
        before = state_of(opt, params)
        try:
            nopt.load(opt, path)
        except ValueError:
            assert_state(opt, params, before)
            outcomes["refused"] += 1
        else:
            assert_state(opt, params, in_file)
            outcomes["loaded"] += 1
    assert outcomes["refused"] > 200  # nearly every byte is covered by a CRC or a check


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


SLEEPER = """
import signal, time
for number in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(number, signal.SIG_DFL)
print("ready", flush=True)
time.sleep(60)
"""


def test_temps_of_live_or_impossible_writers_are_kept_and_no_writer_is_signalled(saved,
                                                                                   tmp_path):
    """Whether a writer lives is asked with signal 0, which sends nothing: a sleeping child
    whose temp is found must go on sleeping.  A pid past what the OS takes (10 digits) cannot
    be asked: its temp is left alone."""
    import signal
    import subprocess
    import sys
    opt, _, path, _ = saved
    # the child takes the default action on hang-ups and interrupts (a run under nohup would
    # hand it SIGHUP ignored), and says when it is ready
    child = subprocess.Popen([sys.executable, "-c", SLEEPER], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        kept = [tmp_path / f"c.npz.{child.pid}.k2j4_9ab.tmp", tmp_path / "c.npz.9999999999.x.tmp"]
        for temp in kept:
            temp.write_bytes(b"x")
        nopt.save(opt, path)
        nopt.load(opt, path)
        assert all(temp.exists() for temp in kept)
        assert child.poll() is None  # not hung up on, interrupted or killed
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


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
