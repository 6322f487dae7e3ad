"""numba_opt under NUMBA_DISABLE_JIT=1, the mode of the mutation runs (tests/MUTATION.md): the
CPU backend turns its multi-tensor loop off (it reads memory through the ``_pointer`` intrinsic,
which has no Python form) and steps each array with the per-array loop, still exactly the rules."""
import os
import subprocess
import sys
from pathlib import Path

import numba

from numba_opt import _cpu

ROOT = Path(__file__).resolve().parent.parent

# Steps a few optimizers over separate arrays (a multi-tensor table when compiled) and checks
# them against the float64 reference.
SCRIPT = """
import numba, numpy as np
from numba_opt import _cpu
from cases import make_grads, make_params, optimizer
from reference import RULES
assert numba.config.DISABLE_JIT and not _cpu.MULTI_TENSOR
for name, kwargs in [("SGD", {"lr": 0.01, "momentum": 0.9}), ("Adam", {"amsgrad": True}),
                     ("Lion", {"weight_decay": 0.1})]:
    params = make_params(np.float64, shapes=[(7, 5), (5,), ()])
    ref = [p.copy() for p in params]
    states = [{} for _ in params]
    opt = optimizer(name, params, **kwargs)
    for step in range(1, 4):
        grads = make_grads(params, step)
        opt.step(grads)
        for p, g, s in zip(ref, grads, states):
            RULES[name](p, g, s, **kwargs)
    for p, r in zip(params, ref):
        np.testing.assert_allclose(p, r, rtol=1e-12, atol=1e-13)
print("ok")
"""


def test_multi_tensor_loop_is_on_when_compiled():
    # the switch must not cost the compiled backend its fast path
    assert _cpu.MULTI_TENSOR == (not numba.config.DISABLE_JIT)


def test_steps_follow_the_reference_with_the_jit_disabled(tmp_path):
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", NUMBA_CACHE_DIR=str(tmp_path),
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
