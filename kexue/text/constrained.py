"""Constrained text generation: p(x | c) ∝ p(x)·χ(x, c), sampled or maximised without labels.

A sentence is a :class:`~kexue.text.sampling.State` over a :class:`TokenSpace`: the language
model's characters plus one token per keyword, so a hard keyword is a single locked token that no
move can break. The target is a sum of log-terms over the decoded text::

    log π(x) = fluency(x) + Σ_j term_j(x)

with the terms of this module: :func:`hard_keywords` (χ ∈ {0, 1}), :func:`keyword_boundaries`
(every keyword stays a word under a segmenter), :func:`soft_keywords`,
:func:`similarity` (character-bigram overlap with a source sentence), :func:`length_prior`
and :func:`repetition_penalty`. The proposal q(v | left, right) ∝ p→(v | left)·p←(v | right)
multiplies the forward and backward models (:func:`lm_tokens`). The applications —
:func:`keywords_to_sentence`, :func:`paraphrase`, :func:`compress`, :func:`correct` — build
target and start state, then run :func:`~kexue.text.sampling.metropolis_hastings` or
:func:`~kexue.text.sampling.simulated_annealing`.

References:
    https://kexue.fm/archives/8062 (【搜出来的文本】⋅(一)从文本生成到搜索采样)
    https://kexue.fm/archives/8084 (【搜出来的文本】⋅(二)从MCMC到模拟退火)
    https://kexue.fm/archives/8119 (【搜出来的文本】⋅(三)基于BERT的文本采样) and
    https://kexue.fm/archives/8194 (⋅(四)通过增、删、改来用词造句)
"""

from __future__ import annotations

import functools
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, overload

import numpy as np

from kexue._checks import check_int, check_real
from kexue.text.judging import Segmenter, keyword_spans, segmenter
from kexue.text.judging import intact as _intact
from kexue.text.lm import BOS, BiLM, NgramLM, default_lm
from kexue.text.sampling import (
    Context,
    EditProposal,
    MCMCChains,
    MCMCResult,
    State,
    TokenProposal,
    exponential_cooling,
    metropolis_hastings,
    simulated_annealing,
    uniform_tokens,
)

__all__ = [
    "Generation",
    "Generations",
    "LMTokens",
    "TextTarget",
    "TokenSpace",
    "compress",
    "correct",
    "default_lm",
    "fluency",
    "generate",
    "hard_keywords",
    "keyword_boundaries",
    "keyword_multiplicity",
    "keywords_to_sentence",
    "length_prior",
    "lm_tokens",
    "paraphrase",
    "placements",
    "repetition_penalty",
    "similarity",
    "soft_keywords",
]

Term = Callable[[Sequence[str]], np.ndarray]  # texts -> (N,) log-weights


# ----------------------------------------------------------------------------- tokens
class TokenSpace:
    """Token ids ↔ strings: the LM's characters (ids as in the LM), then one id per phrase.

    Args:
        lm: The model whose character ids are reused.
        phrases: Extra multi-character tokens (keywords) appended after the LM's ids.
    """

    def __init__(self, lm: NgramLM, phrases: Sequence[str] = ()) -> None:
        self.lm = lm
        base = lm.vocab_size
        self.strings = ["", "", ""] + list(lm.chars) + list(phrases)  # specials decode to ""
        self.phrase_ids = {p: base + i for i, p in enumerate(phrases)}
        self.char_ids = np.arange(3, base)

    def __len__(self) -> int:
        return len(self.strings)

    def decode(self, tokens: Sequence[int]) -> str:
        return "".join(self.strings[t] for t in tokens)

    def encode(self, text: str) -> tuple[int, ...]:
        """Character ids of ``text`` (each character one free token).

        Raises:
            ValueError: If ``text`` has characters the LM has never seen.
        """
        unknown = self.lm.unknown(text)
        if unknown:
            raise ValueError(f"the language model has never seen {''.join(unknown)!r} "
                             f"(in {text!r}); train it on text that contains them")
        return tuple(int(i) for i in self.lm.encode(text))


