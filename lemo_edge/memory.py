"""Bounded memories of normal patch embeddings, learned from the stream.

Two memories share one interface (``items``: the ``(n, D)`` valid rows used for scoring):

* :class:`CoresetMemory` (default): a streaming k-center coreset. Each image inserts its
  least-covered patches (farthest-first) while they lie farther than the coverage radius ``r``
  from every item; when K is exceeded, ``r`` grows and items closer than ``r`` to an older item
  are merged away (the doubling algorithm of Charikar et al., 1997). The memory never exceeds K.
* :class:`LearnedMemory` (the paper's): K free parameters initialised with orthogonal random
  noise, optimised by the contrastive loss, with re-seeding of unused items and the paper's
  refresh (reassign, dissolve, split by 2-means).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from lemo_edge.config import ADMISSIONS
from lemo_edge.errors import InputError, describe
from lemo_edge.knn import MemoryIndex
from lemo_edge.scoring import Nearest, Scorer, nearest_memory, smallest_k, squared_distances
from lemo_edge.workers import default_workers, run_slices


def orthogonal_noise(k: int, d: int, scale: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(k, d) float32`` rows of orthonormal noise times ``scale`` (QR of a Gaussian matrix).

    When ``k > d`` only ``d`` rows can be mutually orthogonal: rows come in blocks of ``d``
    orthonormal rows, each block from its own Gaussian matrix.
    """
    blocks = []
    for start in range(0, k, d):
        rows = min(d, k - start)
        gaussian = torch.randn(d, rows, generator=generator)
        q, r = torch.linalg.qr(gaussian)
        q = q * torch.sign(torch.diagonal(r))  # unique Q: positive diagonal of R
        blocks.append(q.T)
    return torch.cat(blocks) * scale


