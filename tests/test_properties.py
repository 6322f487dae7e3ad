"""Property-based tests (hypothesis): random optimizers, options, hyper-parameters, shapes,
dtypes, gradient scales and step counts.

- the CPU kernels agree with the float64 reference written from the equations;
- the parallel and the serial CPU loops agree bit for bit;
- the CUDA kernels (simulator, or a real GPU) agree with the CPU kernels;
- a run resumed from a state_dict, or from a checkpoint file, equals the uninterrupted run.

Gradient values come from NumPy's generator seeded by hypothesis (hypothesis picks the scale,
shape and seed, not adversarial values such as exact zeros).
"""
import inspect

import numpy as np
import pytest

import numba_opt as nopt
from cases import CASES
from reference import RULES

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def default_lr(name):
    return inspect.signature(getattr(nopt, name)).parameters["lr"].default


@st.composite
def runs(draw, dtypes=(np.float32, np.float64)):
    """(optimizer name, kwargs, dtype, shapes, grad scale, seed, steps)."""
    name, options = draw(st.sampled_from(CASES))
    kwargs = dict(options)
    defaults = inspect.signature(getattr(nopt, name)).parameters
    kwargs["lr"] = kwargs.get("lr", default_lr(name)) * draw(st.sampled_from([0.1, 1.0, 5.0]))
    if "betas" in defaults:
        kwargs["betas"] = (draw(st.floats(0.0, 0.99)), draw(st.floats(0.5, 0.9999)))
    if "weight_decay" in defaults and draw(st.booleans()):  # Rprop has none, as in torch
        kwargs["weight_decay"] = draw(st.floats(1e-3, 0.3))
    kwargs["maximize"] = draw(st.booleans())
    dtype = draw(st.sampled_from(dtypes))
    shapes = draw(st.lists(st.lists(st.integers(1, 5), max_size=3).map(tuple),
                           min_size=1, max_size=3))
    scale = 10.0 ** draw(st.integers(-4, 3))
    return name, kwargs, dtype, shapes, scale, draw(st.integers(0, 2**32 - 1)), \
        draw(st.integers(1, 6))


def problem(dtype, shapes, scale, seed, steps):
    rng = np.random.default_rng(seed)
    params = [np.asarray(rng.standard_normal(shape), dtype) for shape in shapes]  # 0-d too
    grads = [[np.asarray(scale * rng.standard_normal(shape), dtype) for shape in shapes]
             for _ in range(steps)]
    return params, grads


def run(name, kwargs, params, grads):
    opt = getattr(nopt, name)(params, **kwargs)
    for g in grads:
        opt.step(g)
    return opt


@SETTINGS
@given(runs())
def test_cpu_follows_the_float64_reference(example):
    name, kwargs, dtype, shapes, scale, seed, steps = example
    params, grads = problem(dtype, shapes, scale, seed, steps)
    ref = [p.astype(np.float64) for p in params]
    state = [{} for _ in params]
    run(name, kwargs, params, grads)
    for g in grads:
        for p, gi, s in zip(ref, g, state):
            RULES[name](p, gi.astype(np.float64), s, **kwargs)
    tolerance = dict(rtol=1e-9, atol=1e-12) if dtype == np.float64 else \
        dict(rtol=1e-4, atol=1e-5)
    for p, r in zip(params, ref):
        np.testing.assert_allclose(p, r, **tolerance)


@SETTINGS
@given(runs())
def test_parallel_and_serial_loops_agree_bit_for_bit(example):
    from numba_opt import _cpu
    name, kwargs, dtype, shapes, scale, seed, steps = example
    results = []
    for threshold in (0, 1 << 62):  # every array parallel, then every array serial
        params, grads = problem(dtype, shapes, scale, seed, steps)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(_cpu, "SERIAL_BELOW", threshold)
            patch.setattr(_cpu, "LOOPS", "parallel" if threshold == 0 else "serial")
            run(name, kwargs, params, grads)
        results.append(params)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@SETTINGS
@given(runs(dtypes=(np.float64,)), st.booleans())
def test_resumed_runs_equal_uninterrupted_ones(example, through_a_file):
    name, kwargs, dtype, shapes, scale, seed, steps = example
    params, grads = problem(dtype, shapes, scale, seed, steps)
    split = seed % (steps + 1)  # 0 .. steps steps before the checkpoint
    first = run(name, kwargs, params, grads[:split])
    saved_params = [p.copy() for p in params]
    saved_state = first.state_dict()
    for g in grads[split:]:
        first.step(g)

    fresh = [np.zeros_like(p) for p in params]
    second = getattr(nopt, name)(fresh, **kwargs)
    if through_a_file:
        import os
        import tempfile
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "c.npz")
            holder = getattr(nopt, name)([p.copy() for p in saved_params], **kwargs)
            holder.load_state_dict(saved_state)
            nopt.save(holder, path)
            nopt.load(second, path)
    else:
        for p, q in zip(fresh, saved_params):
            p[...] = q
        second.load_state_dict(saved_state)
    for g in grads[split:]:
        second.step(g)
    for a, b in zip(params, fresh):
        np.testing.assert_array_equal(a, b)


try:
    from numba import cuda
except ImportError:  # numba-cuda is not installed
    cuda = None
from numba import config  # noqa: E402

needs_cuda = pytest.mark.skipif(
    cuda is None or not (config.ENABLE_CUDASIM or cuda.is_available()),
    reason="needs numba-cuda and a GPU, or NUMBA_ENABLE_CUDASIM=1")


@needs_cuda
@settings(SETTINGS, max_examples=15)
@given(runs())
def test_cuda_agrees_with_the_cpu(example):
    from numba_opt import _cuda
    name, kwargs, dtype, shapes, scale, seed, steps = example
    params, grads = problem(dtype, shapes, scale, seed, steps)
    device = [cuda.to_device(p) for p in params]
    with pytest.MonkeyPatch.context() as patch:
        if config.ENABLE_CUDASIM:  # every simulated thread is a Python thread
            patch.setattr(_cuda, "THREADS_PER_BLOCK", 4)
            patch.setattr(_cuda, "MAX_BLOCKS", 3)
        gpu = getattr(nopt, name)(device, **kwargs)
        for g in grads:
            gpu.step([cuda.to_device(x) for x in g])
    run(name, kwargs, params, grads)
    tolerance = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else \
        dict(rtol=1e-5, atol=1e-6)
    for d, p in zip(device, params):
        np.testing.assert_allclose(d.copy_to_host(), p, **tolerance)