# ----------------------------------------------------------------------------- target
@dataclass
class TextTarget:
    """log π(x) = Σ_j term_j(decode(x)), scored in batches (the :class:`Target` protocol).

    Attributes:
        space: Decodes token ids to text.
        terms: Named log-terms, each ``texts -> (N,) array``.
    """

    space: TokenSpace
    terms: dict[str, Term]

    def log_prob(self, batch: Sequence[tuple[int, ...]]) -> np.ndarray:
        strings = self.space.strings
        return self.score_texts(["".join(map(strings.__getitem__, x)) for x in batch])

    def score_texts(self, texts: Sequence[str]) -> np.ndarray:
        total = np.zeros(len(texts))
        for term in self.terms.values():
            total = total + np.asarray(term(texts), np.float64)
        return total

    def breakdown(self, text: str) -> dict[str, float]:
        """Each term's value on one text (for reports)."""
        return self.breakdowns([text])[0]

    def breakdowns(self, texts: Sequence[str]) -> list[dict[str, float]]:
        """Each term's value on every text, one call per term."""
        values = {name: np.asarray(term(list(texts)), np.float64)
                  for name, term in self.terms.items()}
        return [{name: float(v[i]) for name, v in values.items()} for i in range(len(texts))]


class SentenceModel(Protocol):
    """Anything that scores whole sentences: :class:`~kexue.text.lm.NgramLM`,
    :class:`~kexue.text.neural.NeuralLM`."""

    def log_prob(self, texts: Sequence[str]) -> np.ndarray: ...


def fluency(lm: SentenceModel, weight: float = 1.0) -> Term:
    """weight · log p_LM(x), ``</s>`` included (``lm``: any model with ``log_prob(texts)``,
    e.g. the n-gram :class:`~kexue.text.lm.NgramLM` or the neural
    :class:`~kexue.text.neural.NeuralLM`)."""
    return lambda texts: weight * np.asarray(lm.log_prob(list(texts)), np.float64)


def hard_keywords(keywords: Sequence[str]) -> Term:
    """χ(x, c): 0 if every keyword occurs in x (in order), −inf otherwise."""
    def term(texts: Sequence[str]) -> np.ndarray:
        return np.array([0.0 if keyword_spans(t, keywords) is not None else -np.inf
                         for t in texts])
    return term


def keyword_boundaries(keywords: Sequence[str], segment: Segmenter | None = None,
                       cache: int = 65536) -> Term:
    """0 if every keyword is intact in x under ``segment``, −inf otherwise.

    intact: no token of ``segment(x)`` crosses either edge of the keyword's span, the leftmost
    in-order placement (:func:`~kexue.text.judging.intact`); a text without the keywords in
    order scores −inf. A log-term of π like :func:`hard_keywords` (a function of the text
    alone), so the sampler stays exact: π(x) ∝ p(x)·χ(x)·β(x) with β ∈ {0, 1}.

    Args:
        keywords: The keywords, in order.
        segment: The segmenter (default: jieba without HMM,
            :func:`~kexue.text.judging.segmenter` ``("jieba")``).
        cache: Texts whose verdict is kept (least recently used dropped first): a chain
            proposes the same texts again and again.
    """
    if isinstance(keywords, str):
        raise ValueError(f"keywords must be a list of strings, got the string {keywords!r}")
    words = list(keywords)
    cache = check_int("cache", cache, low=0)

    @functools.lru_cache(maxsize=cache)
    def ok(text: str) -> bool:  # jieba's dictionary loads on the first text, not before
        return all(_intact(text, words, segmenter("jieba") if segment is None else segment))

    def term(texts: Sequence[str]) -> np.ndarray:
        return np.array([0.0 if ok(t) else -np.inf for t in texts])
    return term


_SEPARATORS = ("，", "、", "；", " ")  # non-Han characters: jieba cuts on both sides of them


def _intact_start(keywords: Sequence[str], lm: NgramLM, segment: Segmenter | None = None) -> str:
    """The separator of a start text in which every keyword is intact: "" (the bare keywords
    side by side) if ``segment`` keeps them all intact so, else the first of ``_SEPARATORS``
    that ``lm`` knows and that keeps them intact between each pair of keywords.

    jieba (the default) yields every non-Han character as a token of its own and segments
    each run of Han and alphanumeric characters apart, so a separator puts a token edge on
    both sides of it: every keyword of "k₁，k₂，…" is intact, whatever the keywords.

    Raises:
        ValueError: If no start keeps every keyword intact under ``segment``.
    """
    seg = segmenter("jieba") if segment is None else segment
    words = list(keywords)
    for sep in ("", *_SEPARATORS):
        if (not sep or not lm.unknown(sep)) and all(_intact(sep.join(words), words, seg)):
            return sep
    raise ValueError(f"no start text keeps the keywords {words} intact under the segmenter "
                     f"(tried them side by side and separated by {_SEPARATORS}); use "
                     "intact=False")


