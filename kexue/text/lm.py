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
    https://kexue.fm/archives/8084 (【搜出来的文本】⋅(一)从文本生成到搜索采样)
    Chen & Goodman, "An empirical study of smoothing techniques for language modeling", 1998.
"""

from __future__ import annotations

import math
import os
import re
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BOS", "EOS", "UNK", "BiLM", "NgramLM", "split_sentences"]

UNK, BOS, EOS = 0, 1, 2
_SPECIALS = ("<unk>", "<s>", "</s>")
_SENTENCE_END = re.compile(r"(?<=[。！？!?；;])")
_FORMAT = 1  # version of the saved-model layout


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
        self.order = order
        self.chars = tuple(chars)
        self.reverse = reverse
        self._orders = orders
        self._ids = {c: i + len(_SPECIALS) for i, c in enumerate(self.chars)}

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
        if not isinstance(order, int) or order < 1:
            raise ValueError(f"order must be an integer >= 1, got {order!r}")
        if not isinstance(max_vocab, int) or max_vocab < 1:
            raise ValueError(f"max_vocab must be an integer >= 1, got {max_vocab!r}")
        sentences = [s for s in sentences if s]
        freq = Counter()
        for s in sentences:
            freq.update(s)
        if not freq:
            raise ValueError("sentences must hold at least one character, got none")
        chars = [c for c, _ in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))][:max_vocab]
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
        n, v = self.order, self.vocab_size
        parts = []
        for ids in encoded:
            padded = np.concatenate([np.full(n - 1, BOS), ids, [EOS]]).astype(np.int64)
            windows = np.lib.stride_tricks.sliding_window_view(padded, n)  # (len+1, n)
            parts.append(windows)
        if not parts:
            return np.zeros(0, np.int64)
        windows = np.concatenate(parts)  # (positions, n)
        weights = v ** np.arange(n - 1, -1, -1, dtype=np.int64)  # (n,)
        return windows @ weights

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
        """p(w | h) for top-order keys ``hw`` (any shape), by recursion from the unigram."""
        v = self.vocab_size
        flat = keys.reshape(-1)
        p = np.full(flat.shape, 1.0 / (v - 1))  # uniform base over every id except <s>
        for k, level in enumerate(self._orders, start=1):
            key_k = flat % v ** k
            ctx = key_k // v
            cpos, cfound = _lookup(level.ctx_keys, ctx)
            total = np.where(cfound, level.ctx_total[cpos], 1.0)
            gamma = np.where(cfound, level.ctx_gamma[cpos], 0.0)
            gpos, gfound = _lookup(level.keys, key_k)
            c = np.where(gfound, level.counts[gpos], 0.0)
            d = level.discounts[np.minimum(c, 3).astype(np.int64)]
            p = np.where(cfound, (np.maximum(c - d, 0.0) + gamma * p) / total, p)
        return p.reshape(keys.shape)

    def log_prob(self, texts: Sequence[str] | str) -> np.ndarray | float:
        """Natural-log probability of whole sentences, ``</s>`` included.

        Args:
            texts: One sentence or a sequence of them (scored in one batch).

        Returns:
            A float for one sentence, else an (N,) array.
        """
        if isinstance(texts, str):
            return float(self.log_prob_ids([self.encode(texts)])[0])
        return self.log_prob_ids([self.encode(t) for t in texts])

    def log_prob_ids(self, encoded: Sequence[np.ndarray]) -> np.ndarray:
        """Log-probabilities of id sequences (already in this model's reading order)."""
        keys = self._ngram_keys(encoded)
        logp = np.log(self._prob(keys))  # (positions,)
        lengths = np.array([len(ids) + 1 for ids in encoded], np.int64)
        return np.add.reduceat(logp, np.r_[0, np.cumsum(lengths)[:-1]]) if len(encoded) else logp

    def _next_probs(self, context: np.ndarray) -> np.ndarray:
        """p(w | context) for every id w: (vocab_size,), ``context`` the last order−1 ids.

        For a fixed context the k-grams h·V + w of every w form one contiguous key range,
        so each order costs two binary searches and a scatter instead of V lookups.
        """
        v = self.vocab_size
        p = np.full(v, 1.0 / (v - 1))
        c = np.zeros(v)
        for k, level in enumerate(self._orders, start=1):
            h = int(context[len(context) - (k - 1):] @ (v ** np.arange(k - 2, -1, -1,
                                                                        dtype=np.int64))) \
                if k > 1 else 0
            i = int(np.searchsorted(level.ctx_keys, h))
            if i == len(level.ctx_keys) or level.ctx_keys[i] != h:
                continue  # unseen context: p_k = p_{k−1}
            lo, hi = np.searchsorted(level.keys, [h * v, h * v + v])
            c[:] = 0.0
            c[level.keys[lo:hi] - h * v] = level.counts[lo:hi]
            d = level.discounts[np.minimum(c, 3).astype(np.int64)]
            p = (np.maximum(c - d, 0.0) + level.ctx_gamma[i] * p) / level.ctx_total[i]
        return p

    def next_log_probs(self, context: np.ndarray | Sequence[int]) -> np.ndarray:
        """log p(w | context) for every id w, as a (vocab_size,) array (−inf for ``<s>``).

        Args:
            context: Ids before the predicted position, in this model's reading order (only the
                last ``order − 1`` matter; shorter contexts are padded with ``<s>``).
        """
        n = self.order
        ctx = np.concatenate([np.full(n - 1, BOS), np.asarray(context, np.int64)])
        ctx = ctx[len(ctx) - (n - 1):]  # (order − 1,)
        with np.errstate(divide="ignore"):
            out = np.log(self._next_probs(ctx))
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
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        order = self.order
        out = []
        for _ in range(n):
            ids = [BOS] * (order - 1)
            for _ in range(max_len):
                p = self._next_probs(np.asarray(ids[len(ids) - (order - 1):], np.int64))
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
        try:
            fmt, order, reverse = (int(x) for x in data[f"{prefix}meta"])
            if fmt != _FORMAT:
                raise ValueError(f"{path}: model format {fmt}, this kexue reads {_FORMAT}")
            chars = [str(c) for c in data[f"{prefix}chars"]]
            orders = [_Order(**{f: data[f"{prefix}{f}_{k}"] for f in _Order.__dataclass_fields__})
                      for k in range(1, order + 1)]
        except KeyError as err:
            raise ValueError(f"{path} is not a kexue language-model file (missing {err})") \
                from None
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:  # read lazily
            raise ValueError(f"{path} is damaged ({type(err).__name__}: {err}); train the "
                             "model again") from None
        return cls(order, chars, orders, bool(reverse))

    def save(self, path: str | Path) -> None:
        """Write the model to ``path`` (a compressed ``.npz``)."""
        _save(path, self._arrays())

    @classmethod
    def load(cls, path: str | Path) -> NgramLM:
        """Read a model written by :meth:`save`.

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            ValueError: If ``path`` is not a kexue n-gram model file.
        """
        with _open(path) as data:
            return cls._from_arrays(data, "", path)


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

    def save(self, path: str | Path) -> None:
        """Write both models to one ``.npz`` file."""
        _save(path, {**self.forward._arrays("fwd/"), **self.backward._arrays("bwd/")})

    @classmethod
    def load(cls, path: str | Path) -> BiLM:
        """Read a file written by :meth:`save`.

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            ValueError: If ``path`` is not a kexue language-model file.
        """
        with _open(path) as data:
            return cls(NgramLM._from_arrays(data, "fwd/", path),
                       NgramLM._from_arrays(data, "bwd/", path))


def _save(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Write to a temporary file beside ``path``, then rename: a killed run leaves no torn
    model behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _open(path: str | Path) -> Any:
    if Path(path).is_dir():
        raise ValueError(f"language-model file {path} is a directory, not a file")
    if not Path(path).is_file():
        raise FileNotFoundError(f"language-model file {path} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(f"{path} is not a kexue language-model file ({err})") from None
