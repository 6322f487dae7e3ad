"""The CUDA backend: the whole optimizer table on CUDA arrays, against the float64 reference and
the CPU backend.  Runs under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, as ``make test``
does) with tiny launches so several blocks and strides run, or unchanged on a real GPU
(``make test-gpu``)."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import numba_opt as nopt
from numba_opt import _math
from cases import (CASES, TOLERANCE, case_id, count_kernel_calls, make_grads, make_params,
                   optimizer)
import ptx
from reference import RULES

cuda = pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
from numba import config  # noqa: E402

SIMULATED = bool(config.ENABLE_CUDASIM)
needs_cuda = pytest.mark.skipif(not SIMULATED and not cuda.is_available(),
                                reason="no GPU; run with NUMBA_ENABLE_CUDASIM=1")
SHAPES = [(7, 5), (5,), (3, 2, 2), ()]
STEPS = 20


@pytest.fixture(autouse=True)
def small_launches(monkeypatch):
    """Under the simulator every thread is a Python thread: keep blocks tiny but several."""
    if SIMULATED:
        from numba_opt import _cuda
        monkeypatch.setattr(_cuda, "THREADS_PER_BLOCK", 4)
        monkeypatch.setattr(_cuda, "MAX_BLOCKS", 3)


def to_device(arrays):
    return [cuda.to_device(a) for a in arrays]


@needs_cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_cuda_matches_the_reference_and_the_cpu_backend(case, dtype):
    name, kwargs = case
    host = make_params(dtype, shapes=SHAPES)
    ref = [p.astype(np.float64) for p in host]
    ref_state = [{} for _ in host]
    device = to_device(host)
    gpu = optimizer(name, device, **kwargs)
    cpu = optimizer(name, host, **kwargs)
    assert gpu.device == "cuda" and cpu.device == "cpu"
    for step in range(1, STEPS + 1):
        grads = make_grads(host, step)
        cpu.step(grads)
        gpu.step(to_device(grads))
        for p, g, s in zip(ref, grads, ref_state):
            RULES[name](p, g.astype(np.float64), s, **kwargs)
    for i, (d, h, r) in enumerate(zip(device, host, ref)):
        result = d.copy_to_host()
        assert result.dtype == dtype
        np.testing.assert_allclose(result, r, **TOLERANCE[dtype], err_msg=f"param {i} vs ref")
        np.testing.assert_allclose(result, h, **TOLERANCE[dtype], err_msg=f"param {i} vs cpu")
        for key in cpu.state[i]:
            if key in cpu.state_names:  # buffers; step and host scalars live on the host
                np.testing.assert_allclose(gpu.state[i][key].copy_to_host(), cpu.state[i][key],
                                           **TOLERANCE[dtype], err_msg=f"state {key}")


@needs_cuda
def test_state_dict_moves_between_cuda_and_cpu():
    host = make_params(np.float32, shapes=SHAPES)
    device = to_device(host)
    gpu = nopt.Adam(device, amsgrad=True, lr=1e-2)
    for step in range(1, 6):
        gpu.step(to_device(make_grads(host, step)))
    checkpoint = gpu.state_dict()
    assert all(isinstance(v, np.ndarray) for st in checkpoint["state"].values()
               for k, v in st.items() if k != "step")
    resumed_host = [d.copy_to_host() for d in device]
    cpu = nopt.Adam(resumed_host, amsgrad=True, lr=1e-2)
    cpu.load_state_dict(checkpoint)
    resumed_device = to_device(resumed_host)
    gpu2 = nopt.Adam(resumed_device, amsgrad=True, lr=1e-2)
    gpu2.load_state_dict(cpu.state_dict())
    for step in range(6, 11):
        grads = make_grads(resumed_host, step)
        gpu.step(to_device(grads))
        gpu2.step(to_device(grads))
        cpu.step(grads)
    for a, b, c in zip(device, resumed_device, resumed_host):
        np.testing.assert_array_equal(a.copy_to_host(), b.copy_to_host())
        np.testing.assert_allclose(a.copy_to_host(), c, **TOLERANCE[np.float32])


@needs_cuda
def test_locations_never_mix():
    host = make_params(np.float32, shapes=SHAPES[:2])
    device = to_device(host)
    with pytest.raises(TypeError, match=r"params\[1\] lives on cpu but the optimizer runs on "
                                        r"cuda \(set by params\[0\]\)"):
        nopt.SGD([device[0], host[1]])
    with pytest.raises(TypeError, match=r"params\[0\] lives on cuda"):
        nopt.SGD(device, device="cpu")
    opt = nopt.SGD(device, device="cuda")
    before = [d.copy_to_host() for d in device]
    with pytest.raises(TypeError, match=r"grad for params\[1\] lives on cpu"):
        opt.step([cuda.to_device(host[0]), host[1]])
    for d, b in zip(device, before):
        np.testing.assert_array_equal(d.copy_to_host(), b)


@needs_cuda
def test_functional_steps_work_on_device_arrays():
    import numba_opt.functional as F
    param, grad = make_params(np.float64, shapes=[(6,), (6,)])
    expected = param.copy()
    RULES["Adam"](expected, grad.copy(), {}, lr=0.1)
    d_param, d_grad = to_device([param, grad])
    F.adam_step(d_param, d_grad, cuda.to_device(np.zeros(6)), cuda.to_device(np.zeros(6)),
                step=1, lr=0.1)
    np.testing.assert_allclose(d_param.copy_to_host(), expected, rtol=1e-12)



@needs_cuda
def test_functional_steps_refuse_device_arrays_that_share_memory():
    import numba_opt.functional as F
    d_param, d_grad, d_avg = to_device([np.ones(6), np.ones(6), np.zeros(6)])
    with pytest.raises(ValueError, match="exp_avg_sq shares memory with param"):
        F.adam_step(d_param, d_grad, d_avg, d_param, step=1)
    pool = cuda.to_device(np.zeros(12))
    with pytest.raises(ValueError, match="exp_avg_sq shares memory with exp_avg"):
        F.adam_step(d_param, d_grad, pool[0:6], pool[3:9], step=1)
    np.testing.assert_array_equal(d_param.copy_to_host(), 1.0)
    np.testing.assert_array_equal(pool.copy_to_host(), 0.0)
    F.adam_step(d_param, d_grad, pool[0:6], pool[6:12], step=1)  # adjacent, not overlapping
    assert np.all(pool.copy_to_host() > 0)

PTX_SCRIPT = textwrap.dedent("""
    import json, os, re, shutil, subprocess, tempfile
    import numpy as np
    from numba import cuda, typeof
    from numba_opt import _codecs, _cuda, _cuda_norm, _math

    def ptxas(ptx):
        # NVVM writes the newest PTX ISA it knows; the local ptxas may be older
        if shutil.which("ptxas") is None:
            return None
        ptx = re.sub(r"^[.]version [0-9.]+", ".version 9.0", ptx, flags=re.M)
        with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as source:
            source.write(ptx)
        try:
            run = subprocess.run(["ptxas", "-v", "-arch=sm_90", source.name, "-o", os.devnull],
                                 capture_output=True, text=True)
        finally:
            os.unlink(source.name)
        if run.returncode:
            return "ptxas failed: " + run.stderr[-500:]
        return [int(n) for n in re.findall(r"([0-9]+) bytes spill (?:stores|loads)", run.stderr)]

    out = {}
    def check(label, kernel, signature):
        ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=(9, 0))
        out[label] = {"f64": sum(".f64" in line for line in ptx.splitlines()),
                      "spills": ptxas(ptx)}

    int64 = typeof(np.zeros(1, np.int64))
    for launcher in _cuda.LAUNCHERS:
        name = launcher.__name__
        n_states, family = _math.KERNELS[name]
        fields = _math.SCALARS[family]._fields
        launcher.bind_table(1)  # makes the table kernel
        for dtype in (np.float32, np.float64):
            array = typeof(np.zeros(1, dtype))
            h = typeof(_cuda.scalars_argument(_math.SCALARS[family]._make([0.0] * len(fields)),
                                              dtype))
            check(f"{name} span {dtype.__name__}", launcher.kernel,
                  (array,) * (2 + n_states) + (array, h))
            check(f"{name} table {dtype.__name__}", launcher._table_kernel,
                  (int64, int64, int64, int64, array) + (array,) * 4 + (array, h))
    f64 = typeof(np.zeros(1, np.float64))
    for codec, dtype in (("native", np.float32), ("native", np.float64),
                         ("bfloat16", _codecs.BITS)):
        grads = typeof(np.zeros(1, dtype))
        check(f"norm span {codec} {np.dtype(dtype).name}", _cuda_norm._SPAN_SUMS[codec],
              (grads, f64, typeof(1)))
        check(f"norm table {codec} {np.dtype(dtype).name}", _cuda_norm._TABLE_SUMS[codec],
              (int64, int64, grads, f64, typeof(1)))
    check("norm combine", _cuda_norm._combine,
          (f64, typeof(1), typeof(1.0), f64, typeof(1), typeof(np.zeros(1, np.float32)), f64))
    print(json.dumps(out))