def placements(text: str, keywords: Sequence[str]) -> int:
    """m(x): the number of ways to place ``keywords`` in ``text`` in order, without overlap.

    f[i][j] = f[i−1][j] + [text[i−|k_j|:i] = k_j]·f[i−|k_j|][j−1], m = f[|x|][K].
    """
    f = [[1] + [0] * len(keywords) for _ in range(len(text) + 1)]  # (|x|+1, K+1)
    for i in range(1, len(text) + 1):
        for j, k in enumerate(keywords, start=1):
            f[i][j] = f[i - 1][j] + (f[i - len(k)][j - 1]
                                     if i >= len(k) and text[i - len(k):i] == k else 0)
    return f[len(text)][len(keywords)]


def keyword_multiplicity(keywords: Sequence[str]) -> Term:
    """−log m(x) (see :func:`placements`).

    With each keyword one locked token, several token states can spell the same text (气候 in
    "气候气候" can be either occurrence), so a chain on token states visits text x in proportion
    to π(x)·m(x). Adding this term makes the text marginal exactly π(x) (−inf where m = 0,
    which the locked tokens never produce).
    """
    def term(texts: Sequence[str]) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return -np.log(np.array([_placements(t, keywords) for t in texts], np.float64))
    return term


def _placements(text: str, keywords: Sequence[str]) -> int:
    """:func:`placements`, without the table when every keyword occurs exactly once (then
    m = 1 if those occurrences are in order without overlap, else 0)."""
    at = []
    for k in keywords:
        i = text.find(k)
        if i < 0:
            return 0
        if text.find(k, i + 1) >= 0:  # a second (possibly overlapping) occurrence: count
            return placements(text, keywords)
        at.append(i)
    return int(all(at[j] + len(keywords[j]) <= at[j + 1] for j in range(len(at) - 1)))


def soft_keywords(keywords: Sequence[str], weight: float = 5.0) -> Term:
    """−weight · (number of keywords missing from x)."""
    return lambda texts: np.array([-weight * sum(k not in t for k in keywords) for t in texts])


def _bigrams(text: str) -> Counter:
    return Counter(text[i:i + 2] for i in range(len(text) - 1)) if len(text) > 1 else \
        Counter([text])


def similarity(source: str, weight: float = 10.0) -> Term:
    """weight · F1 of the character bigrams of x against ``source`` (1 for x = source).

    ``weight`` is a finite number.
    """
    weight = check_real("weight", weight)
    ref = _bigrams(source)
    n_ref = sum(ref.values())

    def term(texts: Sequence[str]) -> np.ndarray:
        out = []
        for t in texts:
            grams = _bigrams(t)
            overlap = sum((grams & ref).values())
            n = sum(grams.values())
            out.append(weight * (2 * overlap / (n + n_ref) if n + n_ref else 0.0))
        return np.array(out)
    return term


def length_prior(mean: float, std: float) -> Term:
    """log N(|x|; mean, std²) up to a constant: −(|x| − mean)² / (2 std²)."""
    mean = check_real("mean", mean, low=0, low_open=True)
    std = check_real("std", std, low=0, low_open=True)
    return lambda texts: np.array([-((len(t) - mean) ** 2) / (2 * std ** 2) for t in texts])


def repetition_penalty(weight: float = 2.0, n: int = 2) -> Term:
    """−weight · (number of repeated character n-gram occurrences in x).

    ``weight`` is a finite number, ``n`` an int >= 1.
    """
    weight = check_real("weight", weight)
    n = check_int("n", n, low=1)
    def term(texts: Sequence[str]) -> np.ndarray:
        out = []
        for t in texts:
            grams = [t[i:i + n] for i in range(len(t) - n + 1)]
            out.append(-weight * (len(grams) - len(set(grams))))
        return np.array(out)
    return term


