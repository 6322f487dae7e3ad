"""Gradient clipping folded into the step, and skipping steps with non-finite gradients."""
import copy

import numpy as np
import pytest

import numba_opt as nopt
from cases import TOLERANCE, make_grads, make_params, optimizer
from reference import RULES

torch = pytest.importorskip("torch")

CLIP_CASES = [("SGD", {"lr": 0.01, "momentum": 0.9}), ("Adam", {"amsgrad": True}),
              ("RMSprop", {"centered": True}), ("AdamW", {}), ("Adagrad", {}), ("RAdam", {}),
              ("Adamax", {}), ("NAdam", {}), ("Adadelta", {}), ("Rprop", {}),
              ("ASGD", {"t0": 2.0}),
              # maximize rides on the sign of the clipping scale: both at once
              ("SGD", {"lr": 0.01, "momentum": 0.9, "maximize": True}),
              ("Lion", {"lr": 1e-3, "maximize": True})]


def clipped_by_norm(grads, max_norm):
    norm = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
    scale = min(1.0, max_norm / (norm + 1e-6))
    return [g.astype(np.float64) * scale for g in grads], norm


@pytest.mark.parametrize("flat", [False, True], ids=["arrays", "FlatParams"])
@pytest.mark.parametrize("case", CLIP_CASES, ids=[c[0] for c in CLIP_CASES])
def test_global_norm_clipping_matches_clip_then_step(case, flat):
    name, kwargs = case
    params = make_params(np.float64)
    ref, ref_state = [p.copy() for p in params], [{} for _ in params]
    holder = nopt.FlatParams(params) if flat else None
    live = holder.params if flat else params
    opt = optimizer(name, holder if flat else params, **kwargs)
    for step in range(1, 21):
        grads = make_grads(live, step)
        max_norm = 5.0 if step % 2 else 1e6  # clip on odd steps only: the scale must reset
        if flat:
            for view, g in zip(holder.grads, grads):
                view[...] = g
            grads = holder.grads
        before = copy.deepcopy([np.array(g) for g in grads])
        norm = opt.step(grads, max_grad_norm=max_norm)
        for g, b in zip(grads, before):
            np.testing.assert_array_equal(g, b)  # the grads are read, never rewritten
        clipped, expected_norm = clipped_by_norm(before, max_norm)
        assert norm == pytest.approx(expected_norm, rel=1e-12)
        for p, g, s in zip(ref, clipped, ref_state):
            RULES[name](p, g, s, **kwargs)
    for p, r in zip(live, ref):
        np.testing.assert_allclose(p, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("maximize", [False, True])
def test_value_clipping_matches_torch(maximize):
    params = make_params(np.float32)
    tensors = [torch.tensor(p.copy()) for p in params]
    opt = nopt.Adam(params, lr=0.01, maximize=maximize)
    torch_opt = torch.optim.Adam(tensors, lr=0.01, foreach=False, maximize=maximize)
    for step in range(1, 21):
        grads = make_grads(params, step)
        opt.step(grads, clip_value=0.5)
        for t, g in zip(tensors, grads):
            t.grad = torch.from_numpy(g.copy())
        torch.nn.utils.clip_grad_value_(tensors, 0.5)
        torch_opt.step()
    for p, t in zip(params, tensors):
        np.testing.assert_allclose(p, t.numpy(), **TOLERANCE[np.float32])


def test_norm_clipping_matches_torch_float32():
    params = make_params(np.float32)
    tensors = [torch.tensor(p.copy()) for p in params]
    opt, torch_opt = nopt.SGD(params, lr=0.05, momentum=0.9), torch.optim.SGD(
        tensors, lr=0.05, momentum=0.9, foreach=False)
    for step in range(1, 21):
        grads = make_grads(params, step)
        norm = opt.step(grads, max_grad_norm=2.0)
        for t, g in zip(tensors, grads):
            t.grad = torch.from_numpy(g.copy())
        torch_norm = torch.nn.utils.clip_grad_norm_(tensors, 2.0, foreach=False)
        torch_opt.step()
        assert norm == pytest.approx(float(torch_norm), rel=1e-5)
    for p, t in zip(params, tensors):
        np.testing.assert_allclose(p, t.numpy(), **TOLERANCE[np.float32])


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(max_grad_norm=1.0, clip_value=1.0), ValueError, "not both"),
    (dict(max_grad_norm=-1.0), ValueError, "max_grad_norm must be >= 0"),
    (dict(clip_value="big"), TypeError, "clip_value must be a real number"),
    (dict(skip_if_nonfinite=1), TypeError, "skip_if_nonfinite must be True or False"),
])
def test_bad_clipping_arguments_raise_before_anything_changes(kwargs, error, message):
    params = make_params(np.float32)
    before = copy.deepcopy(params)
    opt = nopt.SGD(params, lr=0.1)
    with pytest.raises(error, match=message):
        opt.step(make_grads(params, 1), **kwargs)
    for a, b in zip(params, before):
        np.testing.assert_array_equal(a, b)
    assert opt.step_count == 0


@pytest.mark.parametrize("size", [1000, 100_000])  # the serial and the parallel loop
def test_the_norm_of_float32_grads_accumulates_in_float64(size):
    from numba_opt import _cpu
    x = np.random.default_rng(0).standard_normal(size).astype(np.float32)
    exact = float(np.sum(x.astype(np.float64) ** 2))
    assert _cpu.sum_squares(x) == pytest.approx(exact, rel=1e-12)
