"""Nearest-memory search libraries side by side: faiss, usearch, hnswlib against the torch reference.

For memories of K = 8192, 16384, 32768 items of real embeddings (``D = 152``, the default backbone on
Magnetic Tile when ``../shared/data/magnetic_tile`` is there, else on the synthetic stream), built by the
project's own :class:`~lemo_edge.memory.CoresetMemory` (a k-center coreset, the hardest case for an
approximate index: its items are spread out), and query frames of ``N = 1024`` patches (one 256 x 256 frame)
from held-out good and defective images, ``k = 3``, with one and two threads, this measures:

* search time per frame (p50, p99), in the same run as :func:`lemo_edge.scoring.nearest_memory`;
* recall@3 against the exact search, and the relative error of the score (mean of the 3 distances);
* the cost of following the memory: per frame 64 rows added, and on the frames where the memory is over
  K a merge removing rows down to 99% of K (rows compact, as the memory does); or a full rebuild;
* recall after that stream of updates (an HNSW graph degrades with deletions).

Run: ``.venv/bin/python benchmarks/knn_study.py [--quick] [--out benchmarks/results]`` (about 10 minutes on
2 cores; ``--quick`` one K). Writes ``knn-study.json`` and ``knn-study.md``. Embeddings and memories are
cached under ``$TMPDIR/lemo-knn-cache`` (never in the repository).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
from tqdm import tqdm

from lemo_edge.scoring import nearest_memory

log = logging.getLogger("knn_study")
REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "magnetic_tile"
CACHE = Path(tempfile.gettempdir()) / "lemo-knn-cache"
KS = (8192, 16384, 32768)
TOP = 3
ADD_PER_FRAME = 64
SLACK = 0.01


# ----------------------------------------------------------------------------------------------- data


def _embeddings() -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """``(source, train (T, 1024, D), query (Q, 1024, D), stream (S, 1024, D))`` float32 embeddings."""
    from lemo_edge.backbone import create_feature_extractor
    from lemo_edge.datasets import open_dataset, resize_sample
    from lemo_edge.evaluate import image_tensor

    source = (
        str(DATA)
        if (DATA / "split.json").is_file()
        else "synthetic://?seed=0&size=256&n_train=400&n_test_good=12&n_test_defect=12"
    )
    name = "magnetic_tile" if source == str(DATA) else "synthetic"
    path = CACHE / f"emb-{name}.npz"
    if path.is_file():
        data = np.load(path)
        return name, data["train"], data["query"], data["stream"]
    splits = open_dataset(source)
    extractor = create_feature_extractor().eval()
    train_items = splits.train_good[:400]
    stream_items = splits.train_good[400:460] if len(splits.train_good) > 400 else splits.train_good[-60:]
    query_items = splits.test_good[:12] + splits.test_defect[:12]

    def encode(items: list[Any], desc: str) -> np.ndarray:
        out = []
        for item in tqdm(items, desc=desc, unit="img"):
            sample = resize_sample(item.load(), (256, 256))
            with torch.inference_mode():
                f = extractor(image_tensor(sample.image))[0]
            out.append(f.flatten(1).T.contiguous().numpy().astype(np.float32))
        return np.stack(out)

    train, query, stream = encode(train_items, "train"), encode(query_items, "query"), encode(stream_items, "stream")
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, train=train, query=query, stream=stream)
    return name, train, query, stream


def _memory(name: str, train: np.ndarray, capacity: int) -> np.ndarray:
    """Items ``(n <= K, D)`` of a coreset memory of capacity K fed the train images in order."""
    from lemo_edge.memory import CoresetMemory

    path = CACHE / f"mem-{name}-{capacity}.npy"
    if path.is_file():
        return np.load(path)
    memory = CoresetMemory(capacity, train.shape[2], insert_per_image=max(64, capacity // 256), slack=SLACK)
    for image in tqdm(train, desc=f"memory K={capacity}", unit="img"):
        z = torch.from_numpy(image)
        if memory.items.shape[0]:
            nearest = nearest_memory(z, memory.items, 1).score
        else:
            nearest = torch.full((z.shape[0],), float("inf"))
        memory.insert(z, nearest)
    items = memory.items.numpy().copy()
    np.save(path, items)
    return items


# ------------------------------------------------------------------------------------------ candidates


@dataclass
class Candidate:
    """One library configuration: build, search (squared L2, labels), add with labels, remove labels."""

    name: str
    build: Callable[[np.ndarray, np.ndarray], Any]
    search: Callable[[Any, np.ndarray, int, int], tuple[np.ndarray, np.ndarray]]
    add: Callable[[Any, np.ndarray, np.ndarray], Any] | None = None
    remove: Callable[[Any, np.ndarray], Any] | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _faiss_candidates(d: int, capacity: int) -> list[Candidate]:
    import faiss

    def flat(items: np.ndarray, labels: np.ndarray) -> Any:
        index = faiss.IndexIDMap2(faiss.IndexFlatL2(d))
        index.add_with_ids(items, labels)
        return index

    def ivf(nlist: int, nprobe: int, sq: bool = False) -> Callable[[np.ndarray, np.ndarray], Any]:
        def build(items: np.ndarray, labels: np.ndarray) -> Any:
            quantizer = faiss.IndexFlatL2(d)
            if sq:
                index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit)
            else:
                index = faiss.IndexIVFFlat(quantizer, d, nlist)
            index.cp.seed = 0
            index.train(items)
            index.add_with_ids(items, labels)
            index.nprobe = nprobe
            return index

        return build

    def hnsw(m: int, ef: int) -> Callable[[np.ndarray, np.ndarray], Any]:
        def build(items: np.ndarray, labels: np.ndarray) -> Any:
            index = faiss.IndexHNSWFlat(d, m)
            index.hnsw.efConstruction = 80
            index.hnsw.efSearch = ef
            index.add(items)
            return _Relabel(index, labels)

        return build

    def search(index: Any, q: np.ndarray, k: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
        faiss.omp_set_num_threads(threads)
        return index.search(q, k)

    def add(index: Any, rows: np.ndarray, labels: np.ndarray) -> None:
        index.add_with_ids(rows, labels)

    def remove(index: Any, labels: np.ndarray) -> None:
        index.remove_ids(labels)

    nlist = max(16, capacity // 128)
    out = [Candidate("faiss-flat", flat, search, add, remove, "exact, BLAS")]
    for nprobe in (4, 8, 16):
        out.append(Candidate(f"faiss-ivf{nlist}-p{nprobe}", ivf(nlist, nprobe), search, add, remove))
    out.append(Candidate(f"faiss-ivfsq8-{nlist}-p8", ivf(nlist, 8, sq=True), search, add, remove, "8-bit scalar"))
    for ef in (16, 32):
        out.append(Candidate(f"faiss-hnsw16-ef{ef}", hnsw(16, ef), _relabel_search(search), note="no removal"))
    return out


class _Relabel:
    """A faiss index without ids (HNSW) and the labels of its rows."""

    def __init__(self, index: Any, labels: np.ndarray) -> None:
        self.index, self.labels = index, labels


def _relabel_search(
    search: Callable[..., tuple[np.ndarray, np.ndarray]],
) -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    def run(index: _Relabel, q: np.ndarray, k: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
        dist, rows = search(index.index, q, k, threads)
        return dist, index.labels[rows]

    return run


def _hnswlib_candidates(d: int, capacity: int) -> list[Candidate]:
    import hnswlib

    def build_for(m: int, ef: int) -> Callable[[np.ndarray, np.ndarray], Any]:
        def build(items: np.ndarray, labels: np.ndarray) -> Any:
            index = hnswlib.Index(space="l2", dim=d)
            index.init_index(
                max_elements=2 * capacity, ef_construction=80, M=m, random_seed=0, allow_replace_deleted=True
            )
            index.set_num_threads(2)
            index.add_items(items, labels)
            index.set_ef(ef)
            return index

        return build

    def search(index: Any, q: np.ndarray, k: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
        rows, dist = index.knn_query(q, k=k, num_threads=threads)
        return dist, rows.astype(np.int64)

    def add(index: Any, rows: np.ndarray, labels: np.ndarray) -> None:
        index.add_items(rows, labels, num_threads=1, replace_deleted=True)

    def remove(index: Any, labels: np.ndarray) -> None:
        for label in labels.tolist():
            index.mark_deleted(label)

    return [Candidate(f"hnswlib-M16-ef{ef}", build_for(16, ef), search, add, remove) for ef in (16, 32, 64)]


def _usearch_candidates(d: int, capacity: int) -> list[Candidate]:
    from usearch.index import Index

    def build_for(dtype: str, ef: int) -> Callable[[np.ndarray, np.ndarray], Any]:
        def build(items: np.ndarray, labels: np.ndarray) -> Any:
            index = Index(ndim=d, metric="l2sq", dtype=dtype, connectivity=16, expansion_add=80, expansion_search=ef)
            index.add(labels, items, threads=2)
            return index

        return build

    def search(index: Any, q: np.ndarray, k: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
        found = index.search(q, k, threads=threads)
        return found.distances, found.keys.astype(np.int64)

    def add(index: Any, rows: np.ndarray, labels: np.ndarray) -> None:
        index.add(labels, rows, threads=1)

    def remove(index: Any, labels: np.ndarray) -> None:
        index.remove(labels)

    out = [Candidate(f"usearch-f32-ef{ef}", build_for("f32", ef), search, add, remove) for ef in (16, 32, 64)]
    out.append(Candidate("usearch-f16-ef32", build_for("f16", 32), search, add, remove, "half-precision vectors"))
    return out


def candidates(d: int, capacity: int) -> list[Candidate]:
    """Every configuration whose library imports."""
    out: list[Candidate] = []
    for make in (_faiss_candidates, _hnswlib_candidates, _usearch_candidates):
        try:
            out += make(d, capacity)
        except ImportError as err:
            log.warning("skipped %s: %s", make.__name__, err)
    try:
        from lemo_edge.knn import available_backends, create_memory_index
    except ImportError:
        return out
    for backend in available_backends():
        out.append(_class_candidate(backend, create_memory_index))
    return out


def _class_candidate(backend: str, factory: Callable[..., Any]) -> Candidate:
    """The project's own :class:`lemo_edge.knn` index (what the memory will run), labels = rows."""

    def build(items: np.ndarray, labels: np.ndarray) -> Any:
        index = factory(backend)
        index.reset(torch.from_numpy(items))
        return index

    def search(index: Any, q: np.ndarray, k: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
        index.threads = threads
        dist, rows = index.search_topk(torch.from_numpy(q), k)
        return dist.numpy() ** 2, rows.numpy()

    return Candidate(f"lemo_edge.knn:{backend}", build, search, note="rows, not labels", extra={"rows": True})


# -------------------------------------------------------------------------------------------- measure


def _pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "mean": float(a.mean())}


