"""Adafactor against the float64 reference and torch.optim.Adafactor (on torch's own
hyper-parameter combinations, common_optimizers.optim_inputs_func_adafactor), its groups, None
grads, state and state_dict, validation, the functional step, and the CUDA kernels (simulator
or GPU).  Not in cases.CASES: those suites assume state shaped like the params."""
import textwrap

import numpy as np
import pytest

import numba_opt as nopt
import numba_opt.functional as F
import ptx
from reference import adafactor as reference

torch = pytest.importorskip("torch")

SHAPES = [(7, 5), (5,), (3, 4, 6), (), (1, 9)]
STEPS = 20
# torch's optim_inputs_func_adafactor, and the eps variants
TORCH_INPUTS = [{}, dict(weight_decay=0.1, lr=0.01), dict(weight_decay=0.1, maximize=True),
                dict(beta2_decay=-1.0), dict(d=1.5)]
EPS_INPUTS = [dict(eps=(1e-3, 1e-3)), dict(eps=(0.0, 0.0)), dict(eps=(None, 0.5), lr=0.3)]
TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-10, atol=1e-12)}


def make(dtype, shapes=SHAPES, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def grads_for(params, step):
    rng = np.random.default_rng(1000 + step)
    return [rng.standard_normal(p.shape).astype(p.dtype) for p in params]


def torch_pair(params, groups=None, **kwargs):
    tensors = [torch.tensor(p.copy()) for p in params]
    if groups is None:
        return tensors, torch.optim.Adafactor(tensors, **kwargs)
    return tensors, torch.optim.Adafactor(
        [{**g, "params": [tensors[i] for i in g["params"]]} for g in groups], **kwargs)


def torch_step(opt, tensors, grads):
    for t, g in zip(tensors, grads):
        t.grad = None if g is None else torch.tensor(g)
    opt.step()


@pytest.mark.parametrize("kwargs", TORCH_INPUTS + EPS_INPUTS, ids=str)
def test_float64_matches_the_reference(kwargs):
    params = make(np.float64)
    ref = [p.copy() for p in params]
    ref_state = [{} for _ in params]
    opt = nopt.Adafactor(params, **kwargs)
    for step in range(1, STEPS + 1):
        grads = grads_for(params, step)
        opt.step(grads)
        for p, g, s in zip(ref, grads, ref_state):
            reference(p, g, s, **kwargs)
    for p, r in zip(params, ref):
        np.testing.assert_allclose(p, r, rtol=1e-10, atol=1e-12)
    for state, r in zip(opt.state, ref_state):
        assert state["step"] == r["step"] == STEPS
        for name in ("row_var", "col_var", "variance"):
            assert (name in state) == (name in r)
            if name in r:
                np.testing.assert_allclose(state[name], r[name], rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kwargs", TORCH_INPUTS + EPS_INPUTS, ids=str)
def test_matches_torch(kwargs, dtype):
    params = make(dtype)
    tensors, expected = torch_pair(params, **kwargs)
    opt = nopt.Adafactor(params, **kwargs)
    for step in range(1, STEPS + 1):
        if step == 11:  # an lr change mid-run reaches rho_t and the weight decay
            opt.param_groups[0]["lr"] = expected.param_groups[0]["lr"] = 0.004
        grads = grads_for(params, step)
        opt.step(grads)
        torch_step(expected, tensors, grads)
    for p, t in zip(params, tensors):
        np.testing.assert_allclose(p, t.numpy(), **TOL[dtype])
    for i, t in enumerate(tensors):
        theirs = expected.state[t]
        assert opt.state[i]["step"] == theirs["step"].item()
        for name in ("row_var", "col_var", "variance"):
            assert (name in opt.state[i]) == (name in theirs), name
            if name in theirs:
                assert opt.state[i][name].shape == tuple(theirs[name].shape)
                np.testing.assert_allclose(opt.state[i][name], theirs[name].numpy(),
                                           **TOL[dtype])


def test_groups_and_none_grads_match_torch():
    """Per-group hyper-parameters, and params whose grad is None at some steps (their step
    counts, hence rho_t and beta2_t, fall behind the others', as in torch), alone in their
    bucket or beside one that steps."""
    params = make(np.float64)
    groups = [{"params": [0, 1], "lr": 0.05, "weight_decay": 0.2},
              {"params": [2, 3, 4], "d": 1.2, "maximize": True}]
    tensors, expected = torch_pair(params, groups, beta2_decay=-0.6)
    opt = nopt.Adafactor([{**g, "params": [params[i] for i in g["params"]]} for g in groups],
                         beta2_decay=-0.6)
    for step in range(1, STEPS + 1):
        grads = grads_for(params, step)
        if step % 3 == 0:
            grads[0] = None
        if step % 4 == 1:
            grads[3] = None
        if step % 5 == 2:  # (1, 9) shares a bucket with (3, 4, 6): that bucket splits
            grads[4] = None
        opt.step(grads)
        torch_step(expected, tensors, grads)
    for p, t in zip(params, tensors):
        np.testing.assert_allclose(p, t.numpy(), rtol=1e-10, atol=1e-12)
    assert [s["step"] for s in opt.state] == [expected.state[t]["step"].item() for t in tensors]


def test_clipping_options_match_torch_clip_grad_norm():
    params = make(np.float64)
    tensors, expected = torch_pair(params)
    opt = nopt.Adafactor(params)
    for step in range(1, 6):
        grads = grads_for(params, step)
        opt.step(grads, max_grad_norm=1.0)
        for t, g in zip(tensors, grads):
            t.grad = torch.tensor(g)
        torch.nn.utils.clip_grad_norm_(tensors, 1.0)
        expected.step()
    for p, t in zip(params, tensors):
        np.testing.assert_allclose(p, t.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_state_dict_resume_is_bit_exact(dtype):
    straight = make(dtype)
    resumed = make(dtype)
    opt = nopt.Adafactor(straight, weight_decay=0.1)
    first = nopt.Adafactor(resumed, weight_decay=0.1)
    for step in range(1, 8):
        opt.step(grads_for(straight, step))
        first.step(grads_for(resumed, step))
    saved = first.state_dict()
    assert saved["state"][0]["row_var"].shape == (7, 1)
    assert saved["state"][2]["col_var"].shape == (3, 1, 6)
    second = nopt.Adafactor(resumed, weight_decay=0.1)
    second.load_state_dict(saved)
    for step in range(8, STEPS + 1):
        opt.step(grads_for(straight, step))
        second.step(grads_for(resumed, step))
    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(a, b)


def test_load_state_dict_checks_the_factored_shapes_before_changing_anything():
    params = make(np.float64)
    opt = nopt.Adafactor(params)
    opt.step(grads_for(params, 1))
    saved = opt.state_dict()
    before = [p.copy() for p in params], opt.state_dict()
    bad = {**saved, "state": {**saved["state"], 0: {**saved["state"][0],
                                                   "row_var": np.zeros((7, 5))}}}
    with pytest.raises(ValueError, match="row_var"):
        opt.load_state_dict(bad)
    vector_with_factor = {**saved, "state": {**saved["state"], 1: {
        **saved["state"][1], "row_var": np.zeros((5, 1))}}}
    with pytest.raises(ValueError, match="row_var"):
        opt.load_state_dict(vector_with_factor)
    missing = {**saved, "state": {**saved["state"], 2: {"step": 1, "row_var": np.zeros((3, 4, 1))}}}
    with pytest.raises(ValueError, match="col_var"):
        opt.load_state_dict(missing)
    for p, b in zip(params, before[0]):
        np.testing.assert_array_equal(p, b)
    np.testing.assert_array_equal(opt.state[0]["row_var"], before[1]["state"][0]["row_var"])


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=-1.0), "lr"), (dict(beta2_decay=0.8), "beta2_decay"),
    (dict(eps=(-1e-30, 1e-3)), r"eps\[0\]"), (dict(eps=(None, -1.0)), r"eps\[1\]"),
    (dict(d=0.0), "d"), (dict(weight_decay=-0.1), "weight_decay"),
    (dict(state_dtype="bfloat16"), "state_dtype"), (dict(master_weights=True), "master_weights"),
    (dict(stochastic_rounding=True), "stochastic_rounding")])
