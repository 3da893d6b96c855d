"""Report pieces: PNG plots (ROC curves, few-shot curve, image/map/mask grid) and markdown tables.

matplotlib is imported inside the functions and drawn through its Agg canvas on a bare ``Figure``:
no pyplot state, no GUI backend, no global backend switch, so it is safe in threads and servers and
stays off the inference path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lemo_edge.errors import InputError, describe

MAX_CURVE_POINTS = 4000  # longer ROC curves are thinned before drawing (the shape is unchanged at plot size)


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _png(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"path: expected a .png file, got {str(path)!r}")
    return path


def _save(fig: Any, path: Path, tight: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
        fig.savefig(path, dpi=110, format="png")
    else:
        fig.savefig(path, dpi=110, format="png", bbox_inches="tight", pad_inches=0.1)
    return path


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if x.size <= MAX_CURVE_POINTS:
        return x, y
    keep = np.unique(np.r_[np.linspace(0, x.size - 1, MAX_CURVE_POINTS).astype(np.int64), x.size - 1])
    return x[keep], y[keep]


def plot_roc(
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: str | Path, title: str = "Image-level ROC"
) -> Path:
    """Draw one ROC curve per method into a PNG.

    Args:
        curves: ``{name: (fpr, tpr, auc)}`` with ``fpr``, ``tpr`` ``(P,) float`` of equal length
            (e.g. from :func:`lemo_edge.metrics.roc_curve`) and ``auc`` shown in the legend.
        path: ``.png`` file to write (parent folders are created).
        title: figure title.

    Returns:
        ``path``.

    Raises:
        InputError: no curves, a curve whose fpr and tpr differ in length, or a path not ending in .png.
    """
    path = _png(path)
    if not curves:
        raise InputError("plot_roc: expected at least one curve, got none")
    fig = _figure(5, 5)
    ax = fig.add_subplot()
    for name, (fpr, tpr, auc) in curves.items():
        x, y = np.asarray(fpr, dtype=np.float64).ravel(), np.asarray(tpr, dtype=np.float64).ravel()
        if x.shape != y.shape:
            raise InputError(f"plot_roc: {name}: expected fpr and tpr of one length, got {x.size} and {y.size}")
        x, y = _thin(x, y)
        ax.plot(x, y, label=f"{name} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_fewshot(
    checkpoints: Sequence[int], series: dict[str, Sequence[float | None]], path: str | Path, ylabel: str = "AUROC"
) -> Path:
    """Draw metrics against the number of images seen (log2 x axis) into a PNG.

    Args:
        checkpoints: ``(C,)`` positive image counts, e.g. ``[1, 2, 4, 8, 16, 24]``.
        series: ``{name: (C,) values}``; NaN or None leaves a gap; a series with no value at all is left out.
        path: ``.png`` file to write.
        ylabel: y-axis label.

    Returns:
        ``path``.

    Raises:
        InputError: no checkpoints or series, a checkpoint < 1, or a series of another length.
    """
    path = _png(path)
    x = np.asarray(checkpoints, dtype=np.float64)
    if x.ndim != 1 or x.size == 0 or not series:
        raise InputError(f"plot_fewshot: expected checkpoints (C,) and at least one series, got {describe(x)}")
    if (x < 1).any():
        raise InputError(f"plot_fewshot: expected checkpoints >= 1 (images seen), got {x.min():g}")
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    for name, values in series.items():
        y = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
        if y.shape != x.shape:
            raise InputError(f"plot_fewshot: {name}: expected {x.size} values (one per checkpoint), got {y.size}")
        if np.isnan(y).all():
            continue
        ax.plot(x, y, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [f"{int(v)}" for v in x])
    ax.set(xlabel="normal images seen", ylabel=ylabel, title="Few-shot curve (online protocol)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_grid(
    images: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None],
    titles: Sequence[str],
    path: str | Path,
    vmax: float | None = None,
) -> Path:
    """Draw one column per sample, rows: image, anomaly-map overlay, true-defect contour.

    All maps share one colour scale, from the smallest map value to ``vmax``.

    Args:
        images: ``(H, W, 3) uint8`` RGB each.
        maps: ``(h, w) float`` each; resized (bilinear) to its image's size when different.
        masks: ``(H, W)`` {0, 1} each, or None (no annotation).
        titles: one per column.
        path: ``.png`` file to write.
        vmax: top of the colour scale (e.g. the decision threshold); default: max over all maps.

    Returns:
        ``path``.

    Raises:
        InputError: no images, lists of different lengths, or an image, map or mask of the wrong shape.
    """
    import cv2

    path = _png(path)
    n = len(images)
    if n == 0:
        raise InputError("plot_grid: expected at least one image, got none")
    if not len(maps) == len(masks) == len(titles) == n:
        raise InputError(
            f"plot_grid: expected as many maps, masks and titles as images ({n}), "
            f"got {len(maps)}, {len(masks)} and {len(titles)}"
        )
    resized = []
    for i, (image, amap, mask) in enumerate(zip(images, maps, masks, strict=True)):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"plot_grid: image {i}: expected (H, W, 3) uint8, got {describe(image)}")
        amap = np.asarray(amap, dtype=np.float32)
        if amap.ndim != 2:
            raise InputError(f"plot_grid: map {i}: expected (H, W) float, got {describe(amap)}")
        if mask is not None and np.shape(mask) != image.shape[:2]:
            raise InputError(f"plot_grid: mask {i}: expected {image.shape[:2]} like its image, got {np.shape(mask)}")
        if amap.shape != image.shape[:2]:
            amap = cv2.resize(amap, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
        resized.append(amap)
    lo = float(min(np.min(m) for m in resized))
    hi = float(vmax) if vmax is not None and math.isfinite(vmax) else float(max(np.max(m) for m in resized))
    hi = max(hi, lo + 1e-6)
    fig = _figure(2.2 * n + 0.8, 6.8)
    axes = fig.subplots(3, n, squeeze=False)
    shown = None
    for col, (image, amap, mask, title) in enumerate(zip(images, resized, masks, titles, strict=True)):
        axes[0, col].imshow(image)
        axes[0, col].set_title(title, fontsize=7)
        axes[1, col].imshow(image)
        shown = axes[1, col].imshow(amap, cmap="jet", alpha=0.5, vmin=lo, vmax=hi)
        axes[2, col].imshow(image)
        if mask is not None and np.any(mask):
            axes[2, col].contour(np.asarray(mask, dtype=np.float32), levels=[0.5], colors="lime", linewidths=1)
        elif mask is None:
            axes[2, col].set_title("no mask", fontsize=7)
        for row in range(3):
            axes[row, col].axis("off")
    axes[1, 0].set_title("anomaly map", fontsize=7)
    axes[2, 0].set_title("true defect (contour)", fontsize=7)
    fig.colorbar(shown, ax=list(axes[1, :]), fraction=0.02, pad=0.01)
    return _save(fig, path, tight=False)  # tight_layout does not handle the shared colour bar


NOT_AVAILABLE = "n/a"
"""How a metric that cannot be computed (None, e.g. pixel metrics without masks) is written in tables and lines."""


def format_metric(value: float | None, spec: str = ".3f") -> str:
    """A metric as text: ``format(value, spec)``, or :data:`NOT_AVAILABLE` for None or NaN.

    Args:
        value: the metric, or None when not available.
        spec: format spec of a number.

    Returns:
        e.g. ``"0.912"`` or ``"n/a"``.
    """
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return NOT_AVAILABLE
    return format(float(value), spec)


def _cell(value: Any, floatfmt: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        text = format(float(value), floatfmt)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], floatfmt: str = ".3f") -> str:
    """A GitHub markdown table of ``rows`` restricted to ``columns``.

    Floats are formatted with ``floatfmt``, other values with ``str``; missing keys and None give an
    empty cell; ``|`` in a value is escaped.

    Args:
        rows: one dict per table row.
        columns: the column keys, in order (also the header).
        floatfmt: format spec of float cells.

    Returns:
        The table, lines joined by ``\\n``, without a trailing newline.

    Raises:
        InputError: no columns.
    """
    if not columns:
        raise InputError("markdown_table: expected at least one column, got none")
    lines = [
        "| " + " | ".join(_cell(c, floatfmt) for c in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c), floatfmt) for c in columns) + " |")
    return "\n".join(lines)
