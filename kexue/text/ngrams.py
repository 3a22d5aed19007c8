"""Exact character n-gram counting over Han text, vectorised, streaming and multi-process.

Text is read as runs of Han characters: every character outside the CJK Unified Ideographs block
U+4E00–U+9FFF (punctuation, digits, Latin letters, whitespace, full-width forms, rarer CJK
extensions) ends a run, and no n-gram crosses a run boundary. Each Han character gets the fixed
code ``ord(c) − 0x4E00 + 1`` in [1, 20992] (15 bits); 0 marks a boundary. Because the code does not
depend on the corpus, partial counts from different chunks, processes or machines agree on it.

An n-gram w = c_1 … c_n (n ≥ 2) is stored as the 64-bit key

    key(w) = id(c_1 … c_{n−1}) · 2^15 + code(c_n),

where id(·) is the rank of the (n−1)-prefix among the sorted (n−1)-grams of the same table, so
each level is one sorted ``uint64`` array whatever n is, sorting keys sorts n-grams
lexicographically, and a string is found with n ``searchsorted`` steps. Counting level n is one
sort of the keys of all positions (the position is packed into the low bits of the sort key, so a
plain ``np.sort`` yields the grouping permutation), no hashing, so counts are exact.

Pruning (Apriori). An n-gram is kept iff count ≥ ``min_count`` and both its (n−1)-prefix and
(n−1)-suffix are kept. Since count(w) ≤ count(prefix) and count(w) ≤ count(suffix), this discards
no n-gram whose count reaches ``min_count``: the kept counts are exactly the true counts.

* :class:`NgramCounter` (streaming): ``update`` counts *all* n-grams n ≤ ``max_n`` of a chunk
  with no pruning, ``merge``/``+`` adds two counters exactly, ``finalize(min_count)`` prunes once,
  after the merge.
* :func:`count_ngrams`: map/reduce over chunks of about ``chunk_chars`` characters. The map stage
  :func:`count_chunk` is a pure function of one chunk returning a picklable :class:`NgramCounter`
  and the reduce stage is the associative, commutative :meth:`NgramCounter.merge`, so the same two
  functions can run on a distributed engine (Spark/Ray/Dask) unchanged. When the whole input fits
  in one chunk, the chunk *is* the corpus and pruning is applied at count time, level by level
  (only positions whose prefix and suffix survived are sorted at the next level): the same exact
  result, several times faster. When the input spans several chunks and one process counts,
  :func:`count_ngrams` instead reads the input once, spools its codes to a temporary file and
  makes one pass over the spool per level with Apriori candidates only (see there), so memory
  does not grow with the length of the stream or the number of distinct rare n-grams.

Memory model. A chunk of L characters costs O(L) int64 working arrays per level (positions, keys,
ids) plus its own tables, at most L entries per level before pruning: roughly 40·L·max_n bytes at
peak. The level-wise path adds the kept n-grams of the levels done so far and the distinct
candidates of the current level (16 bytes each), which depend on ``min_count`` and the corpus's
vocabulary, not on the stream's length; per-position data lives in the temporary spool. The
map/reduce path's reduce side holds the distinct n-grams seen so far (unpruned, ≤ total
characters per level) as key/count pairs, 16 bytes each; the finalized table keeps only the
survivors.

References:
    https://kexue.fm/archives/6540 (分享一次专业领域词汇的无监督挖掘)
    https://kexue.fm/archives/3491 (新词发现的信息熵方法与实现)
    Agrawal & Srikant, "Fast algorithms for mining association rules", VLDB 1994 (Apriori).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from kexue._checks import check_int
from kexue.text._ngram_engine import (
    _CHAR_BITS,
    _CHAR_MASK,
    _MAX_CHUNK,
    ALPHABET_SIZE,
    HAN_FIRST,
    HAN_LAST,
    _count_codes,
    _count_levelwise,
    _encode,
    _find,
    _Level,
    _sorted_union,
    _suffix_ids,
    _translate,
)

__all__ = [
    "HAN_FIRST",
    "HAN_LAST",
    "ALPHABET_SIZE",
    "encode",
    "decode",
    "count_chunk",
    "count_ngrams",
    "NgramCounter",
    "NgramTable",
    "Neighbours",
]


def _check_texts(texts: object) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    out = list(texts)  # type: ignore[call-overload]
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise ValueError(f"texts[{i}] must be str, got {type(t).__name__}")
    return out


def encode(texts: str | Iterable[str]) -> np.ndarray:
    """Map texts to one int32 code array: Han characters to 1..20992, everything else to 0.

    Texts are separated by a 0, and the array ends with a 0, so runs never cross texts. A lone
    surrogate (e.g. from ``json.loads('"\\ud800"')``) is not Han and maps to 0 like any other
    non-Han character.

    Args:
        texts: a string or an iterable of strings.

    Returns:
        ``(L,)`` int32 array of codes.

    Raises:
        ValueError: if an element of ``texts`` is not a ``str``.
    """
    joined = "\n".join(_check_texts(texts)) + "\n"
    cp = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    han = (cp >= HAN_FIRST) & (cp <= HAN_LAST)
    return np.where(han, cp.astype(np.int64) - (HAN_FIRST - 1), 0).astype(np.int32)


def decode(codes: np.ndarray) -> list[str]:
    """Inverse of :func:`encode` for an ``(m, n)`` array of non-zero codes: m strings of length n.

    Raises:
        ValueError: if ``codes`` is not 2-D.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be 2-D (m, n), got shape {codes.shape}")
    m, n = codes.shape
    if m == 0:
        return []
    cp = np.ascontiguousarray(codes.astype("<u4") + np.uint32(HAN_FIRST - 1))
    return cp.view(f"<U{n}").reshape(m).tolist()