# ----------------------------------------------------------------------------- proposal
class LMTokens:
    """q(v | left, right) ∝ p→(v | left)·p←(v | right), mixed with a uniform floor.

    q = (1 − ε)·normalise(p→ p←) + ε·uniform over the candidates; the floor keeps every
    candidate reachable, so the chain stays irreducible. Only the ``order − 1`` characters on
    each side of the slot matter. :meth:`probs` answers a batch of contexts with one
    :meth:`~kexue.text.lm.NgramLM.next_probs` call per direction (a
    :class:`~kexue.text.sampling.BatchTokenProposal`), and keeps the last ``cache`` rows: a
    chain proposes again and again around the same few slots.

    Args:
        lm: Forward and backward models.
        space: The token space (phrase tokens are never proposed).
        candidates: Proposable ids (default: every character of the LM).
        uniform_mix: ε in [0, 1].
        cache: Rows kept, least recently used dropped first (each is ``len(space)`` floats).
    """

    def __init__(self, lm: BiLM, space: TokenSpace, candidates: Sequence[int] | None = None,
                 uniform_mix: float = 0.02, cache: int = 2048) -> None:
        self.uniform_mix = check_real("uniform_mix", uniform_mix, low=0, high=1)
        self.cache = check_int("cache", cache, low=0)
        self._rows: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self.lm, self.space = lm, space
        self.cands = np.asarray(space.char_ids if candidates is None else candidates, np.int64)
        if self.cands.size == 0 or self.cands.min() < 0 or \
                self.cands.max() >= lm.forward.vocab_size:
            raise ValueError(f"candidates must be a non-empty set of character ids in [0, "
                             f"{lm.forward.vocab_size}), got {self.cands[:10].tolist()}")
        self.n = lm.forward.order - 1
        lo = int(self.cands[0])
        contiguous = np.array_equal(self.cands, np.arange(lo, lo + self.cands.size))
        self._columns = slice(lo, lo + self.cands.size) if contiguous else self.cands
        others = np.setdiff1d(np.arange(lm.forward.vocab_size), self.cands)
        self._others = others if len(others) else None

    def _side(self, tokens: tuple[int, ...], last: bool) -> str:
        """The ``n`` characters next to the slot: the end of the left side or the start of the
        right one (tokens may be multi-character phrases, or specials that decode to "")."""
        n = self.n
        if not n:
            return ""
        text = self.space.decode(tokens[-n:] if last else tokens[:n])
        if len(text) < n and len(tokens) > n:
            text = self.space.decode(tokens)
        return text[-n:] if last else text[:n]

    def probs(self, contexts: Sequence[Context]) -> np.ndarray:
        """q(· | left, right) of every context, (len(contexts), len(space)); rows sum to 1."""
        keys = [(self._side(before, True), self._side(after, False))
                for before, after in contexts]
        rows, missing = self._rows, []
        for key in dict.fromkeys(keys):
            if key in rows:
                rows.move_to_end(key)
            else:
                missing.append(key)
        if missing:
            fresh = self._compute(missing)
            for key, row in zip(missing, fresh, strict=True):
                rows[key] = row.copy()  # not a view: it would keep the whole batch alive
            while len(rows) > self.cache:
                rows.popitem(last=False)
            if len(rows) < len(set(keys)):  # the cache is smaller than one batch
                fresh_of = dict(zip(missing, fresh, strict=True))
                return np.stack([rows[k] if k in rows else fresh_of[k] for k in keys])
        return np.stack([rows[k] for k in keys])

    def _compute(self, keys: list[tuple[str, str]]) -> np.ndarray:
        """The rows of distinct (left, right) texts, (len(keys), len(space))."""
        n, fwd, bwd = self.n, self.lm.forward, self.lm.backward
        left = np.full((len(keys), n), BOS, np.int64)  # (K, order − 1), <s>-padded
        right = np.full((len(keys), n), BOS, np.int64)
        for j, (before, after) in enumerate(keys):
            ids = fwd.encode(before)
            left[j, n - len(ids):] = ids
            ids = bwd.encode(after)  # read right to left: nearest last
            right[j, n - len(ids):] = ids
        q = fwd.next_probs(left)  # (K, V)
        q *= bwd.next_probs(right)
        if self._others is not None:
            q[:, self._others] = 0.0  # ids outside the candidates are never proposed
        q *= ((1.0 - self.uniform_mix) / q.sum(axis=1))[:, None]
        q[:, self._columns] += self.uniform_mix / self.cands.size
        v, size = fwd.vocab_size, len(self.space)
        if size == v:
            return q
        out = np.zeros((len(keys), size))  # (K, len(space)): phrases are never proposed
        out[:, :v] = q
        return out

    def __call__(self, left: tuple[int, ...], right: tuple[int, ...]) -> np.ndarray:
        """log q(· | left, right), (len(space),) (−inf outside the candidates)."""
        with np.errstate(divide="ignore"):
            return np.log(self.probs([(left, right)])[0])


