"""Unsupervised word discovery from raw Chinese text: cohesion, branching entropy, pruning.

A candidate word w = c_1 … c_n (2 ≤ n ≤ ``max_len`` Han characters, count ≥ ``min_count``) is kept
when it is

* cohesive at every split point (all-splits PMI, the minimum over the n − 1 ways of cutting it):

      pmi(w) = min_{1≤k<n} log [ p(w) / (p(c_1…c_k) · p(c_{k+1}…c_n)) ],   p(x) = count(x) / N,

  with N the number of Han characters; "的时候" fails at 的|时候 and "主席江" at 主席|江;
* free at both ends (branching entropy of the neighbouring characters, counted from the
  (n+1)-gram table):

      H_right(w) = − Σ_c p(c | w) log p(c | w),   p(c | w) = count(w c) / count(w),

  and H_left likewise; occurrences at a run boundary or followed by a pruned (rare) extension are
  counted as distinct singleton neighbours, so H = log count(w) − Σ_c count(wc) log count(wc) /
  count(w). We require min(H_left, H_right) ≥ ``min_entropy``, which rejects fragments of longer
  words ("泽民" is always preceded by 江) and function-character compounds ("的人": 的 is
  followed by many more characters than 的人 is);
* not redundant (nlp-zero's minimum-entropy test, vectorised): nlp-zero drops a word w whose
  probability gain over its segmentation into other words, log p(w) − Σ log p(piece), is below
  len(w) − 1. Against the best two-piece split this gain is exactly the all-splits PMI above, so
  both tests are one vectorised threshold that grows with length:

      pmi(w) ≥ ``min_pmi`` + ``pmi_per_char`` · (n − 2).

  (nlp-zero's PMI *cutting* of the text into candidate pieces is not needed: every n-gram is a
  candidate, counted exactly.)

Surviving words are ranked by count (ties: higher PMI first). The
vocabulary exports a unigram segmenter: Viterbi over log p(w), unknown single characters allowed.

Mixed script (``script="mixed"``, the default). The "characters" above are atoms
(:mod:`kexue.text._script`): a Han character, or a maximal run of Latin letters and digits with
inner joiners ("PM2.5", "COVID-19", "110kV", "１９９８"), counted in its NFKC form and shown in the
corpus's most frequent surface form. Lengths (``max_len``, n) and N count atoms, so "PM2.5浓度"
is a 3-gram and is kept only when the statistics make it a cohesive, free unit, exactly like a
Han word; an atom is never split. A single atom of two or more characters is a candidate word
of its own ("5G", "PM2.5"): it cannot be split, so it has no PMI (reported as +inf) and must only
be free at both ends (the entropy test; "1998" in "１９９８年" is not, "1998年" is). On text without
Latin letters or digits the result is bit-identical to ``script="han"``.

References:
    https://kexue.fm/archives/6540 (分享一次专业领域词汇的无监督挖掘)
    https://kexue.fm/archives/3491 (新词发现的信息熵方法与实现)
    https://kexue.fm/archives/5476 (最小熵原理(二):“当机立断”之词库构建)
    https://kexue.fm/archives/5597 (基于最小熵原理的NLP库:nlp zero)
"""

from __future__ import annotations

import collections
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from kexue._checks import check_int, check_real
from kexue.text._script import (
    _ATOM,
    ATOM_FIRST,
    Alphabet,
    check_script,
    nfkc,
    unit_runs,
    units,
)
from kexue.text.ngrams import NgramTable, count_ngrams

__all__ = [
    "Vocabulary",
    "WordScores",
    "branching_entropy",
    "split_pmi",
    "discover",
    "evaluate_precision",
    "Recall",
    "evaluate_recall",
    "term_counts",
]


