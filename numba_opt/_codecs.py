"""Storage codecs: how one element of a param, grad or state array becomes the float the update
rules compute with, and how the result is stored back.

float32 and float64 arrays are read and written as they are (the ``native`` codec).  bfloat16
(``ml_dtypes.bfloat16``) and float16 arrays reach the kernels as uint16 views of their bits (numba
knows neither type on the CPU, and a view is never a copy); their elements are widened to float32
when loaded (exact) and rounded to the nearest float16 / bfloat16, ties to even, when stored.  So
the rules in ``_math`` compute in float32 and never change, and since both backends bind these
same functions (``_math.applier``), a CPU step and a CUDA step round the same way, bit for bit.

Each kernel is compiled for one ``Storage``: the codec of its param and grad, the codec of its
state buffers, whether it keeps a float32 master copy of the param (``master_weights``) and
whether its bfloat16 / float16 stores round stochastically (``stochastic_rounding``).  What a
later codec needs is another entry here and another ``Storage`` field, not another copy of the
loops.
"""
from collections import namedtuple

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

try:  # only needed by people with bfloat16 arrays, who have it
    import ml_dtypes
    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes is installed with numpy-based ML stacks
    ml_dtypes, BFLOAT16 = None, None

FLOAT16 = np.dtype(np.float16)
FLOAT32 = np.dtype(np.float32)
FLOAT64 = np.dtype(np.float64)
BITS = np.dtype(np.uint16)  # what the kernels see of a bfloat16 or float16 array

_codec = njit(inline="always", error_model="numpy")


# --------------------------------------------------------------- 32-bit integer operations
# Intrinsics, because numba widens uint32 arithmetic to 64 bits, which halves the vector width
# and made a bfloat16 Adam step 3x slower than with these; and because a scalar
# ``x.view(np.uint32)`` compiles on the CPU but not for CUDA.  They take uint32 (and float32)
# only: a float64 leaking into a float32 kernel is a typing error, not a silent double rounding.
def _uint32_op(build):
    @intrinsic
    def op(typingctx, a, b):
        if a != types.uint32 or b != types.uint32:
            return None

        def codegen(context, builder, signature, args):
            return build(builder, *args)
        return types.uint32(types.uint32, types.uint32), codegen
    return op


_add = _uint32_op(lambda b, x, y: b.add(x, y))  # modulo 2**32
_sub = _uint32_op(lambda b, x, y: b.sub(x, y))
_and = _uint32_op(lambda b, x, y: b.and_(x, y))
_or = _uint32_op(lambda b, x, y: b.or_(x, y))
_xor = _uint32_op(lambda b, x, y: b.xor(x, y))
_shl = _uint32_op(lambda b, x, y: b.shl(x, y))
_shr = _uint32_op(lambda b, x, y: b.lshr(x, y))
_mul = _uint32_op(lambda b, x, y: b.mul(x, y))  # modulo 2**32


@intrinsic
def float32_bits(typingctx, value):
    """The bits of a float32, as a uint32."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.uint32(types.float32), codegen


@intrinsic
def float32_from_bits(typingctx, bits):
    """The float32 whose bits are the uint32 ``bits``."""
    if bits != types.uint32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.uint32), codegen


@intrinsic
def _float32_to_uint32(typingctx, value):
    """A float32 holding a whole number in [0, 2**32) as that uint32 (the rounding salt)."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.fptoui(args[0], ir.IntType(32))
    return types.uint32(types.float32), codegen


# Constants as uint32 globals (numba types a global NumPy scalar by its dtype).
_U = np.uint32
_SIGN = _U(0x80000000)
_F32_QUIET = _U(0x00400000)  # the quiet bit of a float32 NaN
_ZERO, _ONE, _SIXTEEN, _THIRTEEN, _TWENTY_THREE = _U(0), _U(1), _U(16), _U(13), _U(23)
_FIFTEEN, _NINETEEN = _U(15), _U(19)


# -------------------------------------------------------------------------------- native
@_codec
def native_load(value):
    return value


@_codec
def native_store(value):
    return value


