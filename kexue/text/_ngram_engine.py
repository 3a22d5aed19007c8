"""The counting engine behind :mod:`kexue.text.ngrams`: sorted-key kernels and level-wise Apriori.

Everything here works on plain numpy arrays and knows nothing of the public classes. Codes come
from :mod:`kexue.text._script` (Han characters at fixed codes, the corpus's mixed-script atoms
above them, 0 = boundary, every code < 2^16). An n-gram's key is

    key = id(prefix) · 2^16 + code(last unit),

with ``id`` its (n−1)-prefix's rank among the kept (n−1)-grams; see :mod:`kexue.text.ngrams`.

Two ways to count:

* :func:`_count_codes`: one code array (the corpus fits one chunk), level by level with Apriori
  pruning at count time, all in memory.
* :func:`count_shards`: level-wise Apriori as map/reduce over shards through a
  :class:`~kexue.text._drivers.Driver` (this process, a process pool, an executor, a Dask
  cluster: the same code, the same bits).

  - Level 1, map (:func:`_map_scan`): per shard, ``scan`` the text (in chunks of at most
    ``chunk_chars``), count Han codes (``bincount``) and atoms (exact dicts), and spill the
    pre-codes. Reduce: exact sums. The driver builds the :class:`~kexue.text._script.Alphabet`
    and the kept unigrams and broadcasts them.
  - Level n ≥ 2, map (:func:`_map_level`): per chunk, the positions where a kept (n−1)-gram
    starts and its id (from the spilled state of level n − 1 and the broadcast survivors), the
    candidate n-grams (an (n−1)-gram at i and one at i + 1: prefix and suffix kept, Apriori),
    their keys ``id(i) · 2^16 + last code of the (n−1)-gram at i + 1`` (no character codes are
    kept after level 1: the suffix's id carries its last code), one packed sort into distinct
    keys, counts and per-candidate groups; the state for level n + 1 is spilled, the sorted
    ``(keys, counts)`` returned. Reduce: an exact merge tree. The driver keeps the keys with
    count ≥ ``min_count`` and broadcasts them (only the survivors travel).

  Per-shard state between levels is spilled by the worker under
  ``tempfile.gettempdir()/kexue-ngrams-<run id>/`` and RECOMPUTED from ``shard.read()`` when it
  is missing (a task placed on another machine), so correctness never depends on placement. The
  state of level n is, per chunk, a bit per position (where a candidate starts), the candidate's
  group (1–4 bytes: as many as the chunk's distinct candidates need) and the distinct keys (5
  bytes each while the level has < 2^24 survivors); level 1 keeps the 2-byte pre-codes. A task
  writes its level-n file and then removes its level-(n − 1) file, so the spill peaks at about
  the largest level's state. The engine removes the run's spill at the end, on error too.

References:
    https://kexue.fm/archives/6540 (分享一次专业领域词汇的无监督挖掘)
    Agrawal & Srikant, "Fast algorithms for mining association rules", VLDB 1994 (Apriori).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import pickle
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from kexue.text._drivers import Driver, MemoryShard, Shard, _fold, resolve
from kexue.text._script import (
    ALPHABET_SIZE,
    ATOM_FIRST,
    HAN_FIRST,
    HAN_LAST,
    Alphabet,
    Scan,
    atom_counts,
    scan,
)

__all__ = ["HAN_FIRST", "HAN_LAST", "ALPHABET_SIZE", "CODE_BITS"]

CODE_BITS = 16  # a unit's code in a key: Han and atom codes are < 2^16
_CODE_MASK = np.uint64((1 << CODE_BITS) - 1)
_NCODES = 1 << CODE_BITS
_MAX_CHUNK = 1 << 24  # characters of a chunk (positions fit the packed sort and int32 groups)
_U64 = np.uint64


def _encode(texts: list[str]) -> np.ndarray:
    """Han-only codes of an already checked list of texts (int32, 0 = boundary)."""
    return scan(texts, "han").precodes.astype(np.int32)


# -- sorting kernels --


def _group_sorted(
    keys: np.ndarray, key_bits: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sort ``keys`` and group equal ones.

    Returns ``(order, sorted_keys, group, starts)``: the sorting permutation, the keys in sorted
    order, the group index of each sorted element, and the start of each group. The permutation
    comes from one ``np.sort`` of ``key << b | index`` when ``key_bits + b ≤ 64`` (b the bits of
    the number of keys; much faster than argsort), else from a stable argsort.
    """
    m = keys.shape[0]
    b = max(int(m).bit_length(), 1)
    if key_bits + b <= 64:
        packed = np.sort((keys << _U64(b)) | np.arange(m, dtype=_U64))
        order = (packed & _U64((1 << b) - 1)).astype(np.int64)
        sk = packed >> _U64(b)
    else:  # more than 2^(64 − key_bits) candidates in one chunk: exact, a few times slower
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
    flag = np.empty(m, dtype=bool)
    flag[:1] = True
    np.not_equal(sk[1:], sk[:-1], out=flag[1:])
    group = np.cumsum(flag, dtype=np.int64 if m >= 1 << 31 else np.int32)
    group -= 1
    starts = np.flatnonzero(flag)
    return order, sk, group, starts


