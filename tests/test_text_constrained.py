"""Constrained generation: hard constraints always hold, keywords stay words (jieba), terms
compute what they say, the forward×backward proposal is the normalised product, and bad input
gets named."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from kexue.text.constrained import (
    Generations,
    TextTarget,
    TokenSpace,
    _intact_start,
    _keyword_state,
    compress,
    correct,
    fluency,
    hard_keywords,
    keyword_boundaries,
    keyword_multiplicity,
    keywords_to_sentence,
    length_prior,
    lm_tokens,
    paraphrase,
    placements,
    repetition_penalty,
    similarity,
    soft_keywords,
)
from kexue.text.data import pd1998
from kexue.text.judging import intact, keyword_integrity, segmenter
from kexue.text.lm import BiLM, split_sentences
from kexue.text.sampling import State, chain_generators


@pytest.fixture(scope="module")
def lm() -> BiLM:
    return BiLM.train(split_sentences(pd1998()[:4000]), order=4)


@pytest.mark.parametrize("method", ["anneal", "mh", "cgmh"])
def test_keywords_are_always_in_the_output_in_order(lm, method):
    words = ["经济", "发展"]
    seen = []
    g = keywords_to_sentence(words, 120, lm=lm, method=method, seed=1,
                             on_step=lambda t, s: seen.append(s))
    assert len(seen) == 120
    space = TokenSpace(lm.forward, words)
    keys = [space.phrase_ids[w] for w in words]
    for state in seen + [g.chain.state]:
        assert [t for t, span in zip(state.tokens, state.spans, strict=True) if span] == keys
        assert hard_keywords(words)([space.decode(state.tokens)])[0] == 0.0
    assert g.terms["keywords"] == 0.0
    assert math.isclose(g.log_prob, sum(g.terms.values()), rel_tol=1e-9)


def test_annealing_beats_the_start_and_sampling(lm):
    """Annealing is a maximiser: far above the start state, and above what MH sampling holds
    at the same number of steps (fixed seeds)."""
    words = ["北京", "举行"]
    anneal = keywords_to_sentence(words, 150, lm=lm, seed=0)
    sample = keywords_to_sentence(words, 150, lm=lm, method="mh", seed=0)
    assert anneal.log_prob > anneal.chain.log_probs[0] + 5.0
    assert anneal.terms["fluency"] > sample.terms["fluency"]


# The 50 most frequent content words (POS n, v, vn, ns, nt, nz, a, an; >= 2 Han characters) of
# pd1998_tagged(), in order, and three words of the examples.
WORDS = ("中国 发展 经济 工作 企业 国家 记者 建设 问题 市场 全国 人民 北京 进行 改革 政府 社会 "
         "我国 地区 美国 公司 世界 新华社 领导 管理 关系 活动 国际 群众 重要 提高 技术 干部 部门 "
         "职工 文化 生产 同志 金融 加强 会议 组织 方面 生活 产品 人员 研究 报道 增长 服务 "
         "科技 创新 节日").split()


def test_the_start_keeps_every_pair_of_real_words_intact(lm):
    """π(start) > 0 with the boundary term: for every ordered pair of 53 real words (2756
    sets) the start text holds both, in order, and jieba keeps both intact; side by side
    fuses some pairs (市场经济 is one jieba word), and those get a separator."""
    jieba = segmenter("jieba")
    separated = 0
    for a, b in itertools.permutations(WORDS, 2):
        sep = _intact_start([a, b], lm.forward)
        assert sep in ("", "，"), (a, b, sep)
        text = sep.join([a, b])
        assert hard_keywords([a, b])([text])[0] == 0.0
        assert intact(text, [a, b], jieba) == [True, True], (a, b)
        separated += bool(sep)
    assert separated > 0 and not any(intact("市场经济", ["市场", "经济"], jieba))
    space = TokenSpace(lm.forward, ["市场", "经济"])
    x0 = _keyword_state(space, ["市场", "经济"], "，")
    assert x0.spans == (1, 0, 2) and space.decode(x0.tokens) == "市场，经济"
    assert keyword_boundaries(["市场", "经济"])(["市场，经济", "市场经济"]).tolist() == \
        [0.0, -np.inf]


def test_the_boundary_term_by_hand():
    term = keyword_boundaries(["节日"])
    # jieba: 春节|日 · 节日快乐 (one dictionary word: 节日 fused) · 春节 (no 节日) · 在|节日|里
    assert term(["春节日", "节日快乐", "春节", "在节日里"]).tolist() == \
        [-np.inf, -np.inf, -np.inf, 0.0]
    assert keyword_boundaries(["科技", "创新"])(["科技术创新", "科技，创新"]).tolist() == \
        [-np.inf, 0.0]
    whole = keyword_boundaries(["ab", "c"], segment=lambda t: [t])  # one token: fused
    assert whole(["abc", "ab"]).tolist() == [-np.inf, -np.inf]
    assert keyword_boundaries(["ab"], segment=lambda t: [t])(["ab"]).tolist() == [0.0]


def test_a_segmenter_that_fuses_everything_has_no_start(lm):
    with pytest.raises(ValueError, match="no start text keeps the keywords"):
        _intact_start(["经济", "发展"], lm.forward, segment=lambda t: [t])
    with pytest.raises(ValueError, match="keywords must be a list of strings"):
        keyword_boundaries("节日")
    with pytest.raises(ValueError, match="cache must be an int >= 0"):
        keyword_boundaries(["节日"], cache=-1)


@pytest.mark.parametrize("method", ["anneal", "mh"])
def test_generated_keywords_stay_words_under_jieba(lm, method):
    """intact=True: every visited state and every output keeps its keywords intact under
    jieba (integrity 1.0), on keyword sets whose bare start fuses (市场经济) or that the issue
    saw broken (节日 → 春节日, 科技 → 科技术)."""
    jieba = segmenter("jieba")
    sets = [["确保", "节日", "群众"], ["科技", "创新", "企业"], ["市场", "经济"]]
    outputs, before = [], []
    for words in sets:
        space = TokenSpace(lm.forward, words)
        seen = []
        runs = keywords_to_sentence(words, 40, lm=lm, method=method, chains=4, seed=3,
                                    on_step=lambda t, s, seen=seen: seen.extend(s))
        texts = [space.decode(x.tokens) for x in seen]
        assert keyword_integrity(texts, [words] * len(texts), jieba) == 1.0
        assert all(g.terms["boundaries"] == 0.0 for g in runs)
        outputs += runs.texts
        before += keywords_to_sentence(words, 40, lm=lm, method=method, chains=4, seed=3,
                                       intact=False).texts
    sets = [w for w in sets for _ in range(4)]
    assert keyword_integrity(outputs, sets, jieba) == 1.0
    assert keyword_integrity(before, sets, jieba) < 0.8  # without the term: 市场经济, 科技术 …


def test_placements_count_every_in_order_occurrence():
    rng = np.random.default_rng(0)
    for _ in range(200):
        text = "".join(rng.choice(list("ab"), int(rng.integers(0, 9))))
        words = ["".join(rng.choice(list("ab"), int(rng.integers(1, 3))))
                 for _ in range(int(rng.integers(1, 3)))]
        brute = 0  # choose start positions, check in order, non-overlapping, matching
        for starts in itertools.combinations(range(len(text)), len(words)):
            ends = [s + len(w) for s, w in zip(starts, words, strict=True)]
            if all(text[s:e] == w for s, e, w in zip(starts, ends, words, strict=True)) and \
                    all(ends[j] <= starts[j + 1] for j in range(len(words) - 1)):
                brute += 1
        assert placements(text, words) == brute, (text, words)
        # the term's shortcut (each keyword once) and its table agree with the enumeration
        with np.errstate(divide="ignore"):
            assert keyword_multiplicity(words)([text])[0] == -np.log(float(brute))


def test_terms_by_hand():
    assert hard_keywords(["ab", "d"])(["xabyd", "dab", "ab"]).tolist() == [0.0, -np.inf, -np.inf]
    assert soft_keywords(["a", "z"], 2.0)(["abc"]).tolist() == [-2.0]
    # bigrams of "abcd": ab bc cd; of "abce": ab bc ce → F1 = 2·2/(3+3)
    assert math.isclose(similarity("abcd", 1.0)(["abce"])[0], 4 / 6)
    assert similarity("abcd", 3.0)(["abcd"])[0] == 3.0
    assert length_prior(5, 2)(["abc"])[0] == -(2 ** 2) / (2 * 4)
    # "abab ab": bigrams ab ba ab b␣ ... use plain text: "ababa" → ab ba ab ba: two repeats
    assert repetition_penalty(1.5)(["ababa"])[0] == -3.0


def test_target_is_the_sum_of_its_terms(lm):
    space = TokenSpace(lm.forward, ["经济"])
    terms = {"fluency": fluency(lm.forward), "len": length_prior(6, 1)}
    target = TextTarget(space, terms)
    x = (space.phrase_ids["经济"],) + space.encode("发展")
    expected = lm.forward.log_prob("经济发展") - 2.0 ** 2 / 2
    assert math.isclose(target.log_prob([x])[0], expected, rel_tol=1e-12)


def test_proposal_is_the_normalised_forward_backward_product(lm):
    space = TokenSpace(lm.forward)
    q = lm_tokens(lm, space, uniform_mix=0.0)
    left, right = space.encode("人民"), space.encode("活水平")
    logq = q(left, right)
    assert math.isclose(np.logaddexp.reduce(logq[np.isfinite(logq)]), 0.0, abs_tol=1e-9)
    f = lm.forward.next_log_probs(lm.forward.encode("人民"))
    b = lm.backward.next_log_probs(lm.backward.encode("活水平"))
    cands = space.char_ids
    direct = f[cands] + b[cands]
    direct = direct - np.logaddexp.reduce(direct)
    np.testing.assert_allclose(logq[cands], direct, rtol=0, atol=1e-9)
    assert space.strings[int(np.argmax(logq))] == "生"
    mixed = lm_tokens(lm, space, uniform_mix=0.1)(left, right)
    assert np.all(np.isfinite(mixed[cands])) and np.all(np.isinf(mixed[:3]))


def test_batched_proposal_rows_equal_one_context_at_a_time(lm):
    """LMTokens.probs of many contexts (phrases among the tokens, short and long sides) equals
    the exponential of its one-context call and the normalised forward×backward product."""
    space = TokenSpace(lm.forward, ["经济", "发展"])
    q = lm_tokens(lm, space, uniform_mix=0.05)
    key = space.phrase_ids["经济"]
    contexts = [(space.encode("人民"), space.encode("活水平")), ((), ()),
                ((key,) + space.encode("的"), space.encode("很快")),
                (space.encode("我们要加快"), (space.phrase_ids["发展"],))]
    rows = q.probs(contexts)
    assert rows.shape == (4, len(space))
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert np.all(rows[:, list(space.phrase_ids.values())] == 0) and np.all(rows[:, :3] == 0)
    cands = space.char_ids
    for row, (left, right) in zip(rows, contexts, strict=True):
        np.testing.assert_allclose(row, np.exp(q(left, right)), rtol=1e-12, atol=0)
        f = lm.forward.next_log_probs(lm.forward.encode(space.decode(left)))[cands]
        b = lm.backward.next_log_probs(lm.backward.encode(space.decode(right)))[cands]
        direct = np.exp(f + b - np.logaddexp.reduce(f + b))
        np.testing.assert_allclose(row[cands], 0.95 * direct + 0.05 / len(cands), rtol=1e-9)


def test_batched_keywords_equal_single_runs_chain_by_chain(lm):
    """chains=3 gives three sentences with the keywords; sentence k is the single run on chain
    k's generator (the batched LM rows and scores change nothing), and R-hat/ESS are there."""
    words = ["经济", "发展"]
    batch = keywords_to_sentence(words, 60, lm=lm, method="mh", chains=3, seed=5)
    assert isinstance(batch, Generations) and len(batch) == 3
    assert batch.chains.log_probs.shape == (3, 60)
    for k, (g, rng) in enumerate(zip(batch, chain_generators(5, 3), strict=True)):
        single = keywords_to_sentence(words, 60, lm=lm, method="mh", seed=rng)
        assert single.text == g.text == batch.texts[k]
        np.testing.assert_array_equal(single.chain.log_probs, batch.chains.log_probs[k])
        assert g.text.index("经济") < g.text.index("发展")
        assert math.isclose(g.log_prob, sum(g.terms.values()), rel_tol=1e-9)
    assert batch.rhat() >= 1.0 and batch.ess() > 0