# ------------------------------------------------------------------------------ bfloat16
_BF16_QUIET = _U(0x0040)
_BF16_HALF = _U(0x7FFF)


@_codec
def bfloat16_load(bits):
    """bfloat16 bits -> float32: the top half of a float32 (exact, NaN payloads kept)."""
    return float32_from_bits(_shl(_U(bits), _SIXTEEN))


@_codec
def bfloat16_store(value):
    """float32 -> bfloat16 bits, round to nearest, ties to even: add 0x7fff plus the lowest
    kept bit, then truncate (overflow carries into the exponent and gives inf, as it should).
    NaN stays NaN: its top payload bits with the quiet bit set (rounding could make it inf)."""
    u = float32_bits(value)
    high = _shr(u, _SIXTEEN)
    rounded = _shr(_add(_add(u, _BF16_HALF), _and(high, _ONE)), _SIXTEEN)
    # value != value: one float compare, where testing the bits took three instructions
    return np.uint16(_or(high, _BF16_QUIET) if value != value else rounded)


# ------------------------------------------------------------------------------- float16
# After F. Giesen's half <-> float conversions (public domain, "half_to_float_fast4" and
# "float_to_half_fast3_rtne"), written with selects so the loops still vectorize.
_H_EXP = _U(0x7C00 << 13)            # a float16 exponent field, moved to float32's place
_H_REBIAS = _U((127 - 15) << 23)     # float32 bias minus float16 bias, in the exponent field
_H_INF_REBIAS = _U((128 - 16) << 23)  # more of it for inf / NaN: exponent all ones
_H_MAGIC = _U(113 << 23)             # 2**-14, the smallest normal float16, as float32 bits
_H_ABS_MANT = _U(0x7FFF)
_H_MAX = _U((127 + 16) << 23)        # 2**16: from here on inf (or NaN)
_H_DENORM_MAGIC = _U(((127 - 15) + (23 - 10) + 1) << 23)  # 0.5: aligns subnormal mantissas
_H_ROUND = _U((((15 - 127) << 23) + 0xFFF) & 0xFFFFFFFF)  # rebias, plus half an ulp less one
_H_INF, _H_NAN = _U(0x7C00), _U(0x7E00)
_H_MANT = _U(0x3FF)


@_codec
def float16_load_integer(bits):
    """float16 bits -> float32 (exact: subnormals renormalised; NaN quieted, its payload kept,
    as the processors' conversions do)."""
    h = _U(bits)
    shifted = _shl(_and(h, _H_ABS_MANT), _THIRTEEN)
    exponent = _and(shifted, _H_EXP)
    normal = _add(shifted, _H_REBIAS)
    # a subnormal (or zero) has exponent 0: give it 2**-14's exponent and subtract 2**-14 in
    # float32 arithmetic, which is exact and leaves the value normalised
    subnormal = float32_bits(float32_from_bits(_add(normal, _shl(_ONE, _TWENTY_THREE)))
                             - float32_from_bits(_H_MAGIC))
    quiet = _F32_QUIET if shifted > _H_EXP else _ZERO  # exponent all ones, mantissa not 0
    if exponent == _H_EXP:
        magnitude = _or(_add(normal, _H_INF_REBIAS), quiet)
    elif exponent == _ZERO:
        magnitude = subnormal
    else:
        magnitude = normal
    return float32_from_bits(_or(magnitude, _shl(_xor(h, _and(h, _H_ABS_MANT)), _SIXTEEN)))