@dataclass
class _Level:
    keys: np.ndarray  # (m,) uint64, sorted: prefix_id << 16 | last code (level 1: the code)
    counts: np.ndarray  # (m,) int64


def _count_codes(codes: np.ndarray, max_n: int, min_count: int) -> list[_Level]:
    """Count n-grams of one code array, pruning with ``min_count`` level by level (1 = none)."""
    L = codes.shape[0]
    cnt = np.bincount(codes, minlength=_NCODES)
    cnt[0] = 0
    keep = np.flatnonzero(cnt >= min_count)
    levels = [_Level(keep.astype(_U64), cnt[keep].astype(np.int64))]
    idmap = np.full(cnt.shape[0], -1, dtype=np.int64)
    idmap[keep] = np.arange(keep.shape[0])
    ids = idmap[codes]  # (L,) id of the kept 1-gram starting at each position, −1 if none
    for n in range(2, max_n + 1):
        k_prev = levels[-1].keys.shape[0]
        span = L - n + 1
        if span <= 0 or k_prev == 0:
            levels.append(_Level(np.zeros(0, _U64), np.zeros(0, np.int64)))
            ids = np.full(L, -1, dtype=np.int64)
            continue
        # prefix at i and suffix at i + 1 are both kept (n−1)-grams (Apriori; also: inside a run)
        pos = np.flatnonzero((ids[:span] >= 0) & (ids[1 : span + 1] >= 0))
        keys = (ids[pos].astype(_U64) << _U64(CODE_BITS)) | codes[pos + n - 1].astype(_U64)
        new_ids = np.full(L, -1, dtype=np.int64)
        if pos.shape[0] == 0:
            levels.append(_Level(np.zeros(0, _U64), np.zeros(0, np.int64)))
            ids = new_ids
            continue
        order, sk, group, starts = _group_sorted(keys, int(k_prev).bit_length() + CODE_BITS)
        counts = np.diff(starts, append=pos.shape[0])
        kept = counts >= min_count
        rank = np.where(kept, np.cumsum(kept) - 1, -1)
        new_ids[pos[order]] = rank[group]
        levels.append(_Level(sk[starts[kept]], counts[kept].astype(np.int64)))
        ids = new_ids
    return levels


def _sorted_union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # np.union1d goes through np.unique, which is an order of magnitude slower than a plain sort
    c = np.sort(np.concatenate([a, b]))
    if c.shape[0] == 0:
        return c.astype(_U64)
    flag = np.empty(c.shape[0], dtype=bool)
    flag[0] = True
    np.not_equal(c[1:], c[:-1], out=flag[1:])
    return c[flag].astype(_U64)


