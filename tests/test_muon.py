"""Muon: against the float64 reference (tests/reference.py) and torch.optim.Muon, groups, None
grads, state_dict resume, validation, and the CUDA simulator against the CPU.

Muon is not in cases.py's table: those suites assume elementwise state and take any param
shape, and Muon orthogonalizes whole 2-D matrices.  torch runs the Newton-Schulz iteration in
bfloat16 (ns_dtype='bfloat16', the default); the float64 comparisons use ns_dtype=None, and the
torch comparison in the param's own dtype patches torch's bfloat16 cast away.
"""
import contextlib
import importlib.util
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import numba_opt as nopt
import numba_opt.functional as F
import ptx
from reference import muon as reference_muon

SHAPES = [(6, 4), (4, 6), (5, 5), (12, 7)]  # tall, wide, square, and a transposed odd one
TORCH_KWARGS = [  # torch's own combinations (common_optimizers.optim_inputs_func_muon) and more
    {}, {"lr": 0.01}, {"lr": np.array(0.001)}, {"weight_decay": 0.2}, {"momentum": 0.8},
    {"ns_steps": 6}, {"ns_coefficients": (3.4, -4.7, 2.0)}, {"nesterov": False},
    {"adjust_lr_fn": "original"}, {"adjust_lr_fn": "match_rms_adamw", "lr": 0.02},
    {"momentum": 0.3, "nesterov": True}]  # lerp weights on the other side of 1/2


def _grads(shape, dtype, steps, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for _ in range(steps)]


def _param(shape, dtype, seed=1, order="C"):
    return np.asarray(np.random.default_rng(seed).standard_normal(shape).astype(dtype),
                      order=order)


def _torch_kwargs(kwargs):
    return {k: torch.tensor(float(v), dtype=torch.float64) if isinstance(v, np.ndarray) else v
            for k, v in kwargs.items()}


@contextlib.contextmanager
def _torch_without_bfloat16():
    """torch.optim.Muon with its Newton-Schulz iteration in the grad's own dtype: its
    ``grad.bfloat16()`` cast made a copy instead."""
    original = torch.Tensor.bfloat16
    torch.Tensor.bfloat16 = lambda self, *args, **kwargs: self.clone()
    try:
        yield
    finally:
        torch.Tensor.bfloat16 = original


def _run_both(shape, dtype, kwargs, steps=8, ns_dtype="bfloat16", lr_edit=True):
    """(ours, torch's) params after ``steps`` steps on the same grads, lr halved midway."""
    mine = _param(shape, dtype)
    theirs = torch.tensor(mine.copy(), requires_grad=True)
    opt = nopt.Muon([mine], **kwargs, ns_dtype=ns_dtype)
    topt = torch.optim.Muon([theirs], **_torch_kwargs(kwargs))
    for k, grad in enumerate(_grads(shape, dtype, steps)):
        if lr_edit and k == steps // 2:
            opt.param_groups[0]["lr"] = float(opt.param_groups[0]["lr"]) / 2
            topt.param_groups[0]["lr"] = float(topt.param_groups[0]["lr"]) / 2
        opt.step([grad])
        theirs.grad = torch.tensor(grad)
        topt.step()
    np.testing.assert_array_equal(opt.state[0]["momentum_buffer"] * 0, 0)  # finite
    return mine, theirs.detach().numpy(), opt, topt