class NgramCounter:
    """Exact, unpruned n-gram counts for n = 1..max_n; add chunks with :meth:`update`.

    Counters are plain numpy arrays, so they pickle cheaply and merge exactly::

        total = count_chunk(texts_a, 6) + count_chunk(texts_b, 6)
        table = total.finalize(min_count=5)

    Args:
        max_n: longest n-gram to count, ≥ 1.

    Raises:
        ValueError: if ``max_n < 1``.
    """

    def __init__(self, max_n: int) -> None:
        self.max_n = check_int("max_n", max_n, low=1)
        self.levels: list[_Level] = [
            _Level(np.zeros(0, np.uint64), np.zeros(0, np.int64)) for _ in range(self.max_n)
        ]

    @property
    def total_chars(self) -> int:
        """Number of Han characters counted (the sum of unigram counts)."""
        return int(self.levels[0].counts.sum())

    def update(self, texts: str | Iterable[str]) -> NgramCounter:
        """Count all n-grams of ``texts`` (no pruning) and add them; returns ``self``."""
        other = _from_levels(self.max_n, _count_codes(_encode(_check_texts(texts)), self.max_n, 1))
        self.levels = self.merge(other).levels
        return self

    def merge(self, other: NgramCounter) -> NgramCounter:
        """The exact sum of two counters (a new counter; associative and commutative).

        Level by level: union the sorted keys (prefix ids translated to the merged ids of the
        level below), map each side's entries into the union by ``searchsorted``, add counts.

        Raises:
            ValueError: if the two counters have different ``max_n``.
        """
        if not isinstance(other, NgramCounter) or other.max_n != self.max_n:
            raise ValueError(
                f"other must be an NgramCounter with max_n={self.max_n}, got {other!r}"
            )
        out = NgramCounter(self.max_n)
        map_a = map_b = None
        for n in range(self.max_n):
            a, b = self.levels[n], other.levels[n]
            ka, kb = a.keys, b.keys
            if n > 0:  # translate prefix ids into the merged numbering of level n − 1
                ka = _translate(ka, map_a)
                kb = _translate(kb, map_b)
            union = _sorted_union(ka, kb)
            map_a = np.searchsorted(union, ka)
            map_b = np.searchsorted(union, kb)
            counts = np.zeros(union.shape[0], dtype=np.int64)
            counts[map_a] += a.counts  # map_a is strictly increasing: no repeated index
            counts[map_b] += b.counts
            out.levels[n] = _Level(union, counts)
        return out

    __add__ = merge

    def finalize(self, min_count: int = 1) -> NgramTable:
        """Prune (count ≥ ``min_count`` with kept prefix and suffix) and build the lookup table.

        Raises:
            ValueError: if ``min_count < 1``.
        """
        min_count = check_int("min_count", min_count, low=1)
        levels: list[_Level] = []
        newid = None
        memo: dict[int, np.ndarray] = {}
        for n, lev in enumerate(self.levels):
            keep = lev.counts >= min_count
            if n > 0:
                prefix = (lev.keys >> np.uint64(_CHAR_BITS)).astype(np.int64)
                suffix = _suffix_ids(self.levels, n, memo)
                keep &= (newid[prefix] >= 0) & (newid[np.maximum(suffix, 0)] >= 0) & (suffix >= 0)
                keys = _translate(lev.keys[keep], newid)
            else:
                keys = lev.keys[keep]
            levels.append(_Level(keys, lev.counts[keep]))
            newid = np.where(keep, np.cumsum(keep) - 1, -1)
        return NgramTable(levels, total_chars=self.total_chars, min_count=min_count)

    def __repr__(self) -> str:
        sizes = [lev.keys.shape[0] for lev in self.levels]
        return f"NgramCounter(max_n={self.max_n}, total_chars={self.total_chars}, sizes={sizes})"


