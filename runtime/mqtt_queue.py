"""The on-disk message queue behind the ``mqtt://`` sink: a bounded FIFO of files that survives crashes and restarts."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from lemo_edge.errors import InputError
from lemo_edge.utils import FileLock, LockHeldError, write_atomic

log = logging.getLogger(__name__)

_LOCK_FILE = ".lock"
_SUFFIX = ".json"


class DiskQueue:
    """A bounded FIFO of messages on disk, one file per message, named by a strictly increasing sequence number.

    :meth:`put` returns once the file is written atomically (temporary file, fsync, rename), so the message survives
    a crash or a power cut from then on. :meth:`take` hands out the oldest messages not handed out yet; :meth:`ack`
    deletes one for good; :meth:`release` puts handed-out messages back at the front. Messages found in the folder
    at start (left by an earlier run) come first. A lock (:class:`lemo_edge.utils.FileLock` on ``DIR/.lock``) keeps
    a second process out of the folder. Thread-safe.

    Args:
        directory: the folder (created if missing).
        max_messages: at most this many messages are kept; :meth:`put` on a full queue drops the oldest.
        fsync: fsync every message file and the folder (off only for tests on slow disks).

    Raises:
        InputError: ``max_messages < 1``, or the folder cannot be created or is used by another process.
    """

    def __init__(self, directory: str | Path, max_messages: int = 10_000, *, fsync: bool = True) -> None:
        if max_messages < 1:
            raise InputError(f"queue_max: expected >= 1, got {max_messages}")
        self.directory = Path(directory).expanduser()
        self.max_messages = int(max_messages)
        self.fsync = fsync
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._file_lock: FileLock | None = FileLock(self.directory / _LOCK_FILE)
        except LockHeldError:
            raise InputError(
                f"mqtt queue: {self.directory} is in use by another process; expected one sink per queue folder "
                "(give each its own queue=DIR)"
            ) from None
        except OSError as err:
            raise InputError(f"mqtt queue: expected a writable folder, got {str(self.directory)!r} ({err})") from err
        for stale in self.directory.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        seqs = sorted(int(p.stem) for p in self.directory.glob(f"*{_SUFFIX}") if p.stem.isdigit())
        self._lock = threading.Lock()
        self._pending: deque[int] = deque(seqs)
        self._taken: set[int] = set()
        self._last = seqs[-1] if seqs else 0
        self.dropped = 0
        if seqs:
            log.info("mqtt queue %s: %d messages left by an earlier run will be sent first", self.directory, len(seqs))
        with self._lock:
            while len(self._pending) > self.max_messages:
                self._drop_oldest()

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:020d}{_SUFFIX}"

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending) + len(self._taken)

    @property
    def pending(self) -> int:
        """Messages not handed out yet."""
        with self._lock:
            return len(self._pending)

    def _drop_oldest(self) -> None:
        if self._pending:
            seq = self._pending.popleft()
        else:
            seq = min(self._taken)
            self._taken.discard(seq)
        self._path(seq).unlink(missing_ok=True)
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning(
                "mqtt queue %s is full (%d messages): dropped the oldest (%d dropped so far)",
                self.directory,
                self.max_messages,
                self.dropped,
            )

    def put(self, payload: bytes | Callable[[int], bytes]) -> int:
        """Write one message; returns its sequence number. A full queue drops its oldest message first.

        Args:
            payload: the message, or a function of its sequence number returning it (to stamp the number inside).
        """
        with self._lock:
            if self._file_lock is None:
                raise InputError(f"mqtt queue {self.directory}: expected an open queue, got a closed one")
            seq = max(time.time_ns(), self._last + 1)
            self._last = seq
            while len(self._pending) + len(self._taken) >= self.max_messages:
                self._drop_oldest()
            data = payload(seq) if callable(payload) else payload
            path = self._path(seq)
            write_atomic(path, data, fsync=self.fsync)
            self._pending.append(seq)
            return seq

    def take(self, limit: int) -> list[tuple[int, bytes]]:
        """Hand out up to ``limit`` of the oldest messages not handed out yet: ``[(seq, payload)]``."""
        out: list[tuple[int, bytes]] = []
        with self._lock:
            while self._pending and len(out) < limit:
                seq = self._pending.popleft()
                try:
                    out.append((seq, self._path(seq).read_bytes()))
                except OSError as err:
                    log.warning("mqtt queue %s: message %d unreadable (%s); dropped", self.directory, seq, err)
                    self.dropped += 1
                    continue
                self._taken.add(seq)
        return out

    def release(self, seqs: list[int]) -> None:
        """Put handed-out messages back at the front, oldest first (e.g. the client refused them)."""
        with self._lock:
            for seq in sorted(seqs, reverse=True):
                if seq in self._taken:
                    self._taken.discard(seq)
                    self._pending.appendleft(seq)

    def ack(self, seq: int) -> None:
        """Delete a delivered message."""
        with self._lock:
            self._taken.discard(seq)
            self._path(seq).unlink(missing_ok=True)

    def close(self) -> None:
        """Release the folder's lock (the files stay); idempotent."""
        with self._lock:
            if self._file_lock is not None:
                lock, self._file_lock = self._file_lock, None
                lock.release()
