"""The benchmark suite's own code: every peer computes a real optimizer step (the NumPy and
torch peers compute the same Adam as numba_opt), and the report's ratios are right."""
import time

import numpy as np
import pytest

import numba_opt as nopt
from bench import report
from numba_opt import benchmarking as peers
from bench.__main__ import cases, loops_for


@pytest.fixture(autouse=True)
def keep_loop_choices(monkeypatch):
    """Bench setups fix the loop choice or threshold for their worker process; not for the
    tests that follow."""
    from numba_opt import _cpu
    monkeypatch.setattr(_cpu, "LOOPS", _cpu.LOOPS)
    monkeypatch.setattr(_cpu, "SERIAL_BELOW", _cpu.SERIAL_BELOW)


def test_every_benchmark_case_is_distinct_and_its_step_runs(monkeypatch):
    todo = cases("all", quick=True)
    names = [(c[0], c[1], c[2], c[3], c[4]) for c in todo]
    assert len(names) == len(set(names))
    assert {c[0] for c in todo} == {"size", "model", "optimizer", "clipping", "fresh-grads",
                                    "low-precision", "memory"}
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


@pytest.mark.parametrize("optimizer", ["Adam", "Momentum"])
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
    dtype = np.dtype(np.float32)
    step = peers.numba_opt_cuda([6, 3], dtype)
    start = np.concatenate(peers.arrays([6, 3], dtype))
    grad = np.concatenate(peers.arrays([6, 3], dtype, seed=1)).astype(np.float64)
    step()
    step()
    # two Adam steps (lr 1e-3) from zero state with the same grad, from the equations
    m, v, expected = np.zeros(9), np.zeros(9), start.astype(np.float64)
    for t in (1, 2):
        m, v = 0.9 * m + 0.1 * grad, 0.999 * v + 0.001 * grad ** 2
        expected -= 1e-3 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    np.testing.assert_allclose(step.flat.data.copy_to_host(), expected, rtol=1e-5)

    step = peers.cuda_roof([6, 3], dtype)
    a, b, c, d = (x.copy_to_host() for x in step.arrays)
    step()
    total = a + b + c + d
    for got in (step.arrays[0], step.arrays[2], step.arrays[3]):
        np.testing.assert_array_equal(got.copy_to_host(), total)
    np.testing.assert_array_equal(step.arrays[1].copy_to_host(), b)


# ----------------------------------------------------------------------- training-loop suite
from bench import training_loop as tl  # noqa: E402


def tiny_models(dtype=np.float32):
    return {"mlp": tl.MLP(layers=(6, 9, 7, 4), batch=5, dtype=dtype),
            "transformer": tl.Transformer(blocks=2, d_model=4, tokens=6, dtype=dtype)}


def training_contenders():
    """The pyperf suite's contenders (the low-precision ones are for bench/loop_pair.py)."""
    return [c for c in tl.CONTENDERS if c not in tl.LOW_PRECISION
            and (c != "torch fused" or tl._torch_installed())]


def test_training_loop_models_have_the_stated_shapes():
    mlp = tl.MODELS["mlp 784-1024-1024-10"]
    assert mlp is tl.MLP and sum(np.prod(s) for s in tl.MLP(batch=2).shapes.values()) == 1_863_690
    shapes = tl.Transformer(blocks=18, d_model=128, tokens=1).shapes
    assert len(shapes) == 216 and shapes["h.17.mlp.c_proj.weight"] == (512, 128)
    assert shapes["h.0.attn.c_attn.weight"] == (128, 384) and shapes["h.0.ln_1.bias"] == (128,)


def test_training_loop_cases_run_idle_before_busy_and_are_distinct():
    todo = tl.cases()
    assert len(todo) == len(set(todo)) == 2 * 2 * len(training_contenders()) * len(tl.METRICS)
    loads = [load for _, load, _, _ in todo]
    assert loads == sorted(loads, key=tl.LOADS.index)  # every idle one first
    for model, load, contender, metric in todo:
        assert tl.loops_for(model, load, contender, metric, quick=True) >= 1


@pytest.mark.parametrize("contender", list(tl.CONTENDERS))
def test_training_loop_contender_builds_and_every_metric_runs(contender):
    if contender == "torch fused":
        pytest.importorskip("torch")
    for model in tiny_models().values():
        trained = tl.CONTENDERS[contender](model)
        grads = trained.compute()
        trained.step(grads)
        for metric, measure in tl.MEASURE.items():
            assert measure(trained, 2, grads) > 0


