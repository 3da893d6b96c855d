"""Saving and loading a model's whole online state: safetensors + JSON, never pickle.

One file, ``state.safetensors``, holds every tensor (adapter, memory, optimiser moments) and,
in its metadata, the JSON of the config, the backbone's feature spec, the threshold statistics,
the update counters and the tile layout (``lemo_edge.tiling``; ``null`` without tiles or ROI).
The write is atomic (temporary file in the same folder, fsync, rename), so an interrupted save
leaves the previous state loadable. A readable ``state.json`` copy of the metadata is written
beside it for people; loading never reads it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from lemo_edge.backbone import POOLING_BEFORE, FeatureSpec
from lemo_edge.config import ModelConfig
from lemo_edge.errors import InputError, StateError
from lemo_edge.model import LemoModel
from lemo_edge.threshold import OnlineThreshold
from lemo_edge.tiling import TileLayout
from lemo_edge.updater import OnlineUpdater, UpdateStats
from lemo_edge.utils import write_atomic

FORMAT_VERSION = 2  # 2: the coreset memory gained tags and a pending pool
STATE_FILE = "state.safetensors"


def _spec_dict(spec: FeatureSpec) -> dict[str, Any]:
    return {"name": spec.name, "dim": spec.dim, "stride": spec.stride, "pooling": spec.pooling}


def save_state(directory: str | Path, updater: OnlineUpdater) -> Path:
    """Atomically write the model and its online-learning state to ``directory/state.safetensors``.

    Returns:
        The path written.
    """
    model = updater.model
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optim: dict[str, Any] = {}
    if updater.optimizer is not None:
        full = updater.optimizer.state_dict()
        for pid, slots in full["state"].items():
            for name, value in slots.items():
                tensors[f"optim.{pid}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
        optim = {"param_groups": full["param_groups"]}
    meta = {
        "format": "lemo-edge-state",
        "version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "spec": _spec_dict(model.spec),
        "threshold": updater.threshold.state_dict(),
        "stats": dataclasses.asdict(updater.stats),
        "optimizer": optim,
        "layout": model.layout.to_dict() if model.layout is not None else None,
    }
    text = json.dumps(meta, sort_keys=True)
    directory = Path(directory)
    path = directory / STATE_FILE
    write_atomic(path, save_bytes(tensors, metadata={"lemo_edge": text}))
    write_atomic(directory / "state.json", json.dumps(meta, indent=2, sort_keys=True).encode())
    return path


def read_state(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and validate ``directory/state.safetensors``: returns ``(metadata, tensors)``."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise StateError(f"state: expected {path}, found no such file")
    try:
        data = path.read_bytes()
        tensors = load_bytes(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        meta = json.loads(header["__metadata__"]["lemo_edge"])
    except (SafetensorError, ValueError, KeyError, json.JSONDecodeError) as err:
        raise StateError(f"state: {path} is not a lemo-edge state file ({err})") from err
    if meta.get("format") != "lemo-edge-state" or meta.get("version") != FORMAT_VERSION:
        raise StateError(
            f"state: expected lemo-edge-state version {FORMAT_VERSION}, got {meta.get('format')} "
            f"version {meta.get('version')} in {path}"
        )
    return meta, tensors


def load_state(directory: str | Path, spec: FeatureSpec, config: ModelConfig | None = None) -> OnlineUpdater:
    """Rebuild a model and its updater from a saved state.

    Args:
        directory: folder holding ``state.safetensors``.
        spec: the feature spec of the backbone that will feed the model.
        config: if given, the saved config must equal it.

    Raises:
        StateError: missing/corrupt file, other version, or a state made for another backbone,
            feature size or configuration.
    """
    meta, tensors = read_state(directory)
    saved_spec = dict(meta["spec"])
    saved_spec.setdefault("pooling", POOLING_BEFORE)  # states saved before the spec recorded it
    if saved_spec["pooling"] != spec.pooling:
        raise StateError(
            f"state: learned from features pooled as {saved_spec['pooling']!r}, but this backbone's are pooled as "
            f"{spec.pooling!r} (lemo-edge changed its 3x3 average; docs/method.md section 9): learn a new state"
        )
    if saved_spec != _spec_dict(spec):
        raise StateError(f"state: made for backbone {saved_spec}, but this model uses {_spec_dict(spec)}")
    saved = ModelConfig.from_dict(meta["config"])
    if config is not None and saved != config:
        diff = {k: (v, getattr(config, k)) for k, v in saved.to_dict().items() if v != getattr(config, k)}
        raise StateError(f"state: saved config differs from the requested one (saved, requested): {diff}")
    try:
        layout = TileLayout.from_dict(meta["layout"]) if meta.get("layout") else None
    except InputError as err:
        raise StateError(f"state: {err}") from err
    model = LemoModel(saved, spec, layout)
    model_tensors = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_tensors)
    except RuntimeError as err:
        raise StateError(f"state: tensors do not fit the model: {err}") from err
    updater = OnlineUpdater(model, OnlineThreshold.from_state_dict(meta["threshold"]))
    updater.stats = UpdateStats(**meta["stats"])
    if updater.optimizer is not None and meta["optimizer"]:
        slots: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, pid, name = key.split(".", 2)
                slots.setdefault(int(pid), {})[name] = value
        updater.optimizer.load_state_dict({"state": slots, "param_groups": meta["optimizer"]["param_groups"]})
    return updater
