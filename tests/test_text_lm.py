"""The Kneser–Ney n-gram LM against a dictionary-based reference of the same formulas, its
normalisation over the vocabulary on real text, directions, files and errors."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np
import pytest

from kexue.text.data import pd1998
from kexue.text.lm import BOS, EOS, BiLM, NgramLM, split_sentences

TOY = ["abcab", "abca", "bcab", "cab", "aab", "abcc", "ba"]


def reference_kn(sentences, order, chars):
    """Interpolated modified Kneser–Ney written directly from Chen & Goodman, with tuples."""
    ids = {c: i + 3 for i, c in enumerate(chars)}
    vocab = len(chars) + 3
    top = Counter()
    for s in sentences:
        seq = [BOS] * (order - 1) + [ids[c] for c in s] + [EOS]
        for i in range(order - 1, len(seq)):
            top[tuple(seq[i - order + 1:i + 1])] += 1
    counts = {order: dict(top)}
    raw = dict(top)
    for k in range(order - 1, 0, -1):
        cont, raw_k = Counter(), Counter()
        for gram, c in raw.items():
            cont[gram[1:]] += 1
            raw_k[gram[1:]] += c
        counts[k] = {g: (raw_k[g] if g[0] == BOS else cont[g]) for g in cont}
        raw = dict(raw_k)
    discounts = {}
    for k, table in counts.items():
        n = Counter(c for c in table.values())
        fallback = [0.0, 0.5, 1.0, 1.5]  # where the estimate is undefined or outside (0, r]
        discounts[k] = list(fallback)
        if n[1] and n[2]:
            y = n[1] / (n[1] + 2 * n[2])
            for r in (1, 2, 3):
                estimate = r - (r + 1) * y * n[r + 1] / n[r] if n[r] else -1.0
                discounts[k][r] = estimate if 0 < estimate <= r else fallback[r]
    followers = {k: defaultdict(list) for k in counts}
    for k, table in counts.items():
        for g, c in table.items():
            followers[k][g[:-1]].append(c)

    def prob(history, w):
        p = 1.0 / (vocab - 1)
        for k in range(1, order + 1):
            h = tuple(history[len(history) - (k - 1):]) if k > 1 else ()
            cs = followers[k].get(h)
            if not cs:
                continue
            d = discounts[k]
            total = sum(cs)
            gamma = sum(d[min(c, 3)] for c in cs) / total
            c = counts[k].get(h + (w,), 0)
            p = max(c - d[min(c, 3)], 0) / total + gamma * p
        return p
    return prob


def test_probabilities_match_the_reference_formulas():
    lm = NgramLM.train(TOY, order=3)
    ref = reference_kn(TOY, 3, lm.chars)
    for h1 in range(1, lm.vocab_size):
        for h2 in range(lm.vocab_size):
            logp = lm.next_log_probs([h1, h2])
            for w in range(lm.vocab_size):
                if w == BOS:
                    assert logp[w] == -np.inf
                    continue
                assert math.isclose(math.exp(logp[w]), ref([h1, h2], w), rel_tol=1e-12)


def test_every_character_keeps_some_probability():
    """Smoothing: even where the discount estimate degenerates (a context whose followers
    all occur 3+ times), every id but <s> gets p > 0."""
    corpus = ["bc", "d", "bdaadc", "bbbdaa", "bdaadc", "bbbdaa"]
    lm = NgramLM.train(corpus, order=2)
    for h in range(lm.vocab_size):
        p = np.exp(lm.next_log_probs([h]))
        assert np.all(np.delete(p, BOS) > 0) and abs(p.sum() - 1) < 1e-12
    assert np.isfinite(lm.log_prob("dcbx"))


def test_sentence_log_prob_is_the_chain_of_next_probabilities():
    lm = NgramLM.train(TOY, order=3)
    ref = reference_kn(TOY, 3, lm.chars)
    ids = {c: i + 3 for i, c in enumerate(lm.chars)}
    for s in ["abc", "ccba", "a"]:
        seq = [BOS, BOS] + [ids[c] for c in s] + [EOS]
        expected = sum(math.log(ref(seq[i - 2:i], seq[i])) for i in range(2, len(seq)))
        assert math.isclose(lm.log_prob(s), expected, rel_tol=1e-12)


@pytest.fixture(scope="module")
def news_lm():
    sentences = split_sentences(pd1998()[:3000])
    return NgramLM.train(sentences[:-200], order=4), sentences[-200:]


def test_next_distributions_sum_to_one_on_real_text(news_lm):
    lm, held_out = news_lm
    rng = np.random.default_rng(0)
    for s in rng.choice(held_out, 20):
        ids = lm.encode(s)
        cut = int(rng.integers(len(ids) + 1))
        p = np.exp(lm.next_log_probs(ids[:cut]))
        assert abs(p.sum() - 1.0) <= 1e-9


def test_held_out_perplexity_is_finite_and_beats_unigram(news_lm):
    lm, held_out = news_lm
    sentences = split_sentences(pd1998()[:3000])[:-200]
    unigram = NgramLM.train(sentences, order=1)
    assert 10 < lm.perplexity(held_out) < 0.6 * unigram.perplexity(held_out)


def test_backward_model_reads_reversed_text():
    fwd = NgramLM.train([s[::-1] for s in TOY], order=3)
    bwd = NgramLM.train(TOY, order=3, reverse=True)
    for s in ["abc", "ccba", "b"]:
        assert math.isclose(bwd.log_prob(s), fwd.log_prob(s[::-1]), rel_tol=1e-12)
    assert bwd.decode(bwd.encode("abca")) == "abca"


def test_unknown_characters_map_to_unk_and_are_reported():
    lm = NgramLM.train(TOY, order=2)
    assert lm.unknown("abxyx") == ["x", "y"]
    assert np.isfinite(lm.log_prob("axb"))


def test_save_and_load_round_trip(tmp_path):
    model = BiLM.train(TOY, order=3)
    path = tmp_path / "lm.npz"
    model.save(path)
    loaded = BiLM.load(path)
    for s in ["abc", "cab"]:
        assert loaded.forward.log_prob(s) == model.forward.log_prob(s)
        assert loaded.backward.log_prob(s) == model.backward.log_prob(s)
    single = tmp_path / "one.npz"
    model.forward.save(single)
    assert NgramLM.load(single).log_prob("abc") == model.forward.log_prob("abc")


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match="order"):
        NgramLM.train(TOY, order=0)
    with pytest.raises(ValueError, match="at least one character"):
        NgramLM.train(["", ""])
    with pytest.raises(ValueError, match="int64"):
        NgramLM.train(TOY, order=40)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BiLM.load(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a kexue language-model file"):
        BiLM.load(bad)


def test_split_sentences():
    assert split_sentences(["今天 天气好。我们去公园！好", "a"]) == ["今天天气好。", "我们去公园！"]
