"""The one image policy (lemo_edge.images): 8/16-bit, gray, BGR, BGRA accepted; everything else refused by name."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from lemo_edge.errors import DatasetError, InputError
from lemo_edge.images import read_image, read_mask, to_rgb8


def _write(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


# -- decoded arrays ---------------------------------------------------------------------------------------------------


def test_bgr_is_swapped_to_rgb():
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 0] = 200  # blue in BGR
    bgr[..., 1] = 7
    out = to_rgb8(bgr)
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert out[0, 0].tolist() == [0, 7, 200]
    assert bgr[0, 0].tolist() == [200, 7, 0]  # the input is not modified


@pytest.mark.parametrize("shape", [(4, 5), (4, 5, 1)])
def test_grayscale_is_replicated(shape):
    gray = np.arange(20, dtype=np.uint8).reshape(shape)
    out = to_rgb8(gray)
    assert out.shape == (4, 5, 3)
    for c in range(3):
        assert np.array_equal(out[..., c], gray.reshape(4, 5))


def test_alpha_is_dropped_not_composited():
    bgra = np.zeros((3, 3, 4), np.uint8)
    bgra[..., 2] = 255  # red in BGRA
    bgra[..., 3] = 0  # fully transparent: still red, alpha is not applied
    assert to_rgb8(bgra)[0, 0].tolist() == [255, 0, 0]


def test_sixteen_bit_is_scaled_by_1_over_257_and_rounded():
    values = np.array([[0, 128, 129, 257, 385, 386, 257 * 100, 65535]], np.uint16)
    out = to_rgb8(values)
    assert out[..., 0].tolist() == [[0, 0, 1, 1, 1, 2, 100, 255]]
    assert np.array_equal(out[..., 0], np.round(values / 257.0).astype(np.uint8))
    bgr16 = np.zeros((2, 2, 3), np.uint16)
    bgr16[..., 0] = 65535  # blue
    assert to_rgb8(bgr16)[0, 0].tolist() == [0, 0, 255]


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((4, 5), np.float32), r"image: expected uint8 or uint16 pixels, got \(4, 5\) float32"),
        (np.zeros((4, 5, 3), np.int16), r"image: expected uint8 or uint16 pixels, got \(4, 5, 3\) int16"),
        (np.zeros((4, 5), np.uint32), r"image: expected uint8 or uint16 pixels, got \(4, 5\) uint32"),
        (np.zeros((4, 5), bool), r"image: expected uint8 or uint16 pixels, got \(4, 5\) bool"),
        (
            np.zeros((4, 5, 2), np.uint8),
            r"image: expected \(H, W\), \(H, W, 1\), \(H, W, 3\) or \(H, W, 4\) pixels, got \(4, 5, 2\) uint8",
        ),
        (np.zeros((4, 5, 5), np.uint8), r"got \(4, 5, 5\) uint8"),
        (np.zeros((2, 4, 5, 3), np.uint8), r"got \(2, 4, 5, 3\) uint8"),
        (np.zeros(7, np.uint8), r"got \(7,\) uint8"),
        (np.zeros((0, 5, 3), np.uint8), r"image: expected at least one pixel, got \(0, 5, 3\) uint8"),
        ([[1, 2]], r"image: expected a numpy array, got list"),
    ],
)
def test_anything_else_is_refused_naming_what_came(image, message):
    with pytest.raises(InputError, match=message):
        to_rgb8(image)


# -- files ------------------------------------------------------------------------------------------------------------


def test_read_image_applies_the_same_policy(tmp_path):
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4)
    image = read_image(_write(tmp_path / "gray.png", gray))
    assert image.shape == (4, 4, 3) and image.dtype == np.uint8 and np.array_equal(image[..., 1], gray)
    assert read_image(_write(tmp_path / "g16.png", np.full((4, 4), 65535, np.uint16))).max() == 255
    assert (read_image(_write(tmp_path / "h16.png", np.full((4, 4), 257 * 100, np.uint16))) == 100).all()
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 2] = 255  # red in BGRA
    assert read_image(_write(tmp_path / "rgba.png", rgba))[0, 0].tolist() == [255, 0, 0]
    bgr = np.zeros((4, 4, 3), np.uint8)
    bgr[..., 0] = 200  # blue in BGR
    assert read_image(_write(tmp_path / "bgr.png", bgr))[0, 0].tolist() == [0, 0, 200]
    assert read_image(_write(tmp_path / "ünïcode" / "grå.png", gray)).shape == (4, 4, 3)


def test_read_image_names_the_file(tmp_path):
    with pytest.raises(DatasetError, match="missing.png' \\(not found\\)"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="bad.png' \\(12 bytes, corrupt\\?\\)"):
        read_image(tmp_path / "bad.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="empty.png' \\(0 bytes, corrupt\\?\\)"):
        read_image(tmp_path / "empty.png")
    _write(tmp_path / "float.tiff", np.zeros((4, 4), np.float32))
    with pytest.raises(
        InputError, match=r"image: expected uint8 or uint16 pixels, got \(4, 4\) float32 in '.*float.tiff'"
    ):
        read_image(tmp_path / "float.tiff")


def test_read_mask(tmp_path):
    mask = np.zeros((20, 20), np.uint8)
    mask[5:10, 5:10] = 128
    path = _write(tmp_path / "m.png", mask)
    read = read_mask(path, (20, 20))
    assert read.dtype == np.uint8 and read.sum() == 25 and set(np.unique(read)) == {0, 1}
    assert read_mask(None, (3, 4)).shape == (3, 4)
    assert read_mask(tmp_path / "absent.png", (3, 4)).sum() == 0
    with pytest.raises(DatasetError, match=r"mask: expected the size of its image \(10, 20\), got \(20, 20\) in"):
        read_mask(path, (10, 20))
    (tmp_path / "bad.png").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="mask: expected a decodable image, got '.*bad.png' \\(corrupt\\?\\)"):
        read_mask(tmp_path / "bad.png", (4, 4))


def test_eval_and_run_read_files_identically(tmp_path):
    """The dataset reader (eval) and the folder source (run) give the same pixels for the same 16-bit file."""
    from lemo_edge.runtime.sources import open_source
    from lemo_edge.samples import Item

    rng = np.random.default_rng(0)
    path = _write(tmp_path / "frames" / "x.png", rng.integers(0, 65536, (8, 8, 3), dtype=np.uint16))
    from_eval = Item("x.png", 0, path).load().image
    with open_source(str(tmp_path / "frames")) as source:
        frames = list(source)
    assert len(frames) == 1 and np.array_equal(frames[0].image, from_eval)
