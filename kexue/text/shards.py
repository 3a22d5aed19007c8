"""Shards: pieces of a corpus on disk that the workers of a cluster read themselves.

Counting n-grams over a big corpus (https://kexue.fm/archives/6540) is a map over pieces of the
text and an exact merge of their counts. On a cluster the text should not travel through the
scheduler: :func:`plan_shards` looks at the inputs where kexue runs and describes the pieces as
small picklable :class:`FileShard` objects (paths and byte ranges, a few hundred bytes each); a
worker that gets one opens the file and reads its lines itself. Every worker must see the files
under the same paths (a shared or replicated filesystem).

The inputs and policies are those of :func:`kexue.text.corpus.read_documents` (files, directories,
glob patterns; text lines or JSON lines with a ``field``; gzip; the ``errors`` policy), and the
documents are exactly the same: the union of the shards' documents, in shard order, is what a
:class:`~kexue.text.corpus.Corpus` of the same inputs yields, and :meth:`ShardPlan.read_summary`
rebuilds the same :class:`~kexue.text.corpus.ReadSummary` (counts, messages with their line
numbers, the cap on messages) from the shards' own accounts.

How the inputs are cut:

- A plain file (text or JSON lines) is split by byte range at LINE boundaries: a shard owns the
  lines that START in its range ``[start, stop)``, every boundary is the byte after a ``\\n``, so
  each line (CRLF endings, a last line without a newline, multi-byte UTF-8 characters) is read
  by exactly one shard. A boundary is placed at the first line start at or after each multiple
  of ``shard_bytes``; a line longer than ``shard_bytes`` is not cut. Consecutive small files (or
  the tail of one and the head of the next) share a shard up to ``shard_bytes``.
- A gzip file cannot be entered in the middle: it is one shard of its own.
- Whole-file problems (a file that cannot be opened, an empty, binary or corrupt one, a directory
  that cannot be listed or holds no matching file) are found while planning: with
  ``errors="stop"`` the first one raises :class:`ValueError` before any counting starts, with
  ``"skip"`` the file gets no shard and the problem is in :attr:`ShardPlan.summary`. Problems in
  lines (not UTF-8, invalid JSON, no string ``field``) are found by the worker that reads them:
  ``"stop"`` raises a :class:`ValueError` naming ``file:line`` there, which reaches the caller.
- A file that a worker cannot open, or whose size changed since planning, is an error whatever
  the policy: the shards describe files as they were planned.

Example::

    plan = plan_shards(["corpus/", "extra/*.jsonl.gz"], errors="skip")
    table = count_ngrams(list(plan.shards), 7, 5, scheduler="tcp://10.0.0.5:8786")
    print(plan.read_summary().describe())

References:
    https://kexue.fm/archives/6540 (分享一次专业领域词汇的无监督挖掘)
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import io
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from kexue._checks import check_int
from kexue.text.corpus import (
    DEFAULT_EXTENSIONS,
    Corpus,
    Errors,
    Format,
    ReadSummary,
    _check_options,
    _guarded,
    _sources,
)

__all__ = [
    "DEFAULT_SHARD_BYTES",
    "FileShard",
    "Piece",
    "ShardPlan",
    "plan_shards",
    "word_counts",
]

DEFAULT_SHARD_BYTES = 64 << 20  # 64 MiB: ~22 M Han characters, a few seconds of counting
_SCAN_BLOCK = 1 << 16
# A shard that does not start its file knows only its own line numbers: its messages carry
# ``\0<line within the shard>\0`` until the lines before it are known.
_MARK = re.compile("\0([0-9]+)\0")


@dataclass(frozen=True)
class Piece:
    """A byte range of one file, read as lines.

    Attributes:
        path: the file.
        start, stop: the byte range ``[start, stop)``; the lines starting in it are read. For a
            gzip file, the whole (compressed) file: ``(0, size)``.
        size: the file's size when planned (checked again when read).
        fmt: ``"lines"`` or ``"jsonl"`` (resolved from ``"auto"`` by the name).
        compressed: gzip.
    """

    path: str
    start: int
    stop: int
    size: int
    fmt: str
    compressed: bool = False


@dataclass(frozen=True)
class FileShard:
    """Pieces of files that one task reads (see the module docstring).

    Attributes:
        key: a stable name, unique within its plan (and across plans with other ``key_prefix``).
        pieces: the byte ranges, in reading order.
        field: the JSON key holding the text (JSON lines).
        errors: ``"stop"`` or ``"skip"``, as in :func:`kexue.text.corpus.read_documents`.
    """

    key: str
    pieces: tuple[Piece, ...]
    field: str = "text"
    errors: str = "stop"

    @property
    def nbytes(self) -> int:
        """Bytes of input (compressed size for gzip)."""
        return sum(p.stop - p.start for p in self.pieces)

    def read(self) -> Iterator[str]:
        """The shard's documents, in order, exactly as a Corpus reads those lines.

        Raises:
            ValueError: (``errors="stop"``) on a line that cannot be read, naming ``file:line``;
                or if a file changed since planning.
            OSError: if a file cannot be opened here (naming it and the likely cause).
        """
        for piece in self.pieces:
            reader = _PieceReader(piece, self.field, self.errors)
            try:
                yield from reader.documents()
            except ValueError as error:
                raise ValueError(_absolute(str(error), piece)) from None

    def summaries(self) -> list[ReadSummary]:
        """One account per piece of reading it (line numbers relative to the piece where it
        does not start its file); :meth:`ShardPlan.read_summary` combines them."""
        out: list[ReadSummary] = []
        for piece in self.pieces:
            reader = _PieceReader(piece, self.field, self.errors)
            try:
                for _ in reader.documents():
                    pass
            except ValueError as error:
                raise ValueError(_absolute(str(error), piece)) from None
            out.append(reader.summary)
        return out


def _shard_summaries(shard: FileShard) -> list[ReadSummary]:
    return shard.summaries()


def _absolute(message: str, piece: Piece) -> str:
    """A shard's message with absolute line numbers (counts the lines before the piece)."""
    if not _MARK.search(message):
        return message
    before = _lines_before(piece.path, piece.start)
    return _MARK.sub(lambda m: str(before + int(m[1])), message)


