"""The eval harness end to end on a small synthetic dataset, and its CLI."""

from __future__ import annotations

import json
import re

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


# -- image-level labels only (no masks) --------------------------------------------------------------------------------


def _write_rgb(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def _labels_only_dataset(root, layout):
    """24 normal + 8 defect synthetic images written as files without any mask, in one of three layouts."""
    from lemo_edge.synthetic import synthetic_sample

    normal = [synthetic_sample(1, i, 64).image for i in range(32)]
    defect = [synthetic_sample(1, 100 + i, 64, defect=True).image for i in range(8)]
    if layout == "folders":  # good/ + defect/: the normal images split in turn between train and test
        for i, image in enumerate(normal):
            _write_rgb(root / "good" / f"{i:03d}.png", image)
        for i, image in enumerate(defect):
            _write_rgb(root / "defect" / f"{i:03d}.png", image)
        return root
    if layout == "mvtec":  # MVTec AD layout without ground_truth/
        for i, image in enumerate(normal[:24]):
            _write_rgb(root / "train" / "good" / f"{i:03d}.png", image)
        for i, image in enumerate(normal[24:]):
            _write_rgb(root / "test" / "good" / f"{i:03d}.png", image)
        for i, image in enumerate(defect):
            _write_rgb(root / "test" / "scratch" / f"{i:03d}.png", image)
        return root
    # a manifest whose defect images have no mask file beside them
    for i, image in enumerate(normal):
        _write_rgb(root / "ok" / f"{i:03d}.jpg", image)
    for i, image in enumerate(defect):
        _write_rgb(root / "ng" / f"{i:03d}.jpg", image)
    split = {
        "train_good": [f"ok/{i:03d}.jpg" for i in range(24)],
        "test_good": [f"ok/{i:03d}.jpg" for i in range(24, 32)],
        "test_defect": [f"ng/{i:03d}.jpg" for i in range(8)],
    }
    (root / "split.json").write_text(json.dumps(split))
    return root / "split.json"


@pytest.mark.parametrize("layout", ["folders", "mvtec", "manifest"])
def test_eval_without_masks_reports_image_metrics_and_pixel_na(tmp_path, layout, capsys):
    dataset = _labels_only_dataset(tmp_path / "data", layout)
    out = tmp_path / "r.json"
    argv = ["eval", str(dataset), "--size", "64", "-K", "256", "--baselines", "reservoir", "--json", str(out)]
    code = main([*argv, "--report", str(tmp_path / "rep")])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["image_auroc"] > 0.8 and 0.0 <= result["f1_max"] <= 1.0
    assert result["pixel_auroc"] is None and result["aupro"] is None
    assert all(point["pixel_auroc"] is None for point in result["fewshot"])
    assert result["baselines"]["reservoir"]["pixel_auroc"] is None
    assert result["baselines"]["reservoir"]["image_auroc"] is not None
    line = capsys.readouterr().out
    assert "pixel AUROC n/a" in line and "AUPRO n/a" in line
    assert re.search(r"image AUROC [01]\.\d{3}, .*F1-max [01]\.\d{3}", line)
    report = (tmp_path / "rep" / "README.md").read_text()
    assert "| n/a | n/a |" in report and "Pixel metrics (pixel AUROC, AUPRO): n/a" in report
    assert cv2.imread(str(tmp_path / "rep" / "fewshot.png")) is not None


def test_compute_metrics_pixel_metrics_none_without_defect_pixels():
    import numpy as np

    from lemo_edge.evaluate import Encoded, compute_metrics

    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 1, 1])
    test = Encoded(torch_zeros(4), labels, np.zeros((4, 8, 8), np.uint8), list("abcd"))
    maps, scores = rng.random((4, 8, 8)).astype(np.float32), np.array([0.1, 0.2, 0.8, 0.9], np.float32)
    out = compute_metrics(maps, scores, test, threshold=0.5)
    assert out["image_auroc"] == 1.0 and out["f1_max"] == 1.0 and out["pixel_auroc"] is None and out["aupro"] is None
    assert compute_metrics(maps, scores, test, full=False) == {"image_auroc": 1.0, "pixel_auroc": None}
    test.masks[2, 2:5, 2:5] = 1
    assert isinstance(compute_metrics(maps, scores, test)["pixel_auroc"], float)


