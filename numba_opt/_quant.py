"""Blockwise 8-bit state: the quantization rules shared by the CPU and CUDA kernels.

``state_dtype="int8"`` keeps each state buffer of a param (of at least ``MIN_SIZE`` elements) as
one byte per element plus one float32 scale per block of ``BLOCK`` elements, as bitsandbytes'
8-bit optimizers do (Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization").  A
byte is an index into a 256-entry *dynamic* map of values in [-1, 1] (``dynamic_map``): an
exponent-like decade (10^-6 .. 1) then a linear fraction, so small values keep relative
precision.  Moments that may be negative use the signed map; running averages of squares (and
the other non-negative states, ``NONNEGATIVE``) the unsigned one, which spends the sign's bit on
precision.  The scale of a block is the largest magnitude in it (its *absmax*), so every stored
value is ``map[code] * absmax`` and the largest one is exact.

A step dequantizes a block, runs the unchanged ``_math`` rule on the float32 values, and stores
them back requantized with the block's new absmax: the param update uses the unrounded moments,
and only what is carried to the next step is rounded.  A non-finite state value makes its
block's absmax inf or NaN, so the whole block reads back as NaN (as a NaN grad poisons a float
state, here in blocks of 256).

The rules below are what the kernels compile; the host-side map and tables are NumPy.
"""
import numpy as np
from numba import njit

from . import _codecs

BLOCK = 256         # elements per absmax scale
MIN_SIZE = 4096     # params with fewer elements keep float32 state (bitsandbytes' min_8bit_size)
CODE = np.dtype(np.uint8)
SCALE = np.dtype(np.float32)
DECADES = 7         # 10^-6 .. 10^0

#: the state buffers that never go negative: they use the unsigned map
NONNEGATIVE = frozenset({"exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum", "exp_inf",
                         "acc_delta", "step_size"})


def _decade_values(signed):
    """Per decade d = 0..6 (values 10^(d-6) * [0.1, 1]), its codes' magnitudes in float64: the
    midpoints of an even split of [0.1, 1] into 2^d parts (signed) or 2^(d+1) (unsigned)."""
    out = []
    for d in range(DECADES):
        parts = 2 ** d if signed else 2 ** (d + 1)
        midpoints = 0.1 + 0.9 * (np.arange(parts) + 0.5) / parts
        out.append(10.0 ** (d - (DECADES - 1)) * midpoints)
    return out


def dynamic_map(signed):
    """The 256 values a code stands for, sorted, float32: 0, 1 and 254 others (127 of each sign
    for the signed map, so its most negative value is -0.993 and -1 is not among them)."""
    magnitudes = np.concatenate(_decade_values(signed))
    values = np.concatenate([magnitudes, -magnitudes]) if signed else magnitudes
    values = np.concatenate([values, [0.0, 1.0]])
    assert values.size == 256
    return np.sort(values).astype(np.float32)


SIGNED_MAP = dynamic_map(True)
UNSIGNED_MAP = dynamic_map(False)


# How a value finds its code.  The codes of a map fall into classes: zero, the seven decades and
# one.  Eight compares against the midpoints between neighbouring classes pick the class, whose
# codes are evenly spaced, so one multiply-subtract and a truncation give the nearest one
# (ties within float32 rounding of a midpoint may go either way).  The class constants are
# selected, not looked up: the chain of selects vectorizes without gathers (2.3x faster than a
# table read per value, and the quantization is most of an int8 step's arithmetic).
def _class_tables(signed):
    """(thresholds between classes; per class: the affine map from a magnitude to its fraction
    index, the last fraction index, the magnitude index of its first code)."""
    decades = _decade_values(signed)
    classes = ([np.zeros(1)] + [v.astype(np.float32).astype(np.float64) for v in decades]
               + [np.ones(1)])
    thresholds = [(classes[c][-1] + classes[c + 1][0]) / 2 for c in range(len(classes) - 1)]
    scale, offset = [0.0], [0.0]
    for d, values in enumerate(decades):
        unit = 10.0 ** (d - (DECADES - 1))  # code k of decade d: unit * (0.1 + 0.9 (k + .5) / n)
        scale.append(values.size / (0.9 * unit))
        offset.append(0.1 * values.size / 0.9)
    scale.append(0.0)
    offset.append(0.0)
    counts = np.array([c.size for c in classes])
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return (np.array(thresholds, np.float32), np.array(scale, np.float32),
            np.array(offset, np.float32), (counts - 1).astype(np.float32),
            first.astype(np.int32))


SIGNED_CLASSES = _class_tables(True)
UNSIGNED_CLASSES = _class_tables(False)
_S_THRESHOLDS, _S_SCALE, _S_OFFSET, _S_LAST, _S_FIRST = SIGNED_CLASSES
_U_THRESHOLDS, _U_SCALE, _U_OFFSET, _U_LAST, _U_FIRST = UNSIGNED_CLASSES
_SIGNED_ZERO = np.int32(np.flatnonzero(SIGNED_MAP == 0)[0])  # magnitudes 0..128 around it
_ZERO32 = np.float32(0)

_rule = njit(inline="always", error_model="numpy")