def _lines_before(path: str, stop: int) -> int:
    n = 0
    with open(path, "rb") as f:
        left = stop
        while left > 0:
            block = f.read(min(left, 1 << 20))
            if not block:
                break
            n += block.count(b"\n")
            left -= len(block)
    return n


class _EventSummary(ReadSummary):
    """A ReadSummary that also keeps the reason of each stored message, so that summaries of
    pieces can be replayed, in order, into one (with the Corpus's cap on messages)."""

    def __init__(self) -> None:
        super().__init__()
        self.reasons: list[str] = []

    def _skip(self, reason: str, message: str | None) -> None:
        before = len(self.messages)
        super()._skip(reason, message)
        if len(self.messages) > before:
            self.reasons.append(reason)


class _Limited(io.RawIOBase):
    """At most ``n`` bytes of a file, from its current position."""

    def __init__(self, raw: IO[bytes], n: int) -> None:
        self._raw = raw
        self._left = n

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        if self._left <= 0:
            return 0
        data = self._raw.read(min(len(b), self._left))
        b[: len(data)] = data
        self._left -= len(data)
        return len(data)


class _PieceReader(Corpus):
    """Reads one piece with the Corpus's own line handling and problem reports."""

    def __init__(self, piece: Piece, field: str, errors: str) -> None:
        super().__init__((), fmt=piece.fmt, field=field, errors=errors,  # type: ignore[arg-type]
                         extensions=())
        self.piece = piece
        self.summary = _EventSummary()

    def _where(self, name: str, lineno: int) -> str:
        if self.piece.start == 0:
            return f"{name}:{lineno}"
        return f"{name}:\0{lineno}\0"

    def documents(self) -> Iterator[str]:
        piece = self.piece
        try:
            raw = open(piece.path, "rb")  # noqa: SIM115 - closed by the with block below
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"{piece.path}: cannot open ({exc.strerror or exc}); shards are planned where "
                "kexue runs and read by the workers, so every worker must see the file under "
                "this path",
            ) from exc
        with raw:
            size = os.fstat(raw.fileno()).st_size
            if size != piece.size:
                raise ValueError(
                    f"{piece.path}: changed since the shards were planned ({piece.size} bytes "
                    f"then, {size} now)"
                )
            if piece.compressed:  # the Corpus's own path: sniffed head, then the lines
                stream = gzip.GzipFile(fileobj=raw, mode="rb")
                yield from self._read_stream(stream, piece.path, piece.fmt)
                return
            raw.seek(piece.start)
            lines = io.BufferedReader(_Limited(raw, piece.stop - piece.start), 1 << 16)
            yield from self._read_lines(_guarded(lines, piece.path, self), piece.path,
                                        piece.fmt, file_start=piece.start == 0)