def torch_zeros(n):
    import torch

    return torch.zeros((n, 4, 2, 2), dtype=torch.float16)


def test_mixed_protocol_without_masks_reports_pixel_na(tmp_path, capsys):
    dataset = _labels_only_dataset(tmp_path / "data", "folders")
    out = tmp_path / "r.json"
    code = main(["eval", str(dataset), "--protocol", "mixed", "--size", "64", "-K", "256", "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["pixel_auroc"] is None and result["prequential_pixel_auroc"] is None
    assert result["image_auroc"] is not None and result["prequential_image_auroc"] is not None


def test_defect_patches_are_cells_at_least_half_in_the_mask():
    import numpy as np

    from lemo_edge.contamination import defect_patches

    masks = np.zeros((1, 8, 8), np.uint8)
    masks[0, 0:4, 0:2] = 1  # half of cell (0, 0)
    masks[0, 4:5, 4:8] = 1  # a quarter of cell (1, 1)
    assert defect_patches(masks, (2, 2)).tolist() == [[True, False, False, False]]


def _mixed_run(fraction, **changes):
    from lemo_edge.backbone import create_feature_extractor
    from lemo_edge.config import ModelConfig
    from lemo_edge.datasets import open_dataset
    from lemo_edge.evaluate import Evaluator

    config = ModelConfig(size=64, memory_size=512, warmup=4).replace(**changes)
    data = open_dataset("synthetic://?seed=3&size=64&n_train=40&n_test_good=8&n_test_defect=24")
    extractor = create_feature_extractor()
    return Evaluator(config, data, extractor, extractor.spec, baselines=(), defect_fraction=fraction).run("mixed")


def test_mixed_defect_fraction_keeps_the_held_out_set_and_measures_contamination():
    clean = _mixed_run(0.0)
    assert clean["stream_defects"] == 0 and clean["stream_length"] == 40
    assert clean["defect_patch_learned"] is None and clean["defect_accept_rate"] is None
    some = _mixed_run(0.2, admission="coverage")
    assert some["stream_defects"] == 10 and some["stream_length"] == 50  # 10 / 50 = 0.2
    assert some["roc"]["lemo"]["auc"] == some["image_auroc"]
    assert 0.0 <= some["defect_patch_learned"] <= 1.0 and some["defect_patches"] > 0
    # more than the dataset has: all even-position defects (12), with a warning
    assert _mixed_run(0.5)["stream_defects"] == 12
    # the oracle learns exactly the normal images: no defect patch enters the memory
    oracle = _mixed_run(0.2, admission="coverage", extra={"oracle": True})
    assert oracle["defect_patch_learned"] == 0.0 and oracle["memory_defect_share"] == 0.0
    assert oracle["defect_accept_rate"] == 0.0 and oracle["normal_accept_rate"] == 1.0


def test_defect_fraction_out_of_range_is_refused(capsys):
    code = main(["eval", "synthetic://?seed=1&size=64", "--protocol", "mixed", "--defect-fraction", "0.7"])
    assert code == 2
    assert "defect_fraction: expected a number in [0, 0.5], got 0.7" in capsys.readouterr().err


def _wide_manifest(root, shape=(96, 192), n_train=16, n_good=6, n_defect=6):
    """A manifest of synthetic ``shape`` (H, W) frames on disk: .png images, .png masks beside the defects'."""
    from lemo_edge.synthetic import synthetic_sample

    split = {"dataset": "wide", "train_good": [], "test_good": [], "test_defect": []}
    counts = (("train_good", n_train, False), ("test_good", n_good, False), ("test_defect", n_defect, True))
    index = 0
    for key, count, defect in counts:
        for _ in range(count):
            sample = synthetic_sample(3, index, 64, defect, shape=shape, defect_px=(16, 28) if defect else None)
            name = f"{key}/{index:03d}.jpg"
            (root / key).mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(root / name), cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR))
            if defect:
                assert cv2.imwrite(str(root / name.replace(".jpg", ".png")), sample.mask * 255)
            split[key].append(name)
            index += 1
    (root / "split.json").write_text(json.dumps(split))
    return root / "split.json"


