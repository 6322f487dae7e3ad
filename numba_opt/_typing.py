"""Type aliases of the public API's hints (``numba_opt`` ships ``py.typed``)."""
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union

import numpy as np

from .flat import FlatParams

#: a float32/float64/bfloat16/float16 NumPy array, or a CUDA array (a numba device array or
#: anything with ``__cuda_array_interface__``): no single class covers them
Array = Any
#: a hyper-parameter value: a number, or a 0-d array whose value is read at every step
Real = Union[float, np.floating, np.ndarray]
Betas = Union[tuple[Real, Real], list[Real]]
Device = Literal["auto", "cpu", "cuda"]
#: a list of arrays, a dict name -> array, a list of group dicts ``{"params": [...], ...}``,
#: or a FlatParams
Params = Union[Sequence[Array], Mapping[str, Array], Sequence[Mapping[str, Any]], FlatParams]
#: one grad per param, in the params' structure (None skips its param)
Grads = Union[Sequence[Union[Array, None]], Mapping[str, Union[Array, None]]]