@pytest.mark.parametrize("model", ["mlp", "transformer"])
def test_training_loop_contenders_optimize_the_same_thing(model):
    """From the same params and data, a few fwd+bwd+step iterations of every contender give the
    same params (a contender that skips its step, or steps on stale grads, fails)."""
    trained = {}
    for contender in training_contenders():
        net = tiny_models(np.float64)[model]
        trained[contender] = tl.CONTENDERS[contender](net)
        for _ in range(4):
            trained[contender].iteration()
    start = tiny_models(np.float64)[model].init_params()
    reference = trained["numpy"].params
    for contender, result in trained.items():
        for name, initial in start.items():
            moved = np.abs(np.asarray(result.params[name]) - initial).max()
            assert moved > 1e-4, (contender, name)  # four steps of lr=1e-3 moved every param
            np.testing.assert_allclose(result.params[name], reference[name], rtol=1e-7,
                                       atol=1e-12, err_msg=f"{contender} {name}")


@pytest.mark.parametrize("model", ["mlp", "transformer"])
def test_training_loop_low_precision_contenders_step_like_float32_state(model):
    """bfloat16 and int8 state: the same iterations as float32 state, to the state's rounding
    (tiny params keep int8 state float32, so the int8 contender is checked on a model whose
    largest params have 4096 elements or more)."""
    net = (tl.MLP(layers=(80, 64, 4), batch=5) if model == "mlp"
           else tl.Transformer(blocks=1, d_model=32, tokens=6))
    trained = {c: tl.CONTENDERS[c](net) for c in ("numba_opt FlatParams", *tl.LOW_PRECISION)}
    for _ in range(4):
        for contender in trained.values():
            contender.iteration()
    start = net.init_params()
    reference = trained["numba_opt FlatParams"].params
    assert max(p.size for p in start.values()) >= 4096
    for contender, within in zip(tl.LOW_PRECISION, (0.02, 0.1)):
        for name, initial in start.items():
            moved = np.asarray(trained[contender].params[name]) - initial
            expected = reference[name] - initial
            # int8 codes are coarse for the smallest second moments of a block, so a few
            # elements' moves differ a lot; the whole move is what must agree
            error = np.linalg.norm(moved - expected) / np.linalg.norm(expected)
            assert error < within, (contender, name, error)


@pytest.mark.parametrize("model", ["mlp", "transformer"])
def test_training_loop_backward_matches_finite_differences(model):
    net = tiny_models(np.float64)[model]
    params = net.init_params()
    grads = net.forward_backward({n: p.copy() for n, p in params.items()})
    out = {n: np.full_like(p, np.nan) for n, p in params.items()}  # the FlatParams path
    net.forward_backward(params, out=out)
    h = 1e-6
    for name, p in params.items():
        np.testing.assert_array_equal(out[name], grads[name])
        numeric = np.empty_like(p)
        for i in np.ndindex(p.shape):
            saved = p[i]
            p[i] = saved + h
            up = net.loss(params)
            p[i] = saved - h
            down = net.loss(params)
            p[i] = saved
            numeric[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-5, atol=1e-8, err_msg=name)


def test_training_loop_busy_load_is_killed_on_exceptions_and_not_counted_as_other_load():
    load = tl.BusyLoad()
    other = tl.OtherLoad(load)
    with pytest.raises(KeyboardInterrupt):
        with load:
            process = load.process
            assert process.poll() is None
            other.start()
            # the spinner gets CPU time (on a loaded machine it may take longer than usual)
            deadline = time.monotonic() + 30
            while load.cpu_seconds() <= 0.1 and time.monotonic() < deadline:
                time.sleep(0.1)
            busy_cores = other.stop()
            assert load.cpu_seconds() > 0.1
            raise KeyboardInterrupt
    assert process.poll() is not None and load.process is None
    if busy_cores is not None:  # Linux
        assert 0 <= busy_cores < 3


