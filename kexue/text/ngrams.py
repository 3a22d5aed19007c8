"""Exact n-gram counting over Chinese text (Han and mixed-script units), on one core or many.

Units. Text is read as runs of units: a Han character of U+4E00–U+9FFF has the fixed code
``ord(c) − 0x4E00 + 1`` in [1, 20992]; with ``script="mixed"`` a run of Latin letters and digits
(ASCII or full-width, with inner joiners: "PM2.5", "COVID-19", "5G") is one unit too, NFKC-
normalised, with a corpus-specific code above the Han codes (:mod:`kexue.text._script`). Every
other character (punctuation, whitespace, other scripts) ends a run, and no n-gram crosses a
run boundary. Every code is < 2^16; 0 marks a boundary.

An n-gram w = c_1 … c_n (n ≥ 2) is stored as the 64-bit key

    key(w) = id(c_1 … c_{n−1}) · 2^16 + code(c_n),

where id(·) is the rank of the (n−1)-prefix among the sorted (n−1)-grams of the same table, so
each level is one sorted ``uint64`` array whatever n is, sorting keys sorts n-grams
lexicographically, and a string is found with n ``searchsorted`` steps. Counting level n is one
sort of the keys of all candidate positions (the position is packed into the low bits of the
sort key, so a plain ``np.sort`` yields the grouping permutation), no hashing, so counts are
exact. The packed sort needs ``bits(#kept (n−1)-grams) + 16 + bits(#candidates in a chunk) ≤
64``: with 4 M-character chunks (22 bits) up to 2^26 (67 M) kept (n−1)-grams per level, with
2^24-character chunks 2^24 (16.7 M); beyond, a chunk's level falls back to a stable
``argsort`` (exact, about three times slower).

Pruning (Apriori). An n-gram is kept iff count ≥ ``min_count`` and both its (n−1)-prefix and
(n−1)-suffix are kept. Since count(w) ≤ count(prefix) and count(w) ≤ count(suffix), this discards
no n-gram whose count reaches ``min_count``: the kept counts are exactly the true counts.

* :func:`count_ngrams`: one chunk is counted in memory with pruning at count time; a bigger
  corpus is counted level by level as map/reduce over shards through a driver (this process, a
  process pool, any ``concurrent.futures.Executor``, a Dask cluster), bit-identical whatever
  runs it (:mod:`kexue.text._ngram_engine`, :mod:`kexue.text._drivers`).
* :class:`NgramCounter` (streaming, Han only): ``update`` counts *all* n-grams n ≤ ``max_n`` of
  a chunk with no pruning, ``merge``/``+`` adds two counters exactly, ``finalize(min_count)``
  prunes once, after the merge. :func:`count_chunk` is its map stage. Its memory grows with the
  number of distinct n-grams; :func:`count_ngrams` prunes level by level instead.

Memory model. A chunk of L characters costs O(L) int64 working arrays per level (positions, keys,
ids) plus its own tables: roughly 40·L bytes at peak per level, per worker. The driver holds the
kept n-grams of the levels done so far and the merged distinct candidates of the current level
(16 bytes each), which depend on ``min_count`` and the corpus's vocabulary, not on the stream's
length; per-position state lives in the workers' spill (≤ about 4 bytes per character).

References:
    https://kexue.fm/archives/6540 (分享一次专业领域词汇的无监督挖掘)
    https://kexue.fm/archives/3491 (新词发现的信息熵方法与实现)
    Agrawal & Srikant, "Fast algorithms for mining association rules", VLDB 1994 (Apriori).
"""

from __future__ import annotations

import collections
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kexue._checks import check_int
from kexue.text._drivers import MemoryShard, Shard, resolve_driver
from kexue.text._ngram_engine import (
    _CODE_MASK,
    _MAX_CHUNK,
    ALPHABET_SIZE,
    CODE_BITS,
    HAN_FIRST,
    HAN_LAST,
    _chunks,
    _count_codes,
    _encode,
    _find,
    _Level,
    _sorted_union,
    _spill_dir,
    _suffix_ids,
    _translate,
    count_shards,
    new_run,
)
from kexue.text._script import Alphabet, atom_counts, check_script, scan, units

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


