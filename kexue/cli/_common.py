"""What every command shares: the two consoles, one-line errors, progress bars, common options,
and the checks that keep a user's files safe (outputs never overwrite inputs, writability is
known before the work starts, writes are atomic)."""

from __future__ import annotations

import contextlib
import enum
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

# results (tables, JSON) go to stdout; progress bars, status and messages to stderr
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

MAX_SEED = 2**63 - 1  # within manual_seed's and kexue._seeds.derive_seed's 64-bit range


class CliError(Exception):
    """An error the user can fix: printed as one line, exit status 2."""


class RunFailed(Exception):
    """The work could not finish (e.g. a full disk): one line, exit status 1; finished work is
    kept."""


def choices(name: str, values: Sequence[str]) -> type[enum.Enum]:
    """A str Enum of ``values``: typer checks the option against it and ``--help`` lists it."""
    return enum.Enum(name, {v: v for v in values}, type=str)  # type: ignore[return-value]


Seed = Annotated[int, typer.Option("--seed", min=0, max=MAX_SEED,
                                   help="Random seed (0 ≤ seed < 2**63).")]
MAX_THREADS = 4 * (os.cpu_count() or 1)
Threads = Annotated[int, typer.Option("--threads", min=1, max=MAX_THREADS,
                                      help="torch threads to use.")]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout "
                                    "instead of the table.")]
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")  # kexue.experiments.base.PRECISIONS; the trainers' autocast
Device = choices("Device", DEVICES)
Precision = choices("Precision", PRECISIONS)


def resolve_device_option(device: str, option: str = "--device") -> Any:
    """The torch.device of ``--device`` (auto: CUDA when available), resolved before any work;
    CUDA asked for where there is none is one line naming ``option``.

    Raises:
        CliError: naming ``option``.
    """
    from kexue.generative.common import resolve_device

    try:
        return resolve_device(device)
    except ValueError as error:
        raise CliError(f"{option} {device}: {first_line(error)}") from error


def set_threads(threads: int) -> None:
    """Set torch's intra-op threads (the ``--threads`` option)."""
    import torch

    torch.set_num_threads(threads)


def progress(*columns: Any, quiet: bool = False) -> Progress:
    """A progress bar on stderr (hidden when stderr is not a terminal)."""
    cols = columns or (TextColumn("{task.description}"), BarColumn(),
                       TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
    return Progress(*cols, console=err, disable=quiet or not err.is_terminal)


def fail_line(message: str) -> str:
    """The one stderr line of an error."""
    return "kexue: error: " + " ".join(str(message).split())


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def _inside(path: Path, directory: Path) -> bool:
    try:
        return path.resolve().is_relative_to(directory.resolve())
    except OSError:
        return False


def check_output_file(path: Path, option: str, inputs: Sequence[Path] = ()) -> Path:
    """Refuse an output file that is an input, a directory, or not writable — before any work.

    Raises:
        CliError: naming ``option``.
    """
    if str(path) == "-":
        raise CliError(f"{option} -: writing to stdout is not supported; give a file path")
    for source in inputs:
        if str(source) == "-":
            continue
        if _same_file(path, source):
            raise CliError(f"{option} {path} is also an input: refusing to overwrite it")
        if source.is_dir() and _inside(path, source):
            raise CliError(f"{option} {path} lies inside the input directory {source}: "
                           "refusing to write where the corpus is read")
    if path.is_dir():
        raise CliError(f"{option} {path} is a directory; give a file path")
    parent = path.parent
    if not parent.is_dir():
        raise CliError(f"{option} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CliError(f"{option} {path} is not writable")
    return path


def check_output_dir(path: Path, option: str = "--out") -> Path:
    """Refuse an output directory that is a file or cannot be created/written — without
    creating anything yet.

    Raises:
        CliError: naming ``option``.
    """
    if path.exists() and not path.is_dir():
        raise CliError(f"{option} {path} exists and is not a directory")
    probe = path
    while not probe.exists():  # the nearest existing ancestor must be writable
        probe = probe.parent
    if not probe.is_dir():
        raise CliError(f"{option} {path}: {probe} is not a directory")
    if not os.access(probe, os.W_OK):
        raise CliError(f"{option} {path} is not writable")
    return path


def make_dir(path: Path, option: str = "--out") -> Path:
    """Create ``path`` (and its parents), or one line naming ``option``."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CliError(f"{option} {path}: {error.strerror or error}") from error
    return path


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold the run lock of ``directory`` (one kexue process writes into it at a time)."""
    from kexue._io import RunLock, RunLocked

    lock = RunLock(directory / ".kexue.lock")
    try:
        lock.acquire()
    except RunLocked as error:
        raise CliError(f"{error}; wait for it to finish or use another --out") from error
    except OSError as error:
        raise CliError(f"cannot lock {lock.path}: {error.strerror or error}") from error
    try:
        yield
    finally:
        lock.release()


def text_argument(value: str) -> str:
    """A command-line text as typed: under a non-UTF-8 locale Python hands UTF-8 arguments over
    as surrogate escapes, which are decoded here (paths are left as they are)."""
    if any("\udc80" <= ch <= "\udcff" for ch in value):
        return os.fsencode(value).decode("utf-8", errors="replace")
    return value


def dumps(value: object) -> str:
    """JSON for stdout: non-ASCII kept where stdout can carry it, else escaped (never lost)."""
    import json

    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
    return json.dumps(value, indent=2, ensure_ascii=encoding not in ("utf8", "utf16", "utf32"))


def missing_data(error: BaseException) -> str | None:
    """The one-line message (ending in its pip command) of a missing data package, or None
    for other errors."""
    from kexue._packages import DataPackageError

    return first_line(error) if isinstance(error, DataPackageError) else None


def deprecated_alias(new: str, old: str) -> None:
    """Warn on stderr that option ``old`` is deprecated in favour of ``new``."""
    err.print(f"kexue: warning: {old} is deprecated, use {new}", markup=False)


def safe_streams() -> None:
    """Never crash on a terminal that cannot show a character (a non-UTF-8 locale)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="replace")
