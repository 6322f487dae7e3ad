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