def _exact(items: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    t_items = torch.from_numpy(items)
    dist, rows = [], []
    for frame in query:
        d2 = torch.cdist(torch.from_numpy(frame).double(), t_items.double())
        best = d2.topk(k, dim=1, largest=False)
        dist.append(best.values.float().numpy())
        rows.append(best.indices.numpy())
    return np.stack(dist), np.stack(rows)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / k (``(Q, k)`` row ids)."""
    hits = (found[:, :, None] == truth[:, None, :]).any(2).sum(1)
    return float(hits.mean() / truth.shape[1])


def measure_search(
    cand: Candidate,
    index: Any,
    query: np.ndarray,
    truth: tuple[np.ndarray, np.ndarray],
    threads: int,
    labels: np.ndarray,
) -> dict[str, Any]:
    """Time per frame, recall@k and the score's relative error of one built index."""
    cand.search(index, query[0], TOP, threads)  # warm-up
    times, found_rows, scores = [], [], []
    to_row = np.full(int(labels.max()) + 1, -1, np.int64)
    to_row[labels] = np.arange(labels.shape[0])
    for frame in query:
        t0 = time.perf_counter()
        dist, lab = cand.search(index, frame, TOP, threads)
        times.append((time.perf_counter() - t0) * 1e3)
        rows = lab if cand.extra.get("rows") else to_row[np.clip(lab, 0, to_row.shape[0] - 1)]
        rows = np.where(lab < 0, -1, rows)
        found_rows.append(rows)
        scores.append(np.sqrt(np.maximum(dist, 0.0)).mean(1))
    true_score = truth[0].mean(2)
    found = np.concatenate(found_rows)
    score = np.concatenate(scores)
    rel = np.abs(score - true_score.reshape(-1)) / np.maximum(true_score.reshape(-1), 1e-6)
    return {
        "search_ms": _pct(times),
        "recall_at_3": _recall(found, truth[1].reshape(-1, TOP)),
        "recall_at_1": float((found[:, 0] == truth[1].reshape(-1, TOP)[:, 0]).mean()),
        "score_rel_err_mean": float(rel.mean()),
        "score_rel_err_p99": float(np.percentile(rel, 99)),
        "image_score_rel_err": float(
            np.abs(score.reshape(len(query), -1).max(1) - true_score.max(1)).mean() / true_score.max(1).mean()
        ),
    }


def measure_follow(
    cand: Candidate, items: np.ndarray, stream: np.ndarray, capacity: int, frames: int, rng: np.random.Generator
) -> tuple[dict[str, Any], Any, np.ndarray, np.ndarray]:
    """Per-frame cost of following the memory (adds, merges) with label bookkeeping; returns the final index."""
    labels = np.arange(items.shape[0], dtype=np.int64)
    index = cand.build(items, labels)
    current, row_labels = items.copy(), labels.copy()
    next_label = int(labels.shape[0])
    add_ms, merge_ms, frame_ms = [], [], []
    for f in range(frames):
        rows = stream[f % len(stream)][rng.choice(stream.shape[1], ADD_PER_FRAME, replace=False)]
        rows = rows + rng.normal(0, 1e-3, rows.shape).astype(np.float32)
        t0 = time.perf_counter()
        # fresh labels (hnswlib's replace_deleted loses a reused label's mapping)
        new = np.arange(next_label, next_label + ADD_PER_FRAME, dtype=np.int64)
        next_label += ADD_PER_FRAME
        if cand.add is not None:
            cand.add(index, rows, new)
        current = np.concatenate([current, rows])
        row_labels = np.concatenate([row_labels, new])
        t1 = time.perf_counter()
        add_ms.append((t1 - t0) * 1e3)
        spent = t1 - t0
        if current.shape[0] > capacity:
            target = int(capacity * (1 - SLACK))
            drop = np.sort(rng.choice(current.shape[0], current.shape[0] - target, replace=False))
            t2 = time.perf_counter()
            gone = row_labels[drop]
            if cand.remove is not None:
                cand.remove(index, gone)
            keep = np.ones(current.shape[0], bool)
            keep[drop] = False
            current, row_labels = current[keep], row_labels[keep]
            t3 = time.perf_counter()
            merge_ms.append((t3 - t2) * 1e3)
            spent += t3 - t2
        frame_ms.append(spent * 1e3)
    return (
        {
            "add_ms": _pct(add_ms),
            "merge_ms": _pct(merge_ms) if merge_ms else None,
            "frame_ms": _pct(frame_ms),
            "merges": len(merge_ms),
            "frames": frames,
        },
        index,
        current,
        row_labels,
    )


def run(quick: bool, out: Path, threads_list: tuple[int, ...]) -> dict[str, Any]:
    source, train, query, stream = _embeddings()
    d = train.shape[2]
    rng = np.random.default_rng(0)
    results: dict[str, Any] = {
        "source": source,
        "D": d,
        "N": int(query.shape[1]),
        "k": TOP,
        "query_frames": int(len(query)),
        "add_per_frame": ADD_PER_FRAME,
        "merge_slack": SLACK,
        "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "versions": _versions(),
        "by_K": {},
    }
    for capacity in KS[:1] if quick else KS:
        items = np.ascontiguousarray(_memory(source, train, capacity))
        truth = _exact(items, query, TOP)
        row: dict[str, Any] = {"items": int(items.shape[0]), "methods": {}}
        t_items = torch.from_numpy(items)
        for threads in threads_list:
            torch.set_num_threads(threads)
            nearest_memory(torch.from_numpy(query[0]), t_items, TOP)
            times, rows, scores = [], [], []
            for frame in query:
                t0 = time.perf_counter()
                res = nearest_memory(torch.from_numpy(frame), t_items, TOP)
                times.append((time.perf_counter() - t0) * 1e3)
                rows.append(res.index.numpy())
                scores.append(res.score.numpy())
            ref = {
                "search_ms": _pct(times),
                "recall_at_1": float((np.concatenate(rows) == truth[1][:, :, 0].reshape(-1)).mean()),
            }
            row["methods"].setdefault("torch-reference", {})[f"threads{threads}"] = ref
            log.info("K=%d t=%d torch %.1f ms", capacity, threads, ref["search_ms"]["p50"])
        torch.set_num_threads(max(threads_list))
        for cand in candidates(d, capacity):
            entry: dict[str, Any] = {"note": cand.note}
            labels = np.arange(items.shape[0], dtype=np.int64)
            builds = []
            for _ in range(2 if not quick else 1):
                t0 = time.perf_counter()
                index = cand.build(items, labels)
                builds.append((time.perf_counter() - t0) * 1e3)
            entry["rebuild_ms"] = {"best": min(builds), "runs": builds}
            for threads in threads_list:
                entry[f"threads{threads}"] = measure_search(cand, index, query, truth, threads, labels)
            if cand.add is not None and cand.remove is not None:
                frames = 40 if quick else 80
                follow, index, current, row_labels = measure_follow(cand, items, stream, capacity, frames, rng)
                entry["follow"] = follow
                truth_after = _exact(current, query[:6], TOP)
                entry["after_follow"] = measure_search(
                    cand, index, query[:6], truth_after, max(threads_list), row_labels
                )
            log.info(
                "K=%d %s: %.1f ms (t=1) recall@3 %.4f rebuild %.0f ms",
                capacity,
                cand.name,
                entry[f"threads{threads_list[0]}"]["search_ms"]["p50"],
                entry[f"threads{threads_list[0]}"]["recall_at_3"],
                entry["rebuild_ms"]["best"],
            )
            row["methods"][cand.name] = entry
            del index
        results["by_K"][str(capacity)] = row
    out.mkdir(parents=True, exist_ok=True)
    (out / "knn-study.json").write_text(json.dumps(results, indent=1))
    (out / "knn-study.md").write_text(markdown(results, threads_list))
    return results


def _versions() -> dict[str, str | None]:
    from lemo_edge.utils import versions

    return dict(versions(("torch", "faiss-cpu", "usearch", "hnswlib", "numpy")))


def markdown(results: dict[str, Any], threads_list: tuple[int, ...]) -> str:
    """The study's tables: one row per method and K."""
    lines = [
        "# Nearest-memory search libraries (benchmarks/knn_study.py)",
        "",
        f"Embeddings: {results['source']} (D = {results['D']}), {results['query_frames']} query frames of "
        f"N = {results['N']} patches, k = {results['k']}; memories built by CoresetMemory. Machine: "
        f"{results['machine']}, {results['cores']} cores. Versions: "
        + ", ".join(f"{k} {v}" for k, v in results["versions"].items())
        + ".",
        "",
        "Search: ms per frame, p50 (p99). Follow: per-frame cost of adding 64 rows and, on merge frames, "
        "removing rows down to 99% of K (p50 / p99 over all frames; merge p50). Recall after: recall@3 after "
        "that stream of updates.",
        "",
        "| K | method | "
        + " | ".join(f"search {t}T" for t in threads_list)
        + " | recall@3 | score err (mean / p99) | rebuild ms | follow ms p50 / p99 (merge p50) | recall after |",
        "|---|---|" + "---|" * (len(threads_list) + 5),
    ]
    for capacity, row in results["by_K"].items():
        for name, entry in row["methods"].items():
            cells = []
            for t in threads_list:
                s = entry[f"threads{t}"]["search_ms"]
                cells.append(f"{s['p50']:.1f} ({s['p99']:.1f})")
            first = entry[f"threads{threads_list[0]}"]
            recall = f"{first.get('recall_at_3', 1.0):.4f}" if "recall_at_3" in first else "exact"
            err = (
                f"{first['score_rel_err_mean']:.1e} / {first['score_rel_err_p99']:.1e}"
                if "score_rel_err_mean" in first
                else "0"
            )
            rebuild = f"{entry['rebuild_ms']['best']:.0f}" if "rebuild_ms" in entry else "-"
            follow, after = "-", "-"
            if "follow" in entry:
                f = entry["follow"]
                merge = f" ({f['merge_ms']['p50']:.1f})" if f["merge_ms"] else ""
                follow = f"{f['frame_ms']['p50']:.2f} / {f['frame_ms']['p99']:.2f}{merge}"
                after = f"{entry['after_follow']['recall_at_3']:.4f}"
            lines.append(
                f"| {capacity} ({row['items']}) | {name} | "
                + " | ".join(cells)
                + f" | {recall} | {err} | {rebuild} | {follow} | {after} |"
            )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------- other stages


def _old_anomaly_map(patch: torch.Tensor, size: tuple[int, int], sigma: float = 4.0) -> torch.Tensor:
    """The map before the per-axis matrices (interpolate, pad, two convolutions), for the comparison."""
    import torch.nn.functional as F

    from lemo_edge.scoring import gaussian_kernel1d

    maps = F.interpolate(patch[:, None].float(), size=size, mode="bilinear", align_corners=False)
    kernel = gaussian_kernel1d(sigma)
    pad = kernel.numel() // 2
    maps = F.pad(maps, (pad, pad, pad, pad), mode="replicate")
    return F.conv2d(F.conv2d(maps, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))[:, 0]


def _timed(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return _pct(times)


def run_stages(out: Path) -> dict[str, Any]:
    """The map (before/after), the preprocess resize, and torch threads 1 vs 2 beside a capture thread."""
    import threading

    import cv2

    from lemo_edge.scoring import anomaly_map

    source, train, query, _ = _embeddings()
    items = torch.from_numpy(np.ascontiguousarray(_memory(source, train, KS[0])))
    z = torch.from_numpy(query[0])
    patch = torch.rand(1, 32, 32)
    rng = np.random.default_rng(0)
    frames = {name: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for name, (h, w) in
              {"1920x1080": (1080, 1920), "640x480": (480, 640)}.items()}  # fmt: skip
    res: dict[str, Any] = {"map": {}, "resize": {}, "threads": {}}
    torch.set_num_threads(1)
    for name, fn in (("interpolate+conv (before)", lambda: _old_anomaly_map(patch, (256, 256))),
                     ("per-axis matrices (after)", lambda: anomaly_map(patch, (256, 256)))):  # fmt: skip
        res["map"][name] = _timed(fn, 200)
    cv2.setNumThreads(1)
    for name, frame in frames.items():
        res["resize"][f"{name} INTER_AREA"] = _timed(
            lambda f=frame: cv2.resize(f, (256, 256), interpolation=cv2.INTER_AREA), 100
        )
        res["resize"][f"{name} INTER_LINEAR"] = _timed(
            lambda f=frame: cv2.resize(f, (256, 256), interpolation=cv2.INTER_LINEAR), 100
        )

    stop = threading.Event()

    def capture() -> None:  # a 30 fps camera: convert and resize a 1080p frame every 33 ms
        frame = frames["1920x1080"]
        while not stop.is_set():
            t0 = time.perf_counter()
            cv2.resize(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), (256, 256), interpolation=cv2.INTER_AREA)
            stop.wait(max(0.0, 1 / 30 - (time.perf_counter() - t0)))

    for load in ("idle", "capture thread at 30 fps"):
        thread = None
        if load != "idle":
            stop.clear()
            thread = threading.Thread(target=capture, daemon=True)
            thread.start()
        times: dict[tuple[int, str], list[float]] = {}
        for _ in range(8):  # interleaved rounds: the load of a shared machine hits both counts alike
            for threads in (1, 2):
                torch.set_num_threads(threads)
                for stage, fn in (("score K=8192 (nearest_memory)", lambda: nearest_memory(z, items, TOP)),
                                  ("map", lambda: anomaly_map(patch, (256, 256)))):  # fmt: skip
                    fn()
                    for _ in range(4):
                        t0 = time.perf_counter()
                        fn()
                        times.setdefault((threads, stage), []).append((time.perf_counter() - t0) * 1e3)
        for (threads, stage), values in times.items():
            res["threads"].setdefault(f"{load}, torch {threads} thread(s)", {})[stage] = _pct(values)
        if thread is not None:
            stop.set()
            thread.join()
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "knn-stages.json").write_text(json.dumps(res, indent=1))
    lines = [
        "# Map, resize and threads (benchmarks/knn_study.py --stages)",
        "",
        "| stage | p50 ms | p99 ms |",
        "|---|---|---|",
    ]
    for group in ("map", "resize"):
        for name, t in res[group].items():
            lines.append(f"| {group}: {name} | {t['p50']:.3f} | {t['p99']:.3f} |")
    for name, stagesd in res["threads"].items():
        for stage, t in stagesd.items():
            lines.append(f"| {name}: {stage} | {t['p50']:.3f} | {t['p99']:.3f} |")
    (out / "knn-stages.md").write_text("\n".join(lines) + "\n")
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="K = 8192 only, fewer frames")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--stages", action="store_true", help="only the map, resize and threading measurements")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.stages:
        run_stages(args.out)
        return
    run(args.quick, args.out, tuple(int(t) for t in args.threads.split(",")))


if __name__ == "__main__":
    main()
