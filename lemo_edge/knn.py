"""Nearest-memory search through a maintained library (usearch HNSW or faiss IVF), following the memory.

:class:`MemoryIndex` answers what :func:`lemo_edge.scoring.nearest_memory` answers for the memory's current
items, and follows the memory as it changes: :meth:`~MemoryIndex.add` for rows appended at the end,
:meth:`~MemoryIndex.remove` for rows a merge drops (the survivors keep their order and move up, as the
memory compacts them), :meth:`~MemoryIndex.reset` for items replaced wholesale (a loaded state). Each row
carries a label in the library; ``label -> row`` is kept in an array and rebuilt from ``row -> label`` after a
removal (``O(n)`` numpy, microseconds), so :attr:`Nearest.index` is always the row in the current items.
Labels of removed rows are reused, so the label space stays as large as the memory.

Backends (chosen by ``benchmarks/knn_study.py``, results in ``benchmarks/results/knn-study.md``):

* ``"faiss-ivf"``: an inverted file of ``n / 128`` cells, ``probe = 8`` searched (``pip install
  faiss-cpu``): at K = 8192 about as fast as usearch (15 ms per 1024-patch frame, one core) at a higher
  recall@3 (0.991 against 0.985), and the cheapest to follow (1.5 ms per frame with 64 rows added and the
  merges, against 6-9 ms); wheels for manylinux2014 x86_64 and aarch64. The cells are trained when the index
  is built and again whenever the items have doubled since (the memory's warm-up), on that frame.
* ``"usearch"``: an HNSW graph (``pip install usearch``); recall@3 0.985 (``ef=16``) / 0.999 (``ef=32``).
* ``"exact"``: the torch reference on the index's own copy of the items (identical results).
* ``"bf16"``: no library: a bfloat16 matrix product (the items centred on their mean, so that the rounding is
  relative to the spread of the items, not to their offset) shortlists ``shortlist`` (8) items per query, whose
  exact float32 distances then rank them. On a CPU with bfloat16 dot products (AVX512-BF16, AMX, Arm BF16) the
  product costs a third of the float32 one; recall@3 on Magnetic Tile embeddings 1.0000 (a true neighbour is
  missed only when bfloat16 rounding pushes it below 8 others). Without such a CPU it searches exactly (logged).
* ``"int8"``: the same with an int8 product (``torch._int_mm``; items scaled once when the copy is built, queries
  per search, both centred): on a CPU with int8 dot products (AVX-VNNI, AVX512-VNNI, AMX, Arm dotprod) the
  product costs half the bfloat16 one. Without such a CPU it searches exactly (logged).

The shortlist backends split a frame's query blocks among ``threads`` Python threads, each running its torch ops
on one core (:mod:`lemo_edge.workers`).

An approximate search can only over-estimate a distance (a nearer item may be missed), never under-estimate.
Below ``min_items`` items every backend searches exactly. All tensors are CPU ``float32``.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from lemo_edge.errors import InputError, MissingDependencyError, describe
from lemo_edge.scoring import Nearest, nearest_memory, smallest_k
from lemo_edge.workers import default_workers, run_slices

log = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("faiss-ivf", "usearch", "exact", "bf16", "int8")
SHORTLISTS: dict[str, tuple[torch.dtype, frozenset[str]]] = {  # product dtype, CPU flags that make it fast
    "bf16": (torch.bfloat16, frozenset({"avx512_bf16", "amx_bf16", "bf16"})),
    "int8": (torch.int8, frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"})),
}
# int8: each item's ranking bias is folded into the product as FOLD extra int8 columns (see _fold_bias): one
# remainder column (query side 1) and FOLD - 1 columns of whole 127s (query side 127), so biases spanning up to
# 126 + (FOLD - 1) * 127 * 127 units need no separate pass over the (N, K) products.
FOLD = 8
FOLD_SPAN = 126 + (FOLD - 1) * 127 * 127
HINTS: dict[str, tuple[str, str, str]] = {  # backend: (module, distribution, pip hint)
    "faiss-ivf": ("faiss", "faiss-cpu", "pip install 'lemo-edge[knn]'  (or: pip install faiss-cpu)"),
    "usearch": ("usearch.index", "usearch", "pip install 'lemo-edge[knn]'  (or: pip install usearch)"),
}


@dataclass(frozen=True)
class BackendStatus:
    """Whether a search backend can run here: ``name``, ``available``, ``reason`` (version or why not)."""

    name: str
    available: bool
    reason: str


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (x86 ``flags``, Arm ``Features``); empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            text = f.read(65536)
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[-1].split())
    return flags


def shortlist_in_hardware(backend: str) -> bool:
    """Whether this CPU has the dot products of a shortlist backend (``bf16``: x86 ``avx512_bf16``/``amx_bf16``,
    Arm ``bf16``; ``int8``: AVX-VNNI, AVX512-VNNI, AMX, Arm dotprod; and ``torch._int_mm``); Linux only."""
    if not cpu_flags() & SHORTLISTS[backend][1]:
        return False
    return backend != "int8" or _int_mm_runs()


@functools.lru_cache(maxsize=1)
def _int_mm_runs() -> bool:
    """Whether ``torch._int_mm`` (a private torch API) exists and multiplies int8 matrices on the CPU here."""
    try:
        ones = torch.ones(32, 8, dtype=torch.int8)
        return int(torch._int_mm(ones, ones.T)[0, 0]) == 8
    except (AttributeError, RuntimeError, TypeError):
        return False


def bf16_matmul_in_hardware() -> bool:
    """Whether this CPU has bfloat16 dot products (x86 ``avx512_bf16``/``amx_bf16``, Arm ``bf16``); Linux only."""
    return shortlist_in_hardware("bf16")


def _import(backend: str) -> Any:
    module, package, hint = HINTS[backend]
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as err:
        raise MissingDependencyError(package, hint, str(err)) from err


def backend_status() -> list[BackendStatus]:
    """Availability of every backend (for ``lemo-edge info``)."""
    from lemo_edge.utils import versions

    out = []
    for name in BACKENDS:
        if name == "exact":
            out.append(BackendStatus(name, True, "torch reference"))
            continue
        if name in SHORTLISTS:
            fast = shortlist_in_hardware(name)
            workers = default_workers()
            split = f", a frame's queries split among {workers} worker threads" if workers > 1 else ""
            out.append(BackendStatus(name, True, f"torch, {name} shortlist{split}" if fast else
                                     f"torch; no {name} dot products in this CPU: searches exactly"))  # fmt: skip
            continue
        try:
            _import(name)
        except MissingDependencyError as err:
            out.append(BackendStatus(name, False, str(err)))
            continue
        package = HINTS[name][1]
        out.append(BackendStatus(name, True, f"{package} {versions((package,)).get(package) or '?'}"))
    return out


def available_backends() -> list[str]:
    """Names of the backends that import here."""
    return [s.name for s in backend_status() if s.available]


class _Library(Protocol):
    """What a library wrapper does with labels (``(m,) int64``) and rows (``(m, D) float32`` numpy)."""

    def add(self, rows: np.ndarray, labels: np.ndarray) -> None: ...

    def remove(self, labels: np.ndarray) -> None: ...

    def search(self, z: np.ndarray, k: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
        """Squared distances ``(N, k) float32`` and labels ``(N, k) int64`` (``-1`` where none was found)."""
        ...


class _Usearch:
    def __init__(self, dim: int, ef: int, connectivity: int, expansion_add: int) -> None:
        index_module = _import("usearch")
        self.index = index_module.Index(
            ndim=dim, metric="l2sq", dtype="f32", connectivity=connectivity, expansion_add=expansion_add,
            expansion_search=ef,
        )  # fmt: skip

    def add(self, rows: np.ndarray, labels: np.ndarray) -> None:
        self.index.add(labels.astype(np.uint64), rows, threads=1 if rows.shape[0] <= 256 else 0)

    def remove(self, labels: np.ndarray) -> None:
        self.index.remove(labels.astype(np.uint64))

    def search(self, z: np.ndarray, k: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
        found = self.index.search(z, k, threads=threads)
        labels = found.keys.astype(np.int64).reshape(z.shape[0], k)
        dist = found.distances.astype(np.float32).reshape(z.shape[0], k)
        missing = np.arange(k)[None, :] >= np.asarray(found.counts).reshape(-1, 1)
        labels[missing] = -1
        return dist, labels


class _FaissIvf:
    def __init__(self, dim: int, items: np.ndarray, probe: int, cell_items: int, seed: int) -> None:
        faiss = self.faiss = _import("faiss-ivf")
        lists = max(1, items.shape[0] // cell_items)
        quantizer = faiss.IndexFlatL2(dim)
        self.index = faiss.IndexIVFFlat(quantizer, dim, lists)
        self.index.cp.seed = seed
        self.index.train(items)
        self.index.nprobe = min(probe, lists)

    def add(self, rows: np.ndarray, labels: np.ndarray) -> None:
        self.index.add_with_ids(rows, labels)

    def remove(self, labels: np.ndarray) -> None:
        self.index.remove_ids(labels)

    def search(self, z: np.ndarray, k: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
        self.faiss.omp_set_num_threads(threads)
        dist, labels = self.index.search(z, k)
        return dist.astype(np.float32), labels.astype(np.int64)


class MemoryIndex:
    """Nearest-item search over a memory's rows that follows its appends and merges.

    Args:
        backend: one of :data:`BACKENDS` (``"exact"``: the torch reference).
        ef: HNSW search breadth (usearch): higher is slower and nearer to exact.
        probe: IVF cells searched per query (faiss-ivf).
        cell_items: IVF items per cell at :meth:`reset` (faiss-ivf).
        connectivity: HNSW graph degree (usearch).
        expansion_add: HNSW construction breadth (usearch).
        shortlist: items per query shortlisted by the low-precision product and ranked exactly (bf16, int8).
        min_items: below this many items searches are exact (an index is built when the memory reaches it).
        threads: search threads. faiss-ivf and usearch: their own threads (``None``: 1, 0: the library's
            default). bf16 and int8: the query blocks of a search are split among this many Python threads, each
            running torch on one core, when torch itself runs one intra-op thread (``None`` or 0: the physical
            cores, at most 4). The memory's one frame is one batch of N queries.
        seed: seed of the IVF training.

    Raises:
        InputError: an unknown backend or a non-positive parameter.
        MissingDependencyError: the backend's library is not installed (the message has the pip hint).
    """

    def __init__(
        self,
        backend: str = "faiss-ivf",
        *,
        ef: int = 16,
        probe: int = 8,
        cell_items: int = 128,
        connectivity: int = 16,
        expansion_add: int = 80,
        min_items: int = 2048,
        threads: int | None = None,
        seed: int = 0,
        shortlist: int = 4,
    ) -> None:
        if backend not in BACKENDS:
            raise InputError(f"knn backend: expected one of {list(BACKENDS)}, got {backend!r}")
        checked = (("ef", ef), ("probe", probe), ("cell_items", cell_items), ("connectivity", connectivity),
                   ("shortlist", shortlist))  # fmt: skip
        for name, value in checked:
            if value < 1:
                raise InputError(f"knn {name}: expected >= 1, got {value}")
        if backend in HINTS:
            _import(backend)  # fail now, with the hint, not at the first search
        self.shortlist = shortlist
        self._shortlisted = backend in SHORTLISTS and shortlist_in_hardware(backend)
        if backend in SHORTLISTS and not self._shortlisted:
            log.info("knn: no %s dot products in this CPU: the %s backend searches exactly", backend, backend)
        self._dtype = SHORTLISTS[backend][0] if backend in SHORTLISTS else torch.bfloat16
        self._low = torch.zeros(0, 0, dtype=self._dtype)  # shortlists: (rows - centre) [/ scale], the bank's order
        self._low_sq = torch.zeros(0)  # shortlists: squared norms of the centred float32 rows
        self._scale = 1.0  # int8: the items' quantisation step
        self._centre = torch.zeros(0)
        self.backend = backend
        self.ef, self.probe, self.cell_items = ef, probe, cell_items
        self.connectivity, self.expansion_add = connectivity, expansion_add
        self.min_items = max(0, min_items)
        if threads is not None and threads < 0:
            raise InputError(f"knn threads: expected >= 0 or None, got {threads}")
        if backend in SHORTLISTS:
            self.threads = threads or default_workers()
        else:
            self.threads = 1 if threads is None else threads
        self.seed = seed
        self._bank = torch.zeros(0, 0)
        self._n = 0
        self._labels = np.zeros(0, np.int64)  # row -> label
        self._rows = np.zeros(0, np.int64)  # label -> row (-1: free)
        self._free: list[int] = []
        self._library: _Library | None = None
        self._built_at = 0  # items when the library was built (faiss-ivf retrains after they doubled)

    @property
    def exact(self) -> bool:
        """Whether searches are the exact reference (the ``exact`` backend, or fewer than ``min_items`` items)."""
        if self.backend in SHORTLISTS:
            return not self._shortlisted or self._centre.numel() == 0
        return self.backend == "exact" or self._library is None

    @property
    def items(self) -> torch.Tensor:
        """``(n, D) float32 cpu``: the rows the index holds, in the memory's order (a view)."""
        return self._bank[: self._n]

    def __len__(self) -> int:
        return self._n

    @property
    def search_threads(self) -> int:
        """Threads a search runs on now: :attr:`threads` worker slices for a shortlist backend that shortlists while
        torch runs one intra-op thread (:func:`lemo_edge.workers.run_slices`), else torch's own threads."""
        splits = self.backend in SHORTLISTS and not self.exact and torch.get_num_threads() == 1
        return self.threads if splits else torch.get_num_threads()

    # ---------------------------------------------------------------------------------- following

    def reset(self, items: torch.Tensor) -> None:
        """Replace everything by ``items (n, D) float cpu`` (a loaded state, or a rebuild)."""
        rows = self._check_rows(items, "reset", any_dim=True)
        self._bank = torch.zeros(max(16, rows.shape[0]), rows.shape[1])
        self._n = 0
        self._labels = np.zeros(0, np.int64)
        self._rows = np.zeros(0, np.int64)
        self._free = []
        self._library = None
        self._built_at = 0
        self._centre = torch.zeros(0)
        self._append(rows)
        self._maybe_build()

    def add(self, rows: torch.Tensor) -> None:
        """Rows ``(m, D) float cpu`` appended at the end of the memory's items."""
        rows = self._check_rows(rows, "add", any_dim=self._bank.shape[1] == 0)
        if self._bank.shape[1] == 0:
            self._bank = torch.zeros(max(16, rows.shape[0]), rows.shape[1])
        labels = self._append(rows)
        if self.backend in SHORTLISTS:  # no library: the low-precision copy follows in _append once it exists
            if not self._centre.numel():
                self._maybe_build()
            return
        if self._library is not None and not (self.backend == "faiss-ivf" and self._n >= 2 * self._built_at):
            self._library.add(rows.numpy(), labels)
        else:
            self._maybe_build()

    def remove(self, indices: torch.Tensor | np.ndarray | list[int]) -> None:
        """Rows the memory dropped, by their current row index; the others keep their order and move up.

        Raises:
            InputError: an index outside ``[0, n)`` or given twice.
        """
        drop = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64).ravel()
        if drop.size == 0:
            return
        if drop.min() < 0 or drop.max() >= self._n or np.unique(drop).size != drop.size:
            raise InputError(f"remove: expected distinct row indices in [0, {self._n}), got {drop.size} indices "
                             f"in [{drop.min()}, {drop.max()}]")  # fmt: skip
        keep = np.ones(self._n, bool)
        keep[drop] = False
        gone = self._labels[drop]
        if self._library is not None:
            self._library.remove(gone)
        kept = torch.from_numpy(np.flatnonzero(keep))
        m = int(kept.numel())
        self._bank[:m] = self._bank[: self._n].index_select(0, kept)
        if self._centre.numel():
            self._low[:m] = self._low[: self._n].index_select(0, kept)
            self._low_sq[:m] = self._low_sq[: self._n].index_select(0, kept)
        self._n = m
        self._labels = self._labels[keep]
        self._rows[gone] = -1
        self._rows[self._labels] = np.arange(m)
        self._free.extend(gone.tolist())

    def _append(self, rows: torch.Tensor) -> np.ndarray:
        m = rows.shape[0]
        if self._n + m > self._bank.shape[0]:
            grown = torch.zeros(max(2 * self._bank.shape[0], self._n + m), self._bank.shape[1])
            grown[: self._n] = self._bank[: self._n]
            self._bank = grown
        self._bank[self._n : self._n + m] = rows
        if self._centre.numel():
            self._write_low(self._n, rows)
        reused = [self._free.pop() for _ in range(min(m, len(self._free)))]
        start = self._rows.shape[0]
        labels = np.concatenate([np.asarray(reused, np.int64), np.arange(start, start + m - len(reused))])
        if m > len(reused):
            self._rows = np.concatenate([self._rows, np.full(m - len(reused), -1, np.int64)])
        self._rows[labels] = np.arange(self._n, self._n + m)
        self._labels = np.concatenate([self._labels, labels])
        self._n += m
        return labels

    def _write_low(self, start: int, rows: torch.Tensor) -> None:
        """The low-precision copy of ``rows`` at row ``start`` (grown with the bank; int8 rows have :data:`FOLD`
        more columns, written per search by :meth:`_fold_bias`)."""
        if self._low.shape[0] < self._bank.shape[0]:
            width = self._bank.shape[1] + (FOLD if self._dtype == torch.int8 else 0)
            grown = torch.zeros(self._bank.shape[0], width, dtype=self._dtype)
            grown[: self._low.shape[0]] = self._low
            grown_sq = torch.zeros(self._bank.shape[0])
            grown_sq[: self._low_sq.shape[0]] = self._low_sq
            self._low, self._low_sq = grown, grown_sq
        centred = rows - self._centre
        self._low[start : start + rows.shape[0], : rows.shape[1]] = _quantise(centred, self._scale, self._dtype)
        self._low_sq[start : start + rows.shape[0]] = (centred * centred).sum(1)

    def _maybe_build(self) -> None:
        if self.backend == "exact" or self._n < max(1, self.min_items):
            return
        if self.backend in SHORTLISTS:
            if self._shortlisted:
                self._centre = self.items.mean(0)
                # int8: later items beyond the range saturate (only their shortlist rank can suffer)
                self._scale = max(float((self.items - self._centre).abs().max()), 1e-12) / 127.0
                width = self._bank.shape[1] + (FOLD if self._dtype == torch.int8 else 0)
                self._low = torch.zeros(0, width, dtype=self._dtype)
                self._low_sq = torch.zeros(0)
                self._write_low(0, self.items)
            return
        items = self.items.numpy()
        library: _Library
        if self.backend == "usearch":
            library = _Usearch(items.shape[1], self.ef, self.connectivity, self.expansion_add)
        else:
            library = _FaissIvf(items.shape[1], items, self.probe, self.cell_items, self.seed)
        library.add(np.ascontiguousarray(items), self._labels)
        self._library = library
        self._built_at = self._n
        log.info("knn: %s index built over %d items", self.backend, self._n)

    def _check_rows(self, rows: torch.Tensor, what: str, any_dim: bool = False) -> torch.Tensor:
        dim = self._bank.shape[1]
        if (
            not isinstance(rows, torch.Tensor)
            or rows.ndim != 2
            or not rows.is_floating_point()
            or rows.device.type != "cpu"
            or (not any_dim and rows.shape[1] != dim)
        ):
            expected = "(m, D)" if any_dim else f"(m, {dim})"
            raise InputError(f"{what}: expected {expected} float cpu rows, got {describe(rows)}")
        return rows.detach().float().contiguous()

    # ---------------------------------------------------------------------------------- searching

    def search_topk(self, z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` nearest rows of each query: distances ``(N, k) float32`` (ascending) and rows ``(N, k) int64``.

        Args:
            z: ``(N, D) float cpu`` queries.
            k: ``1 <= k <= n``.

        Raises:
            InputError: wrong shapes, a non-CPU tensor, or ``k`` outside ``[1, n]``.
        """
        if z.ndim != 2 or z.shape[1] != self._bank.shape[1] or z.device.type != "cpu" or not z.is_floating_point():
            raise InputError(f"knn search: expected z (N, {self._bank.shape[1]}) float cpu, got {describe(z)}")
        if not 1 <= k <= self._n:
            raise InputError(f"knn search: expected 1 <= k <= n={self._n}, got k={k}")
        if self.exact:
            return _exact_topk(z, self.items, k)
        if self.backend in SHORTLISTS:
            return self._shortlist_topk(z.detach().float(), k)
        assert self._library is not None  # not exact: built
        queries = np.ascontiguousarray(z.detach().float().numpy())
        d2, labels = self._library.search(queries, k, self.threads)
        rows = self._rows[np.clip(labels, 0, max(self._rows.shape[0] - 1, 0))]
        missing = (labels < 0) | (rows < 0)
        rows[missing] = -1
        dist = np.sqrt(np.maximum(d2, 0.0), dtype=np.float32)
        dist[missing] = math.inf
        out_d, out_r = torch.from_numpy(dist), torch.from_numpy(rows)
        bad = torch.from_numpy(missing.any(1))
        if bool(bad.any()):  # the graph returned fewer than k: those queries are searched exactly
            which = torch.nonzero(bad).flatten()
            out_d[which], out_r[which] = _exact_topk(z[which], self.items, k)
        return out_d, out_r

    def _shortlist_topk(self, z: torch.Tensor, k: int, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``max(k, shortlist)`` nearest rows by the low-precision product, ranked by exact float32 distances."""
        n, dim = self._n, self._bank.shape[1]
        low, low_sq = self._low[:n, :dim], self._low_sq[:n]
        short = min(n, max(k, self.shortlist))
        centred = z - self._centre
        bias = low_sq
        folded = False
        if self._dtype == torch.int8:
            step = max(float(centred.abs().max()), 1e-12) / 127.0  # the queries' quantisation step
            queries = _quantise(centred, step, torch.int8)
            # ranked in units of the int8 product: ||m - c||^2 / (2 step scale) - q.m, all in int32 (no float pass;
            # the bias rounds by half a unit, less its smallest value, which ranks the same)
            unit = 2.0 * step * self._scale
            exact_bias = (low_sq.double() / unit).round_()
            exact_bias -= exact_bias.min()
            folded = float(exact_bias.max()) <= FOLD_SPAN
            if folded:  # bias - q.m as one product: [-q, 1, 127, ...] . [m, remainder, 127s, ...]
                self._fold_bias(exact_bias.to(torch.int32))
                low = self._low[:n]
                side = torch.full((z.shape[0], FOLD), 127, dtype=torch.int8)
                side[:, 0] = 1
                queries = torch.cat([queries.neg_(), side], dim=1)
            else:  # clamped far below int32 overflow
                bias = exact_bias.clamp_(max=2**30).to(torch.int32)
        else:
            queries = centred.to(self._dtype)
        # ||m - c||^2 - 2 (z - c).(m - c): the squared distance less ||z - c||^2, which ranks the same
        blocks = [(start, min(start + block, z.shape[0])) for start in range(0, z.shape[0], block)]
        done = run_slices(
            lambda first, last: self._search_blocks(queries, z, low, bias, folded, blocks[first:last], k, short),
            len(blocks),
            self.threads,
        )
        return torch.cat([d for d, _ in done]), torch.cat([r for _, r in done])

    def _search_blocks(
        self,
        queries: torch.Tensor,
        z: torch.Tensor,
        low: torch.Tensor,
        bias: torch.Tensor,
        folded: bool,
        blocks: list[tuple[int, int]],
        k: int,
        short: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_shortlist_topk` for the queries of ``blocks`` (``[(start, stop)]`` rows of ``z``): the low-precision
        product of each block, its ``short`` best items, ranked by their exact float32 distances."""
        bank, dim = self._bank[: self._n], self._bank.shape[1]
        dists, rows = [], []
        for start, stop in blocks:
            part = queries[start:stop]
            if self._dtype == torch.int8:
                partial = torch._int_mm(part, low.T)
                if not folded:
                    torch.sub(bias, partial, out=partial)
            else:
                partial = torch.add(bias, torch.mm(part, low.T).float(), alpha=-2.0)
            _, candidates = smallest_k(partial, short)  # (b, short)
            # exact distances (m - z)^2 of the shortlisted rows, no cancellation
            diff = bank.index_select(0, candidates.flatten()).view(stop - start, short, dim)
            diff.sub_(z[start:stop, None, :])
            best, order = torch.linalg.vecdot(diff, diff).topk(k, dim=1, largest=False)
            dists.append(best.sqrt_())
            rows.append(candidates.gather(1, order))
        return torch.cat(dists), torch.cat(rows)

    def _fold_bias(self, bias: torch.Tensor) -> None:
        """Write ``bias (n,) int32`` (0 <= bias <= :data:`FOLD_SPAN`) into the int8 rows' :data:`FOLD` extra columns:
        the remainder ``bias mod 127``, then ``bias // 127`` in whole columns of up to 127 each, so that the row's
        product with ``[.., 1, 127, 127, ...]`` adds exactly ``bias``."""
        n, dim = self._n, self._bank.shape[1]
        whole = torch.div(bias, 127, rounding_mode="floor")
        extra = self._low[:n, dim:]
        extra[:, 0] = (bias - 127 * whole).to(torch.int8)
        steps = 127 * torch.arange(FOLD - 1, dtype=torch.int32)
        extra[:, 1:] = (whole[:, None] - steps).clamp_(0, 127).to(torch.int8)

    def search(self, z: torch.Tensor, k: int) -> Nearest:
        """What :func:`lemo_edge.scoring.nearest_memory` returns for ``z (N, D) float cpu`` and the current items.

        ``score`` is the mean of the ``k`` nearest distances, ``index`` the nearest item's row, ``distance`` the
        nearest distance when ``k > 1``. The exact backend calls the reference itself (identical results).
        """
        if self.exact:
            if z.ndim != 2 or z.shape[1] != self._bank.shape[1] or z.device.type != "cpu":
                raise InputError(f"knn search: expected z (N, {self._bank.shape[1]}) float cpu, got {describe(z)}")
            if not 1 <= k <= self._n:
                raise InputError(f"knn search: expected 1 <= k <= n={self._n}, got k={k}")
            return nearest_memory(z, self.items, k)
        dist, rows = self.search_topk(z, k)
        return Nearest(dist.mean(1), rows[:, 0].contiguous(), dist[:, 0].contiguous() if k > 1 else None)

    __call__ = search

    def recall_at_k(self, z: torch.Tensor, items: torch.Tensor | None = None, k: int = 3) -> float:
        """Mean fraction of each query's ``k`` exact nearest rows of ``items`` (default: the index's own) found.

        Args:
            z: ``(N, D) float cpu`` queries.
            items: ``(n, D) float cpu`` the memory's items, which the index is meant to follow (a mismatch in
                rows shows as a low recall); ``None``: the index's copy.
            k: neighbours compared.
        """
        items = self.items if items is None else items
        if items.shape != self.items.shape:
            raise InputError(f"recall_at_k: expected items {tuple(self.items.shape)}, got {describe(items)}")
        _, truth = _exact_topk(z, items.float(), k)
        _, found = self.search_topk(z, k)
        hits = (found[:, :, None] == truth[:, None, :]).any(2).sum(1)
        return float(hits.double().mean() / k)


def _quantise(rows: torch.Tensor, step: float, dtype: torch.dtype) -> torch.Tensor:
    """``rows`` in ``dtype``: bfloat16 by rounding; int8 as ``round(rows / step)`` clamped to [-127, 127]."""
    if dtype != torch.int8:
        return rows.to(dtype)
    return (rows / step).round_().clamp_(-127, 127).to(torch.int8)


def _exact_topk(z: torch.Tensor, items: torch.Tensor, k: int, block: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``k`` nearest distances ``(N, k) float32`` and rows ``(N, k) int64`` (the reference's arithmetic)."""
    z = z.float()
    items_sq = (items * items).sum(1)
    dists, rows = [], []
    for start in range(0, z.shape[0], block):
        part = z[start : start + block]
        partial = torch.addmm(items_sq, part, items.T, alpha=-2.0)
        best, order = smallest_k(partial, k)
        dists.append((best + (part * part).sum(1, keepdim=True)).clamp_min_(0.0).sqrt_())
        rows.append(order)
    return torch.cat(dists), torch.cat(rows)


def create_memory_index(backend: str = "faiss-ivf", **options: Any) -> MemoryIndex:
    """A :class:`MemoryIndex` for ``backend`` (see its arguments for ``options``)."""
    return MemoryIndex(backend, **options)
