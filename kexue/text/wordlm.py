"""A word bigram language model that scores raw text by summing over every segmentation.

A judge of another family than the character models it judges: it is trained on gold-segmented
text (e.g. People's Daily's gold words) and knows words, not characters. A text x is scored by
the probability that the model's generative process — draw words from the bigram model until
``</s>``, then concatenate them — produces x, summed over every segmentation of x::

    p(x) = Σ_{w_1 … w_m = x}  Π_i p(w_i | w_{i−1}) · p(</s> | w_m),        w_0 = <s>

so no segmenter decides for it. Interpolated absolute discounting at both orders::

    p(w | v) = max(c(vw) − D₂, 0) / c(v•)  +  D₂ · N₁₊(v•) / c(v•) · p₁(w)
    p₁(w)    = max(c(w) − D₁, 0) / N       +  D₁ · |W| / N · p_spell(w)
    p_spell(w) = (1 − s)^{|w| − 1} · s · Π_c p_char(c)

with D = n₁ / (n₁ + 2 n₂) from each order's count-of-counts, ``W`` the word types, ``p_char``
add-one over the training characters plus one unknown character, and s the inverse mean word
length. Every string has mass (an unseen word is spelled out), and the masses of all texts sum
to at most 1 (exactly 1 without the ``max_word`` cut). The sum over segmentations is a forward
recursion over (end position, start of the last word): O(|x| · max_word²) per text.

References:
    https://kexue.fm/archives/8194 (【搜出来的文本】⋅(四)通过增、删、改来用词造句)
    Ney, Essen & Kneser, "On structuring probabilistic dependences in stochastic language
    modelling", Computer Speech and Language 8, 1994 (absolute discounting).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from kexue._checks import check_int

__all__ = ["WordLM"]

_BOS, _EOS = "<s>", "</s>"


def _discount(counts: Iterable[int]) -> float:
    """D = n₁ / (n₁ + 2 n₂) (0.5 when the counts give no estimate)."""
    histogram = Counter(counts)
    n1, n2 = histogram.get(1, 0), histogram.get(2, 0)
    return n1 / (n1 + 2 * n2) if n1 and n2 else 0.5


class WordLM:
    """Word bigram model over segmented text that scores unsegmented text (see the module).

    Build with :meth:`train`.

    Args:
        unigrams: Word counts, ``</s>`` included (one per line).
        bigrams: Counts of (previous, word) pairs, ``<s>`` and ``</s>`` included.
        chars: Character counts of the words.
        max_word: Longest word (in characters) a segmentation may use.

    Raises:
        ValueError: If ``max_word`` is not an integer >= 1 or there are no words.
    """

    def __init__(self, unigrams: Counter, bigrams: Counter, chars: Counter, max_word: int
                 ) -> None:
        self.max_word = check_int("max_word", max_word, low=1)
        if not chars:
            raise ValueError("lines must hold at least one non-empty word, got none")
        self._uni = unigrams
        self._n = sum(unigrams.values())
        self._d1 = _discount(unigrams.values())
        self._d2 = _discount(bigrams.values())
        self._bi = bigrams
        followers: Counter = Counter()
        context: Counter = Counter()
        for (v, _), c in bigrams.items():
            followers[v] += 1
            context[v] += c
        self._followers, self._context = followers, context
        n_chars = sum(chars.values())
        size = len(chars) + 1  # + one unknown character
        self._char = {c: (k + 1) / (n_chars + size) for c, k in chars.items()}
        self._unk_char = 1 / (n_chars + size)
        words = [w for w in unigrams if w != _EOS]
        mean = sum(len(w) * unigrams[w] for w in words) / max(1, sum(unigrams[w] for w in words))
        self._stop = 1.0 / max(mean, 1.0)

    @classmethod
    def train(cls, lines: Iterable[Sequence[str]], max_word: int = 8) -> WordLM:
        """Count words, word bigrams and characters of segmented lines.

        Args:
            lines: Each line a sequence of words (e.g. gold tokens); each line is one
                sentence, ``<s>`` before it and ``</s>`` after it.
            max_word: Longest word a segmentation may use when scoring.

        Raises:
            ValueError: If ``max_word`` is not an integer >= 1 or there are no words.
        """
        unigrams: Counter = Counter()
        bigrams: Counter = Counter()
        chars: Counter = Counter()
        for line in lines:
            words = [w for w in line if w]
            if not words:
                continue
            seq = [_BOS, *words, _EOS]
            unigrams.update(seq[1:])
            bigrams.update(zip(seq[:-1], seq[1:], strict=False))
            for w in words:
                chars.update(w)
        return cls(unigrams, bigrams, chars, max_word)

    def _spell(self, word: str) -> float:
        p = self._stop * (1 - self._stop) ** (len(word) - 1)
        for c in word:
            p *= self._char.get(c, self._unk_char)
        return p

    def unigram(self, word: str) -> float:
        """p₁(word): the discounted word frequency plus the spelled-out share."""
        spelled = 0.0 if word == _EOS else self._spell(word)
        return (max(self._uni.get(word, 0) - self._d1, 0.0) / self._n
                + self._d1 * len(self._uni) / self._n * spelled)

    def prob(self, word: str, previous: str) -> float:
        """p(word | previous), ``previous`` a word or ``"<s>"``."""
        total = self._context.get(previous, 0)
        if not total:
            return self.unigram(word)
        return (max(self._bi.get((previous, word), 0) - self._d2, 0.0) / total
                + self._d2 * self._followers[previous] / total * self.unigram(word))

    def _log_prob_one(self, text: str) -> float:
        n, big = len(text), self.max_word
        if not n:
            return math.log(self.prob(_EOS, _BOS))
        # alpha[j][i] · exp(scale[j]): mass of the prefixes text[:j] whose last word is
        # text[i:j]; each row is rescaled to sum to 1, so nothing underflows
        alpha: list[dict[int, float]] = [{-1: 1.0}]  # -1: the last "word" is <s>
        scale = [0.0]
        for j in range(1, n + 1):
            row: dict[int, float] = {}
            for i in range(max(0, j - big), j):
                word = text[i:j]
                mass = sum(a * self.prob(word, _BOS if k < 0 else text[k:i])
                           for k, a in alpha[i].items())
                row[i] = mass * math.exp(scale[i] - scale[j - 1])
            total = sum(row.values())
            if total <= 0.0:
                return -math.inf
            alpha.append({i: a / total for i, a in row.items()})
            scale.append(scale[j - 1] + math.log(total))
        end = sum(a * self.prob(_EOS, text[i:n]) for i, a in alpha[n].items())
        return scale[n] + math.log(end) if end > 0 else -math.inf

    def log_prob(self, texts: Sequence[str] | str) -> np.ndarray | float:
        """log p(x) summed over every segmentation, ``</s>`` included (one float for a str)."""
        if isinstance(texts, str):
            return self._log_prob_one(texts)
        return np.array([self._log_prob_one(t) for t in texts], np.float64)