# --------------------------------------------------------------------------- the reference
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kwargs", TORCH_KWARGS, ids=repr)
def test_float64_matches_the_reference(shape, kwargs):
    """ns_dtype=None in float64: the equations, to 1e-10 after 10 steps with an lr edit."""
    order = "F" if shape == (5, 5) else "C"  # a Fortran-ordered param (its grads likewise)
    mine = _param(shape, np.float64, order=order)
    ref, state = mine.copy(), {}
    opt = nopt.Muon([mine], **kwargs, ns_dtype=None)
    kwargs = {k: float(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    for k, grad in enumerate(_grads(shape, np.float64, 10)):
        if k == 5:
            opt.param_groups[0]["lr"] = kwargs["lr"] = float(opt.param_groups[0]["lr"]) * 3
        opt.step([np.asarray(grad, order=order)])
        reference_muon(ref, grad, state, **kwargs)
    np.testing.assert_allclose(mine, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(opt.state[0]["momentum_buffer"], state["momentum_buffer"],
                               rtol=1e-12, atol=1e-14)
    assert opt.state[0]["step"] == 10


@pytest.mark.parametrize("ns_dtype", ["float32", None])
def test_float32_is_close_to_the_reference(ns_dtype):
    mine = _param((12, 7), np.float32)
    ref, state = mine.astype(np.float64), {}
    opt = nopt.Muon([mine], lr=0.02, ns_dtype=ns_dtype)
    for grad in _grads((12, 7), np.float32, 10):
        opt.step([grad])
        reference_muon(ref, grad.astype(np.float64), state, lr=0.02)
    np.testing.assert_allclose(mine, ref, rtol=1e-5, atol=1e-6)


def test_bfloat16_iteration_is_a_bfloat16_approximation_of_the_reference():
    """The default rounds the iteration to bfloat16: the update is right to a few %, and the
    rounding is really there (the param differs from the float64 iteration's)."""
    mine = _param((12, 7), np.float64)
    start = mine.copy()
    ref, state = mine.copy(), {}
    opt = nopt.Muon([mine], lr=0.02)
    grad = _grads((12, 7), np.float64, 1)[0]
    opt.step([grad])
    reference_muon(ref, grad, state, lr=0.02)
    moved, ref_moved = mine - start * (1 - 0.02 * 0.1), ref - start * (1 - 0.02 * 0.1)
    assert np.abs(moved - ref_moved).max() <= 0.05 * np.abs(ref_moved).max()  # 2.4% here
    assert np.abs(moved - ref_moved).max() > 1e-6


# ------------------------------------------------------------------------------------ torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kwargs", TORCH_KWARGS, ids=repr)
def test_matches_torch_in_bfloat16(kwargs, shape, dtype):
    """torch's own computation, bfloat16 iteration included.  On these small matrices float32
    summation order does not flip bfloat16 roundings, so the params agree to a float32 ulp or
    two (torch's fused multiply-adds in lerp and add_); rarely, a last-bit difference before a
    bfloat16 rounding moves one entry of one update by a bfloat16 ulp (measured over this
    table: float32 every entry within the tight tolerance, float64 all but 1 of 1727)."""
    mine, theirs, _, _ = _run_both(shape, dtype, kwargs)
    tight = dict(rtol=2e-6, atol=2e-7) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    beyond = ~np.isclose(mine, theirs, **tight)
    assert beyond.sum() <= 1, f"{beyond.sum()} entries differ by more than {tight}"
    lr = float(kwargs.get("lr", 1e-3))
    one_ulp = F.muon_adjusted_lr(lr, kwargs.get("adjust_lr_fn"), shape) * 2.0 ** -8
    np.testing.assert_allclose(mine, theirs, rtol=0, atol=one_ulp)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (12, 7)])
@pytest.mark.parametrize("kwargs", TORCH_KWARGS[:1] + TORCH_KWARGS[4:9], ids=repr)
def test_matches_torch_in_the_params_dtype(kwargs, shape, dtype):
    """ns_dtype=None against torch with its bfloat16 cast removed: float64 to 1e-10, float32
    as close as two BLAS summation orders allow."""
    with _torch_without_bfloat16():
        mine, theirs, _, _ = _run_both(shape, dtype, kwargs, ns_dtype=None)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mine, theirs, **tol)


def test_larger_matrices_stay_within_bfloat16_noise_of_torch():
    """On larger matrices float32 summation orders differ (BLAS vs torch's kernels) and flip a
    bfloat16 rounding here and there; the params stay within a fraction of one step's size."""
    mine, theirs, _, _ = _run_both((96, 64), np.float32, {"lr": 0.02}, steps=3, lr_edit=False)
    step_size = 0.02 * np.sqrt(96 / 64) * 0.3  # lr' times the largest update entries, about
    assert np.abs(mine - theirs).max() < 0.05 * step_size