@dataclass(frozen=True)
class ShardPlan:
    """The shards of some inputs, and what planning read and skipped.

    Iterating a plan (or ``len``, indexing) goes over its shards.

    Attributes:
        shards: the shards, in reading order.
        summary: files opened while planning and whole-file problems (``errors="skip"``).
        nbytes: bytes of input in the shards (compressed size for gzip).
    """

    shards: tuple[FileShard, ...]
    summary: ReadSummary
    nbytes: int
    fmt: str
    field: str
    errors: str
    # the plan in Corpus order: ("open",) | ("problem", reason, message) |
    # ("read", name, ((shard index, piece index), ...))
    _entries: tuple[tuple[Any, ...], ...] = field(repr=False, default=())

    def __iter__(self) -> Iterator[FileShard]:
        return iter(self.shards)

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, i: int) -> FileShard:
        return self.shards[i]

    def read_summary(
        self, driver: Any = None, progress: Callable[[int], None] | None = None
    ) -> ReadSummary:
        """Reads every shard once (through ``driver``, in this process without one) and
        returns the :class:`ReadSummary` a Corpus pass over the same inputs would have.

        Args:
            driver: a :class:`kexue.text._drivers.Driver`; None reads here.
            progress: called with the characters of each shard as it is read.

        Raises:
            ValueError: (``errors="stop"``) on the first line that cannot be read.
        """
        if driver is None:
            results = []
            for shard in self.shards:
                results.append(shard.summaries())
                if progress is not None:
                    progress(sum(s.chars for s in results[-1]))
        else:
            handles = driver.map(_shard_summaries, self.shards)
            each = getattr(driver, "as_completed", None)
            if each is None or progress is None:
                results = driver.gather(handles)
                for r in results if progress is not None else ():
                    progress(sum(s.chars for s in r))
            else:
                results = [None] * len(handles)
                for i, r in each(handles):
                    results[i] = r
                    progress(sum(s.chars for s in r))
        return self._combine(results)

    def _combine(self, results: Sequence[list[ReadSummary]]) -> ReadSummary:
        """One Corpus-like summary from the plan and the shards' summaries (see read_summary)."""
        if len(results) != len(self.shards):
            raise ValueError(f"results: expected {len(self.shards)} shards' summaries, "
                             f"got {len(results)}")
        note = Corpus((), fmt="auto", field=self.field, errors="skip", extensions=())
        total = note.summary
        for entry in self._entries:
            if entry[0] == "open":
                total.files += 1
            elif entry[0] == "problem":
                total._skip(entry[1], entry[2])
            else:
                _, name, positions = entry
                documents, skipped = total.documents, dict(total.skipped)
                offset = 0
                for si, pi in positions:
                    part = results[si][pi]
                    replayed: dict[str, int] = {}
                    for reason, message in zip(getattr(part, "reasons", ()), part.messages,
                                               strict=True):
                        fixed = _MARK.sub(lambda m, o=offset: str(o + int(m[1])), message)
                        total._skip(reason, fixed)
                        replayed[reason] = replayed.get(reason, 0) + 1
                    for reason, n in part.skipped.items():  # blank lines, messages dropped
                        rest = n - replayed.get(reason, 0)
                        if rest:
                            total.skipped[reason] = total.skipped.get(reason, 0) + rest
                    total.messages_dropped += part.messages_dropped
                    total.lines += part.lines
                    total.documents += part.documents
                    total.chars += part.chars
                    offset += part.lines
                note._note_if_fruitless(name, documents, skipped)
        return total