def lm_tokens(lm: BiLM, space: TokenSpace, candidates: Sequence[int] | None = None,
              uniform_mix: float = 0.02) -> LMTokens:
    """The forward×backward token proposal over ``space`` (see :class:`LMTokens`).

    Args:
        lm: Forward and backward models.
        space: The token space (phrase tokens are never proposed).
        candidates: Proposable ids (default: every character of the LM).
        uniform_mix: ε in [0, 1].
    """
    return LMTokens(lm, space, candidates, uniform_mix)


# ----------------------------------------------------------------------------- applications
@dataclass
class Generation:
    """A generated sentence and the chain that found it.

    Attributes:
        text: The output: for ``"mh"`` the chain's final state (a draw from π); for
            ``"anneal"`` and ``"cgmh"`` the best state seen, by log π.
        log_prob: Its log π.
        terms: Its value under each term of the target.
        chain: The sampler's record (log π per step, acceptance per move, temperatures).
    """

    text: str
    log_prob: float
    terms: dict[str, float]
    chain: MCMCResult


@dataclass
class Generations:
    """K sentences from K chains run as one batch (``chains=K``), and the chains' record.

    Iterating gives the :class:`Generation` of every chain, in chain order.

    Attributes:
        items: One :class:`Generation` per chain.
        chains: The batch's record: (K, steps) energy traces, acceptance, best-energy traces.
        method: ``"mh"``, ``"anneal"`` or ``"cgmh"``.
    """

    items: list[Generation]
    chains: MCMCChains
    method: str

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Generation]:
        return iter(self.items)

    def __getitem__(self, k: int) -> Generation:
        return self.items[k]

    @property
    def texts(self) -> list[str]:
        return [g.text for g in self.items]

    def rhat(self, warmup: float = 0.5) -> float:
        """Split R̂ (rank-normalised) of the energy −log π across the chains, after
        ``warmup``; ValueError for ``"anneal"``, whose target changes with the temperature."""
        return self.chains.rhat(warmup)

    def ess(self, warmup: float = 0.5) -> float:
        """Bulk ESS of the energy across the chains, after ``warmup``; ValueError for
        ``"anneal"``."""
        return self.chains.ess(warmup)


METHODS = ("anneal", "mh", "cgmh")


@overload
def generate(target: TextTarget, x0: State | Sequence[State], steps: int, *, lm: BiLM,
             method: str = ..., weights: dict[str, float] | None = ..., max_len: int = ...,
             min_len: int = ..., t0: float = ..., t1: float = ..., per_token: bool = ...,
             tokens: TokenProposal | None = ..., chains: None = None,
             stop_rhat: float | None = ..., check_every: int = ...,
             seed: int | np.random.Generator | None = ...,
             on_step: Callable[[int, State], None] | None = ...) -> Generation: ...


@overload
def generate(target: TextTarget, x0: State | Sequence[State], steps: int, *, lm: BiLM,
             method: str = ..., weights: dict[str, float] | None = ..., max_len: int = ...,
             min_len: int = ..., t0: float = ..., t1: float = ..., per_token: bool = ...,
             tokens: TokenProposal | None = ..., chains: int,
             stop_rhat: float | None = ..., check_every: int = ...,
             seed: int | np.random.Generator | None = ...,
             on_step: Callable[[int, list[State]], None] | None = ...) -> Generations: ...


