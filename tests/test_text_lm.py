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


def test_batched_next_probs_match_the_reference_formulas():
    """Every context of the toy model at once, with leading batch axes: (V, V, 2) -> (V, V, V)."""
    lm = NgramLM.train(TOY, order=3)
    ref = reference_kn(TOY, 3, lm.chars)
    v = lm.vocab_size
    grid = np.stack(np.meshgrid(np.arange(v), np.arange(v), indexing="ij"), -1)  # (V, V, 2)
    p = lm.next_probs(grid)
    assert p.shape == (v, v, v)
    for h1 in range(1, v):
        for h2 in range(v):
            for w in range(v):
                if w != BOS:
                    assert math.isclose(p[h1, h2, w], ref([h1, h2], w), rel_tol=1e-12)
    # a short context is padded with <s>; only the last order − 1 ids count
    np.testing.assert_allclose(lm.next_probs([[4]]), lm.next_probs([[BOS, 4]]), rtol=0)
    np.testing.assert_allclose(lm.next_probs([[5, 3, 4]]), lm.next_probs([[3, 4]]), rtol=0)


def test_batched_sentence_scores_equal_the_chain_rule_one_by_one():
    """log_prob of a batch (one vectorised pass, remembered n-grams) equals the reference chain
    rule of each sentence, in both directions, with unknown characters and empty text."""
    lm = NgramLM.train(TOY, order=3)
    ref = reference_kn(TOY, 3, lm.chars)
    ids = {c: i + 3 for i, c in enumerate(lm.chars)}
    texts = ["abc", "", "ccba", "axb", "a", "abcabcab"]
    for _ in range(2):  # the second call reads the memo
        got = lm.log_prob(texts)
        for text, value in zip(texts, got, strict=True):
            seq = [BOS, BOS] + [ids.get(c, 0) for c in text] + [EOS]
            expected = sum(math.log(ref(seq[i - 2:i], seq[i])) for i in range(2, len(seq)))
            assert math.isclose(value, expected, rel_tol=1e-12)
    bwd = NgramLM.train(TOY, order=3, reverse=True)
    fwd_of_reversed = NgramLM.train([t[::-1] for t in TOY], order=3)
    np.testing.assert_allclose(bwd.log_prob(texts), fwd_of_reversed.log_prob(
        [t[::-1] for t in texts]), rtol=1e-12)
    np.testing.assert_array_equal(lm.log_prob(texts), lm.log_prob_ids(
        [lm.encode(t) for t in texts]))


def test_a_pickled_model_leaves_its_caches_behind():
    import pickle

    lm = NgramLM.train(TOY, order=3)
    before = lm.log_prob(["abc", "cab"])
    lm.next_probs([[3, 4]])
    copy = pickle.loads(pickle.dumps(lm))
    assert copy._memo == {} and copy._follow == {} and copy._unigram is None
    np.testing.assert_array_equal(copy.log_prob(["abc", "cab"]), before)


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


# ----------------------------------------------------------------------------- file checks
@pytest.fixture(scope="module")
def small_bilm() -> BiLM:
    return BiLM.train(split_sentences(pd1998()[:200]), order=3, max_vocab=800)


def _arrays_of(model: BiLM, tmp_path) -> dict[str, np.ndarray]:
    path = tmp_path / "good.npz"
    model.save(path)
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def test_a_good_file_round_trips_exactly(small_bilm, tmp_path):
    """Every array comes back with its dtype and values, and so do the probabilities."""
    arrays = _arrays_of(small_bilm, tmp_path)
    loaded = BiLM.load(tmp_path / "good.npz")
    again = {**loaded.forward._arrays("fwd/"), **loaded.backward._arrays("bwd/")}
    assert sorted(again) == sorted(arrays)
    for name, array in arrays.items():
        assert again[name].dtype == array.dtype and np.array_equal(again[name], array), name
    held_out = split_sentences(pd1998()[200:220])
    for model, twin in ((small_bilm.forward, loaded.forward), (small_bilm.backward,
                                                                loaded.backward)):
        assert np.array_equal(model.log_prob(held_out), twin.log_prob(held_out))
        assert np.array_equal(model.next_log_probs([5, 9]), twin.next_log_probs([5, 9]))
    assert not list(tmp_path.glob("*.tmp"))  # the atomic save left no temporary behind


def _v(arrays):  # vocabulary size of the saved model
    return len(arrays["fwd/chars"]) + 3


def _shift_one(keys):  # moves one key into a gap: still sorted and in range, no longer a context
    keys = keys.copy()
    keys[np.flatnonzero(np.diff(keys) > 1)[0]] += 1
    return keys


