"""Dataset readers: MVTec layout, manifests, synthetic, explicit conversions and clear errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from lemo_edge.datasets import open_dataset, read_image, resize_sample
from lemo_edge.errors import DatasetError, InputError
from lemo_edge.synthetic import SyntheticStream, parse_synthetic_uri, synthetic_sample


def _write(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


def test_mvtec_layout(tmp_path):
    gray = np.full((40, 50), 100, np.uint8)
    _write(tmp_path / "train/good/000.png", gray)
    _write(tmp_path / "test/good/000.png", gray)
    _write(tmp_path / "test/scratch/000.png", gray)
    mask = np.zeros((40, 50), np.uint8)
    mask[5:10, 5:10] = 255
    _write(tmp_path / "ground_truth/scratch/000_mask.png", mask)
    data = open_dataset(str(tmp_path))
    assert (len(data.train_good), len(data.test_good), len(data.test_defect)) == (1, 1, 1)
    sample = data.test_defect[0].load()
    assert sample.image.shape == (40, 50, 3) and sample.image.dtype == np.uint8
    assert sample.mask.sum() == 25 and sample.label == 1
    assert data.test_good[0].load().mask.sum() == 0


def test_manifest_with_masks_beside_images(tmp_path):
    _write(tmp_path / "a/Imgs/x.jpg", np.full((30, 30), 80, np.uint8))
    _write(tmp_path / "b/Imgs/y.jpg", np.full((30, 30), 80, np.uint8))
    mask = np.zeros((30, 30), np.uint8)
    mask[:3] = 200
    _write(tmp_path / "b/Imgs/y.png", mask)
    (tmp_path / "split.json").write_text(json.dumps(
        {"train_good": ["a/Imgs/x.jpg"], "test_good": ["a/Imgs/x.jpg"], "test_defect": ["b/Imgs/y.jpg"]}))
    data = open_dataset(str(tmp_path))
    assert data.test_defect[0].load().mask.sum() == 90
    assert data.train_good[0].load().image.shape == (30, 30, 3)


@pytest.mark.data
def test_magnetic_tile_manifest(magnetic_tile):
    data = open_dataset(str(magnetic_tile))
    assert (len(data.train_good), len(data.test_good), len(data.test_defect)) == (635, 317, 392)
    sample = data.test_defect[0].load()
    assert sample.image.ndim == 3 and sample.mask.max() == 1


def test_image_conversions(tmp_path):
    _write(tmp_path / "g16.png", np.full((4, 4), 65535, np.uint16))
    assert read_image(tmp_path / "g16.png").max() == 255
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 2] = 255  # red in BGRA
    _write(tmp_path / "rgba.png", rgba)
    assert read_image(tmp_path / "rgba.png")[0, 0].tolist() == [255, 0, 0]


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(DatasetError, match="missing.png' \\(not found\\)"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="bad.png' \\(12 bytes, corrupt\\?\\)"):
        read_image(tmp_path / "bad.png")


def test_unknown_layout_lists_accepted_ones(tmp_path):
    with pytest.raises(DatasetError, match="expected synthetic://..., a manifest .json"):
        open_dataset(str(tmp_path))


def test_resize_sample_keeps_mask_binary():
    s = resize_sample(synthetic_sample(0, 1, 64, defect=True), (32, 32))
    assert s.image.shape == (32, 32, 3) and set(np.unique(s.mask)) <= {0, 1}


def test_synthetic_is_deterministic_and_labelled():
    a, b = synthetic_sample(3, 7, 64, True), synthetic_sample(3, 7, 64, True)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.label == 1 and 0 < a.mask.mean() < 0.1
    good = synthetic_sample(3, 7, 64, False)
    assert good.mask.sum() == 0 and not np.array_equal(good.image, a.image)
    stream = SyntheticStream(seed=0, size=64, defect_rate=0.3)
    labels = [stream[i].label for i in range(200)]
    assert 0.2 < np.mean(labels) < 0.4


def test_synthetic_defects_stand_out_but_not_trivially():
    s = synthetic_sample(0, 5, 128, True)
    g = s.image[..., 0].astype(float)
    inside, outside = g[s.mask == 1].mean(), g[s.mask == 0].mean()
    assert 1.0 < abs(inside - outside) / g[s.mask == 0].std() < 6.0


def test_synthetic_uri_validation():
    assert parse_synthetic_uri("synthetic://?seed=2&defect_rate=0.5")["seed"] == 2
    with pytest.raises(InputError, match="unknown parameter 'colour'; valid: "):
        parse_synthetic_uri("synthetic://?colour=red")
    with pytest.raises(InputError, match="defect_rate expected 0..1, got 2.0"):
        parse_synthetic_uri("synthetic://?defect_rate=2")