def branching_entropy(table: NgramTable, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Left and right branching entropy (nats) of every kept n-gram of length ``n``.

        H(w) = log count(w) − Σ_c count(c w) log count(c w) / count(w)   (left; right likewise)

    Neighbours come from the (n+1)-gram table; occurrences with no kept neighbour (run
    boundary, or an extension pruned below ``min_count``) count as distinct singletons.

    Args:
        table: n-gram table with ``max_n > n``.
        n: n-gram length, in [1, table.max_n − 1].

    Returns:
        ``(left, right)``, each ``(table.size(n),)`` float64, in the order of ``table.counts(n)``.

    Raises:
        ValueError: if ``n`` is out of range.
    """
    n = check_int("n", n, low=1, high=table.max_n - 1)
    total = table.counts(n).astype(np.float64)
    ext = table.counts(n + 1).astype(np.float64)
    clogc = ext * np.log(np.maximum(ext, 1.0))
    m = total.shape[0]
    out = []
    for group in (table.suffix(n + 1), table.prefix(n + 1)):
        s = np.bincount(group, weights=clogc, minlength=m)
        out.append(np.log(total) - s / total)
    return out[0], out[1]


def split_pmi(table: NgramTable, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Cohesion of every kept n-gram over all split points.

        pmi(w) = min_{1≤k<n} log [ count(w) · N / (count(c_1…c_k) · count(c_{k+1}…c_n)) ]

    with N the number of Han characters of the corpus (``table.total_chars`` less the
    mixed-script atoms, ``table.stats["atom_chars"]``): Latin letters and digits added to a
    corpus do not shift the PMI of its Han words, so the floors keep the meaning they had on
    Han text (counting atoms in N would raise every PMI by log(N_units / N_han)).

    Args:
        table: n-gram table containing length ``n``.
        n: n-gram length, in [2, table.max_n].

    Returns:
        ``(pmi, best_gain)``: ``pmi`` as above and ``max_k log[count(c_1…c_k) count(c_{k+1}…c_n)]``
        (the log-count of the most probable 2-piece split), both ``(table.size(n),)`` float64.

    Raises:
        ValueError: if ``n`` is out of range.
    """
    n = check_int("n", n, low=2, high=table.max_n)
    codes = table.codes(n)
    logc = np.log(table.counts(n).astype(np.float64))
    log_n = math.log(max(table.total_chars - int(table.stats.get("atom_chars", 0)), 1))
    worst = np.full(codes.shape[0], -np.inf)
    for k in range(1, n):
        a = table.index(codes[:, :k])
        b = table.index(codes[:, k:])
        la = np.log(table.counts(k)[a].astype(np.float64))
        lb = np.log(table.counts(n - k)[b].astype(np.float64))
        worst = np.maximum(worst, la + lb)
    return logc + log_n - worst, worst


_HAN_WORD = re.compile("[\u4e00-\u9fff]{2,}")


@dataclass(frozen=True)
class WordScores:
    """Scores of one discovered word (one TSV row)."""

    word: str
    count: int
    pmi: float
    left_entropy: float
    right_entropy: float


class Vocabulary:
    """Discovered words, ranked, with their scores, and a unigram segmenter.

    Words are shown in the corpus's surface form and looked up in any NFKC-equal form
    (``"ＰＭ２．５" in vocab`` when "PM2.5" was discovered).

    Args:
        scores: the words' scores, in rank order.
        char_counts: counts of single units (Han characters and atoms; the segmenter's fallback
            pieces), keyed by their surface form.
        total_chars: number of units in the corpus, N.
        script: how :meth:`segment` cuts text into units: ``"mixed"`` (Han characters and
            atoms) or ``"han"`` (Han characters; everything else is left to whitespace).

    Raises:
        ValueError: on a negative ``total_chars`` or an unknown ``script``.
    """

    def __init__(
        self,
        scores: Sequence[WordScores],
        char_counts: dict[str, int],
        total_chars: int,
        *,
        script: str = "mixed",
    ) -> None:
        self.scores = list(scores)
        self.words = [s.word for s in self.scores]
        self.total_chars = check_int("total_chars", total_chars, low=0)
        self.script = check_script(script)
        self._count = {nfkc(s.word): s.count for s in self.scores}
        # unigram model over words ∪ single units: p(x) = count(x) / Z, keyed by NFKC form
        z = float(sum(self._count.values()) + sum(char_counts.values())) or 1.0
        self._logp = {nfkc(c): math.log(k / z) for c, k in char_counts.items()}
        self._logp.update({w: math.log(k / z) for w, k in self._count.items()})
        self._unknown = math.log(0.5 / z)
        self._display = {nfkc(c): c for c in char_counts}
        self._display.update({nfkc(w): w for w in self.words})
        self.max_len = max((len(units(w, self.script)) or len(w) for w in self.words), default=1)

    def __len__(self) -> int:
        return len(self.words)

    def __iter__(self) -> Iterator[str]:
        return iter(self.words)

    def __contains__(self, word: object) -> bool:
        return isinstance(word, str) and nfkc(word) in self._count

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} words, top={self.words[:5]})"

    def count(self, word: str) -> int:
        """Corpus count of a discovered word in any NFKC-equal form (0 if not in the vocabulary)."""
        return self._count.get(nfkc(word), 0)

    def display(self, piece: str) -> str:
        """The corpus's surface form of a word or unit in any NFKC-equal form (else itself)."""
        return self._display.get(nfkc(piece), piece)

    def rows(self) -> list[tuple[str, int, float, float, float]]:
        """``(word, count, pmi, left_entropy, right_entropy)`` rows in rank order."""
        return [(s.word, s.count, s.pmi, s.left_entropy, s.right_entropy) for s in self.scores]

    def to_tsv(self) -> str:
        """The rows as TSV text with a header line (the caller writes it where it wants)."""
        lines = ["word\tcount\tpmi\tleft_entropy\tright_entropy"]
        lines += [f"{w}\t{c}\t{p:.4f}\t{hl:.4f}\t{hr:.4f}" for w, c, p, hl, hr in self.rows()]
        return "\n".join(lines) + "\n"

    def log_proba(self, piece: str) -> float:
        """log p(piece) of the unigram model; an unknown single unit gets log(0.5 / Z)."""
        lp = self._logp.get(nfkc(piece))
        if lp is not None:
            return lp
        one = len(piece) == 1 or units(piece, self.script) == [piece]
        return self._unknown if one else -math.inf

    def _viterbi(self, run: str) -> list[str]:
        """Pieces of a run of Han characters (one unit per character; NFKC-invariant)."""
        return self._best_pieces(run, run, range(len(run) + 1))

    def _viterbi_units(self, run: str) -> list[str]:
        """Pieces of a run of units with atoms, looked up in NFKC form."""
        key = nfkc(run)
        off = [0]
        for u in units(key, self.script):
            off.append(off[-1] + len(u))
        return self._best_pieces(run, key, off)

    def _best_pieces(self, run: str, key: str, off: Sequence[int]) -> list[str]:
        """Exact Viterbi over the units of ``run``: unit k is ``key[off[k]:off[k + 1]]`` (looked
        up) and ``run[off[k]:off[k + 1]]`` (returned); pieces of at most ``max_len`` units."""
        n = len(off) - 1
        best = [0.0] + [-math.inf] * n
        back = [0] * (n + 1)
        logp = self._logp
        for j in range(1, n + 1):
            end = off[j]
            for i in range(max(0, j - self.max_len), j):
                lp = logp.get(key[off[i] : end])
                if lp is None:
                    if j - i != 1:
                        continue
                    lp = self._unknown
                score = best[i] + lp
                if score > best[j]:
                    best[j], back[j] = score, i
        out: list[str] = []
        j = n
        while j > 0:
            out.append(run[off[back[j]] : off[j]])
            j = back[j]
        return out[::-1]

    def word_counts(self, texts: Iterable[str]) -> collections.Counter[str]:
        """Counts of the pieces of :meth:`segment` over ``texts``, keyed by the corpus's surface
        form of each word or unit (so "ＰＭ２．５" and "PM2.5" count together)."""
        counts: collections.Counter[str] = collections.Counter()
        for text in texts:
            counts.update(self.segment(text))
        display = self._display
        out: collections.Counter[str] = collections.Counter()
        for piece, c in counts.items():
            out[display.get(piece) or display.get(nfkc(piece), piece)] += c
        return out

    def segment(self, text: str) -> list[str]:
        """Most probable segmentation under the unigram model (exact Viterbi).

            argmax_{w_1 … w_k = run} Σ_i log p(w_i)

        over each run of adjacent units (Han characters and, with ``script="mixed"``, atoms:
        "PM2.5" is one unit and is never cut); any single unit is allowed (unknown ones at
        log(0.5 / Z)); words match in any NFKC-equal form. The pieces are substrings of
        ``text`` as written (``"".join`` gives the text back without whitespace). Other
        stretches are split on whitespace and returned as they are.

        Raises:
            ValueError: if ``text`` is not a ``str``.
        """
        if not isinstance(text, str):
            raise ValueError(f"text must be str, got {type(text).__name__}")
        out: list[str] = []
        pos = 0
        for start, end in unit_runs(text, self.script):
            if start > pos:
                out.extend(text[pos:start].split())
            run = text[start:end]
            if min(run) >= "\u4e00" and max(run) <= "\u9fff":  # Han only: NFKC-invariant
                out.extend(self._viterbi(run))
            else:
                out.extend(self._viterbi_units(run))
            pos = end
        out.extend(text[pos:].split())
        return out