def test_groups_and_none_grads_match_torch():
    """Per-group hyper-parameters, and a None grad skipping its param (its buffer and step
    count stay behind), as in torch."""
    shapes = [(6, 4), (4, 6), (5, 5)]
    mine = [_param(s, np.float64, seed=k) for k, s in enumerate(shapes)]
    theirs = [torch.tensor(p.copy(), requires_grad=True) for p in mine]
    groups = lambda ps: [{"params": ps[:2], "lr": 0.05, "adjust_lr_fn": "match_rms_adamw"},  # noqa: E731
                         {"params": ps[2:], "momentum": 0.5, "nesterov": False}]
    opt, topt = nopt.Muon(groups(mine), lr=0.01), torch.optim.Muon(groups(theirs), lr=0.01)
    for k in range(6):
        grads = [g[0] for g in (_grads(s, np.float64, 1, seed=10 * k + i)
                                for i, s in enumerate(shapes))]
        if k % 2:
            grads[1] = None
        if k == 4:  # the first param left out, the others stepping after it
            grads[0] = None
        opt.step(grads)
        for t, g in zip(theirs, grads):
            t.grad = None if g is None else torch.tensor(g)
        topt.step()
    for p, t in zip(mine, theirs):
        np.testing.assert_allclose(p, t.detach().numpy(), rtol=1e-12, atol=1e-14)
    assert [s["step"] for s in opt.state] == [5, 3, 6]
    np.testing.assert_allclose(opt.state[1]["momentum_buffer"],
                               topt.state[theirs[1]]["momentum_buffer"].numpy(), rtol=1e-12)


def test_a_param_never_given_a_grad_has_no_state():
    a, b = _param((4, 3), np.float32), _param((3, 5), np.float32, seed=2)
    before = b.copy()
    opt = nopt.Muon([a, b])
    opt.step([_grads((4, 3), np.float32, 1)[0], None])
    np.testing.assert_array_equal(b, before)
    assert opt.state[1] == {} and opt.state[0]["step"] == 1


# --------------------------------------------------------------------------------- resuming
@pytest.mark.parametrize("ns_dtype", ["bfloat16", None])
def test_state_dict_resume_is_exact(ns_dtype):
    """Saved after 3 steps (one with a None grad: per-param step counts), loaded into a new
    optimizer made with other hyper-parameters: the next 3 steps repeat the straight run."""
    shapes = [(6, 4), (3, 7)]
    per_param = [_grads(s, np.float32, 6, seed=k) for k, s in enumerate(shapes)]
    grads = [[None if (k == 1 and i == 1) else g[k] for i, g in enumerate(per_param)]
             for k in range(6)]
    straight = [_param(s, np.float32, seed=k) for k, s in enumerate(shapes)]
    resumed = [p.copy() for p in straight]
    opt = nopt.Muon(straight, lr=0.02, ns_dtype=ns_dtype)
    for step_grads in grads:
        opt.step(step_grads)
    first = nopt.Muon(resumed, lr=0.02, ns_dtype=ns_dtype)
    for step_grads in grads[:3]:
        first.step(step_grads)
    saved = first.state_dict()
    second = nopt.Muon(resumed, lr=0.5, momentum=0.1, ns_dtype=ns_dtype)
    second.load_state_dict(saved)
    assert second.param_groups[0]["lr"] == 0.02 and second.step_count == 3
    for step_grads in grads[3:]:
        second.step(step_grads)
    for p, q in zip(straight, resumed):
        np.testing.assert_array_equal(p, q)
    for a, b in zip(opt.state, second.state):
        np.testing.assert_array_equal(a["momentum_buffer"], b["momentum_buffer"])
    assert [s["step"] for s in second.state] == [6, 5]


