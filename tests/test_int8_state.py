"""Blockwise 8-bit state, ``state_dtype="int8"`` (issue 14, second part).

References, each for what it can tell:
- the quantizer against the nearest entry of the map found by brute force (float64 argmin), on
  random values over every decade, on each map value and on both sides of every midpoint;
- the map against its definition (dynamic tree quantization: per decade 10^-6 .. 1 the
  midpoints of an even split of [0.1, 1], signed and unsigned) and against bitsandbytes' map;
- every optimizer and option (CASES) against a *float32 twin*: the same optimizer with float32
  state, whose state is replaced after every step by its quantized-then-dequantized value
  (``_quant.quantize_array`` / ``dequantize_array``, NumPy).  The int8 kernel runs the same rule
  on the dequantized state and quantizes what it stores, so params, codes and scales must equal
  the twin's bit for bit;
- the float64 reference (tests/reference.py) with the same quantization of its state after every
  step: independent arithmetic, so a tolerance;
- bitsandbytes' CPU 8-bit Adam where it installs (its own code choice differs near midpoints:
  a tolerance).
"""
import numpy as np
import pytest

import numba_opt as nopt
from numba_opt import _cpu, _quant
from numba_opt.optim.base import ABSMAX
from cases import CASES, case_id, make_grads, optimizer
import ptx
from reference import RULES, is_buffer

F32 = np.float32
# one quantized param (two blocks and a partial third past MIN_SIZE: 4101 = 16 blocks + 5), one
# that straddles the parallel threshold (QUANT_CHUNK chunks, a partial last one), and two small
# params that keep float32 state
SHAPES = [(4101,), (130, 160), (7, 5), ()]
STEPS = 12


def params_for(seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(F32) for shape in shapes]


# ------------------------------------------------------------------------------ the quantizer
def nearest_codes(values, signed):
    table = (_quant.SIGNED_MAP if signed else _quant.UNSIGNED_MAP).astype(np.float64)
    distance = np.abs(np.asarray(values, np.float64)[:, None] - table[None, :])
    return distance.argmin(axis=1), np.sort(distance, axis=1)