def discover(
    texts: str | Iterable[str],
    *,
    max_len: int = 6,
    min_count: int = 5,
    min_pmi: float = 3.0,
    pmi_per_char: float = 2.0,
    min_entropy: float = 2.0,
    processes: int = 1,
    chunk_chars: int = 4_000_000,
    script: str = "mixed",
    scheduler: object = None,
) -> Vocabulary:
    """Discover the words of a corpus without labels.

    Counts all n-grams of units up to ``max_len + 1`` (exact, see :func:`count_ngrams`), and
    keeps the candidates w with 2 ≤ |w| ≤ ``max_len`` units and

        count(w) ≥ min_count,
        min_{k} log[count(w) N / (count(w_{≤k}) count(w_{>k}))] ≥ min_pmi + pmi_per_char (|w| − 2),
        min(H_left(w), H_right(w)) ≥ min_entropy,

    and (``script="mixed"``) the single atoms of ≥ 2 characters with count ≥ ``min_count`` and
    min(H_left, H_right) ≥ ``min_entropy`` (PMI +inf: an atom is never split), ranked by count.
    Defaults were chosen on the pd1998 news corpus.

    Args:
        texts: a string or an iterable of strings.
        max_len: longest word in units (a Han character or an atom such as "PM2.5"), ≥ 2.
        min_count: absolute frequency floor, ≥ 1.
        min_pmi: all-splits PMI floor (nats) for two-unit words.
        pmi_per_char: extra PMI required per unit beyond two, ≥ 0.
        min_entropy: floor (nats) on the smaller branching entropy.
        processes: counting processes, ≥ 1.
        chunk_chars: characters per counting chunk.
        script: ``"mixed"`` (Han characters and Latin/digit atoms) or ``"han"`` (Han only).
        scheduler: where counting runs, passed to :func:`count_ngrams` (``None``: this machine).

    Returns:
        The ranked :class:`Vocabulary`; its words in the corpus's surface form.

    Raises:
        ValueError: on an argument out of range or a non-``str`` text.
    """
    max_len = check_int("max_len", max_len, low=2)
    # floors: ±inf is allowed (no floor / nothing passes), NaN is not
    min_pmi = check_real("min_pmi", min_pmi, finite=False)
    min_entropy = check_real("min_entropy", min_entropy, finite=False)
    pmi_per_char = check_real("pmi_per_char", pmi_per_char, low=0, finite=False)
    script = check_script(script)
    table = count_ngrams(
        texts, max_len + 1, min_count, processes=processes, chunk_chars=chunk_chars,
        script=script, scheduler=scheduler,
    )
    alphabet: Alphabet = getattr(table, "alphabet", Alphabet(script))
    words: list[np.ndarray] = []
    cols: list[list[np.ndarray]] = [[], [], [], []]

    def take(n: int, idx: np.ndarray, *arrays: np.ndarray) -> None:
        words.append(np.asarray(alphabet.decode(table.codes(n)[idx]), dtype=object))
        for col, arr in zip(cols, (table.counts(n), *arrays), strict=True):
            col.append(arr[idx])

    if table.size(1):  # single atoms of two or more characters
        left, right = branching_entropy(table, 1)
        codes = table.codes(1)[:, 0]
        long = np.array([len(a) >= 2 for a in alphabet.atoms], dtype=bool)
        is_long = np.zeros(codes.shape[0], dtype=bool)
        atom = codes >= ATOM_FIRST
        is_long[atom] = long[codes[atom] - ATOM_FIRST]
        idx = np.flatnonzero(is_long & (np.minimum(left, right) >= min_entropy))
        if idx.shape[0]:
            take(1, idx, np.full(codes.shape[0], np.inf), left, right)
    for n in range(2, max_len + 1):
        if table.size(n) == 0:
            break
        left, right = branching_entropy(table, n)
        pmi, _ = split_pmi(table, n)
        keep = (pmi >= min_pmi + pmi_per_char * (n - 2)) & (np.minimum(left, right) >= min_entropy)
        take(n, np.flatnonzero(keep), pmi, left, right)
    if words:
        w = np.concatenate(words)
        count, pmi, left, right = (np.concatenate(c) for c in cols)
        order = np.lexsort((-pmi, -count))
    else:
        w, count, pmi, left, right, order = (np.zeros(0),) * 6
    scores = [
        WordScores(str(w[i]), int(count[i]), float(pmi[i]), float(left[i]), float(right[i]))
        for i in order
    ]
    units_1 = alphabet.decode(table.codes(1))
    chars = dict(zip(units_1, table.counts(1).tolist(), strict=True))
    return Vocabulary(scores, chars, table.total_chars, script=script)


