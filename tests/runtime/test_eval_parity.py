"""`lemo-edge eval --backend onnxruntime` gives the metrics of `--backend torch` (within 0.002 AUROC)."""

from __future__ import annotations

import json

from lemo_edge.runtime.main import main

TINY = "synthetic://?seed=2&size=64&n_train=24&n_test_good=8&n_test_defect=8"


def test_onnxruntime_eval_matches_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("LEMO_EDGE_CACHE", str(tmp_path / "cache"))
    results = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / f"{backend}.json"
        code = main(
            [
                "eval",
                TINY,
                "--size",
                "64",
                "-K",
                "256",
                "--baselines",
                "none",
                "--no-fewshot",
                "--backend",
                backend,
                "--json",
                str(out),
            ]
        )
        assert code == 0
        results[backend] = json.loads(out.read_text())
    for key in ("image_auroc", "pixel_auroc"):
        assert abs(results["torch"][key] - results["onnxruntime"][key]) <= 0.002, key
    assert results["onnxruntime"]["backend"] == "onnxruntime"