def probe_values(signed):
    rng = np.random.default_rng(7)
    table = _quant.SIGNED_MAP if signed else _quant.UNSIGNED_MAP
    mids = (table[:-1].astype(np.float64) + table[1:]) / 2
    near_mids = np.concatenate([np.nextafter(mids.astype(F32), F32(-2)),
                                np.nextafter(mids.astype(F32), F32(2))])
    magnitudes = 10.0 ** rng.uniform(-8, 0, 20000)
    signs = rng.choice([-1.0, 1.0], 20000) if signed else 1.0
    values = np.concatenate([table, near_mids, magnitudes * signs, rng.uniform(-1, 1, 20000)])
    values = values if signed else np.abs(values)
    return np.clip(values, -1, 1).astype(F32)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_quantizer_picks_the_nearest_code(signed):
    values = probe_values(signed)
    codes = _quant._quantize_numpy(signed)(values)
    nearest, distances = nearest_codes(values, signed)
    table = (_quant.SIGNED_MAP if signed else _quant.UNSIGNED_MAP).astype(np.float64)
    chosen = np.abs(values.astype(np.float64) - table[codes])
    # a different code only where two codes are equally near, to the float32 rounding of the
    # quantizer's multiply-subtract (a few units in the last place of the value)
    slack = 8 * np.spacing(np.abs(values).astype(F32)).astype(np.float64)
    tie = distances[:, 1] - distances[:, 0] <= slack
    assert np.all((codes == nearest) | tie)
    assert np.all(chosen <= distances[:, 0] + slack)
    # only values placed next to a midpoint on purpose land there
    assert np.count_nonzero(codes[:-40000] != nearest[:-40000]) <= 200
    assert np.count_nonzero(codes[-40000:] != nearest[-40000:]) <= 2


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_compiled_quantizer_equals_the_numpy_twin(signed):
    from numba import njit
    quantize = _quant.RULES[signed][0]

    @njit
    def run(values, absmax):
        out = np.empty(values.size, np.uint8)
        for i in range(values.size):
            out[i] = quantize(values[i], absmax)
        return out
    for absmax in (F32(1), F32(3.5e-3), F32(0)):
        x = probe_values(signed) * absmax  # a block's values, absmax its largest magnitude
        normalized = x * (F32(1) / absmax) if absmax else np.zeros_like(x)
        assert np.array_equal(run(x, absmax), _quant._quantize_numpy(signed)(normalized))


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_the_maps_follow_their_definition(signed):
    table = _quant.SIGNED_MAP if signed else _quant.UNSIGNED_MAP
    expected = [0.0, 1.0]
    for d in range(7):
        parts = 2 ** d if signed else 2 ** (d + 1)
        edges = np.linspace(0.1, 1.0, parts + 1)
        mids = 10.0 ** (d - 6) * (edges[:-1] + edges[1:]) / 2
        expected += list(mids) + (list(-mids) if signed else [])
    np.testing.assert_allclose(table, np.sort(expected), rtol=1e-6, atol=0)
    assert table.size == 256 and np.all(np.diff(table) > 0)
    assert table[0] == (-0.99296875 if signed else 0) and table[-1] == 1


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_round_trip_error_is_at_most_half_the_gap_to_the_next_code(signed):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(5 * _quant.BLOCK + 17) * 10.0 ** rng.uniform(-6, 2, 5 * 256 + 17))
    x = x.astype(F32) if signed else np.abs(x).astype(F32)
    codes, absmax = _quant.quantize_array(x, signed)
    back = _quant.dequantize_array(codes, absmax, signed)
    table = (_quant.SIGNED_MAP if signed else _quant.UNSIGNED_MAP).astype(np.float64)
    scales = np.repeat(absmax, _quant.BLOCK)[:x.size].astype(np.float64)
    gaps = np.diff(table)
    # the gap around the value's own code bounds its error
    below = np.concatenate([[gaps[0]], gaps])[codes]
    above = np.concatenate([gaps, [gaps[-1]]])[codes]
    bound = np.maximum(below, above) / 2 * scales * (1 + 1e-5)
    assert np.all(np.abs(back - x) <= bound)
    # the largest magnitude of each block is stored exactly when positive (the signed map has
    # 1 but not -1: a negative one reads back as -0.993 of itself)
    blocks = np.abs(np.pad(x, (0, absmax.size * _quant.BLOCK - x.size))).reshape(-1, 256)
    np.testing.assert_array_equal(absmax, blocks.max(axis=1))
    largest = np.argmax(blocks, axis=1) + 256 * np.arange(absmax.size)
    positive = x[largest] > 0
    assert np.all(back[largest][positive] == absmax[positive])
    assert np.all(back[largest][~positive] == _quant.SIGNED_MAP[0] * absmax[~positive])


def test_an_all_zero_block_has_scale_zero_and_reads_back_zero():
    codes, absmax = _quant.quantize_array(np.zeros(300, F32), True)
    assert np.array_equal(absmax, [0, 0])
    assert np.all(_quant.dequantize_array(codes, absmax, True) == 0)


# ---------------------------------------------------------------- the optimizers on int8 state
def requantize_state(opt, grads=None):
    """The twin's rounding: every float32 state buffer of a quantized-size param that just
    stepped (its grad in ``grads`` not None) replaced by its quantized-then-dequantized value
    (what the int8 kernel keeps; requantizing twice is not the same, since a block whose largest
    magnitude is negative shrinks by the signed map's -0.993).  Returns {(param index, state
    name): (codes, absmax)}, what the int8 optimizer should hold."""
    stored = {}
    for i, entry in enumerate(opt.state):
        if opt._params[i].size < _quant.MIN_SIZE or (grads is not None and grads[i] is None):
            continue
        for name, value in entry.items():
            if name in type(opt).state_names:
                codes, absmax = _quant.quantize_array(value, _quant.is_signed(name))
                value[...] = _quant.dequantize_array(codes, absmax, _quant.is_signed(name)) \
                    .reshape(value.shape)
                stored[i, name] = codes, absmax
    return stored