class CoresetMemory(nn.Module):
    """Streaming k-center memory of at most K items, with a pending pool for admission.

    Confirmed items occupy rows ``[0, size)`` of the bank; with ``admission="recurrence"``, pending items
    follow in rows ``[size, size + pending)``; at most ``capacity - pending_capacity`` items are confirmed, so
    the memory never holds more than K rows. Each learned image offers its least-covered patches
    (farthest-first); a defect's patches are exactly those, so they are not all let in at once: a chosen
    patch whose *surprise* (its position-normalised score) is at most ``admit_z`` enters at once, a more
    surprising one waits in the pool. A pending item is confirmed once patches of ``confirm`` later learned
    images came nearer to it than it was itself to the memory when it arrived; it expires unconfirmed after
    ``ttl`` learned images (or when the pool is full, oldest first). The pool is searched for scoring only
    with ``pending_searched`` (otherwise it only collects evidence, from one extra block of distances).
    ``admit_z=None`` makes every chosen patch wait (pure recurrence); ``admission="coverage"`` lets every one
    in at once (the rule before the pool; it learns the defects it sees). docs/method.md section 8 has the
    measurements.

    Buffers (all saved): ``bank (K, D) float32``, ``count () int64`` (confirmed rows), ``radius () float32``,
    ``tags (K,) int64`` (provenance of each row, -1 unknown), and for the pool ``pending_count () int64``,
    ``birth (K,) int64``, ``support (K,) int64``, ``novelty (K,) float32`` (indexed by pending row), ``clock ()
    int64`` (learned images). Counts, radius and clock are mirrored as Python numbers (:attr:`size`,
    :attr:`pending`, :attr:`coverage_radius`, :attr:`learned`), so the hot path never reads them back.
    """

    bank: torch.Tensor
    count: torch.Tensor
    radius: torch.Tensor
    tags: torch.Tensor
    pending_count: torch.Tensor
    birth: torch.Tensor
    support: torch.Tensor
    novelty: torch.Tensor
    clock: torch.Tensor

    def __init__(
        self,
        capacity: int,
        dim: int,
        insert_per_image: int = 64,
        slack: float = 0.01,
        index: MemoryIndex | None = None,
        admission: str = "coverage",
        pending_capacity: int = 0,
        confirm: int = 2,
        ttl: int = 32,
        admit_z: float | None = None,
        pending_searched: bool = True,
    ) -> None:
        super().__init__()
        if admission not in ADMISSIONS:
            raise InputError(f"admission: expected one of {list(ADMISSIONS)}, got {admission!r}")
        if admission == "recurrence" and not 1 <= pending_capacity < capacity:
            raise InputError(f"pending_capacity: expected 1..{capacity - 1} with recurrence, got {pending_capacity}")
        if index is not None and admission == "recurrence" and pending_searched:
            raise InputError("knn: expected pending_searched=False with an index (it follows the confirmed items)")
        self.index = index  # nearest-item search through a library (lemo_edge.knn); None: the exact reference
        self._index_stale = index is not None
        self.scorer: Scorer | None = None
        self.admission = admission
        self.capacity = capacity
        self.pending_capacity = pending_capacity if admission == "recurrence" else 0
        self.confirmed_capacity = capacity - self.pending_capacity
        self.insert_per_image = insert_per_image
        self.slack = slack
        self.confirm = confirm
        self.ttl = ttl
        self.admit_z = admit_z
        self.pending_searched = pending_searched
        self.register_buffer("bank", torch.zeros(capacity, dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        self.register_buffer("radius", torch.zeros(()))
        self.register_buffer("tags", torch.full((capacity,), -1, dtype=torch.int64))
        self.register_buffer("pending_count", torch.zeros((), dtype=torch.int64))
        self.register_buffer("birth", torch.zeros(capacity, dtype=torch.int64))
        self.register_buffer("support", torch.zeros(capacity, dtype=torch.int64))
        self.register_buffer("novelty", torch.zeros(capacity))
        self.register_buffer("clock", torch.zeros((), dtype=torch.int64))
        self.size = 0
        self.pending = 0
        self.learned = 0
        self.coverage_radius = 0.0
        # nearest other item of each of the first n items (distance, index, whether the distance is only a lower
        # bound), kept from the last merge (not saved)
        self._nn: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._admitted: list[torch.Tensor] = []

    @property
    def items(self) -> torch.Tensor:
        """``(n, D) float32``: the rows searched (n <= K): confirmed then, when they are searched, pending."""
        return self.bank[: self.size + (self.pending if self.pending_searched else 0)]

    @property
    def confirmed(self) -> torch.Tensor:
        """``(size, D) float32``: the confirmed items."""
        return self.bank[: self.size]

    def _set_size(self, n: int) -> None:
        self.size = n
        self.count.fill_(n)

    def _set_pending(self, n: int) -> None:
        self.pending = n
        self.pending_count.fill_(n)

    def pop_admitted(self) -> torch.Tensor:
        """Tags ``(m,) int64`` of the rows confirmed since the last call (for contamination metrics)."""
        out = torch.cat(self._admitted) if self._admitted else torch.zeros(0, dtype=torch.int64)
        self._admitted = []
        return out

    @torch.no_grad()
    def replace_items(self, items: torch.Tensor) -> None:
        """Make ``items (n, D)`` (n <= confirmed capacity) the confirmed items, e.g. to remove some; the
        radius stays, the pending pool is emptied, the tags are forgotten."""
        if items.ndim != 2 or items.shape[1] != self.bank.shape[1] or items.shape[0] > self.confirmed_capacity:
            raise InputError(
                f"items: expected (n <= {self.confirmed_capacity}, {self.bank.shape[1]}), got {describe(items)}"
            )
        self.bank[: items.shape[0]] = items
        self.tags.fill_(-1)
        self._set_size(items.shape[0])
        self._set_pending(0)
        self._forget_derived()

    def _forget_derived(self) -> None:
        """Drop what was computed from the old items (nearest-other cache; the index is rebuilt when next used)."""
        self._nn = None
        self._index_stale = self.index is not None

    def _indexed(self) -> MemoryIndex | None:
        """The index, following the confirmed items, when searches go through it (CPU memory); else None."""
        if self.index is None or self.bank.device.type != "cpu":
            return None
        if self._index_stale:
            self.index.reset(self.confirmed)
            self._index_stale = False
        return self.index

    @torch.no_grad()
    def search(self, z: torch.Tensor, k: int) -> Nearest:
        """Nearest items of ``z (N, D)``: through :attr:`scorer` when one is set, else the index (lemo_edge.knn)
        when there is one and the memory is on the CPU, else the exact reference."""
        if self.scorer is not None:
            return self.scorer(z, self.items)
        index = self._indexed()
        if index is None or k > len(index):
            return nearest_memory(z, self.items, k)
        return index.search(z, k)

    @torch.no_grad()
    def insert(
        self,
        z: torch.Tensor,
        nearest: torch.Tensor,
        index: torch.Tensor | None = None,
        tag: int = -1,
        surprise: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        frame_patches: int = 0,
        budget: int | None = None,
    ) -> int:
        """Learn from one image's patches; returns how many became confirmed or pending items.

        Args:
            z: ``(P, D) float32`` embeddings of one image's patches, on the memory's device.
            nearest: ``(P,) float32`` distance of each patch to its nearest row of :attr:`items` (``inf``
                when the memory is empty); scoring computed it already, so it is not recomputed.
            index: ``(P,) int64`` that nearest row (needed for recurrence evidence; ``None``: no evidence).
            tag: provenance of the image (e.g. its stream position); row tags are ``tag * P + patch``.
            surprise: ``(P,) float32`` position-normalised patch scores; with recurrence, chosen patches at
                most :attr:`admit_z` enter at once and only the others wait. ``None`` (not known yet): all
                enter at once, unless :attr:`admit_z` is ``None`` (pure recurrence: all wait).
            positions: ``(P,) int64`` each patch's index in its frame when ``z`` is a subset of the frame's
                ``frame_patches`` patches (letterbox content); tags then use those. ``None``: ``z`` is the frame.
            frame_patches: patches of the whole frame (with ``positions``).
            budget: most patches chosen from this image (``None``: :attr:`insert_per_image`); a frame cut into
                ``T`` tiles is ``T`` model inputs (:func:`frame_budget`).
        """
        if z.ndim != 2 or nearest.shape != z.shape[:1] or (index is not None and index.shape != nearest.shape):
            raise InputError(
                f"insert: expected z (P, D) and nearest (P,), got {describe(z)} and {describe(nearest)}"
                + (f" and index {describe(index)}" if index is not None else "")
            )
        self.learned += 1
        self.clock.fill_(self.learned)
        empty = self.size + self.pending == 0
        steps = self.insert_per_image if budget is None else budget
        chosen = farthest_first(z, None if empty else nearest, steps, self.coverage_radius)
        new = z[chosen].float()
        if positions is not None:
            tags = tag * frame_patches + positions[chosen] if tag >= 0 else torch.full_like(chosen, -1)
        else:
            tags = tag * z.shape[0] + chosen if tag >= 0 else torch.full_like(chosen, -1)
        if self.admission == "coverage" or (surprise is None and self.admit_z is not None):
            self._confirm_rows(new, tags)  # no surprise known yet (position statistics not ready): at once
            return int(chosen.numel())
        novelty = None if empty else nearest[chosen].float()
        if surprise is not None and self.admit_z is not None:
            direct = surprise.flatten()[chosen] <= self.admit_z
            self._confirm_rows(new[direct], tags[direct])
            new, tags = new[~direct], tags[~direct]
            novelty = None if novelty is None else novelty[~direct]
        self._admit_pending(z, nearest, index, new, tags, novelty)
        return int(chosen.numel())

    def _admit_pending(
        self,
        z: torch.Tensor,
        nearest: torch.Tensor,
        index: torch.Tensor | None,
        new: torch.Tensor,
        new_tags: torch.Tensor,
        new_novelty: torch.Tensor | None,
    ) -> None:
        """Gather recurrence evidence for the pending rows, confirm or expire them, add ``new`` as pending."""
        device = self.bank.device
        n, start = self.pending, self.size
        rows = slice(start, start + n)
        pend, pend_tags = self.bank[rows].clone(), self.tags[rows].clone()
        birth, support, novelty = self.birth[:n].clone(), self.support[:n].clone(), self.novelty[:n].clone()
        if n and not self.pending_searched:
            # the pool is not searched: one block of distances, the image's patches x the pending rows
            closest = squared_distances(z.float(), pend).min(dim=0).values.clamp_min(0).sqrt()
            support += (closest < novelty).long()
        elif n and index is not None:
            slot = index - start
            is_pending = (slot >= 0) & (slot < n)
            slot = slot.clamp(0, max(n - 1, 0))
            hit = is_pending & (nearest.float() < novelty[slot])
            seen = torch.zeros(n, dtype=torch.bool, device=device)
            seen[slot[hit]] = True  # one piece of evidence per image and pending row
            support += seen.long()
        confirm = support >= self.confirm
        keep = ~confirm & (self.learned - birth <= self.ttl)
        self._set_pending(0)  # the pool is held here until it is written back below
        if n:
            self._confirm_rows(pend[confirm], pend_tags[confirm])
        count = new.shape[0]
        fresh_novelty = torch.full((count,), math.inf, device=device) if new_novelty is None else new_novelty.to(device)
        pend = torch.cat([pend[keep], new])
        pend_tags = torch.cat([pend_tags[keep], new_tags])
        birth = torch.cat([birth[keep], torch.full((count,), self.learned, dtype=torch.int64, device=device)])
        support = torch.cat([support[keep], torch.zeros(count, dtype=torch.int64, device=device)])
        novelty = torch.cat([novelty[keep], fresh_novelty])
        over = pend.shape[0] - self.pending_capacity
        if over > 0:  # the oldest pending rows make room (they are the nearest to expiring)
            pend, pend_tags, birth, support, novelty = (t[over:] for t in (pend, pend_tags, birth, support, novelty))
        m = pend.shape[0]
        self.bank[self.size : self.size + m] = pend
        self.tags[self.size : self.size + m] = pend_tags
        self.birth[:m], self.support[:m], self.novelty[:m] = birth, support, novelty
        self._set_pending(m)

    def _confirm_rows(self, new: torch.Tensor, tags: torch.Tensor) -> None:
        """Append ``new (m, D)`` rows with their ``tags (m,)`` to the confirmed items, merging past capacity; the
        pending rows, which follow the confirmed ones in the bank, move with the end of the confirmed rows."""
        if new.shape[0] == 0:
            return
        if tags.numel() and bool((tags >= 0).any()):
            self._admitted.append(tags[tags >= 0].cpu())
        count = self.size
        pending = slice(count, count + self.pending)
        pend, pend_tags = self.bank[pending].clone(), self.tags[pending].clone()
        index = self._indexed()
        if index is not None:
            index.add(new)
        if count + new.shape[0] <= self.confirmed_capacity:
            self.bank[count : count + new.shape[0]] = new
            self.tags[count : count + new.shape[0]] = tags
            self._set_size(count + new.shape[0])
        else:
            items, kept = self._grow_radius_and_merge(torch.cat([self.confirmed, new]))
            all_tags = torch.cat([self.tags[:count], tags])
            self.bank[: items.shape[0]] = items
            self.tags[: items.shape[0]] = all_tags[kept]
            self._set_size(items.shape[0])
            if index is not None:  # the merge keeps the survivors in order: the index drops the others
                dropped = torch.ones(count + new.shape[0], dtype=torch.bool)
                dropped[kept] = False
                index.remove(torch.nonzero(dropped).flatten())
        self.bank[self.size : self.size + self.pending] = pend
        self.tags[self.size : self.size + self.pending] = pend_tags

    def _grow_radius_and_merge(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Drop the most redundant items until ``(1 - slack) * K`` remain; raise the radius.

        Pairs (an item and its nearest other item) are taken by increasing distance; of each pair the
        newer item is dropped. A round takes the ``2 need`` closest pairs at once (a mutual pair appears
        twice), skips a pair one of whose members an earlier pair of the round drops, and keeps the first
        ``need`` pairs not skipped (so no item is dropped twice and every dropped item keeps a partner);
        further rounds follow until ``(1 - slack) * K`` items remain. The radius becomes the largest distance
        of a pair merged so far (it never shrinks), so later insertions only add patches farther than that
        from every item. Vectorised: a few host reads per round, none per pair.

        An item whose nearest other is dropped (an orphan) keeps that distance as a lower bound of its new
        one (the others it has left only lost items) and is searched again only when the bound ranks among a
        round's closest pairs: the rounds see the same exact distances as with every orphan searched at once,
        so they merge the same pairs, and most orphans are never searched (a noisy frame can orphan thousands).

        Returns:
            The kept items ``(n, D)`` and their rows ``(n,) int64`` in ``items``.
        """
        target = int(self.confirmed_capacity * (1.0 - self.slack))
        device = items.device
        radius = torch.tensor(self.coverage_radius, device=device)
        nn_dist, nn_index, bound = self._nearest_others(items)
        origin = torch.arange(items.shape[0], device=device)
        n = items.shape[0]
        while n > target:
            need = n - target
            # twice the pairs needed (a mutual pair appears twice and is taken once), the first ``need`` taken
            candidates = min(n, 2 * need + 8)
            # (and as many again: the lower bounds among them are searched at once, fewer rounds of few rows each)
            wide = torch.topk(nn_dist, min(n, 2 * candidates), largest=False, sorted=True).indices
            order = wide[:candidates]
            if bool(bound[order].any()):  # lower bounds among the closest: search them again, then choose again
                lazy = wide[bound[wide]]
                nn_dist[lazy], nn_index[lazy] = nearest_other(items, lazy)
                bound[lazy] = False
                continue
            first, second = order, nn_index[order]
            drop = torch.maximum(first, second)
            position = torch.arange(order.shape[0], device=device)
            first_drop = torch.full((n,), candidates, dtype=torch.int64, device=device)
            first_drop.scatter_reduce_(0, drop, position, reduce="amin")
            take = (first_drop[first] >= position) & (first_drop[second] >= position)
            take &= torch.cumsum(take, 0) <= need
            dropped = torch.zeros(n, dtype=torch.bool, device=device)
            dropped[drop[take]] = True
            radius = torch.maximum(radius, nn_dist[order[take]].max())
            kept = ~dropped
            new_index = (torch.cumsum(kept, 0) - 1).clamp_min_(0)  # a dropped item's: any kept row (bounds only)
            orphans = dropped[nn_index][kept]  # kept items whose nearest other was dropped: now bounds
            items, nn_dist, nn_index = items[kept], nn_dist[kept], new_index[nn_index[kept]]
            bound = bound[kept] | orphans
            origin = origin[kept]
            n = items.shape[0]
        self._nn = (nn_dist, nn_index, bound)
        self.coverage_radius = float(radius)
        self.radius.fill_(self.coverage_radius)
        return items, origin

    def _nearest_others(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:func:`nearest_other` of ``items`` (the current items followed by new ones), reusing the
        result kept from the previous merge for the rows it covers: only the new rows' distances
        to all items are computed (a merge costs about (new + searched orphans) x K instead of K x K).

        Returns distances, indices and ``bound (n,) bool``: rows whose distance is only a lower bound (orphans
        of an earlier merge not searched again, see :meth:`_grow_radius_and_merge`; their index means nothing).
        """
        n = items.shape[0]
        if self._nn is None or not 2 <= self._nn[0].shape[0] <= min(self.size, n):
            nn_dist, nn_index = nearest_other(items)
            return nn_dist, nn_index, torch.zeros(n, dtype=torch.bool, device=items.device)
        cached = self._nn[0].shape[0]
        nn_dist, nn_index, bound = (t.clone() for t in self._nn)
        if n == cached:
            return nn_dist, nn_index, bound

        # one block of squared distances, new items x all items, serves both directions: its rows
        # give the new items' nearest others, its columns over the old items whether a new item is
        # nearer to an old one than the old one's nearest so far (row slices side by side on a CPU)
        items_sq = (items * items).sum(1)

        def part(start: int, stop: int) -> tuple[torch.Tensor, ...]:
            d2 = squared_distances(items[cached + start : cached + stop], items, items_sq)
            rows = torch.arange(stop - start, device=items.device)
            d2[rows, rows + cached + start] = math.inf
            new_d2, new_index = smallest_k(d2, 1)
            old = d2[:, :cached]
            to_new = old.amin(dim=0)  # the values only (fast); the rows only where a new item came nearer (few)
            columns = torch.nonzero(to_new.sqrt() < nn_dist).flatten()
            to_new_index = torch.zeros(cached, dtype=torch.int64, device=items.device)
            to_new_index[columns] = old.index_select(1, columns).argmin(dim=0) + start
            return new_d2.flatten(), new_index.flatten(), to_new, to_new_index

        parts = run_slices(part, n - cached, _workers(items), min_rows=32)
        to_new_d2, to_new_index = parts[0][2], parts[0][3]
        for _, _, values, indices in parts[1:]:  # a later slice wins only when strictly nearer (as one min would)
            nearer = values < to_new_d2
            to_new_d2, to_new_index = torch.where(nearer, values, to_new_d2), torch.where(nearer, indices, to_new_index)
        to_new_dist = to_new_d2.sqrt()
        closer = to_new_dist < nn_dist  # nearer than a bound: nearer than every old item, so exact
        nn_dist = torch.where(closer, to_new_dist, nn_dist)
        nn_index = torch.where(closer, to_new_index + cached, nn_index)
        bound &= ~closer
        new_dist = torch.cat([p[0] for p in parts]).sqrt()
        new_bound = torch.zeros(n - cached, dtype=torch.bool, device=items.device)
        return (
            torch.cat([nn_dist, new_dist]),
            torch.cat([nn_index, torch.cat([p[1] for p in parts])]),
            torch.cat([bound, new_bound]),
        )

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._forget_derived()  # the loaded items are not the ones they were computed for
        super()._load_from_state_dict(*args, **kwargs)
        # one read at load time; the mirrors follow the loaded buffers
        self.size, self.pending, self.learned = int(self.count), int(self.pending_count), int(self.clock)
        self.coverage_radius = float(self.radius)


def frame_budget(per_input: int, inputs: int, capacity: int) -> int:
    """Items one frame may insert when it is ``inputs`` model inputs (tiles): ``per_input`` for each, at most an
    eighth of the memory's ``capacity`` K per frame (but never less than ``per_input``), so that one frame cannot
    replace much of what the memory holds.

    A 1920x1080 frame in 256x256 tiles is 45 inputs: with the defaults (64 per input, K = 8192) it may insert
    1024 items, where one budget for the whole frame (64) left most of its surface uncovered for hundreds of
    frames (``benchmarks/results/tile-check.md``).
    """
    return max(per_input, min(per_input * max(1, inputs), capacity // 8))


def farthest_first(z: torch.Tensor, nearest: torch.Tensor | None, steps: int, radius: float) -> torch.Tensor:
    """Indices of up to ``steps`` patches chosen farthest-first among those farther than ``radius``.

    Each step takes the patch farthest from the memory and from the patches chosen before it (into an
    empty memory, the first is the patch farthest from the image's mean patch: one right answer, the same
    on every device); it stops (in effect) at the first patch not farther than ``radius``. Only patches
    already farther than the radius can ever be chosen (a patch's distance only shrinks as others are
    chosen), so the search runs on those candidates; the steps run on the device and their distances are
    read once at the end.

    Args:
        z: ``(P, D) float`` patch embeddings.
        nearest: ``(P,) float32`` distance of each patch to its nearest item; ``None``: the memory is empty.
        steps: most patches chosen.
        radius: coverage radius; a patch is chosen only while its distance exceeds it.

    Returns:
        ``(m,) int64`` indices into ``z``, m <= steps, in the order chosen.
    """
    if nearest is None:
        candidates = torch.arange(z.shape[0], device=z.device)
    else:
        candidates = torch.nonzero(nearest.float() > radius).flatten()
    count = min(steps, int(candidates.numel()))
    if count == 0:
        return candidates[:0]
    cz = z[candidates].float()
    cz = cz - cz.mean(0)  # centred: the distances below lose less to cancellation
    sq = (cz * cz).sum(1)
    picks: list[torch.Tensor] = []  # 0-d tensors, stacked once at the end (fewer dispatches per step)
    picked: list[torch.Tensor] = []

    def distance_to(row: torch.Tensor) -> torch.Tensor:
        # ||c - r||^2 = ||c||^2 - 2 c.r + ||r||^2: one matrix-vector product, no (candidates, D) temporary per step
        # (those 28 MB blocks for a tiled frame's 46k candidates grew glibc's heap by gigabytes over 1024 steps)
        d2 = torch.addmv(sq, cz, row, alpha=-2.0).add_(row.dot(row))
        return d2.clamp_min_(0.0).sqrt_()

    if nearest is None:  # an empty memory: the first patch is the one farthest from the image's mean patch
        first = sq.argmax()
        picks.append(first)
        picked.append(torch.tensor(math.inf, device=z.device))
        dist = distance_to(cz[first])
    else:
        dist = nearest.float()[candidates]
    for _ in range(len(picks), count):
        value, index = dist.max(dim=0)
        picks.append(index)
        picked.append(value)
        torch.minimum(dist, distance_to(cz[index]), out=dist)
    # the chosen distances never increase: the valid picks are a prefix
    valid = int((torch.stack(picked) > radius).sum())
    return candidates[torch.stack(picks)[:valid]]


def nearest_other(
    items: torch.Tensor, rows: torch.Tensor | None = None, block: int = 2048
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each item (or each of ``rows``), the distance to and index of its nearest other item.

    Args:
        items: ``(n, D) float32``, n >= 2.
        rows: ``(m,) int64`` indices of the items to answer for (``items``' device); ``None``: all.

    Returns:
        ``(m,) float32`` distances and ``(m,) int64`` indices into ``items``, on ``items``' device.
    """
    device = items.device
    items = items.float()
    rows = torch.arange(items.shape[0], device=device) if rows is None else rows
    items_sq = (items * items).sum(1)  # once for every block and slice

    def part(first: int, last: int) -> tuple[torch.Tensor, torch.Tensor]:
        dists, index = [], []
        for start in range(first, last, block):
            chunk = rows[start : min(start + block, last)]
            d2 = squared_distances(items[chunk], items, items_sq)
            d2[torch.arange(chunk.shape[0], device=device), chunk] = math.inf
            best, where = smallest_k(d2, 1)
            dists.append(best.flatten().sqrt())
            index.append(where.flatten())
        if not dists:
            return torch.zeros(0, device=device), torch.zeros(0, dtype=torch.int64, device=device)
        return torch.cat(dists), torch.cat(index)

    parts = run_slices(part, rows.shape[0], _workers(items), min_rows=32)  # row slices side by side on a CPU
    return torch.cat([d for d, _ in parts]), torch.cat([i for _, i in parts])


def _workers(items: torch.Tensor) -> int:
    """Slices a CPU merge's distances are split into (:mod:`lemo_edge.workers`); one on other devices."""
    return default_workers() if items.device.type == "cpu" else 1


class LearnedMemory(nn.Module):
    """The paper's memory: K learnable items, orthogonal-noise init, no data needed.

    Parameters: ``items (K, D) float32``. Buffers: ``last_used (K,) int64`` (image step at which
    each item was last some patch's nearest), ``step () int64``.
    """

    last_used: torch.Tensor
    step: torch.Tensor

    def __init__(self, capacity: int, dim: int, scale: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.capacity = capacity
        self.weight = nn.Parameter(orthogonal_noise(capacity, dim, scale, generator))
        self.register_buffer("last_used", torch.full((capacity,), -1, dtype=torch.int64))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.scorer: Scorer | None = None
        self.steps = 0  # Python mirror of ``step``

    @property
    def items(self) -> torch.Tensor:
        """``(K, D) float32``: all items (the learned memory is always full)."""
        return self.weight

    @torch.no_grad()
    def search(self, z: torch.Tensor, k: int) -> Nearest:
        """Nearest items of ``z (N, D)``: through :attr:`scorer` when one is set, else the exact reference."""
        if self.scorer is not None:
            return self.scorer(z, self.items.detach())
        return nearest_memory(z, self.items.detach(), k)

    @torch.no_grad()
    def mark_used(self, index: torch.Tensor) -> None:
        """Record the nearest-item indices ``(P,) int64`` of the current image and advance a step."""
        self.last_used[index] = self.step
        self.step += 1
        self.steps += 1

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.steps = int(self.step)

    @torch.no_grad()
    def reseed(self, z: torch.Tensor, nearest: torch.Tensor, after: int) -> int:
        """Move items unused for ``after`` images onto the least-covered patches (farthest-first).

        Args:
            z: ``(P, D) float32`` current image's embeddings.
            nearest: ``(P,) float32`` their nearest-item distances.
            after: age (in images) from which an item counts as unused.

        Returns:
            Number of items re-seeded.
        """
        stale = torch.nonzero(self.step - self.last_used > after).flatten()
        count = min(int(stale.numel()), z.shape[0])
        if count == 0:
            return 0
        dist = nearest.float().clone()
        chosen = torch.empty(count, dtype=torch.int64, device=z.device)
        for step in range(count):
            i = dist.argmax().view(1)
            chosen[step] = i[0]
            dist = torch.minimum(dist, (z - z.index_select(0, i)).norm(dim=1))
            dist.index_fill_(0, i, -1.0)
        stale = stale[:count]
        self.weight[stale] = z[chosen]
        self.last_used[stale] = self.step
        return count

    @torch.no_grad()
    def refresh(self, z: torch.Tensor, min_patches: int) -> int:
        """The paper's refresh: reassign patches, dissolve items with fewer than ``min_patches``
        patches, and split the most populated item by 2-means for each dissolved one.

        Args:
            z: ``(P, D) float32`` recent patch embeddings.

        Returns:
            Number of items dissolved (and re-created by splitting).
        """
        index = nearest_memory(z, self.weight.detach(), 1).index
        counts = torch.bincount(index, minlength=self.capacity)
        weak = torch.nonzero(counts < min_patches).flatten()
        for item in weak.tolist():
            largest = int(counts.argmax())
            members = z[index == largest]
            if members.shape[0] < 2:
                break
            a, b = two_means(members)
            self.weight[largest], self.weight[item] = a, b
            counts[largest] = counts[item] = members.shape[0] // 2
        return int(weak.numel())


def two_means(x: torch.Tensor, iters: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``(n, D)`` points in two by k-means; returns the two centroids ``(D,)``."""
    centre = x.mean(0)
    far = x[(x - centre).norm(dim=1).argmax()]
    a, b = far, 2 * centre - far
    for _ in range(iters):
        to_a = (x - a).norm(dim=1) <= (x - b).norm(dim=1)
        if to_a.all() or not to_a.any():
            break
        a, b = x[to_a].mean(0), x[~to_a].mean(0)
    return a, b