def generate(target, x0, steps, *, lm, method="anneal", weights=None, max_len=40, min_len=1,
             t0=3.0, t1=0.05, per_token=False, tokens=None, chains=None, stop_rhat=None,
             check_every=50, seed=None, on_step=None):
    """Run a chain (or K chains as one batch) on ``target`` with the forward×backward proposal.

    Args:
        target: The target π.
        x0: Start state (π(x0) > 0), or one per chain.
        steps: Number of proposals per chain.
        lm: The models of the proposal.
        method: ``"mh"`` (sample π), ``"anneal"`` (maximise π, exponential cooling t0 → t1)
            or ``"cgmh"`` (CGMH's heuristics).
        weights: Move-kind probabilities (default: equal).
        max_len, min_len: Length bounds of the chain (in tokens).
        t0, t1: Start and end temperatures of ``"anneal"``.
        per_token: ``"anneal"`` on the per-token energy −log π(x)/|x| (favours longer
            sentences than the total energy does).
        tokens: The token proposal (default: :func:`lm_tokens` of ``lm``).
        chains: ``None``: one chain, a :class:`Generation`. K: K chains as one batch (one
            proposal call and one target call per step), a :class:`Generations`.
        stop_rhat: ``"mh"`` and ``"cgmh"`` only: stop once the split R̂ of the energy is
            below this, checked every ``check_every`` steps (see
            :func:`~kexue.text.sampling.metropolis_hastings`).
        check_every: Steps between R̂ checks.
        seed: Seed or ``np.random.Generator`` (chain k's stream: see
            :mod:`kexue.text.sampling`).
        on_step: Progress callback ``on_step(step, state)`` (``states``, a list, for K chains).

    Raises:
        ValueError: For an unknown ``method``, ``stop_rhat`` with ``"anneal"`` (its target
            changes with the temperature: there is no R̂), or bad arguments.
    """
    steps = check_int("steps", steps, low=0)
    t0 = check_real("t0", t0, low=0, low_open=True)
    t1 = check_real("t1", t1, low=0, low_open=True)
    _check_seed(seed)
    if method not in METHODS:
        raise ValueError(f"method must be 'mh', 'anneal' or 'cgmh', got {method!r}")
    if method == "anneal" and stop_rhat is not None:
        raise ValueError(f"stop_rhat={stop_rhat!r} needs a fixed target: method='anneal' "
                         "changes its target with the temperature, so it has no R-hat (read "
                         "its best-energy trace); use method='mh' or drop stop_rhat")
    if method == "anneal" and not 0 < t1 < t0:
        raise ValueError(f"annealing needs temperatures 0 < t1 < t0, got t0={t0!r}, t1={t1!r}")
    if chains is not None:
        chains = check_int("chains", chains, low=1)
    proposal = EditProposal(tokens or lm_tokens(lm, target.space),
                            weights or {"replace": 1, "insert": 1, "delete": 1},
                            min_len=min_len, max_len=max_len)
    if method == "anneal":
        rate = (t1 / t0) ** (1 / max(steps - 1, 1))
        run = simulated_annealing(target, proposal, x0, steps, exponential_cooling(t0, rate),
                                  per_token=per_token, chains=chains, seed=seed,
                                  on_step=on_step)
    else:
        run = metropolis_hastings(target, proposal, x0, steps, chains=chains, seed=seed,
                                  on_step=on_step, mode="exact" if method == "mh" else "cgmh",
                                  stop_rhat=stop_rhat, check_every=check_every)
    runs = [run] if chains is None else [run.chain(k) for k in range(chains)]
    # "mh": a draw from π, the chain's final state; "anneal" and "cgmh": the best state seen
    outputs = [r.state if method == "mh" else r.best for r in runs]
    texts = [target.space.decode(x.tokens) for x in outputs]
    log_probs = target.score_texts(texts) if method == "mh" else \
        np.array([r.best_log_prob for r in runs])
    items = [Generation(text, float(lp), terms, r) for text, lp, terms, r in zip(
        texts, log_probs, target.breakdowns(texts), runs, strict=True)]
    return items[0] if chains is None else Generations(items, run, method)


def _check_keywords(keywords: Sequence[str], lm: BiLM) -> list[str]:
    if isinstance(keywords, str):
        raise ValueError(f"keywords must be a list of strings, got the string {keywords!r}")
    if not all(isinstance(k, str) for k in keywords):
        raise ValueError(f"keywords must be strings, got {list(keywords)!r}")
    words = [k.strip() for k in keywords]
    if not words or not all(words):
        raise ValueError(f"keywords must be a non-empty list of non-empty strings, "
                         f"got {list(keywords)!r}")
    unknown = lm.forward.unknown("".join(words))
    if unknown:
        raise ValueError(f"the language model has never seen {''.join(unknown)!r} (in the "
                         f"keywords {words}); use other keywords or train the model on text "
                         "that contains them")
    return words