def dequantized_state(opt, i, name):
    entry = opt.state[i]
    return _quant.dequantize_array(entry[name], entry[name + ABSMAX],
                                   _quant.is_signed(name)).reshape(entry[name].shape)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_every_optimizer_equals_its_requantizing_float32_twin_bit_for_bit(case):
    name, kwargs = case
    params, twin_params = params_for(), params_for()
    opt = optimizer(name, params, state_dtype="int8", **kwargs)
    twin = optimizer(name, twin_params, **kwargs)
    for step in range(STEPS):
        grads = make_grads(params, step)
        opt.step(grads)
        twin.step([g.copy() for g in grads])
        stored = requantize_state(twin)
    for i, (p, q) in enumerate(zip(params, twin_params)):
        assert p.tobytes() == q.tobytes(), f"param {i} differs"
        for state_name, value in twin.state[i].items():
            if state_name not in type(opt).state_names:
                continue
            if p.size >= _quant.MIN_SIZE:
                codes, absmax = stored[i, state_name]
                assert opt.state[i][state_name].dtype == np.uint8
                assert np.array_equal(opt.state[i][state_name].reshape(-1), codes), state_name
                assert np.array_equal(opt.state[i][state_name + ABSMAX], absmax), state_name
            else:  # small params keep float32 state
                assert opt.state[i][state_name].dtype == F32
                assert opt.state[i][state_name].tobytes() == value.tobytes()


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in ("Adam", "SGD", "Adagrad",
                                                                   "Lion", "RMSprop")][::2],
                         ids=case_id)
def test_against_the_float64_reference_quantizing_the_same_way(case):
    """The float64 reference (no numba_opt code) stepped with its state quantized after each
    step: float64 arithmetic moves a value across a midpoint now and then, so a tolerance of a
    few codes' worth on the params."""
    name, kwargs = case
    params = params_for(shapes=[(4101,)])
    ref_param = params[0].astype(np.float64)
    opt = optimizer(name, params, state_dtype="int8", **kwargs)
    state = {}
    for step in range(STEPS):
        grads = make_grads(params, step)
        opt.step(grads)
        RULES[name](ref_param, grads[0].astype(np.float64), state, **kwargs)
        ref_param[...] = ref_param.astype(F32)
        for key, value in state.items():
            if is_buffer(value):
                codes, absmax = _quant.quantize_array(value, _quant.is_signed(key))
                state[key] = _quant.dequantize_array(codes, absmax, _quant.is_signed(key)) \
                    .astype(np.float64).reshape(np.shape(value))
    displacement = np.abs(ref_param - params_for(shapes=[(4101,)])[0]).max()
    np.testing.assert_allclose(params[0], ref_param, rtol=0, atol=0.05 * displacement + 1e-6)


def test_no_recompile_after_the_second_step():
    params = params_for()
    opt = nopt.Adam(params, state_dtype="int8", amsgrad=True)
    for step in range(2):
        opt.step(make_grads(params, step))
    # the float32-param int8 kernels (others may exist from earlier tests in this process)
    kernels = [k for k in _cpu._KERNELS.values()
               if k.storage.state == "int8" and k.storage.param == "native"]
    assert kernels

    def signatures():
        return {d: list(d.signatures) for k in kernels for d in k.dispatchers()}
    before = signatures()
    for step in range(2, 6):
        opt.param_groups[0]["lr"] *= 0.5
        opt.step(make_grads(params, step))
    assert signatures() == before
    # float32 params, grads, scales and scalars; uint8 codes: no float64 anywhere
    dtypes = {str(t.dtype) for signatures in before.values() for signature in signatures
              for t in signature}
    assert dtypes == {"float32", "uint8"}


def test_state_bytes_per_param_with_int8_state():
    """Issue 14's target for Adam: at most 2.1 bytes of state per param (8 with float32)."""
    p = np.zeros(100_000, F32)
    opt = nopt.Adam([p], state_dtype="int8")
    opt.step([np.ones_like(p)])
    nbytes = sum(v.nbytes for v in opt.state[0].values() if isinstance(v, np.ndarray))
    assert nbytes / p.size <= 2.1
    assert nbytes == 2 * p.size + 2 * 4 * _quant.blocks(p.size)


