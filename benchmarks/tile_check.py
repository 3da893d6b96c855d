"""Tiles for large frames (issue 15): small defects in 1920x1080 frames, tiled against squashed.

Runs ``lemo-edge run`` (in-process, the command line users run) three times over the same synthetic stream of
1920x1080 frames with defects of 10-20 px (``synthetic://?width=1920&height=1080&defect_min=10&defect_max=20``,
10% defects, seed 0):

* squashed: the whole frame resized to the 256x256 model input (no ``--tile``);
* tiled: ``--tile 256x256 --overlap 32`` (tiles scored as one batch, one decision per frame);
* magnified: the same tiles into a 512x512 model input (``--size 512``, below).

All from an empty state, one torch thread, the onnxruntime backend on the CPU (``--backend torch`` works too).
The figure of merit is the prequential image AUROC (each frame scored before the model learned from it) over
the run's frames. Writes ``tile-check.json`` and ``tile-check.md`` (the AUROCs, times, the commands).

Run: ``.venv/bin/python benchmarks/tile_check.py [--frames 300] [--out benchmarks/results]`` (the tiled runs
take the time: about 45 tiles per frame; ``--only CASE`` runs one). The magnified run (``--magnified 512``, the
default; 0 skips it) gives the tiles a 512x512 model input: each tile is magnified 2x, so a 10 px defect spans two
or three of the backbone's 8 px cells instead of one or two (four times the cost per frame; about 40 min here).

``--stationary`` adds (to an existing ``tile-check.json``) a check without the stream's drift: a tiled model learns
30 normal frames (forced, in order), then scores 16 held-out normal and 16 defective frames with its state fixed,
for the map smoothing ``sigma`` 4 (the default), 2 and 1: the image AUROC the detector reaches at this resolution.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from lemo_edge.runtime.main import main as lemo_edge_main

SOURCE = "synthetic://?width=1920&height=1080&defect_min=10&defect_max=20&defect_rate=0.1&seed=0"


def run_case(name: str, extra: list[str], frames: int, backend: str, work: Path) -> dict[str, Any]:
    """One ``lemo-edge run`` over ``frames`` frames; returns its summary, the command and the wall time."""
    summary_path = work / f"{name}-summary.json"
    argv = [
        "run",
        SOURCE,
        "--state",
        str(work / f"{name}-state"),
        "--frames",
        str(frames),
        "--headless",
        "--threads",
        "1",
        "--backend",
        backend,
        "--status-every",
        "25",
        "--summary-json",
        str(summary_path),
        *extra,
    ]
    t0 = time.perf_counter()
    code = lemo_edge_main(argv)
    seconds = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"{name}: lemo-edge run exited with {code}")
    summary = json.loads(summary_path.read_text())
    return {
        "name": name,
        "command": "lemo-edge " + shlex.join(arg.replace(str(work), "$TMP") for arg in argv),
        "prequential_auroc": summary["prequential_auroc"],
        "prequential_auroc_after_warmup": summary["prequential_auroc_after_warmup"],
        "frames": summary["frames"],
        "labelled": summary["labelled"],
        "anomalies": summary["anomalies"],
        "updates": summary["updates"],
        "seconds": seconds,
        "latency_ms": summary["latency_ms"],
        "backend": summary["backend"],
    }


def stationary_check(backend: str, learn: int = 30, held: int = 16) -> dict[str, Any]:
    """Image AUROC of a tiled model with its state fixed after ``learn`` forced normal frames (see the docstring)."""
    import numpy as np
    import torch

    from lemo_edge.config import ModelConfig
    from lemo_edge.inspector import Inspector
    from lemo_edge.metrics import image_auroc
    from lemo_edge.model import LemoModel
    from lemo_edge.runtime.backends import create_backend
    from lemo_edge.synthetic import defect_px, frame_shape, parse_synthetic_uri, synthetic_sample
    from lemo_edge.tiling import Tiler, TileSpec
    from lemo_edge.updater import OnlineUpdater

    torch.set_num_threads(1)
    config = ModelConfig()
    extract = create_backend(backend, backbone=config.backbone, size=config.input_hw, device=torch.device("cpu"))
    params = parse_synthetic_uri(SOURCE)
    shape, defects = frame_shape(params), defect_px(params)
    tiler = Tiler(TileSpec((256, 256), 32).layout(shape), config.input_hw)

    def tiles(index: int, defect: bool) -> torch.Tensor:
        sample = synthetic_sample(0, index, size=256, defect=defect, shape=shape, defect_px=defects)
        return extract(tiler.cut(sample.image)).clone()

    model = LemoModel(config, extract.spec)
    inspector = Inspector(OnlineUpdater(model), tiler=tiler)
    for i in range(learn):
        inspector.step(tiles(i, False), force=True)
    probes = [tiles(1000 + i, False) for i in range(held)] + [tiles(2000 + i, True) for i in range(held)]
    labels = np.array([0] * held + [1] * held)
    aurocs = {}
    for sigma in (4.0, 2.0, 1.0):
        model.config = model.config.replace(sigma=sigma)
        scores = np.array([inspector.assess(f).score for f in probes])
        aurocs[f"sigma={sigma:g}"] = float(image_auroc(scores, labels))
    return {"learned_frames": learn, "held_out": {"normal": held, "defect": held}, "image_auroc": aurocs}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def write_markdown(result: dict[str, Any], path: Path) -> None:
    """The table of both runs and the commands."""
    lines = [
        "# Tiles for large frames: 1920x1080, defects of 10-20 px",
        "",
        f"Stream `{SOURCE}`, {result['frames']} frames, empty state, one torch thread, {result['platform']}.",
        "",
        "| input | prequential image AUROC | after warm-up | anomalies | updates | run time (s) | p50 frame (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in result["cases"]:
        auroc, after = _fmt(case["prequential_auroc"]), _fmt(case["prequential_auroc_after_warmup"])
        total = case["latency_ms"].get("total", {}).get("p50", float("nan"))
        lines.append(
            f"| {case['name']} | {auroc} | {after} | {case['anomalies']} | {case['updates']} | "
            f"{case['seconds']:.0f} | {total:.0f} |"
        )
    lines += ["", "Commands:", ""]
    lines += [f"    {case['command']}" for case in result["cases"]]
    lines += ["", f"Target: tiled >= 0.95: {'met' if result['target_met'] else 'missed'}.", ""]
    if "stationary" in result:
        st = result["stationary"]
        lines += [
            f"Without the stream's drift (`--stationary`): after {st['learned_frames']} normal frames learned, the "
            f"state fixed, {st['held_out']['normal']} held-out normal and {st['held_out']['defect']} defective "
            "frames, tiles 256x256 overlap 32: image AUROC "
            + ", ".join(f"{v:.3f} ({k})" for k, v in st["image_auroc"].items())
            + ".",
            "",
        ]
    if result.get("notes"):
        lines += [result["notes"], ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "torch"))
    parser.add_argument("--tile", default="256x256")
    parser.add_argument("--overlap", default="32")
    parser.add_argument(
        "--magnified",
        default="512",
        help="model input of the third run, the same tiles magnified (512: each 256x256 tile 2x); 0: no such run",
    )
    parser.add_argument("--only", choices=("squashed", "tiled", "magnified"), default=None, help="run one case only")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--stationary", action="store_true", help="only add the check without drift (see above)")
    parser.add_argument("--config", default=None, metavar="JSON", help="ModelConfig fields for both runs")
    parser.add_argument("--append", action="store_true", help="add these cases to an existing tile-check.json")
    args = parser.parse_args()
    if args.stationary:
        path = args.out / "tile-check.json"
        result = json.loads(path.read_text())
        result["stationary"] = stationary_check(args.backend)
        path.write_text(json.dumps(result, indent=2) + "\n")
        write_markdown(result, args.out / "tile-check.md")
        print((args.out / "tile-check.md").read_text())
        return
    tiled = ["--tile", args.tile, "--overlap", args.overlap]
    cases = {  # key: (name, extra arguments)
        "squashed": ("squashed 256x256", []),
        "tiled": (f"tiles {args.tile} overlap {args.overlap}", tiled),
    }
    if args.magnified not in ("0", ""):
        name = f"tiles {args.tile} overlap {args.overlap} into {args.magnified}"
        cases["magnified"] = (name, [*tiled, "--size", args.magnified])
    if args.config:
        suffix = ", " + ", ".join(f"{k}={v}" for k, v in json.loads(args.config).items())
        cases = {key: (name + suffix, [*extra, "--config", args.config]) for key, (name, extra) in cases.items()}
    results = []
    with tempfile.TemporaryDirectory(prefix="lemo-tile-check-") as tmp:
        for key, (name, extra) in cases.items():
            if args.only and key != args.only:
                continue
            work = Path(tmp) / key
            work.mkdir()
            results.append(run_case(name, extra, args.frames, args.backend, work))
            print(json.dumps({k: v for k, v in results[-1].items() if k != "latency_ms"}), flush=True)
    previous: dict[str, Any] = {}
    if args.append:
        previous = json.loads((args.out / "tile-check.json").read_text())
        results = previous["cases"] + results
    tiled = [c for c in results if c["name"].startswith("tiles")]
    result = {
        "source": SOURCE,
        "frames": args.frames,
        "platform": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs (shared)",
        "cases": results,
        "target_met": any((c["prequential_auroc"] or 0.0) >= 0.95 for c in tiled),
    }
    if "stationary" in previous:
        result["stationary"] = previous["stationary"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tile-check.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, args.out / "tile-check.md")
    print((args.out / "tile-check.md").read_text())


if __name__ == "__main__":
    main()
