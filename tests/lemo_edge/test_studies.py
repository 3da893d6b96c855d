"""The mixed-protocol study scripts in benchmarks/ run end to end (tiny synthetic data, torch backend).

They are measurement scripts run by hand on Magnetic Tile (docs/results/mixed_gate_study.md); these
tests only check that every option runs and that the printed JSON has sane values.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = "synthetic://?seed=0&size=256&n_train=24&n_test_good=6&n_test_defect=8"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(name: str, args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> dict:
    monkeypatch.setattr(sys, "argv", [name, DATA, "--backend", "torch", *args])
    assert load(name).main() == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "args",
    [
        ["--gate", "quantile", "--k", "0.5", "--statistic", "lof", "--defer", "8"],
        ["--gate", "accepted", "--forget-every", "4", "--forget-pct", "10"],
        ["--gate", "oracle", "--k", "2"],
    ],
)
def test_mixed_gate_study_runs(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    out = run("mixed_gate_study", ["--warmup", "4", "--window", "8", *args], monkeypatch, capsys)
    assert 0.0 <= out["held_out_image_auroc"] <= 1.0
    assert 0.0 <= out["defects_learned"] <= 1.0 and 0.0 < out["normal_learned"] <= 1.0
    if args[1] == "oracle":
        assert out["defects_learned"] == 0.0 and out["normal_learned"] == 1.0
    if "--forget-every" in args or args[1] in ("accepted", "oracle"):
        assert all(0.0 <= out[f"held_out_image_auroc_forget_{p}pct_at_end"] <= 1.0 for p in (5, 10, 20))
    assert 0 < out["items"] <= 8192


def test_lof_statistic_needs_a_label_free_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["mixed_gate_study", DATA, "--gate", "accepted", "--statistic", "lof"])
    with pytest.raises(SystemExit):
        load("mixed_gate_study").main()


def test_mutual_score_study_runs(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    out = run("mutual_score_study", ["--window", "8"], monkeypatch, capsys)
    assert out["images"] == 24 + 4 - 8 and 0 < out["defects"] <= 4
    assert all(0.0 <= out[key] <= 1.0 for key in out if key.startswith("alpha_"))
