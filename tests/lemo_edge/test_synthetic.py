"""The synthetic generator: determinism, texture families, defect masks, area and contrast, URIs, stream."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest

from lemo_edge.datasets import open_dataset
from lemo_edge.errors import InputError
from lemo_edge.synthetic import (
    AREA_RANGE,
    DEFECT_KINDS,
    FAMILIES,
    SyntheticStream,
    parse_synthetic_uri,
    synthetic_sample,
    texture_family,
)


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64)


def test_sample_shapes_dtypes_and_names():
    normal = synthetic_sample(0, 3, size=64)
    assert normal.image.shape == (64, 64, 3) and normal.image.dtype == np.uint8
    assert normal.mask is not None and normal.mask.shape == (64, 64) and normal.mask.dtype == np.uint8
    assert normal.mask.sum() == 0 and normal.label == 0 and normal.name == "synthetic-0-3"
    defect = synthetic_sample(0, 3, size=64, defect=True)
    assert defect.label == 1 and set(np.unique(defect.mask)) == {0, 1}


def test_deterministic_given_seed_and_index():
    a, b = synthetic_sample(3, 7, 64, True), synthetic_sample(3, 7, 64, True)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(synthetic_sample(3, 7, 64).image, synthetic_sample(3, 8, 64).image)
    assert not np.array_equal(synthetic_sample(3, 7, 64).image, synthetic_sample(4, 7, 64).image)


def test_family_is_fixed_per_seed_and_all_families_occur():
    assert [texture_family(s) for s in range(3)] == list(FAMILIES)
    assert SyntheticStream(seed=4).family == texture_family(4)
    # frames of one stream look alike (same tone and texture statistics), frames of other seeds do not
    means = np.array([synthetic_sample(5, i, 64).image.reshape(-1, 3).mean(0) for i in range(6)])
    other = synthetic_sample(6, 0, 64).image.reshape(-1, 3).mean(0)
    spread = np.abs(means - means.mean(0)).max()
    assert spread < 12 and np.abs(other - means.mean(0)).max() > spread


@pytest.mark.parametrize("kind", DEFECT_KINDS)
@pytest.mark.parametrize("size", [64, 128])
def test_defect_changes_exactly_the_mask_area_with_bounded_size_and_contrast(kind, size):
    low, high = AREA_RANGE
    for seed in range(3):
        for index in range(4):
            defect = synthetic_sample(seed, index, size, True, kind=kind)
            normal = synthetic_sample(seed, index, size, False)
            assert low <= defect.mask.mean() <= high
            diff = np.abs(_gray(defect.image) - _gray(normal.image))
            assert diff[defect.mask == 0].max() == 0  # the mask is exact: nothing changes outside it
            ratio = diff[defect.mask == 1].mean() / _gray(normal.image).std()
            assert 1.4 < ratio < 3.6, (seed, index, ratio)  # visible, but of the texture's own order


def test_defect_kinds_are_drawn_from_the_seed():
    kinds = []
    for index in range(12):
        default = synthetic_sample(1, index, 64, True)
        same = [
            k for k in DEFECT_KINDS if np.array_equal(synthetic_sample(1, index, 64, True, kind=k).image, default.image)
        ]
        assert len(same) == 1
        kinds += same
    assert set(kinds) == set(DEFECT_KINDS)
    with pytest.raises(InputError, match=r"kind: expected one of \['scratch', 'blob', 'crack'\], got 'dent'"):
        synthetic_sample(0, 0, 64, True, kind="dent")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 0, 64), "seed: expected an integer >= 0, got -1"),
        ((0, -2, 64), "index: expected an integer >= 0, got -2"),
        ((0, 0, 16), "size: expected an integer >= 32, got 16"),
    ],
)
def test_sample_argument_errors(args, message):
    with pytest.raises(InputError, match=message):
        synthetic_sample(*args)


def test_stream_is_indexable_iterable_and_seeded():
    stream = SyntheticStream(seed=0, size=64, defect_rate=0.3)
    labels = [stream.is_defect(i) for i in range(400)]
    assert 0.22 < np.mean(labels) < 0.38
    assert [stream.is_defect(i) for i in range(400)] == labels  # same answer every time
    first = next(iter(stream))
    assert np.array_equal(first.image, stream[0].image) and first.label == int(labels[0])
    assert stream[5].label == int(labels[5])
    bounded = SyntheticStream(seed=0, size=32, defect_rate=1.0, length=3)
    samples = list(bounded)
    assert len(bounded) == 3 and len(samples) == 3 and all(s.label == 1 for s in samples)
    assert all(s.label == 0 for s in SyntheticStream(seed=1, size=32, defect_rate=0.0, length=4))


def test_stream_errors():
    with pytest.raises(InputError, match=r"defect_rate: expected a probability in \[0, 1\], got 1.5"):
        SyntheticStream(defect_rate=1.5)
    with pytest.raises(InputError, match="length: expected None or an integer >= 0, got -1"):
        SyntheticStream(length=-1)
    with pytest.raises(IndexError, match="index: expected an integer >= 0 and < 2, got 2"):
        SyntheticStream(size=32, length=2)[2]
    with pytest.raises(IndexError, match="index: expected an integer >= 0, got -1"):
        SyntheticStream(size=32)[-1]
    with pytest.raises(InputError, match="index: expected an integer >= 0, got 'a'"):
        SyntheticStream(size=32)["a"]  # type: ignore[index]
    with pytest.raises(TypeError, match="endless SyntheticStream has no len"):
        len(SyntheticStream())


def test_parse_uri_defaults_types_and_seed_fallback():
    params = parse_synthetic_uri("synthetic://?defect_rate=0.25&seed=2&size=64")
    assert params == {
        "seed": 2,
        "size": 64,
        "defect_rate": 0.25,
        "n_train": 200,
        "n_test_good": 50,
        "n_test_defect": 50,
        "width": 0,
        "height": 0,
        "defect_min": 0,
        "defect_max": 0,
    }
    assert isinstance(params["seed"], int) and isinstance(params["defect_rate"], float)
    assert parse_synthetic_uri("synthetic://")["size"] == 256
    assert parse_synthetic_uri("synthetic://?size=64", seed=9)["seed"] == 9
    assert parse_synthetic_uri("synthetic://?seed=1", seed=9)["seed"] == 1


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("synthetic://?colour=red", r"unknown parameter 'colour'; valid: \['defect_max', 'defect_min', "),
        ("synthetic://?defect_rate=2", r"defect_rate expected 0..1, got 2.0"),
        ("synthetic://?defect_rate=x", r"defect_rate expected a number, got 'x'"),
        ("synthetic://?seed=1.5", r"seed expected an integer, got '1.5'"),
        ("synthetic://?seed=-1", r"seed expected >= 0, got -1"),
        ("synthetic://?size=48", r"size expected a multiple of 32 >= 32, got 48"),
        ("synthetic://?seed=1&seed=2", r"expected seed once, got it twice"),
        ("synthetic://cam0?seed=1", r"expected 'synthetic://\?key=value&...', got 'synthetic://cam0\?seed=1'"),
        ("file://x.png", r"expected 'synthetic://\?key=value&...', got 'file://x.png'"),
    ],
)
def test_parse_uri_errors(uri, message):
    with pytest.raises(InputError, match=message):
        parse_synthetic_uri(uri)


def test_synthetic_dataset_splits_are_disjoint_and_picklable():
    data = open_dataset("synthetic://?size=32&n_train=4&n_test_good=2&n_test_defect=3", seed=7)
    assert (len(data.train_good), len(data.test_good), len(data.test_defect)) == (4, 2, 3)
    names = [item.name for split in (data.train_good, data.test_good, data.test_defect) for item in split]
    assert len(set(names)) == 9 and names[0] == "synthetic-7-0"
    assert all(item.label == 1 for item in data.test_defect)
    item = pickle.loads(pickle.dumps(data.test_defect[0]))  # items can go to worker processes
    sample = item.load()
    assert sample.label == 1 and sample.mask.any() and sample.image.shape == (32, 32, 3)
    assert np.array_equal(sample.image, synthetic_sample(7, 6, 32, True).image)


def test_camera_shaped_frames_with_small_defects():
    from lemo_edge.synthetic import defect_px, frame_shape

    params = parse_synthetic_uri("synthetic://?width=640&height=200&defect_min=10&defect_max=20&seed=1")
    assert frame_shape(params) == (200, 640) and defect_px(params) == (10, 20)
    stream = SyntheticStream(1, 256, 1.0, shape=(200, 640), defect_px=(10, 20))
    for index in range(6):
        sample = stream[index]
        assert sample.image.shape == (200, 640, 3) and sample.mask.shape == (200, 640) and sample.label == 1
        ys, xs = np.nonzero(sample.mask)
        assert max(ys.max() - ys.min(), xs.max() - xs.min()) + 1 <= 20  # the longest side is at most 20 px
        normal = synthetic_sample(1, index, 256, False, shape=(200, 640))
        assert np.array_equal(normal.image[sample.mask == 0], sample.image[sample.mask == 0])
        assert not np.array_equal(normal.image[sample.mask == 1], sample.image[sample.mask == 1])
    # the square default is unchanged by the shape machinery
    assert np.array_equal(synthetic_sample(1, 2, 64).image, synthetic_sample(1, 2, 64, shape=(64, 64)).image)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("synthetic://?width=16", r"width expected 0 \(= size\) or >= 32, got 16"),
        ("synthetic://?defect_min=10", "defect_min and defect_max expected 2 <= min <= max"),
        ("synthetic://?defect_min=30&defect_max=20", "defect_min and defect_max expected"),
        ("synthetic://?height=64&defect_min=10&defect_max=40", "<= 32 \\(half the shorter side\\)"),
    ],
)
def test_camera_shape_errors(uri, message):
    with pytest.raises(InputError, match=message):
        parse_synthetic_uri(uri)
