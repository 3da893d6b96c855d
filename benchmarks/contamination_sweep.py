"""Held-out accuracy and patch-level contamination against the share of defects in the stream.

Usage:
    python benchmarks/contamination_sweep.py ../shared/data/magnetic_tile --out benchmarks/results/contamination-sweep

For each defect fraction F (``--fractions``, default 0, 0.02, 0.05, 0.1, 0.24) it runs the mixed protocol
of ``lemo-edge eval --protocol mixed --defect-fraction F`` (the same held-out set for every F) for:

- ``default``: the default configuration;
- ``coverage``: the insertion rule before the pending pool (``admission="coverage"``: every accepted image's
  least-covered patches enter at once);
- ``oracle``: the coverage memory learning exactly the normal images (labels; a bound, not a method);
- ``patchcore``: PatchCore fitted offline on the same contaminated stream (10k k-center bank, scored as
  PatchCore scores).

Features are encoded once and shared by every run. Writes ``OUT.json`` (every result), ``OUT.md`` (the table)
and ``OUT.png`` (held-out image and pixel AUROC and ``defect_patch_learned`` against F); progress on stderr.
To use both cores, run parts side by side (``--methods default,coverage --out A`` and ``--methods
oracle,patchcore --out B``) and combine them: ``--combine A.json B.json --out OUT``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as lemo_edge.runtime.main does; set before torch is imported

from tqdm import tqdm  # noqa: E402

from lemo_edge.baselines import patchcore_bank  # noqa: E402
from lemo_edge.config import ModelConfig  # noqa: E402
from lemo_edge.datasets import open_dataset  # noqa: E402
from lemo_edge.evaluate import Encoded, Evaluator, compute_metrics, score_patchcore  # noqa: E402
from lemo_edge.report import markdown_table  # noqa: E402
from lemo_edge.runtime.eval_cli import make_extractor  # noqa: E402
from lemo_edge.utils import json_safe  # noqa: E402

METHODS: dict[str, dict[str, Any]] = {
    "default": {},
    "coverage": {"admission": "coverage"},
    "oracle": {"admission": "coverage", "extra": {"oracle": True}},
}
COLUMNS = [
    "method",
    "F",
    "stream_defects",
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "defect_accept_rate",
    "defect_patch_learned",
    "memory_defect_share",
    "seconds",
]
PATCHCORE_BANK = 10_000


def patchcore_on_stream(stream: Encoded, test: Encoded, sigma: float, seed: int) -> dict[str, Any]:
    """PatchCore fitted offline on every streamed image (defects included), scored on the held-out set."""
    patches = stream.features.float().permute(0, 2, 3, 1).reshape(-1, stream.features.shape[1])
    bank = patchcore_bank(patches, PATCHCORE_BANK, seed=seed)
    maps, scores = score_patchcore(bank, test.features, test.masks.shape[-1], sigma)
    return compute_metrics(maps, scores, test)


def run(dataset: str, fractions: list[float], methods: list[str], seed: int) -> list[dict[str, Any]]:
    data = open_dataset(dataset, seed=seed)
    base = ModelConfig()
    extract, spec = make_extractor("torch", base)
    cache: dict[tuple[Any, ...], Encoded] = {}
    rows: list[dict[str, Any]] = []
    jobs = [(f, m) for f in fractions for m in methods]
    for fraction, method in tqdm(jobs, desc="sweep", unit="run", disable=None):
        t = time.perf_counter()
        config = base.replace(**METHODS.get(method, {}))
        evaluator = Evaluator(
            config, data, extract, spec, seed=seed, baselines=(), fewshot=False, cache=cache, defect_fraction=fraction
        )
        if method == "patchcore":
            stream, test, _ = evaluator.mixed_stream()
            result = patchcore_on_stream(stream, test, base.sigma, seed)
            result["stream_defects"] = int(stream.labels.sum())
        else:
            result = evaluator.run("mixed")
        row = {key: result.get(key) for key in COLUMNS if key in result}
        row.update(method=method, F=fraction, seconds=time.perf_counter() - t)
        rows.append(row)
        print(json.dumps(json_safe(row)), file=sys.stderr, flush=True)
    return rows


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("image_auroc", "held-out image AUROC"), ("pixel_auroc", "held-out pixel AUROC")]
    panels.append(("defect_patch_learned", "defect patches learned"))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for method in dict.fromkeys(r["method"] for r in rows):
            points = [(r["F"], r[key]) for r in rows if r["method"] == method and r.get(key) is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=method)
        ax.set_xlabel("defect fraction of the stream (F)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="dataset with defect masks (MVTec category folder or manifest)")
    parser.add_argument("--out", default="benchmarks/results/contamination-sweep", help="output path without suffix")
    parser.add_argument("--fractions", default="0,0.02,0.05,0.1,0.24", help="comma-separated defect fractions")
    parser.add_argument("--methods", default="default,coverage,oracle,patchcore", help="comma-separated methods")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--combine", nargs="+", metavar="JSON", help="write OUT from these parts' rows (no runs)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    fractions = [float(f) for f in args.fractions.split(",")]
    methods = [m.strip() for m in args.methods.split(",")]
    unknown = sorted(set(methods) - set(METHODS) - {"patchcore"})
    if unknown:
        parser.error(f"--methods: unknown {unknown}; valid: {[*METHODS, 'patchcore']}")
    command = "python benchmarks/contamination_sweep.py " + " ".join(sys.argv[1:])
    if args.combine:
        parts = [json.loads(Path(p).read_text()) for p in args.combine]
        rows = [row for part in parts for row in part["rows"]]
        command = " && ".join(part["command"] for part in parts) + " && " + command
    else:
        rows = run(args.dataset, fractions, methods, args.seed)
    order = list(dict.fromkeys(row["method"] for row in rows))
    rows.sort(key=lambda row: (order.index(row["method"]), row["F"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(json_safe({"command": command, "rows": rows}), indent=2))
    table = markdown_table(rows, COLUMNS)
    out.with_suffix(".md").write_text(f"`{command}`\n\n{table}\n\n![sweep]({out.name}.png)\n")
    plot(rows, out.with_suffix(".png"), f"{Path(args.dataset).name}: mixed protocol, seed {args.seed}")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