def test_state_dict_refuses_a_wrong_buffer_shape():
    opt = nopt.Muon([_param((4, 3), np.float64)])
    opt.step([np.ones((4, 3))])
    saved = opt.state_dict()
    saved["state"][0]["momentum_buffer"] = np.zeros((3, 4))
    with pytest.raises(ValueError, match="shape"):
        nopt.Muon([_param((4, 3), np.float64)]).load_state_dict(saved)


# ------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs, error, words", [
    ({"lr": -1.0}, ValueError, "lr"),
    ({"momentum": -0.1}, ValueError, "momentum"),
    ({"weight_decay": -1.0}, ValueError, "weight_decay"),
    ({"adjust_lr_fn": "arbitrary"}, ValueError, "Adjust learning rate function arbitrary is "
                                                "not supported"),
    ({"ns_steps": 100}, ValueError, "ns_steps"),
    ({"ns_steps": 2.0}, TypeError, "ns_steps"),
    ({"ns_coefficients": (1.0, 2.0)}, TypeError, "ns_coefficients"),
    ({"eps": -1e-7}, ValueError, "eps"),
    ({"nesterov": 1}, TypeError, "nesterov"),
    ({"ns_dtype": "float16"}, ValueError, "ns_dtype"),
    ({"state_dtype": "int8"}, ValueError, "state_dtype"),
    ({"master_weights": True}, ValueError, "master_weights"),
    ({"stochastic_rounding": True}, ValueError, "stochastic_rounding"),
])
def test_bad_hyper_parameters_are_refused(kwargs, error, words):
    with pytest.raises(error, match=words):
        nopt.Muon([_param((3, 2), np.float32)], **kwargs)


def test_ns_dtype_is_settable_and_checked():
    opt = nopt.Muon([_param((3, 2), np.float32)])
    with pytest.raises(ValueError, match="ns_dtype"):
        opt.ns_dtype = "float16"
    assert opt.ns_dtype == "bfloat16"
    opt.ns_dtype = None
    assert opt.ns_dtype is None


def test_params_must_be_2d_float32_or_float64():
    with pytest.raises(ValueError, match=r"params\[1\] has shape \(2, 3, 4\): Muon only "
                                         "supports 2D parameters"):
        nopt.Muon([_param((3, 2), np.float32), np.zeros((2, 3, 4), np.float32)])
    with pytest.raises(ValueError, match=r"params\['b'\] has shape \(5,\)"):
        nopt.Muon({"W": _param((3, 2), np.float32), "b": np.zeros(5, np.float32)})
    ml_dtypes = pytest.importorskip("ml_dtypes")
    with pytest.raises(TypeError, match="float32 and float64"):
        nopt.Muon([np.zeros((3, 2), ml_dtypes.bfloat16)])
    opt = nopt.Muon([_param((3, 2), np.float32)])
    with pytest.raises(ValueError, match=r"params\[1\] has shape \(4,\)"):
        opt.add_param_group({"params": [np.zeros(4, np.float32)]})
    with pytest.raises(ValueError, match=r"params\[2\] has shape \(4,\)"):  # the second new one
        opt.add_param_group({"params": [np.zeros((2, 2), np.float32), np.zeros(4, np.float32)]})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [np.zeros((2, 2), np.float32)], "lr": 0.1})
    opt.step([np.ones((3, 2), np.float32), np.ones((2, 2), np.float32)])


def test_a_refused_step_changes_nothing():
    a, b = _param((4, 3), np.float32), _param((3, 5), np.float32, seed=2)
    opt = nopt.Muon([a, b], lr=0.1)
    opt.step([np.ones_like(a), np.ones_like(b)])
    before = [a.copy(), b.copy()], [s["momentum_buffer"].copy() for s in opt.state]
    for grads in ([np.ones_like(a), np.ones((5, 3), np.float32)],
                  [np.ones_like(a), np.ones_like(b, dtype=np.float64)]):
        with pytest.raises((ValueError, TypeError), match=r"params\[1\]"):
            opt.step(grads)
    opt.param_groups[0]["ns_steps"] = -1
    with pytest.raises(ValueError, match="ns_steps"):
        opt.step([np.ones_like(a), np.ones_like(b)])
    np.testing.assert_array_equal(a, before[0][0])
    np.testing.assert_array_equal(b, before[0][1])
    for s, buf in zip(opt.state, before[1]):
        np.testing.assert_array_equal(s["momentum_buffer"], buf)
        assert s["step"] == 1


