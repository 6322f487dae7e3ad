"""numba_opt: torch.optim-style optimizers for NumPy (and CUDA) arrays, run by Numba kernels.

    import numba_opt as nopt
    opt = nopt.Adam([W, b], lr=1e-3)
    opt.step([dW, db])          # updates W and b in place

The CUDA backend is imported only when CUDA arrays (or device="cuda") are used.  How the CPU
kernels use threads, and what importing numba_opt sets for that: ``numba_opt.threads``.
"""
from . import threads

threads.configure_openmp()  # before any parallel kernel loads numba's OpenMP runtime

from . import functional, lr_scheduler  # noqa: E402
from .checkpoint import load, save  # noqa: E402
from .flat import FlatParams  # noqa: E402
from .optim import (  # noqa: E402
    ASGD, SGD, Adadelta, Adafactor, Adagrad, Adam, Adamax, AdamW, Lion, Muon, NAdam, Optimizer,
    RAdam, RMSProp, RMSprop, Rprop)

__version__ = "0.1.0"
__all__ = ["FlatParams", "Optimizer", "SGD", "RMSprop", "RMSProp", "Adam", "AdamW", "Adagrad",
           "Adamax", "RAdam", "NAdam", "Adadelta", "Rprop", "ASGD", "Lion", "Adafactor", "Muon",
           "functional", "lr_scheduler", "save", "load", "threads"]
