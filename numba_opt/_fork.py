"""A fork waits for numba_opt's work in other threads, so the child starts consistent.

A lock held at ``os.fork()`` stays held forever in the child (the thread that held it is not
copied), and an optimizer forked mid-step is half updated.  So before a fork (``os.fork``,
multiprocessing's 'fork' start method; not ``subprocess``, which runs no fork hooks) the forking
thread takes, in the order other threads take them: every live optimizer's lock (a step,
snapshot or load in progress finishes), the lock of the parallel loops, and numba's compiler lock
(a compilation in progress finishes: the child may need the same kernels).  Both processes then
release them.
"""
import os
import sys
import weakref

from numba.core import compiler_lock

_optimizers = weakref.WeakSet()
_held = []  # the locks the forking thread took, released after the fork in both processes


def track(optimizer):
    """Hold ``optimizer._lock`` across every fork from now on (it is forgotten when freed)."""
    _optimizers.add(optimizer)


def _locks():
    locks = [optimizer._lock for optimizer in list(_optimizers)]
    cpu = sys.modules.get("numba_opt._cpu")
    if cpu is not None:
        locks.append(cpu._PARALLEL_LOCK)
    locks.append(compiler_lock.global_compiler_lock)
    return locks


def _before():
    for lock in _locks():
        lock.acquire()
        _held.append(lock)


def _after():
    while _held:
        _held.pop().release()


os.register_at_fork(before=_before, after_in_parent=_after, after_in_child=_after)
