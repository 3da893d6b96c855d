"""A run's state folder: one run at a time (a file lock), the saved state loaded at start and saved atomically.

:class:`StateStore` holds the folder for one run, loads it at start and saves it atomically (``lemo_edge.state``)
whenever the loop asks, so a crash or ``kill -9`` loses at most the updates since the last save.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from lemo_edge.backbone import FeatureSpec
from lemo_edge.config import ModelConfig
from lemo_edge.errors import StateError
from lemo_edge.state import STATE_FILE, load_state, read_state, save_state
from lemo_edge.updater import OnlineUpdater
from lemo_edge.utils import FileLock, LockHeldError

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class StateStore:
    """A state folder held by one run: exclusive lock, load at start, atomic saves.

    The lock (:class:`lemo_edge.utils.FileLock` on ``DIR/.lock``) is released by the kernel when the process dies,
    so a killed run never blocks the next one. Temporary files left by a save that was killed are removed.

    Args:
        directory: the state folder; created if missing.

    Raises:
        StateError: another process holds the folder, or it cannot be created.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock: FileLock | None = FileLock(self.directory / LOCK_FILE)
        except LockHeldError as err:
            raise StateError(
                f"state: {self.directory} is in use by another lemo-edge run (pid {err.holder}); "
                "expected one run per state folder"
            ) from None
        except OSError as err:
            raise StateError(f"state: expected a writable folder, got {str(self.directory)!r} ({err})") from err
        for stale in self.directory.glob(".state.*.tmp"):
            log.info("state: removing %s left by an interrupted save", stale.name)
            stale.unlink(missing_ok=True)
        self.saves = 0
        self.save_seconds = 0.0
        self.saved_updates: int | None = None

    @property
    def path(self) -> Path:
        """``DIR/state.safetensors``."""
        return self.directory / STATE_FILE

    def exists(self) -> bool:
        """Whether a saved state is there."""
        return self.path.is_file()

    def saved_config(self) -> ModelConfig | None:
        """The config of the saved state, or None without one.

        Raises:
            StateError: the file is corrupt or of another version.
        """
        if not self.exists():
            return None
        meta, _ = read_state(self.directory)
        return ModelConfig.from_dict(meta["config"])

    def load(self, spec: FeatureSpec, config: ModelConfig | None = None) -> OnlineUpdater:
        """Load the saved model and updater (``config``, if given, must equal the saved one).

        Raises:
            StateError: missing, corrupt, another version, or made for another backbone or config.
        """
        updater = load_state(self.directory, spec, config)
        self.saved_updates = updater.stats.updates
        return updater

    def save(self, updater: OnlineUpdater) -> float:
        """Atomically save ``updater`` (model, threshold, counters); returns the seconds it took."""
        t0 = time.perf_counter()
        save_state(self.directory, updater)
        seconds = time.perf_counter() - t0
        self.saves += 1
        self.save_seconds += seconds
        self.saved_updates = updater.stats.updates
        log.info("state: saved %s (%d updates) in %.0f ms", self.path, updater.stats.updates, 1e3 * seconds)
        return seconds

    def close(self) -> None:
        """Release the lock; idempotent."""
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.release()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def move_updater(updater: OnlineUpdater, device: torch.device) -> None:
    """Move the model, and any optimiser moments, to ``device`` in place."""
    updater.model.to(device)
    if updater.optimizer is not None:
        for slots in updater.optimizer.state.values():
            for name, value in slots.items():
                if isinstance(value, torch.Tensor) and value.ndim > 0:
                    slots[name] = value.to(device)
