"""Corpus options shared by ``vocab`` and ``lm``: reading with a chars/s progress bar, and the
single-file output (``-o/--output``, with ``--out`` as a deprecated alias) written atomically
after its path was checked — before any counting starts. With ``--scheduler`` the inputs are
planned as file shards that the workers of a Dask cluster read themselves."""

from __future__ import annotations

import contextlib
import glob
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress, TextColumn, TimeElapsedColumn

from kexue.cli._common import (
    CliError,
    RunFailed,
    check_output_file,
    choices,
    deprecated_alias,
    err,
    first_line,
    missing_data,
)

Format = choices("Format", ("auto", "lines", "jsonl"))
ErrorMode = choices("ErrorMode", ("stop", "skip"))

Corpora = Annotated[list[Path] | None, typer.Argument(
    help="Text files (one document per line), JSON lines, .gz, directories, glob patterns "
         "(quoted: 'data/**/*.txt.gz'), or - for stdin. None: the embedded climate corpus.",
    show_default=False)]
Fmt = Annotated[Format, typer.Option("--format", help="How to read the files.")]  # type: ignore[valid-type]
Field = Annotated[str, typer.Option("--field", help="JSON lines: the text field.")]
Errors = Annotated[ErrorMode, typer.Option(  # type: ignore[valid-type]
    "--errors", help="stop: a bad line (not UTF-8), empty or binary file is an error; skip: "
    "skip it, count it, say why and go on.")]
Output = Annotated[Path | None, typer.Option("-o", "--output", help="Write all rows to this "
                                             "file (atomically).")]
OldOut = Annotated[Path | None, typer.Option("--out", hidden=True,
                                             help="Deprecated alias of --output.")]


def output_path(output: Path | None, old: Path | None, inputs: list[Path] | None) -> Path | None:
    """The checked output file of ``-o/--output`` (or the deprecated ``--out``)."""
    if output is not None and old is not None:
        raise CliError("give --output only (--out is its deprecated alias)")
    if old is not None:
        deprecated_alias("-o/--output", "--out")
    path = output if output is not None else old
    if path is None:
        return None
    return check_output_file(path, "--output", inputs or [])


def reader() -> Progress:
    return Progress(TextColumn("{task.description}"), TextColumn("{task.completed:,} chars"),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=err,
                    disable=not err.is_terminal)


def rate(bar: Progress, task: Any, chars: int, start: float) -> None:
    seconds = max(time.perf_counter() - start, 1e-9)
    bar.update(task, rate=f"{chars / seconds / 1e6:.2f} M chars/s")


def check_inputs(paths: list[Path] | None, option: str) -> None:
    """Name the option of an input path that does not exist (or a glob pattern that matches
    nothing), before any reading."""
    for path in paths or []:
        if str(path) == "-" or path.exists():
            continue
        if any(c in str(path) for c in "*?[") and glob.glob(str(path), recursive=True):
            continue
        raise CliError(f"{option} {path} does not exist")


def documents(paths: list[Path] | None, default: str, fmt: Any, field: str, errors: Any,
              bar: Progress, task: Any) -> tuple[list[str], Any, str]:
    """All documents of ``paths`` (or an embedded corpus) with a chars/s progress bar."""
    from kexue.text import data, read_documents

    fmt, errors = getattr(fmt, "value", fmt), getattr(errors, "value", errors)
    if paths and any(str(p) == "-" for p in paths) and sys.stdin is None:
        raise CliError("-: stdin is closed")
    try:
        if not paths:
            docs = getattr(data, default)()
            bar.update(task, advance=sum(len(d) for d in docs))
            return docs, None, f"embedded {default}"
        corpus = read_documents([str(p) for p in paths], fmt=fmt, field=field, errors=errors)
        docs = []
        for doc in corpus:
            docs.append(doc)
            bar.update(task, advance=len(doc))
    except (ValueError, OSError, RuntimeError, ImportError) as error:  # bad input, no package
        raise CliError(missing_data(error) or str(error)) from error
    if not docs:
        why = corpus.summary.describe().splitlines()[1:2] if corpus.summary else []
        raise CliError(f"no documents in {', '.join(map(str, paths))}"
                       + (f" ({why[0]})" if why else ""))
    return docs, corpus.summary, ", ".join(map(str, paths))