def _translate(keys: np.ndarray, idmap: np.ndarray) -> np.ndarray:
    prefix = (keys >> _U64(CODE_BITS)).astype(np.int64)
    return (idmap[prefix].astype(_U64) << _U64(CODE_BITS)) | (keys & _CODE_MASK)


def _suffix_ids(
    levels: list[_Level], n: int, memo: dict[int, np.ndarray] | None = None
) -> np.ndarray:
    """Ids (at level n − 1, 0-based level index) of the suffixes of level-n entries; −1 if absent.

    suffix(c_1 … c_n) = suffix(c_1 … c_{n−1}) followed by c_n, so one ``searchsorted`` per level.
    """
    memo = {} if memo is None else memo

    def suf(level: int) -> np.ndarray:
        if level in memo:
            return memo[level]
        keys = levels[level].keys
        last = keys & _CODE_MASK
        if level == 1:
            res = _find(levels[0].keys, last)
        else:
            p = (keys >> _U64(CODE_BITS)).astype(np.int64)
            ps = suf(level - 1)[p]
            q = (np.maximum(ps, 0).astype(_U64) << _U64(CODE_BITS)) | last
            res = np.where(ps >= 0, _find(levels[level - 1].keys, q), -1)
        memo[level] = res
        return res

    return suf(n)