class _Planner(Corpus):
    """Walks the inputs in Corpus order, sniffs each file like a Corpus and cuts it into pieces
    instead of reading its lines."""

    def __init__(self, sources: Sequence[str | Path], shard_bytes: int, **kwargs: Any) -> None:
        super().__init__(sources, **kwargs)
        self.shard_bytes = shard_bytes
        self.entries: list[tuple[Any, ...]] = []

    def _problem(self, reason: str, message: str) -> None:
        super()._problem(reason, message)  # raises with errors="stop"
        self.entries.append(("problem", reason, message))

    def _read_file(self, path: Path) -> Iterator[str]:
        self.summary.files += 1
        self.entries.append(("open",))
        opened = self._open(path)
        if opened is None:
            return
        raw, compressed, fmt = opened
        with raw:
            size = os.fstat(raw.fileno()).st_size
            stream: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
            if self._sniff(stream, str(path)) is None:
                return
            if compressed:
                pieces = [Piece(str(path), 0, size, size, fmt, True)]
            else:
                bounds = _line_bounds(raw, size, self.shard_bytes)
                pieces = [Piece(str(path), a, b, size, fmt)
                          for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            self.entries.append(("read", str(path), pieces))
        yield from ()


def _line_bounds(raw: IO[bytes], size: int, shard_bytes: int) -> list[int]:
    """``[0, b_1, ..., size]``: b_k is the first line start at or after b_{k-1} + shard_bytes."""
    bounds = [0]
    while bounds[-1] + shard_bytes < size:
        b = _line_start(raw, bounds[-1] + shard_bytes, size)
        if b >= size:
            break
        bounds.append(b)
    bounds.append(size)
    return bounds


def _line_start(raw: IO[bytes], at: int, size: int) -> int:
    """The first offset ≥ ``at`` (≥ 1) that starts a line (follows a ``\\n``), or ``size``."""
    pos = at - 1
    raw.seek(pos)
    while pos < size:
        block = raw.read(_SCAN_BLOCK)
        if not block:
            break
        i = block.find(b"\n")
        if i >= 0:
            return pos + i + 1
        pos += len(block)
    return size


def plan_shards(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    fmt: Format = "auto",
    field: str = "text",
    errors: Errors = "stop",
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    key_prefix: str = "s",
) -> ShardPlan:
    """Plans the shards of files, directories and glob patterns (see the module docstring).

    Args:
        paths: as :func:`kexue.text.corpus.read_documents`, except stdin (``"-"``), which no
            worker can read.
        fmt, field, errors, extensions: as :func:`kexue.text.corpus.read_documents`.
        shard_bytes: target bytes of input per shard, ≥ 1 (default 64 MiB).
        key_prefix: starts every shard's key (plans counted together need different ones).

    Returns:
        The :class:`ShardPlan`.

    Raises:
        ValueError: on a bad option, stdin, or (``errors="stop"``) a whole-file problem.
        FileNotFoundError: if a path does not exist or a pattern matches nothing.
    """
    exts = _check_options(fmt, errors, field, extensions)
    shard_bytes = check_int("shard_bytes", shard_bytes, low=1)
    if not isinstance(key_prefix, str) or not re.fullmatch(r"[A-Za-z0-9_.-]*", key_prefix):
        raise ValueError(f"key_prefix must be a string of letters, digits, '_', '.', '-', "
                         f"got {key_prefix!r}")
    planner = _Planner(_sources(paths, stdin=False), shard_bytes, fmt=fmt, field=field,
                       errors=errors, extensions=exts)
    for _ in planner:
        pass
    # pack the pieces into shards: a gzip file alone, consecutive plain pieces up to shard_bytes
    groups: list[list[Piece]] = []
    size = shard_bytes  # the open group's bytes (none open yet)
    entries: list[tuple[Any, ...]] = []
    for entry in planner.entries:
        if entry[0] != "read":
            entries.append(entry)
            continue
        positions = []
        for piece in entry[2]:
            n = piece.stop - piece.start
            if piece.compressed or size + n > shard_bytes or groups[-1][-1].compressed:
                groups.append([])
                size = 0
            groups[-1].append(piece)
            size += n
            positions.append((len(groups) - 1, len(groups[-1]) - 1))
        entries.append(("read", entry[1], tuple(positions)))
    shards = tuple(
        FileShard(f"{key_prefix}{i:06d}-{_digest(g)}", tuple(g), field, errors)
        for i, g in enumerate(groups)
    )
    return ShardPlan(shards, planner.summary, sum(s.nbytes for s in shards),
                     fmt, field, errors, tuple(entries))


def _digest(pieces: Sequence[Piece]) -> str:
    text = "\0".join(f"{p.path}\0{p.start}\0{p.stop}\0{p.size}" for p in pieces)
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()


def _shard_word_counts(shard: Any, vocab: Any) -> collections.Counter[str]:
    from kexue.text._drivers import resolve

    return resolve(vocab).word_counts(shard.read())


def _add_counters(
    a: collections.Counter[str], b: collections.Counter[str]
) -> collections.Counter[str]:
    out = a.copy()  # a task's inputs may be held elsewhere: never changed in place
    out.update(b)  # exact: integer counts, any order
    return out


def word_counts(vocab: Any, shards: Sequence[Any], driver: Any = None) -> collections.Counter[str]:
    """``vocab.word_counts`` over the documents of ``shards``, where they are read.

    One task per shard segments its documents with ``vocab`` (a
    :class:`~kexue.text.vocab.Vocabulary`, broadcast once) and counts the words; the counters
    are summed as a tree. The result equals ``vocab.word_counts`` of the documents in order.

    Args:
        vocab: anything with ``word_counts(texts) -> Counter``.
        shards: shards (:class:`FileShard` or any :class:`~kexue.text._drivers.Shard`).
        driver: a :class:`~kexue.text._drivers.Driver`; None counts here.

    Returns:
        The word counts.
    """
    if not shards:
        return collections.Counter()
    if driver is None:
        total: collections.Counter[str] = collections.Counter()
        for shard in shards:
            total.update(vocab.word_counts(shard.read()))
        return total
    return driver.reduce(_add_counters, driver.map(_shard_word_counts, shards,
                                                   driver.broadcast(vocab)))