@_codec
def float16_store_integer(value):
    """float32 -> float16 bits, round to nearest, ties to even; beyond the float16 range inf,
    below it subnormals then signed zero; NaN stays NaN (quiet, top payload bits kept)."""
    u = float32_bits(value)
    sign = _and(u, _SIGN)
    u = _xor(u, sign)
    # subnormal results: adding 0.5 lines the 10 kept bits up at the bottom of the mantissa and
    # the float32 addition itself rounds to nearest even
    subnormal = _sub(float32_bits(float32_from_bits(u) + float32_from_bits(_H_DENORM_MAGIC)),
                     _H_DENORM_MAGIC)
    # normal results: rebias the exponent, add half an ulp (less one, plus the lowest kept bit:
    # ties to even), truncate; a carry out of the mantissa bumps the exponent, as it should
    normal = _shr(_add(_add(u, _H_ROUND), _and(_shr(u, _THIRTEEN), _ONE)), _THIRTEEN)
    if value != value:
        magnitude = _or(_H_NAN, _and(_shr(u, _THIRTEEN), _H_MANT))
    elif u >= _H_MAX:
        magnitude = _H_INF
    elif u < _H_MAGIC:
        magnitude = subnormal
    else:
        magnitude = normal
    return np.uint16(_or(magnitude, _shr(sign, _SIXTEEN)))


# The same conversions by the processor's own instructions (x86 F16C, any aarch64, and GPUs):
# one instruction each way, where the integer versions take about 25.  IEEE conversions, so
# they round (to nearest even) and keep NaN payloads exactly as the integer versions do; a test
# runs both on every bit pattern.  Used where numba's CPU target has them: elsewhere LLVM would
# call a conversion routine that numba's JIT may not link.
@intrinsic
def _float16_to_float32(typingctx, bits):
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(types.uint16), codegen


@intrinsic
def _float32_to_float16(typingctx, value):
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))
    return types.uint16(types.float32), codegen


@_codec
def float16_load_hardware(bits):
    return _float16_to_float32(np.uint16(bits))


@_codec
def float16_store_hardware(value):
    return _float32_to_float16(value)


def _has_float16_instructions():
    """Whether numba's CPU target converts float16 in hardware (its own feature choice)."""
    import platform
    from llvmlite import binding
    from numba.core import config
    if platform.machine().lower() in ("aarch64", "arm64"):
        return True
    features = config.CPU_FEATURES
    if features is None:
        features = binding.get_host_cpu_features().flatten()
    return "+f16c" in features.split(",")


FLOAT16_IN_HARDWARE = _has_float16_instructions()
if FLOAT16_IN_HARDWARE:
    float16_load, float16_store = float16_load_hardware, float16_store_hardware
else:
    float16_load, float16_store = float16_load_integer, float16_store_integer

# --------------------------------------------------------------------- stochastic rounding
# ``stochastic_rounding=True``: a value stored in bfloat16 or float16 rounds up (away from zero)
# with probability the fraction of an ulp it lies past its lower neighbour (towards zero), so
# the stored value equals the float32 one in expectation, and updates below half an ulp
# accumulate instead of vanishing (torchao's bfloat16 stochastic rounding: add random bits
# below the kept ones, then truncate).  The random bits are a hash of the float32's bits and a
# per-step salt: deterministic, whatever the loop, thread or device; equal values round alike
# within a step.  The salt is a whole number below 2**24 (exact in the float32 scalars; see
# ``rounding_salt``).  Where the stochastic result would be inf or NaN (NaN, inf, or a finite
# value rounded up past the largest finite number) the nearest-even result is stored instead:
# NaN stays NaN, inf stays inf, and a finite value becomes inf only where rounding to nearest
# overflows too (and then with the probability of rounding up).
_GOLDEN = _U(0x9E3779B9)
_HASH_1, _HASH_2 = _U(0x7FEB352D), _U(0x846CA68B)  # C. Wellons' "lowbias32" hash
_BF16_EXP = _U(0x7F80)
_H_DROPPED = _U(0xFFFFE000)  # the float32 bits a float16 keeps: it drops the 13 lowest


@_codec
def rounding_bits(u, salt):
    """32 random bits from the uint32 ``u`` (a float32's bits) and the float32 ``salt``."""
    x = _xor(u, _mul(_float32_to_uint32(salt), _GOLDEN))
    x = _mul(_xor(x, _shr(x, _SIXTEEN)), _HASH_1)
    x = _mul(_xor(x, _shr(x, _FIFTEEN)), _HASH_2)
    return _xor(x, _shr(x, _SIXTEEN))


