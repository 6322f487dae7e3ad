"""The benchmark suite's own code: every peer computes a real optimizer step (the NumPy and
torch peers compute the same Adam as numba_opt), and the report's ratios are right."""
import numpy as np
import pytest

import numba_opt as nopt
from bench import report
from numba_opt import benchmarking as peers
from bench.__main__ import cases, loops_for


def test_every_benchmark_case_is_distinct_and_its_step_runs(monkeypatch):
    from numba_opt import _cpu
    monkeypatch.setattr(_cpu, "SERIAL_BELOW", _cpu.SERIAL_BELOW)  # restored after: setups set it
    todo = cases("all", quick=True)
    names = [(c[0], c[1], c[2], c[3], c[4]) for c in todo]
    assert len(names) == len(set(names))
    assert {c[0] for c in todo} == {"size", "model", "optimizer", "clipping"}
    seen_setups = set()
    for suite, case, optimizer, dtype, peer, sizes, setup, options in todo:
        assert loops_for(peer, sizes, optimizer, dtype) >= 1  # every peer has a cost estimate
        key = (setup, optimizer, tuple(sorted(options.items())))
        if key in seen_setups:
            continue
        seen_setups.add(key)
        step = setup([64, 32], np.dtype(dtype), optimizer=optimizer, **options)
        step()
        step()


@pytest.mark.parametrize("optimizer", ["Adam", "SGD-momentum"])
def test_clipping_peers_clip_and_step_alike(optimizer, monkeypatch):
    """Fused clipping and clip-then-step with NumPy make the same step (with a clip norm the
    bench grads exceed), unlike no clipping; the NumPy peer's grads stay clipped, so its next
    steps equal torch's clip_grad_norm_ + fused step."""
    sizes, dtype = [50, 7], np.dtype(np.float64)

    def flat_params(step):
        return np.concatenate([np.asarray(p).ravel() for p in step.params])

    first = {}
    for how, clip_norm in (("fused", 1e-3), ("numpy", 1e-3), ("fused", 1e6)):
        monkeypatch.setattr(peers, "CLIP_NORM", clip_norm)
        step = peers.numba_opt_clipped(sizes, dtype, optimizer, how=how)
        step()
        first[how, clip_norm] = flat_params(step)
    np.testing.assert_allclose(first["fused", 1e-3], first["numpy", 1e-3], rtol=1e-12)
    assert not np.allclose(first["fused", 1e-3], first["fused", 1e6], rtol=1e-6, atol=0)
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(peers, "CLIP_NORM", 1e-3)
    ours, theirs = peers.numba_opt_clipped(sizes, dtype, optimizer, how="numpy"), \
        peers.torch_clipped(sizes, dtype, optimizer)
    for _ in range(3):
        ours()
        theirs()
    with torch.no_grad():
        np.testing.assert_allclose(flat_params(ours), flat_params(theirs), rtol=1e-10)


@pytest.mark.parametrize("peer", [peers.numpy_adam, peers.numpy_adam_out])
def test_numpy_peers_compute_adam(peer, monkeypatch):
    sizes = [50, 7]
    captured = {}
    original = peers.arrays

    def capture(sizes_, dtype, seed=0):
        result = original(sizes_, dtype, seed)
        captured.setdefault(seed, result)
        return result
    monkeypatch.setattr(peers, "arrays", capture)
    step = peer(sizes, np.dtype(np.float64))
    expected = [p.copy() for p in original(sizes, np.float64)]
    grads = original(sizes, np.float64, seed=1)
    opt = nopt.Adam(expected, lr=1e-3)
    for _ in range(3):
        step()
        opt.step(grads)
    for mine, theirs in zip(captured[0], expected):
        np.testing.assert_allclose(mine, theirs, rtol=1e-10)


def test_report_ratios_table_and_plot(tmp_path):
    def record(peer, seconds, suite="size", case="n=1e+06", n=1_000_000):
        return dict(suite=suite, case=case, optimizer="Adam", dtype="float32", peer=peer, n=n,
                    tensors=1, traffic=7, seconds=seconds, stdev=0.0)
    records = [record("roof 4R/3W", 1e-3), record("numba_opt", 1.25e-3),
               record("torch fused", 2.5e-3), record("numba_opt", 2e-3, suite="model",
                                                      case="mlp", n=1_000_000)]
    rows = {r["peer"]: r for r in report.rows(records) if r["suite"] == "size"}
    assert rows["numba_opt"]["vs_torch"] == pytest.approx(2.0)
    assert rows["numba_opt"]["of_roof"] == pytest.approx(0.8)
    assert rows["roof 4R/3W"]["gbs"] == pytest.approx(7 * 4e6 / 1e-3 / 1e9)
    paths = report.write(records, str(tmp_path), machine="test machine")
    table = open(paths["markdown"]).read()
    assert "| Adam | numba_opt | 1.250 ms | 22.4 | 2.00x (torch fused) | 0.80 |" in table
    png = open(paths["plot"], "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_gpu_peers_run_under_the_simulator():
    from numba import config
    if not config.ENABLE_CUDASIM:
        pytest.skip("needs NUMBA_ENABLE_CUDASIM=1 (make test sets it) or a GPU")
    for setup in (peers.numba_opt_cuda, peers.cuda_roof):
        step = setup([6, 3], np.dtype(np.float32))
        step()