def test_small_params_keep_float32_state_and_large_ones_codes_and_scales():
    params = [np.zeros(_quant.MIN_SIZE - 1, F32), np.zeros(_quant.MIN_SIZE, F32)]
    opt = nopt.Adam(params, state_dtype="int8")
    opt.step([np.ones_like(p) for p in params])
    small, large = opt.state
    assert set(small) == {"step", "exp_avg", "exp_avg_sq"}
    assert small["exp_avg"].dtype == F32
    assert set(large) == {"step", "exp_avg", "exp_avg_sq", "exp_avg_absmax",
                          "exp_avg_sq_absmax"}
    assert large["exp_avg"].dtype == np.uint8 and large["exp_avg"].shape == params[1].shape
    assert large["exp_avg_absmax"].shape == (_quant.MIN_SIZE // _quant.BLOCK,)
    assert opt.state_dtype == "int8"


def test_initial_state_values_are_exact():
    """Adagrad's initial_accumulator_value and RMSprop's initial_square_avg start as their value
    (scale = the value, code of 1): the first step equals the float32 optimizer's."""
    for name, kwargs in (("Adagrad", dict(initial_accumulator_value=0.3)),
                         ("RMSprop", dict(initial_square_avg=1.0, alpha=0.9))):
        params, twin = params_for(shapes=[(5000,)]), params_for(shapes=[(5000,)])
        grads = make_grads(params, 0)
        optimizer(name, params, state_dtype="int8", **kwargs).step(grads)
        optimizer(name, twin, **kwargs).step(grads)
        assert params[0].tobytes() == twin[0].tobytes()


@pytest.mark.parametrize("make", ["list", "dict", "flat", "groups"])
def test_param_containers_and_the_parallel_and_serial_loops_agree(make, monkeypatch):
    def build(loops):
        monkeypatch.setattr(_cpu, "LOOPS", loops)
        params = params_for(seed=2)
        if make == "dict":
            return params, nopt.Adam({f"p{i}": p for i, p in enumerate(params)},
                                     state_dtype="int8")
        if make == "flat":
            flat = nopt.FlatParams(params)
            return flat.params, nopt.Adam(flat, state_dtype="int8")
        if make == "groups":
            return params, nopt.Adam([{"params": params[:2], "lr": 1e-2},
                                      {"params": params[2:]}], state_dtype="int8")
        return params, nopt.Adam(params, state_dtype="int8")
    results = []
    for loops in ("parallel", "serial"):
        params, opt = build(loops)
        for step in range(5):
            grads = make_grads(params, step)
            opt.step(dict(zip([f"p{i}" for i in range(len(params))], grads))
                     if make == "dict" else grads)
        results.append([p.copy() for p in params])
    for a, b in zip(*results):
        assert a.tobytes() == b.tobytes()


def test_state_dict_resume_and_checkpoint_files_repeat_the_run(tmp_path):
    params = params_for()
    opt = nopt.AdamW(params, state_dtype="int8", amsgrad=True)
    for step in range(4):
        opt.step(make_grads(params, step))
    sd = opt.state_dict()
    assert sd["state"][0]["exp_avg"].dtype == np.uint8
    assert sd["state"][0]["max_exp_avg_sq_absmax"].dtype == F32
    nopt.save(opt, tmp_path / "run.npz")
    resumed_params, file_params = params_for(), params_for()
    resumed = nopt.AdamW(resumed_params, state_dtype="int8", amsgrad=True)
    for p, q in zip(resumed_params, params):
        p[...] = q
    resumed.load_state_dict(sd)
    from_file = nopt.AdamW(file_params, state_dtype="int8", amsgrad=True)
    nopt.load(from_file, tmp_path / "run.npz")
    for step in range(4, 8):
        grads = make_grads(params, step)
        for o in (opt, resumed, from_file):
            o.step([g.copy() for g in grads])
    for a, b, c in zip(params, resumed_params, file_params):
        assert a.tobytes() == b.tobytes() == c.tobytes()
    for name in ("exp_avg", "exp_avg_absmax", "max_exp_avg_sq"):
        assert opt.state[0][name].tobytes() == from_file.state[0][name].tobytes()


def snapshot(opt, params):
    return ([p.copy() for p in params],
            [{k: np.array(v, copy=True) for k, v in s.items()} for s in opt.state])


def assert_unchanged(opt, params, before):
    after = snapshot(opt, params)
    for a, b in zip(before[0], after[0]):
        assert a.tobytes() == b.tobytes()
    for a, b in zip(before[1], after[1]):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("damage, error", [
    (lambda s: s.__setitem__("exp_avg_absmax", s["exp_avg_absmax"][:-1]), "shape"),
    (lambda s: s.__setitem__("exp_avg", s["exp_avg"].astype(np.int8)), "dtype"),
    (lambda s: s.__setitem__("exp_avg", s["exp_avg"].astype(F32)), "dtype"),
    (lambda s: s.pop("exp_avg_sq_absmax"), "without the other"),
    (lambda s: s.__setitem__("exp_avg_absmax", s["exp_avg_absmax"].astype(np.float64)),
     "dtype"),
])
def test_damaged_int8_state_is_refused_before_anything_changes(damage, error):
    params = params_for()
    opt = nopt.Adam(params, state_dtype="int8")
    opt.step(make_grads(params, 0))
    sd = opt.state_dict()
    damage(sd["state"][0])
    opt.step(make_grads(params, 1))
    before = snapshot(opt, params)
    with pytest.raises((ValueError, TypeError), match=error):
        opt.load_state_dict(sd)
    assert_unchanged(opt, params, before)


def test_an_int8_state_dict_loads_into_an_optimizer_that_never_stepped():
    """Codes and scales load as they are (no kernel runs: the mutation runs' NUMBA_DISABLE_JIT
    can take this one), into one bucket of two quantized params, each with its own scales, and
    a small param with float32 state."""
    rng = np.random.default_rng(3)
    shapes = [(4101,), (5000,), (7, 5)]
    state = {}
    for i, shape in enumerate(shapes):
        entry = {"step": 4}
        for name, signed in (("exp_avg", True), ("exp_avg_sq", False)):
            values = rng.standard_normal(shape).astype(F32)
            values = values if signed else values * values
            if i < 2:
                entry[name], entry[name + ABSMAX] = _quant.quantize_array(values, signed)
            else:
                entry[name] = values
        state[i] = entry
    opt = nopt.Adam(params_for(shapes=shapes), state_dtype="int8")
    saved = {**opt.state_dict(), "state": state, "step_count": 4}
    opt.load_state_dict(saved)
    back = opt.state_dict()["state"]
    assert back.keys() == state.keys()
    for i in state:
        assert back[i].keys() == state[i].keys(), i
        for key, value in state[i].items():
            np.testing.assert_array_equal(back[i][key], value, err_msg=f"{i} {key}")


def test_a_float32_state_dict_does_not_load_into_int8_state():
    params = params_for()
    plain = nopt.Adam(params)
    plain.step(make_grads(params, 0))
    opt = nopt.Adam(params_for(), state_dtype="int8")
    with pytest.raises(TypeError, match="uint8"):
        opt.load_state_dict(plain.state_dict())


def test_absmax_of_a_small_param_is_refused():
    params = params_for()
    opt = nopt.Adam(params, state_dtype="int8")
    opt.step(make_grads(params, 0))
    sd = opt.state_dict()
    sd["state"][2]["exp_avg_absmax"] = np.zeros(1, F32)
    with pytest.raises(ValueError, match="no 'exp_avg_absmax'"):
        opt.load_state_dict(sd)


def test_clipping_and_none_grads_work_on_int8_state():
    params, twin_params = params_for(), params_for()
    opt = nopt.Adam(params, state_dtype="int8")
    twin = nopt.Adam(twin_params)
    for step in range(6):
        grads = make_grads(params, step)
        if step in (2, 3):
            grads[1] = None  # the quantized (130, 160) param skips two steps
        norm = opt.step(grads, max_grad_norm=1.0)
        # the int8 optimizer sums the squares per bucket (quantized params, then small ones):
        # another order of the float64 sum than the twin's single bucket
        assert norm == pytest.approx(twin.step([None if g is None else g.copy() for g in grads],
                                               max_grad_norm=1.0), rel=1e-14)
        assert norm > 1.0  # the clipping acts
        requantize_state(twin, grads)
    for p, q in zip(params, twin_params):
        np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-7)
    assert opt.state[1]["step"] == 4


