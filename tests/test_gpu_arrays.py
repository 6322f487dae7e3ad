"""The CUDA path as torch and CuPy users meet it, over stand-ins backed by host memory
(``gpu_standins``): the optimizers, FlatParams, the functional steps and checkpoints take the
arrays through their ``__cuda_array_interface__`` and update them in place; bad ones are refused
naming the param, before anything changes.  Also: one host copy per state buffer in
``state_dict``, the single launch of a FlatParams holding an empty array, params on another GPU.

Under the CUDA simulator only: on a GPU the stand-ins' host addresses are no device memory."""
import numpy as np
import pytest

import numba_opt as nopt
import numba_opt.functional as F
from cases import TOLERANCE, case_id, count_kernel_calls, make_grads, make_params, optimizer
from gpu_standins import CuPyLike, TorchDtype, TorchLike, wrap
from reference import RULES

cuda = pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
from numba import config  # noqa: E402

pytestmark = pytest.mark.skipif(not config.ENABLE_CUDASIM,
                                reason="stand-ins in host memory: CUDA simulator only")
SHAPES = [(7, 5), (5,), (3, 2, 2), ()]
KINDS = ["torch", "cupy"]
CASES = [("SGD", {"lr": 0.01, "momentum": 0.9, "nesterov": True}),
         ("Adam", {"amsgrad": True, "lr": 1e-2}),
         ("AdamW", {"lr": 1e-2, "weight_decay": 0.3}),
         ("RMSprop", {"centered": True, "momentum": 0.5})]


@pytest.fixture(autouse=True)
def small_launches(monkeypatch):
    from numba_opt import _cuda
    monkeypatch.setattr(_cuda, "THREADS_PER_BLOCK", 4)
    monkeypatch.setattr(_cuda, "MAX_BLOCKS", 3)


def test_the_stand_ins_are_what_numpy_refuses():
    """What broke before: np.dtype(torch dtype) raises; numba's simulator cannot wrap them."""
    param = TorchLike(np.zeros(3, np.float32))
    with pytest.raises(TypeError):
        np.dtype(param.dtype)
    assert str(param.dtype) == "torch.float32" and isinstance(param.shape, tuple)
    assert param.__cuda_array_interface__["version"] == 2
    assert "stream" in CuPyLike(np.zeros(3)).__cuda_array_interface__
    assert not hasattr(cuda, "as_cuda_array")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_optimizers_update_the_arrays_in_place(case, dtype, kind):
    name, kwargs = case
    host = make_params(dtype, shapes=SHAPES)
    memory = [p.copy() for p in host]  # what the stand-ins live in
    ref = [p.astype(np.float64) for p in host]
    ref_state = [{} for _ in host]
    params = wrap(kind, memory)
    gpu, cpu = optimizer(name, params, **kwargs), optimizer(name, host, **kwargs)
    assert gpu.device == "cuda"
    for step in range(1, 9):
        grads = make_grads(host, step)
        cpu.step(grads)
        gpu.step(wrap(kind, [g.copy() for g in grads]))
        for p, g, s in zip(ref, grads, ref_state):
            RULES[name](p, g.astype(np.float64), s, **kwargs)
    for i, (param, h, r) in enumerate(zip(params, host, ref)):
        assert param.host is memory[i]  # the same memory, updated in place
        np.testing.assert_allclose(memory[i], h, **TOLERANCE[dtype], err_msg=f"param {i}")
        np.testing.assert_allclose(memory[i], r, **TOLERANCE[dtype], err_msg=f"param {i}")
        for key in cpu.state[i]:
            if key in cpu.state_names:
                np.testing.assert_allclose(gpu.state[i][key].copy_to_host(), cpu.state[i][key],
                                           **TOLERANCE[dtype], err_msg=f"state {key}")


