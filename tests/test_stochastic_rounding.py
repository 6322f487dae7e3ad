"""``stochastic_rounding=True`` (issue 14): bfloat16 / float16 stores round up with the
probability of the fraction of an ulp a value lies past its lower neighbour.

References:
- the codecs against a NumPy twin of the same hash and rounding (written here, from the
  description in ``_codecs``), bit for bit, on random bit patterns of every kind;
- their statistics: one value rounded under many salts averages to the value, each neighbour
  as often as it should; representable values, NaN and inf never change; no inf from a finite
  value that rounding to nearest keeps finite;
- every optimizer (CASES) against a *float32 twin* that applies the NumPy rounding twin, with
  the salt of each step, to its param and state after every step: bit for bit;
- every loop (parallel / serial, table / span / per param), the CUDA simulator and a resumed
  run give the same bits.
"""
import numpy as np
import pytest
from numba import config as numba_config, njit

import numba_opt as nopt
from numba_opt import _codecs, _cpu
import ptx
from cases import CASES, case_id, grads_in, make_grads, make_params, model_in, optimizer

ml_dtypes = pytest.importorskip("ml_dtypes")

BF16, F16 = np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16)
F32 = np.dtype(np.float32)
M32 = np.uint64(0xFFFFFFFF)
SHAPES = [(7, 5), (5,), (3, 4, 2), ()]
STEPS = 12


# ------------------------------------------------------------------------ the NumPy twin
def twin_bits(u, salt):
    """The 32 random bits of float32 bits ``u`` (uint32 array) under ``salt`` (ints)."""
    x = u.astype(np.uint64) ^ ((np.asarray(salt, np.uint64) * np.uint64(0x9E3779B9)) & M32)
    x = ((x ^ (x >> np.uint64(16))) * np.uint64(0x7FEB352D)) & M32
    x = ((x ^ (x >> np.uint64(15))) * np.uint64(0x846CA68B)) & M32
    return x ^ (x >> np.uint64(16))


def twin_round(values, dtype, salt):
    """float32 ``values`` rounded stochastically to ``dtype`` (bfloat16 or float16); ``salt``
    an int or an array of ints (one per value)."""
    with np.errstate(over="ignore", invalid="ignore"):  # NaN and inf pass through
        return _twin_round(np.asarray(values, F32), dtype, salt)


def _twin_round(values, dtype, salt):
    u = values.view(np.uint32).astype(np.uint64)
    random = twin_bits(u, salt)
    nearest = values.astype(dtype)
    if dtype == BF16:
        rounded = (((u + (random >> np.uint64(16))) & M32) >> np.uint64(16)).astype(np.uint16)
        special = (rounded & 0x7F80) == 0x7F80
    else:
        sign, magnitude = u & np.uint64(0x80000000), u & np.uint64(0x7FFFFFFF)
        subnormal = magnitude < 0x38800000  # below 2**-14
        smallest = np.float32(2.0 ** -14)
        shifted = (magnitude.astype(np.uint32).view(F32) + smallest).view(np.uint32)
        aligned = np.where(subnormal, shifted.astype(np.uint64), magnitude)
        kept = (aligned + (random >> np.uint64(19))) & np.uint64(0xFFFFE000)
        back = (kept.astype(np.uint32).view(F32) - smallest).view(np.uint32).astype(np.uint64)
        kept = np.where(subnormal, back, kept)
        rounded = (kept | sign).astype(np.uint32).view(F32).astype(F16).view(np.uint16)
        special = (rounded & 0x7C00) == 0x7C00
    special |= np.isnan(values)
    return np.where(special, nearest.view(np.uint16), rounded).view(dtype)


STORES = {BF16: _codecs.bfloat16_store_stochastic, F16: _codecs.float16_store_stochastic}


def _loop(store):
    @njit
    def stores(values, salts, out):
        for i in range(values.size):
            out[i] = store(values[i], salts[i])
    return stores


LOOPS = {dtype: _loop(store) for dtype, store in STORES.items()}


def codec_round(values, dtype, salts):
    values = np.asarray(values, F32)
    salts = np.broadcast_to(np.asarray(salts, F32), values.shape).copy()
    out = np.empty(values.size, np.uint16)
    LOOPS[dtype](values.ravel(), salts.ravel(), out)
    return out.view(dtype).reshape(values.shape)


