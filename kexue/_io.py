"""Writes that never lose a user's work: atomic replace, and an exclusive lock per run.

A file is written to a temporary sibling (same directory, so the same file system), flushed and
``fsync``-ed, then moved over the target with ``os.replace``, which is atomic on POSIX: a reader
sees the old file or the new one, never a torn one, and a ``kill -9`` or a full disk during the
write leaves the previous file as it was. The directory is ``fsync``-ed too, so the rename itself
survives a power cut. Temporaries are named ``.<name>.<random>.tmp``; :func:`remove_stale`
clears those left by a killed writer.

A run directory is guarded by :class:`RunLock`, an exclusive ``fcntl.flock`` on a lock file: the
kernel drops it when the holder exits, ``kill -9`` included, so a crashed run never blocks the
next one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["RunLock", "RunLocked", "atomic_save", "atomic_write", "remove_stale"]

TMP_SUFFIX = ".tmp"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _mode(path: Path) -> int:
    """The mode a plain ``open(path, "w")`` would give: the existing file's, else 0666 less
    the umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", *,
                 encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on success move it over ``path``.

    On any exception (``KeyboardInterrupt``, a full disk) the temporary is removed and ``path``
    keeps its previous content.

    Args:
        path: the file to write.
        mode: ``"w"`` for text (UTF-8 unless ``encoding`` says otherwise) or ``"wb"``.
        encoding: text encoding; ignored for binary mode.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, _mode(path))  # mkstemp's 0600 would make the result private
        with os.fdopen(fd, mode, encoding=None if mode == "wb" else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_save(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(f)`` on a binary temporary and move it over ``path`` (see :func:`atomic_write`).

    ``write`` is e.g. ``lambda f: torch.save(obj, f)`` or ``lambda f: np.savez(f, **arrays)``.
    """
    with atomic_write(path, "wb") as f:
        write(f)


def remove_stale(directory: str | os.PathLike[str], name: str) -> list[Path]:
    """Delete the temporaries that a killed :func:`atomic_write` of ``directory/name`` left.

    Call it only while holding the directory's :class:`RunLock` (another writer's temporary is
    not stale). Returns the removed paths.
    """
    removed = []
    for tmp in Path(directory).glob(f".{name}.*{TMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


class RunLocked(RuntimeError):
    """Another process holds the lock of this run."""


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``path`` held for the life of a run.

    Usage::

        with RunLock(run_dir / ".lock"):
            ...  # only this process writes into run_dir

    Raises:
        RunLocked: on entry, when another process holds the lock.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = f" (pid {int(self.path.read_text().strip())})"
            raise RunLocked(f"{self.path.parent} is in use by another kexue process{holder}") \
                from err
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
