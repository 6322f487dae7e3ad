"""The README's usage examples run as written, and its first lines are the two commands."""
import pathlib
import re
import textwrap

import numpy as np


ROOT = pathlib.Path(__file__).resolve().parents[1]


def readme_block(containing):
    """The README's python code block that contains ``containing`` (dedented)."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    return textwrap.dedent(next(b for b in blocks if containing in b))


def test_readme_usage_example_runs_and_converges(capsys):
    namespace = {}
    exec(compile(readme_block("range(300)"), "README.md", "exec"), namespace)
    x, y, W, b = (namespace[k] for k in ("x", "y", "W", "b"))
    assert 0.5 * np.mean((x @ W + b - y) ** 2) < 1e-3
    assert "after 300 steps" in capsys.readouterr().out

    # the FlatParams snippet continues the same session
    exec(compile(readme_block("FlatParams"), "README.md", "exec"), namespace)
    flat = namespace["flat"]
    assert namespace["opt"].step_count == 1 and np.shares_memory(flat.params["W"], flat.data)
    assert not np.array_equal(flat.params["W"], W)  # the step moved the flat copy


def test_readme_starts_with_the_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    first_block = re.findall(r"```bash\n(.*?)```", readme, re.S)[0]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()]
    assert commands == ["make demo", "make test"]