@_codec
def bfloat16_store_stochastic(value, salt):
    """float32 -> bfloat16 bits, rounded stochastically: 16 random bits added below the kept
    ones, then truncated (a carry bumps the exponent, as it should)."""
    u = float32_bits(value)
    rounded = _shr(_add(u, _shr(rounding_bits(u, salt), _SIXTEEN)), _SIXTEEN)
    if value != value or _and(rounded, _BF16_EXP) == _BF16_EXP:
        return bfloat16_store(value)
    return np.uint16(rounded)


@_codec
def float16_store_stochastic(value, salt):
    """float32 -> float16 bits, rounded stochastically: 13 random bits added below the 10
    mantissa bits a normal float16 keeps, then truncated, and the result (now a float16 value)
    converted exactly.  Below 2**-14 float16 is a grid of 2**-24 steps: on 2**-14 + |value|
    that grid is those same top 10 mantissa bits (the float32 sum keeps 13 bits under the grid,
    rounding what lies below them to nearest), and subtracting 2**-14 again is exact."""
    u = float32_bits(value)
    sign = _and(u, _SIGN)
    magnitude = _xor(u, sign)
    smallest_normal = float32_from_bits(_H_MAGIC)
    subnormal = magnitude < _H_MAGIC
    aligned = float32_bits(float32_from_bits(magnitude) + smallest_normal) if subnormal \
        else magnitude
    kept = _and(_add(aligned, _shr(rounding_bits(u, salt), _NINETEEN)), _H_DROPPED)
    kept = float32_bits(float32_from_bits(kept) - smallest_normal) if subnormal else kept
    rounded = float16_store(float32_from_bits(_or(kept, sign)))
    if value != value or _and(_U(rounded), _H_INF) == _H_INF:
        return float16_store(value)
    return rounded


STOCHASTIC_STORES = {"bfloat16": bfloat16_store_stochastic,
                     "float16": float16_store_stochastic}
ROUNDING_SEED = "rounding_seed"  # the state_dict (and checkpoint) entry of the seed

_SALT_BITS = 24
_MASK64 = (1 << 64) - 1


def rounding_salt(seed, step):
    """The salt of step number ``step`` under ``seed`` (ints): a whole number below 2**24, so
    exact in the float32 scalars (splitmix64's finaliser on seed and step, top 24 bits)."""
    x = (seed * 0x9E3779B97F4A7C15 + step) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) >> (64 - _SALT_BITS)


CODECS = {"native": (native_load, native_store), "bfloat16": (bfloat16_load, bfloat16_store),
          "float16": (float16_load, float16_store)}


def _python_codec(load, store):
    return (lambda bits: np.float32(load(bits))), (lambda value: store(np.float32(value)))


def _same(value):
    return value


# The codecs for kernels run as Python (numba's CUDA simulator): a compiled function called
# from Python returns a float32 result as a Python float, which a compiled rule would then type
# as float64 (and compute in float64).  Each value is a float32 (or its bits), so np.float32 is
# exact; the native codec passes the arrays' own NumPy scalars through untouched.
PYTHON_CODECS = {codec: _python_codec(*CODECS[codec]) if codec != "native" else (_same, _same)
                 for codec in CODECS}


def _python_stochastic(store):
    return lambda value, salt: store(np.float32(value), np.float32(salt))


PYTHON_STOCHASTIC_STORES = {codec: _python_stochastic(store)
                            for codec, store in STOCHASTIC_STORES.items()}


# ------------------------------------------------------------------------------ the host side
#: The codecs one kernel is compiled for: its param's and grad's (they share a dtype), its state
#: buffers', and whether it keeps a float32 master copy of the param as its last buffer.
#: With ``state`` 'int8' (blockwise 8-bit, ``_quant``), ``signs`` says which of the kernel's
#: states use the signed map (the rest the unsigned one); () for every other codec.
#: ``stochastic``: its bfloat16 / float16 stores round stochastically (``STOCHASTIC_STORES``).
Storage = namedtuple("Storage", "param state master signs stochastic", defaults=((), False))
NATIVE = Storage("native", "native", False)