def evaluate_precision(
    words: Iterable[str], gold: Iterable[str] | set[str], ks: Sequence[int] = (100, 500, 1000)
) -> dict[int, float]:
    """Precision at K of a ranked word list against a gold word set.

        P@K = |{top-K words} ∩ gold| / K,

    where only words of ≥ 2 Han characters (and nothing else) are ranked; if fewer than K such
    words exist, the missing ones count as misses.

    Args:
        words: ranked words, best first.
        gold: the reference words.
        ks: cut-offs, each ≥ 1.

    Returns:
        ``{K: P@K}``.

    Raises:
        ValueError: if a K is < 1.
    """
    ks = [check_int(f"ks[{i}]", k, low=1) for i, k in enumerate(ks)]
    gold = gold if isinstance(gold, (set, frozenset)) else set(gold)
    ranked = [w for w in words if _HAN_WORD.fullmatch(w)]
    return {int(k): sum(w in gold for w in ranked[:k]) / k for k in ks}



_ATOM_RE = re.compile(f"{_ATOM}")


def term_counts(
    terms: Iterable[str], texts: Iterable[str], *, script: str = "mixed"
) -> dict[str, int]:
    """Occurrences of each term as a sequence of whole units in ``texts`` (NFKC-equal forms).

    This is the count an n-gram table gives the term (without pruning): "PM2.5" is not found
    inside "PM2.5X" or "XPM2.5" (other atoms), "2摄氏度" is not found in "12摄氏度"; a term that
    is not made of units (a space, punctuation, ℃) counts 0.

    Args:
        terms: the terms (e.g. a reference lexicon's entries).
        texts: the corpus.
        script: ``"mixed"`` or ``"han"`` (Han-only terms, Han runs).

    Returns:
        ``{term: count}`` for every term.

    Raises:
        ValueError: on an unknown ``script``.
    """
    script = check_script(script)
    joined = nfkc("\n".join(texts))
    starts: set[int] = set()
    ends: set[int] = set()
    for m in _ATOM_RE.finditer(joined) if script == "mixed" else ():
        starts.add(m.start())
        ends.add(m.end())
    out: dict[str, int] = {}
    for term in terms:
        key = nfkc(term)
        n = 0
        if key and "".join(units(key, script)) == key:
            first_atom = not "\u4e00" <= key[0] <= "\u9fff"
            last_atom = not "\u4e00" <= key[-1] <= "\u9fff"
            i = joined.find(key)
            while i >= 0:
                n += (not first_atom or i in starts) and (not last_atom or i + len(key) in ends)
                i = joined.find(key, i + 1)
        out[term] = int(n)
    return out