def keywords_to_sentence(keywords: Sequence[str], steps: int = 200, *, lm: BiLM | None = None,
                         method: str = "anneal", length: tuple[float, float] | None = None,
                         repetition: float = 2.0, fluency_lm: SentenceModel | None = None,
                         intact: bool = True, chains: int | None = None,
                         stop_rhat: float | None = None, check_every: int = 50,
                         seed: int | np.random.Generator | None = None,
                         on_step: Callable[..., None] | None = None
                         ) -> Generation | Generations:
    """A fluent sentence containing every keyword, in the order given (or K of them).

    Target: log p(x) + log χ(x ⊇ keywords) + log β(keywords stay words) + length prior +
    repetition penalty. The keywords start as locked tokens; replace, insert and delete build
    the sentence around them. With ``intact`` the start is the bare keywords if jieba keeps
    them intact side by side, else the keywords separated by "，" (a free token the chain may
    replace or delete), so π(start) > 0.

    Args:
        keywords: Words that must appear (hard constraint).
        steps: Chain length.
        lm: Forward and backward models (default: :func:`default_lm`).
        method: ``"anneal"``, ``"mh"`` or ``"cgmh"``.
        length: (mean, std) of the length prior in characters; default (keyword characters
            + 10, 1): without a tight prior the most probable sentence is the shortest one.
        repetition: Weight of the repeated-bigram penalty (0 switches it off).
        fluency_lm: The model of the target's fluency term log p(x) (default: ``lm.forward``),
            e.g. a :class:`~kexue.text.neural.NeuralLM`; ``lm`` stays the proposal.
        intact: Add :func:`keyword_boundaries` (jieba): no jieba word crosses a keyword's
            edge, so 节日 never ends up inside 春节日. ``False``: only the characters are kept.
        chains: ``None``: one sentence, a :class:`Generation`; K: K chains run as one batch,
            a :class:`Generations` (with R̂ and ESS for ``"mh"``).
        stop_rhat, check_every: Stop ``"mh"`` once R̂ < ``stop_rhat`` (see :func:`generate`).
        seed: Seed or ``np.random.Generator``.
        on_step: Progress callback (see :func:`generate`).

    Raises:
        ValueError: For an empty keyword list or keywords the model has never seen.
    """
    steps = check_int("steps", steps, low=0)
    repetition = check_real("repetition", repetition)
    _check_seed(seed)
    lm = default_lm() if lm is None else lm
    words = _check_keywords(keywords, lm)
    space = TokenSpace(lm.forward, words)
    mean, std = length or (sum(map(len, words)) + 10.0, 1.0)
    terms: dict[str, Term] = {"fluency": fluency(fluency_lm or lm.forward),
                              "keywords": hard_keywords(words),
                              "length": length_prior(mean, std)}
    if intact:
        terms["boundaries"] = keyword_boundaries(words)
    if repetition:
        terms["repetition"] = repetition_penalty(repetition)
    if method == "mh":  # exact sampling of texts, not of token states
        terms["multiplicity"] = keyword_multiplicity(words)
    x0 = _keyword_state(space, words, _intact_start(words, lm.forward) if intact else "")
    return generate(TextTarget(space, terms), x0, steps, lm=lm, method=method,
                    max_len=max(int(mean + 3 * std), len(words) + 1, len(x0)),
                    min_len=len(words),
                    chains=chains, stop_rhat=stop_rhat, check_every=check_every, seed=seed,
                    on_step=on_step)


def _keyword_state(space: TokenSpace, words: Sequence[str], sep: str) -> State:
    """The keywords as locked phrase tokens (span j + 1 for keyword j) with the free
    characters of ``sep`` between each pair."""
    between = space.encode(sep) if sep else ()
    tokens: list[int] = []
    spans: list[int] = []
    for j, w in enumerate(words):
        if j:
            tokens.extend(between)
            spans.extend([0] * len(between))
        tokens.append(space.phrase_ids[w])
        spans.append(j + 1)
    return State(tuple(tokens), tuple(spans))


def _check_seed(seed: object) -> None:
    """A seed is None, a ``np.random.Generator`` or an int >= 0 (numpy's range)."""
    if seed is not None and not isinstance(seed, np.random.Generator):
        check_int("seed", seed, low=0)


def _source(text: str, lm: BiLM) -> tuple[TokenSpace, State]:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"source must be a non-empty string, got {text!r}")
    space = TokenSpace(lm.forward)
    return space, State(space.encode("".join(text.split())))