def _find(sorted_keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Index of each query in ``sorted_keys``, −1 where absent."""
    if sorted_keys.shape[0] == 0:
        return np.full(queries.shape[0], -1, dtype=np.int64)
    i = np.searchsorted(sorted_keys, queries)
    ic = np.minimum(i, sorted_keys.shape[0] - 1)
    return np.where(sorted_keys[ic] == queries, ic, -1).astype(np.int64)


def _merge_tables(
    ka: np.ndarray, ca: np.ndarray, kb: np.ndarray, cb: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact sum of two tables of sorted distinct keys with counts (a linear merge).

    Each table is packed as ``key << c | count`` (c the bits of the largest count), which keeps
    it sorted; the two sorted runs are merged by one stable sort (timsort merges two runs in
    linear time), and a key found in both (two neighbours) keeps the sum of their counts. When
    the packed values would not fit 64 bits: the keys of b found in a add their counts there,
    the others are placed at ``searchsorted(a, b) + (their rank among the new keys)``.
    """
    if kb.shape[0] == 0:
        return ka, ca
    if ka.shape[0] == 0:
        return kb, cb
    c_bits = max(int(ca.max()), int(cb.max())).bit_length()
    if max(int(ka[-1]), int(kb[-1])).bit_length() + c_bits <= 64:
        shift = _U64(c_bits)
        packed = np.concatenate([(ka << shift) | ca.astype(_U64), (kb << shift) | cb.astype(_U64)])
        packed.sort(kind="stable")
        keys = packed >> shift
        counts = (packed & _U64((1 << c_bits) - 1)).astype(np.int64)
        dup = np.flatnonzero(keys[1:] == keys[:-1])  # (d,) the first of each equal pair
        if dup.shape[0] == 0:
            return keys, counts
        counts[dup] += counts[dup + 1]
        keep = np.ones(keys.shape[0], dtype=bool)
        keep[dup + 1] = False
        return keys[keep], counts[keep]
    ib = np.searchsorted(ka, kb)
    ic = np.minimum(ib, ka.shape[0] - 1)
    hit = ka[ic] == kb
    new = ~hit
    k_new = kb[new]
    pos_new = ib[new] + np.arange(k_new.shape[0])  # (n_new,) places in the merged table
    n = ka.shape[0] + k_new.shape[0]
    from_a = np.ones(n, dtype=bool)
    from_a[pos_new] = False
    keys = np.empty(n, dtype=_U64)
    keys[from_a] = ka
    keys[pos_new] = k_new
    counts = np.empty(n, dtype=np.int64)
    counts[from_a] = ca
    counts[pos_new] = cb[new]
    if hit.any():
        counts[np.flatnonzero(from_a)[ic[hit]]] += cb[hit]
    return keys, counts


# -- the spill: per-shard state between levels, on the worker's local disk --


def new_run() -> str:
    """A fresh run id (names the run's spill directory)."""
    return uuid.uuid4().hex


def _spill_dir(run: str) -> str:
    return os.path.join(tempfile.gettempdir(), f"kexue-ngrams-{run}")


def _spill_path(run: str, key: str, level: int) -> str:
    name = hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()[:24]
    return os.path.join(_spill_dir(run), f"{name}.{level}")


_ROOM = (
    "count_ngrams spills about 4 bytes per character of a multi-chunk corpus to the "
    "temporary directory of each worker: free space there, raise the file size limit, or "
    "point TMPDIR to a directory with room"
)


class _SpillWriter:
    """Records of one shard's level written to ``path`` (via a temporary name, then renamed)."""

    def __init__(self, run: str, key: str, level: int) -> None:
        self.path = _spill_path(run, key, level)
        self.nbytes = 0
        where = os.path.dirname(self.path)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(where)  # in the temporary directory, which must exist
            self._tmp = f"{self.path}.{uuid.uuid4().hex[:8]}.tmp"
            self.file: BinaryIO = open(self._tmp, "wb")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot create an n-gram spill file in {where} ({exc.strerror or exc}); {_ROOM}",
            ) from exc

    def write(self, meta: Any, arrays: Sequence[np.ndarray] = ()) -> None:
        """One record: ``meta`` (pickled, small) and the raw bytes of ``arrays``."""
        try:
            pickle.dump((meta, [(a.dtype.str, a.shape[0]) for a in arrays]), self.file,
                        protocol=pickle.HIGHEST_PROTOCOL)
            for a in arrays:
                self.file.write(memoryview(np.ascontiguousarray(a)).cast("B"))
        except OSError as exc:
            self.abort()
            raise OSError(
                exc.errno,
                f"n-gram spill file {self.path}: writing failed ({exc.strerror or exc}) after "
                f"{self.nbytes} bytes; {_ROOM}",
            ) from exc
        self.nbytes = self.file.tell()

    def commit(self) -> None:
        try:
            pickle.dump(None, self.file)  # end mark: a whole file ends with it
            self.nbytes = self.file.tell()
            self.file.close()
            os.replace(self._tmp, self.path)
        except OSError as exc:
            self.abort()
            raise OSError(
                exc.errno,
                f"n-gram spill file {self.path}: writing failed ({exc.strerror or exc}) after "
                f"{self.nbytes} bytes; {_ROOM}",
            ) from exc

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)


@contextlib.contextmanager
def _spill_writer(run: str, key: str, level: int) -> Iterator[_SpillWriter]:
    w = _SpillWriter(run, key, level)
    try:
        yield w
    except BaseException:
        w.abort()
        raise
    w.commit()