def write_tsv(path: Path | None, header: list[str], rows: list[tuple]) -> None:
    from kexue._io import atomic_write

    if path is None:
        return
    try:
        with atomic_write(path) as f:
            f.write("\t".join(header) + "\n")
            for row in rows:
                f.write("\t".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row)
                        + "\n")
    except OSError as error:
        raise RunFailed(f"--output {path}: {error.strerror or first_line(error)}") from error
    err.print(f"{len(rows):,} rows written to {path}", markup=False)


@contextlib.contextmanager
def cluster(scheduler: str) -> Iterator[Any]:
    """The Dask driver of ``--scheduler`` (a LocalCluster for ``local:N``, closed after), with
    one-line errors: dask missing, a bad address, a scheduler that does not answer."""
    from kexue.text._dask import dask_driver

    stack = contextlib.ExitStack()
    try:
        driver = stack.enter_context(dask_driver(scheduler))
    except ImportError as error:
        raise CliError(f"--scheduler {scheduler} needs dask.distributed, which is not "
                       "installed: pip install 'kexue[dask]'") from error
    except (ConnectionError, ValueError) as error:
        raise CliError(f"--scheduler: {first_line(error)}") from error
    with stack:
        yield driver


def cluster_failed(command: str, error: BaseException) -> BaseException | None:
    """A one-line RunFailed for an error of the cluster itself (a worker lost, a connection
    closed), None for others."""
    if type(error).__module__.split(".")[0] in ("distributed", "dask", "tornado"):
        return RunFailed(f"{command}: the Dask cluster failed: {type(error).__name__}: "
                         f"{first_line(error)}")
    return None


def sharded(paths: list[Path] | None, default: str, fmt: Any, field: str, errors: Any,
            shard_mb: int, prefix: str, driver: Any, bar: Progress,
            task: Any) -> tuple[list[Any], Any, str, int]:
    """``(shards, summary, source, chars)`` of ``paths`` planned as file shards that the
    workers read (a first pass through ``driver`` checks them and counts their characters), or
    of an embedded corpus as in-memory shards."""
    from kexue.text import data
    from kexue.text._drivers import MemoryShard
    from kexue.text.shards import plan_shards

    fmt, errors = getattr(fmt, "value", fmt), getattr(errors, "value", errors)
    if not paths:
        try:
            docs = getattr(data, default)()
        except (ValueError, OSError, ImportError) as error:
            raise CliError(missing_data(error) or str(error)) from error
        chars = sum(len(d) for d in docs)
        bar.update(task, advance=chars)
        return [MemoryShard(f"{prefix}-{default}", docs)], None, f"embedded {default}", chars
    if any(str(p) == "-" for p in paths):
        raise CliError("-: the workers of --scheduler cannot read stdin; save it to a file and "
                       "name the file")
    try:
        plan = plan_shards([str(p) for p in paths], fmt=fmt, field=field, errors=errors,
                           shard_bytes=shard_mb << 20, key_prefix=prefix)
        summary = plan.read_summary(driver, progress=lambda n: bar.update(task, advance=n))
    except (ValueError, OSError) as error:  # bad input; a file a worker cannot open
        raise CliError(first_line(error)) from error
    except Exception as error:
        failed = cluster_failed("reading", error)
        if failed is None:
            raise
        raise failed from error
    if not summary.documents:
        why = summary.describe().splitlines()[1:2]
        raise CliError(f"no documents in {', '.join(map(str, paths))}"
                       + (f" ({why[0]})" if why else ""))
    return list(plan.shards), summary, ", ".join(map(str, paths)), summary.chars