def test_a_nan_grad_poisons_its_block_only():
    p = np.zeros(2 * _quant.BLOCK * 10, F32)
    opt = nopt.Adam([p], state_dtype="int8")
    g = np.ones_like(p)
    g[3] = np.nan
    opt.step([g])
    m = dequantized_state(opt, 0, "exp_avg")
    assert np.all(np.isnan(m[:_quant.BLOCK])) and np.all(np.isfinite(m[_quant.BLOCK:]))
    assert np.isnan(p[3]) and np.all(np.isfinite(p[_quant.BLOCK:]))


def test_bfloat16_and_float16_params_with_int8_state_and_master_weights():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    for dtype, master in ((ml_dtypes.bfloat16, False), (ml_dtypes.bfloat16, True),
                          (np.float16, False)):
        params = [p.astype(dtype) for p in params_for()]
        opt = nopt.Adam(params, lr=1e-2, state_dtype="int8", master_weights=master)
        twin_params = [p.astype(dtype) for p in params_for()]
        twin = nopt.Adam(twin_params, lr=1e-2, state_dtype="float32", master_weights=master)
        for step in range(5):
            grads = [g.astype(dtype) for g in make_grads([p.astype(F32) for p in params], step)]
            opt.step(grads)
            twin.step([g.copy() for g in grads])
            requantize_state(twin)
        for p, q in zip(params, twin_params):
            assert p.tobytes() == q.tobytes()
        if master:
            assert opt.state[0]["master_param"].dtype == F32