def test_clipping_acts_on_the_grad_before_the_momentum():
    grads = _grads((6, 4), np.float64, 3)
    clipped, scaled = _param((6, 4), np.float64), _param((6, 4), np.float64)
    a, b = nopt.Muon([clipped], ns_dtype=None), nopt.Muon([scaled], ns_dtype=None)
    for g in grads:
        norm = a.step([g], max_grad_norm=1.0)
        assert norm == pytest.approx(np.linalg.norm(g))
        b.step([g * (1.0 / (norm + 1e-6))])
    np.testing.assert_allclose(clipped, scaled, rtol=1e-12)
    np.testing.assert_allclose(a.state[0]["momentum_buffer"], b.state[0]["momentum_buffer"],
                               rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum", [0.9, 0.3, 0.5, 0.1])
def test_the_momentum_buffer_rounds_as_torch_lerp_does(momentum, dtype):
    """torch.lerp(start, end, w), in the param's dtype: start + w*(end - start) for w < 1/2,
    else end - (end - start)*(1 - w), with 1 - w taken in that dtype (1 - (1 - mu) is not
    always mu).  The forms round differently, so the buffer (B <- lerp(B, g, 1 - mu), with no
    contraction into FMAs on the CPU) is compared bit for bit."""
    def lerp(start, end, weight):
        weight = dtype(weight)
        if weight + weight < dtype(1):
            return start + weight * (end - start)
        return end - (end - start) * (dtype(1) - weight)
    param = _param((6, 4), dtype)
    opt = nopt.Muon([param], momentum=momentum, ns_dtype=None)
    buffer = np.zeros_like(param)
    for g in _grads((6, 4), dtype, 3):
        opt.step([g])
        buffer = lerp(buffer, g, 1.0 - momentum)
        assert opt.state[0]["momentum_buffer"].tobytes() == buffer.tobytes()


# ------------------------------------------------------------------------------- functional
def test_functional_step_is_the_class_step():
    mine, theirs = _param((5, 3), np.float32), _param((5, 3), np.float32)
    buf = np.zeros_like(theirs)
    opt = nopt.Muon([mine], lr=0.03, nesterov=False)
    for g in _grads((5, 3), np.float32, 3):
        opt.step([g])
        F.muon_step(theirs, g, buf, lr=0.03, nesterov=False)
    np.testing.assert_array_equal(mine, theirs)
    np.testing.assert_array_equal(buf, opt.state[0]["momentum_buffer"])
    with pytest.raises(ValueError, match="momentum_buffer shares memory"):
        F.muon_step(theirs, g, theirs.view())
    with pytest.raises(ValueError, match="2D"):
        F.muon_step(np.zeros(3), np.zeros(3), np.zeros(3))


# ------------------------------------------------------------------------------------- CUDA
@pytest.fixture
def small_cuda_kernels(monkeypatch):
    """Tiny tiles, blocks and grids: a 6x4 matrix spans several of each."""
    from numba import config, cuda
    if not config.ENABLE_CUDASIM and not cuda.is_available():
        pytest.skip("no GPU; run with NUMBA_ENABLE_CUDASIM=1")
    from numba_opt import _cuda, _newton_schulz_cuda
    monkeypatch.setattr(_newton_schulz_cuda, "TILE", 4)
    monkeypatch.setattr(_newton_schulz_cuda, "THREADS_PER_BLOCK", 8)
    monkeypatch.setattr(_newton_schulz_cuda, "NORM_BLOCKS", 3)
    monkeypatch.setattr(_cuda, "MAX_BLOCKS", 2)
    monkeypatch.setattr(_newton_schulz_cuda, "_WORKSPACES", {})


@pytest.mark.parametrize("ns_dtype", ["bfloat16", None])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, order", [((6, 4), "C"), ((5, 9), "C"), ((5, 3), "F")])
def test_cuda_matches_the_cpu(small_cuda_kernels, shape, order, dtype, ns_dtype):
    from numba import cuda
    host = _param(shape, dtype, order=order)
    device = cuda.to_device(host)
    cpu = nopt.Muon([host], lr=0.05, ns_steps=3, ns_dtype=ns_dtype, weight_decay=0.2)
    gpu = nopt.Muon([device], lr=0.05, ns_steps=3, ns_dtype=ns_dtype, weight_decay=0.2)
    assert gpu.device == "cuda"
    for k, g in enumerate(_grads(shape, dtype, 2)):
        g = np.asarray(g, order=order)
        clip = dict(max_grad_norm=0.5) if k else {}  # the GPU's norm, read back
        cpu.step([g], **clip)
        gpu.step([cuda.to_device(g)], **clip)
    # the same bfloat16 roundings: equal; in the param's dtype the sums' order differs
    tol = dict(rtol=0, atol=0) if ns_dtype else dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(device.copy_to_host(), host, **tol)
    np.testing.assert_array_equal(gpu.state_dict()["state"][0]["momentum_buffer"],
                                  cpu.state[0]["momentum_buffer"])


def test_cuda_functional_step_and_norm_below_eps(small_cuda_kernels):
    """A zero grad: the norm is clamped at eps, the update is 0 and only the decay acts."""
    from numba import cuda
    host = _param((4, 6), np.float32)
    expected = host * np.float32(1 - 1e-3 * 0.1)
    device, buf = cuda.to_device(host), cuda.to_device(np.zeros_like(host))
    F.muon_step(device, cuda.to_device(np.zeros_like(host)), buf)
    np.testing.assert_array_equal(device.copy_to_host(), expected)
    F.muon_step(host, np.zeros_like(host), np.zeros_like(host))
    np.testing.assert_array_equal(host, expected)


def test_cuda_rounds_float64_to_bfloat16_once():
    """The kernels' bfloat16 rounding of a float64 update is NumPy's (ml_dtypes'), ties
    included: 1 + 2**-8 + 2**-30 rounded to float32 first would be the tie 1 + 2**-8, which
    rounds to even, 1; rounded once it is 1 + 2**-7."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from numba_opt import _newton_schulz_cuda
    rng = np.random.default_rng(0)
    ties = rng.standard_normal(500).astype(ml_dtypes.bfloat16).astype(np.float64) * (1 + 2**-8)
    values = np.concatenate([[1 + 2**-8 + 2**-30, -(1 + 2**-8 + 2**-30), 1 + 2**-8, 0.0, 5e-324],
                             ties * (1 + rng.choice([-1, 1], 500) * 2.0**-35),
                             rng.standard_normal(500) * 10.0 ** rng.integers(-30, 30, 500)])
    expected = values.astype(ml_dtypes.bfloat16).astype(np.float32)
    got = np.array([_newton_schulz_cuda._to_bfloat16(v) for v in values], np.float32)
    np.testing.assert_array_equal(got, expected)
    assert got[0] == 1 + 2**-7 and np.float32(values[0]).astype(ml_dtypes.bfloat16) == 1


def _tie_step(param, grad):
    """One step whose update is the bfloat16 rounding of ``grad`` over 4: no momentum, no
    iteration, and the norm (below 4) clamped at eps = 4, a power of two."""
    F.muon_step(param, grad, param * 0 if isinstance(param, np.ndarray) else _device_zeros(param),
                lr=1.0, weight_decay=0.0, momentum=0.0, nesterov=False, ns_steps=0, eps=4.0)


def _device_zeros(like):
    from numba import cuda
    return cuda.to_device(np.zeros(like.shape, like.dtype))


TIES = np.array([[1 + 2**-8 + 2**-30, -(1 + 2**-8 + 2**-30), 1 + 2**-8, 0.5]] * 4) / 2


def test_cpu_rounds_a_float64_update_to_bfloat16_once():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    param = np.zeros((4, 4))
    _tie_step(param, TIES.copy())
    expected = -TIES.astype(ml_dtypes.bfloat16).astype(np.float64) / 4
    np.testing.assert_array_equal(param, expected)
    assert param[0, 0] == -(1 + 2**-7) / 8


def test_cuda_rounds_a_float64_update_to_bfloat16_once(small_cuda_kernels):
    from numba import cuda
    host, device = np.zeros((4, 4)), cuda.to_device(np.zeros((4, 4)))
    _tie_step(host, TIES.copy())
    _tie_step(device, cuda.to_device(TIES))
    np.testing.assert_array_equal(device.copy_to_host(), host)


PTX_SCRIPT = textwrap.dedent("""
    import json, numpy as np
    from numba import cuda, typeof, int64, boolean
    from numba_opt import _math, _newton_schulz_cuda as nsc
    import numba_opt.functional as F
    counts = {}
    for name, dtype in (("float32", np.float32), ("float64", np.float64)):
        vec, mat = typeof(np.zeros(1, dtype)), typeof(np.zeros((1, 1), dtype))
        one = typeof(dtype(0))
        h = F.muon_scalars(momentum=0.9, nesterov=True)
        h = typeof(type(h)(*(dtype(v) for v in h)))
        index = (int64, int64, boolean, boolean)
        rounding = name == "float32"
        kernels = {
            "momentum": (nsc._momentum_kernel(rounding), (vec, vec, mat, h) + index),
            "apply": (nsc._apply_kernel(), (vec, mat, one, one) + index),
            "norm": (nsc._norm_kernels(np.dtype(dtype), rounding, 256)[0], (vec, vec)),
            "finish": (nsc._norm_kernels(np.dtype(dtype), rounding, 256)[1], (vec, one, vec)),
            "divide": (nsc._divide_kernel(rounding), (vec, vec)),
            "matmul": (nsc._matmul_kernel(np.dtype(dtype), rounding, False, True, 16),
                       (mat, mat, mat, mat, one, one)),
            "gram": (nsc._matmul_kernel(np.dtype(dtype), rounding, True, False, 16),
                     (mat, mat, mat, mat, one, one)),
        }
        if name == "float64":  # float64 params, iteration in bfloat16 values held in float32
            mat32 = typeof(np.zeros((1, 1), np.float32))
            kernels["momentum-to-bfloat16"] = (nsc._momentum_kernel(True),
                                               (vec, vec, mat32, h) + index)
            kernels["apply-from-float32"] = (nsc._apply_kernel(), (vec, mat32, one, one) + index)
        for kernel_name, (kernel, signature) in kernels.items():
            ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=(9, 0))
            counts[f"{kernel_name} {name}"] = sum(".f64" in l for l in ptx.splitlines())
    print(json.dumps(counts))
