"""``lemo-edge run``: inspect a camera, stream, video, folder or synthetic stream with online learning.

Example::

    lemo-edge run csi://0 events.jsonl overlays/ display://0 --state /var/lib/lemo/line3
    lemo-edge run rtsp://cam/1080p events.jsonl --tile 256x256 --overlap 32 --roi 200,100,1500,800 --state s

With ``--tile`` a frame larger than the model input is cut into overlapping tiles scored as one batch and one
decision (its map stitched at full resolution); ``--roi`` limits the inspection to a rectangle. Events and
overlays are in the frame's own pixels, with a box per anomalous region. The tile layout is saved with the state.

The state folder is loaded at start when it holds a state (its config is used unless ``--config`` or
``--warmup`` is given, which must then match it) and saved atomically every ``--save-every`` updates
and at exit, SIGINT/SIGTERM included. Exit codes: 0 done (also when stopped by a signal), 1 the source
cannot be opened, the state does not fit or a backend cannot run, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from lemo_edge.config import ModelConfig, parse_json_object
from lemo_edge.errors import BackendUnavailableError, InputError, MissingDependencyError
from lemo_edge.scoring import Scorer
from lemo_edge.tiling import TileSpec, parse_roi, parse_tile
from lemo_edge.workers import physical_cores

from .loop import Backend, InspectionLoop, LoopOptions
from .state_store import StateStore, move_updater
from .status import StatusLine
from .stopping import StopFlag, stop_on_signals

log = logging.getLogger(__name__)

BACKEND_CHOICES = ("auto", "torch", "onnxruntime", "tensorrt")
SCORER_CHOICES = ("auto", "torch", "cuda")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _tile_size(text: str) -> tuple[int, int]:
    try:
        return parse_tile(text)
    except InputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _roi(text: str) -> tuple[int, int, int, int]:
    try:
        return parse_roi(text)
    except InputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_tile_arguments(p: argparse.ArgumentParser) -> None:
    """``--tile HxW``, ``--overlap P`` and ``--roi x,y,w,h`` (read by :func:`tile_spec`)."""
    p.add_argument(
        "--tile",
        type=_tile_size,
        default=None,
        metavar="HxW",
        help="cut each frame into tiles of HxW frame pixels (resized to the model input when they differ), "
        "scored as one batch and stitched into one full-resolution map",
    )
    p.add_argument(
        "--overlap",
        type=_non_negative_int,
        default=None,
        metavar="P",
        help="least overlap of neighbouring tiles in pixels, blended (default: an eighth of the tile's smaller side)",
    )
    p.add_argument(
        "--roi",
        type=_roi,
        default=None,
        metavar="x,y,w,h",
        help="inspect only this rectangle of the frame (frame pixels; tiled or resized)",
    )


def tile_spec(args: argparse.Namespace) -> TileSpec | None:
    """The :class:`~lemo_edge.tiling.TileSpec` of ``--tile/--overlap/--roi``, or None without ``--tile``/``--roi``.

    Raises:
        InputError: ``--overlap`` without ``--tile``, or not smaller than the tile.
    """
    tile, overlap, roi = getattr(args, "tile", None), getattr(args, "overlap", None), getattr(args, "roi", None)
    if tile is None and overlap is not None:
        raise InputError(f"--overlap: expected together with --tile, got --overlap {overlap} alone")
    if tile is None and roi is None:
        return None
    if overlap is None:
        overlap = min(tile) // 8 if tile is not None else 0
    return TileSpec(tile, overlap, roi)


def add_parser(sub: Any) -> None:
    """Register the ``run`` sub-command."""
    p = sub.add_parser(
        "run",
        help="inspect a camera/stream/video/folder/synthetic stream with online learning",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "source", help="0, /dev/videoN, csi://N, rtsp://..., a video file, a folder of images, synthetic://?..."
    )
    p.add_argument(
        "sinks",
        nargs="*",
        metavar="SINK",
        help="PATH.jsonl, overlays/, PATH.mp4, PATH.avi, display://N, mqtt://..., http://HOST:PORT (live view)",
    )
    p.add_argument("--state", required=True, metavar="DIR", help="state folder: loaded at start, saved during the run")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="feature backend (default: auto)")
    p.add_argument("--scorer", choices=SCORER_CHOICES, default="auto", help="nearest-memory scorer (default: auto)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when a GPU is visible")
    p.add_argument("--config", default=None, metavar="JSON|PATH", help="ModelConfig fields, JSON text or a JSON file")
    p.add_argument("--warmup", type=_non_negative_int, default=None, metavar="N", help="frames learned unconditionally")
    p.add_argument(
        "--size",
        default=None,
        metavar="S|HxW",
        help="input shape: S (square) or HxW, multiples of 32 (default: the state's, else 256)",
    )
    p.add_argument(
        "--letterbox",
        action="store_true",
        default=None,
        help="keep the frames' aspect ratio: scale them into the input shape and pad (not scored nor learned)",
    )
    p.add_argument("--freeze", action="store_true", help="never update the model (inference only)")
    p.add_argument("--frames", type=_positive_int, default=None, metavar="N", help="stop after N frames")
    p.add_argument("--headless", action="store_true", help="never open a window (display:// sinks are skipped)")
    p.add_argument("--save-every", type=_positive_int, default=50, metavar="N", help="save every N updates (50)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="synchronise the device after every stage: exact per-stage latencies, lower throughput",
    )
    p.add_argument(
        "--status-every",
        type=_non_negative_int,
        default=100,
        metavar="N",
        help="frames between status lines when stderr is not a terminal (0: none; default 100)",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="torch CPU threads (default: usable cores - 1, leaving one to the capture thread)",
    )
    p.add_argument(
        "--mqtt-config",
        default=None,
        metavar="PATH",
        help="MQTT credentials/TLS JSON for mqtt:// sinks (default $LEMO_EDGE_MQTT_CONFIG)",
    )
    p.add_argument("--summary-json", default=None, metavar="PATH", help="also write the run summary as JSON")
    add_tile_arguments(p)
    p.set_defaults(func=run)


def parse_config(text: str | None, warmup: int | None) -> tuple[ModelConfig, bool]:
    """The requested config and whether it was given explicitly (``--config`` or ``--warmup``).

    Raises:
        InputError: unreadable file, invalid JSON, not an object, or an invalid field.
    """
    fields: dict[str, Any] = {}
    if text is not None:
        stripped = text.strip()
        if not stripped.startswith("{"):
            path = Path(stripped).expanduser()
            if not path.is_file():
                raise InputError(f"--config: expected JSON text or a JSON file, got {text!r} (no such file)")
            stripped = path.read_text(encoding="utf-8")
        fields = parse_json_object(stripped, "--config")
    if warmup is not None:
        fields["warmup"] = warmup
    try:
        config = ModelConfig.from_dict(fields)
    except TypeError as err:
        raise InputError(f"--config: {err}") from err
    return config, text is not None or warmup is not None


def with_shape(config: ModelConfig, size: str | None, letterbox: bool | None) -> ModelConfig:
    """``config`` with ``--size`` (``S`` or ``HxW``) and ``--letterbox`` applied when given.

    Raises:
        InputError: a bad size, e.g. ``size: expected H and W positive multiples of 32, got 250x256``.
    """
    changes: dict[str, Any] = {}
    if size is not None:
        changes["size"] = size
    if letterbox is not None:
        changes["letterbox"] = letterbox
    return config.replace(**changes) if changes else config


def default_threads() -> int:
    """Torch intra-op threads for a run: one physical core less than usable, at least one.

    The source captures and decodes in its own thread. When torch's OpenMP workers take every core, they
    busy-wait at their barriers while the capture thread holds a core, and the backbone becomes 10-40 times
    slower (measured on 2 cores: 1.2 s instead of 57 ms per 256 x 256 frame).
    """
    return max(1, physical_cores() - 1)


def resolve_device(name: str | None) -> torch.device:
    """``cpu``, ``cuda`` or (None) cuda when a GPU is visible, else cpu.

    Raises:
        BackendUnavailableError: ``cuda`` asked for without a GPU.
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError("--device cuda: no CUDA GPU is visible to torch")
    return torch.device(name)


