"""Results files of a benchmark run: ``<machine>-<date>.json``, a markdown page and PNG plots."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lemo_edge.runtime.bench.config import TARGET_FRAME_MS, TARGET_LEMO_VS_PATCHCORE, size_text
from lemo_edge.runtime.bench.timing import STAGES
from lemo_edge.utils import json_safe


def results_stem(result: Mapping[str, Any]) -> str:
    """``<machine>-<date>`` of a result (the date the run started, UTC)."""
    return f"{result['machine']}-{str(result['started'])[:10]}"


def write_results(
    result: dict[str, Any], out_dir: str | Path, json_path: str | Path | None = None, plots: bool = True
) -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and the PNG plots into ``out_dir`` (and the JSON to ``json_path``).

    The file paths are recorded in ``result["files"]`` before the JSON is written.

    Returns:
        ``{kind: path}`` of every file written.
    """
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    stem = results_stem(result)
    files: dict[str, Path] = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md"}
    if plots:
        files.update(write_plots(result, out, stem))
    if json_path is not None:
        files["json_copy"] = Path(json_path).expanduser()
    result["files"] = {k: str(v) for k, v in files.items()}
    text = json.dumps(json_safe(result), indent=2, allow_nan=False) + "\n"
    files["json"].write_text(text, encoding="utf-8")
    if json_path is not None:
        files["json_copy"].parent.mkdir(parents=True, exist_ok=True)
        files["json_copy"].write_text(text, encoding="utf-8")
    files["markdown"].write_text(markdown_report(result), encoding="utf-8")
    return files


def _ms(stat: Mapping[str, Any] | None) -> str:
    if not stat:
        return ""
    return f"{stat['p50']:.1f} / {stat['p99']:.1f}"


