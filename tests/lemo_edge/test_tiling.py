"""Tests of lemo_edge.tiling: the tile grid, stitching, region boxes, the layout and the Tiler; and of a model and
an Inspector fed a frame's tiles (position normalisation per tile, one decision, state round trip)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lemo_edge.backbone import FeatureLevel, FeatureSpec
from lemo_edge.config import ModelConfig
from lemo_edge.errors import InputError, StateError
from lemo_edge.inspector import Inspector
from lemo_edge.memory import frame_budget
from lemo_edge.model import LemoModel
from lemo_edge.state import load_state, save_state
from lemo_edge.tiling import (
    TileLayout,
    Tiler,
    TileSpec,
    blend_total,
    blend_window,
    check_roi,
    parse_roi,
    parse_tile,
    region_boxes,
    stitch,
    tile_grid,
    tile_starts,
)
from lemo_edge.updater import OnlineUpdater

FRAME = (96, 128)  # (H, W)


def _coverage(boxes: tuple[tuple[int, int, int, int], ...], frame_hw: tuple[int, int]) -> np.ndarray:
    counts = np.zeros(frame_hw, np.int32)
    for x, y, w, h in boxes:
        counts[y : y + h, x : x + w] += 1
    return counts


# -- parsing and validation ------------------------------------------------------------------------------------------


def test_parse_tile_and_roi() -> None:
    assert parse_tile("256x192") == (256, 192)
    assert parse_tile("64") == (64, 64)
    assert parse_roi("10,20,300,200") == (10, 20, 300, 200)


@pytest.mark.parametrize("text", ["256x", "x256", "0x64", "a", "", "64x-1"])
def test_parse_tile_rejects_malformed_sizes(text: str) -> None:
    with pytest.raises(InputError, match=rf"tile: expected HxW with positive integers \(e.g. 256x256\), got '{text}'"):
        parse_tile(text)


@pytest.mark.parametrize("text", ["1,2,3", "1,2,3,4,5", "-1,0,10,10", "0,0,0,10", "a,b,c,d"])
def test_parse_roi_rejects_malformed_rectangles(text: str) -> None:
    with pytest.raises(InputError, match=rf"roi: expected x,y,w,h with x,y >= 0 and w,h >= 1, got '{text}'"):
        parse_roi(text)


def test_roi_outside_the_frame_is_refused_with_both_sizes() -> None:
    check_roi((0, 0, 128, 96), FRAME)
    with pytest.raises(
        InputError,
        match=r"roi: expected a rectangle inside the 128x96 frame, got x=100,y=10,w=40,h=90 "
        r"\(right edge 140 > 128; bottom edge 100 > 96\)",
    ):
        check_roi((100, 10, 40, 90), FRAME)
    with pytest.raises(InputError, match=r"inside the 128x96 frame, got x=0,y=90,w=10,h=10 \(bottom edge 100 > 96\)"):
        TileSpec((32, 32), 8, (0, 90, 10, 10)).layout(FRAME)


def test_tile_spec_checks_the_overlap_and_the_roi() -> None:
    with pytest.raises(InputError, match=r"overlap: expected 0 <= overlap < 32 \(the tile's smaller side\), got 32"):
        TileSpec((32, 64), 32)
    with pytest.raises(InputError, match="overlap: expected overlap >= 0, got -1"):
        TileSpec(None, -1)
    with pytest.raises(InputError, match=r"tile: expected \(h, w\) positive ints, got \(0, 32\)"):
        TileSpec((0, 32))
    with pytest.raises(
        InputError, match=r"roi: expected \(x, y, w, h\) with x,y >= 0 and w,h >= 1, got \(0, 0, 0, 5\)"
    ):
        TileSpec(None, 0, (0, 0, 0, 5))
    assert not TileSpec().active and TileSpec(roi=(0, 0, 4, 4)).active


# -- grid --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "tile", "overlap"),
    [(1920, 256, 32), (1080, 256, 32), (128, 32, 8), (96, 32, 0), (100, 32, 5), (20, 32, 8)],
)
def test_tile_starts_cover_the_length_with_at_least_the_overlap(length: int, tile: int, overlap: int) -> None:
    starts = tile_starts(length, tile, overlap)
    side = min(tile, length)
    assert starts[0] == 0 and starts[-1] + side == length
    assert all(b - a <= side - overlap for a, b in zip(starts, starts[1:], strict=False))  # overlap at least P
    if len(starts) > 1:  # the fewest tiles: one less would leave a gap or overlap less
        fewer = len(starts) - 1
        assert (fewer - 1) * (side - overlap) + side < length


def test_tile_starts_rejects_an_overlap_as_large_as_the_tile() -> None:
    with pytest.raises(
        InputError, match="tile_starts: expected length, tile >= 1 and 0 <= overlap < tile, got 64, 8, 8"
    ):
        tile_starts(64, 8, 8)


def test_tile_grid_covers_the_frame_exactly() -> None:
    boxes = tile_grid((0, 0, 128, 96), (32, 32), 8)
    assert len(boxes) == 5 * 4 and all(w == 32 and h == 32 for _, _, w, h in boxes)
    counts = _coverage(boxes, FRAME)
    assert counts.min() >= 1  # no gap
    assert counts.max() <= 4  # overlaps only where neighbours meet
    assert all(x + w <= 128 and y + h <= 96 for x, y, w, h in boxes)


def test_tile_grid_covers_the_roi_exactly_and_nothing_else() -> None:
    roi = (10, 20, 70, 50)
    boxes = tile_grid(roi, (32, 32), 4)
    counts = _coverage(boxes, FRAME)
    inside = np.zeros(FRAME, bool)
    inside[20:70, 10:80] = True
    assert counts[inside].min() >= 1 and counts[~inside].max() == 0
    assert tile_grid(roi, None, 0) == (roi,)
    assert tile_grid((0, 0, 20, 10), (32, 32), 8) == ((0, 0, 20, 10),)  # a tile larger than the ROI is cut to it


# -- stitching ---------------------------------------------------------------------------------------------------------


def test_blend_window_is_positive_and_one_inside() -> None:
    window = blend_window(32, 16, 4)
    assert window.shape == (32, 16) and float(window.min()) > 0
    assert float(window[8:24, 6:10].min()) == 1.0
    assert torch.equal(window, window.flip(0)) and torch.equal(window, window.flip(1))


@pytest.mark.parametrize("roi", [(0, 0, 128, 96), (10, 20, 70, 50)])
def test_stitching_a_constant_map_gives_the_constant(roi: tuple[int, int, int, int]) -> None:
    layout = TileSpec((32, 32), 8, roi).layout(FRAME)
    maps = torch.full((layout.count, 16, 16), 2.5)  # tile maps at a 16x16 model input: resized to the tiles
    out = Tiler(layout, (16, 16)).stitch(maps)
    assert out.shape == (roi[3], roi[2])
    torch.testing.assert_close(out, torch.full_like(out, 2.5))


def test_stitching_blends_overlaps_and_keeps_each_tile_where_it_is_alone() -> None:
    boxes = ((0, 0, 32, 16), (24, 0, 32, 16))  # overlap 8 columns
    maps = torch.stack([torch.zeros(16, 32), torch.ones(16, 32)])
    out = stitch(maps, boxes, (0, 0), (16, 56), ramp=8)
    assert float(out[:, :24].abs().max()) == 0.0 and float((out[:, 32:] - 1).abs().max()) == 0.0
    seam = out[0, 24:32]
    assert bool((seam[1:] >= seam[:-1]).all()) and 0 < float(seam[0]) < 0.5 < float(seam[-1]) < 1  # a fade
    total = blend_total(boxes, (0, 0), (16, 56), 8)
    assert float(total.min()) > 0


def test_stitch_checks_the_number_of_maps() -> None:
    with pytest.raises(InputError, match=r"stitch: expected \(2, H, W\) tile maps, got \(3, 8, 8\) float32"):
        stitch(torch.zeros(3, 8, 8), ((0, 0, 8, 8), (8, 0, 8, 8)), (0, 0), (8, 16), 0)


# -- boxes -------------------------------------------------------------------------------------------------------------


def test_region_boxes_one_box_per_region_in_frame_pixels() -> None:
    amap = np.zeros((40, 60), np.float32)
    amap[5:10, 8:20] = 3.0
    amap[7, 9] = 5.0
    amap[30:36, 50:52] = 2.0
    amap[20, 30] = 0.9  # below the threshold
    boxes = region_boxes(amap, 1.0, origin=(100, 200))
    assert boxes == [[108, 205, 12, 5, 5.0], [150, 230, 2, 6, 2.0]]
    assert region_boxes(amap, 10.0) == []
    assert region_boxes(amap, float("inf")) == []
    amap[0, 0] = np.nan
    assert len(region_boxes(amap, 1.0)) == 2


def test_region_boxes_checks_the_map() -> None:
    with pytest.raises(InputError, match=r"anomaly_map: expected \(H, W\) float, got \(2, 3, 4\) float32"):
        region_boxes(np.zeros((2, 3, 4), np.float32), 1.0)


# -- layout and tiler --------------------------------------------------------------------------------------------------


def test_layout_round_trips_through_its_dict() -> None:
    layout = TileSpec((32, 48), 8, (4, 6, 100, 80)).layout(FRAME)
    assert TileLayout.from_dict(layout.to_dict()) == layout
    assert layout.describe() == "tiles 32x48 overlap 8 over roi 4,6,100,80 of a 128x96 frame (9 tiles)"
    with pytest.raises(
        InputError, match=r"tile layout: expected \{frame, roi, tile, overlap\}, got \{'frame': \[96\]\}"
    ):
        TileLayout.from_dict({"frame": [96]})


def test_tiler_cuts_frames_and_masks_into_the_model_input() -> None:
    layout = TileSpec((32, 32), 8).layout(FRAME)
    tiler = Tiler(layout, (64, 64))
    image = np.random.default_rng(0).integers(0, 255, (*FRAME, 3), dtype=np.uint8)
    batch = tiler.cut(image)
    assert batch.shape == (layout.count, 3, 64, 64) and batch.dtype == torch.uint8
    same = Tiler(layout, (32, 32)).cut(image)
    x, y, w, h = layout.boxes[7]
    np.testing.assert_array_equal(same[7].permute(1, 2, 0).numpy(), image[y : y + h, x : x + w])
    mask = np.zeros(FRAME, np.uint8)
    mask[y : y + h, x : x + w] = 1
    tiles = tiler.cut_mask(mask)
    assert tiles.shape == (layout.count, 64, 64) and tiles[7].all()
    with pytest.raises(
        InputError, match=r"frame: expected \(96, 128, 3\) uint8 \(the tile layout's\), got \(96, 96, 3\)"
    ):
        tiler.cut(np.zeros((96, 96, 3), np.uint8))


def test_tiler_puts_the_roi_map_into_the_frame_and_its_boxes_in_frame_pixels() -> None:
    layout = TileSpec(None, 0, (10, 20, 70, 50)).layout(FRAME)
    tiler = Tiler(layout, (32, 32))
    roi_map = np.zeros((50, 70), np.float32)
    roi_map[5:8, 30:34] = 4.0
    full = tiler.frame_map(roi_map)
    assert full.shape == FRAME and float(full[25:28, 40:44].min()) == 4.0 and float(full.sum()) == 4.0 * 12
    assert tiler.boxes(roi_map, 1.0) == [[40, 25, 4, 3, 4.0]]


# -- a model and an inspector fed tiles --------------------------------------------------------------------------------

SPEC = FeatureSpec("toy", (0.5,) * 3, (0.5,) * 3, (FeatureLevel(0, 8, 8),))
CONFIG = ModelConfig(size=32, memory_size=64, warmup=2, insert_per_image=16, sigma=1.0)


def _features(tiles: int, seed: int) -> torch.Tensor:
    return torch.randn(tiles, SPEC.dim, 4, 4, generator=torch.Generator().manual_seed(seed))


def test_an_inspector_with_tiles_takes_one_decision_per_frame_and_learns_all_its_tiles() -> None:
    layout = TileSpec((32, 32), 8).layout(FRAME)
    model = LemoModel(CONFIG, SPEC)
    inspector = Inspector(OnlineUpdater(model), tiler=Tiler(layout, CONFIG.input_hw))
    assert model.layout == layout and model.position_norm is not None
    assert model.position_norm.mean.shape == (layout.count, 4, 4)  # per tile and cell
    for i in range(12):
        outcome = inspector.step(_features(layout.count, i))
    assert outcome.map.shape == FRAME and outcome.patch.shape == (layout.count, 4, 4)
    assert outcome.score == pytest.approx(float(outcome.map.max()))
    assert model.position_norm.ready and model.memory.items.shape[0] > 0
    with pytest.raises(InputError, match=r"features: expected one frame \(20 inputs\) on cpu, got \(1, 8, 4, 4\)"):
        inspector.check(_features(1, 0))
    other = TileSpec((32, 32), 4).layout(FRAME)
    with pytest.raises(StateError, match="tile layout: expected tiles 32x32 overlap 8 over roi 0,0,128,96 of a 128x96"):
        inspector.use_tiler(Tiler(other, CONFIG.input_hw))


def test_state_with_tiles_reloads_with_them(tmp_path: Path) -> None:
    layout = TileSpec((32, 32), 8, (0, 0, 96, 64)).layout(FRAME)
    updater = OnlineUpdater(LemoModel(CONFIG, SPEC))
    inspector = Inspector(updater, tiler=Tiler(layout, CONFIG.input_hw))
    for i in range(10):
        inspector.step(_features(layout.count, i))
    save_state(tmp_path, updater)
    loaded = load_state(tmp_path, SPEC)
    assert loaded.model.layout == layout
    assert loaded.model.position_norm is not None and updater.model.position_norm is not None
    torch.testing.assert_close(loaded.model.position_norm.mean, updater.model.position_norm.mean)
    again = Inspector(loaded, tiler=Tiler(layout, CONFIG.input_hw))
    probe = _features(layout.count, 99)
    torch.testing.assert_close(again.assess(probe).map, inspector.assess(probe).map)
    with pytest.raises(StateError, match="tile layout: expected tiles 32x32 .* got no tiles and no roi"):
        Inspector(loaded).use_tiler(None)


def test_a_tiled_frame_inserts_per_tile_at_most_an_eighth_of_the_memory() -> None:
    """The first frame into an empty memory inserts its farthest-first patches up to the budget: one image's 16 for
    an untiled frame, 16 per tile for a tiled one, capped at K / 8 (here 256 / 8 = 32)."""
    assert [frame_budget(16, t, 256) for t in (0, 1, 2, 20)] == [16, 16, 32, 32]
    assert frame_budget(64, 45, 8192) == 1024 and frame_budget(64, 2, 8192) == 128
    assert frame_budget(16, 20, 64) == 16  # never below one input's budget
    layout = TileSpec((32, 32), 8).layout(FRAME)
    for tiles, tiler, expected in ((1, None, 16), (layout.count, Tiler(layout, CONFIG.input_hw), 32)):
        model = LemoModel(CONFIG.replace(memory_size=256, admission="coverage"), SPEC)
        Inspector(OnlineUpdater(model), tiler=tiler).step(_features(tiles, 0), force=True)
        assert model.memory.items.shape[0] == expected, tiles
