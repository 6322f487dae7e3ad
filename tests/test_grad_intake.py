"""Each step's grads on the CPU: fresh arrays every step go through quick checks and one
multi-tensor call, with the same safety and the same numbers as the FlatParams span."""
import numpy as np
import pytest

import numba_opt as nopt
from cases import CASES, case_id, make_grads, optimizer
from test_validation import assert_untouched, snapshot

# more params than one batch of the address pass (16), C and Fortran order, 0-d, empty
SHAPES = [(7, 5), (5,), (3, 4, 2), (), (0,), (130, 131)] + [(i + 1,) for i in range(14)] + \
    [(6, 4)]
FORTRAN = {0, 20}


def params_like(dtype, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    return [np.asfortranarray(p) if i in FORTRAN else p for i, p in enumerate(params)]


def grads_like(params, step):
    """make_grads, in each param's memory order."""
    return [np.asfortranarray(g) if p.flags.f_contiguous and not p.flags.c_contiguous else g
            for g, p in zip(make_grads(params, step), params)]


def fresh(grads):
    """New arrays with the same values and layout, as a training loop makes each step."""
    return [None if g is None else g.copy(order="K") for g in grads]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fresh_grad_lists_step_like_the_flat_span_bit_for_bit(case):
    name, kwargs = case
    separate = params_like(np.float32)
    flat = nopt.FlatParams([p.copy(order="K") for p in separate])
    by_list, by_span = optimizer(name, separate, **kwargs), optimizer(name, flat, **kwargs)
    for step in range(1, 5):
        grads = grads_like(separate, step)
        by_list.step(fresh(grads))
        for view, grad in zip(flat.grads, grads):
            view[...] = grad
        by_span.step(flat.grads)
    for a, b in zip(separate, flat.params):
        np.testing.assert_array_equal(a, b)


def test_unusual_grads_are_checked_fully_and_used_in_place(tmp_path):
    """Read-only grads and ndarray subclasses (np.memmap) take the full checks, then the same
    multi-tensor call; mixed dtypes and None grads too."""
    params = params_like(np.float32) + params_like(np.float64, seed=2)
    twins = [p.copy(order="K") for p in params]
    opt, twin = nopt.Adam(params, lr=0.01), nopt.Adam(twins, lr=0.01)
    for step in range(1, 4):
        grads = grads_like(params, step)
        unusual = list(grads)
        unusual[1] = grads[1].copy()
        unusual[1].setflags(write=False)
        unusual[2] = np.memmap(tmp_path / f"grad{step}", grads[2].dtype, "w+",
                               shape=grads[2].shape)
        unusual[2][...] = grads[2]
        if step == 2:
            unusual[3] = grads[3] = None
        opt.step(unusual)
        twin.step(fresh(grads))
    for a, b in zip(params, twins):
        np.testing.assert_array_equal(a, b)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix itself
@pytest.mark.parametrize("kind", ["matrix", "masked"])
def test_matrix_and_masked_grads_are_refused_before_anything_changes(kind):
    params = params_like(np.float64)
    opt = nopt.SGD(params, lr=0.1, momentum=0.9)
    opt.step(grads_like(params, 1))
    before = snapshot(opt, params)
    grads = grads_like(params, 2)
    grads[1] = np.asmatrix(grads[1]) if kind == "matrix" else np.ma.masked_less(grads[1], 0)
    with pytest.raises(TypeError, match=r"grad for params\[1\] is a (matrix|MaskedArray)"):
        opt.step(grads)
    assert_untouched(before, opt, params)


def test_a_grad_sharing_memory_is_named_in_any_batch_and_nothing_changes():
    buffer = np.zeros(sum(int(np.prod(s)) for s in SHAPES), np.float64)
    params, start = [], 0
    for shape in SHAPES:  # params are views of one buffer, but not a FlatParams
        size = int(np.prod(shape))
        params.append(buffer[start:start + size].reshape(shape))
        start += size
    opt = nopt.Adam(params)
    grads = grads_like(params, 1)
    opt.step(grads)
    before = snapshot(opt, params)
    bad = fresh(grads)
    bad[17] = params[18][:12]  # the start of param 18, in the second batch of 16
    with pytest.raises(ValueError, match=r"grad for params\[17\] shares memory with "
                                         r"params\[18\]"):
        opt.step(bad)
    assert_untouched(before, opt, params)
    # a refused step leaves no half-adopted grads behind: the next good step is the right one
    twin_params = [p.copy() for p in before[0]]
    twin = nopt.Adam(twin_params)
    twin.load_state_dict(opt.state_dict())
    good = grads_like(params, 2)
    opt.step(fresh(good))
    twin.step(fresh(good))
    for a, b in zip(params, twin_params):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("sizes", [[3, 0, 7, 1], [40_000, 5, 9_000, 0, 20_000]],
                         ids=["serial", "parallel"])
def test_the_clipping_norm_of_a_grad_list_is_one_table_pass(sizes):
    """Global-norm clipping over separate grads reads them in one multi-tensor pass: the norm
    equals a float64 NumPy norm, and the same grads always give the same bits."""
    rng = np.random.default_rng(7)
    params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    grads = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    expected = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads))
    opt = nopt.SGD(params, lr=0.0)
    norms = [opt.step(fresh(grads), max_grad_norm=1.0) for _ in range(3)]
    np.testing.assert_allclose(norms[0], expected, rtol=1e-12)
    assert norms[0] == norms[1] == norms[2]
