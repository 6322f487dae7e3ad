"""bench/lowp_quality.py (issue 14's quality experiment) on a tiny setting: every task runs, the
outputs are written, and the numbers are finite and where the summary says they are."""
import json

import numpy as np
import pytest

pytest.importorskip("ml_dtypes")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from bench import lowp_quality as quality  # noqa: E402
from numba_opt import _codecs  # noqa: E402

NAMES = ["float32", "bfloat16 state", "bfloat16 params+state"]


def test_the_experiment_writes_its_table_json_and_plot(tmp_path):
    lines = []
    results = quality.run(seeds=[0], epochs=2, hidden=128, steps=20, names=NAMES, max_steps=3,
                          say=lines.append)
    assert len(lines) == 3 * len(NAMES)  # a progress line per task, storage and seed
    paths = quality.write(results, str(tmp_path))

    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved) == {"settings", "tasks", "summary"}
    assert set(saved["tasks"]) == {"digits MLP, Adam", "digits MLP, AdamW",
                                   "regression 256->64, Adam"}
    for task, by_storage in saved["tasks"].items():
        assert list(by_storage) == NAMES
        for name, runs in by_storage.items():
            (run,) = runs
            assert run["seed"] == 0 and np.isfinite(run["loss"]) and run["loss"] > 0
            if task.startswith("digits"):
                assert run["steps"] == 3 and 0 <= run["accuracy"] <= 1
                assert set(run) == {"history", "loss", "accuracy", "steps", "seconds", "seed"}
            else:
                assert run["steps"] == 20 and [s for s, _ in run["history"]][-1] == 20
                # the loss falls from its value at the zero weights
                assert run["loss"] < run["history"][0][1]
    rows = {(r["task"], r["storage"]): r for r in saved["summary"]}
    assert len(rows) == 3 * len(NAMES)
    for (task, name), row in rows.items():
        assert np.isfinite(row["loss_ratio"]) and isinstance(row["loss_pass"], bool)
        if name == "float32":
            assert row["loss_ratio"] == 1.0
        assert ("accuracy_pass" in row) == task.startswith("digits")
    # the same initial weights and batches: after 3 steps bfloat16 state is close to float32
    mlp = rows["digits MLP, Adam", "bfloat16 state"]
    assert mlp["loss_ratio"] == pytest.approx(1.0, abs=0.05)

    table = (tmp_path / "results.md").read_text()
    assert "| digits MLP, Adam | bfloat16 state |" in table and ("PASS" in table or "MISS" in table)
    assert (tmp_path / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(paths) == ["json", "markdown", "plot"]


def test_int8_state_is_run_only_where_numba_opt_offers_it(monkeypatch, capsys):
    monkeypatch.setattr(_codecs, "STATE_DTYPES", ("float32", "bfloat16"))
    assert "int8 state" not in quality.storages()
    assert "int8 state" in capsys.readouterr().out  # the printed note
    monkeypatch.setattr(_codecs, "STATE_DTYPES", ("float32", "bfloat16", "int8"))
    assert quality.storages() == list(quality.STORAGES)


def test_bfloat16_params_are_stepped_and_copied_back_for_the_float32_compute():
    params = [np.full(3, 1.0, np.float32)]
    grads = [np.full(3, 0.5, np.float32)]
    stepper = quality.Stepper("SGD", dict(lr=2.0 ** -12), "bfloat16 params+state", params,
                              grads)
    assert stepper.stored[0].dtype == _codecs.BFLOAT16
    stepper.step()  # 1 - 2**-13 rounds back to 1 in bfloat16 (ulp 2**-7): the param holds
    assert (params[0] == 1.0).all()
    stepper = quality.Stepper("SGD", dict(lr=0.25), "bfloat16 params+state", params, grads)
    stepper.step()
    assert (params[0] == 0.875).all() and params[0].dtype == np.float32