def interesting_values(rng, n):
    """Random bit patterns of every kind (NaN, inf, subnormals included), values near each
    format's overflow, and float16's subnormal range."""
    patterns = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32).view(F32)
    near_max = [np.float32(3.3895314e38) * rng.uniform(0.999, 1.0039, n // 8),
                rng.uniform(65000, 66000, n // 8), rng.uniform(-2 ** -14, 2 ** -14, n // 8),
                rng.uniform(-2 ** -24, 2 ** -24, n // 16), rng.standard_normal(n // 4)]
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1.0, -1.0, 65504.0, 65520.0,
               65519.99, 3.3895314e38, 3.4028235e38, -3.4028235e38]
    nan_payloads = np.uint32([0x7F800001, 0xFF800001, 0xFFFFFFFF, 0x7F80FFFF]).view(F32)
    values = np.concatenate([patterns, *[np.asarray(v, F32) for v in near_max],
                             np.asarray(special, F32), nan_payloads])
    return values.astype(F32)


# -------------------------------------------------------------------------------- codecs
@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_the_codec_equals_the_numpy_twin_bit_for_bit(dtype):
    rng = np.random.default_rng(0)
    values = interesting_values(rng, 200_000)
    salts = rng.integers(0, 1 << 24, values.size)
    ours = codec_round(values, dtype, salts.astype(F32))
    twin = twin_round(values, dtype, salts)
    nan = np.isnan(twin.astype(F32))
    assert np.array_equal(np.isnan(ours.astype(F32)), nan)
    assert np.array_equal(ours.view(np.uint16)[~nan], twin.view(np.uint16)[~nan])
    # a salt change changes the rounding of some values (only those between neighbours)
    other = codec_round(values, dtype, ((salts + 1) % (1 << 24)).astype(F32))
    assert np.count_nonzero(other.view(np.uint16) != ours.view(np.uint16)) > values.size // 10


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_representable_values_nan_and_inf_never_change(dtype):
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(dtype)
    values = every.astype(F32)
    rng = np.random.default_rng(1)
    for salt in rng.integers(0, 1 << 24, 8):
        ours = codec_round(values, dtype, np.float32(salt))
        nan = np.isnan(values)
        assert np.array_equal(ours.view(np.uint16)[~nan], every.view(np.uint16)[~nan])
        assert np.all(np.isnan(ours.astype(F32)[nan]))


@pytest.mark.parametrize("dtype, values", [
    (BF16, [1.0 + 0.3 * 2 ** -7, -(3.0 + 0.71 * 2 ** -6), 1e-3, 2.0 ** -130 * 1.37,
            7.1e-39]),
    (F16, [1.0 + 0.3 * 2 ** -10, -(700.0 + 0.9 * 0.5), 1e-5, 2.0 ** -24 * 0.05,
           -(2.0 ** -20 * 1.4), 6.1e-5]),
], ids=["bfloat16", "float16"])
def test_rounding_is_unbiased_and_picks_each_neighbour_as_often_as_it_should(dtype, values):
    n = 40_000
    salts = np.arange(n, dtype=F32) * 331 % (1 << 24)
    for value in np.asarray(values, F32):
        rounded = codec_round(np.full(n, value, F32), dtype, salts).astype(np.float64)
        low = np.float64(value.astype(dtype).astype(F32))  # a neighbour; find the other
        neighbours = np.unique(rounded)
        assert len(neighbours) <= 2, (value, neighbours)
        down, up = (np.min(np.abs(neighbours)), np.max(np.abs(neighbours)))
        down, up = np.copysign(down, value), np.copysign(up, value)
        assert low in (down, up)
        exact = np.float64(value)
        p_up = (abs(exact) - abs(down)) / (abs(up) - abs(down)) if up != down else 0.0
        frequency = np.mean(rounded == up) if up != down else 0.0
        assert abs(frequency - p_up) < 4 * np.sqrt(p_up * (1 - p_up) / n) + 2.0 ** -12, value
        spread = abs(up - down)
        assert abs(np.mean(rounded) - exact) < 4 * spread * np.sqrt(p_up * (1 - p_up) / n) \
            + spread * 2.0 ** -12, value
        # both neighbours occur (the values above lie well inside their ulps)
        assert 0 < frequency < 1, value


@pytest.mark.parametrize("dtype, largest, threshold", [
    (BF16, 3.3895314e38, 3.3961775e38), (F16, 65504.0, 65520.0)], ids=["bfloat16", "float16"])
def test_no_inf_where_rounding_to_nearest_stays_finite(dtype, largest, threshold):
    """Between the largest finite value and the point where rounding to nearest overflows the
    result stays finite; past that point it is inf or the largest value (torchao would give inf
    from any value above the largest: its truncation carries into the exponent)."""
    n = 5000
    salts = np.arange(n, dtype=F32)
    below = np.linspace(largest, threshold, n + 2, dtype=np.float64)[1:-1].astype(F32)
    below = below[below.astype(dtype).astype(F32) == np.float32(largest)]
    assert below.size > 100
    for sign in (1, -1):
        ours = codec_round(sign * below, dtype, salts[:below.size]).astype(F32)
        assert np.array_equal(ours, np.full(below.size, sign * largest, F32))
        above = np.full(n, np.nextafter(np.float32(threshold), np.float32(np.inf)) * sign, F32)
        results = codec_round(above, dtype, salts).astype(F32)
        assert set(np.unique(np.abs(results))) <= {np.float32(largest), np.float32(np.inf)}


def test_the_salt_is_an_exact_float32_and_depends_on_seed_and_step():
    salts = {_codecs.rounding_salt(seed, step) for seed in range(4) for step in range(1, 300)}
    assert len(salts) > 1190
    assert all(0 <= s < 1 << 24 and float(np.float32(s)) == s for s in salts)


# ---------------------------------------------------------------- optimizers: the twin
def params_in(dtype, shapes=SHAPES, seed=0):
    return [p.astype(dtype) for p in make_params(np.float32, seed, shapes)]


def grads_for(params, step):
    return [g.astype(p.dtype) for g, p in
            zip(make_grads([p.astype(np.float32) for p in params], step), params)]


# id -> (param dtype, optimizer options, state dtype)
CONFIGS = {
    "bf16": (BF16, {}, BF16),
    "f32-params-bf16-state": (F32, dict(state_dtype="bfloat16"), BF16),
    "bf16-master-bf16-state": (BF16, dict(master_weights=True, state_dtype="bfloat16"), BF16),
    "f16": (F16, {}, F16),
    "f16-f32-state": (F16, dict(state_dtype="float32"), F32),
}
VARIANT_CASES = [CASES[i] for i in (0, 2, 6, 7, 8, 9, 13, 15, 20, 24, 26, 29, 32, 34)]


class Twin:
    """The optimizer on float32 copies, whose param (without a master copy) and bfloat16 /
    float16 state are rounded by ``twin_round`` with the salt of each param's step."""

    def __init__(self, name, kwargs, params, options, state_dtype, seed):
        self.param_dtype, self.state_dtype, self.seed = params[0].dtype, state_dtype, seed
        self.master = options.get("master_weights", False)
        kwargs = dict(kwargs)
        if "initial_accumulator_value" in kwargs:  # filled to nearest in its storage dtype
            kwargs["initial_accumulator_value"] = float(
                np.float32(kwargs["initial_accumulator_value"]).astype(state_dtype))
        self.params = [p.astype(np.float32) for p in params]
        self.opt = optimizer(name, self.params, **kwargs)

    def step(self, grads):
        self.opt.step([None if g is None else g.astype(np.float32) for g in grads])
        for p, g, state in zip(self.params, grads, self.opt.state):
            if g is None:
                continue
            salt = _codecs.rounding_salt(self.seed, state["step"])
            if not self.master and self.param_dtype != F32:
                p[...] = twin_round(p, self.param_dtype, salt)
            for key in self.opt.state_names:
                if key in state and self.state_dtype != F32:
                    state[key][...] = twin_round(state[key], self.state_dtype, salt)

    def check(self, opt, params):
        for i, (param, mine) in enumerate(zip(params, self.params)):
            assert np.array_equal(param.view(np.uint16) if param.dtype != F32 else param,
                                  mine.astype(param.dtype).view(np.uint16)
                                  if param.dtype != F32 else mine), f"param {i}"
            for key in self.opt.state_names:
                if key in self.opt.state[i]:
                    ours = opt.state[i][key]
                    assert ours.dtype == self.state_dtype, key
                    assert ours.tobytes() == self.opt.state[i][key].astype(
                        self.state_dtype).tobytes(), f"{key} of param {i}"


def run_pair(case, config, steps=STEPS, shapes=SHAPES, seed=None, grads_none=None):
    name, kwargs = case
    param_dtype, options, state_dtype = CONFIGS[config]
    params = params_in(param_dtype, shapes)
    opt = optimizer(name, params, **kwargs, **options, stochastic_rounding=True,
                    rounding_seed=seed)
    twin = Twin(name, kwargs, params, options, state_dtype, seed or 0)
    for step in range(1, steps + 1):
        grads = grads_for(params, step)
        if grads_none and step in grads_none:
            grads[grads_none[step]] = None
        opt.step(grads)
        twin.step(grads)
    return opt, params, twin


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_every_kernel_rounds_like_the_twin_on_bfloat16_params(case):
    opt, params, twin = run_pair(case, "bf16", seed=12345)
    twin.check(opt, params)


@pytest.mark.parametrize("config", [c for c in CONFIGS if c != "bf16"])
@pytest.mark.parametrize("case", VARIANT_CASES, ids=case_id)
def test_the_other_pairings_round_like_the_twin(case, config):
    opt, params, twin = run_pair(case, config, steps=5)
    twin.check(opt, params)


def test_stochastic_rounding_differs_from_nearest_and_between_seeds():
    case = ("Adam", {"lr": 1e-3})
    results = []
    for options in (dict(), dict(stochastic_rounding=True),
                    dict(stochastic_rounding=True, rounding_seed=7)):
        params = params_in(BF16)
        opt = nopt.Adam(params, lr=1e-3, **options)
        for step in range(1, 6):
            opt.step(grads_for(params, step))
        results.append(params[0].tobytes() + opt.state[0]["exp_avg_sq"].tobytes())
    assert len(set(results)) == 3, case


def test_stochastic_rounding_lets_small_updates_accumulate():
    """The issue's symptom: exp_avg_sq at beta2=0.999 in bfloat16 freezes under rounding to
    nearest (each update is below half an ulp) and follows float32 under stochastic rounding."""
    grads = np.full(1000, 1.0, np.float32)

    def final(options, dtype):
        param = np.zeros(1000, dtype)
        opt = nopt.Adam([param], lr=0.0, betas=(0.9, 0.999), **options)
        for step in range(1, 301):
            opt.step([(grads * (1.0 if step < 100 else 2.0)).astype(dtype)])
        return opt.state[0]["exp_avg_sq"].astype(np.float64).mean()
    exact = final({}, F32)
    nearest = final({}, BF16)
    stochastic = final(dict(stochastic_rounding=True), BF16)
    assert abs(stochastic - exact) < 0.01 * exact
    assert abs(nearest - exact) > 0.05 * exact


# ------------------------------------------------------------------- loops and layouts
LOOP_CASES = [("Adam", {"amsgrad": True, "lr": 1e-2}), ("SGD", {"lr": 0.01, "momentum": 0.9}),
              ("Lion", {"lr": 1e-3})]


def run_layout(case, config, layout, loops, monkeypatch):
    name, kwargs = case
    param_dtype, options, _ = CONFIGS[config]
    monkeypatch.setattr(_cpu, "LOOPS", loops)
    params, model = model_in(params_in(param_dtype, [(130, 130), (7, 5), (3,)]), layout)
    opt = optimizer(name, model, **kwargs, **options, stochastic_rounding=True,
                    rounding_seed=99)
    for step in range(1, 6):
        opt.step(grads_in(model, grads_for(params, step), layout, step))
    return [p.copy() for p in params], opt.state_dict()


def assert_same_run(a, b, what):
    (params_a, sd_a), (params_b, sd_b) = a, b
    for i, (x, y) in enumerate(zip(params_a, params_b)):
        assert x.tobytes() == y.tobytes(), f"{what}: param {i}"
    for i, entry in sd_a["state"].items():
        for key, value in entry.items():
            if isinstance(value, np.ndarray):
                assert value.tobytes() == sd_b["state"][i][key].tobytes(), f"{what}: {key} {i}"


@pytest.mark.parametrize("config", ["bf16", "f32-params-bf16-state", "f16"])
@pytest.mark.parametrize("case", LOOP_CASES, ids=case_id)
def test_parallel_serial_table_and_span_loops_round_alike(case, config, monkeypatch):
    reference = run_layout(case, config, "list", "serial", monkeypatch)
    assert_same_run(reference, run_layout(case, config, "list", "parallel", monkeypatch),
                    "parallel table")
    assert_same_run(reference, run_layout(case, config, "FlatParams", "parallel", monkeypatch),
                    "parallel span")
    assert_same_run(reference, run_layout(case, config, "FlatParams", "serial", monkeypatch),
                    "serial span")


@pytest.mark.parametrize("case", LOOP_CASES, ids=case_id)
def test_per_param_steps_round_like_the_twin(case):
    """A None grad puts the bucket on per-param calls, each with its own step count (and
    salt)."""
    opt, params, twin = run_pair(case, "bf16", steps=6, grads_none={2: 1, 4: 0})
    twin.check(opt, params)


def test_int8_state_rounds_the_bfloat16_param_stochastically():
    """With int8 state only the param store rounds stochastically: like a float32 twin with
    int8 state whose param is rounded by the NumPy twin after each step."""
    params = params_in(BF16, [(80, 80), (5,)])
    opt = nopt.Adam(params, lr=1e-2, state_dtype="int8", stochastic_rounding=True,
                    rounding_seed=3)
    twin_params = [p.astype(np.float32) for p in params]
    twin = nopt.Adam(twin_params, lr=1e-2, state_dtype="int8")
    for step in range(1, 6):
        grads = grads_for(params, step)
        opt.step(grads)
        twin.step([g.astype(np.float32) for g in grads])
        for p in twin_params:  # the small param keeps float32 state: its param rounds too
            p[...] = twin_round(p, BF16, _codecs.rounding_salt(3, step))
    for p, mine in zip(params, twin_params):
        assert p.tobytes() == mine.astype(BF16).tobytes()
    assert opt.state[0]["exp_avg"].dtype == np.uint8


# ------------------------------------------------------------- state_dict and checkpoints
@pytest.mark.parametrize("config", list(CONFIGS))
def test_state_dict_and_checkpoints_resume_exactly(config, tmp_path):
    param_dtype, options, _ = CONFIGS[config]
    params = params_in(param_dtype)
    opt = nopt.Adam(params, lr=0.01, amsgrad=True, **options, stochastic_rounding=True,
                    rounding_seed=2024)
    for step in range(1, 4):
        opt.step(grads_for(params, step))
    sd, values = opt.state_dict(), [p.copy() for p in params]
    assert sd["rounding_seed"] == 2024
    nopt.save(opt, tmp_path / "run.npz")
    for step in range(4, 8):
        opt.step(grads_for(params, step))
    for how in ("state_dict", "checkpoint"):
        fresh = params_in(param_dtype, seed=5)
        # another seed given: the saved one wins
        resumed = nopt.Adam(fresh, lr=0.01, amsgrad=True, **options, stochastic_rounding=True)
        if how == "checkpoint":
            nopt.load(resumed, tmp_path / "run.npz")
        else:
            resumed.load_state_dict(sd)
            for p, value in zip(fresh, values):
                p[...] = value
        assert resumed.rounding_seed == 2024
        for step in range(4, 8):
            resumed.step(grads_for(fresh, step))
        for i, (a, b) in enumerate(zip(params, fresh)):
            assert a.tobytes() == b.tobytes(), f"{how}: param {i}"
            for key, value in opt.state[i].items():
                if key != "step":
                    assert resumed.state[i][key].tobytes() == value.tobytes(), (how, key, i)


def test_state_dict_seed_is_checked():
    params = params_in(BF16)
    opt = nopt.Adam(params, stochastic_rounding=True)
    opt.step(grads_for(params, 1))
    sd = opt.state_dict()
    assert sd["rounding_seed"] == 0
    for bad, error in ((-1, ValueError), (1.5, TypeError), (True, TypeError), ("3", TypeError),
                       (2 ** 63, ValueError)):
        with pytest.raises(error, match="rounding_seed"):
            nopt.Adam(params_in(BF16), stochastic_rounding=True).load_state_dict(
                {**sd, "rounding_seed": bad})
    missing = {k: v for k, v in sd.items() if k != "rounding_seed"}
    with pytest.raises(ValueError, match="no 'rounding_seed'.*stochastic_rounding=False"):
        nopt.Adam(params_in(BF16), stochastic_rounding=True).load_state_dict(missing)
    with pytest.raises(ValueError, match="stochastic_rounding=True"):
        nopt.Adam(params_in(BF16)).load_state_dict(sd)
    nopt.Adam(params_in(BF16)).load_state_dict(missing)  # nearest to nearest: fine
    assert "rounding_seed" not in nopt.Adam(params_in(BF16)).state_dict()


# ------------------------------------------------------------------------------ options
@pytest.mark.parametrize("make, error, message", [
    (lambda: nopt.Adam(params_in(BF16), stochastic_rounding=1), TypeError, "True or False"),
    (lambda: nopt.Adam(params_in(BF16), stochastic_rounding="yes"), TypeError, "True or False"),
    (lambda: nopt.Adam(params_in(F32), stochastic_rounding=True), TypeError,
     "nothing is stored so"),
    (lambda: nopt.Adam(params_in(np.float64), stochastic_rounding=True), TypeError,
     "nothing is stored so"),
    (lambda: nopt.Adam(params_in(BF16), master_weights=True, stochastic_rounding=True),
     TypeError, "nothing is stored so"),
    (lambda: nopt.Adam(params_in(F32), state_dtype="float32", stochastic_rounding=True),
     TypeError, "nothing is stored so"),
    (lambda: nopt.Adam(params_in(BF16), rounding_seed=3), ValueError, "stochastic_rounding=True"),
    (lambda: nopt.Adam(params_in(BF16), stochastic_rounding=True, rounding_seed=-2), ValueError,
     "rounding_seed"),
    (lambda: nopt.Adam(params_in(BF16), stochastic_rounding=True, rounding_seed=2.0), TypeError,
     "rounding_seed"),
])
def test_bad_options_are_refused(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_the_option_is_fixed_and_every_optimizer_takes_it():
    for name in sorted({case[0] for case in CASES}):
        opt = optimizer(name, params_in(BF16), stochastic_rounding=True, rounding_seed=5)
        assert opt.stochastic_rounding is True and opt.rounding_seed == 5
        assert optimizer(name, params_in(BF16)).stochastic_rounding is False
    with pytest.raises(AttributeError, match="fixed"):
        opt.stochastic_rounding = False


# ------------------------------------------------------------------------------------- CUDA
cuda = pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
SIMULATED = bool(numba_config.ENABLE_CUDASIM)
needs_cuda = pytest.mark.skipif(not SIMULATED and not cuda.is_available(),
                                reason="needs a GPU or NUMBA_ENABLE_CUDASIM=1")


@pytest.fixture
def small_launches(monkeypatch):
    if SIMULATED:
        from numba_opt import _cuda
        monkeypatch.setattr(_cuda, "THREADS_PER_BLOCK", 4)
        monkeypatch.setattr(_cuda, "MAX_BLOCKS", 3)


@needs_cuda
@pytest.mark.usefixtures("small_launches")
@pytest.mark.parametrize("config", ["bf16", "f32-params-bf16-state", "f16"])
@pytest.mark.parametrize("case", [CASES[i] for i in (2, 9, 15, 30, 34)], ids=case_id)
def test_cuda_kernels_round_like_the_cpu_kernels(case, config):
    name, kwargs = case
    param_dtype, options, _ = CONFIGS[config]
    host = params_in(param_dtype, [(7, 5), (5,), ()])
    device = [cuda.to_device(p) for p in host]
    gpu = optimizer(name, device, **kwargs, **options, stochastic_rounding=True,
                    rounding_seed=11)
    cpu = optimizer(name, host, **kwargs, **options, stochastic_rounding=True,
                    rounding_seed=11)
    for step in range(1, 5):
        grads = grads_for(host, step)
        cpu.step(grads)
        gpu.step([cuda.to_device(g) for g in grads])
    for i, (d, h) in enumerate(zip(device, host)):
        result = d.copy_to_host()
        if SIMULATED:  # a GPU may contract to FMA, moving a rounding now and then
            assert result.tobytes() == h.tobytes(), f"param {i}"
        for key in cpu.state[i]:
            if key in cpu.state_names and SIMULATED:
                assert gpu.state[i][key].copy_to_host().tobytes() == \
                    cpu.state[i][key].tobytes(), f"{key} of {i}"
    assert gpu.state_dict()["rounding_seed"] == 11


PTX_SCRIPT = """
found = {}
for storage in (S("bfloat16", "bfloat16", False, stochastic=True),
                S("float16", "float16", False, stochastic=True),
                S("native", "bfloat16", False, stochastic=True),
                S("float16", "bfloat16", True, stochastic=True)):
    for name in _math.KERNELS:
        found[name + " " + _codecs.tag(storage)] = sum(
            ".f64" in l for l in update_ptx(name, storage).splitlines())
print(json.dumps(found))
"""


def test_stochastic_kernels_compile_to_ptx_in_float32():
    """Every applier with stochastic stores compiles for a GPU (NVVM, no GPU needed) without a
    float64 instruction."""
    found = ptx.run(PTX_SCRIPT)
    from numba_opt import _math
    assert len(found) == 4 * len(_math.KERNELS)  # every variant, in four storages
    assert all(lines == 0 for lines in found.values()), found