def test_eval_cli_runs_at_a_non_square_size_on_a_manifest(tmp_path):
    """``--size 64x128`` (H x W) on 96 x 192 frames: same aspect ratio, so the defects keep their shape."""
    manifest = _wide_manifest(tmp_path / "data")
    out = tmp_path / "r.json"
    argv = ["eval", str(manifest), "--size", "64x128", "-K", "256", "--baselines", "greedy", "--json", str(out)]
    assert main([*argv, "--no-fewshot"]) == 0
    result = json.loads(out.read_text())
    assert result["config"]["size"] == [64, 128] and result["config"]["letterbox"] is False
    assert result["image_auroc"] > 0.8 and result["pixel_auroc"] > 0.8
    assert result["baselines"]["greedy"]["pixel_auroc"] is not None


def test_eval_letterbox_scores_the_content_only(tmp_path):
    """96 x 192 frames letterboxed into 128 x 128: content 64 x 128 at the top, 64 rows of padding below."""
    from lemo_edge.backbone import create_feature_extractor
    from lemo_edge.config import ModelConfig
    from lemo_edge.datasets import open_dataset
    from lemo_edge.evaluate import Evaluator

    data = open_dataset(str(_wide_manifest(tmp_path / "data")))
    extractor = create_feature_extractor()
    config = ModelConfig(size=128, letterbox=True, memory_size=256)
    baselines = ("patchcore", "greedy")
    result = Evaluator(config, data, extractor, extractor.spec, baselines=baselines, fewshot=False).run("online")
    assert result["config"]["letterbox"] is True
    # 0.83 / 0.80 measured (48 test images); a map that scored the padding or lost the content falls to chance
    assert result["image_auroc"] > 0.75 and result["pixel_auroc"] > 0.75
    grid = result["_grid"]
    assert {m.shape for m in grid["maps"]} == {(64, 128)} and {i.shape for i in grid["images"]} == {(64, 128, 3)}
    assert {m.shape for m in grid["masks"] if m is not None} == {(64, 128)}
    for name in baselines:  # learned from the content cells, scored on them (pixel AUROC 0.89 / 0.84 measured;
        assert result["baselines"][name]["pixel_auroc"] > 0.75, name  # the image AUROC of 18 images is too noisy)


def test_eval_bad_size_exits_2_naming_it(capsys):
    assert main(["eval", TINY, "--size", "250x256"]) == 2
    assert "size: expected H and W positive multiples of 32, got 250x256" in capsys.readouterr().err


@pytest.mark.parametrize("protocol", ["online", "mixed"])
def test_eval_with_tiles_scores_stitched_maps_of_the_roi(tmp_path, protocol, capsys):
    out = tmp_path / "r.json"
    wide = "synthetic://?seed=1&size=64&width=128&height=96&n_train=16&n_test_good=4&n_test_defect=4"
    args = ["eval", wide, "--protocol", protocol, "--size", "32", "--memory-size", "256", "--set", "warmup=4"]
    args += ["--tile", "32x32", "--overlap", "8", "--roi", "0,16,128,80", "--no-fewshot", "--json", str(out)]
    args += ["--report", str(tmp_path / "rep")]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["tiles"] == {"frame": [96, 128], "roi": [0, 16, 128, 80], "tile": [32, 32], "overlap": 8, "count": 15}
    assert "baselines" not in result  # baselines score one square input per image: not run with tiles
    assert 0.0 <= result["image_auroc"] <= 1.0 and result["pixel_auroc"] is not None
    if protocol == "mixed":
        assert result["defect_patches"] > 0 and result["prequential_image_auroc"] is not None
    assert cv2.imread(str(tmp_path / "rep" / "grid.png")) is not None
    assert "image AUROC" in capsys.readouterr().out


def test_eval_tile_arguments_are_checked(capsys):
    code = main(["eval", TINY, "--overlap", "8"])
    assert code == 2
    assert "--overlap: expected together with --tile, got --overlap 8 alone" in capsys.readouterr().err
    code = main(["eval", TINY, "--tile", "32x32", "--overlap", "32"])
    assert code == 2
    assert "overlap: expected 0 <= overlap < 32 (the tile's smaller side), got 32" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", TINY, "--roi", "1,2,3"])
    assert "roi: expected x,y,w,h with x,y >= 0 and w,h >= 1, got '1,2,3'" in capsys.readouterr().err