def _from_levels(max_n: int, levels: list[_Level]) -> NgramCounter:
    c = NgramCounter(max_n)
    c.levels = levels
    return c


def count_chunk(texts: str | Sequence[str], max_n: int) -> NgramCounter:
    """Map stage: exact, unpruned counts of one chunk (a pure function; the result pickles).

    Raises:
        ValueError: if ``max_n < 1`` or an element of ``texts`` is not a ``str``.
    """
    max_n = check_int("max_n", max_n, low=1)
    return _from_levels(max_n, _count_codes(_encode(_check_texts(texts)), max_n, 1))


def _chunks(texts: Iterable[str], chunk_chars: int) -> Iterator[list[str]]:
    buf: list[str] = []
    size = 0
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"texts[{i}] must be str, got {type(t).__name__}")
        buf.append(t)
        size += len(t) + 1
        if size >= chunk_chars:
            yield buf
            buf, size = [], 0
    if buf:
        yield buf


def _count_chunk_args(args: tuple[list[str], int]) -> NgramCounter:
    return count_chunk(*args)


def count_ngrams(
    texts: str | Iterable[str] | Callable[[], Iterable[str]],
    max_n: int,
    min_count: int = 1,
    *,
    processes: int = 1,
    chunk_chars: int = 4_000_000,
) -> NgramTable:
    """Count all Han n-grams n = 1..max_n of a corpus exactly and keep those with count ≥ min_count.

    The corpus is cut into chunks of about ``chunk_chars`` characters (whole texts).

    * One chunk: counted in this process with Apriori pruning at count time (exact).
    * Several chunks, ``processes == 1``: level-wise Apriori passes. The input is read once
      (any iterable: a list, a generator, a stdin :class:`~kexue.text.corpus.Corpus`); pass 1
      counts unigrams and bigrams and spools the chunks' character codes and per-position
      bigram groups to an anonymous temporary file (≤ 10 bytes per character, deleted at the end);
      pass n ≥ 3 reads the spool back and counts only the n-grams whose (n−1)-prefix and
      (n−1)-suffix survived ``min_count`` (exact: a frequent n-gram's sub-grams are at least as
      frequent). Memory stays bounded by one chunk plus the candidate n-grams of one level,
      whatever the length of the stream, instead of every distinct n-gram of the corpus.
    * ``processes > 1``: map/reduce. :func:`count_chunk` counts each chunk unpruned in
      ``processes`` spawned worker processes, the partial counters are merged exactly with
      :meth:`NgramCounter.merge`, and :meth:`NgramCounter.finalize` prunes once; memory grows
      with the number of distinct n-grams (the layout a distributed engine would use).

    Args:
        texts: a string, an iterable of strings, or a callable returning one (called once).
        max_n: longest n-gram, ≥ 1.
        min_count: minimum count of a kept n-gram, ≥ 1.
        processes: worker processes, ≥ 1.
        chunk_chars: characters per chunk, in [1, 2^24].

    Returns:
        The :class:`NgramTable` of kept n-grams with exact counts.

    Raises:
        ValueError: on an argument out of range or a non-``str`` text.
        OSError: when the spool file of the level-wise path cannot be created, written or read
            (no room or no write permission in the temporary directory, a file size limit);
            the message names the file and the cause, and no spool file is left behind.
    """
    max_n = check_int("max_n", max_n, low=1)
    min_count = check_int("min_count", min_count, low=1)
    processes = check_int("processes", processes, low=1)
    chunk_chars = check_int("chunk_chars", chunk_chars, low=1, high=_MAX_CHUNK)
    if isinstance(texts, str):
        texts = [texts]
    elif callable(texts):
        texts = texts()
    chunks = _chunks(texts, chunk_chars)  # type: ignore[arg-type]
    first = next(chunks, [])
    second = next(chunks, None)
    if second is None:  # whole corpus in one chunk: prune while counting
        codes = _encode(first)
        levels = _count_codes(codes, max_n, min_count)
        return NgramTable(levels, total_chars=int(np.count_nonzero(codes)), min_count=min_count)

    def all_chunks() -> Iterator[list[str]]:
        yield first
        yield second
        yield from chunks

    if processes == 1:
        levels, total_chars = _count_levelwise(all_chunks(), max_n, min_count)
        return NgramTable(levels, total_chars=total_chars, min_count=min_count)

    total: NgramCounter | None = None
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        jobs = ((chunk, max_n) for chunk in all_chunks())
        for part in pool.imap_unordered(_count_chunk_args, jobs):
            total = part if total is None else total.merge(part)
    assert total is not None
    return total.finalize(min_count)


