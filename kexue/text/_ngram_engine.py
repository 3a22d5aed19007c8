"""The counting engine behind :mod:`kexue.text.ngrams`: codes, sorted-key kernels, spools.

Everything here works on plain numpy arrays and knows nothing of the public classes: the fixed
character codes (``ord(c) − 0x4E00 + 1``, 0 = boundary), the grouping sort with the position
packed into the low bits, counting one code array level by level with Apriori pruning
(:func:`_count_codes`), the merge helpers on sorted ``uint64`` keys, and the out-of-core
level-wise pass over a temporary spool (:func:`_count_levelwise`). The key layout, the pruning
rule and the memory model are described in :mod:`kexue.text.ngrams`, which builds
``NgramCounter`` and ``NgramTable`` from the ``_Level`` arrays made here.

References:
    https://kexue.fm/archives/6540 (分享一次专业领域词汇的无监督挖掘)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

HAN_FIRST = 0x4E00
HAN_LAST = 0x9FFF
ALPHABET_SIZE = HAN_LAST - HAN_FIRST + 1  # 20992 codes, 1-based; 0 is the boundary
_CHAR_BITS = 15
_CHAR_MASK = np.uint64((1 << _CHAR_BITS) - 1)
_MAX_CHUNK = 1 << 24  # keeps position + key within 64 bits in the packed sort


def _encode(texts: list[str]) -> np.ndarray:
    """Codes for counting: :func:`encode` over UTF-16 code units (an already checked list).

    The Han block lies in the BMP, so every Han character is one unit with the same code; a
    character outside the BMP becomes two units (a surrogate pair), both 0, i.e. one more
    boundary position, which changes no count. About 4x faster than the UTF-32 path.
    """
    joined = "\n".join(texts) + "\n"
    cp = np.frombuffer(joined.encode("utf-16-le", "surrogatepass"), dtype="<u2")
    out = cp.astype(np.int32)
    out -= HAN_FIRST - 1
    out[(cp < HAN_FIRST) | (cp > HAN_LAST)] = 0
    return out


def _group_sorted(keys: np.ndarray, key_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort ``keys`` and group equal ones.

    Returns ``(order, group, starts)``: the sorting permutation, the group index of each sorted
    element, and the start of each group in sorted order. The permutation comes from one
    ``np.sort`` of ``key << b | index`` when that fits in 64 bits (much faster than argsort).
    """
    m = keys.shape[0]
    b = max(int(m).bit_length(), 1)
    if key_bits + b <= 64:
        packed = np.sort((keys << np.uint64(b)) | np.arange(m, dtype=np.uint64))
        order = (packed & np.uint64((1 << b) - 1)).astype(np.int64)
        sk = packed >> np.uint64(b)
    else:  # pragma: no cover - only for chunks beyond 2^24 characters
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
    flag = np.empty(m, dtype=bool)
    flag[:1] = True
    np.not_equal(sk[1:], sk[:-1], out=flag[1:])
    group = np.cumsum(flag) - 1
    starts = np.flatnonzero(flag)
    return order, group, starts


@dataclass
class _Level:
    keys: np.ndarray  # (m,) uint64, sorted: prefix_id << 15 | last code (level 1: the code)
    counts: np.ndarray  # (m,) int64