def test_torch_bfloat16_tensors_step_like_the_cpu():
    """torch's interface says '<V2' for bfloat16; the tensor's dtype names it."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = np.dtype(ml_dtypes.bfloat16)
    host = [p.astype(bf16) for p in make_params(np.float32, shapes=SHAPES)]
    memory = [p.copy() for p in host]
    params = wrap("torch", memory)
    assert params[0].__cuda_array_interface__["typestr"] == "<V2"
    gpu = nopt.AdamW(params, lr=0.01, master_weights=True)
    cpu = nopt.AdamW(host, lr=0.01, master_weights=True)
    for step in range(1, 4):
        grads = [g.astype(bf16) for g in make_grads(make_params(np.float32, shapes=SHAPES),
                                                      step)]
        cpu.step(grads)
        gpu.step(wrap("torch", grads))
    for m, h in zip(memory, host):  # the simulator runs the CPU's compiled rules: bit for bit
        np.testing.assert_array_equal(m.view(np.uint16), h.view(np.uint16))
    sd = gpu.state_dict()
    assert sd["state"][0]["exp_avg"].dtype == np.float32
    assert sd["state"][0]["master_param"].dtype == np.float32


@pytest.mark.parametrize("kind", KINDS)
def test_flat_params_take_the_arrays_and_step_in_one_launch(kind, monkeypatch):
    from numba_opt import _cuda
    launches = count_kernel_calls(monkeypatch, _cuda.Launcher)
    host = make_params(np.float32, shapes=SHAPES)
    flat = nopt.FlatParams(wrap(kind, host))
    assert flat.device == "cuda"
    for view, h in zip(flat.params, host):
        np.testing.assert_array_equal(view.copy_to_host(), h)
    opt = nopt.Adam(flat, lr=0.01)
    opt.step(flat.grads)
    assert [size for _, size in launches] == [sum(p.size for p in host)]


@pytest.mark.parametrize("kind", KINDS)
def test_adjacent_arrays_with_an_empty_one_between_stay_one_launch(kind, monkeypatch):
    """torch (and numba, for views) give an empty array address 0: it must not break the chain
    of arrays lying back to back."""
    from numba_opt import _cuda
    launches = count_kernel_calls(monkeypatch, _cuda.Launcher)
    memory, grad_memory = np.zeros(10, np.float32), np.ones(10, np.float32)
    cuts = [(0, 6), (6, 6), (6, 10)]
    params = wrap(kind, [memory[a:b] for a, b in cuts])
    grads = wrap(kind, [grad_memory[a:b] for a, b in cuts])
    if kind == "torch":
        assert params[1].__cuda_array_interface__["data"][0] == 0
    opt = nopt.SGD(params, lr=0.5)
    opt.step(grads)
    assert [size for _, size in launches] == [10]
    np.testing.assert_array_equal(memory, -0.5)


def test_flat_params_with_an_empty_array_step_in_one_launch(monkeypatch):
    from numba_opt import _cuda, _interface
    launches = count_kernel_calls(monkeypatch, _cuda.Launcher)
    described = _interface.describe

    def as_on_a_gpu(array, name=None):  # numba gives an empty view address 0 there
        found = described(array, name)
        return found if found.size else found._replace(pointer=0)
    monkeypatch.setattr(_interface, "describe", as_on_a_gpu)
    host = [np.ones((2, 3), np.float32), np.zeros((0,), np.float32), np.ones(4, np.float32)]
    flat = nopt.FlatParams(wrap("torch", host))
    opt = nopt.Adam(flat, lr=0.1)
    for grad in flat.grads[::2]:  # (the simulator cannot copy into an empty view)
        grad.copy_to_device(np.ones(grad.shape, np.float32))
    opt.step(flat.grads)
    assert [size for _, size in launches] == [10]
    np.testing.assert_allclose(flat.data.copy_to_host(), 0.9, rtol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_functional_steps_take_the_arrays(kind):
    param, grad = make_params(np.float64, shapes=[(6,), (6,)])
    expected = param.copy()
    RULES["Adam"](expected, grad.copy(), {}, lr=0.1)
    memory = [param.copy(), grad.copy(), np.zeros(6), np.zeros(6)]
    F.adam_step(*wrap(kind, memory), step=1, lr=0.1)
    np.testing.assert_allclose(memory[0], expected, rtol=1e-12)
    assert np.all(memory[3] > 0)  # exp_avg_sq updated in place


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoints_save_and_restore_the_arrays(kind, tmp_path):
    host = make_params(np.float32, shapes=SHAPES)
    memory = [p.copy() for p in host]
    opt = nopt.Adam(wrap(kind, memory), lr=0.01)
    for step in range(1, 4):
        opt.step(wrap(kind, make_grads(host, step)))
    path = tmp_path / "run.npz"
    nopt.save(opt, path)
    saved = [m.copy() for m in memory]
    sd = opt.state_dict()
    assert all(type(v) is np.ndarray for entry in sd["state"].values() for k, v in entry.items()
               if k in opt.state_names)
    memory2 = [np.zeros_like(p) for p in host]
    again = nopt.Adam(wrap(kind, memory2), lr=0.01)
    nopt.load(again, path)
    for m, s in zip(memory2, saved):
        np.testing.assert_array_equal(m, s)  # the params restored in the arrays' memory
    grads = make_grads(host, 4)
    opt.step(wrap(kind, grads))
    again.step(wrap(kind, grads))
    for a, b in zip(memory, memory2):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------ refusals, by name
def _int_tensor():
    return TorchLike(np.zeros(3, np.int32))


@pytest.mark.parametrize("bad, error, message", [
    (lambda: TorchLike(np.zeros(3, np.int32)), TypeError, r"params\[1\] has dtype int32"),
    (lambda: CuPyLike(np.zeros(3, np.float32), readonly=True), ValueError,
     r"params\[1\] is read-only"),
    (lambda: TorchLike(np.zeros((4, 6), np.float32)[:, ::2]), ValueError,
     r"params\[1\] is not contiguous"),
], ids=["int-tensor", "read-only", "strided"])
def test_bad_arrays_are_refused_by_name(bad, error, message):
    good = TorchLike(np.ones(3, np.float32))
    with pytest.raises(error, match=message):
        nopt.Adam([good, bad()])
    with pytest.raises(error, match=message):
        nopt.FlatParams([good, bad()])


@pytest.mark.parametrize("kind", KINDS)
def test_bad_grads_are_refused_by_name_and_nothing_changes(kind):
    memory = [np.ones(3, np.float32), np.ones((2, 2), np.float32)]
    opt = nopt.Adam(wrap(kind, memory), lr=0.1)
    good = [np.ones(3, np.float32), np.ones((2, 2), np.float32)]
    opt.step(wrap(kind, good))
    before, state = [m.copy() for m in memory], opt.state_dict()
    with pytest.raises(ValueError, match=r"grad for params\[1\] has shape \(4,\) but "
                                         r"params\[1\] has shape \(2, 2\)"):
        opt.step(wrap(kind, [good[0], np.ones(4, np.float32)]))
    with pytest.raises(TypeError, match=r"grad for params\[0\] has dtype float64 but "
                                        r"params\[0\] has dtype float32"):
        opt.step(wrap(kind, [np.ones(3), good[1]]))
    for m, b in zip(memory, before):
        np.testing.assert_array_equal(m, b)
    after = opt.state_dict()
    np.testing.assert_array_equal(after["state"][1]["exp_avg"], state["state"][1]["exp_avg"])


def test_an_unknown_typestr_is_refused_by_name():
    class Odd(TorchLike):
        @property
        def __cuda_array_interface__(self):
            return {**super().__cuda_array_interface__, "typestr": "<q7"}
    with pytest.raises(TypeError, match=r"params\[0\]'s __cuda_array_interface__ has typestr"):
        nopt.SGD([Odd(np.zeros(3, np.float32))])


def test_a_torch_dtype_prints_in_messages_as_numpy_names_it():
    assert str(TorchDtype("float32")) == "torch.float32"
    with pytest.raises(TypeError, match=r"param has dtype int32"):
        F.sgd_step(_int_tensor(), _int_tensor(), step=1)


# ------------------------------------------------------------------- params on another GPU
@pytest.fixture
def two_gpus(monkeypatch):
    """The stand-ins say which GPU holds them; the current one is GPU 0."""
    from numba_opt import _cuda
    monkeypatch.setattr(_cuda, "array_device",
                        lambda array: getattr(array, "device_id", 0))


@pytest.mark.usefixtures("two_gpus")
def test_params_on_another_gpu_are_refused_by_name():
    memory = [np.ones(3, np.float32), np.ones(3, np.float32)]
    params = [TorchLike(memory[0]), TorchLike(memory[1], device_id=1)]
    message = r"params\[1\] lives on GPU 1 but the current device is GPU 0"
    with pytest.raises(ValueError, match=message):
        nopt.Adam(params)
    with pytest.raises(ValueError, match=message):
        nopt.FlatParams(params)
    opt = nopt.SGD(params[:1], lr=0.1)
    with pytest.raises(ValueError, match=r"params\[1\] lives on GPU 1"):
        opt.add_param_group({"params": params[1:]})
    with pytest.raises(ValueError, match=r"grad lives on GPU 1"):
        F.sgd_step(params[0], TorchLike(np.ones(3, np.float32), device_id=1), step=1)
    np.testing.assert_array_equal(memory[0], 1.0)
    nopt.SGD([TorchLike(np.ones(3, np.float32), device_id=0)])  # the current GPU: fine


# ------------------------------------------------------------------ copies in state_dict
def count_host_copies(monkeypatch):
    """Every device-to-host copy (the simulator's copy_to_host)."""
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
    copies = []
    original = FakeCUDAArray.copy_to_host

    def counted(self, *args, **kwargs):
        copies.append(self.size)
        return original(self, *args, **kwargs)
    monkeypatch.setattr(FakeCUDAArray, "copy_to_host", counted)
    return copies


def test_state_dict_copies_each_bucket_buffer_once(monkeypatch):
    host = make_params(np.float32, shapes=SHAPES) + make_params(np.float64, shapes=SHAPES[:2])
    params = wrap("torch", host)
    opt = nopt.Adam(params, amsgrad=True)
    opt.step(wrap("torch", [np.ones_like(p) for p in host]))
    copies = count_host_copies(monkeypatch)
    sd = opt.state_dict()
    # two buckets (float32, float64), three buffers each (exp_avg, exp_avg_sq, max_exp_avg_sq)
    sizes = [sum(p.size for p in host[:4])] * 3 + [sum(p.size for p in host[4:])] * 3
    assert sorted(copies) == sorted(sizes)
    for i, p in enumerate(host):
        assert sd["state"][i]["exp_avg"].shape == p.shape
        np.testing.assert_allclose(sd["state"][i]["exp_avg"], 0.1, rtol=1e-6)


def test_state_views_are_made_once_per_buffer():
    host = make_params(np.float32, shapes=SHAPES)
    opt = nopt.Adam(wrap("cupy", host), lr=0.01)
    opt.step(wrap("cupy", make_grads(host, 1)))
    first = opt.state[0]["exp_avg"]
    opt.step(wrap("cupy", make_grads(host, 2)))
    assert opt.state[0]["exp_avg"] is first and opt.state[0]["step"] == 2
    opt.load_state_dict(opt.state_dict())  # new buffers: new views
    assert opt.state[0]["exp_avg"] is not first
    np.testing.assert_array_equal(opt.state[0]["exp_avg"].copy_to_host(),
                                  first.copy_to_host())