def test_float64_params_and_unknown_state_dtypes_are_refused():
    with pytest.raises(TypeError, match="float64"):
        nopt.Adam([np.zeros(5000)], state_dtype="int8")
    with pytest.raises(ValueError, match="state_dtype"):
        nopt.Adam([np.zeros(5000, F32)], state_dtype="int4")


def test_bitsandbytes_cpu_8bit_adam_as_an_extra_oracle():
    """bitsandbytes' CPU 8-bit Adam picks codes through its own lookup (not always the nearest)
    and scales by a reciprocal; after 20 steps its params stay within a small fraction of the
    distance they moved of ours."""
    bnb = pytest.importorskip("bitsandbytes")
    torch = pytest.importorskip("torch")
    n = 10_000
    start = np.random.default_rng(0).standard_normal(n).astype(F32)
    grads = np.random.default_rng(1).standard_normal((20, n)).astype(F32)
    ours = start.copy()
    opt = nopt.Adam([ours], lr=1e-3, state_dtype="int8")
    theirs = torch.nn.Parameter(torch.from_numpy(start.copy()))
    try:
        their_opt = bnb.optim.Adam8bit([theirs], lr=1e-3)
    except Exception as exc:  # pragma: no cover - depends on the installed build
        pytest.skip(f"bitsandbytes' 8-bit Adam does not run here: {exc}")
    for g in grads:
        opt.step([g.copy()])
        theirs.grad = torch.from_numpy(g.copy())
        their_opt.step()
    theirs = theirs.detach().numpy()
    moved = np.abs(theirs - start).max()
    assert np.abs(ours - theirs).max() <= 0.05 * moved
    state = their_opt.state[their_opt.param_groups[0]["params"][0]]
    assert np.array_equal(state["qmap1"].numpy(), _quant.SIGNED_MAP) or np.allclose(
        state["qmap1"].numpy(), _quant.SIGNED_MAP, rtol=1e-6, atol=0)
    assert np.allclose(state["qmap2"].numpy(), _quant.UNSIGNED_MAP, rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------------- CUDA
cuda = pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
from numba import config  # noqa: E402

SIMULATED = bool(config.ENABLE_CUDASIM)
needs_cuda = pytest.mark.skipif(not SIMULATED and not cuda.is_available(),
                                reason="no GPU; run with NUMBA_ENABLE_CUDASIM=1")
# one CASES row per blockwise kernel variant (1, 2 and 3 states, signed and unsigned maps)
CUDA_CASES = [c for c in CASES if c in (
    ("SGD", {"lr": 0.01, "momentum": 0.9}), ("RMSprop", {}),
    ("RMSprop", {"centered": True, "momentum": 0.5, "weight_decay": 0.05}), ("Adam", {}),
    ("AdamW", {"lr": 1e-2, "weight_decay": 0.3, "amsgrad": True}), ("Adagrad", {}),
    ("Adadelta", {}), ("Lion", {}), ("Rprop", {}), ("ASGD", {}))]


@needs_cuda
@pytest.mark.parametrize("master", [False, True], ids=["float32", "bf16-master"])
@pytest.mark.parametrize("case", CUDA_CASES, ids=case_id)
def test_cuda_int8_state_equals_the_cpu_bit_for_bit(case, master, monkeypatch):
    """The GPU kernel (a thread block per absmax block, shared scratch, an atomic max) and the
    CPU loop share the rules: same params, codes and scales.  Under the simulator the launches
    are tiny (4 threads, 2 blocks, so threads and blocks stride) and MIN_SIZE is lowered so a
    600-element param (two blocks and a partial third) is quantized.  The quantized params
    share a bucket, stepped in one launch over a table; the fourth step leaves one grad out, so
    the other two step over a table of them (their codes and scales inside the bucket's), and
    in the fifth it (a step behind) steps alone."""
    from numba_opt import _cuda
    if SIMULATED:
        monkeypatch.setattr(_cuda, "THREADS_PER_BLOCK", 4)
        monkeypatch.setattr(_cuda, "MAX_BLOCKS", 2)
        monkeypatch.setattr(_quant, "MIN_SIZE", 300)
        shapes = [(600,), (5,), (300,), (2, 257)]
    else:
        shapes = [(4101,), (130, 160), (5,), (300, 7)]
    name, kwargs = case
    dtype = F32
    if master:
        dtype = pytest.importorskip("ml_dtypes").bfloat16
        kwargs = {**kwargs, "master_weights": True}
    host = [p.astype(dtype) for p in params_for(shapes=shapes)]
    device = [cuda.to_device(p) for p in host]
    cpu = optimizer(name, host, state_dtype="int8", **kwargs)
    gpu = optimizer(name, device, state_dtype="int8", **kwargs)
    assert gpu.device == "cuda"
    for step in range(5):
        grads = [g.astype(dtype) for g in make_grads([p.astype(F32) for p in host], step)]
        if step == 3:
            grads[2] = None
        cpu.step(grads)
        gpu.step([None if g is None else cuda.to_device(g) for g in grads])
    for i, (d, h) in enumerate(zip(device, host)):
        assert d.copy_to_host().tobytes() == h.tobytes(), f"param {i}"
        for key, value in cpu.state[i].items():
            if isinstance(value, np.ndarray):
                assert gpu.state[i][key].copy_to_host().tobytes() == value.tobytes(), key
    assert gpu.state[0]["exp_avg_absmax" if "exp_avg" in gpu.state[0] else
                        sorted(k for k in gpu.state[0] if k.endswith(ABSMAX))[0]] is not None
    # the state_dict of the GPU optimizer loads into a CPU one
    restored = optimizer(name, [p.copy() for p in host], state_dtype="int8", **kwargs)
    restored.load_state_dict(gpu.state_dict())


PTX_SCRIPT = """
from numba_opt import _quant
counts = {}
int64, codes, scales = (typeof(np.zeros(1, t)) for t in (np.int64, np.uint8, np.float32))
for name, (n_states, family) in _math.KERNELS.items():
    if not n_states:
        continue
    for param, master in (("native", False), ("bfloat16", True)):
        storage = S(param, "int8", master, (True, False, False)[:n_states])
        launcher = _cuda.BlockwiseLauncher(name, storage)
        h = _cuda.scalars_argument(_math.SCALARS[family]._make(
            [0.0] * len(_math.SCALARS[family]._fields)), np.float32)
        kind = typeof(np.zeros(1, np.float32 if param == "native" else np.uint16))
        buffers = (codes, scales) * 3 + (scales,) * 2 + (typeof(h),)  # master, scale, scalars
        one = (kind, kind) + (int64,) * 4 + (scales,) + buffers  # the table arguments unused
        table = (int64,) * 6 + (kind,) + buffers  # addresses, starts, offsets, block starts...
        launcher.bind_table(1)  # makes the table kernel
        for label, kernel, signature in (("one", launcher.kernel, one),
                                         ("table", launcher._table_kernel, table)):
            text = cuda.compile_ptx(kernel.py_func, signature, cc=(9, 0))[0]
            counts[f"{name} {param} {label}"] = sum(".f64" in line for line in text.splitlines())
print(json.dumps(counts))
"""


def test_cuda_int8_kernels_compile_to_ptx_without_float64():
    """Every blockwise kernel, for one param and for a bucket's table, compiled to real PTX
    (NVVM, no GPU needed): float32 only."""
    counts = ptx.run(PTX_SCRIPT)
    assert len(counts) == 4 * sum(1 for n, _ in nopt._math.KERNELS.values() if n)
    assert all(lines == 0 for lines in counts.values()), counts