""")


def test_kernels_compile_to_ptx_without_float64_in_float32_kernels_or_spills():
    """Compile every update kernel (over one span and over a device table of arrays) and the
    grad-norm kernels to real PTX (NVVM, no GPU needed) outside the simulator; where ptxas is
    installed, assemble them for sm_90 and check that nothing spills."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    run = subprocess.run([sys.executable, "-c", PTX_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(results) == 4 * len(_math.KERNELS) + 7
    for kernel, result in results.items():
        if kernel.startswith("norm"):  # the reductions accumulate in float64, on purpose
            assert result["f64"] > 0, kernel
        elif kernel.endswith("float32"):
            assert result["f64"] == 0, f"{kernel}: {result['f64']} float64 PTX lines"
        else:
            assert result["f64"] > 0, f"{kernel}: the float64 kernel shows no f64, check the check"
        spills = result["spills"]
        assert spills is None or spills == [0, 0], f"{kernel}: {spills}"


@needs_cuda
def test_readme_gpu_example_runs():
    import pathlib
    import re
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S)
                if "cuda.to_device" in b)
    namespace = {"np": np, "nopt": nopt}
    exec(compile(code, "README.md", "exec"), namespace)
    W = namespace["W"].copy_to_host()
    # one AdamW step from zeros with a gradient of ones moves every weight by -lr
    np.testing.assert_allclose(W, -1e-3, rtol=1e-5)


