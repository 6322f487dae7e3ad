"""numba_opt.distributed over MPI: tests/mpi/check_distributed.py under ``mpiexec -n 1, 2, 3``.

Each rank count is one launch running every check (process start and kernel compilation are
paid once per launch); each (check, rank count) is then one test here, passing when every rank
reported it ok.  A launch that outlives TIMEOUT (a rank left waiting in a collective) fails.
"""
import ast
import importlib
import importlib.util
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "mpi" / "check_distributed.py"
CHECKS = [node.name for node in ast.parse(SCRIPT.read_text()).body
          if isinstance(node, ast.FunctionDef) and node.name.startswith("check_")]
RANKS = (1, 2, 3)
TIMEOUT = 300

needs_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None,
    reason="mpi4py is not installed: pip install 'numba-opt[mpi]' (mpi4py and the mpich wheel)")


def mpiexec():
    """The mpiexec of the MPI that mpi4py uses: the wheel's, beside the interpreter."""
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = beside if os.path.exists(beside) else shutil.which("mpiexec")
    if found is None:
        pytest.fail("mpi4py is installed but there is no mpiexec beside the interpreter or on "
                    "PATH: pip install mpich (or your MPI's launcher)")
    return found


def launch(ranks, *args):
    """(exit status, output) of the script under ``mpiexec -n ranks``, killed with its whole
    process group after TIMEOUT."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [mpiexec(), "-n", str(ranks), sys.executable, str(SCRIPT), *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env, cwd=ROOT, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{' '.join(command[:3])} ... did not finish in {TIMEOUT} s (a rank left "
                    f"waiting in a collective?); its output ends:\n{output[-4000:]}")
    return process.returncode, output


_launches = {}


def results(ranks):
    """(exit status, output, {check: {rank: 'ok' or 'FAIL'}}) of the launch on ``ranks``
    ranks, made once."""
    if ranks not in _launches:
        status, output = launch(ranks)
        reported = {}
        # ranks share the output stream: find the records wherever the lines were cut
        for check, rank, outcome in re.findall(r"RESULT (\w+) rank (\d+) (ok|FAIL)", output):
            reported.setdefault(check, {})[int(rank)] = outcome
        _launches[ranks] = status, output, reported
    return _launches[ranks]


def failure_text(output, check):
    found = re.findall(rf"RESULT {check} rank \d+ FAIL .*?(?=RESULT |\Z)", output, re.S)
    return "\n".join(found) if found else output[-4000:]


@needs_mpi
@pytest.mark.parametrize("ranks", RANKS)
@pytest.mark.parametrize("check", CHECKS)
def test_check_passes_on_every_rank(check, ranks):
    _, output, reported = results(ranks)
    outcomes = reported.get(check, {})
    assert outcomes == {rank: "ok" for rank in range(ranks)}, failure_text(output, check)


@needs_mpi
@pytest.mark.parametrize("ranks", RANKS)
def test_launch_exits_cleanly(ranks):
    status, output, reported = results(ranks)
    assert status == 0, output[-4000:]
    assert sorted(reported) == sorted(CHECKS)


@needs_mpi
def test_a_run_saved_on_three_ranks_resumes_on_two(tmp_path):
    """The N -> M hand-off across launches: a checkpoint saved (nopt.save) by a 3-rank run continues
    on 2 ranks on the uninterrupted plain trajectory."""
    path = str(tmp_path / "run.npz")
    status, output = launch(3, "--save", path)
    assert status == 0 and output.count("RESULT save rank") == 3, output[-4000:]
    status, output = launch(2, "--resume", path)
    assert status == 0 and len(re.findall(r"RESULT resume rank \d ok", output)) == 2, \
        output[-4000:]


def test_without_mpi4py_the_import_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # makes `from mpi4py import MPI` fail
    monkeypatch.delitem(sys.modules, "numba_opt.distributed", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'numba-opt\[mpi\]'.*mpi4py.*mpich"):
        importlib.import_module("numba_opt.distributed")


def test_mpi_is_imported_by_the_distributed_module_only():
    """The optimizers know nothing of MPI, and ``import numba_opt`` does not load it."""
    sources = sorted((ROOT / "numba_opt").rglob("*.py"))
    importing = [p.relative_to(ROOT).as_posix() for p in sources if "mpi4py" in p.read_text()]
    assert importing == ["numba_opt/distributed.py"]
    assert not [p for p in sources if p.parent.name == "optim" and "distributed" in p.read_text()]
    probe = "import sys, numba_opt; print(sorted(m for m in sys.modules if 'mpi4py' in m))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            cwd=ROOT, check=True).stdout
    assert loaded.strip() == "[]"


def test_the_mpi_extra_is_installed_by_make():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert {r.split(">")[0] for r in extras["mpi"]} == {"mpi4py", "mpich"}
    install = re.search(r"pip install .*-e '\.\[([\w,]+)\]'", (ROOT / "Makefile").read_text())
    assert "mpi" in install.group(1).split(",")


def demo_table(output):
    """{optimizer: (last-epoch loss, test accuracy)} from the demo's printed table."""
    from numba_opt.examples import mlp
    rows = {}
    for line in output.splitlines():
        for name in sorted(mlp.OPTIMIZERS, key=len, reverse=True):
            if line.startswith(name + " "):
                loss, accuracy = line[len(name):].split()[:2]
                rows[name] = (float(loss), float(accuracy))
                break
    return rows


@needs_mpi
def test_the_distributed_demo_learns_as_one_process(tmp_path):
    """`mpiexec -n 2 python -m numba_opt demo --distributed`: each rank trains on half of every
    batch with the state sharded; the losses and accuracies equal one process's (float32
    rounding apart), for every demo optimizer."""
    from numba_opt.examples import mlp
    names = list(mlp.OPTIMIZERS)
    args = ["-m", "numba_opt", "demo", "--epochs", "2", "--hidden", "32", "--no-progress",
            "--optimizer", *names]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    together = subprocess.run([mpiexec(), "-n", "2", sys.executable, *args, "--distributed",
                               "--out", str(tmp_path / "two")], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=TIMEOUT)
    assert together.returncode == 0, together.stdout[-3000:] + together.stderr[-3000:]
    assert "data parallel over 2 MPI ranks" in together.stdout
    assert together.stdout.count("loss curves:") == 1  # rank 0 alone prints and draws
    alone = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")],
                           capture_output=True, text=True, env=env, cwd=ROOT, timeout=TIMEOUT)
    assert alone.returncode == 0, alone.stderr[-3000:]
    two, one = demo_table(together.stdout), demo_table(alone.stdout)
    assert set(two) == set(one) == set(names)
    for name in names:
        assert two[name][0] == pytest.approx(one[name][0], rel=2e-3, abs=2e-4), name
        assert abs(two[name][1] - one[name][1]) <= 0.01, name  # within one point