def test_training_loop_report_ratios_table_and_plot(tmp_path):
    records = []
    for contender, (loop, b2b, cold, fb) in {"numba_opt list": (2e-3, 1e-3, 1.6e-3, 30e-3),
                                             "torch fused": (4e-3, 4e-3, 4e-3, 33e-3),
                                             "numpy": (10e-3, 10e-3, 10e-3, 20e-3)}.items():
        for metric, seconds in zip(("step in loop", "step back-to-back", "step cold cache",
                                    "fwd+bwd"), (loop, b2b, cold, fb)):
            records.append(dict(suite=tl.SUITE, model="mlp", load="idle", contender=contender,
                                metric=metric, seconds=seconds, stdev=0.0))
    records[-1]["stdev"] = 2e-3  # numpy's fwd+bwd
    records[-1]["other_load"], records[-2]["other_load"] = 0.5, 0.25
    row = next(r for r in tl.rows(records) if r["contender"] == "numba_opt list")
    assert row["vs_torch"] == pytest.approx(2.0) and row["loop_over_b2b"] == pytest.approx(2.0)
    assert row["loop_over_cold"] == pytest.approx(1.25)
    assert row["fb_over_numpy"] == pytest.approx(1.5) and row["iteration"] == pytest.approx(32e-3)
    threads = tl.describe_threads({"variables": {"OMP_WAIT_POLICY": "passive"}, "pools": [],
                                   "numba_threads": 2, "numba_layer": "omp"})
    paths = tl.write(records, str(tmp_path), machine="test machine", threads=threads)
    table = open(paths["markdown"]).read()
    assert ("| numba_opt list | 2 ms | 1 ms | 1.6 ms | 30 ms | 32 ms | 2.00x | 2.00x | 1.25x | "
            "1.50x |  |") in table
    assert ("| numpy | 10 ms | 10 ms | 10 ms | 20 ms ±10% | 30 ms | 0.40x | 1.00x | 1.00x | "
            "1.00x | 0.50 |") in table
    assert "OMP_WAIT_POLICY=passive" in table
    png = open(paths["plot"], "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


# ------------------------------------------------------------------------- distributed suite
def test_distributed_ring_model_follows_its_equations():
    from bench import distributed as d
    records = [{"ranks": 1, "size": 1000, "update (full, 1 rank's work)": 1e-3}]
    link = {"name": "test", "latency_s": 1e-6, "bytes_per_s": 1e9}
    rows = d.ring_model(records, 1000, [link], rank_counts=(4,))
    one_pass = 3 * 1e-6 + 0.75 * 4000 / 1e9  # (N-1) latencies, (N-1)/N of the bytes
    assert rows[0]["comm_s"] == pytest.approx(2 * one_pass)
    assert rows[0]["zero_s"] == pytest.approx(2 * one_pass + 1e-3 / 4)
    assert rows[0]["plain_s"] == pytest.approx(2 * one_pass + 1e-3)
    assert rows[0]["zero_state_mb"] == pytest.approx(8 * 1000 / 4 / 1e6)
    assert d.fit([(0, 2.0), (10, 12.0), (20, 22.0)]) == pytest.approx((2.0, 1.0))


def test_distributed_suite_runs_and_writes_its_report(tmp_path):
    pytest.importorskip("mpi4py", reason="the distributed suite needs the mpi extra")
    from bench import distributed as d
    d.main(["--ranks", "1", "2", "--size", "20000", "--repeats", "2", "--out", str(tmp_path)])
    text = (tmp_path / "results.md").read_text()
    for needle in ("| 1 |", "| 2 |", "Reduce_scatter", "InfiniBand HDR (assumed)", "| 1024 |"):
        assert needle in text, needle
    import json
    records = json.loads((tmp_path / "results.json").read_text())["records"]
    two = next(r for r in records if r["ranks"] == 2)
    # ZeRO-1: each of 2 ranks holds half of Adam's 8 bytes per param
    assert max(two["state bytes per rank"]) == 8 * 20000 // 2
    assert two["plain state bytes"] == 8 * 20000
    assert (tmp_path / "distributed.png").read_bytes()[:4] == b"\x89PNG"


def test_low_precision_records_state_their_bytes_and_ratios():
    """The low-precision suite states the bytes each storage keeps and moves per param (Adam:
    8 and 28 in float32; issue 14's targets are against these) and compares every peer with
    numba_opt's all-float32 step and torch on the same dtypes."""
    from bench.__main__ import mixed_storage
    expected = {("float32", ()): (8, 28), ("float32", (("state_dtype", "bfloat16"),)): (4, 20),
                ("bfloat16", ()): (4, 14), ("float16", ()): (4, 14),
                ("bfloat16", (("master_weights", True), ("state_dtype", "bfloat16"))): (8, 20),
                ("bfloat16", (("master_weights", True),)): (12, 28)}
    for (dtype, options), (state, moved) in expected.items():
        fields = mixed_storage("Adam", dtype, dict(options))
        assert (fields["state_bytes"], fields["moved_bytes"]) == (state, moved)

    def record(dtype, peer, seconds, **options):
        return dict(suite="low-precision", case="n=1e+07", optimizer="Adam", dtype=dtype,
                    peer=peer, n=10_000_000, tensors=1, traffic=7, seconds=seconds, stdev=0.0,
                    **mixed_storage("Adam", dtype, options))
    records = [record("float32", "roof 4R/3W", 8e-3), record("float32", "numba_opt", 10e-3),
               record("float32", "numba_opt state bfloat16", 8e-3, state_dtype="bfloat16"),
               record("bfloat16", "numba_opt", 5e-3), record("bfloat16", "torch fused", 10e-3),
               record("float32", "torch fused", 12e-3)]
    rows = {(r["dtype"], r["peer"]): r for r in report.rows(records)}
    assert rows["float32", "numba_opt state bfloat16"]["vs_float32"] == pytest.approx(1.25)
    assert rows["bfloat16", "numba_opt"]["vs_float32"] == pytest.approx(2.0)
    assert rows["bfloat16", "numba_opt"]["vs_torch"] == pytest.approx(2.0)
    assert rows["float32", "numba_opt"]["vs_torch"] == pytest.approx(1.2)
    assert rows["float32", "numba_opt state bfloat16"]["vs_torch"] is None
    # useful bandwidth counts the bytes each storage moves: 14 B a param in bfloat16
    assert rows["bfloat16", "numba_opt"]["gbs"] == pytest.approx(14 * 1e7 / 5e-3 / 1e9)
    table = report.markdown(records)
    assert "| Adam | numba_opt | bfloat16 | bfloat16 | 4 | 14 | 5.000 ms |" in table


def test_memory_suite_measures_the_state_each_optimizer_holds(tmp_path):
    """The memory suite's state bytes per param come from the state arrays each optimizer holds
    after a step (Adam: 8 in float32, 4 in bfloat16, about 2 in int8 with its per-block scales;
    torch's step counters are a few bytes more), and its rows make a table and a plot."""
    from bench.__main__ import cases, measured_storage
    todo = cases("memory", quick=True)
    expected = {("float32", "numba_opt"): 8, ("float32", "numba_opt state bfloat16"): 4,
                ("bfloat16", "numba_opt"): 4}
    if "int8" in peers._codecs.STATE_DTYPES:
        expected["float32", "numba_opt state int8"] = 2
    if any(peer.startswith("torch") for _, _, _, _, peer, *_ in todo):
        expected.update({("float32", "torch fused"): 8, ("bfloat16", "torch fused"): 4})
    assert {(dtype, peer) for _, _, _, dtype, peer, *_ in todo} == set(expected)
    records = []
    for suite, case, optimizer, dtype, peer, sizes, setup, options in todo:
        assert suite == "memory" and sizes == [10_000_000]
        fields = measured_storage(setup, [100_000], optimizer, dtype, options)
        state = expected[dtype, peer]
        # int8: a byte per state element plus a float32 scale per block of 256 elements
        assert state <= fields["state_bytes"] < state + (0.1 if state == 2 else 1e-3)
        assert fields["moved_bytes"] == pytest.approx(
            3 * np.dtype(dtype).itemsize + 2 * fields["state_bytes"])
        records.append(dict(suite=suite, case=case, optimizer=optimizer, dtype=dtype, peer=peer,
                            n=sizes[0], tensors=1, traffic=7, seconds=1e-2, stdev=0.0,
                            **fields))
    table = report.markdown(records)
    assert "| Adam | numba_opt | float32 | float32 | 8 | 28 | 10.000 ms |" in table
    assert "| Adam | numba_opt | bfloat16 | bfloat16 | 4 | 14 | 10.000 ms |" in table
    report.plot(records, str(tmp_path / "memory.png"))
    assert (tmp_path / "memory.png").read_bytes()[:4] == b"\x89PNG"


def test_state_nbytes_counts_every_array_once():
    """Arrays in nested dicts, lists and tuples (a quantized buffer's codes and scales), each
    object once; step counters and other non-arrays count nothing."""
    codes, scales = np.zeros(512, np.int8), np.zeros(2, np.float32)

    class Optimizer:
        state = [{"step": 3, "exp_avg": (codes, scales), "exp_avg_sq": [np.zeros(4)]},
                 {"step": np.int64(3), "exp_avg": {"codes": codes, "absmax": scales}}]
    assert peers.state_nbytes(Optimizer) == 512 + 8 + 32 + 8
