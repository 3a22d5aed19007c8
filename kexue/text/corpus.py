"""Reading a text corpus: one document per line, JSON lines, gzip, directories and stdin.

Word discovery (https://kexue.fm/archives/6540 and the nlp-zero note it builds on) makes
several streaming passes over raw text, so the reader is lazy: a :class:`Corpus` re-opens its
inputs on every iteration and holds at most one line in memory. What it read and what it could
not read is kept in :attr:`Corpus.summary`; nothing is dropped without being counted there.

Inputs, each a path (``str`` or :class:`os.PathLike`) or ``"-"`` for stdin:

- **lines**: UTF-8 text, one document per line (a leading BOM is removed, surrounding whitespace
  is stripped, blank lines are counted as skipped);
- **jsonl**: one JSON object per line; the document is the string under ``field``;
- either of them compressed with gzip (``.gz``, detected by its magic bytes);
- a directory: every file below it (recursively, hidden entries excluded) whose name ends in one
  of ``extensions``, in sorted order of relative path;
- a glob pattern (``*``, ``?``, ``[...]``; ``**`` spans directories) that is not itself an
  existing path: its matches in sorted order, each read as if named.

Problems and the ``errors`` policy. A line that is not valid UTF-8 (or a JSON string holding a
lone surrogate such as ``"\\ud800"``, which has no UTF-8 form), a binary file (a NUL byte in its
first 8 KiB, which also catches UTF-16), an empty file, a corrupt gzip stream, invalid JSON
(including nesting too deep to parse) or a JSON object without a string ``field`` give a message
naming ``file:line``; a file that cannot be opened (a broken symlink, no permission) or a
directory that cannot be listed gives a message naming it. With
``errors="stop"`` (default) the first one raises :class:`ValueError`; with ``errors="skip"`` the
line (or the whole file, for binary/empty/corrupt files) is skipped, counted under its reason in
``summary.skipped`` and the message is appended to ``summary.messages``. A file that is read
but yields no document (every line blank, not UTF-8, not valid JSON, ...) gets a message too,
saying why (counted as ``file_without_documents``). Messages about whole files are always kept,
so :meth:`ReadSummary.describe` names every skipped file and its reason.

Stdin can be read once per process: naming ``"-"`` twice, or reading it again in a later pass
or another corpus, is an error that says so (not an "empty file").

Example::

    corpus = read_documents(["news/", "extra.jsonl.gz"], errors="skip")
    for batch in chunks(corpus, 1 << 20):
        counter.update(batch)
    print(corpus.summary.describe())

References:
    https://kexue.fm/archives/6540 (分享一次专业领域词汇的无监督挖掘)
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import io
import json
import os
import sys
import weakref
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from kexue._checks import check_int

__all__ = [
    "DEFAULT_EXTENSIONS",
    "Corpus",
    "ReadSummary",
    "chunks",
    "read_documents",
]

Format = Literal["auto", "lines", "jsonl"]
Errors = Literal["stop", "skip"]

DEFAULT_EXTENSIONS: tuple[str, ...] = (
    ".txt",
    ".jsonl",
    ".ndjson",
    ".txt.gz",
    ".jsonl.gz",
    ".ndjson.gz",
)
_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_SNIFF_BYTES = 8192
_MAX_MESSAGES = 1000
_GZIP_MAGIC = b"\x1f\x8b"
_STDIN = "-"
# Reasons that concern a whole file (or directory): their messages are never capped.
_FILE_REASONS = frozenset({
    "binary_file", "empty_file", "corrupt_file", "unreadable_file", "unreadable_dir",
    "no_matching_files", "file_without_documents",
})
# Stdin streams some Corpus has read already, so that a second read says so instead of
# reporting an empty file.
_STDIN_READ: weakref.WeakSet[object] = weakref.WeakSet()
_STDIN_TWICE = (
    "- (stdin) given twice: stdin was already read {where} and can be read only once; save it "
    "to a file to read it more than once"
)


def _stdin_taken() -> bool:
    try:
        return sys.stdin in _STDIN_READ
    except TypeError:  # a stream that takes no weak references cannot be tracked
        return False


def _take_stdin() -> None:
    with contextlib.suppress(TypeError):
        _STDIN_READ.add(sys.stdin)


@dataclass
class ReadSummary:
    """What one pass over a :class:`Corpus` read and skipped.

    Attributes:
        files: Inputs opened (files, plus stdin), including those skipped as a whole.
        lines: Physical lines read from all inputs.
        documents: Documents yielded.
        chars: Characters in the yielded documents.
        skipped: Reason -> count of skipped lines or files. Reasons: ``"blank_line"``,
            ``"invalid_utf8"``, ``"invalid_json"``, ``"missing_field"``, ``"binary_file"``,
            ``"empty_file"``, ``"corrupt_file"``, ``"unreadable_file"``, ``"unreadable_dir"``,
            ``"no_matching_files"``, ``"file_without_documents"``.
        messages: One ``file:line: problem`` message per skipped item except blank lines, and
            one per file that yielded no document. Messages about whole files are all kept;
            of those about single lines, the first 1000 (the rest are still counted in
            ``skipped`` and in ``messages_dropped``).
        messages_dropped: Messages not stored because the cap was reached.
    """

    files: int = 0
    lines: int = 0
    documents: int = 0
    chars: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    messages_dropped: int = 0
    _line_messages: int = field(default=0, repr=False, compare=False)

    def describe(self) -> str:
        """A one-paragraph, human-readable account of the pass."""
        parts = [
            f"{self.files} input(s), {self.lines} line(s) read, "
            f"{self.documents} document(s) ({self.chars} chars) yielded"
        ]
        if self.skipped:
            reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items()))
            parts.append(f"skipped: {reasons}")
        lines = ["; ".join(parts)]
        lines.extend(self.messages)
        if self.messages_dropped:
            lines.append(f"... and {self.messages_dropped} more message(s)")
        return "\n".join(lines)

    def _skip(self, reason: str, message: str | None) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if message is None:
            return
        if reason in _FILE_REASONS:  # few, and the only word on why a file gave nothing
            self.messages.append(message)
            return
        if self._line_messages < _MAX_MESSAGES:
            self._line_messages += 1
            self.messages.append(message)
        else:
            self.messages_dropped += 1


class Corpus:
    """A lazily read, re-iterable collection of documents (see :func:`read_documents`).

    Every ``iter(corpus)`` re-opens the inputs and starts a fresh :attr:`summary`, so after a
    complete pass the summary describes exactly that pass. Stdin can be read only once: a second
    pass over a corpus that includes ``"-"`` raises :class:`RuntimeError`.
    """

    def __init__(
        self,
        sources: Sequence[str | Path],
        *,
        fmt: Format,
        field: str,
        errors: Errors,
        extensions: tuple[str, ...],
    ) -> None:
        self.sources = tuple(sources)
        self.fmt = fmt
        self.field = field
        self.errors = errors
        self.extensions = extensions
        self.summary = ReadSummary()
        self._stdin_consumed = False

    def __repr__(self) -> str:
        return (
            f"Corpus(sources={list(map(str, self.sources))!r}, fmt={self.fmt!r}, "
            f"field={self.field!r}, errors={self.errors!r})"
        )

    def __iter__(self) -> Iterator[str]:
        self.summary = ReadSummary()
        for source in self.sources:
            if source == _STDIN:
                if self._stdin_consumed:
                    raise RuntimeError(
                        _STDIN_TWICE.format(where="by an earlier pass over this corpus")
                    )
                if _stdin_taken():
                    raise RuntimeError(_STDIN_TWICE.format(where="by another corpus"))
                self._stdin_consumed = True
                _take_stdin()
                yield from self._read_stdin()
            elif Path(source).is_dir():
                yield from self._read_dir(Path(source))
            else:
                yield from self._read_file(Path(source))

    # -- sources ---------------------------------------------------------------------------

    def _read_dir(self, root: Path) -> Iterator[str]:
        files = sorted(
            (p for p in _walk(root, self) if p.name.lower().endswith(self.extensions)),
            key=lambda p: p.relative_to(root).as_posix(),
        )
        if not files:
            self._problem(
                "no_matching_files",
                f"{root}: directory has no files ending in {', '.join(self.extensions)}",
            )
            return
        for path in files:
            yield from self._read_file(path)

    def _note_if_fruitless(self, name: str, documents: int, skipped: dict[str, int]) -> None:
        """Say why a file that was read (not skipped whole) gave no document."""
        summary = self.summary
        if summary.documents > documents or any(
            summary.skipped.get(r, 0) > skipped.get(r, 0) for r in _FILE_REASONS
        ):
            return
        lost = {k: v - skipped.get(k, 0) for k, v in summary.skipped.items()
                if v > skipped.get(k, 0)}
        lines = sum(lost.values())
        if set(lost) == {"invalid_utf8"}:
            why = f"undecodable: none of its {lines} line(s) is UTF-8 (another encoding?)"
        elif set(lost) == {"blank_line"}:
            why = f"all {lines} line(s) blank"
        elif lost:
            why = "every line skipped: " + ", ".join(f"{k}={v}" for k, v in sorted(lost.items()))
        else:
            why = "no lines"
        summary._skip("file_without_documents", f"{name}: skipped, no document in it ({why})")

    def _read_stdin(self) -> Iterator[str]:
        self.summary.files += 1
        stream = sys.stdin
        buffer = getattr(stream, "buffer", None)
        fmt = "lines" if self.fmt == "auto" else self.fmt
        documents, skipped = self.summary.documents, dict(self.summary.skipped)
        if buffer is not None:
            yield from self._read_stream(buffer, "<stdin>", fmt)
        else:  # a text stream without a byte buffer (e.g. io.StringIO): already decoded
            # surrogatepass: a lone surrogate becomes bytes reported as invalid UTF-8
            lines = (line.encode("utf-8", "surrogatepass") for line in stream)
            yield from self._read_lines(lines, "<stdin>", fmt)
        self._note_if_fruitless("<stdin>", documents, skipped)

    def _open(self, path: Path) -> tuple[IO[bytes], bool, str] | None:
        """Opens a file: ``(raw file, gzip?, format)``, or None after reporting why not."""
        try:
            raw = open(path, "rb")  # noqa: SIM115 - the caller closes it
        except OSError as exc:
            self._problem("unreadable_file", f"{path}: cannot open ({exc.strerror or exc})")
            return None
        try:
            compressed = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
        except OSError as exc:
            raw.close()
            self._problem("unreadable_file", f"{path}: cannot read ({exc.strerror or exc})")
            return None
        name = path.name.lower()
        if compressed and name.endswith(".gz"):
            name = name[:-3]
        fmt = self.fmt
        if fmt == "auto":
            fmt = "jsonl" if name.endswith(_JSONL_SUFFIXES) else "lines"
        return raw, compressed, fmt

    def _read_file(self, path: Path) -> Iterator[str]:
        self.summary.files += 1
        opened = self._open(path)
        if opened is None:
            return
        raw, compressed, fmt = opened
        with raw:
            stream: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
            documents, skipped = self.summary.documents, dict(self.summary.skipped)
            yield from self._read_stream(stream, str(path), fmt)
            self._note_if_fruitless(str(path), documents, skipped)

    def _sniff(self, stream: IO[bytes], name: str) -> bytes | None:
        """The first bytes of a stream, or None after reporting it as corrupt, empty or binary.

        The sniff reads the first _SNIFF_BYTES in full (a single peek() gives only what one
        buffer fill brought, 4 KiB on many systems).
        """
        try:
            head = _read_up_to(stream, _SNIFF_BYTES)
        except (OSError, EOFError, zlib.error) as exc:
            self._problem("corrupt_file", f"{name}: cannot read ({exc})")
            return None
        if not head:
            self._problem("empty_file", f"{name}: empty file (no lines)")
            return None
        nul = head.find(b"\0")
        if nul >= 0:
            line = head.count(b"\n", 0, nul) + 1
            self._problem(
                "binary_file",
                f"{name}:{line}: binary file (NUL byte at offset {nul}; UTF-16 or not text)",
            )
            return None
        return head

    def _read_stream(self, stream: IO[bytes], name: str, fmt: str) -> Iterator[str]:
        # the lines are read from the sniffed head followed by the rest of the stream
        head = self._sniff(stream, name)
        if head is None:
            return
        buffered = io.BufferedReader(_Raw(stream, head), buffer_size=1 << 16)
        yield from self._read_lines(_guarded(buffered, name, self), name, fmt)

    # -- lines -----------------------------------------------------------------------------

    def _where(self, name: str, lineno: int) -> str:
        """``file:line`` of a message (a shard of a file overrides it: it knows only its own
        line numbers, see :mod:`kexue.text.shards`)."""
        return f"{name}:{lineno}"

    def _read_lines(
        self, lines: Iterable[bytes], name: str, fmt: str, *, file_start: bool = True
    ) -> Iterator[str]:
        # file_start: the first line is the file's first line (where a BOM may stand)
        summary = self.summary
        for lineno, raw in enumerate(lines, 1):
            summary.lines += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                self._problem(
                    "invalid_utf8",
                    f"{self._where(name, lineno)}: invalid UTF-8 at byte {exc.start} of the line "
                    f"({raw[exc.start : exc.start + 4]!r})",
                )
                continue
            if lineno == 1 and file_start and text.startswith("\ufeff"):
                text = text[1:]
            text = text.strip()
            if not text:
                summary._skip("blank_line", None)
                continue
            if fmt == "jsonl":
                doc = self._json_document(text, name, lineno)
                if doc is None:
                    continue
                text = doc.strip()
                if not text:
                    summary._skip("blank_line", None)
                    continue
            summary.documents += 1
            summary.chars += len(text)
            yield text

    def _json_document(self, text: str, name: str, lineno: int) -> str | None:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            self._problem("invalid_json", f"{self._where(name, lineno)}: invalid JSON ({exc.msg})")
            return None
        except RecursionError:
            self._problem(
                "invalid_json", f"{self._where(name, lineno)}: invalid JSON (nested too deeply)"
            )
            return None
        value = obj.get(self.field) if isinstance(obj, dict) else None
        if not isinstance(value, str):
            found = (
                type(obj).__name__
                if not isinstance(obj, dict)
                else ("no such key" if self.field not in obj else type(value).__name__)
            )
            self._problem(
                "missing_field",
                f"{self._where(name, lineno)}: expected a JSON object with a string field "
                f"{self.field!r} ({found})",
            )
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            self._problem(
                "invalid_utf8",
                f"{self._where(name, lineno)}: field {self.field!r} holds a lone surrogate "
                f"{value[exc.start]!r} at character {exc.start} (not encodable as UTF-8)",
            )
            return None
        return value

    def _problem(self, reason: str, message: str) -> None:
        if self.errors == "stop":
            raise ValueError(message)
        self.summary._skip(reason, message)


class _Raw(io.RawIOBase):
    """Adapts a readable byte stream (e.g. ``GzipFile``) to ``io.BufferedReader``, serving
    ``head`` (bytes already read from it) first."""

    def __init__(self, stream: IO[bytes], head: bytes = b"") -> None:
        self._stream = stream
        self._head = memoryview(head)

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._stream.read(len(b))
        b[: len(data)] = data
        return len(data)


def _read_up_to(stream: IO[bytes], size: int) -> bytes:
    """The first ``size`` bytes of ``stream`` (fewer only at its end), over as many reads as
    it takes: one read of a pipe or a gzip stream may return less than asked."""
    parts: list[bytes] = []
    got = 0
    while got < size:
        data = stream.read(size - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def _guarded(stream: IO[bytes], name: str, corpus: Corpus) -> Iterator[bytes]:
    """Iterates lines, turning a corrupt gzip stream into a reported problem."""
    lineno = 0
    while True:
        try:
            line = stream.readline()
        except (OSError, EOFError, zlib.error) as exc:
            corpus._problem(
                "corrupt_file", f"{corpus._where(name, lineno + 1)}: cannot read further ({exc})"
            )
            return
        if not line:
            return
        lineno += 1
        yield line


def _walk(root: Path, corpus: Corpus) -> Iterator[Path]:
    def onerror(exc: OSError) -> None:
        corpus._problem(
            "unreadable_dir",
            f"{exc.filename or root}: cannot list directory ({exc.strerror or exc})",
        )

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith("."):
                yield Path(dirpath) / name


def read_documents(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    fmt: Format = "auto",
    field: str = "text",
    errors: Errors = "stop",
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
) -> Corpus:
    """Opens files, directories or stdin as a lazily read stream of documents.

    Args:
        paths: One input or several; each a file, a directory (read recursively, sorted),
            ``"-"`` for stdin, or a glob pattern (``"news/*.txt.gz"``, ``"data/**/*.jsonl"``)
            that is not itself an existing path, read as its sorted matches. Gzip is detected
            from the content.
        fmt: ``"lines"`` (one document per line), ``"jsonl"`` (one JSON object per line, the
            document under ``field``) or ``"auto"``: jsonl for names ending in ``.jsonl`` or
            ``.ndjson`` (before ``.gz``), lines otherwise (stdin included).
        field: The JSON key holding the document text.
        errors: ``"stop"`` raises :class:`ValueError` on the first unreadable line or file;
            ``"skip"`` skips it and records it in ``summary`` (see module docstring).
        extensions: Name endings (case-insensitive) of the files taken from directories.

    Returns:
        A re-iterable :class:`Corpus` whose ``summary`` describes its latest pass.

    Raises:
        ValueError: If ``fmt``, ``errors``, ``field`` or ``extensions`` is invalid, or ``paths``
            is empty.
        FileNotFoundError: If a path does not exist or a pattern matches nothing (checked here,
            before any reading).
    """
    exts = _check_options(fmt, errors, field, extensions)
    sources = _sources(paths)
    return Corpus(sources, fmt=fmt, field=field, errors=errors, extensions=exts)


def _check_options(
    fmt: object, errors: object, field: object, extensions: object
) -> tuple[str, ...]:
    """Checks the reading options (see :func:`read_documents`); returns the lower-cased
    extensions."""
    if fmt not in ("auto", "lines", "jsonl"):
        raise ValueError(f"fmt must be 'auto', 'lines' or 'jsonl', got {fmt!r}")
    if errors not in ("stop", "skip"):
        raise ValueError(f"errors must be 'stop' or 'skip', got {errors!r}")
    if not isinstance(field, str) or not field:
        raise ValueError(f"field must be a non-empty string, got {field!r}")
    if isinstance(extensions, str):
        extensions = [extensions]
    try:
        exts = tuple(e.lower() for e in extensions)  # type: ignore[union-attr]
    except (TypeError, AttributeError):
        exts = ()
    if not exts or not all(isinstance(e, str) and e for e in exts):
        raise ValueError(f"extensions must be non-empty strings, got {extensions!r}")
    return exts


def _sources(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], *, stdin: bool = True
) -> list[str | Path]:
    """The inputs of ``paths`` in order: ``"-"``, existing paths, and the sorted matches of a
    glob pattern (``*``, ``?``, ``[...]``, ``**`` across directories) that is not itself an
    existing path.

    Raises:
        ValueError: if ``paths`` is empty or names stdin twice (or at all, with ``stdin=False``).
        FileNotFoundError: if a path does not exist or a pattern matches nothing.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    sources: list[str | Path] = []
    for p in paths:
        if isinstance(p, (str, os.PathLike)) and os.fspath(p) == _STDIN:
            if not stdin:
                raise ValueError(
                    "paths: - (stdin) cannot be split into shards that workers read; save it "
                    "to a file"
                )
            if _STDIN in sources:
                raise ValueError(
                    "paths: - (stdin) given twice; stdin can be read only once (save it to a "
                    "file to read it more than once)"
                )
            if _stdin_taken():
                raise ValueError(_STDIN_TWICE.format(where="by an earlier corpus"))
            sources.append(_STDIN)
            continue
        path = Path(p)
        if path.exists():
            sources.append(path)
            continue
        text = os.fspath(path)
        if any(c in text for c in "*?["):  # a glob pattern
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise FileNotFoundError(f"paths: the pattern {text!r} matches no file")
            sources.extend(Path(m) for m in matches)
            continue
        raise FileNotFoundError(f"paths: {text!r} does not exist")
    if not sources:
        raise ValueError("paths must name at least one file, directory or '-', got none")
    return sources


def chunks(documents: Iterable[str], chunk_chars: int) -> Iterator[list[str]]:
    """Groups a document stream into lists of about ``chunk_chars`` characters.

    A chunk is closed as soon as its documents hold at least ``chunk_chars`` characters, so each
    chunk exceeds the target by less than one document; a document longer than ``chunk_chars``
    forms a chunk of its own. Documents are never split, reordered or dropped.

    Args:
        documents: Any iterable of strings, e.g. a :class:`Corpus`.
        chunk_chars: Target characters per chunk, >= 1.

    Yields:
        Non-empty lists of documents, in input order.

    Raises:
        ValueError: If ``chunk_chars`` is not an int >= 1 (at the call, before any document
            is read).
    """
    return _chunks(documents, check_int("chunk_chars", chunk_chars, low=1))


def _chunks(documents: Iterable[str], chunk_chars: int) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for doc in documents:
        batch.append(doc)
        size += len(doc)
        if size >= chunk_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