@dataclass(frozen=True)
class Recall:
    """Recall of a reference lexicon by a vocabulary, against what the corpus makes reachable.

    Attributes:
        entries: number of reference entries.
        occurring: entries occurring in the corpus as whole units at least once.
        reachable: entries made of at most ``max_len`` units occurring ≥ ``min_count`` times
            (the only ones word discovery with these settings can return).
        found: the reachable entries in the vocabulary (reference spelling).
        missed: the reachable entries not in it.
    """

    entries: int
    occurring: int
    reachable: int
    found: tuple[str, ...]
    missed: tuple[str, ...]

    @property
    def recall(self) -> float:
        """|found| / reachable (0 when nothing is reachable)."""
        return len(self.found) / self.reachable if self.reachable else 0.0


def evaluate_recall(
    vocab: Vocabulary,
    reference: Iterable[str],
    texts: Iterable[str],
    *,
    min_count: int = 5,
    max_len: int = 6,
) -> Recall:
    """Recall of ``reference`` entries in ``vocab``, over the entries the corpus makes reachable.

        recall = |{e reachable : e ∈ vocab}| / |{e reachable}|,
        e reachable ⇔ units(e) ≤ max_len and count(e) ≥ min_count in ``texts`` (as whole units),

    with counts from :func:`term_counts` (mixed-script units whatever ``vocab.script``: what is
    reachable is a property of the corpus, so a Han-only vocabulary scores 0 on entries with
    atoms) and membership in any NFKC-equal form. Pass the ``min_count`` and ``max_len`` the
    vocabulary was discovered with and the corpus it was discovered on.

    Raises:
        ValueError: if ``min_count < 1`` or ``max_len < 1``.
    """
    min_count = check_int("min_count", min_count, low=1)
    max_len = check_int("max_len", max_len, low=1)
    reference = sorted(set(reference))
    counts = term_counts(reference, texts)
    occurring = [e for e in reference if counts[e] >= 1]
    reachable = [e for e in occurring if counts[e] >= min_count and len(units(e)) <= max_len]
    found = tuple(e for e in reachable if e in vocab)
    missed = tuple(e for e in reachable if e not in vocab)
    return Recall(len(reference), len(occurring), len(reachable), found, missed)

# Domain terms run longer than a news vocabulary's words: a looser per-character PMI slope.
CONTRAST_PMI_PER_CHAR = 0.5


def paired_counts(
    domain: Sequence[str],
    general: Sequence[str],
    *,
    pmi_per_char: float = CONTRAST_PMI_PER_CHAR,
    **discover_kwargs: object,
) -> tuple[collections.Counter[str], collections.Counter[str]]:
    """Word counts of a domain and a general corpus under ONE segmenter, for a contrast.

    One vocabulary is discovered on both corpora together (:func:`discover`), and both sides
    are segmented with it, so a word is counted the same way on each side; a word absent from
    one side simply has no count there (0 for :func:`kexue.text.contrast.contrast`).

    Args:
        domain, general: the two corpora (re-iterable: they are read twice).
        pmi_per_char: passed to :func:`discover`.
        **discover_kwargs: further arguments of :func:`discover` (max_len, min_count, ...).

    Returns:
        ``(domain_counts, general_counts)``.

    References:
        https://kexue.fm/archives/6540
    """
    vocab = discover(list(domain) + list(general), pmi_per_char=pmi_per_char, **discover_kwargs)
    return vocab.word_counts(domain), vocab.word_counts(general)
