"""Two optimizers stepped from two Python threads at once give the results of stepping them one
after the other, under every threading layer numba may pick, including 'workqueue', which aborts
the whole process if two threads start parallel regions at the same time."""
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import threading
    import numpy as np
    import numba, numba_opt as nopt

    SIZES = [100_000, 70_000, 300, 5]   # parallel (with the GIL released) and serial loops

    def run(name, seed, steps, barrier=None):
        rng = np.random.default_rng(seed)
        params = [rng.standard_normal(n).astype(np.float32) for n in SIZES]
        grads = [[rng.standard_normal(n).astype(np.float32) for n in SIZES]
                 for _ in range(4)]
        opt = getattr(nopt, name)(params, lr=1e-3)
        if barrier is not None:
            barrier.wait()
        for step in range(steps):
            opt.step(grads[step % 4], max_grad_norm=50.0)  # the norm kernel runs too
        return params

    jobs = [("Adam", 0), ("RMSprop", 1)]
    alone = [run(name, seed, 40) for name, seed in jobs]
    together, errors = [None, None], []
    barrier = threading.Barrier(2)

    def worker(k):
        try:
            together[k] = run(*jobs[k], 40, barrier)
        except BaseException as exc:
            errors.append(exc)
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for a, b in zip(alone, together):
        for x, y in zip(a, b):
            assert np.array_equal(x, y)
    print("layer", numba.threading_layer())
""")


@pytest.mark.parametrize("layer", ["default", "workqueue"])
def test_two_threads_step_two_optimizers(layer):
    env = dict(os.environ)
    if layer != "default":
        env["NUMBA_THREADING_LAYER"] = layer
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    if layer != "default":
        assert f"layer {layer}" in result.stdout


FORK_SCRIPT = textwrap.dedent("""
    import multiprocessing as mp
    import warnings
    import numpy as np
    import numba, numba_opt as nopt

    def trajectory(steps=5):
        p = np.linspace(-1, 1, 100_000).astype(np.float32)   # parallel kernels (and norm)
        opt = nopt.Adam([p], lr=1e-2)
        for k in range(steps):
            opt.step([np.cos(p + k)], max_grad_norm=10.0)
        return p

    def child(queue):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = trajectory()
        queue.put((result, [str(w.message) for w in caught]))

    if __name__ == "__main__":
        expected = trajectory()                 # the parent runs parallel regions first
        layer = numba.threading_layer()
        context = mp.get_context("fork")
        queue = context.Queue()
        process = context.Process(target=child, args=(queue,))
        process.start()
        result, messages = queue.get(timeout=120)
        process.join(60)
        assert process.exitcode == 0, process.exitcode
        assert np.array_equal(result, expected)  # serial == parallel, bit for bit
        print("layer", layer, "warned", any("forked" in m for m in messages))
""")


def test_a_forked_child_can_step_after_the_parent_ran_parallel_kernels(tmp_path):
    """GNU OpenMP terminates a child forked after it ran; numba_opt's kernels then run serially
    in the child (with one warning) and give the same result."""
    script = tmp_path / "fork_child.py"
    script.write_text(FORK_SCRIPT)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    if "layer omp" in result.stdout:
        assert "warned True" in result.stdout



OPENMP_SCRIPT = textwrap.dedent("""
    import os, subprocess, sys
    import numpy as np
    import numba_opt as nopt
    p = np.zeros(100_000, np.float32)
    opt = nopt.Adam([p])
    for _ in range(3):
        opt.step([np.ones_like(p)])
    info = nopt.threads.info()
    child = subprocess.run([sys.executable, "-c",
                            "import os; print(os.environ.get('OMP_WAIT_POLICY'))"],
                           capture_output=True, text=True).stdout.strip()
    print("layer", info["threading_layer"])
    print("openmp", info["openmp"])
    print("here", os.environ.get("OMP_WAIT_POLICY"), "child", child)
""")


def run_openmp_script(**env_changes):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY",
                                                             "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    env.update(env_changes, OMP_DISPLAY_ENV="TRUE")  # libgomp prints its settings as it loads
    result = subprocess.run([sys.executable, "-c", OPENMP_SCRIPT], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    if "layer omp" not in result.stdout:
        pytest.skip("numba does not use OpenMP here")
    return result


def test_numba_openmp_pool_sleeps_and_the_environment_is_left_as_it_was():
    result = run_openmp_script()
    assert "openmp OMP_WAIT_POLICY=PASSIVE for numba's OpenMP pool" in result.stdout
    if "OPENMP DISPLAY ENVIRONMENT" in result.stderr:  # GNU OpenMP: check what it read
        assert "OMP_WAIT_POLICY = 'PASSIVE'" in result.stderr
    assert "here None child None" in result.stdout  # nothing else sees the variable


def test_a_wait_policy_the_user_set_is_left_alone():
    result = run_openmp_script(OMP_WAIT_POLICY="active")
    assert "openmp left to you: OMP_WAIT_POLICY=active" in result.stdout
    if "OPENMP DISPLAY ENVIRONMENT" in result.stderr:
        assert "OMP_WAIT_POLICY = 'ACTIVE'" in result.stderr
    assert "here active child active" in result.stdout


@pytest.mark.parametrize("value", ["serial", "fastest"])
def test_the_loop_choice_comes_from_the_environment(value):
    script = ("import numpy as np, numba_opt as nopt\n"
              "nopt.Adam([np.zeros(3)]).step([np.ones(3)])\n"
              "print('loops', nopt.threads.info()['loops'])\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "NUMBA_OPT_LOOPS": value}, timeout=600)
    if value == "serial":
        assert result.returncode == 0, result.stderr
        assert "loops serial" in result.stdout
    else:
        assert result.returncode != 0
        assert "NUMBA_OPT_LOOPS must be one of ('timed', 'parallel', 'serial')" in result.stderr
