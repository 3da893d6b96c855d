"""Backbones: offline weights map exactly onto timm, and the feature contract holds."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lemo_edge.backbone import PACKAGED, check_input_size, create_classifier, map_state_dict_by_order, resolve_spec
from lemo_edge.errors import InputError

# Flat lukemelas block index -> stride, for EfficientNet-Lite0 (first block of stages 2, 3, 4, 6).
_LITE0_STRIDE2 = {1, 3, 5, 11}


def _same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def _bn(x: torch.Tensor, sd: dict, prefix: str) -> torch.Tensor:
    return F.batch_norm(
        x,
        sd[f"{prefix}.running_mean"],
        sd[f"{prefix}.running_var"],
        sd[f"{prefix}.weight"],
        sd[f"{prefix}.bias"],
        False,
        0.0,
        1e-3,
    )


def _conv(x: torch.Tensor, w: torch.Tensor, s: int = 1, groups: int = 1) -> torch.Tensor:
    return F.conv2d(_same_pad(x, w.shape[-1], s), w, stride=s, groups=groups)


def reference_lite0(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite0 written from the lukemelas key names alone (TF 'same' padding, ReLU6)."""
    x = F.relu6(_bn(_conv(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    blocks = sorted({int(k.split(".")[1]) for k in sd if k.startswith("_blocks.")})
    for b in blocks:
        p = f"_blocks.{b}"
        inp = x
        if f"{p}._expand_conv.weight" in sd:
            x = F.relu6(_bn(_conv(x, sd[f"{p}._expand_conv.weight"]), sd, f"{p}._bn0"))
        dw = sd[f"{p}._depthwise_conv.weight"]
        stride = 2 if b in _LITE0_STRIDE2 else 1
        x = F.relu6(_bn(_conv(x, dw, stride, groups=dw.shape[0]), sd, f"{p}._bn1"))
        x = _bn(_conv(x, sd[f"{p}._project_conv.weight"]), sd, f"{p}._bn2")
        if stride == 1 and x.shape == inp.shape:
            x = x + inp
    x = F.relu6(_bn(_conv(x, sd["_conv_head.weight"]), sd, "_bn1"))
    return F.linear(x.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])


def test_efficientnet_lite0_weights_map_exactly():
    sd = torch.load(str(PACKAGED["tf_efficientnet_lite0"].weights()), map_location="cpu", weights_only=True)
    model = create_classifier("tf_efficientnet_lite0")
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, ref = model(x), reference_lite0(sd, x)
    assert (ours - ref).abs().max() < 1e-3
    assert torch.equal(ours.argmax(1), ref.argmax(1))


def test_mobilenetv2_weights_match_torchvision_exactly():
    import torchvision

    ref = torchvision.models.mobilenet_v2()
    ref.load_state_dict(torch.load(str(PACKAGED["mobilenetv2_100"].weights()), weights_only=True))
    model = create_classifier("mobilenetv2_100")
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), ref.eval()(x))


@pytest.mark.parametrize("name", sorted(PACKAGED))
def test_feature_spec_contract(name):
    """Every packaged backbone produces exactly what its FeatureSpec declares."""
    from lemo_edge.backbone import create_feature_extractor

    fe = create_feature_extractor(name)
    spec = fe.spec
    assert spec == resolve_spec(name)
    images = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    feats = fe(images)
    assert feats.shape == (2, spec.dim, 64 // spec.stride, 96 // spec.stride)
    assert feats.dtype == torch.float32
    assert not any(p.requires_grad for p in fe.parameters())
    fe.train()
    assert not fe.training


def test_mapping_refuses_mismatched_shapes():
    src = {"a.weight": torch.zeros(3, 3)}
    dst = {"b.weight": torch.zeros(3, 4)}
    with pytest.raises(InputError, match=r"a.weight \(3, 3\) cannot map onto b.weight \(3, 4\)"):
        map_state_dict_by_order(src, dst)


def test_unpackaged_backbone_without_weights_is_refused():
    with pytest.raises(InputError, match="no packaged weights"):
        create_classifier("resnet18")


def test_input_size_must_be_multiple_of_32():
    assert check_input_size(256) == (256, 256)
    with pytest.raises(InputError, match="expected positive multiples of 32, got 250"):
        check_input_size(250)


def test_levels_are_averaged_over_3x3_counting_the_zero_padding():
    """PatchCore's convention: a border cell's average divides by 9, the padding counting as zeros."""
    from lemo_edge.backbone import POOLING, aggregate_levels

    fine = torch.rand(1, 2, 6, 8) + 1.0
    coarse = torch.rand(1, 3, 3, 4) + 1.0
    out = aggregate_levels([fine, coarse])
    assert out.shape == (1, 5, 6, 8) and POOLING == "avg3-zero-pad"
    padded = F.pad(fine, (1, 1, 1, 1))  # an independent 3x3 sum over the zero-padded level, divided by 9
    expected = sum(padded[..., i : i + 6, j : j + 8] for i in range(3) for j in range(3)) / 9.0
    torch.testing.assert_close(out[:, :2], expected)
    corner = fine[0, :, :2, :2].sum((1, 2)) / 9.0  # 4 valid cells of 9: the corner is damped
    torch.testing.assert_close(out[0, :2, 0, 0], corner)
    coarse_padded = F.pad(coarse, (1, 1, 1, 1))
    coarse_avg = sum(coarse_padded[..., i : i + 3, j : j + 4] for i in range(3) for j in range(3)) / 9.0
    torch.testing.assert_close(out[:, 2:], F.interpolate(coarse_avg, size=(6, 8), mode="bilinear", align_corners=False))
