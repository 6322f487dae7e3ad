"""The numba-opt command line: help, argument errors, and tiny runs that write their files."""
import subprocess
import sys

import numpy as np
import pytest

from numba_opt import cli
from numba_opt.examples import mlp, trajectories


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "numba_opt", *args], capture_output=True,
                          text=True, timeout=300)


def test_help_lists_the_subcommands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("demo", "plot", "bench"):
        assert command in result.stdout
    for option in ("--device", "--size", "--optimizer", "--out"):
        assert option in run_cli("bench", "--help").stdout


@pytest.mark.parametrize("args, message", [
    ([], "the following arguments are required: COMMAND"),
    (["train"], "invalid choice: 'train'"),
    (["demo", "--optimizer", "Adam9"], "invalid choice: 'Adam9'"),
    (["demo", "--epochs", "0"], "expected a positive whole number, got '0'"),
    (["bench", "--size", "1e3.5"], "expected a positive whole number"),
    (["bench", "--size", "-5"], "expected a positive whole number"),
    (["bench", "--device", "tpu"], "invalid choice: 'tpu'"),
    (["plot", "--steps", "many"], "expected a positive whole number, got 'many'"),
])
def test_argument_errors_exit_2_with_a_message(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_demo_writes_the_table_and_the_loss_curves(tmp_path, capsys):
    cli.main(["demo", "--epochs", "2", "--hidden", "16", "--optimizer", "SGD", "Adam",
              "--out", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["SGD"], ["Adam"])]
    assert len(rows) == 2
    for row in rows:
        assert float(row[2]) > 0.5  # test accuracy; ten classes, chance is 0.1
    assert (tmp_path / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert str(tmp_path / "loss_curves.png") in out


def test_plot_writes_both_figures(tmp_path):
    cli.main(["plot", "--steps", "30", "--optimizer", "Adam", "SGD", "--out", str(tmp_path)])
    for name in ("trajectories.png", "bias_correction.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_bench_finds_devices_prints_a_table_and_a_plot(tmp_path, capsys):
    assert cli.main(["bench", "--size", "1000", "--device", "cpu", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "devices: CPU" in out and "numba_opt CPU" in out
    assert (tmp_path / "bench.png").stat().st_size > 5_000


def test_bench_on_cuda_without_a_gpu_is_a_clear_error(tmp_path, capsys):
    from numba_opt import benchmarking
    if benchmarking.gpu_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--device", "cuda", "--size", "10", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "no CUDA GPU was found" in capsys.readouterr().err


def test_demo_mlp_gradients_match_finite_differences():
    """The hand-written backprop is right (so the demo trains what it claims)."""
    rng = np.random.default_rng(0)
    model = mlp.MLP(5, 4, 3, seed=1)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    y = rng.integers(0, 3, 6)
    for p in model.flat.params:  # nonzero biases, in float64 precision terms
        p[...] += rng.standard_normal(p.shape).astype(np.float32) * 0.1
    model.loss_and_grads(x, y)
    analytic = model.flat.grad.copy()
    numeric = np.zeros_like(analytic)
    for k in range(model.flat.data.size):
        saved = model.flat.data[k]
        model.flat.data[k] = saved + 1e-2
        up = model.loss_and_grads(x, y)
        model.flat.data[k] = saved - 1e-2
        down = model.loss_and_grads(x, y)
        model.flat.data[k] = saved
        numeric[k] = (up - down) / 2e-2
    np.testing.assert_allclose(analytic, numeric, atol=2e-3)


def test_trajectory_gradients_match_finite_differences():
    for name, (f, grad, start, *_) in trajectories.FUNCTIONS.items():
        p = np.array(start) + 0.1
        numeric = [(f(p + e) - f(p - e)) / 2e-6 for e in np.eye(2) * 1e-6]
        np.testing.assert_allclose(grad(p), numeric, rtol=1e-5, err_msg=name)


def test_adam_bias_correction_curves_start_where_the_equations_say():
    curves = trajectories.bias_correction_curves(steps=5)
    g1 = curves["grads"][0]
    assert curves["raw_m"][0] == pytest.approx(0.1 * g1)           # (1 - beta1) g
    assert curves["corrected_m"][0] == pytest.approx(g1)           # divided by 1 - beta1
    assert curves["with_correction"][0] == pytest.approx(1.0, rel=1e-6)  # first step = lr
    assert curves["without_correction"][0] == pytest.approx(0.1 / np.sqrt(0.001), rel=1e-6)


# ------------------------------------------------------------------ without the optional extras
@pytest.mark.parametrize("command, hidden, named", [
    (["demo", "--epochs", "1"], ["sklearn"], "scikit-learn"),
    (["demo", "--epochs", "1"], ["tqdm", "matplotlib"], "matplotlib and tqdm"),
    (["plot", "--steps", "3"], ["matplotlib"], "matplotlib"),
])
def test_a_subcommand_without_its_extra_says_what_to_install(command, hidden, named, tmp_path,
                                                             monkeypatch, capsys):
    for module in hidden:  # None in sys.modules: importing it raises ImportError
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"needs {named}" in err and "pip install 'numba-opt[demo]'" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists(), "nothing is written before the refusal"


def test_bench_without_torch_and_matplotlib_prints_its_table_and_says_why(tmp_path, monkeypatch,
                                                                          capsys):
    for module in ("torch", "matplotlib"):
        monkeypatch.setitem(sys.modules, module, None)
    assert cli.main(["bench", "--size", "1000", "--device", "cpu", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "numba_opt CPU" in out and "torch: not installed" in out
    assert "torch fused" not in out and "torch foreach" not in out
    assert "no torch rows" in out and "no plot: matplotlib is not installed" in out
    assert not (tmp_path / "bench.png").exists()
