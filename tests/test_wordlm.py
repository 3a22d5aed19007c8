"""The word bigram judge: a proper distribution, and its forward recursion equals the sum over
every segmentation enumerated by brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from kexue.text.wordlm import WordLM

LINES = [["ab", "a", "b"], ["ab", "ab"], ["a", "ba"], ["b"], ["ab", "b", "a", "ab"], ["ba", "a"]]


def _segmentations(text: str, longest: int):
    """Every split of ``text`` into pieces of 1..longest characters."""
    n = len(text)
    for cuts in itertools.product((False, True), repeat=n - 1):
        bounds = [0, *(i + 1 for i, c in enumerate(cuts) if c), n]
        words = [text[a:b] for a, b in itertools.pairwise(bounds)]
        if all(len(w) <= longest for w in words):
            yield words


@pytest.mark.parametrize("text", ["a", "ab", "abba", "bzab", "aabab", "zzz"])
def test_log_prob_is_the_sum_over_every_segmentation(text: str) -> None:
    lm = WordLM.train(LINES, max_word=3)
    total = 0.0
    for words in _segmentations(text, 3):
        p, prev = 1.0, "<s>"
        for w in words:
            p *= lm.prob(w, prev)
            prev = w
        total += p * lm.prob("</s>", prev)
    assert lm.log_prob(text) == pytest.approx(math.log(total), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("previous", ["<s>", "ab", "a", "zz"])
def test_next_word_distribution_sums_to_one_minus_the_cut_tail(previous: str) -> None:
    """Σ over </s> and every string of ≤ L characters of p(w | v) = 1 − (spelled mass of
    longer strings), in closed form: γ(v)·D₁|W|/N·(1 − s)^L (γ = 1 for an unseen context)."""
    lm = WordLM.train(LINES, max_word=3)
    longest = 7
    alphabet = "abz"  # z: a character never seen in training
    words = ("".join(t) for n in range(1, longest + 1)
             for t in itertools.product(alphabet, repeat=n))
    total = lm.prob("</s>", previous) + sum(lm.prob(w, previous) for w in words)
    # a, b and one unknown character (z) carry all the character mass
    p_chars = lm._char["a"] + lm._char["b"] + lm._unk_char
    assert p_chars == pytest.approx(1.0, abs=1e-15)
    s = lm._stop
    spelled = sum(s * (1 - s) ** (n - 1) * p_chars ** n for n in range(1, longest + 1))
    backoff = lm._d1 * len(lm._uni) / lm._n
    context = lm._context.get(previous, 0)
    gamma = lm._d2 * lm._followers[previous] / context if context else 1.0
    assert total == pytest.approx(1 - gamma * backoff * (1 - spelled), abs=1e-12)


def test_unseen_text_has_mass_and_batch_equals_single() -> None:
    lm = WordLM.train(LINES)
    texts = ["ab", "q", "", "abq"]
    batch = lm.log_prob(texts)
    assert np.all(np.isfinite(batch))
    assert batch.tolist() == [lm.log_prob(t) for t in texts]
    assert lm.log_prob("ab") > lm.log_prob("q")  # a known word beats a spelled-out one


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="max_word"):
        WordLM.train(LINES, max_word=0)
    with pytest.raises(ValueError, match="at least one non-empty word"):
        WordLM.train([[], [""]])
