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


# ------------------------------------------------------------- one list of optimizer names
def test_every_subcommand_offers_the_registry_names():
    from numba_opt import benchmarking
    from numba_opt.examples import registry
    names = list(registry.OPTIMIZERS)
    for table in (mlp.OPTIMIZERS, trajectories.OPTIMIZERS, benchmarking.OPTIMIZERS):
        assert list(table) == names
    parser = cli.build_parser()
    for command in ("demo", "plot", "bench"):
        help_text = " ".join(parser._subparsers._group_actions[0].choices[command]
                             .format_help().split())  # unwrapped
        for name in names:
            assert name in help_text, (command, name)
            args = parser.parse_args([command, "--optimizer", name])
            assert args.optimizer in (name, [name])
        assert parser.parse_args([command]).optimizer in (registry.DEFAULTS[command],
                                                           registry.DEFAULTS[command][0])


@pytest.mark.parametrize("command", ["demo", "plot", "bench"])
def test_an_unknown_name_exits_2_listing_the_valid_ones(command, capsys):
    from numba_opt.examples import registry
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--optimizer", "Adamm"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'Adamm'" in err
    for name in registry.OPTIMIZERS:
        assert repr(name) in err


def test_every_name_builds_and_steps_in_each_use():
    """Each registry name with each use's settings: a demo MLP step, a plot path, a bench step
    (numba_opt's, and torch's where torch.optim has the class)."""
    from numba_opt import benchmarking as peers
    from numba_opt.examples import registry
    for name in registry.OPTIMIZERS:
        model = mlp.MLP(8, 4, 10, seed=0)
        opt = mlp.make_optimizer(name, model.flat)
        before = model.flat.data.copy()
        x = np.random.default_rng(0).random((16, 8)).astype(np.float32)
        model.loss_and_grads(x, np.arange(16) % 10)
        opt.step(model.flat.grads)
        assert not np.array_equal(model.flat.data, before), name
        points = trajectories.path("Beale", name, 5)
        assert points.shape == (6, 2) and np.isfinite(points).all(), name
        peers.numba_opt_list([10], np.dtype(np.float32), optimizer=name)()
        if peers.torch_class(name) is not None:
            peers.torch_optim([10], np.dtype(np.float32), optimizer=name, mode="foreach")()


def test_bench_traffic_counts_the_state_buffers_of_each_name():
    from numba_opt import benchmarking as peers
    expected = {"SGD": 3, "Momentum": 5, "Nesterov": 5, "RMSprop": 5, "RMSprop centered": 9,
                "Adam": 7, "Adam amsgrad": 9, "AdamW": 7, "Adagrad": 5, "Adamax": 7,
                "RAdam": 7, "NAdam": 7, "Adadelta": 7, "Lion": 5}
    assert {name: peers.traffic(name) for name in expected} == expected
