"""Dataset readers: MVTec layout, manifests, synthetic URIs, explicit conversions and clear errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from lemo_edge.datasets import Item, Sample, open_dataset, resize_sample
from lemo_edge.errors import DatasetError, InputError
from lemo_edge.synthetic import synthetic_sample

MAGNETIC_TILE = Path(__file__).resolve().parents[3] / "shared/data/magnetic_tile"


def _write(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


def _mask(shape: tuple[int, int], value: int = 255) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[5:10, 5:10] = value
    return mask


# -- MVTec AD layout ---------------------------------------------------------------------------------------------------


def _mvtec(root: Path, with_mask: bool = True) -> Path:
    gray = np.full((40, 50), 100, np.uint8)
    for rel in ("train/good/000.png", "train/good/001.png", "test/good/000.png", "test/scratch/000.png"):
        _write(root / rel, gray)
    _write(root / "test/hole/003.png", gray)
    (root / "test/scratch/notes.txt").write_text("not an image")
    if with_mask:
        _write(root / "ground_truth/scratch/000_mask.png", _mask((40, 50)))
        _write(root / "ground_truth/hole/003_mask.png", _mask((40, 50)))
    return root


def test_mvtec_layout(tmp_path):
    data = open_dataset(str(_mvtec(tmp_path / "bottle")))
    assert data.name == "bottle"
    assert (len(data.train_good), len(data.test_good), len(data.test_defect)) == (2, 1, 2)
    assert [i.name for i in data.test_defect] == ["hole/003.png", "scratch/000.png"]
    sample = data.test_defect[1].load()
    assert isinstance(sample, Sample) and sample.image.shape == (40, 50, 3) and sample.image.dtype == np.uint8
    assert sample.mask.dtype == np.uint8 and sample.mask.sum() == 25 and sample.label == 1
    good = data.test_good[0].load()
    assert good.label == 0 and good.mask.shape == (40, 50) and good.mask.sum() == 0
    assert open_dataset(f"file://{tmp_path / 'bottle'}").name == "bottle"


def test_mvtec_defect_without_mask_reads_zeros_and_warns(tmp_path, caplog):
    root = _mvtec(tmp_path / "cable")
    (root / "ground_truth/hole/003_mask.png").unlink()
    with caplog.at_level(logging.WARNING, logger="lemo_edge.datasets"):
        data = open_dataset(root)
    assert "1 defect images have no ground_truth mask" in caplog.text
    assert data.test_defect[0].load().mask.sum() == 0 and data.test_defect[1].load().mask.sum() == 25


def test_mvtec_without_ground_truth_has_image_labels_only(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="lemo_edge.datasets"):
        data = open_dataset(_mvtec(tmp_path / "cable", with_mask=False))
    assert "image-level labels only (no ground_truth/ folder)" in caplog.text
    assert "have no ground_truth mask" not in caplog.text
    defect = data.test_defect[0].load()
    assert defect.label == 1 and defect.mask is None and defect.image.shape == (40, 50, 3)
    assert data.test_good[0].load().mask.sum() == 0  # a normal image's mask is known: no defect


def test_mvtec_without_images_is_an_error(tmp_path):
    (tmp_path / "empty/train/good").mkdir(parents=True)
    (tmp_path / "empty/test").mkdir()
    with pytest.raises(DatasetError, match="expected images in train/good and test/\\*, got none in '.*empty'"):
        open_dataset(tmp_path / "empty")


# -- manifests ---------------------------------------------------------------------------------------------------------


def _manifest(root: Path) -> Path:
    _write(root / "a/Imgs/x.jpg", np.full((30, 30), 80, np.uint8))
    _write(root / "a/Imgs/x.png", np.zeros((30, 30), np.uint8))
    for name in ("y", "z", "w", "v"):
        _write(root / f"b/Imgs/{name}.jpg", np.full((30, 30), 80, np.uint8))
    mask = np.zeros((30, 30), np.uint8)
    mask[:3] = 200
    mask[3] = 127  # below the 128 threshold: normal
    _write(root / "b/Imgs/y.png", mask)
    (root / "b/Imgs/z.png").write_bytes(b"")  # empty mask file
    # w has no mask file at all
    _write(root / "b/Imgs/v.png", np.ones((30, 30), np.uint8))  # stored as {0, 1}: read as no defect, warned
    split = {
        "dataset": "tiles",
        "note": "extra keys are fine",
        "train_good": ["a/Imgs/x.jpg"],
        "test_good": ["a/Imgs/x.jpg"],
        "test_defect": ["b/Imgs/y.jpg", "b/Imgs/z.jpg", "b/Imgs/w.jpg", "b/Imgs/v.jpg"],
    }
    (root / "split.json").write_text(json.dumps(split))
    return root / "split.json"


def test_manifest_with_masks_beside_images(tmp_path, caplog):
    manifest = _manifest(tmp_path)
    for uri in (str(tmp_path), manifest, f"file://{manifest}"):
        data = open_dataset(uri)
        assert data.name == "tiles"
        assert [i.label for i in data.test_defect] == [1, 1, 1, 1]
    y, z, w, v = (item.load() for item in data.test_defect)
    assert y.mask.sum() == 90 and y.name == "b/Imgs/y.jpg"
    assert z.mask.sum() == 0 and w.mask.sum() == 0 and w.mask.shape == (30, 30)
    with caplog.at_level(logging.WARNING, logger="lemo_edge.datasets"):
        assert v.mask.sum() == 0 and data.test_defect[3].load().mask.sum() == 0
    assert "stored as {0, 1}?" in caplog.text
    train = data.train_good[0].load()
    assert train.image.shape == (30, 30, 3) and train.label == 0 and train.mask.sum() == 0


def test_manifest_without_any_mask_file_has_image_labels_only(tmp_path, caplog):
    for name in ("g0", "g1", "d0", "d1"):
        _write(tmp_path / f"img/{name}.jpg", np.full((20, 24), 90, np.uint8))
    split = {"train_good": ["img/g0.jpg"], "test_good": ["img/g1.jpg"], "test_defect": ["img/d0.jpg", "img/d1.jpg"]}
    (tmp_path / "split.json").write_text(json.dumps(split))
    with caplog.at_level(logging.INFO, logger="lemo_edge.datasets"):
        data = open_dataset(tmp_path)
    assert "image-level labels only (no mask file beside any defect image)" in caplog.text
    assert [item.load().mask for item in data.test_defect] == [None, None]
    assert data.test_good[0].load().mask.shape == (20, 24)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "manifest: expected a JSON file, got '.*bad.json'"),
        ("[1, 2]", "manifest: expected a JSON object, got list"),
        ('{"train_good": [], "test_good": []}', r"expected lists of image paths \['test_defect'\]"),
        ('{"train_good": [1], "test_good": [], "test_defect": []}', r"expected lists of image paths \['train_good'\]"),
    ],
)
def test_manifest_errors(tmp_path, content, message):
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(DatasetError, match=message):
        open_dataset(tmp_path / "bad.json")


@pytest.mark.data
@pytest.mark.skipif(not MAGNETIC_TILE.is_dir(), reason=f"needs {MAGNETIC_TILE}")
def test_magnetic_tile_manifest():
    data = open_dataset(str(MAGNETIC_TILE))
    assert data.name == "magnetic_tile"
    assert (len(data.train_good), len(data.test_good), len(data.test_defect)) == (635, 317, 392)
    sample = data.test_defect[0].load()
    assert sample.image.ndim == 3 and sample.image.shape[:2] == sample.mask.shape and sample.mask.max() == 1
    assert np.array_equal(sample.image[..., 0], sample.image[..., 2])  # grayscale replicated
    normal = data.train_good[0].load()
    assert normal.label == 0 and normal.mask.sum() == 0


# -- labelled folders (good/ + defect folders, image-level labels only) ----------------------------------------------


def test_labelled_folders(tmp_path, caplog):
    for i in range(5):
        _write(tmp_path / f"parts/Good/{i}.png", np.full((16, 20), 100, np.uint8))
    _write(tmp_path / "parts/defect/a.png", np.full((16, 20), 10, np.uint8))
    _write(tmp_path / "parts/scratch/b.jpg", np.full((16, 20), 10, np.uint8))
    (tmp_path / "parts/empty").mkdir()
    with caplog.at_level(logging.INFO, logger="lemo_edge.datasets"):
        data = open_dataset(tmp_path / "parts")
    assert "image-level labels only (labelled folders)" in caplog.text
    assert data.name == "parts"
    assert [i.name for i in data.train_good] == ["Good/0.png", "Good/2.png", "Good/4.png"]
    assert [i.name for i in data.test_good] == ["Good/1.png", "Good/3.png"]
    assert [i.name for i in data.test_defect] == ["defect/a.png", "scratch/b.jpg"]
    defect = data.test_defect[1].load()
    assert defect.label == 1 and defect.mask is None and defect.image.shape == (16, 20, 3)
    assert data.train_good[0].load().mask.sum() == 0


def test_labelled_folders_errors(tmp_path):
    _write(tmp_path / "a/good/0.png", np.zeros((8, 8), np.uint8))
    _write(tmp_path / "a/defect/0.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DatasetError, match=r"expected at least 2 images in '.*good' .* got 1 normal and 1 defect"):
        open_dataset(tmp_path / "a")
    _write(tmp_path / "b/good/0.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DatasetError, match=r"\(another layout\)"):  # no defect folder: not this layout
        open_dataset(tmp_path / "b")
    from lemo_edge.datasets import open_labelled_folders

    _write(tmp_path / "c/ok/0.png", np.zeros((8, 8), np.uint8))
    _write(tmp_path / "c/good/0.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DatasetError, match=r"expected one normal folder \(good/, normal/, ok/\) .* \['good', 'ok'\]"):
        open_labelled_folders(tmp_path / "c")


# -- synthetic ---------------------------------------------------------------------------------------------------------


def test_synthetic_uri_and_seed_fallback():
    data = open_dataset("synthetic://?size=32&n_train=3&n_test_good=1&n_test_defect=2", seed=4)
    assert data.name == "synthetic(seed=4)"
    assert (len(data.train_good), len(data.test_good), len(data.test_defect)) == (3, 1, 2)
    sample = data.test_defect[1].load()
    assert sample.label == 1 and np.array_equal(sample.image, synthetic_sample(4, 5, 32, True).image)
    assert open_dataset("synthetic://?seed=1&n_train=1", seed=4).name == "synthetic(seed=1)"
    with pytest.raises(InputError, match="unknown parameter 'colour'"):
        open_dataset("synthetic://?colour=red")


# -- unknown layouts ---------------------------------------------------------------------------------------------------


def test_unknown_layouts_list_the_accepted_ones(tmp_path):
    accepted = r"expected synthetic://..., a manifest .json, a folder with split.json, an MVTec AD category folder"
    with pytest.raises(DatasetError, match=accepted + r".*\(another layout\)"):
        open_dataset(str(tmp_path))
    with pytest.raises(DatasetError, match=r"got '.*nowhere' \(no such path\)"):
        open_dataset(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"got 's3://bucket/x' \(an unknown URI scheme\)"):
        open_dataset("s3://bucket/x")
    _write(tmp_path / "one.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DatasetError, match=accepted):
        open_dataset(tmp_path / "one.png")


def test_item_without_path_or_generator():
    with pytest.raises(DatasetError, match="item 'x': expected an image path or a generator, got neither"):
        Item("x", 0).load()


# -- resizing ----------------------------------------------------------------------------------------------------------


def test_resize_sample_keeps_mask_binary_both_ways():
    sample = synthetic_sample(0, 1, 64, defect=True)
    small = resize_sample(sample, (32, 48))
    assert small.image.shape == (32, 48, 3) and small.mask.shape == (32, 48)
    assert set(np.unique(small.mask)) == {0, 1} and small.label == 1 and small.name == sample.name
    large = resize_sample(sample, (100, 100))
    assert large.image.shape == (100, 100, 3) and set(np.unique(large.mask)) == {0, 1}
    assert resize_sample(sample, (64, 64)) is sample
    unmasked = resize_sample(Sample(sample.image, None, 0, "n"), (16, 16))
    assert unmasked.mask is None and unmasked.image.shape == (16, 16, 3)


def test_resize_sample_errors():
    sample = synthetic_sample(0, 1, 32)
    with pytest.raises(InputError, match=r"size: expected \(height, width\) of positive integers, got \(0, 5\)"):
        resize_sample(sample, (0, 5))
    with pytest.raises(InputError, match=r"size: expected \(height, width\) of positive integers, got \(32,\)"):
        resize_sample(sample, (32,))  # type: ignore[arg-type]
    bad = Sample(np.zeros((8, 8), np.float32), None, 0, "f")
    with pytest.raises(InputError, match=r"image: expected \(H, W, 3\) uint8, got \(8, 8\) float32"):
        resize_sample(bad, (4, 4))
