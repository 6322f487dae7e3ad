"""How numba_opt's CPU kernels use threads, and how to change it.

A training loop alternates the optimizer step with the user's own NumPy/BLAS work, and the
machine may be running other programs.  Two things keep the step from slowing either down:

1. **numba's OpenMP pool sleeps between parallel regions.**  GNU OpenMP's threads spin for
   milliseconds after each region by default; in a training loop they spin while BLAS runs the
   forward pass on the same cores (measured here: a 7 ms matmul took 10 ms right after a step).
   When numba_opt is imported before numba's OpenMP runtime is loaded and you have set none of
   ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``, ``KMP_BLOCKTIME``, it loads that runtime with
   ``OMP_WAIT_POLICY=PASSIVE`` and then removes the variable again, so no other OpenMP library
   (torch's, say) and no child process sees it.  Set any of the three yourself and numba_opt
   leaves OpenMP alone (``OMP_WAIT_POLICY=active`` brings the spinning back).
2. **Each kernel call site times itself.**  A call over at least ``SERIAL_BELOW`` elements runs
   the parallel loop or its serial twin, whichever has been faster lately at that call site,
   and now and then tries the other again (less often while it keeps losing).  On an idle
   machine big arrays run in parallel; beside a busy process, or where waking the pool costs
   more than it saves, the serial loop runs.  Both loops compute bit-identical results, so the
   choice never changes a trajectory.  ``set_loops("parallel")`` or ``"serial"`` (or the
   environment variable ``NUMBA_OPT_LOOPS``) fixes the choice; ``NUMBA_NUM_THREADS`` or
   ``numba.set_num_threads`` limit the pool as usual.

``info()`` says what is in force.  numba_opt never changes the BLAS thread pool.
"""
import os
import sys

WAIT_POLICY_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
LOOP_CHOICES = ("timed", "parallel", "serial")
LOOPS_VARIABLE = "NUMBA_OPT_LOOPS"

_openmp = "not configured"  # what configure_openmp() did, for info()


def _numba_openmp_loaded():
    """Whether numba's OpenMP pool module, or the system libgomp it links, is loaded already
    (its settings were read when it loaded)."""
    if "numba.np.ufunc.omppool" in sys.modules:
        return True
    try:
        with open("/proc/self/maps") as maps:
            return any("/libgomp.so" in line for line in maps)
    except OSError:
        return False


def configure_openmp():
    """Load numba's OpenMP runtime with a passive wait policy, unless the user chose one or it is
    loaded already.  Called once when numba_opt is imported; the environment is left as it was."""
    global _openmp
    chosen = {name: os.environ[name] for name in WAIT_POLICY_VARIABLES if name in os.environ}
    if chosen:
        _openmp = "left to you: " + ", ".join(f"{k}={v}" for k, v in chosen.items())
        return
    if _numba_openmp_loaded():
        _openmp = ("unchanged: numba's OpenMP runtime was loaded before numba_opt (import "
                   "numba_opt first, or set OMP_WAIT_POLICY=passive yourself)")
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        from numba.np.ufunc import omppool  # noqa: F401  (libgomp reads the variable now)
        _openmp = "OMP_WAIT_POLICY=PASSIVE for numba's OpenMP pool (set by numba_opt)"
    except ImportError:  # no OpenMP runtime: numba uses TBB or its workqueue, which never spin
        _openmp = "no OpenMP runtime for numba; nothing to set"
    finally:
        del os.environ["OMP_WAIT_POLICY"]


def set_loops(choice):
    """'timed' (the default: each call site runs whichever loop has been faster there),
    'parallel' or 'serial' (always that loop for arrays of at least ``SERIAL_BELOW`` elements;
    smaller ones always run serially).  Takes effect at the next step."""
    if choice not in LOOP_CHOICES:
        raise ValueError(f"loops must be one of {LOOP_CHOICES}, got {choice!r}")
    from . import _cpu
    _cpu.LOOPS = choice


def _loops_from_environment():
    choice = os.environ.get(LOOPS_VARIABLE, "timed")
    if choice not in LOOP_CHOICES:
        raise ValueError(f"{LOOPS_VARIABLE} must be one of {LOOP_CHOICES}, got {choice!r}")
    return choice


def info():
    """What is in force: numba's threading layer and thread count, the OpenMP wait policy, the
    loop choice and the size below which loops always run serially."""
    import numba
    from . import _cpu
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "not started yet (starts at the first parallel loop)"
    return {"threading_layer": layer, "threads": numba.get_num_threads(), "openmp": _openmp,
            "loops": _cpu.LOOPS, "serial_below": _cpu.SERIAL_BELOW}