def paraphrase(source: str, steps: int = 300, *, lm: BiLM | None = None,
               closeness: float = 8.0, method: str = "anneal",
               fluency_lm: SentenceModel | None = None, chains: int | None = None,
               seed: int | np.random.Generator | None = None,
               on_step: Callable[..., None] | None = None) -> Generation | Generations:
    """A fluent sentence close to, but not equal to, ``source`` (``chains=K``: K of them, as in
    :func:`keywords_to_sentence`).

    Target: log p(x) + closeness·F1_bigram(x, source) − closeness·[x = source] (the copy is
    excluded so the chain has to rephrase). ``fluency_lm`` replaces ``lm.forward`` in the
    fluency term, as in :func:`keywords_to_sentence`.

    Raises:
        ValueError: For an empty source or characters the model has never seen.
    """
    steps = check_int("steps", steps, low=0)
    closeness = check_real("closeness", closeness)
    _check_seed(seed)
    lm = default_lm() if lm is None else lm
    space, x0 = _source(source, lm)
    clean = space.decode(x0.tokens)
    terms = {"fluency": fluency(fluency_lm or lm.forward),
             "similarity": similarity(clean, closeness),
             "not_copy": lambda texts: np.array([-closeness if t == clean else 0.0
                                                 for t in texts])}
    return generate(TextTarget(space, terms), x0, steps, lm=lm, method=method,
                    max_len=len(x0) + 8, chains=chains, seed=seed, on_step=on_step)


def compress(source: str, ratio: float = 0.6, steps: int = 300, *, lm: BiLM | None = None,
             closeness: float = 6.0, fluency_lm: SentenceModel | None = None,
             chains: int | None = None,
             seed: int | np.random.Generator | None = None,
             on_step: Callable[..., None] | None = None) -> Generation | Generations:
    """A shorter sentence that keeps the gist of ``source``: deletions of whole words only
    (``chains=K``: K of them, as in :func:`keywords_to_sentence`).

    The source is segmented into words (jieba), each word one token, so a deletion removes a
    word rather than breaking one; insertions put back one of the source's words, which keeps
    the chain reversible (and the acceptance ratio exact). Target: log p(x) +
    closeness·F1_bigram(x, source) + a length prior N(ratio·|source|, 1) in characters.
    ``fluency_lm`` replaces ``lm.forward`` in the fluency term, as in :func:`keywords_to_sentence`.

    Raises:
        ValueError: For an empty source, unknown characters or ``ratio`` outside (0, 1].
    """
    ratio = check_real("ratio", ratio, low=0, high=1, low_open=True)
    steps = check_int("steps", steps, low=0)
    closeness = check_real("closeness", closeness)
    _check_seed(seed)
    lm = default_lm() if lm is None else lm
    _source(source, lm)  # checks the source: non-empty, characters the model knows
    clean = "".join(source.split())
    words = _words(clean)
    space = TokenSpace(lm.forward, list(dict.fromkeys(words)))
    x0 = State(tuple(space.phrase_ids[w] for w in words))
    target_len = max(1.0, ratio * len(clean))
    terms = {"fluency": fluency(fluency_lm or lm.forward),
             "similarity": similarity(clean, closeness),
             "length": length_prior(target_len, 1.0)}
    # deleting a word is reversed by inserting one of the source's words anywhere
    words_only = uniform_tokens(sorted(space.phrase_ids.values()), len(space))
    return generate(TextTarget(space, terms), x0, steps, lm=lm, method="anneal",
                    weights={"delete": 0.7, "insert": 0.3}, max_len=len(x0), chains=chains,
                    seed=seed, tokens=words_only, on_step=on_step)


def _words(text: str) -> list[str]:
    """jieba's segmentation (its dictionary ships with the package; nothing is downloaded)."""
    return [w for w in segmenter("jieba")(text) if w]


def correct(source: str, steps: int = 300, *, lm: BiLM | None = None, closeness: float = 20.0,
            fluency_lm: SentenceModel | None = None, chains: int | None = None,
            seed: int | np.random.Generator | None = None,
            on_step: Callable[..., None] | None = None) -> Generation | Generations:
    """Fix likely errors of ``source`` with few edits: a fluent sentence very close to it
    (``chains=K``: K of them, as in :func:`keywords_to_sentence`).

    Target: log p(x) + closeness·F1_bigram(x, source); a large closeness allows only the edits
    that buy much fluency. ``fluency_lm`` replaces ``lm.forward`` in the fluency term, as in
    :func:`keywords_to_sentence`.

    Raises:
        ValueError: For an empty source or characters the model has never seen.
    """
    steps = check_int("steps", steps, low=0)
    closeness = check_real("closeness", closeness)
    _check_seed(seed)
    lm = default_lm() if lm is None else lm
    space, x0 = _source(source, lm)
    terms = {"fluency": fluency(fluency_lm or lm.forward),
             "similarity": similarity(space.decode(x0.tokens), closeness)}
    return generate(TextTarget(space, terms), x0, steps, lm=lm, method="anneal",
                    max_len=len(x0) + 4, chains=chains, seed=seed, on_step=on_step)