def markdown_report(result: Mapping[str, Any]) -> str:
    """A markdown page of a result: environment, targets, matrix, ratios, scale and limits tables."""
    from lemo_edge.report import markdown_table

    env = result["environment"]
    gpu = env.get("gpu") or {}
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    load = result.get("load_average") or {}
    t = result["targets"]
    lines = [
        f"# Latency benchmark: {result['machine']} ({str(result['started'])[:10]})",
        "",
        f"CPU {env['cpu_model']}, {env['usable_cpus']} usable CPUs ({env['physical_cores']} physical cores), "
        f"{env['memory_gib']} GiB; GPU: {gpu.get('name', 'none')}; device {env['device']}. {versions}.",
        f"Torch threads {result['threads']['torch']} ({result['threads']['torch_policy']}); onnxruntime intra-op "
        f"threads {result['threads']['onnxruntime_intra_op']}. Load average (1, 5, 15 min) at start "
        f"{load.get('start')}, at end {load.get('end')} (other processes share this machine).",
        f"{'Quick' if result['config']['quick'] else 'Full'} run, {result['wall_s']:.0f} s. Input: "
        f"{result['input']['source']}, {result['input']['source_hw'][0]}x{result['input']['source_hw'][1]}, "
        f"resized per input size. Latencies in ms, p50 / p99 over the recorded frames (warm-up excluded).",
        "",
        "## Targets",
        "",
        f"- One full frame with the online update at {size_text(result['config']['primary_size'])}, "
        f"fastest backend ({t['frame_p50_ms']['backend']}), "
        f"{t['frame_p50_ms']['config']}: **{t['frame_p50_ms']['measured_ms']:.1f} ms p50** "
        f"(target <= {TARGET_FRAME_MS:g} ms: {'met' if t['frame_p50_ms']['met'] else 'not met'}, "
        f"{t['frame_p50_ms']['times_over']:.1f}x the target).",
    ]
    best = t["largest_k_meeting_frame_target"]
    lines.append(
        f"- Largest K meeting {TARGET_FRAME_MS:g} ms: "
        + (f"K={best['k']} top-{best['score_k']} ({best['frame_p50_ms']:.1f} ms)." if best else "none measured.")
    )
    pc = t["lemo_vs_patchcore_frame"]
    if pc["measured"] is not None:
        lines.append(
            f"- LeMO vs PatchCore, per frame at equal backbone: **{pc['measured']:.2f}x** "
            f"(target >= {TARGET_LEMO_VS_PATCHCORE:g}x: {'met' if pc['met'] else 'not met'})."
        )
    scaling = t.get("k_scaling")
    if scaling and scaling["measured"] is not None:
        lines.append(
            f"- Frame at K={scaling['k']} / frame at K={scaling['of_k']} (top-{scaling['score_k']}, one K after the "
            f"other): **{scaling['measured']:.2f}x** (target <= {scaling['target']:g}x: "
            f"{'met' if scaling['met'] else 'not met'})."
        )
    lines += ["", "## Stages (p50 / p99 ms)", ""]
    columns = [
        "backend",
        "scorer",
        "size",
        "batch",
        *STAGES,
        "frame",
        "frame p90",
        "fps",
        "peak host MB",
        "peak dev MB",
    ]
    rows = []
    for e in result["matrix"]:
        row: dict[str, Any] = {k: e[k] for k in ("backend", "scorer", "size", "batch")}
        row.update({s: _ms(e["stages"][s]) for s in STAGES})
        row.update(
            {
                "frame": _ms(e["frame"]),
                "frame p90": e["frame"]["p90"],
                "fps": e["fps"],
                "peak host MB": e["peak_host_mb"],
                "peak dev MB": e["peak_device_mb"],
            }
        )
        rows.append(row)
    lines += [markdown_table(rows, columns, ".1f"), ""]
    lines += ["## Ratios (interleaved, side by side)", ""]
    ratio_rows = [
        {"ratio": name, "value": value, "definition": result["ratios_doc"][name]}
        for name, value in result["ratios"].items()
    ]
    lines += [markdown_table(ratio_rows, ["ratio", "value", "definition"], ".2f"), ""]
    p = result["patchcore"]
    lines += [
        f"PatchCore bank: {p['bank_size']} items ({p['fraction']:g} of a {p['subsample']}-patch random subsample "
        f"of {p['patches_total']} patches from {p['images']} images: {p['source']}); selection: {p['selection']}.",
        "",
        "## Frame vs memory size K (full frame with update, fastest backend)",
        "",
    ]
    k_rows = [
        {
            "K": r["k"],
            "top-k": r["score_k"],
            "items": r["memory_items"],
            "frame p50": r["frame_p50_ms"],
            "frame p99": r["frame_p99_ms"],
            "score p50": r["stages_p50_ms"]["score"],
            "update p50": r["stages_p50_ms"]["update"],
            f"<= {TARGET_FRAME_MS:g} ms": "yes" if r["frame_p50_ms"] <= TARGET_FRAME_MS else "no",
        }
        for r in result["scale"]["frame_vs_k"]
    ]
    k_cols = ["K", "top-k", "items", "frame p50", "frame p99", "score p50", "update p50", f"<= {TARGET_FRAME_MS:g} ms"]
    lines += [markdown_table(k_rows, k_cols, ".1f"), ""]
    lines += ["## Scorer vs K and D (random embeddings, p50 ms)", ""]
    scale_rows: dict[tuple[str, int], dict[str, Any]] = {}
    ks = sorted({r["k"] for r in result["scale"]["k"]})
    for r in result["scale"]["k"]:
        row = scale_rows.setdefault((r["scorer"], r["d"]), {"scorer": r["scorer"], "D": r["d"]})
        row[f"K={r['k']}"] = r["p50_ms"]
    lines += [markdown_table(list(scale_rows.values()), ["scorer", "D", *[f"K={k}" for k in ks]], ".2f"), ""]
    lines += ["## Input size (p50 ms)", ""]
    size_rows: dict[str, dict[str, Any]] = {}
    sizes = sorted({r["size"] for r in result["scale"]["input_size"]})
    for r in result["scale"]["input_size"]:
        size_rows.setdefault(r["component"], {"component": r["component"]})[str(r["size"])] = r["p50_ms"]
    lines += [markdown_table(list(size_rows.values()), ["component", *map(str, sizes)], ".2f"), ""]
    lim = result["limits"]
    lines += [
        "## Limits",
        "",
        f"Measured peaks: matmul {lim['peaks']['matmul_gflops']:.1f} GFLOP/s, memcpy {lim['peaks']['memcpy_gbs']:.1f} "
        f"GB/s. Backbone at {lim['backbone']['size']}: {lim['backbone']['flops'] / 1e9:.3f} GFLOP, "
        f"{lim['backbone']['bytes_activations'] / 2**20:.1f} MiB. Scorer (N={lim['scorer']['n']}, "
        f"K={lim['scorer']['k']}, D={lim['scorer']['d']}): {lim['scorer']['flops'] / 1e9:.3f} GFLOP, "
        f"{lim['scorer']['bytes'] / 2**20:.1f} MiB ({lim['scorer']['bytes_materialised'] / 2**20:.1f} MiB with the "
        "distance matrix).",
        "",
    ]
    lim_rows = []
    for part in ("backbone", "scorer"):
        for name, a in lim[part]["achieved"].items():
            lim_rows.append(
                {
                    "part": part,
                    "by": name,
                    "p50 ms": a["ms"],
                    "GFLOP/s": a["gflops"],
                    "% peak FLOP/s": 100 * a["fraction_of_peak_flops"],
                    "GB/s": a["gbs"],
                    "% peak GB/s": 100 * a["fraction_of_peak_bandwidth"],
                }
            )
    cols = ["part", "by", "p50 ms", "GFLOP/s", "% peak FLOP/s", "GB/s", "% peak GB/s"]
    lines += [markdown_table(lim_rows, cols, ".1f"), ""]
    plots = [v for k, v in result.get("files", {}).items() if str(v).endswith(".png")]
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    return "\n".join(lines)