def _count_codes(codes: np.ndarray, max_n: int, min_count: int) -> list[_Level]:
    """Count n-grams of one code array, pruning with ``min_count`` level by level (1 = none)."""
    L = codes.shape[0]
    cnt = np.bincount(codes, minlength=ALPHABET_SIZE + 1)
    cnt[0] = 0
    keep = np.flatnonzero(cnt >= min_count)
    keep = keep[keep > 0]
    levels = [_Level(keep.astype(np.uint64), cnt[keep].astype(np.int64))]
    idmap = np.full(ALPHABET_SIZE + 1, -1, dtype=np.int64)
    idmap[keep] = np.arange(keep.shape[0])
    ids = idmap[codes]  # (L,) id of the kept 1-gram starting at each position, −1 if none
    for n in range(2, max_n + 1):
        k_prev = levels[-1].keys.shape[0]
        span = L - n + 1
        if span <= 0 or k_prev == 0:
            levels.append(_Level(np.zeros(0, np.uint64), np.zeros(0, np.int64)))
            ids = np.full(L, -1, dtype=np.int64)
            continue
        # prefix at i and suffix at i + 1 are both kept (n−1)-grams (Apriori; also: inside a run)
        pos = np.flatnonzero((ids[:span] >= 0) & (ids[1 : span + 1] >= 0))
        keys = (ids[pos].astype(np.uint64) << np.uint64(_CHAR_BITS)) | codes[pos + n - 1].astype(
            np.uint64
        )
        new_ids = np.full(L, -1, dtype=np.int64)
        if pos.shape[0] == 0:
            levels.append(_Level(np.zeros(0, np.uint64), np.zeros(0, np.int64)))
            ids = new_ids
            continue
        order, group, starts = _group_sorted(keys, int(k_prev).bit_length() + _CHAR_BITS)
        counts = np.diff(starts, append=pos.shape[0])
        kept = counts >= min_count
        rank = np.where(kept, np.cumsum(kept) - 1, -1)
        new_ids[pos[order]] = rank[group]
        levels.append(_Level(keys[order[starts[kept]]], counts[kept].astype(np.int64)))
        ids = new_ids
    return levels


def _sorted_union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # np.union1d goes through np.unique, which is an order of magnitude slower than a plain sort
    c = np.sort(np.concatenate([a, b]))
    if c.shape[0] == 0:
        return c.astype(np.uint64)
    flag = np.empty(c.shape[0], dtype=bool)
    flag[0] = True
    np.not_equal(c[1:], c[:-1], out=flag[1:])
    return c[flag].astype(np.uint64)


def _translate(keys: np.ndarray, idmap: np.ndarray) -> np.ndarray:
    prefix = (keys >> np.uint64(_CHAR_BITS)).astype(np.int64)
    return (idmap[prefix].astype(np.uint64) << np.uint64(_CHAR_BITS)) | (keys & _CHAR_MASK)


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
        last = keys & _CHAR_MASK
        if level == 1:
            res = _find(levels[0].keys, last)
        else:
            p = (keys >> np.uint64(_CHAR_BITS)).astype(np.int64)
            ps = suf(level - 1)[p]
            q = (np.maximum(ps, 0).astype(np.uint64) << np.uint64(_CHAR_BITS)) | last
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