""")


def test_cuda_kernels_compile_to_ptx_and_float32_ones_hold_no_float64():
    """The real (not simulated) kernels, compiled by NVVM with no GPU: typing errors the
    simulator cannot see show here."""
    counts = ptx.run(PTX_SCRIPT)
    assert len(counts) == 16
    ptx.assert_float32_kernels_hold_no_float64(counts)


# ------------------------------------------------------------------------------ distributed
@pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None, reason="needs mpi4py")
def test_zero_redundancy_optimizer_refuses_muon():
    script = textwrap.dedent("""
        import numpy as np, numba_opt as nopt
        from mpi4py import MPI
        from numba_opt import distributed as dist
        try:
            dist.ZeroRedundancyOptimizer([np.zeros((3, 2))], nopt.Muon, comm=MPI.COMM_SELF)
        except TypeError as exc:
            print("refused:", exc)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert "refused:" in run.stdout and "whole" in run.stdout, run.stdout + run.stderr[-2000:]


def test_checkpoint_save_and_load(tmp_path):
    """nopt.save / nopt.load carry Muon's groups (ns_coefficients, adjust_lr_fn None) and
    momentum buffers."""
    params = [_param((5, 3), np.float32)]
    opt = nopt.Muon(params, lr=0.02, adjust_lr_fn=None)
    opt.step([np.ones((5, 3), np.float32)])
    nopt.save(opt, tmp_path / "muon.npz")
    other = nopt.Muon([np.zeros((5, 3), np.float32)], lr=0.5, ns_coefficients=(1.0, 0.0, 0.0))
    nopt.load(other, tmp_path / "muon.npz")
    assert other.param_groups[0]["lr"] == 0.02
    assert tuple(other.param_groups[0]["ns_coefficients"]) == F.MUON_COEFFICIENTS
    np.testing.assert_array_equal(other.state[0]["momentum_buffer"],
                                  opt.state[0]["momentum_buffer"])
    grad = _grads((5, 3), np.float32, 1)[0]
    opt.step([grad])
    other.step([grad])
    np.testing.assert_array_equal(other._params[0], params[0])


