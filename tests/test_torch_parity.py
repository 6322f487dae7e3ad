"""Trajectories equal torch.optim's for every optimizer and option torch shares (when installed)."""
import inspect

import numpy as np
import pytest

import numba_opt as nopt
from cases import (CASES, NOT_IN_TORCH, STEPS, TOLERANCE, TORCH_UNSUPPORTED, case_id, make_grads,
                   make_params)

torch = pytest.importorskip("torch")

TORCH_CASES = [c for c in CASES
               if not TORCH_UNSUPPORTED & set(c[1]) and c[0] not in NOT_IN_TORCH]
# torch's float64 kernels round in a different order (lerp, addcdiv), so not bit-for-bit
TORCH_TOLERANCE = {np.float32: TOLERANCE[np.float32], np.float64: dict(rtol=1e-10, atol=1e-12)}


@pytest.fixture
def torch_default_dtype(request):
    """torch keeps host scalars (step, NAdam's mu_product) in its default dtype: make it the
    params' so that float64 runs are float64 throughout."""
    previous = torch.get_default_dtype()
    yield lambda dtype: torch.set_default_dtype(getattr(torch, np.dtype(dtype).name))
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", TORCH_CASES, ids=case_id)
def test_matches_torch_optim(case, dtype, torch_default_dtype):
    name, kwargs = case
    torch_default_dtype(dtype)
    params = make_params(dtype)
    tensors = [torch.tensor(p.copy()) for p in params]
    # foreach=False: torch's single-tensor loop, its reference implementation
    torch_opt = getattr(torch.optim, name)(tensors, foreach=False, **kwargs)
    opt = getattr(nopt, name)(params, **kwargs)
    for step in range(1, STEPS + 1):
        grads = make_grads(params, step)
        opt.step(grads)
        for t, g in zip(tensors, grads):
            t.grad = torch.from_numpy(g.copy())
        torch_opt.step()
    for i, (p, t) in enumerate(zip(params, tensors)):
        np.testing.assert_allclose(p, t.numpy(), **TORCH_TOLERANCE[dtype], err_msg=f"param {i}")


@pytest.mark.parametrize("name", ["SGD", "RMSprop", "Adam", "AdamW", "Adagrad", "Adamax",
                                  "RAdam", "NAdam", "Adadelta", "Rprop", "ASGD"])
def test_defaults_equal_torch(name):
    ours = inspect.signature(getattr(nopt, name)).parameters
    theirs = inspect.signature(getattr(torch.optim, name)).parameters
    shared = [k for k in ours if k in theirs and k != "params"]
    assert len(shared) >= 4  # Rprop's lr, etas, step_sizes, maximize
    for key in shared:
        assert ours[key].default == theirs[key].default, f"{name}({key}=...) default differs"