NO_GPU_SCRIPT = textwrap.dedent("""
    import numpy as np, numba_opt as nopt

    class ForeignCudaArray:  # what CuPy or torch would hand over, minus the memory
        shape, dtype = (3,), np.dtype(np.float32)
        __cuda_array_interface__ = {"shape": (3,), "typestr": "<f4", "data": (1 << 40, False),
                                    "strides": None, "version": 3}
    try:
        nopt.Adam([ForeignCudaArray()])
    except RuntimeError as exc:
        print("RuntimeError:", exc)
""")


def test_cuda_arrays_without_a_gpu_give_a_clear_error():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    probe = subprocess.run([sys.executable, "-c", "from numba import cuda; "
                            "print(cuda.is_available())"], env=env, capture_output=True, text=True)
    if probe.stdout.strip() == "True":
        pytest.skip("this machine has a GPU")
    run = subprocess.run([sys.executable, "-c", NO_GPU_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=300)
    assert "RuntimeError: device='cuda'" in run.stdout, run.stdout + run.stderr[-2000:]
    assert "no usable NVIDIA GPU" in run.stdout


def test_missing_cuda_backend_says_what_to_install(monkeypatch):
    from numba_opt import dispatch
    monkeypatch.setitem(dispatch._BACKEND_MODULES, "cuda", "numba_opt._not_installed")
    with pytest.raises(RuntimeError, match=r"pip install 'numba-opt\[cuda\]'"):
        dispatch.backend("cuda")


@needs_cuda
def test_flat_params_on_the_gpu_step_in_one_launch(monkeypatch):
    from numba_opt import _cuda
    launches = count_kernel_calls(monkeypatch, _cuda.Launcher)
    host = make_params(np.float32, shapes=SHAPES)
    flat_gpu = nopt.FlatParams(to_device(host))
    flat_cpu = nopt.FlatParams(host)
    assert flat_gpu.device == "cuda"
    gpu, cpu = nopt.AdamW(flat_gpu, lr=0.01), nopt.AdamW(flat_cpu, lr=0.01)
    for step in range(1, 6):
        grads = make_grads(host, step)
        for view, grad in zip(flat_gpu.grads, grads):
            view.copy_to_device(grad)
        for view, grad in zip(flat_cpu.grads, grads):
            view[...] = grad
        del launches[:]
        gpu.step(flat_gpu.grads)
        cpu.step(flat_cpu.grads)
        assert [size for _, size in launches] == [flat_cpu.data.size]
    np.testing.assert_allclose(flat_gpu.data.copy_to_host(), flat_cpu.data,
                               **TOLERANCE[np.float32])


@needs_cuda
@pytest.mark.parametrize("flat", [False, True], ids=["arrays", "FlatParams"])
def test_fused_clipping_on_the_gpu_matches_the_cpu(flat):
    host = make_params(np.float32, shapes=SHAPES)
    device = nopt.FlatParams(to_device(host)) if flat else to_device(host)
    gpu, cpu = nopt.Adam(device, lr=0.01), nopt.Adam(host, lr=0.01)
    live = device.params if flat else device
    for step in range(1, 8):
        grads = make_grads(host, step)
        if flat:
            for view, grad in zip(device.grads, grads):
                view.copy_to_device(grad)
            gpu_grads = device.grads
        else:
            gpu_grads = to_device(grads)
        kwargs = dict(max_grad_norm=3.0) if step % 2 else dict(clip_value=0.5)
        gpu_norm, cpu_norm = gpu.step(gpu_grads, **kwargs), cpu.step(grads, **kwargs)
        if step % 2:
            assert gpu_norm == pytest.approx(cpu_norm, rel=1e-12)
    for d, h in zip(live, host):
        np.testing.assert_allclose(d.copy_to_host(), h, **TOLERANCE[np.float32])


ISA_SCRIPT = textwrap.dedent("""
    out, found = OUT, {}
    for name in ("sgd_momentum", "adam_amsgrad", "rmsprop_centered_momentum"):
        for cc in ((8, 0), (9, 0)):
            ptx = update_ptx(name, cc=cc)
            path = f"{out}/{name}_sm{cc[0]}{cc[1]}.ptx"
            open(path, "w").write(ptx)
            found[path] = next(l.split()[1] for l in ptx.splitlines()
                               if l.startswith(".version"))
    print(json.dumps(found))
""")
# PTX ISA 8.0 is CUDA 12.0's: what the oldest driver of the numba-cuda[cu12] path can load
CU12_ISA = "8.0"


def test_kernels_need_no_ptx_isa_past_cuda_12(tmp_path):
    """numba-cuda's cu13 NVVM writes `.version 9.5` PTX, which needs a CUDA 13 driver; the cu12
    path writes ISA 8.x.  The kernels, for Ampere (sm_80) and Hopper (sm_90), assemble with
    their `.version` lowered to 8.0, so they use nothing newer: the cu12 path builds them."""
    import pathlib
    import re
    import shutil
    ptxas = shutil.which("ptxas")
    if ptxas is None:
        pytest.skip("no ptxas (CUDA toolkit) on this machine")
    versions = ptx.run(f"OUT = {str(tmp_path)!r}\n" + ISA_SCRIPT)
    assert len(versions) == 6
    for path, version in versions.items():
        assert tuple(map(int, version.split("."))) >= (8, 0), f"{path}: .version {version}"
        text = pathlib.Path(path).read_text()
        lowered = tmp_path / (os.path.basename(path) + ".cu12.ptx")
        lowered.write_text(re.sub(r"^\.version \S+", f".version {CU12_ISA}", text, flags=re.M))
        arch = re.search(r"^\.target (sm_\d+)", text, re.M).group(1)
        assembled = subprocess.run([ptxas, f"-arch={arch}", str(lowered), "-o",
                                    str(lowered) + ".cubin"], capture_output=True, text=True,
                                   timeout=300)
        assert assembled.returncode == 0, f"{path} at ISA {CU12_ISA}: {assembled.stderr}"
