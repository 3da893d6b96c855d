"""Letterbox: geometry, padding, content cells and the way back to the frame's pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lemo_edge.errors import InputError
from lemo_edge.letterbox import PAD_VALUE, letterbox_geometry, letterbox_image, unletterbox_map, valid_cells


def test_a_wide_frame_fills_the_width_and_is_padded_below():
    box = letterbox_geometry((1080, 1920), (256, 256))
    assert box.content_hw == (144, 256) and box.padded
    assert box.to_dict() == {
        "frame_hw": [1080, 1920],
        "input_hw": [256, 256],
        "content_hw": [144, 256],
        "pad": [0, 112, 0, 0],
        "pad_value": PAD_VALUE,
    }
    tall = letterbox_geometry((640, 256), (256, 256))  # a tall frame is padded on the right
    assert tall.content_hw == (256, 102) and tall.to_dict()["pad"] == [0, 0, 0, 154]
    same = letterbox_geometry((128, 256), (64, 128))  # the same aspect ratio: no padding
    assert same.content_hw == (64, 128) and not same.padded


def test_letterbox_image_keeps_the_content_at_the_top_left_and_pads_with_the_constant():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (60, 200, 3), dtype=np.uint8)
    out, box = letterbox_image(frame, (64, 128))
    assert out.shape == (64, 128, 3) and out.dtype == np.uint8
    assert box.content_hw == (38, 128)
    assert (out[38:] == PAD_VALUE).all()
    # the content is the frame scaled (not stretched): its column means follow the frame's
    assert abs(float(out[:38].mean()) - float(frame.mean())) < 2.0
    mask = np.zeros((60, 200), np.uint8)
    mask[:, 100:] = 1
    padded_mask, mask_box = letterbox_image(mask, (64, 128))
    assert mask_box == box and padded_mask.shape == (64, 128)
    assert (padded_mask[38:] == 0).all() and padded_mask[:38, 64:].all() and not padded_mask[:38, :64].any()


def test_valid_cells_are_those_whose_centre_is_in_the_content():
    box = letterbox_geometry((60, 200), (64, 128))  # content 38 x 128 of 64 x 128
    cells = valid_cells(box, (8, 16))  # cells of 8 px: rows 0..4 have centres 4..36 < 38
    assert cells.dtype == torch.bool and cells.shape == (8, 16)
    assert cells[:5].all() and not cells[5:].any()
    thin = valid_cells(letterbox_geometry((4, 1000), (64, 64)), (8, 8))  # content 1 x 64: under half a cell
    assert thin[0].all() and int(thin.sum()) == 8


def test_unletterbox_crops_the_padding_and_resizes_to_the_frame():
    box = letterbox_geometry((60, 200), (64, 128))
    amap = torch.zeros(64, 128)
    amap[:38, 64:] = 1.0  # the right half of the content
    amap[38:] = 100.0  # padding: must not reach the frame
    back = unletterbox_map(amap, box)
    assert back.shape == (60, 200) and float(back.max()) <= 1.0
    assert float(back[:, :95].max()) == 0.0 and float(back[:, 105:].min()) == 1.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: letterbox_geometry((0, 10), (64, 64)),
            "letterbox: expected positive (h, w) shapes, got frame (0, 10)",
        ),
        (lambda: letterbox_image(np.zeros((4, 4, 3), np.float32), (64, 64)), "letterbox: expected an (H, W, 3) or"),
        (
            lambda: unletterbox_map(torch.zeros(64, 32), letterbox_geometry((10, 10), (32, 64))),
            "unletterbox: expected a map of (32, 64), got",
        ),
    ],
)
def test_bad_inputs_name_what_was_expected(call, message):
    with pytest.raises(InputError, match=f"^{message.replace('(', '[(]').replace(')', '[)]')}"):
        call()
