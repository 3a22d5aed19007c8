"""Tests for kexue.text.contrast: closed-form scores on tiny tables, NaN handling, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kexue.text.contrast import (
    METHODS,
    contrast,
    has_latin,
    is_han_word,
    is_term,
    log_likelihood_ratio,
    log_odds_z,
    log_rate_ratio_lcb,
    precision_at_k,
    standalone_share,
)


def _g2_by_hand(a: float, b: float, c: float, d: float) -> float:
    n = a + b + c + d
    r1, r2, k1, k2 = a + b, c + d, a + c, b + d
    cells = [(a, r1 * k1 / n), (b, r1 * k2 / n), (c, r2 * k1 / n), (d, r2 * k2 / n)]
    return 2 * sum(o * math.log(o / e) for o, e in cells if o > 0)


@pytest.mark.parametrize("y_d, n_d, y_g, n_g", [(10, 100, 5, 200), (3, 50, 40, 60), (7, 7, 1, 9)])
def test_llr_matches_hand_computation_and_scipy(y_d, n_d, y_g, n_g):
    got = float(log_likelihood_ratio(y_d, y_g, n_d, n_g))
    want = _g2_by_hand(y_d, n_d - y_d, y_g, n_g - y_g)
    sign = 1.0 if y_d / n_d > y_g / n_g else -1.0
    assert got == pytest.approx(sign * want, rel=1e-12)
    stats = pytest.importorskip("scipy.stats")
    table = np.array([[y_d, n_d - y_d], [y_g, n_g - y_g]])
    g2, _, _, _ = stats.chi2_contingency(table, correction=False, lambda_="log-likelihood")
    assert abs(got) == pytest.approx(g2, rel=1e-10)


def test_llr_equal_rates_is_zero():
    assert float(log_likelihood_ratio(5, 10, 100, 200)) == pytest.approx(0.0, abs=1e-12)


def test_log_odds_matches_formula():
    y_d, y_g, n_d, n_g, a0 = 12.0, 3.0, 500.0, 2000.0, 50.0
    aw = a0 * (y_d + y_g) / (n_d + n_g)
    delta = math.log((y_d + aw) / (n_d + a0 - y_d - aw)) - math.log(
        (y_g + aw) / (n_g + a0 - y_g - aw)
    )
    z = delta / math.sqrt(1 / (y_d + aw) + 1 / (y_g + aw))
    assert float(log_odds_z(y_d, y_g, n_d, n_g, a0)) == pytest.approx(z, rel=1e-12)
    ranked = contrast({"w": 12, "x": 488}, {"w": 3, "x": 1997}, method="log_odds", alpha0=a0)
    assert dict((r.word, r.score) for r in ranked)["w"] == pytest.approx(z, rel=1e-12)


def test_default_alpha0_is_pooled_counts():
    dom, gen = {"w": 12, "x": 488}, {"w": 3, "x": 1997}
    default = contrast(dom, gen, method="log_odds")
    explicit = contrast(dom, gen, method="log_odds", alpha0=2500.0)
    assert default == explicit


DOMAIN = {"甲乙": 4, "丙丁": 2, "戊己": 3}
GENERAL = {"甲乙": 2, "丙丁": 6, "庚辛": 10}


@pytest.mark.parametrize("method", ["llr", "log_odds", "blog_filled"])
def test_missing_general_count_is_zero(method):
    with_zero = contrast(DOMAIN, {**GENERAL, "戊己": 0}, method=method)
    absent = contrast(DOMAIN, GENERAL, method=method)
    assert with_zero == absent
    assert all(math.isfinite(r.score) for r in absent)
    assert {r.word for r in absent} == set(DOMAIN)  # general-only words are not returned


def test_blog_matches_hand_computation_and_ranks_missing_last():
    # n_d = 9, n_g = 18: general counts rescaled by 1/2 -> 甲乙 1, 丙丁 3, 庚辛 5.
    # Words on both sides: t = 5, 5 -> m = 5, a = 9 / 10.
    ranked = contrast(DOMAIN, GENERAL, method="blog")
    assert [r.word for r in ranked] == ["甲乙", "丙丁", "戊己"]
    assert ranked[0].score == pytest.approx((4 + 0.9 * 5) / (5 + 5))
    assert ranked[1].score == pytest.approx((2 + 0.9 * 5) / (5 + 5))
    assert math.isnan(ranked[2].score)
    assert ranked[2][2:] == (3, 0)
    # Filled: union t = 5, 5, 3, 5 -> m = 4.5, a = 9 / 18; 戊己 now ranks first.
    filled = contrast(DOMAIN, GENERAL, method="blog_filled")
    scores = {r.word: r.score for r in filled}
    assert scores["戊己"] == pytest.approx((3 + 0.5 * 4.5) / (3 + 4.5))
    assert scores["甲乙"] == pytest.approx((4 + 0.5 * 4.5) / (5 + 4.5))
    assert filled[0].word == "戊己"


def test_sorting_min_count_and_totals():
    dom = {"多": 50, "少": 1, "中": 10}
    gen = {"多": 5, "少": 5, "中": 100}
    ranked = contrast(dom, gen, method="llr")
    assert [r.word for r in ranked] == ["多", "少", "中"]
    assert ranked[-1].score < 0  # under-represented words get a negative sign
    assert [r.word for r in contrast(dom, gen, method="llr", min_count=2)] == ["多", "中"]
    # a larger declared total changes the rates (and the scores)
    bigger = contrast(dom, gen, method="llr", domain_total=1000)
    assert bigger[0].score != ranked[0].score


@pytest.mark.parametrize("y_d, n_d, n_g, conf", [(3, 100, 400, 0.95), (40, 1e4, 2e3, 0.9)])
def test_rate_ratio_bound_closed_form(y_d, n_d, n_g, conf):
    # y_g = 1/2 makes the posterior Beta(y_d + 1/2, 1), whose CDF is x^a: π_lo = (1 − conf)^(1/a)
    a = y_d + 0.5
    lo = (1 - conf) ** (1 / a)
    want = math.log(lo / (1 - lo)) + math.log(n_g / n_d)
    got = float(log_rate_ratio_lcb(y_d, 0.5, n_d, n_g, conf))
    assert got == pytest.approx(want, rel=1e-9)
    stats = pytest.importorskip("scipy.stats")
    y = np.array([0.0, 1.0, 7.0, 300.0])
    q = stats.beta.ppf(1 - conf, y + 0.5, 9.5)
    np.testing.assert_allclose(
        log_rate_ratio_lcb(y, 9.0, n_d, n_g, conf), np.log(q / (1 - q) * n_g / n_d), rtol=1e-9
    )


def test_rate_ratio_bound_orders_by_ratio_not_evidence():
    # 4x over-represented and very frequent vs 60 occurrences never seen on the general side:
    # LLR prefers the frequent word, the bound on the ratio the exclusive one
    dom = {"常见": 4000, "术语": 60, "其他": 95940}
    gen = {"常见": 1000, "其他": 99000}
    assert contrast(dom, gen, method="llr")[0].word == "常见"
    assert contrast(dom, gen, method="ratio_lcb")[0].word == "术语"
    # the bound tightens with the count: more occurrences at the same ratio score higher
    few, many = log_rate_ratio_lcb(np.array([4.0, 400.0]), np.array([1.0, 100.0]), 1e5, 1e5)
    assert few < many < math.log(4)
    assert float(log_rate_ratio_lcb(4e6, 1e6, 1e5, 1e5)) == pytest.approx(math.log(4), abs=1e-2)


def test_standalone_share_and_edge_term():
    dom = {"是": 6, "骗局": 3, "是骗局": 2, "气候": 4}
    gen = {"是": 10, "气候": 1, "候": 1}
    share = standalone_share(dom, gen)
    assert share["是"] == pytest.approx(16 / 18)  # 16 alone, 2 inside 是骗局
    assert share["候"] == pytest.approx(1 / 6)  # 1 alone, 5 inside 气候
    assert share["骗"] == 0.0
    plain = {r.word: r.score for r in contrast(dom, gen, method="ratio_lcb")}
    edges = {r.word: r.score for r in contrast(dom, gen, method="ratio_lcb_edges")}
    assert edges["是骗局"] == pytest.approx(plain["是骗局"] + math.log(1 - 16 / 18))
    assert edges["气候"] == pytest.approx(plain["气候"] + math.log(1 - 1 / 6))
    assert edges["骗局"] == pytest.approx(plain["骗局"])
    assert edges["是"] == pytest.approx(plain["是"])  # single characters: no edge term
    # without single characters in the tables the two methods agree
    words_only = ({"骗局": 3, "是骗局": 2}, {"气候": 1})
    assert contrast(*words_only, method="ratio_lcb_edges") == contrast(
        *words_only, method="ratio_lcb"
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "tfidf"}, "method"),
        ({"confidence": 1.0}, "confidence"),
        ({"method": "llr", "confidence": 0}, "confidence"),
        ({"method": "log_odds", "alpha0": 0.0}, "alpha0"),
        ({"method": "log_odds", "alpha0": -1.0}, "alpha0"),
        ({"min_count": 0}, "min_count"),
        ({"domain_total": 3}, "domain_total"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        contrast(DOMAIN, GENERAL, **kwargs)


@pytest.mark.parametrize(
    "dom, gen, match",
    [
        ({"a": -1}, {"a": 1}, "domain_counts"),
        ({"a": 1}, {"a": float("nan")}, "general_counts"),
        ({"a": 1}, {"a": "2"}, "general_counts"),
        ({}, {"a": 1}, "domain_total"),
        ({"a": 1}, {}, "general_total"),
    ],
)
def test_bad_counts(dom, gen, match):
    with pytest.raises(ValueError, match=match):
        contrast(dom, gen)


def test_methods_registry_all_run():
    for method in METHODS:
        assert len(contrast(DOMAIN, GENERAL, method=method)) == 3


def test_precision_at_k_filters_candidates():
    ranked = ["气候", "a1", "的", "变暖", "地球", ("碳汇", 1.0, 3, 0)]
    ref = {"气候", "碳汇", "的"}
    # candidates: 气候 变暖 地球 碳汇 -> hits 1 0 0 1
    got = precision_at_k(ranked, ref, [1, 2, 4, 8])
    assert got == {1: 1.0, 2: 0.5, 4: 0.5, 8: 0.25}
    assert is_han_word("气候") and not is_han_word("的") and not is_han_word("CO2排放")
    # same Han range as the miner (U+4E00-U+9FFF): extension A stretches are not candidates
    assert is_han_word("\u9fa5\u9fff") and not is_han_word("\u3400\u4dbf")
    assert not is_han_word("气\u3400")
    with pytest.raises(ValueError, match="ks"):
        precision_at_k(ranked, ref, [0])


def test_mixed_terms_use_units():
    assert is_term("PM2.5") and is_term("PM2.5浓度") and is_term("B超") and is_term("气候")
    assert not is_term("B") and not is_term("的") and not is_term("CO2，") and not is_term("a b")
    assert has_latin("ＣＯ２排放") and has_latin("5G")
    assert not has_latin("气候") and not has_latin("，")
    assert not is_han_word("PM2.5浓度")  # Han-only precision is unchanged
    # "PM2.5" stands alone 6 times and sits at the edge of PM2.5浓度 twice: s = 6/8 for the unit,
    # not for its letters; a one-unit word gets no edge term
    dom = {"PM2.5": 6, "PM2.5浓度": 2, "浓度": 3, "度": 1}
    gen = {"浓度": 1}
    share = standalone_share(dom, gen)
    assert share["PM2.5"] == pytest.approx(6 / 8)
    assert share["度"] == pytest.approx(1 / 7) and "P" not in share
    plain = {r.word: r.score for r in contrast(dom, gen, method="ratio_lcb")}
    edges = {r.word: r.score for r in contrast(dom, gen, method="ratio_lcb_edges")}
    assert edges["PM2.5浓度"] == pytest.approx(
        plain["PM2.5浓度"] + math.log(1 - 6 / 8) + math.log(1 - 1 / 7))
    assert edges["PM2.5"] == pytest.approx(plain["PM2.5"])
    # a Han character next to atoms only stands alone (a measure word after a number), as it
    # did when digits were boundaries: 年 alone in 1998年 (2) and 年 (1), bound in 今年 (1)
    years = standalone_share({"1998年": 2, "年": 1, "今年": 1, "B超": 1})
    assert years["年"] == pytest.approx(3 / 4) and years["超"] == 1.0
    assert years["1998"] == 0.0 and years["B"] == 0.0  # an atom is alone in a one-unit word only
    ranked = [r.word for r in contrast(dom, gen)]
    assert precision_at_k(ranked, {"PM2.5浓度"}, [1], candidate=is_term) == {1: 0.0}
    assert precision_at_k(ranked, {"PM2.5"}, [1], candidate=is_term) == {1: 1.0}
