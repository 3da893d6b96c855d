"""The eval harness end to end on a small synthetic dataset, and its CLI."""

from __future__ import annotations

import json

import cv2
import pytest

from lemo_edge.evaluate import checkpoints_for
from lemo_edge.runtime.main import main

TINY = "synthetic://?seed=1&size=64&n_train=24&n_test_good=8&n_test_defect=8"


def test_checkpoints_are_powers_of_two_and_the_end():
    assert checkpoints_for(10) == [1, 2, 4, 8, 10]
    assert checkpoints_for(1) == [1]


@pytest.mark.parametrize("protocol", ["online", "mixed"])
def test_eval_cli_writes_json_and_report(tmp_path, protocol, capsys):
    out = tmp_path / "r.json"
    code = main(
        [
            "eval",
            TINY,
            "--protocol",
            protocol,
            "--size",
            "64",
            "--memory-size",
            "256",
            "--baselines",
            "reservoir,greedy",
            "--json",
            str(out),
            "--report",
            str(tmp_path / "rep"),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
        assert 0.0 <= result[key] <= 1.0
    assert result["memory_size"] == 256 and result["items_used"] <= 256
    assert result["image_auroc"] > 0.8  # defects on this texture are easy; a broken pipeline is at ~0.5
    if protocol == "online":
        assert [p["images"] for p in result["fewshot"]] == [1, 2, 4, 8, 16, 24]
        assert set(result["baselines"]) == {"reservoir", "greedy"}
    else:
        assert {"prequential_image_auroc", "prequential_pixel_auroc", "defect_accept_rate"} <= set(result)
        assert 0.0 <= result["defect_accept_rate"] <= 1.0
    report = (tmp_path / "rep" / "README.md").read_text()
    assert "| method |" in report
    for png in ("roc.png", "grid.png"):
        assert cv2.imread(str(tmp_path / "rep" / png)) is not None
    assert "image AUROC" in capsys.readouterr().out


def test_eval_offline_protocol(tmp_path):
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "eval",
                TINY,
                "--protocol",
                "offline",
                "--size",
                "64",
                "-K",
                "128",
                "--baselines",
                "none",
                "--set",
                'extra={"epochs": 2}',
                "--json",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["protocol"] == "offline"


def test_eval_bad_arguments_exit_2(capsys):
    assert main(["eval", TINY, "--set", "colour=1"]) == 2
    assert "unknown fields ['colour']" in capsys.readouterr().err
    assert main(["eval", TINY, "--baselines", "magic"]) == 2
    assert "baselines: unknown ['magic']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["eval", TINY, "--protocol", "sideways"])
    assert exc.value.code == 2


def test_eval_missing_dataset_exit_1(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nowhere")]) == 1
    assert "expected synthetic://" in capsys.readouterr().err


def test_info_lists_backbones(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "tf_efficientnet_lite0" in out and "available" in out
