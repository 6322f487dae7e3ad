"""Checks shared by the optimizer classes and the functional layer.

Every check raises before anything is modified, with a message that names the offending parameter.
TypeError: wrong kind of thing (not an array, wrong dtype, not a number); ValueError: right kind,
wrong value (shape, layout, read-only, out of range).
"""
import math
import numbers

import numpy as np

from . import _codecs, _interface, dispatch

# the dtypes of params (and their grads): float32 and float64 are updated in their own precision;
# bfloat16 (ml_dtypes) and float16 are computed in float32 and rounded when stored
FLOAT_DTYPES = tuple(d for d in (_codecs.FLOAT32, _codecs.FLOAT64, _codecs.BFLOAT16,
                                 _codecs.FLOAT16) if d is not None)


def is_array(obj):
    return isinstance(obj, np.ndarray) or dispatch.is_cuda_array(obj)


def data_span(array):
    """[start, end) of the bytes a contiguous array occupies (for aliasing checks)."""
    described = _interface.describe(array)
    return described.pointer, described.pointer + described.nbytes


def _require_array(obj, name):
    if not is_array(obj):
        raise TypeError(f"{name} must be a NumPy array or a CUDA array, got {type(obj).__name__}")
    if isinstance(obj, (np.matrix, np.ma.MaskedArray)):
        raise TypeError(f"{name} is a {type(obj).__name__}, whose reshaping and masking rules "
                        "differ from a plain ndarray's; pass np.asarray of it")


def check_param(array, name):
    _require_array(array, name)
    dtype = _interface.describe(array, name).dtype
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {dtype}; numba_opt updates float32, float64, "
                        "bfloat16 (ml_dtypes) or float16 arrays")
    c_contiguous, f_contiguous, readonly = _interface.layout(array)
    if not (c_contiguous or f_contiguous):
        raise ValueError(f"{name} is not contiguous; the update is in place, so pass the array "
                         "itself, not a strided view (np.ascontiguousarray would copy it)")
    if readonly:
        raise ValueError(f"{name} is read-only; the update is in place and needs a writeable array")


def check_like(array, param, name, param_name, writeable=False, dtype=None):
    """A gradient or state array must match its param exactly: shape, dtype (the param's, or
    ``dtype`` when given: a state buffer's) and memory order."""
    _require_array(array, name)
    described = _interface.describe(array, name)
    param_described = _interface.describe(param, param_name)
    if described.shape != param_described.shape:
        raise ValueError(f"{name} has shape {described.shape} but {param_name} has shape "
                         f"{param_described.shape}")
    if described.dtype != np.dtype(param_described.dtype if dtype is None else dtype):
        whose = (f"{param_name} has dtype {param_described.dtype}" if dtype is None
                 else f"the state is {np.dtype(dtype)}")
        raise TypeError(f"{name} has dtype {described.dtype} but {whose}; numba_opt does not "
                        "convert dtypes silently")
    c_contiguous, f_contiguous, readonly = _interface.layout(array)
    p_c, p_f, _ = _interface.layout(param)
    if not ((c_contiguous and p_c) or (f_contiguous and p_f)):
        raise ValueError(f"{name} is not contiguous in the same memory order as {param_name}")
    if writeable and readonly:
        raise ValueError(f"{name} is read-only")


def real(name, value):
    """A finite real number (bools are refused: lr=True is a bug, not 1.0).  A 0-d NumPy array
    of a real dtype counts as its number (where torch takes a tensor lr)."""
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "fiu":
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        value = float(value)
    except OverflowError:  # an int (or Fraction) beyond the float range
        raise ValueError(f"{name} must be finite, got a number too large for a float") \
            from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def non_negative(name, value):
    value = real(name, value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def in_range(name, value, low, high, high_inclusive=False):
    value = real(name, value)
    if not (low <= value < high or (high_inclusive and value == high)):
        closing = "]" if high_inclusive else ")"
        raise ValueError(f"{name} must be in [{low}, {high}{closing}, got {value}")
    return value


def unit_interval(name, value):
    return in_range(name, value, 0.0, 1.0, high_inclusive=True)


def flag(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def betas(name, value):
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a pair (beta1, beta2), got {value!r}")
    return (in_range(f"{name}[0]", value[0], 0.0, 1.0), in_range(f"{name}[1]", value[1], 0.0, 1.0))


def count(name, value, low=0):
    """An int >= low and below 2**63 (bools refused): a count the float arithmetic of step
    numbers (beta ** step) and int64 can hold."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if value >= 2 ** 63:
        raise ValueError(f"{name} must be < 2**63, got a larger int")
    return int(value)


def step_number(name, value):
    """A 1-based step count."""
    return count(name, value, low=1)
