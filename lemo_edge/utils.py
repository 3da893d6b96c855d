"""Small file-system and serialisation helpers shared by the core, the runtime and the export step.

- :func:`write_atomic`: write a file so that readers see the old or the new content, never a part.
- :class:`FileLock`: an exclusive ``fcntl.flock`` on a file, released by the kernel when the process dies.
- :func:`default_cache_dir`: where derived artifacts go (``$LEMO_EDGE_CACHE``, ``$XDG_CACHE_HOME/lemo-edge``
  or ``~/.cache/lemo-edge``; never the current directory).
- :func:`json_safe`: numpy values, paths and non-finite floats made standard JSON.
- :func:`package_version` / :func:`versions`: installed package versions.

Only the standard library is imported here.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePath
from typing import Any

from lemo_edge.errors import LemoError

CACHE_ENV = "LEMO_EDGE_CACHE"


# -- files ------------------------------------------------------------------------------------------------------------


def write_atomic(path: str | Path, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically: temporary file in the same folder, fsync, rename, fsync the folder.

    The temporary file is ``.<name>.<random>.tmp`` beside ``path``; it is removed if the write fails.

    Args:
        path: the file to (over)write; its folder is created if missing.
        data: the whole content.
        fsync: ``False`` keeps the rename (readers never see a partial file) but not the durability across a
            power cut (for tests on slow disks).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if not fsync:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class LockHeldError(LemoError, RuntimeError):
    """Another process holds a :class:`FileLock`.

    Attributes:
        path: the lock file.
        holder: the pid the holder wrote into it, or ``"?"``.
    """

    def __init__(self, path: Path, holder: str) -> None:
        self.path = path
        self.holder = holder
        super().__init__(f"lock: expected {path} to be free, got it held by another process (pid {holder})")


class FileLock:
    """An exclusive, non-blocking lock on a file (``fcntl.flock``), taken when constructed.

    The kernel releases it when the process dies, so a killed holder never blocks the next one. The holder's pid is
    written into the file, for the message a second process gets.

    Args:
        path: the lock file; created if missing (its folder must exist).

    Raises:
        LockHeldError: another process (or another open file description in this one) holds the lock.
        OSError: the file cannot be created or opened.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise LockHeldError(self.path, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        """Whether this object still holds the lock."""
        return self._fd is not None

    def release(self) -> None:
        """Release the lock (the file stays); idempotent."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def default_cache_dir() -> Path:
    """Return the cache root (not created here).

    ``$LEMO_EDGE_CACHE`` when set; else ``$XDG_CACHE_HOME/lemo-edge`` when ``XDG_CACHE_HOME`` is an absolute path
    (the XDG base-directory rule: a relative one is ignored); else ``~/.cache/lemo-edge``.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "lemo-edge"
    return Path.home() / ".cache" / "lemo-edge"


def cache_subdir(name: str, root: str | Path | None = None) -> Path:
    """Return (and create) ``<root>/<name>``, ``root`` defaulting to :func:`default_cache_dir`."""
    path = (Path(root).expanduser() if root is not None else default_cache_dir()) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- JSON -------------------------------------------------------------------------------------------------------------


def json_safe(obj: Any) -> Any:
    """Return ``obj`` with every value standard JSON can hold.

    Mappings become dicts with ``str`` keys; lists, tuples and sets become lists; numpy (or torch) arrays and
    scalars become Python lists and numbers (via ``tolist()``); NaN and +-inf become ``None`` (JSON has no
    NaN); paths become strings. ``None``, bools, ints, finite floats and strings are kept; any other value is
    returned unchanged (``json.dumps`` then decides).

    Args:
        obj: a JSON-like tree (e.g. a result dict).

    Returns:
        A new tree of dict, list, str, int, float, bool and None.
    """
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, PurePath):
        return str(obj)
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):  # numpy arrays and scalars (np.generic), torch tensors
        return json_safe(tolist())
    return obj


# -- versions ---------------------------------------------------------------------------------------------------------


def package_version(package: str) -> str | None:
    """The installed version of the distribution ``package`` (e.g. ``"onnxruntime-gpu"``), or None."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions(packages: Iterable[str]) -> dict[str, str | None]:
    """``{package: installed version or None}`` for each distribution name, in the given order."""
    return {package: package_version(package) for package in packages}