def test_bad_options_raise_value_errors_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nopt.Adafactor(make(np.float64), **kwargs)


def test_a_bad_group_edit_raises_before_any_param_changes():
    params = make(np.float64)
    opt = nopt.Adafactor(params)
    opt.step(grads_for(params, 1))
    before = [p.copy() for p in params]
    opt.param_groups[0]["d"] = 0.5
    with pytest.raises(ValueError, match="d"):
        opt.step(grads_for(params, 2))
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p, b)
    assert opt.state[0]["step"] == 1


def test_params_it_cannot_factor_are_refused():
    with pytest.raises(ValueError, match="C-contiguous"):
        nopt.Adafactor([np.asfortranarray(np.ones((3, 4)))])
    with pytest.raises(TypeError, match="float32 and float64"):
        nopt.Adafactor([np.ones(3, np.float16)])
    opt = nopt.Adafactor([np.ones(3)])
    with pytest.raises(ValueError, match="C-contiguous"):
        opt.add_param_group({"params": [np.asfortranarray(np.ones((3, 4)))]})


def test_add_param_group_steps_the_new_params_from_step_one():
    params = make(np.float64)
    tensors, expected = torch_pair(params[:2])
    opt = nopt.Adafactor(params[:2])
    for step in range(1, 4):
        grads = grads_for(params[:2], step)
        opt.step(grads)
        torch_step(expected, tensors, grads)
    extra = [torch.tensor(p.copy()) for p in params[2:]]
    expected.add_param_group({"params": extra, "lr": 0.02})
    opt.add_param_group({"params": params[2:], "lr": 0.02})
    for step in range(4, 8):
        grads = grads_for(params, step)
        opt.step(grads)
        torch_step(expected, tensors + extra, grads)
    for p, t in zip(params, tensors + extra):
        np.testing.assert_allclose(p, t.numpy(), rtol=1e-10, atol=1e-12)