def test_annealing_has_no_rhat(lm):
    with pytest.raises(ValueError, match="stop_rhat"):
        keywords_to_sentence(["经济"], 10, lm=lm, method="anneal", chains=2, stop_rhat=1.01)
    runs = keywords_to_sentence(["经济"], 10, lm=lm, method="anneal", chains=2, seed=0)
    with pytest.raises(ValueError, match="annealed"):
        runs.rhat()
    assert runs.chains.best_energies.shape == (2, 10)
    assert np.all(np.diff(runs.chains.best_energies, axis=1) <= 0)


def test_compress_keeps_source_words_in_a_shorter_sentence(lm):
    source = "国务院总理李鹏今天在人民大会堂会见了日本客人。"
    g = compress(source, ratio=0.5, steps=150, lm=lm, seed=0)
    assert len(g.text) < len(source)
    assert set(g.text) <= set(source)  # made of the source's words only


def test_paraphrase_and_correct_run(lm):
    source = "我们要加快经济发展的步伐。"
    p = paraphrase(source, 100, lm=lm, seed=0)
    assert p.text != source and p.terms["similarity"] > 0
    c = correct("我们要加快经齐发展。", 100, lm=lm, seed=0)
    assert c.terms["similarity"] > 0


def test_bad_inputs_are_named(lm):
    with pytest.raises(ValueError, match="non-empty list"):
        keywords_to_sentence([], lm=lm)
    with pytest.raises(ValueError, match="list of strings"):
        keywords_to_sentence("经济", lm=lm)
    with pytest.raises(ValueError, match="never seen"):
        keywords_to_sentence(["\u2603\u2604"], lm=lm)
    with pytest.raises(ValueError, match="method"):
        keywords_to_sentence(["经济"], 5, lm=lm, method="beam")
    with pytest.raises(ValueError, match="source"):
        paraphrase("   ", lm=lm)
    with pytest.raises(ValueError, match="ratio"):
        compress("经济", ratio=1.5, lm=lm)
    with pytest.raises(ValueError, match="mean must be a finite number > 0"):
        length_prior(0, 1)
    with pytest.raises(ValueError, match="mean must be a finite number > 0"):
        length_prior(math.inf, 1)
    with pytest.raises(ValueError, match="strings"):
        keywords_to_sentence([3, 4], lm=lm)
    with pytest.raises(ValueError, match="positive target probability"):
        from kexue.text.sampling import EditProposal, metropolis_hastings, uniform_tokens
        space = TokenSpace(lm.forward)
        target = TextTarget(space, {"k": hard_keywords(["经济"])})
        metropolis_hastings(target, EditProposal(uniform_tokens(space.char_ids, len(space))),
                            State(space.encode("发展")), 5)
