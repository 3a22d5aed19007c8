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


def _read_umask() -> int:
    """The process umask, read once (setting it to read it is not thread-safe, so only here)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


_UMASK = _read_umask()
# the temporaries of atomic_write: "." + name + "." + mkstemp's 8 random characters + ".tmp"
_RANDOM = r"[a-z0-9_]{8}"


def _mode(path: Path) -> int:
    """The mode a plain ``open(path, "w")`` would give: the existing file's, else 0666 less
    the umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_UMASK


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
        with contextlib.suppress(OSError):  # e.g. a vfat mount: keep mkstemp's mode
            os.fchmod(fd, _mode(path))  # mkstemp's 0600 would make the result private
        try:
            f = os.fdopen(fd, mode, encoding=None if mode == "wb" else encoding)
        except BaseException:
            os.close(fd)
            raise
        with f:
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


def remove_stale(directory: str | os.PathLike[str], name: str | None = None) -> list[Path]:
    """Delete the temporaries that a killed :func:`atomic_write` of ``directory/name`` (of any
    file of ``directory`` for ``name=None``) left.

    Call it only while holding the directory's :class:`RunLock` (another writer's temporary is
    not stale). Only names of the exact shape ``.NAME.XXXXXXXX.tmp`` are touched. Returns the
    removed paths.
    """
    import re

    stem = re.escape(name) if name is not None else r".+"
    pattern = re.compile(rf"\.{stem}\.{_RANDOM}{re.escape(TMP_SUFFIX)}")
    removed = []
    for tmp in Path(directory).iterdir():
        if pattern.fullmatch(tmp.name) and tmp.is_file() and not tmp.is_symlink():
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
        """Take the lock, or raise :class:`RunLocked` when another process holds it.

        Raises:
            RunLocked: another process holds the lock.
            OSError: the lock file cannot be opened or locked (e.g. it is a directory, or the
                file system has no locks); never a symlink, which is not followed.
        """
        import errno
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = f" (pid {int(self.path.read_text().strip())})"
            raise RunLocked(f"{self.path.parent} is in use by another kexue process{holder}") \
                from err
        with contextlib.suppress(OSError):  # the pid is a courtesy for the message above
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (closing the descriptor drops the flock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