def write_plots(result: Mapping[str, Any], out_dir: Path, stem: str) -> dict[str, Path]:
    """PNG plots of the scale results (matplotlib Agg on a bare Figure, as :mod:`lemo_edge.report`).

    Returns:
        ``{"plot_k", "plot_d", "plot_size", "plot_update", "plot_stages": path}``.
    """
    from lemo_edge.report import _figure, _save

    scale = result["scale"]
    files: dict[str, Path] = {}

    # scorer vs K, one line per scorer and D
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    series: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for r in scale["k"]:
        series.setdefault((r["scorer"], r["d"]), []).append((r["k"], r["p50_ms"]))
    for (name, d), points in series.items():
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="o", label=f"{name}, D={d}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="memory items K", ylabel="scorer p50 (ms)", title=f"Scorer vs K (N={scale['n_patches']} patches)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    files["plot_k"] = _save(fig, out_dir / f"{stem}-scale-k.png")

    # scorer vs D at one K
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    by_scorer: dict[str, list[tuple[int, float]]] = {}
    k_d = scale["d"][0]["k"] if scale["d"] else None
    for r in scale["d"]:
        by_scorer.setdefault(r["scorer"], []).append((r["d"], r["p50_ms"]))
    for name, points in by_scorer.items():
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="o", label=name)
    ax.set(xlabel="feature channels D", ylabel="scorer p50 (ms)", title=f"Scorer vs D (K={k_d})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    files["plot_d"] = _save(fig, out_dir / f"{stem}-scale-d.png")

    # cost vs input size
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    comps: dict[str, list[tuple[int, float]]] = {}
    for r in scale["input_size"]:
        comps.setdefault(r["component"], []).append((r["size"], r["p50_ms"]))
    for name, points in comps.items():
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_yscale("log")
    ax.set(xlabel="input side (pixels)", ylabel="p50 (ms)", title="Cost vs input size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    files["plot_size"] = _save(fig, out_dir / f"{stem}-scale-size.png")

    # update and full frame vs K
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    for top in sorted({r["score_k"] for r in scale["frame_vs_k"]}, reverse=True):
        rows = sorted((r for r in scale["frame_vs_k"] if r["score_k"] == top), key=lambda r: r["k"])
        ks = [r["k"] for r in rows]
        ax.plot(ks, [r["frame_p50_ms"] for r in rows], marker="o", label=f"frame, top-{top}")
        ax.plot(
            ks, [r["stages_p50_ms"]["update"] for r in rows], marker="s", linestyle="--", label=f"update, top-{top}"
        )
        ax.plot(ks, [r["stages_p50_ms"]["score"] for r in rows], marker="^", linestyle=":", label=f"score, top-{top}")
    ax.axhline(TARGET_FRAME_MS, color="grey", linewidth=1, label=f"target {TARGET_FRAME_MS:g} ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="memory items K", ylabel="p50 (ms)")
    ax.set_title(f"Frame and online update vs K ({scale['backend']})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    files["plot_update"] = _save(fig, out_dir / f"{stem}-update-k.png")

    # stacked stages per matrix entry at batch 1
    entries = [e for e in result["matrix"] if e["batch"] == 1]
    fig = _figure(max(5.0, 1.2 * len(entries) + 2), 4)
    ax = fig.add_subplot()
    labels = [f"{e['backend']}\n{e['scorer']} {e['size']}" for e in entries]
    bottom = np.zeros(len(entries))
    for stage in STAGES:
        values = np.array([e["stages"][stage]["p50"] for e in entries])
        ax.bar(labels, values, bottom=bottom, label=stage)
        bottom += values
    ax.axhline(TARGET_FRAME_MS, color="grey", linewidth=1)
    ax.set(ylabel="p50 (ms)", title="Stages of one frame (batch 1)")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=7)
    files["plot_stages"] = _save(fig, out_dir / f"{stem}-stages.png")
    return files