def _merge_counts(
    acc: tuple[np.ndarray, np.ndarray] | None, keys: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact sum of two sorted (unique keys, counts) tables."""
    if acc is None:
        return keys, counts
    union = _sorted_union(acc[0], keys)
    out = np.zeros(union.shape[0], dtype=np.int64)
    out[np.searchsorted(union, acc[0])] += acc[1]
    out[np.searchsorted(union, keys)] += counts
    return union, out


class _Spool:
    """Append-only arrays of one dtype in a temporary file, read back in order.

    The level-wise counter keeps per-position data of every chunk here instead of in memory, so
    its memory does not grow with the stream (2 bytes per character for codes, 4 for the
    groups of one level, written while the previous level's are read). The file is created in
    ``tempfile.gettempdir()`` (``TMPDIR``) and its name removed at once where the system allows
    (POSIX), so that nothing is left behind even by a crash; its space is freed when closed.

    Raises:
        OSError: when the file cannot be created, written or read back (a full disk, a file
            size limit, a missing or unwritable temporary directory), naming the spool file
            and the cause.
    """

    def __init__(self, dtype: np.dtype | type) -> None:
        self.dtype = np.dtype(dtype)
        self.sizes: list[int] = []
        self.nbytes = 0
        try:
            self.directory = tempfile.gettempdir()
            fd, self.path = tempfile.mkstemp(prefix="kexue-ngrams-", suffix=".spool",
                                             dir=self.directory)
        except OSError as exc:
            where = getattr(self, "directory", None) or "the temporary directory"
            raise OSError(
                exc.errno,
                f"cannot create an n-gram spool file in {where} ({exc.strerror or exc}); "
                "count_ngrams spools up to 10 bytes per character of a multi-chunk corpus "
                "there: point TMPDIR to a writable directory with room",
            ) from exc
        self.file = os.fdopen(fd, "w+b")
        self._named = True
        with contextlib.suppress(OSError):  # Windows keeps the name of an open file
            os.unlink(self.path)
            self._named = False

    def _error(self, exc: OSError, doing: str) -> OSError:
        return OSError(
            exc.errno,
            f"n-gram spool file {self.path}: {doing} failed ({exc.strerror or exc}) after "
            f"{self.nbytes} bytes; count_ngrams spools up to 10 bytes per character of a "
            f"multi-chunk corpus to {self.directory}: free space there, raise the file size "
            "limit, or point TMPDIR to a directory with room",
        )

    def write(self, arr: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(arr, dtype=self.dtype)).cast("B")
        try:
            self.file.write(data)
        except OSError as exc:
            raise self._error(exc, f"writing {data.nbytes} bytes") from exc
        self.nbytes += data.nbytes
        self.sizes.append(int(arr.shape[0]))

    def __iter__(self) -> Iterator[np.ndarray]:
        try:
            self.file.flush()
            self.file.seek(0)
        except OSError as exc:
            raise self._error(exc, "writing") from exc
        for size in self.sizes:
            try:
                arr = np.fromfile(self.file, dtype=self.dtype, count=size)
            except OSError as exc:
                raise self._error(exc, "reading back") from exc
            if arr.shape[0] != size:
                raise OSError(
                    f"n-gram spool file {self.path}: read back {arr.shape[0]} of {size} "
                    "items (was it truncated?)"
                )
            yield arr

    def close(self) -> None:
        """Close and remove the file; a failing flush of data nobody will read is ignored."""
        with contextlib.suppress(OSError):
            self.file.close()
        if self._named:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self._named = False


def _local_groups(
    keys: np.ndarray, pos: np.ndarray, L: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group one chunk's candidate keys: distinct keys, their counts, and per position its group.

    Returns ``(unique, counts, gid)`` with ``gid`` of shape ``(L,)`` int32, −1 where no key.
    """
    gid = np.full(L, -1, dtype=np.int32)
    if keys.shape[0] == 0:
        return keys.astype(np.uint64), np.zeros(0, np.int64), gid
    order, group, starts = _group_sorted(keys, int(keys.max()).bit_length())
    gid[pos[order]] = group
    counts = np.diff(starts, append=keys.shape[0]).astype(np.int64)
    return keys[order[starts]], counts, gid


def _count_levelwise(
    chunks: Iterable[list[str]], max_n: int, min_count: int
) -> tuple[list[_Level], int]:
    """Exact pruned counts of many chunks, as ``(levels, total_chars)``: one pass over the
    text, then one pass per level n ≥ 3 over a spool of codes and ids in a temporary file
    (memory: one chunk plus one level's candidates, whatever the length of the stream).

    Pass 1 reads the texts once, counts unigrams and all bigrams, and spools each chunk's codes
    and, per position, the chunk-local group of its bigram. Pass n ≥ 3 turns the spooled local
    groups of level n − 1 into global ids of the kept (n−1)-grams with one ``searchsorted`` of
    the chunk's distinct keys (no per-position lookup), counts the n-grams whose (n−1)-prefix and
    (n−1)-suffix are both kept (Apriori: exact), and spools their local groups for level n + 1.
    """
    spools: list[_Spool] = []  # every spool made, closed (and removed) however this ends

    def spool(dtype: type) -> _Spool:
        spools.append(_Spool(dtype))
        return spools[-1]

    uni = np.zeros(ALPHABET_SIZE + 1, dtype=np.int64)
    bi: tuple[np.ndarray, np.ndarray] | None = None
    try:
        codes_spool = spool(np.uint16)  # codes ≤ 20992 < 2^16
        groups = spool(np.int32)
        uniques = spool(np.uint64)
        for chunk in chunks:
            codes = _encode(chunk)
            uni += np.bincount(codes, minlength=ALPHABET_SIZE + 1)
            codes_spool.write(codes)
            if max_n >= 2:  # key = code(c_1) << 15 | code(c_2): raw codes, ranked below
                pos = np.flatnonzero((codes[:-1] > 0) & (codes[1:] > 0))
                keys = (codes[pos].astype(np.uint64) << np.uint64(_CHAR_BITS)) | codes[
                    pos + 1
                ].astype(np.uint64)
                u, c, gid = _local_groups(keys, pos, codes.shape[0])
                groups.write(gid)
                uniques.write(u)
                bi = _merge_counts(bi, u, c)
        uni[0] = 0
        total_chars = int(uni.sum())
        keep1 = np.flatnonzero(uni >= min_count)
        keep1 = keep1[keep1 > 0]
        levels = [_Level(keep1.astype(np.uint64), uni[keep1])]
        if max_n < 2:
            return levels, total_chars
        rank = np.full(ALPHABET_SIZE + 1, -1, dtype=np.int64)
        rank[keep1] = np.arange(keep1.shape[0])

        def ranked(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """Raw code-pair keys -> keys over unigram ranks, and whether both are kept."""
            c1 = rank[(raw >> np.uint64(_CHAR_BITS)).astype(np.int64)]
            c2 = rank[(raw & _CHAR_MASK).astype(np.int64)]
            ok = (c1 >= 0) & (c2 >= 0)
            return (np.maximum(c1, 0).astype(np.uint64) << np.uint64(_CHAR_BITS)) | (
                raw & _CHAR_MASK
            ), ok

        keys, counts = bi if bi is not None else (np.zeros(0, np.uint64), np.zeros(0, np.int64))
        keys, ok = ranked(keys)
        kept = ok & (counts >= min_count)
        levels.append(_Level(keys[kept], counts[kept]))  # rank is increasing: keys stay sorted
        del bi, keys, counts
        for n in range(3, max_n + 1):
            prev = levels[-1].keys
            acc: tuple[np.ndarray, np.ndarray] | None = None
            new_groups = spool(np.int32)
            new_uniques = spool(np.uint64)
            for codes, gid, u in zip(codes_spool, groups, uniques, strict=True):
                # global id at level n − 1 of each chunk-local group, −1 if not kept; the extra
                # last entry −1 is where gid = −1 (no n−1-gram at that position) lands
                gmap = np.full(u.shape[0] + 1, -1, dtype=np.int64)
                if n == 3:
                    u, ok = ranked(u)
                    gmap[:-1] = np.where(ok, _find(prev, u), -1)
                else:
                    gmap[:-1] = _find(prev, u)
                L = codes.shape[0]
                ids = gmap[gid]
                span = L - n + 1
                if span > 0 and prev.shape[0] > 0:
                    pos = np.flatnonzero((ids[:span] >= 0) & (ids[1 : span + 1] >= 0))
                else:
                    pos = np.zeros(0, dtype=np.int64)
                keys = (ids[pos].astype(np.uint64) << np.uint64(_CHAR_BITS)) | codes[
                    pos + n - 1
                ].astype(np.uint64)
                del ids
                u_n, c_n, gid_n = _local_groups(keys, pos, L)
                if n < max_n:
                    new_groups.write(gid_n)
                    new_uniques.write(u_n)
                acc = _merge_counts(acc, u_n, c_n)
            groups.close()
            uniques.close()
            groups, uniques = new_groups, new_uniques
            if acc is None:
                levels.append(_Level(np.zeros(0, np.uint64), np.zeros(0, np.int64)))
                continue
            kept = acc[1] >= min_count
            levels.append(_Level(acc[0][kept], acc[1][kept]))
        return levels, total_chars
    finally:
        for made in spools:
            made.close()