def test_an_empty_param_steps_without_effect():
    params = [np.zeros((0, 4)), np.ones(3), np.zeros(0)]
    opt = nopt.Adafactor(params)
    opt.step([np.zeros((0, 4)), np.ones(3), np.zeros(0)])
    assert np.all(params[1] < 1) and opt.state[0]["row_var"].shape == (0, 1)


def test_functional_step_matches_the_class():
    params = make(np.float64)
    mine = [p.copy() for p in params]
    opt = nopt.Adafactor(params, weight_decay=0.1)
    states = [{k: np.zeros(v) for k, v in F.adafactor_state_shapes(p.shape).items()}
              for p in mine]
    for step in range(1, 6):
        grads = grads_for(params, step)
        opt.step(grads)
        for p, g, s in zip(mine, grads, states):
            F.adafactor_step(p, g, **s, step=step, weight_decay=0.1)
    for p, m in zip(params, mine):
        np.testing.assert_array_equal(p, m)


def test_functional_step_checks_its_state():
    p, g = np.ones((3, 4)), np.ones((3, 4))
    with pytest.raises(ValueError, match="col_var is required"):
        F.adafactor_step(p, g, row_var=np.zeros((3, 1)), step=1)
    with pytest.raises(ValueError, match="row_var has shape"):
        F.adafactor_step(p, g, row_var=np.zeros(3), col_var=np.zeros((1, 4)), step=1)
    with pytest.raises(ValueError, match="variance is not used"):
        F.adafactor_step(p, g, np.zeros((3, 1)), np.zeros((1, 4)), np.zeros((3, 4)), step=1)
    np.testing.assert_array_equal(p, 1.0)


def test_zero_redundancy_optimizer_refuses_adafactor():
    dist = pytest.importorskip("numba_opt.distributed")
    pytest.importorskip("mpi4py")
    with pytest.raises(TypeError, match="element ranges"):
        dist.ZeroRedundancyOptimizer([np.ones((3, 4))], nopt.Adafactor)


def test_checkpoint_save_and_load_round_trip(tmp_path):
    params = make(np.float32)
    opt = nopt.Adafactor(params)
    opt.step(grads_for(params, 1))
    nopt.save(opt, tmp_path / "run")
    copies = [np.zeros_like(p) for p in params]
    other = nopt.Adafactor(copies)
    nopt.load(other, tmp_path / "run")
    for p, c in zip(params, copies):
        np.testing.assert_array_equal(p, c)
    for a, b in zip(opt.state, other.state):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


# ------------------------------------------------------------------------------------- CUDA


