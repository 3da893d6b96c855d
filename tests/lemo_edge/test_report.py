"""Report plots are valid PNGs; markdown tables read as expected; bad inputs are named."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

from lemo_edge import metrics, report
from lemo_edge.errors import InputError
from lemo_edge.synthetic import synthetic_sample


def _png(path) -> np.ndarray:
    image = cv2.imread(str(path))
    assert image is not None, path
    return image


def test_plot_roc_writes_png_and_thins_long_curves(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 20_000)
    s = rng.normal(size=y.size) + y
    fpr, tpr, _ = metrics.roc_curve(s, y)
    assert fpr.size > report.MAX_CURVE_POINTS
    curves = {"lemo": (fpr, tpr, metrics.auroc(s, y)), "chance": (np.array([0.0, 1.0]), np.array([0.0, 1.0]), 0.5)}
    path = report.plot_roc(curves, tmp_path / "sub" / "roc.png")
    assert path == tmp_path / "sub" / "roc.png"
    assert _png(path).shape[2] == 3


def test_plot_fewshot_writes_png(tmp_path):
    path = report.plot_fewshot(
        [1, 2, 4, 8, 16, 24],
        {"image_auroc": [0.5, 0.6, 0.7, 0.8, 0.9, float("nan")], "pixel_auroc": [0.6] * 6},
        tmp_path / "fewshot.png",
    )
    assert _png(path).size > 0


def test_plot_grid_writes_png_with_three_rows(tmp_path):
    samples = [synthetic_sample(0, i, 64, defect=i % 2 == 1) for i in range(3)]
    images = [s.image for s in samples]
    maps = [np.random.default_rng(i).random((16, 16)).astype(np.float32) for i in range(3)]  # resized to 64 x 64
    masks = [samples[0].mask, samples[1].mask, None]
    path = report.plot_grid(images, maps, masks, ["a", "b", "c"], tmp_path / "grid.png", vmax=0.8)
    grid = _png(path)
    assert grid.shape[1] > grid.shape[0]  # three columns
    path = report.plot_grid(images[:1], maps[:1], masks[:1], ["a"], tmp_path / "one.png", vmax=float("inf"))
    column = _png(path)
    assert column.shape[0] > 2 * column.shape[1] * 0.8  # one column of three rows (plus a colour bar)


def test_no_pyplot_state_or_backend_switch(tmp_path):
    report.plot_fewshot([1, 2], {"m": [0.1, 0.2]}, tmp_path / "x.png")
    if "matplotlib.pyplot" in sys.modules:  # another test may have imported it; then no figure was left open
        import matplotlib.pyplot as plt

        assert plt.get_fignums() == []


def test_markdown_table():
    rows = [
        {"method": "LeMO (coreset)", "image_auroc": 0.98765, "items": 256},
        {"method": "a|b", "image_auroc": None},
        {"method": "reservoir", "image_auroc": "0.900", "extra": "ignored"},
    ]
    table = report.markdown_table(rows, ["method", "image_auroc", "items"])
    assert table.splitlines() == [
        "| method | image_auroc | items |",
        "|---|---|---|",
        "| LeMO (coreset) | 0.988 | 256 |",
        "| a\\|b |  |  |",
        "| reservoir | 0.900 |  |",
    ]
    assert report.markdown_table(rows[:1], ["image_auroc"], floatfmt=".1%").splitlines()[-1] == "| 98.8% |"
    assert report.markdown_table([], ["a"]) == "| a |\n|---|"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: report.plot_roc({}, p / "r.png"), "plot_roc: expected at least one curve, got none"),
        (
            lambda p: report.plot_roc({"x": ([0, 1], [0, 0.5, 1], 0.5)}, p / "r.png"),
            "plot_roc: x: expected fpr and tpr of one length, got 2 and 3",
        ),
        (
            lambda p: report.plot_roc({"x": ([0, 1], [0, 1], 0.5)}, p / "r.jpg"),
            "path: expected a .png file, got '.*r.jpg'",
        ),
        (lambda p: report.plot_fewshot([], {"m": []}, p / "f.png"), r"plot_fewshot: expected checkpoints \(C,\)"),
        (lambda p: report.plot_fewshot([0, 1], {"m": [1, 2]}, p / "f.png"), "expected checkpoints >= 1 .*, got 0"),
        (
            lambda p: report.plot_fewshot([1, 2], {"m": [1.0]}, p / "f.png"),
            r"plot_fewshot: m: expected 2 values \(one per checkpoint\), got 1",
        ),
        (lambda p: report.plot_grid([], [], [], [], p / "g.png"), "plot_grid: expected at least one image, got none"),
        (
            lambda p: report.plot_grid([np.zeros((4, 4, 3), np.uint8)], [], [None], ["t"], p / "g.png"),
            r"expected as many maps, masks and titles as images \(1\), got 0, 1 and 1",
        ),
        (
            lambda p: report.plot_grid([np.zeros((4, 4), np.uint8)], [np.zeros((4, 4))], [None], ["t"], p / "g.png"),
            r"plot_grid: image 0: expected \(H, W, 3\) uint8, got \(4, 4\) uint8",
        ),
        (
            lambda p: report.plot_grid(
                [np.zeros((4, 4, 3), np.uint8)], [np.zeros((1, 4, 4))], [None], ["t"], p / "g.png"
            ),
            r"plot_grid: map 0: expected \(H, W\) float, got \(1, 4, 4\) float32",
        ),
        (
            lambda p: report.plot_grid(
                [np.zeros((4, 4, 3), np.uint8)], [np.zeros((4, 4))], [np.zeros((2, 2))], ["t"], p / "g.png"
            ),
            r"plot_grid: mask 0: expected \(4, 4\) like its image, got \(2, 2\)",
        ),
        (lambda p: report.markdown_table([{"a": 1}], []), "markdown_table: expected at least one column, got none"),
    ],
)
def test_errors_say_what_was_wrong(tmp_path, call, message):
    with pytest.raises(InputError, match=message):
        call(tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written on error


def test_format_metric_marks_missing_values_not_available(tmp_path):
    from lemo_edge.report import NOT_AVAILABLE, format_metric, plot_fewshot

    assert format_metric(0.91234) == "0.912" and format_metric(None) == NOT_AVAILABLE == "n/a"
    assert format_metric(float("nan")) == "n/a" and format_metric(1, ".1f") == "1.0"
    # a series of None only (pixel metrics without masks) is left out; the other is drawn
    path = plot_fewshot(
        [1, 2, 4], {"image_auroc": [0.5, 0.7, 0.9], "pixel_auroc": [None, None, None]}, tmp_path / "f.png"
    )
    assert path.stat().st_size > 0