def test_flat_params_and_named_params_step_like_a_list():
    """A FlatParams (views into one buffer, grads too) and a dict of names step as the list."""
    shapes = {"W1": (6, 4), "W2": (4, 3)}
    plain = [_param(s, np.float32, seed=k) for k, s in enumerate(shapes.values())]
    flat = nopt.FlatParams(dict(zip(shapes, (p.copy() for p in plain))))
    named = {name: p.copy() for name, p in zip(shapes, plain)}
    opts = nopt.Muon(plain, lr=0.02), nopt.Muon(flat, lr=0.02), nopt.Muon(named, lr=0.02)
    for k in range(3):
        grads = [_grads(s, np.float32, 1, seed=10 * k + i)[0] for i, s in
                 enumerate(shapes.values())]
        opts[0].step(grads)
        for name, g in zip(shapes, grads):
            flat.grads[name][...] = g
        opts[1].step(flat.grads)
        opts[2].step(dict(zip(shapes, grads)))
    for p, name in zip(plain, shapes):
        np.testing.assert_array_equal(flat.params[name], p)
        np.testing.assert_array_equal(named[name], p)
    assert opts[2].state["W2"]["step"] == 3


def test_a_matrix_past_the_serial_threshold_runs_the_parallel_loops():
    from numba_opt import _cpu
    shape = (160, 110)
    assert shape[0] * shape[1] >= _cpu.SERIAL_BELOW
    mine = _param(shape, np.float64)
    ref, state = mine.copy(), {}
    opt = nopt.Muon([mine], lr=0.02, ns_dtype=None)
    for grad in _grads(shape, np.float64, 3):
        opt.step([grad])
        reference_muon(ref, grad, state, lr=0.02)
    np.testing.assert_allclose(mine, ref, rtol=1e-10, atol=1e-12)


def test_cuda_workspaces_are_shared_only_by_one_thread_on_one_stream(monkeypatch):
    """The iteration's device buffers are reused from step to step, but two threads (or two
    streams) stepping at once each get their own: their kernels would overwrite each other's."""
    import threading
    from numba_opt import _cuda_launch, _newton_schulz_cuda as ns
    monkeypatch.setattr(ns, "_WORKSPACES", {})
    mine = ns._workspace(3, 4, np.dtype(np.float32))
    assert ns._workspace(3, 4, np.dtype(np.float32)) is mine
    other = []
    worker = threading.Thread(target=lambda: other.append(
        ns._workspace(3, 4, np.dtype(np.float32))))
    worker.start()
    worker.join()
    assert other[0] is not mine
    another_stream = object()
    monkeypatch.setattr(_cuda_launch, "current_stream", lambda: another_stream)
    assert ns._workspace(3, 4, np.dtype(np.float32)) is not mine