def _cuda_or_skip():
    from numba import config
    cuda_module = pytest.importorskip("numba.cuda")
    if not config.ENABLE_CUDASIM and not cuda_module.is_available():
        pytest.skip("no GPU; run with NUMBA_ENABLE_CUDASIM=1")
    return cuda_module, bool(config.ENABLE_CUDASIM)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_matches_the_cpu(dtype, monkeypatch):
    cuda_module, simulated = _cuda_or_skip()
    from numba_opt import _cuda
    if simulated:  # every simulated thread is a Python thread: tiny blocks, but several
        monkeypatch.setattr(_cuda, "THREADS_PER_BLOCK", 4)
        monkeypatch.setattr(_cuda, "MAX_BLOCKS", 3)
    shapes = [(7, 5), (5,), (3, 4, 6), ()]
    host = make(dtype, shapes)
    device = [cuda_module.to_device(p) for p in host]
    kwargs = dict(weight_decay=0.1, maximize=True, d=1.2)
    cpu, gpu = nopt.Adafactor(host, **kwargs), nopt.Adafactor(device, **kwargs)
    assert gpu.device == "cuda"
    for step in range(1, 7):
        grads = grads_for(host, step)
        if step == 3:
            grads[1] = None
        clip = dict(max_grad_norm=0.5) if step % 2 else {}  # the GPU's norm, read back
        cpu.step(grads, **clip)
        gpu.step([None if g is None else cuda_module.to_device(g) for g in grads], **clip)
    # the sums differ in order (float32 ones in float32 on the GPU): a few ulps
    tol = dict(rtol=2e-6, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    for h, d in zip(host, device):
        np.testing.assert_allclose(d.copy_to_host(), h, **tol)
    for a, b in zip(cpu.state, gpu.state_dict()["state"].values()):
        for name in ("row_var", "col_var", "variance"):
            if name in a:
                np.testing.assert_allclose(b[name], a[name], **tol)


PTX_SCRIPT = textwrap.dedent("""
    import json, numpy as np
    from numba import cuda, typeof, types
    from numba_opt import _cuda, _math, _factored_cuda as K
    counts = {}
    for dtype in (np.float32, np.float64):
        a, i, f = typeof(np.zeros(1, dtype)), types.int64, typeof(dtype(1))
        h = typeof(_cuda.scalars_argument(
            _math.AdafactorScalars._make([0.0] * len(_math.AdafactorScalars._fields)), dtype))
        factored_sq, vector_sq = K._REDUCTIONS[np.dtype(dtype)]
        kernels = {"row_moments": (K._row_moments, (a, a, i, i, i, f, h)),
                   "col_moments": (K._col_moments, (a, a, i, i, i, f, h)),
                   "row_means": (K._row_means, (a, a, i, i, f, h)),
                   "factored_apply": (K._factored_apply, (a, a, a, a, a, i, i, h)),
                   "vector_apply": (K._vector_apply, (a, a, a, h)),
                   "factored_update_sq": (factored_sq, (a, a, a, a, i, i, a, h)),
                   "vector_update_sq": (vector_sq, (a, a, a, h))}
        for name, (kernel, signature) in kernels.items():
            ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=(9, 0))
            counts[f"{name} {dtype.__name__}"] = sum(".f64" in l for l in ptx.splitlines())
    print(json.dumps(counts))
""")


def test_float32_kernels_compile_to_ptx_without_float64():
    pytest.importorskip("numba.cuda")
    counts = ptx.run(PTX_SCRIPT)
    assert len(counts) == 14
    ptx.assert_float32_kernels_hold_no_float64(counts)


def test_an_lr_scheduler_drives_it_as_torch_s_drives_torch():
    params = make(np.float32)
    tensors, expected = torch_pair(params)
    opt = nopt.Adafactor(params)
    schedule = nopt.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    theirs = torch.optim.lr_scheduler.StepLR(expected, step_size=3, gamma=0.5)
    for step in range(1, 10):
        grads = grads_for(params, step)
        opt.step(grads)
        torch_step(expected, tensors, grads)
        schedule.step()
        theirs.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(expected.param_groups[0]["lr"])
    for p, t in zip(params, tensors):
        np.testing.assert_allclose(p, t.numpy(), **TOL[np.float32])


def test_later_steps_compile_nothing_new():
    from numba_opt import _factored
    params = make(np.float32) + make(np.float64)
    opt = nopt.Adafactor(params)
    for step in (1, 2):
        opt.step(grads_for(params, step))
    counts = {name: [len(d.signatures) for d in pair] for name, pair in _factored._LOOPS.items()}
    for step in range(3, 8):
        opt.param_groups[0]["lr"] = 0.01 / step
        opt.step(grads_for(params, step))
    assert counts == {name: [len(d.signatures) for d in pair]
                      for name, pair in _factored._LOOPS.items()}