@_rule
def _magnitude_index(magnitude, thresholds, scale, offset, last, first):
    """The position, among the sorted non-negative values of a map, of the one nearest to
    ``magnitude`` (a non-negative float32 at most 1), from the map's class tables."""
    s, o, most, base = scale[0], offset[0], last[0], first[0]
    for j in range(thresholds.size):  # unrolled into selects
        if magnitude >= thresholds[j]:
            s, o, most, base = scale[j + 1], offset[j + 1], last[j + 1], first[j + 1]
    return base + np.int32(min(max(magnitude * s - o, _ZERO32), most))


@_rule
def _normalized(value, absmax):
    """``value`` over its block's absmax, in [-1, 1]: times the reciprocal, as bitsandbytes does
    (a divide per value cost more than the rest of the quantization); 0 in an all-zero block."""
    return value * (np.float32(1) / absmax) if absmax > _ZERO32 else _ZERO32


@_rule
def quantize_signed(value, absmax):
    """The code of the signed-map value nearest to ``value / absmax`` (in [-1, 1]); NaN gives
    some code (its block's absmax is NaN, which is what it reads back as, see above)."""
    y = _normalized(value, absmax)
    m = _magnitude_index(abs(y), _S_THRESHOLDS, _S_SCALE, _S_OFFSET, _S_LAST, _S_FIRST)
    return np.uint8(_SIGNED_ZERO + m if y >= _ZERO32 else _SIGNED_ZERO - min(m, _SIGNED_ZERO))


@_rule
def quantize_unsigned(value, absmax):
    """The code of the unsigned-map value nearest to ``value / absmax`` (in [0, 1]; below 0
    gives the code of 0)."""
    y = _normalized(value, absmax)
    return np.uint8(_magnitude_index(y if y > _ZERO32 else _ZERO32, _U_THRESHOLDS, _U_SCALE,
                                     _U_OFFSET, _U_LAST, _U_FIRST))


@_rule
def dequantize_signed(code, absmax):
    return SIGNED_MAP[code] * absmax


@_rule
def dequantize_unsigned(code, absmax):
    return UNSIGNED_MAP[code] * absmax


# A block's absmax is found as the largest bit pattern of |value|: for floats of one sign the
# bits order as the values do, NaN's patterns lie above inf's (so a NaN wins), and an integer
# max vectorizes on the CPU and is an atomic on the GPU, where a float max is neither.
NO_MAGNITUDE = np.uint32(0)


@_rule
def magnitude_bits(value):
    return _codecs.float32_bits(abs(np.float32(value)))


@_rule
def from_bits(bits):
    return _codecs.float32_from_bits(np.uint32(bits))


#: signed? -> (quantize, dequantize)
RULES = {True: (quantize_signed, dequantize_signed),
         False: (quantize_unsigned, dequantize_unsigned)}


def is_signed(state_name):
    return state_name not in NONNEGATIVE


def blocks(size):
    """How many absmax scales a state of ``size`` elements has."""
    return -(-size // BLOCK)


# ------------------------------------------------------------------------------ host side
def quantize_array(values, signed):
    """Codes and absmax of a float array (a state_dict's float32 state, or a fill): NumPy, the
    same arithmetic as the kernels (the tests compare them)."""
    values = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    n = values.size
    padded = np.zeros(blocks(n) * BLOCK, np.float32)
    padded[:n] = values
    absmax = np.abs(padded.reshape(-1, BLOCK)).max(axis=1) if n else np.zeros(0, np.float32)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        reciprocal = np.where(absmax > 0, np.float32(1) / absmax, np.float32(0))
        y = (padded.reshape(-1, BLOCK) * reciprocal[:, None].astype(np.float32)).reshape(-1)[:n]
    quantize = _quantize_numpy(signed)
    return quantize(y), absmax.astype(np.float32)


def _quantize_numpy(signed):
    """``quantize_signed`` / ``quantize_unsigned`` over a NumPy array: the same float32
    arithmetic, so the same codes."""
    thresholds, scale, offset, last, first = SIGNED_CLASSES if signed else UNSIGNED_CLASSES

    def magnitude_index(magnitude):
        c = (magnitude[..., None] >= thresholds).sum(axis=-1)
        k = np.minimum(np.maximum(magnitude * scale[c] - offset[c], np.float32(0)), last[c])
        return first[c] + k.astype(np.int32)

    def quantize(y):
        y = np.asarray(y, np.float32)
        if not signed:
            return magnitude_index(np.maximum(y, np.float32(0))).astype(np.uint8)
        m = magnitude_index(np.abs(y))
        zero = int(_SIGNED_ZERO)
        return np.where(y >= 0, zero + m, zero - np.minimum(m, zero)).astype(np.uint8)
    return quantize


def dequantize_array(codes, absmax, signed):
    """The float32 values of codes and their blocks' absmax (any shape; flat order)."""
    codes = np.asarray(codes).reshape(-1)
    table = SIGNED_MAP if signed else UNSIGNED_MAP
    scales = np.repeat(np.asarray(absmax, np.float32), BLOCK)[:codes.size]
    return table[codes] * scales