def tag(storage):
    """A short name for ``storage`` in kernel names: 'native', 'bfloat16_native_master',
    'native_int8_su', 'bfloat16_bfloat16_sr' ..."""
    signs = "".join("s" if signed else "u" for signed in storage.signs)
    return "native" if storage == NATIVE else "_".join(
        [storage.param, storage.state] + ["master"] * storage.master + [signs] * bool(signs)
        + ["sr"] * storage.stochastic)


#: what ``state_dtype=`` accepts, by name; None: the dtype the update works on (the param's, or
#: float32 with master weights)
STATE_DTYPES = ("float32", "bfloat16", "int8")
INT8 = "int8"  # blockwise: uint8 codes and float32 scales per 256 elements (_quant)


def codec_of(dtype):
    """The codec of arrays of ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype == FLOAT16:
        return "float16"
    if BFLOAT16 is not None and dtype == BFLOAT16:
        return "bfloat16"
    return "native"


def is_low_precision(dtype):
    return codec_of(dtype) != "native"


def compute_dtype(dtype):
    """The dtype the rules compute in for params of ``dtype``: float32 unless float64."""
    return FLOAT64 if np.dtype(dtype) == FLOAT64 else FLOAT32


def bits(array):
    """What a kernel takes of a flat array: a uint16 view of bfloat16 or float16 bits (a view of
    the same memory, NumPy or CUDA), the array itself otherwise."""
    return array.view(BITS) if codec_of(array.dtype) != "native" else array


def encode(codec, value):
    """``value`` stored by ``codec``, as the kernels store it (for fills of new buffers)."""
    if codec == "native":
        return value
    return CODECS[codec][1](np.float32(value))


def state_dtype_option(value):
    """The ``state_dtype`` option checked: None, 'float32', 'bfloat16' or 'int8' (a NumPy dtype
    or ``ml_dtypes.bfloat16`` naming them is accepted too; 'int8' is blockwise 8-bit state,
    whatever dtype names it)."""
    if value is None:
        return None
    if isinstance(value, str):
        name = value
    else:
        try:
            name = np.dtype(value).name
        except TypeError:
            raise TypeError(f"state_dtype must be None or one of {STATE_DTYPES}, got "
                            f"{value!r}") from None
    if name not in STATE_DTYPES:
        raise ValueError(f"state_dtype must be None or one of {STATE_DTYPES}, got {value!r}")
    if name == "bfloat16" and BFLOAT16 is None:
        raise ValueError("state_dtype='bfloat16' needs the ml_dtypes package (pip install "
                         "ml_dtypes), which provides NumPy's bfloat16 arrays")
    return name


def storage(param_dtype, state_dtype, master_weights, label="param", stochastic_rounding=False):
    """(the Storage of a kernel for params of ``param_dtype``, the dtype of their state buffers)
    under the optimizer options ``state_dtype`` (checked, a name or None), ``master_weights``
    and ``stochastic_rounding`` (marked only where the kernel stores bfloat16 or float16); a
    TypeError naming ``label`` for a combination not offered."""
    param_dtype = np.dtype(param_dtype)
    low = is_low_precision(param_dtype)
    master = bool(master_weights) and low
    if state_dtype is None:
        state = FLOAT32 if master else param_dtype
    elif param_dtype == FLOAT64:
        # a float64 update stored in float32 or bfloat16 rounds twice (through float32) and needs
        # float64 codecs: not offered until someone needs it
        raise TypeError(f"state_dtype={state_dtype!r} is for float32, bfloat16 and float16 "
                        f"params, but {label} is float64 (its state stays float64: leave "
                        "state_dtype=None, or make an optimizer per dtype)")
    elif state_dtype == INT8:
        return Storage(codec_of(param_dtype), INT8, master,
                       stochastic=bool(stochastic_rounding) and low and not master), \
            np.dtype(np.uint8)
    else:
        state = FLOAT32 if state_dtype == "float32" else BFLOAT16
    stochastic = bool(stochastic_rounding) and ((low and not master) or is_low_precision(state))
    return Storage(codec_of(param_dtype), codec_of(state), master, stochastic=stochastic), state
