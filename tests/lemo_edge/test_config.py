"""ModelConfig: every field's type and range is checked, and the message names the field, its range and the value."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pytest

from lemo_edge.config import FIELD_RULES, ModelConfig
from lemo_edge.errors import InputError

# One out-of-range value per field, with the range the message must state.
OUT_OF_RANGE: list[tuple[str, object, str]] = [
    ("backbone", "", "a non-empty timm model name"),
    ("method", "patchcore", "one of ['coreset', 'lemo']"),
    ("memory_size", 0, "1..65536"),
    ("memory_size", 65537, "1..65536"),
    ("embed_dim", -1, "an integer >= 0"),
    ("score_k", 0, "an integer >= 1"),
    ("sigma", -0.5, "a finite number >= 0"),
    ("position_window", 0, "an integer >= 1"),
    ("insert_per_image", 0, "an integer >= 1"),
    ("merge_slack", 0.0, "a fraction in (0, 1)"),
    ("merge_slack", 1.0, "a fraction in (0, 1)"),
    ("admission", "oracle", "one of ['recurrence', 'coverage']"),
    ("pending_size", -1, "an integer >= 0"),
    ("confirm_images", 0, "an integer >= 1"),
    ("pending_ttl", 0, "an integer >= 1"),
    ("admit_z", math.inf, "null or a finite number"),
    ("knn", "ivf", "one of ['exact', 'faiss-ivf', 'usearch', 'bf16', 'int8']"),
    ("steps_per_image", 0, "an integer >= 1"),
    ("lr_memory", -1e-3, "a finite number >= 0"),
    ("lr_adapter", -1e-3, "a finite number >= 0"),
    ("tau", 0.0, "a finite number > 0"),
    ("q", 0, "an integer >= 1"),
    ("margin", 0.0, "null or a finite number > 0"),
    ("loss_sign", "negated", "one of ['fixed', 'paper']"),
    ("compactness", -1.0, "a finite number >= 0"),
    ("reseed_after", -1, "an integer >= 0"),
    ("refresh_every", -1, "an integer >= 0"),
    ("refresh_min_patches", -1, "an integer >= 0"),
    ("warmup", -1, "an integer >= 0"),
    ("threshold_k", -1.0, "a finite number >= 0"),
    ("seed", -1, "an integer in [0, 9223372036854775807]"),
    ("seed", 2**63, "an integer in [0, 9223372036854775807]"),
]

# One value of the wrong type per field (bools are not ints, floats are not ints, ints are not bools, ...).
WRONG_TYPE: list[tuple[str, object]] = [
    ("backbone", 3),
    ("method", 1),
    ("memory_size", True),
    ("embed_dim", 1.5),
    ("score_k", 3.0),
    ("sigma", "4"),
    ("position_norm", 1),
    ("position_window", 64.0),
    ("insert_per_image", False),
    ("merge_slack", True),
    ("pending_ttl", 3.5),
    ("admit_z", "4"),
    ("pending_searched", 1),
    ("admission", 1),
    ("pending_size", 1.0),
    ("confirm_images", None),
    ("knn", None),
    ("adapter", "yes"),
    ("steps_per_image", 1.0),
    ("lr_memory", None),
    ("lr_adapter", "0.1"),
    ("tau", True),
    ("q", 1.0),
    ("margin", "1"),
    ("loss_sign", None),
    ("compactness", [1.0]),
    ("reseed_after", 8.0),
    ("refresh_every", None),
    ("refresh_min_patches", 2.5),
    ("gate", 0),
    ("warmup", 16.0),
    ("threshold_k", "5"),
    ("seed", 0.0),
]

NON_FINITE = [name for name, rule in FIELD_RULES.items() if rule.kind is float]


def test_default_config_is_valid_and_round_trips():
    config = ModelConfig()
    assert ModelConfig.from_dict(json.loads(config.to_json())) == config


def test_every_field_has_a_rule_and_a_bad_value_here():
    fields = {f.name for f in dataclasses.fields(ModelConfig)} - {"extra"}
    assert set(FIELD_RULES) == fields
    assert {name for name, _, _ in OUT_OF_RANGE} | {
        "position_norm",
        "adapter",
        "gate",
        "pending_searched",
        "letterbox",
        "size",
    } == fields
    assert {name for name, _ in WRONG_TYPE} | {"size", "letterbox"} == fields


@pytest.mark.parametrize(("name", "value", "expected"), OUT_OF_RANGE, ids=lambda v: str(v)[:20])
def test_out_of_range_value_is_named(name, value, expected):
    message = f"{name}: expected {expected}, got {value!r}"
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        ModelConfig().replace(**{name: value})


@pytest.mark.parametrize(("name", "value"), WRONG_TYPE, ids=lambda v: str(v)[:20])
def test_wrong_type_is_named_with_the_type(name, value):
    expected = FIELD_RULES[name].expected
    message = f"{name}: expected {expected}, got {value!r} ({type(value).__name__})"
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        ModelConfig().replace(**{name: value})


@pytest.mark.parametrize("name", NON_FINITE)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_float_fields_must_be_finite(name, value):
    with pytest.raises(InputError, match=f"^{re.escape(name)}: expected .*, got {value!r}$"):
        ModelConfig().replace(**{name: value})


def test_position_window_zero_no_longer_reaches_the_update():
    with pytest.raises(InputError, match=r"^position_window: expected an integer >= 1, got 0$"):
        ModelConfig(position_window=0)


def test_a_library_index_needs_an_unsearched_pool_and_old_ivf_configs_still_load():
    with pytest.raises(InputError, match="^knn: expected 'exact' with pending_searched"):
        ModelConfig(knn="faiss-ivf", pending_searched=True)
    assert ModelConfig(knn="faiss-ivf", pending_searched=True, admission="coverage").knn == "faiss-ivf"
    saved = {**ModelConfig().to_dict(), "ivf_lists": 64, "ivf_probe": 8}
    del saved["knn"]
    assert ModelConfig.from_dict(saved).knn == "faiss-ivf"
    assert ModelConfig.from_dict({**saved, "ivf_lists": 0}).knn == ModelConfig().knn  # omitted: the default


def test_extra_must_be_a_dict_with_string_keys():
    with pytest.raises(InputError, match=r"^extra: expected a dict with string keys, got \[\]$"):
        ModelConfig(extra=[])  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"^extra: expected a dict with string keys, got \{1: 2\}$"):
        ModelConfig(extra={1: 2})  # type: ignore[dict-item]


def test_numbers_are_normalised():
    config = ModelConfig(sigma=4, tau=1, margin=2, size=np.int64(64), score_k=np.int32(2))
    assert type(config.sigma) is float and type(config.tau) is float and type(config.margin) is float
    assert type(config.size) is int and config.size == 64 and type(config.score_k) is int
    assert config == ModelConfig(sigma=4.0, tau=1.0, margin=2.0, size=64, score_k=2)
    assert json.loads(config.to_json())["sigma"] == 4.0


def test_boundary_values_are_accepted():
    ModelConfig(
        embed_dim=0,
        sigma=0.0,
        lr_memory=0.0,
        lr_adapter=0.0,
        compactness=0.0,
        reseed_after=0,
        refresh_every=0,
        refresh_min_patches=0,
        warmup=0,
        threshold_k=0.0,
        seed=2**63 - 1,
        memory_size=65536,
        size=32,
        margin=1e-9,
        merge_slack=0.999,
    )


def test_the_pending_pool_must_fit_in_the_memory():
    with pytest.raises(
        InputError, match=r"pending_size: expected 1..memory_size-1 \(63\) with admission 'recurrence', got 64"
    ):
        ModelConfig(memory_size=64, pending_size=64, admission="recurrence")
    assert ModelConfig(memory_size=64, pending_size=64, admission="coverage").pending_rows == 0
    assert ModelConfig(memory_size=64, admission="recurrence").pending_rows == 8


def test_the_config_names_exactly_the_knn_backends():
    from lemo_edge.config import KNN_BACKENDS
    from lemo_edge.knn import BACKENDS

    assert set(KNN_BACKENDS) == set(BACKENDS)  # kept apart only so that config does not import knn


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("250x256", "250x256"),
        ("256x100", "256x100"),
        (100, "100"),
        (0, "0"),
        ([256, 250], "256x250"),
        ("0x256", "0x256"),
    ],
)
def test_size_sides_must_be_multiples_of_32(value, shown):
    message = f"size: expected H and W positive multiples of 32, got {shown}"
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        ModelConfig(size=value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (256.0, "size: expected an integer or [H, W] of integers, got 256.0"),
        (True, "size: expected an integer or [H, W] of integers, got True"),
        ([256, 256, 3], "size: expected an integer or [H, W] of integers, got [256, 256, 3]"),
        ("256 by 640", "size: expected SIZE or HxW (e.g. 256 or 256x640), got '256 by 640'"),
    ],
)
def test_size_of_the_wrong_form_is_named(value, message):
    with pytest.raises(InputError, match=f"^{re.escape(message)}$"):
        ModelConfig(size=value)


@pytest.mark.parametrize(
    ("value", "stored", "hw"),
    [
        (256, 256, (256, 256)),
        ("256", 256, (256, 256)),
        ("256x256", 256, (256, 256)),
        ([256, 256], 256, (256, 256)),
        ("640x256", (640, 256), (640, 256)),
        (" 64 X 128 ", (64, 128), (64, 128)),
        ([64, 128], (64, 128), (64, 128)),
        ((np.int64(64), 128), (64, 128), (64, 128)),
    ],
)
def test_size_accepts_a_side_or_h_by_w_and_input_hw_is_h_w(value, stored, hw):
    config = ModelConfig(size=value)
    assert config.size == stored and config.input_hw == hw
    assert all(type(v) is int for v in config.input_hw)


def test_non_square_size_round_trips_through_json_and_old_int_configs_load_as_squares():
    config = ModelConfig(size="640x256", letterbox=True)
    data = json.loads(config.to_json())
    assert data["size"] == [640, 256] and data["letterbox"] is True
    assert ModelConfig.from_dict(data) == config and ModelConfig.from_dict(data).input_hw == (640, 256)
    old = {k: v for k, v in ModelConfig().to_dict().items() if k != "letterbox"}
    old["size"] = 320
    loaded = ModelConfig.from_dict(old)
    assert loaded.input_hw == (320, 320) and loaded.letterbox is False