class ModuleBackend:
    """The torch :class:`~lemo_edge.backbone.FeatureExtractor` used directly (when ``runtime.backends`` is absent)."""

    name = "torch"

    def __init__(self, module: torch.nn.Module, device: torch.device) -> None:
        self.module = module.to(device).eval()
        self.spec = module.spec
        self.device = device

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) uint8`` -> ``(B, D, H/s, W/s) float32`` on :attr:`device`."""
        with torch.inference_mode():
            return self.module(images.to(self.device, non_blocking=True))


def resolve_backend(name: str, config: ModelConfig, device: torch.device) -> tuple[Backend, str]:
    """Create the feature backend; ``auto`` tries tensorrt, onnxruntime, torch on CUDA and onnxruntime, torch on CPU.

    Returns:
        ``(backend, description)``; the backend has ``.spec``.

    Raises:
        InputError: an unknown name.
        BackendUnavailableError, MissingDependencyError: a named backend cannot run here.
    """
    if name not in BACKEND_CHOICES:
        raise InputError(f"backend: expected one of {list(BACKEND_CHOICES)}, got {name!r}")
    size = config.input_hw
    try:
        from lemo_edge.runtime.backends import create_backend
    except ImportError as err:
        if name not in ("auto", "torch"):
            raise BackendUnavailableError(
                f"backend {name}: lemo_edge.runtime.backends cannot be imported ({err})"
            ) from err
        from lemo_edge.backbone import create_feature_extractor

        reason = f"torch FeatureExtractor (lemo_edge.runtime.backends cannot be imported: {err})"
        log.warning("backend: %s", reason)
        return ModuleBackend(create_feature_extractor(config.backbone), device), reason
    if name != "auto":
        backend = create_backend(name, backbone=config.backbone, size=size, device=device)
        return backend, f"{name} on {backend.device} (requested)"
    # onnxruntime before torch on CPU too: its sessions do not spin and it is about 2x faster there; the first
    # run exports the ONNX file into the cache (seconds, once per backbone and size).
    candidates = ("tensorrt", "onnxruntime", "torch") if device.type == "cuda" else ("onnxruntime", "torch")
    why_not: list[str] = []
    for candidate in candidates:
        try:
            backend = create_backend(candidate, backbone=config.backbone, size=size, device=device)
        except (MissingDependencyError, BackendUnavailableError) as err:
            why_not.append(f"{candidate}: {err}")
            log.warning("backend: %s unavailable (%s); trying the next", candidate, err)
            continue
        reason = f"{candidate} on {backend.device} (auto" + (f"; not {'; '.join(why_not)})" if why_not else ")")
        log.info("backend: %s", reason)
        return backend, reason
    raise BackendUnavailableError(f"backend auto: no backend can run here: {'; '.join(why_not)}")


def resolve_scorer(preference: str, config: ModelConfig, device: torch.device) -> tuple[Scorer | None, str]:
    """Pick the nearest-memory scorer; ``None`` means the model's own torch reference.

    Raises:
        InputError: an unknown preference, or ``cuda`` with ``score_k`` outside 1..8.
        BackendUnavailableError: ``cuda`` asked for where the kernel cannot run.
    """
    if preference not in SCORER_CHOICES:
        raise InputError(f"scorer: expected one of {list(SCORER_CHOICES)}, got {preference!r}")
    try:
        from lemo_edge.runtime.scorers import select_scorer
    except ImportError as err:
        if preference == "cuda":
            raise BackendUnavailableError(f"scorer cuda: lemo_edge.runtime.scorers cannot be imported ({err})") from err
        reason = f"torch reference (lemo_edge.runtime.scorers cannot be imported: {err})"
        log.warning("scorer: %s", reason)
        return None, reason
    scorer, reason = select_scorer(preference, device=device, k=config.score_k)
    if getattr(scorer, "name", "") == "torch":
        return None, reason
    return scorer, reason


def _open_sinks(
    uris: list[str], headless: bool, stack: contextlib.ExitStack, mqtt_config: str | None = None
) -> list[Any]:
    from .sinks import open_sinks

    sinks = open_sinks(uris, headless=headless, mqtt_config=mqtt_config)
    for sink in sinks:
        stack.callback(sink.close)
    return sinks


def run(args: argparse.Namespace) -> int:
    """Entry of ``lemo-edge run``; returns the exit code."""
    from lemo_edge.model import LemoModel
    from lemo_edge.updater import OnlineUpdater

    from .sources import open_source

    options = LoopOptions(
        max_frames=args.frames, freeze=args.freeze, save_every=args.save_every, profile=getattr(args, "profile", False)
    )
    requested, explicit = parse_config(args.config, args.warmup)
    tiling = tile_spec(args)
    device = resolve_device(args.device)
    previous_threads = torch.get_num_threads()
    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    log.info("torch: %d CPU threads", threads)
    flag = StopFlag()
    try:
        with contextlib.ExitStack() as stack, stop_on_signals(flag):
            store = stack.enter_context(StateStore(args.state))
            saved = store.saved_config()
            config = requested if explicit or saved is None else saved
            config = with_shape(config, getattr(args, "size", None), getattr(args, "letterbox", None))
            if tiling is not None and config.letterbox:
                raise InputError("tile: expected either --tile/--roi or --letterbox (a tile is the model's input)")
            # tiles, a region of interest and letterbox need the frames as captured (the loop cuts or letterboxes
            # them); otherwise the source resizes them
            size = None if tiling is not None or config.letterbox else config.input_hw
            source = stack.enter_context(open_source(args.source, size=size))
            sinks = _open_sinks(list(args.sinks), args.headless, stack, args.mqtt_config)
            backend, backend_reason = resolve_backend(args.backend, config, device)
            model_device = torch.device(getattr(backend, "device", device))  # onnxruntime may fall back to CPU
            scorer, scorer_reason = resolve_scorer(args.scorer, config, model_device)
            spec = backend.spec  # type: ignore[attr-defined]
            if saved is not None:
                updater = store.load(spec, config)
                print(
                    f"lemo-edge run: resumed from {store.path} ({updater.stats.updates} updates, "
                    f"{updater.stats.seen} frames seen, threshold {updater.threshold.value:.4g})",
                    file=sys.stderr,
                )
            else:
                updater = OnlineUpdater(LemoModel(config, spec))
                log.info("state: none in %s; starting a new model", store.directory)
            move_updater(updater, model_device)
            for sink in sinks:  # sinks that show the model (the live view) get it
                if hasattr(sink, "attach"):
                    sink.attach(updater)
                    print(f"lemo-edge run: {sink.name}", file=sys.stderr)
            loop = InspectionLoop(
                source,
                backend,
                updater,
                sinks,
                store=store,
                options=options,
                scorer=scorer,
                status=StatusLine(sys.stderr, every=args.status_every),
                stop=flag,
                backend_name=backend_reason,
                scorer_name=scorer_reason,
                tiling=tiling,
            )
            summary = loop.run()
    except KeyboardInterrupt:
        print("lemo-edge run: aborted", file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(previous_threads)
    print(summary.format())
    if args.summary_json:
        path = Path(args.summary_json).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return 0