_HAN_ONLY = re.compile(f"[{chr(HAN_FIRST)}-{chr(HAN_LAST)}]+")


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
    """Exact, unpruned Han n-gram counts for n = 1..max_n; add chunks with :meth:`update`.

    Han characters only (as ``script="han"``); for mixed-script units and bounded memory use
    :func:`count_ngrams`.

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
                prefix = (lev.keys >> np.uint64(CODE_BITS)).astype(np.int64)
                suffix = _suffix_ids(self.levels, n, memo)
                keep &= (newid[prefix] >= 0) & (newid[np.maximum(suffix, 0)] >= 0) & (suffix >= 0)
                keys = _translate(lev.keys[keep], newid)
            else:
                keys = lev.keys[keep]
            levels.append(_Level(keys, lev.counts[keep]))
            newid = np.where(keep, np.cumsum(keep) - 1, -1)
        return NgramTable(levels, total_chars=self.total_chars, min_count=min_count,
                          alphabet=Alphabet("han"))

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


def _as_shards(texts: object) -> list[Shard] | None:
    """``texts`` as a list of shards when it is a sequence of them, else ``None``."""
    if not isinstance(texts, (list, tuple)) or not texts or not isinstance(texts[0], Shard):
        return None
    for i, s in enumerate(texts):
        if not isinstance(s, Shard) or isinstance(s, str):
            raise ValueError(
                f"texts[{i}] must be a Shard like texts[0] (a sequence of shards), got "
                f"{type(s).__name__}"
            )
    keys = collections.Counter(s.key for s in texts)
    dup = [k for k, c in keys.items() if c > 1]
    if dup:
        raise ValueError(f"texts must be shards with unique keys, got {dup[0]!r} twice")
    return list(texts)


def _batches(
    chunks: Iterable[list[str]], size: int | None
) -> Iterator[list[MemoryShard]]:
    """In-memory shards of the chunks, ``size`` at a time (all at once for ``None``)."""
    batch: list[MemoryShard] = []
    for i, chunk in enumerate(chunks):
        batch.append(MemoryShard(f"texts:{i}", chunk))
        if size is not None and len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _count_one(texts: list[str], max_n: int, min_count: int, script: str) -> NgramTable:
    """The whole corpus as one chunk: Apriori pruning while counting, in this process."""
    s = scan(texts, script)
    alphabet = Alphabet.build(script, *atom_counts(s), min_count)
    levels = _count_codes(alphabet.resolve(s), max_n, min_count)
    return NgramTable(levels, total_chars=int(np.count_nonzero(s.precodes)),
                      min_count=min_count, alphabet=alphabet,
                      stats={"shards": 1, "atom_chars": len(s.atoms)})


def count_ngrams(
    texts: str | Iterable[str] | Callable[[], Iterable[str]] | Sequence[Shard],
    max_n: int,
    min_count: int = 1,
    *,
    processes: int = 1,
    chunk_chars: int = 4_000_000,
    script: str = "mixed",
    scheduler: object = None,
) -> NgramTable:
    """Count all n-grams n = 1..max_n of a corpus exactly and keep those with count ≥ min_count.

    Units are Han characters and, with ``script="mixed"``, runs of Latin letters and digits
    ("PM2.5", "5G": one unit each, see :mod:`kexue.text._script`). The result is the same, to
    the bit, whatever runs the counting and however the corpus is cut.

    * The corpus fits one chunk of ``chunk_chars`` characters: counted in this process, with
      Apriori pruning at count time.
    * Otherwise: level-wise Apriori as map/reduce over shards (in-memory shards of about
      ``chunk_chars`` characters, or the ``texts`` given as shards) through a driver: this
      process (``processes=1``), ``processes`` processes on this machine (this one and
      ``processes − 1`` spawned, :class:`~kexue.text._drivers.PoolDriver`), or ``scheduler``
      (a ``concurrent.futures.Executor``, ``"local:N"`` / ``"tcp://HOST:PORT"`` / a
      ``distributed.Client`` for Dask). Level 1 counts units and builds the corpus's
      alphabet; level n counts only the n-grams whose (n−1)-prefix and (n−1)-suffix survived
      (exact: a frequent n-gram's sub-grams are at least as frequent); counts merge as an exact
      tree; only the survivors of a level travel to the workers. A worker keeps each shard's
      state between levels in its temporary directory (about 4 bytes per character at the
      peak, removed at the end, on error too) and rebuilds it from the shard when it is
      missing. A one-shot iterable (a generator, a stdin
      :class:`~kexue.text.corpus.Corpus`) is read once, in batches, so memory stays bounded
      by a few chunks plus the candidate n-grams of one level, whatever the stream's length.

    Args:
        texts: a string, an iterable of strings, a callable returning one (called once), or a
            sequence of :class:`~kexue.text._drivers.Shard` objects (e.g.
            :func:`kexue.text.shards.plan_shards`) that the workers read themselves.
        max_n: longest n-gram (in units), ≥ 1.
        min_count: minimum count of a kept n-gram, ≥ 1.
        processes: processes that count on this machine, this one included, ≥ 1 (not with
            ``scheduler``).
        chunk_chars: characters per chunk (and per piece of a shard that a worker counts at
            once), in [1, 2^24].
        script: ``"mixed"`` (Han and Latin letter/digit atoms) or ``"han"`` (Han only).
        scheduler: where to run instead of a local pool (see above).

    Returns:
        The :class:`NgramTable` of kept n-grams with exact counts.

    Raises:
        ValueError: on an argument out of range, a non-``str`` text, or a bad ``scheduler``.
        OSError: when a spill file cannot be created, written or read (no room or no write
            permission in the temporary directory, a file size limit); the message names the
            file and the cause, and the run's spill is removed.
    """
    max_n = check_int("max_n", max_n, low=1)
    min_count = check_int("min_count", min_count, low=1)
    processes = check_int("processes", processes, low=1)
    chunk_chars = check_int("chunk_chars", chunk_chars, low=1, high=_MAX_CHUNK)
    script = check_script(script)
    driver_cm = resolve_driver(processes, scheduler)  # validates; starts nothing yet
    shards = _as_shards(texts)
    one_shot = False
    if shards is None:
        if isinstance(texts, str):
            texts = [texts]
        elif callable(texts):
            texts = texts()
        one_shot = not isinstance(texts, (list, tuple))
        chunks = _chunks(texts, chunk_chars)  # type: ignore[arg-type]
        first = next(chunks, [])
        second = next(chunks, None)
        if second is None:  # whole corpus in one chunk: prune while counting
            return _count_one(first, max_n, min_count, script)

        def all_chunks() -> Iterator[list[str]]:
            yield first
            yield second
            yield from chunks

    run = new_run()
    try:
        with driver_cm as driver:
            if shards is not None:
                batches: Iterable[Sequence[Shard]] = [shards]
            else:
                size = 2 * int(getattr(driver, "parallelism", 1) or 1) if one_shot else None
                batches = _batches(all_chunks(), size)
            counted = count_shards(driver, batches, max_n, min_count, script, chunk_chars, run)
    finally:
        shutil.rmtree(_spill_dir(run), ignore_errors=True)
    return NgramTable(counted.levels, total_chars=counted.total_chars, min_count=min_count,
                      alphabet=counted.alphabet,
                      stats={"shards": counted.shards, "spill_bytes": counted.spill,
                             "atom_chars": counted.atom_chars})


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

    Units (Han characters, and atoms such as "PM2.5" with ``script="mixed"``) are coded by
    :attr:`alphabet`; :meth:`strings`, :meth:`lookup`, :meth:`count` and ``table[gram]`` go
    through it (a lookup NFKC-normalises an atom: "ＰＭ２．５" finds "PM2.5").

    Attributes:
        max_n: longest n-gram length (in units) in the table.
        total_chars: number of units (Han characters and atoms) in the corpus.
        min_count: the pruning threshold used.
        alphabet: the :class:`~kexue.text._script.Alphabet` of the corpus's units.
        stats: how it was counted: ``shards`` (1: one chunk in this process), ``atom_chars``
            (occurrences of mixed-script atoms among ``total_chars``, rare ones included) and,
            for the sharded path, ``spill_bytes`` (bytes of per-shard state kept on the
            workers' disks after each level, summed over shards; the spill peaks at about the
            largest).
    """

    def __init__(self, levels: list[_Level], *, total_chars: int, min_count: int,
                 alphabet: Alphabet | None = None, stats: dict[str, Any] | None = None) -> None:
        self._levels = levels
        self.max_n = len(levels)
        self.total_chars = check_int("total_chars", total_chars, low=0)
        self.min_count = check_int("min_count", min_count, low=1)
        self.alphabet = alphabet if alphabet is not None else Alphabet("han")
        self.stats = dict(stats or {})
        self._cache: dict[tuple[str, int], np.ndarray] = {}

    @property
    def script(self) -> str:
        """``"mixed"`` or ``"han"``: what counted as a unit."""
        return self.alphabet.script

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
        return (self._level(n).keys >> np.uint64(CODE_BITS)).astype(np.int64)

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
                out[:, k - 1] = (keys & _CODE_MASK).astype(np.int32)
                idx = (keys >> np.uint64(CODE_BITS)).astype(np.int64)
            self._cache[key] = out
        return self._cache[key]

    def strings(self, n: int) -> list[str]:
        """The kept n-grams of length ``n`` as strings (atoms in the corpus's own form), in the
        order of :meth:`counts`."""
        return self.alphabet.decode(self.codes(n))

    def index(self, codes: np.ndarray) -> np.ndarray:
        """Vectorised lookup: ids (length n) of the rows of an ``(m, n)`` code array (−1: absent).

        Codes ≤ 0 (boundaries) or ≥ 2^16 never match.
        """
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or not 1 <= codes.shape[1] <= self.max_n:
            raise ValueError(
                f"codes must have shape (m, n) with 1 <= n <= {self.max_n}, got {codes.shape}"
            )
        valid = (codes > 0) & (codes < 1 << CODE_BITS)
        codes = np.where(valid, codes, 0).astype(np.uint64)
        ids = np.where(valid[:, 0], _find(self._levels[0].keys, codes[:, 0]), -1)
        for k in range(1, codes.shape[1]):
            q = (np.maximum(ids, 0).astype(np.uint64) << np.uint64(CODE_BITS)) | codes[:, k]
            ids = np.where((ids >= 0) & valid[:, k], _find(self._levels[k].keys, q), -1)
        return ids

    def lookup(self, grams: Sequence[str]) -> np.ndarray:
        """Counts of many strings at once (0 for absent or pruned ones); any lengths.

        A string is an n-gram when it is made of units only (Han characters, atoms in any
        NFKC-equal form); anything else (punctuation, a space, a rare atom) counts 0.
        """
        grams = _check_texts(grams)
        out = np.zeros(len(grams), dtype=np.int64)
        by_len: dict[int, tuple[list[int], list[np.ndarray]]] = {}
        han_rows: dict[int, list[int]] = {}
        for i, g in enumerate(grams):
            if _HAN_ONLY.fullmatch(g):  # the common case: codes without the alphabet
                if len(g) <= self.max_n:
                    han_rows.setdefault(len(g), []).append(i)
                continue
            parts = units(g, self.script)
            if not parts or len(parts) > self.max_n or "".join(parts) != g:
                continue
            codes = self.alphabet.encode([g])[:-1]  # (n,) then the text's closing boundary
            if codes.shape[0] == len(parts) and codes.all():
                rows, arrays = by_len.setdefault(len(parts), ([], []))
                rows.append(i)
                arrays.append(codes)
        for n, rows in han_rows.items():
            codes = encode([grams[i] for i in rows])[:-1]
            codes = np.delete(codes, np.arange(n, codes.shape[0], n + 1)).reshape(len(rows), n)
            by_len.setdefault(n, ([], []))
            by_len[n][0].extend(rows)
            by_len[n][1].extend(codes)
        for n, (rows, arrays) in by_len.items():
            ids = self.index(np.stack(arrays).reshape(len(rows), n))
            cnt = self._levels[n - 1].counts
            out[rows] = np.where(ids >= 0, cnt[np.maximum(ids, 0)], 0) if cnt.size else 0
        return out

    def count(self, gram: str) -> int:
        """Exact count of one n-gram (0 if absent, pruned, or not units of length ≤ max_n)."""
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