@dataclass(frozen=True)
class Neighbours:
    """Neighbour distributions of the n-grams of one level, in CSR form.

    The neighbours of n-gram ``i`` are ``chars[offsets[i]:offsets[i + 1]]`` (codes) with counts
    ``counts[offsets[i]:offsets[i + 1]]``; only neighbours whose (n+1)-gram was kept appear, so
    ``total[i] − counts[offsets[i]:offsets[i+1]].sum()`` occurrences sit at a run boundary or have
    a pruned (rare) neighbour.
    """

    offsets: np.ndarray  # (m + 1,) int64
    chars: np.ndarray  # (nnz,) int32 codes
    counts: np.ndarray  # (nnz,) int64
    total: np.ndarray  # (m,) int64, count of each n-gram


class NgramTable:
    """Kept n-grams with exact counts: a trie stored as one sorted key array per length.

    Attributes:
        max_n: longest n-gram length in the table.
        total_chars: number of Han characters in the corpus.
        min_count: the pruning threshold used.
    """

    def __init__(self, levels: list[_Level], *, total_chars: int, min_count: int) -> None:
        self._levels = levels
        self.max_n = len(levels)
        self.total_chars = check_int("total_chars", total_chars, low=0)
        self.min_count = check_int("min_count", min_count, low=1)
        self._cache: dict[tuple[str, int], np.ndarray] = {}

    def _level(self, n: int) -> _Level:
        check_int("n", n, low=1, high=self.max_n)
        return self._levels[n - 1]

    def __len__(self) -> int:
        return sum(lev.keys.shape[0] for lev in self._levels)

    def __repr__(self) -> str:
        sizes = [lev.keys.shape[0] for lev in self._levels]
        return f"NgramTable(total_chars={self.total_chars}, min_count={self.min_count}, {sizes=})"

    def size(self, n: int) -> int:
        """Number of kept n-grams of length ``n``."""
        return int(self._level(n).keys.shape[0])

    def counts(self, n: int) -> np.ndarray:
        """``(size(n),)`` int64 counts, in lexicographic (code) order of the n-grams."""
        return self._level(n).counts

    def prefix(self, n: int) -> np.ndarray:
        """``(size(n),)`` id (at length n − 1) of each n-gram's prefix c_1 … c_{n−1}; n ≥ 2."""
        if n < 2:
            raise ValueError(f"n must be >= 2 for prefixes, got {n!r}")
        return (self._level(n).keys >> np.uint64(_CHAR_BITS)).astype(np.int64)

    def suffix(self, n: int) -> np.ndarray:
        """``(size(n),)`` id (at length n − 1) of each n-gram's suffix c_2 … c_n; n ≥ 2."""
        if n < 2:
            raise ValueError(f"n must be >= 2 for suffixes, got {n!r}")
        key = ("suffix", n)
        if key not in self._cache:
            self._cache[key] = _suffix_ids(self._levels, n - 1)
        return self._cache[key]

    def codes(self, n: int) -> np.ndarray:
        """``(size(n), n)`` int32 character codes of the n-grams."""
        key = ("codes", n)
        if key not in self._cache:
            lev = self._level(n)
            out = np.empty((lev.keys.shape[0], n), dtype=np.int32)
            idx = np.arange(lev.keys.shape[0])
            for k in range(n, 0, -1):
                keys = self._levels[k - 1].keys[idx]
                out[:, k - 1] = (keys & _CHAR_MASK).astype(np.int32)
                idx = (keys >> np.uint64(_CHAR_BITS)).astype(np.int64)
            self._cache[key] = out
        return self._cache[key]

    def strings(self, n: int) -> list[str]:
        """The kept n-grams of length ``n`` as strings, in the order of :meth:`counts`."""
        return decode(self.codes(n))

    def index(self, codes: np.ndarray) -> np.ndarray:
        """Vectorised lookup: ids (length n) of the rows of an ``(m, n)`` code array (−1: absent).

        Codes ≤ 0 (non-Han) never match.
        """
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or not 1 <= codes.shape[1] <= self.max_n:
            raise ValueError(
                f"codes must have shape (m, n) with 1 <= n <= {self.max_n}, got {codes.shape}"
            )
        ids = _find(self._levels[0].keys, np.maximum(codes[:, 0], 0).astype(np.uint64))
        ids[codes[:, 0] <= 0] = -1
        for k in range(1, codes.shape[1]):
            q = (np.maximum(ids, 0).astype(np.uint64) << np.uint64(_CHAR_BITS)) | np.maximum(
                codes[:, k], 0
            ).astype(np.uint64)
            nxt = _find(self._levels[k].keys, q)
            ids = np.where((ids >= 0) & (codes[:, k] > 0), nxt, -1)
        return ids

    def lookup(self, grams: Sequence[str]) -> np.ndarray:
        """Counts of many strings at once (0 for absent or pruned ones); any lengths."""
        grams = _check_texts(grams)
        out = np.zeros(len(grams), dtype=np.int64)
        by_len: dict[int, list[int]] = {}
        for i, g in enumerate(grams):
            if 1 <= len(g) <= self.max_n:
                by_len.setdefault(len(g), []).append(i)
        for n, rows in by_len.items():
            codes = encode([grams[i] for i in rows])[:-1]
            codes = np.delete(codes, np.arange(n, codes.shape[0], n + 1)).reshape(len(rows), n)
            ids = self.index(codes)
            cnt = self._levels[n - 1].counts
            out[rows] = np.where(ids >= 0, cnt[np.maximum(ids, 0)], 0) if cnt.size else 0
        return out

    def count(self, gram: str) -> int:
        """Exact count of one n-gram (0 if absent, pruned, or not Han of length ≤ max_n)."""
        if not isinstance(gram, str):
            raise ValueError(f"gram must be str, got {type(gram).__name__}")
        return int(self.lookup([gram])[0])

    def __getitem__(self, gram: str) -> int:
        return self.count(gram)

    def neighbours(self, n: int, side: str = "right") -> Neighbours:
        """Right (or left) neighbour characters of every kept n-gram, from the (n+1)-gram table.

        Right neighbours group the (n+1)-grams c_1 … c_{n+1} by their prefix c_1 … c_n (already
        sorted that way); left neighbours group them by their suffix c_2 … c_{n+1} (one stable
        argsort). Requires n < max_n.

        Raises:
            ValueError: if ``side`` is not 'left'/'right' or n is not in [1, max_n − 1].
        """
        if side not in ("left", "right"):
            raise ValueError(f"side must be 'left' or 'right', got {side!r}")
        n = check_int("n", n, low=1, high=self.max_n - 1)
        m = self.size(n)
        ext_counts = self.counts(n + 1)
        if side == "right":
            group = self.prefix(n + 1)
            chars = self.codes(n + 1)[:, n] if ext_counts.size else np.zeros(0, np.int32)
            order = np.arange(group.shape[0])
        else:
            group = self.suffix(n + 1)
            chars = self.codes(n + 1)[:, 0] if ext_counts.size else np.zeros(0, np.int32)
            order = np.argsort(group, kind="stable")
        offsets = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(np.bincount(group, minlength=m), out=offsets[1:])
        return Neighbours(offsets, chars[order], ext_counts[order], self.counts(n))