# (array, how to alter it, words the error must contain)
CORRUPTIONS = [
    ("fwd/keys_2", lambda a, A: a.astype(np.float64), "dtype float64, expected integers"),
    ("bwd/counts_3", lambda a, A: a.astype(np.int64), "dtype int64, expected floats"),
    ("fwd/chars", lambda a, A: np.arange(len(a)), "expected strings"),
    ("fwd/meta", lambda a, A: a.astype(np.float64), "expected integers"),
    ("fwd/counts_3", lambda a, A: a[:-1], "expected ("),
    ("bwd/ctx_gamma_2", lambda a, A: a[:, None], "dimension"),
    ("fwd/discounts_1", lambda a, A: a[:3], "expected (4,)"),
    ("fwd/keys_1", lambda a, A: np.r_[a[:-1], _v(A)], "out of range"),
    ("bwd/ctx_keys_3", lambda a, A: np.r_[-1, a[1:]], "out of range"),
    ("fwd/keys_3", lambda a, A: a[::-1].copy(), "strictly increasing"),
    ("bwd/ctx_gamma_2", lambda a, A: np.r_[np.nan, a[1:]], "not finite"),
    ("fwd/counts_2", lambda a, A: np.r_[np.inf, a[1:]], "not finite"),
    ("fwd/counts_1", lambda a, A: np.r_[0.0, a[1:]], "counts <= 0"),
    ("fwd/discounts_2", lambda a, A: np.array([0.0, 0.5, 3.0, 1.5]), "0 < D(r) <= r"),
    ("fwd/meta", lambda a, A: np.array([a[0], 0, a[2]]), "expected an order >= 1"),
    ("fwd/meta", lambda a, A: np.array([a[0], a[1], 1]), "wrong direction"),
    ("bwd/meta", lambda a, A: np.array([a[0], a[1], 7]), "direction 7"),
    ("fwd/chars", lambda a, A: np.concatenate([a[:-1], a[:1]]), "twice"),
    ("fwd/chars", lambda a, A: np.array([*a[:-1], "ab"]), "single characters"),
    ("bwd/chars", lambda a, A: a[::-1].copy(), "differs from 'fwd/chars'"),
    ("fwd/ctx_keys_3", lambda a, A: _shift_one(a), "contexts of 'keys_3'"),
    ("bwd/ctx_total_3", lambda a, A: a * 2, "does not match the counts"),
    ("fwd/ctx_gamma_1", lambda a, A: a + 1.0, "does not match the counts"),
    ("fwd/counts_2", lambda a, A: np.array([None] * len(a), dtype=object), "cannot be read"),
]


@pytest.mark.parametrize(("name", "alter", "message"), CORRUPTIONS,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CORRUPTIONS)])
def test_an_inconsistent_file_is_named_with_its_array(small_bilm, tmp_path, name, alter,
                                                      message):
    """A structurally valid .npz whose arrays disagree is refused at load time, with the file
    and the array in the message (before, such files loaded and failed later, deep inside a
    lookup, or silently gave wrong probabilities)."""
    arrays = _arrays_of(small_bilm, tmp_path)
    arrays[name] = alter(arrays[name], arrays)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)  # allow_pickle defaults to True on save: object arrays are written
    with pytest.raises(ValueError) as info:
        BiLM.load(bad)
    text = str(info.value)
    assert str(bad) in text and message in text
    assert name in text or name.split("/")[1] in text  # the offending array is named


def test_the_single_direction_loader_checks_too(small_bilm, tmp_path):
    path = tmp_path / "fwd.npz"
    small_bilm.forward.save(path)
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["keys_3"] = arrays["keys_3"].astype(np.float32)
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=r"fwd\.npz: array 'keys_3' has dtype float32"):
        NgramLM.load(path)
    both = tmp_path / "both.npz"
    small_bilm.save(both)
    with pytest.raises(ValueError, match="read it with BiLM.load"):
        NgramLM.load(both)
    small_bilm.forward.save(path)
    with pytest.raises(ValueError, match="read it with NgramLM.load"):
        BiLM.load(path)


def test_a_failed_save_keeps_the_previous_file(small_bilm, tmp_path, monkeypatch):
    """The save goes through a temporary sibling: an error mid-write leaves the old model
    readable and no temporary behind."""
    path = tmp_path / "lm.npz"
    small_bilm.save(path)
    before = path.read_bytes()

    def broken(f, **arrays):
        f.write(b"half a model")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", broken)
    with pytest.raises(OSError, match="No space"):
        BiLM.train(TOY, order=2).save(path)
    assert path.read_bytes() == before and not list(tmp_path.glob(".*"))
    BiLM.load(path)
