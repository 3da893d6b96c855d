"""Report pieces: PNG plots (ROC curves, few-shot curve, image/map/mask grid) and markdown tables.

matplotlib is imported inside the functions (Agg backend), keeping it off the inference path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: str | Path) -> Path:
    """One ROC curve per method: ``{name: (fpr, tpr, auc)}`` -> PNG at ``path``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title="Image-level ROC", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_fewshot(checkpoints: Sequence[int], series: dict[str, Sequence[float]], path: str | Path) -> Path:
    """Metric after 1, 2, 4, ... images (log2 x axis): ``{metric: values}`` -> PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in series.items():
        ax.plot(checkpoints, values, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="normal images seen", ylabel="AUROC", title="Few-shot curve (online protocol)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_grid(images: Sequence[np.ndarray], maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None],
              titles: Sequence[str], path: str | Path, vmax: float | None = None) -> Path:
    """Columns of image / anomaly-map overlay / mask contour.

    Args:
        images: ``(H, W, 3) uint8`` RGB each.
        maps: ``(H, W) float`` each, same size as the image.
        masks: ``(H, W)`` {0, 1} or ``None`` (normal image).
        titles: one per column.
        vmax: top of the colour scale (e.g. the decision threshold); default: max over all maps.
    """
    plt = _pyplot()
    n = len(images)
    if n == 0:
        raise ValueError("plot_grid: expected at least one image, got none")
    lo = float(min(np.min(m) for m in maps))
    hi = float(vmax if vmax is not None else max(np.max(m) for m in maps))
    fig, axes = plt.subplots(2, n, figsize=(2.4 * n, 5), squeeze=False)
    for col, (image, amap, mask, title) in enumerate(zip(images, maps, masks, titles, strict=True)):
        axes[0, col].imshow(image)
        axes[0, col].set_title(title, fontsize=7)
        axes[1, col].imshow(image)
        axes[1, col].imshow(amap, cmap="jet", alpha=0.5, vmin=lo, vmax=max(hi, lo + 1e-6))
        if mask is not None and mask.any():
            axes[1, col].contour(mask, levels=[0.5], colors="white", linewidths=1)
        for row in range(2):
            axes[row, col].axis("off")
    axes[1, 0].set_title("anomaly map (white: true defect)", fontsize=7)
    return _save(fig, path)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub markdown table of ``rows`` restricted to ``columns`` (missing cells empty)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path