def _spill_reader(run: str, key: str, level: int) -> Iterator[Any] | None:
    """The records of a shard's level, or ``None`` when this machine does not hold them."""
    path = _spill_path(run, key, level)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the generator
    except FileNotFoundError:
        return None

    def records() -> Iterator[Any]:
        with f:
            while True:
                try:
                    rec = pickle.load(f)
                    if rec is None:
                        return
                    meta, specs = rec
                    arrays = []
                    for dtype, n in specs:
                        a = np.empty(n, dtype=dtype)
                        if f.readinto(memoryview(a).cast("B")) != a.nbytes:
                            raise EOFError("the file ends inside a record")
                        arrays.append(a)
                except (OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
                    raise OSError(f"n-gram spill file {path}: reading back failed ({exc})") from exc
                yield meta, arrays

    return records()


def _remove_spill(run: str, key: str, level: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_spill_path(run, key, level))


def _cleanup(shard: Shard, run: str) -> int:
    """Remove this machine's spill of the run (every shard's: the run is over); files removed."""
    where = _spill_dir(run)
    try:
        names = os.listdir(where)
    except FileNotFoundError:
        return 0
    shutil.rmtree(where, ignore_errors=True)
    return len(names)


# -- per-chunk state --


# unsigned integers stored in `width` bytes, as native pieces (low bytes first)
_PIECES = {1: ("<u1",), 2: ("<u2",), 3: ("<u2", "<u1"), 4: ("<u4",), 5: ("<u4", "<u1"),
           6: ("<u4", "<u2"), 7: ("<u8",), 8: ("<u8",)}


def _split(values: np.ndarray, width: int) -> list[np.ndarray]:
    """Non-negative integers as the pieces of :data:`_PIECES` (``width`` bytes each)."""
    out, shift = [], 0
    for dt in _PIECES[width]:
        out.append((values >> shift).astype(dt) if shift else values.astype(dt))
        shift += 8 * np.dtype(dt).itemsize
    return out


def _join(pieces: Sequence[np.ndarray], dtype: type) -> np.ndarray:
    out = pieces[0].astype(dtype)
    shift = 8 * pieces[0].dtype.itemsize
    for p in pieces[1:]:
        out |= p.astype(dtype) << dtype(shift)
        shift += 8 * p.dtype.itemsize
    return out


def _width(top: int) -> int:
    return max(1, (int(top).bit_length() + 7) // 8)


@dataclass
class _Cands:
    """The candidate n-grams of one chunk: where each starts, its group, the distinct keys."""

    length: int  # L, positions of the chunk
    pos: np.ndarray  # (m,) int64, increasing
    gid: np.ndarray  # (m,) int32 (int64 for 2^31 positions): keys[j] = uniques[gid[j]]
    uniques: np.ndarray  # (u,) uint64, sorted
    counts: np.ndarray | None = None  # (u,) int64 (not spilled)

    def record(self) -> tuple[tuple, list[np.ndarray]]:
        """``(meta, arrays)`` to spill: a bit per position, groups and keys in few bytes."""
        mask = np.zeros(self.length, dtype=bool)
        mask[self.pos] = True
        u = self.uniques.shape[0]
        wg = _width(max(u - 1, 0))
        wu = _width(int(self.uniques[-1]) if u else 0)
        gid = _split(self.gid, wg)
        return (self.length, len(gid)), [np.packbits(mask), *gid, *_split(self.uniques, wu)]

    @classmethod
    def from_record(cls, meta: tuple, arrays: list[np.ndarray]) -> _Cands:
        length, n_gid = meta
        pos = np.flatnonzero(np.unpackbits(arrays[0], count=length))
        gid = _join(arrays[1 : 1 + n_gid], np.int32 if length < 1 << 31 else np.int64)
        return cls(length, pos, gid, _join(arrays[1 + n_gid :], _U64))


def _candidates(length: int, P: np.ndarray, ids: np.ndarray, last: np.ndarray,
                key_bits: int) -> _Cands:
    """Level-n candidates from where kept (n−1)-grams start (``P``, increasing) and their ids.

    An n-gram starts at p when (n−1)-grams start at p and p + 1; its key is the id at p shifted
    by 16 bits plus the last code of the (n−1)-gram at p + 1 (``last[id]``).
    """
    j = np.flatnonzero(P[1:] == P[:-1] + 1)
    pos = P[j]
    keys = (ids[j].astype(_U64) << _U64(CODE_BITS)) | last[ids[j + 1]].astype(_U64)
    m = keys.shape[0]
    if m == 0:
        return _Cands(length, pos, np.zeros(0, np.int64), np.zeros(0, _U64),
                      np.zeros(0, np.int64))
    order, sk, group, starts = _group_sorted(keys, key_bits)
    gid = np.empty(m, dtype=group.dtype)
    gid[order] = group
    counts = np.diff(starts, append=m).astype(np.int64)
    return _Cands(length, pos, gid, sk[starts], counts)


@dataclass
class _Survivors:
    """The kept n-grams of one level as the workers need them (a broadcast object)."""

    keys: np.ndarray  # (k,) uint64, sorted
    last: np.ndarray  # (k,) uint16: the last unit's code of each
    key_bits: int  # bits of a candidate key at the next level: bits(k − 1) + 16

    @classmethod
    def of(cls, keys: np.ndarray) -> _Survivors:
        k = keys.shape[0]
        return cls(keys, (keys & _CODE_MASK).astype(np.uint16),
                   int(max(k - 1, 0)).bit_length() + CODE_BITS)


def _starts(state: Any, prev: _Survivors, alphabet: Alphabet) -> tuple[np.ndarray, np.ndarray, int]:
    """``(P, ids, L)``: where a kept (n−1)-gram starts in a chunk, its id, the chunk's length."""
    if isinstance(state, _Cands):
        gmap = _find(prev.keys, state.uniques)  # chunk-local group -> global id, −1: pruned
        ids = gmap[state.gid]
        alive = ids >= 0
        return state.pos[alive], ids[alive], state.length
    precodes, atoms = state  # level 1: the scan
    codes = alphabet.resolve(Scan(precodes, atoms))
    rank = np.full(_NCODES, -1, dtype=np.int64)
    rank[prev.keys.astype(np.int64)] = np.arange(prev.keys.shape[0])
    ids = rank[codes]
    P = np.flatnonzero(ids >= 0)
    return P, ids[P], codes.shape[0]


# -- map and reduce tasks --


def _chunks(texts: Iterable[str], chunk_chars: int, where: str = "texts") -> Iterator[list[str]]:
    buf: list[str] = []
    size = 0
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"{where}[{i}] must be str, got {type(t).__name__}")
        buf.append(t)
        size += len(t) + 1
        if size >= chunk_chars:
            yield buf
            buf, size = [], 0
    if buf:
        yield buf


@dataclass
class _ScanPart:
    """Level-1 counts of some shards (summed exactly by :func:`_add_scans`)."""

    han: np.ndarray  # (ALPHABET_SIZE + 1,) int64, index = Han code
    atoms: dict[str, int]
    surfaces: dict[tuple[str, str], int]
    spill: int  # bytes spilled


def _add_counts(a: dict, b: dict) -> dict:
    if len(a) < len(b):
        a, b = b, a
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out


def _add_scans(a: _ScanPart, b: _ScanPart) -> _ScanPart:
    return _ScanPart(a.han + b.han, _add_counts(a.atoms, b.atoms),
                     _add_counts(a.surfaces, b.surfaces), a.spill + b.spill)


def _map_scan(shard: Shard, run: str, script: str, chunk_chars: int, spill: bool) -> _ScanPart:
    """Level-1 map: scan and count one shard's units; spill its pre-codes (if ``spill``)."""
    han = np.zeros(ALPHABET_SIZE + 1, dtype=np.int64)
    atoms: collections.Counter[str] = collections.Counter()
    surfaces: collections.Counter[tuple[str, str]] = collections.Counter()
    writer = _spill_writer(run, shard.key, 1) if spill else contextlib.nullcontext(None)
    with writer as w:
        for texts in _chunks(shard.read(), chunk_chars, f"shard {shard.key!r} texts"):
            s = scan(texts, script)
            han += np.bincount(s.precodes, minlength=_NCODES)[: ALPHABET_SIZE + 1]
            a, sf = atom_counts(s)
            atoms.update(a)
            surfaces.update(sf)
            if w is not None:
                w.write(s.atoms, [s.precodes])
    han[0] = 0
    return _ScanPart(han, dict(atoms), dict(surfaces), w.nbytes if w is not None else 0)


@dataclass
class _Part:
    """Candidate counts of some shards at one level (merged exactly by :func:`_add_parts`)."""

    keys: np.ndarray  # (u,) uint64, sorted distinct
    counts: np.ndarray  # (u,) int64
    spill: int  # bytes spilled for the next level

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    # sorted by key, so it splits by key range and its pieces join back (a driver may fold the
    # ranges of several values at once: see kexue.text._drivers._fold_split)

    def pivot(self) -> Any:
        """A key splitting this table in two halves."""
        return self.keys[self.keys.shape[0] // 2]

    def split_at(self, pivot: Any) -> tuple[_Part, _Part]:
        """Entries with key < ``pivot`` and the others (views); the spill goes with the first."""
        i = int(np.searchsorted(self.keys, pivot))
        return (_Part(self.keys[:i], self.counts[:i], self.spill),
                _Part(self.keys[i:], self.counts[i:], 0))

    @staticmethod
    def join(low: _Part, high: _Part) -> _Part:
        """The table of two key ranges, ``low`` below ``high``."""
        return _Part(np.concatenate([low.keys, high.keys]),
                     np.concatenate([low.counts, high.counts]), low.spill + high.spill)


def _add_parts(a: _Part, b: _Part) -> _Part:
    keys, counts = _merge_tables(a.keys, a.counts, b.keys, b.counts)
    return _Part(keys, counts, a.spill + b.spill)


def _recompute(shard: Shard, level: int, script: str, chunk_chars: int, alphabet: Alphabet,
               survivors: Sequence[_Survivors]) -> Iterator[Any]:
    """A shard's state after ``level`` rebuilt from its text (its spill is not on this machine)."""
    for texts in _chunks(shard.read(), chunk_chars, f"shard {shard.key!r} texts"):
        s = scan(texts, script)
        state: Any = (s.precodes, s.atoms)
        for k in range(2, level + 1):
            prev = survivors[k - 2]
            P, ids, L = _starts(state, prev, alphabet)
            state = _candidates(L, P, ids, prev.last, prev.key_bits)
        yield state


def _map_level(shard: Shard, run: str, n: int, max_n: int, script: str, chunk_chars: int,
               alphabet: Any, *levels: Any) -> _Part:
    """Level-n map (n ≥ 2): count one shard's candidates; spill its state for level n + 1.

    ``levels[k]`` is the broadcast :class:`_Survivors` of level k + 1 (all levels below n: the
    last one is used, the others only to recompute a missing spill).
    """
    alphabet = resolve(alphabet)
    prev: _Survivors = resolve(levels[n - 2])
    records = _spill_reader(run, shard.key, n - 1)
    if records is None:
        states = _recompute(shard, n - 1, script, chunk_chars, alphabet,
                            [resolve(h) for h in levels[: n - 1]])
    elif n == 2:
        states = ((arrays[0], atoms) for atoms, arrays in records)  # the scans
    else:
        states = (_Cands.from_record(*rec) for rec in records)
    parts: list[_Part] = []
    writer = (_spill_writer(run, shard.key, n) if n < max_n
              else contextlib.nullcontext(None))
    closer = contextlib.closing(records) if records is not None else contextlib.nullcontext()
    with writer as w, closer:
        for state in states:
            P, ids, L = _starts(state, prev, alphabet)
            cands = _candidates(L, P, ids, prev.last, prev.key_bits)
            if w is not None:
                w.write(*cands.record())
            parts.append(_Part(cands.uniques, cands.counts, 0))
    _remove_spill(run, shard.key, n - 1)
    if not parts:
        parts = [_Part(np.zeros(0, _U64), np.zeros(0, np.int64), 0)]
    out = _fold(_add_parts, parts)
    out.spill = w.nbytes if w is not None else 0
    return out


# -- the driver side --


@dataclass
class Counted:
    """What :func:`count_shards` returns."""

    levels: list[_Level]
    alphabet: Alphabet
    total_chars: int
    spill: list[int]  # bytes spilled after each level (summed over shards)
    shards: int
    atom_chars: int = 0  # occurrences of mixed-script atoms (kept or not) among total_chars


def count_shards(
    driver: Driver,
    batches: Iterable[Sequence[Shard]],
    max_n: int,
    min_count: int,
    script: str,
    chunk_chars: int,
    run: str | None = None,
) -> Counted:
    """Exact pruned counts of the shards (given in batches) through ``driver``.

    Level 1 maps one batch at a time (a one-shot stream is read batch by batch); later levels
    map every shard at once. The spill of the run (``run``: its id, default a new one) is
    removed at the end, on error too: by a cleanup task per shard (on the machines that ran
    them) and here (a caller whose driver may still have tasks running removes
    ``_spill_dir(run)`` again once the driver is shut down).
    """
    run = run or new_run()
    shards: list[Shard] = []
    handles: list[Any] = []  # broadcast
    try:
        try:
            first: _ScanPart | None = None
            for batch in batches:
                if not batch:
                    continue
                # a MemoryShard's text is shipped once: later levels read the spill
                shards.extend(s.without_text() if isinstance(s, MemoryShard) else s
                              for s in batch)
                part = driver.reduce(_add_scans, driver.map(
                    _map_scan, batch, run, script, chunk_chars, max_n > 1))
                first = part if first is None else _add_scans(first, part)
            if first is None:
                return Counted([_Level(np.zeros(0, _U64), np.zeros(0, np.int64))
                                for _ in range(max_n)], Alphabet(script), 0, [], 0)
            keys = {s.key for s in shards}
            if len(keys) != len(shards):
                dup = collections.Counter(s.key for s in shards).most_common(1)[0][0]
                raise ValueError(f"shard keys must be unique within a run, got {dup!r} twice")
            alphabet = Alphabet.build(script, first.atoms, first.surfaces, min_count)
            han = first.han
            keep = np.flatnonzero(han >= min_count)
            keep = keep[keep > 0]
            atom_counts_ = np.array([first.atoms[a] for a in alphabet.atoms], dtype=np.int64)
            codes = np.concatenate([keep, ATOM_FIRST + np.arange(len(alphabet.atoms))])
            levels = [_Level(codes.astype(_U64),
                             np.concatenate([han[keep], atom_counts_]).astype(np.int64))]
            total_chars = int(han.sum()) + int(sum(first.atoms.values()))
            spill = [first.spill]
            handles.append(driver.broadcast(alphabet))
            handles.append(driver.broadcast(_Survivors.of(levels[0].keys)))
            for n in range(2, max_n + 1):
                if levels[-1].keys.shape[0] == 0:  # nothing to extend: the rest is empty
                    levels.append(_Level(np.zeros(0, _U64), np.zeros(0, np.int64)))
                    spill.append(0)
                    continue
                part = driver.reduce(_add_parts, driver.map(
                    _map_level, shards, run, n, max_n, script, chunk_chars, *handles))
                kept = part.counts >= min_count
                levels.append(_Level(part.keys[kept], part.counts[kept]))
                spill.append(part.spill)
                del part
                if n < max_n:
                    handles.append(driver.broadcast(_Survivors.of(levels[-1].keys)))
            return Counted(levels, alphabet, total_chars, spill, len(shards),
                           int(sum(first.atoms.values())))
        finally:
            if shards:
                with contextlib.suppress(Exception):
                    driver.gather(driver.map(_cleanup, shards, run))
            release = getattr(driver, "release", None)
            if handles and release is not None:
                with contextlib.suppress(Exception):
                    release(handles)
    finally:
        shutil.rmtree(_spill_dir(run), ignore_errors=True)
