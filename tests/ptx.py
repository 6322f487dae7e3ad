"""CUDA kernels compiled to PTX in a fresh process (NVVM: no GPU needed, the simulator off).

``run(script)`` runs ``PRELUDE`` + ``script``, which prints one JSON line last, and returns it
parsed.  ``PRELUDE`` gives the script ``update_ptx(name, storage, cc)``: the PTX of the update
kernel of ``_math.KERNELS[name]`` on ``storage`` (a ``_codecs.Storage``) with float32 scalars.
"""
import json
import os
import subprocess
import sys

PRELUDE = '''
import json, numpy as np
from numba import cuda, typeof
from numba_opt import _codecs, _cuda, _math
S = _codecs.Storage


def update_ptx(name, storage=_cuda.NATIVE, cc=(9, 0)):
    n_states, family = _math.KERNELS[name]
    fields = _math.SCALARS[family]._fields
    h = _cuda.scalars_argument(_math.SCALARS[family]._make([0.0] * len(fields)), np.float32)

    def array(codec):  # what a kernel sees of an array stored by ``codec``
        return typeof(np.zeros(1, np.uint16 if codec != "native" else np.float32))
    # param, grad, the states, the float32 master copy, the device clip scale, the scalars
    signature = ((array(storage.param),) * 2 + (array(storage.state),) * n_states
                 + (array("native"),) * storage.master + (array("native"), typeof(h)))
    return cuda.compile_ptx(_cuda.kernel(name, storage).kernel.py_func, signature, cc=cc)[0]
'''


def assert_float32_kernels_hold_no_float64(counts):
    """``counts``: kernel label ending in its dtype -> its PTX lines with ``.f64``.  The float64
    kernels must show some (else the count is not looking at the right thing)."""
    for kernel, f64_lines in counts.items():
        if kernel.endswith("float32"):
            assert f64_lines == 0, f"{kernel}: {f64_lines} float64 PTX lines"
        else:
            assert f64_lines > 0, f"{kernel}: the float64 kernel shows no f64, check the check"


def run(script, timeout=900):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    done = subprocess.run([sys.executable, "-c", PRELUDE + script], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
