"""Samplers over discrete sequences, generic over the target distribution.

A *target* is anything with ``log_prob(batch) -> (N,) array`` over sequences of integer token ids
(unnormalised, ``-inf`` where a hard constraint fails); :mod:`kexue.text.constrained` builds them
from a language model and constraints, p(x | c) ∝ p(x)·χ(x, c). The samplers:

- :func:`importance_sampling` and :func:`rejection_sampling` from a proposal one can draw whole
  sequences from (exact, reporting the effective sample size / acceptance rate);
- :func:`gibbs`: each unlocked position in turn is redrawn from its exact conditional
  π(x_i = v | x_{−i}) ∝ π(x_{<i} v x_{>i}) over a candidate set, scored in one batch;
- :func:`metropolis_hastings` over variable-length sequences with the :class:`EditProposal`
  kernel (replace / insert / delete, locked spans kept intact): every proposal returns its
  forward and reverse probabilities, so α = min(1, π(x')q(x|x') / (π(x)q(x'|x))) is exact;
- :func:`simulated_annealing`: the same chain on π^{1/T_t} with a cooling schedule
  (:func:`linear_cooling`, :func:`exponential_cooling`, :func:`logarithmic_cooling`), optionally on
  the per-token energy −log π(x)/|x|, returning the best state seen;
- ``mode="cgmh"``: the heuristics of CGMH's released sampler (Miao et al. 2019), for comparison.
  That sampler does **not** leave π invariant: it sweeps positions cyclically, draws replacements
  from the top-K candidates in proportion to π without any correction, gates every move with a
  threshold alternating between 0 and 0.5 every 10 steps, and its insert/delete ratios omit the
  position-choice and reverse-proposal terms (insertions carry an extra factor 10/|x|).

References:
    https://kexue.fm/archives/8062 (【搜出来的文本】⋅(一)从文本生成到搜索采样)
    https://kexue.fm/archives/8084 (【搜出来的文本】⋅(二)从MCMC到模拟退火)
    Miao et al., "CGMH: Constrained Sentence Generation by Metropolis-Hastings Sampling", AAAI 2019.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from kexue._checks import check_int, check_real

__all__ = [
    "EditProposal",
    "ImportanceResult",
    "MCMCResult",
    "RejectionResult",
    "State",
    "Target",
    "TokenProposal",
    "exponential_cooling",
    "gibbs",
    "importance_sampling",
    "linear_cooling",
    "logarithmic_cooling",
    "metropolis_hastings",
    "rejection_sampling",
    "simulated_annealing",
    "uniform_tokens",
]

KINDS = ("replace", "insert", "delete")


class Target(Protocol):
    """An unnormalised log-density over token-id sequences, scored in batches."""

    def log_prob(self, batch: Sequence[tuple[int, ...]]) -> np.ndarray: ...


class TokenProposal(Protocol):
    """log q(v | left, right) over the whole vocabulary for one free slot between two contexts.

    Returns a (vocab_size,) array that log-sum-exps to 0 (``-inf`` for ids never proposed).
    """

    def __call__(self, left: tuple[int, ...], right: tuple[int, ...]) -> np.ndarray: ...


@dataclass(frozen=True)
class State:
    """A token sequence with locked spans.

    Attributes:
        tokens: Token ids.
        spans: Per token, 0 if free, else the id (> 0) of the locked span it belongs to. Locked
            tokens are never replaced or deleted, and nothing is inserted inside a span.
    """

    tokens: tuple[int, ...]
    spans: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.spans:
            object.__setattr__(self, "spans", (0,) * len(self.tokens))
        if len(self.spans) != len(self.tokens):
            raise ValueError(f"spans must have one entry per token ({len(self.tokens)}), "
                             f"got {len(self.spans)}")

    def __len__(self) -> int:
        return len(self.tokens)

    def free(self) -> list[int]:
        """Positions that may be replaced or deleted."""
        return [i for i, s in enumerate(self.spans) if s == 0]

    def gaps(self) -> list[int]:
        """Gaps (0 … len) where a token may be inserted: not between two tokens of one span."""
        s = self.spans
        return [g for g in range(len(s) + 1)
                if g == 0 or g == len(s) or s[g - 1] == 0 or s[g - 1] != s[g]]

    def replace(self, i: int, token: int) -> State:
        return State(self.tokens[:i] + (token,) + self.tokens[i + 1:], self.spans)

    def insert(self, g: int, token: int) -> State:
        return State(self.tokens[:g] + (token,) + self.tokens[g:],
                     self.spans[:g] + (0,) + self.spans[g:])

    def delete(self, i: int) -> State:
        return State(self.tokens[:i] + self.tokens[i + 1:], self.spans[:i] + self.spans[i + 1:])


def uniform_tokens(candidates: Sequence[int], vocab_size: int) -> TokenProposal:
    """The proposal that draws every id of ``candidates`` with equal probability.

    Raises:
        ValueError: If ``candidates`` is empty or holds ids outside [0, vocab_size).
    """
    ids = np.unique(np.asarray(candidates, np.int64))
    if ids.size == 0 or ids[0] < 0 or ids[-1] >= vocab_size:
        raise ValueError(f"candidates must be a non-empty set of ids in [0, {vocab_size}), "
                         f"got {list(candidates)[:10]}")
    logq = np.full(vocab_size, -np.inf)
    logq[ids] = -math.log(ids.size)
    return lambda left, right: logq


def _log(p: float) -> float:
    return math.log(p) if p > 0 else -math.inf


def _logsumexp(values: Sequence[float]) -> float:
    m = max(values)
    return m if m == -math.inf else m + math.log(sum(math.exp(v - m) for v in values))


@dataclass(frozen=True)
class Proposal:
    """A proposed move: the new state, log q(x'|x), log q(x|x') and the move kind."""

    state: State
    log_forward: float
    log_reverse: float
    kind: str


@dataclass
class EditProposal:
    """The replace / insert / delete kernel over variable-length sequences with locked spans.

    With move weights w_r, w_i, w_d (normalised), one step picks a move kind, then:

    - replace: a free position i uniformly, a token v ~ q(· | x_{<i}, x_{>i});
    - insert: an allowed gap g uniformly, a token v ~ q(· | x_{<g}, x_{≥g});
    - delete: a free position uniformly.

    q(x'|x) sums every way of reaching x' (inserting v beside an equal free token, or deleting
    any token of a run, gives the same x'), and a move that is impossible here (no free token,
    length at its bound) proposes x itself. The reverse of insert is delete and vice versa.

    Args:
        tokens: The token proposal q(v | left, right) (uniform, or a forward×backward LM).
        weights: Move-kind probabilities, keys among ``replace``, ``insert``, ``delete``.
        min_len: Deletion never goes below this length.
        max_len: Insertion never goes above this length.

    Raises:
        ValueError: For unknown move kinds, negative or all-zero weights, or bad lengths.
    """

    tokens: TokenProposal
    weights: dict[str, float] = field(
        default_factory=lambda: {"replace": 1 / 3, "insert": 1 / 3, "delete": 1 / 3})
    min_len: int = 1
    max_len: int = 64

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(KINDS)
        if unknown:
            raise ValueError(f"weights keys must be among {KINDS}, got {sorted(unknown)}")
        for k, w in self.weights.items():
            check_real(f"weights[{k!r}]", w, low=0)
        total = sum(self.weights.values())
        if not total > 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {self.weights}")
        self.weights = {k: self.weights.get(k, 0.0) / total for k in KINDS}
        self.min_len = check_int("min_len", self.min_len, low=0)
        self.max_len = check_int("max_len", self.max_len, low=self.min_len)

    # --- exact probabilities of one move kind ----------------------------------------------
    def _insert_gaps(self, x: State, y: State) -> list[int]:
        """Gaps of x where inserting one free token yields y."""
        return [g for g in x.gaps() if y.spans[g] == 0 and x.insert(g, y.tokens[g]) == y]

    def _log_q(self, kind: str, x: State, y: State) -> float:
        """log q_kind(y | x) including the kind's own weight; −inf if y is unreachable."""
        w = self.weights[kind]
        if w == 0:
            return -math.inf
        if kind == "replace":
            free = x.free()
            if not free:
                return 0.0 + math.log(w) if y == x else -math.inf
            diff = [i for i in range(len(x)) if x.tokens[i] != y.tokens[i]] \
                if len(x) == len(y) and x.spans == y.spans else None
            if diff is None or len(diff) > 1:
                return -math.inf
            positions = diff if diff else free  # y == x: any position re-drawing its own token
            terms = [math.log(w / len(free)) + self.tokens(x.tokens[:i], x.tokens[i + 1:])
                     [y.tokens[i]] for i in positions if x.spans[i] == 0]
            return _logsumexp(terms) if terms else -math.inf
        if kind == "insert":
            if len(x) >= self.max_len:
                return math.log(w) if y == x else -math.inf
            if len(y) != len(x) + 1:
                return -math.inf
            gaps = x.gaps()
            terms = [math.log(w / len(gaps)) + self.tokens(x.tokens[:g], x.tokens[g:])
                     [y.tokens[g]] for g in self._insert_gaps(x, y)]
            return _logsumexp(terms) if terms else -math.inf
        free = x.free()  # delete
        if len(x) <= self.min_len or not free:
            return math.log(w) if y == x else -math.inf
        if len(y) != len(x) - 1:
            return -math.inf
        hits = sum(1 for i in free if x.delete(i) == y)
        return math.log(w * hits / len(free)) if hits else -math.inf

    def log_prob(self, x: State, y: State) -> float:
        """log q(y | x) of the whole kernel (all move kinds)."""
        return _logsumexp([self._log_q(k, x, y) for k in KINDS])

    # --- sampling --------------------------------------------------------------------------
    def propose(self, x: State, rng: np.random.Generator) -> Proposal:
        """Draw x' ~ q(· | x) and return it with log q(x'|x) and log q(x|x')."""
        kind = KINDS[rng.choice(3, p=[self.weights[k] for k in KINDS])]
        y = self._draw(kind, x, rng)
        if y == x:
            return Proposal(x, 0.0, 0.0, kind)
        reverse = {"replace": "replace", "insert": "delete", "delete": "insert"}[kind]
        return Proposal(y, self._log_q(kind, x, y), self._log_q(reverse, y, x), kind)

    def _draw(self, kind: str, x: State, rng: np.random.Generator) -> State:
        if kind == "replace":
            free = x.free()
            if not free:
                return x
            i = free[rng.integers(len(free))]
            return x.replace(i, _draw_token(self.tokens(x.tokens[:i], x.tokens[i + 1:]), rng))
        if kind == "insert":
            if len(x) >= self.max_len:
                return x
            gaps = x.gaps()
            g = gaps[rng.integers(len(gaps))]
            return x.insert(g, _draw_token(self.tokens(x.tokens[:g], x.tokens[g:]), rng))
        free = x.free()
        if len(x) <= self.min_len or not free:
            return x
        return x.delete(free[rng.integers(len(free))])

    def support(self, x: State) -> dict[State, float]:
        """The whole distribution q(· | x) (for exact tests on small vocabularies)."""
        out: dict[State, float] = {}
        free, gaps = x.free(), x.gaps()
        ys = [x]
        ys += [x.replace(i, v) for i in free
               for v in np.flatnonzero(np.isfinite(self.tokens(x.tokens[:i], x.tokens[i + 1:])))]
        if len(x) < self.max_len:
            ys += [x.insert(g, v) for g in gaps
                   for v in np.flatnonzero(np.isfinite(self.tokens(x.tokens[:g], x.tokens[g:])))]
        if len(x) > self.min_len:
            ys += [x.delete(i) for i in free]
        for y in dict.fromkeys(ys):
            p = math.exp(self.log_prob(x, y))
            if p > 0:
                out[y] = p
        return out


def _draw_token(logq: np.ndarray, rng: np.random.Generator) -> int:
    p = np.exp(logq - np.max(logq))
    return int(rng.choice(len(p), p=p / p.sum()))


# ----------------------------------------------------------------------------- MCMC
@dataclass
class MCMCResult:
    """What a chain did.

    Attributes:
        state: The final state.
        best: The state of highest log π seen (per token, if the chain annealed the per-token
            energy): the output of annealing and of CGMH.
        best_log_prob: Its log π.
        log_probs: log π of the current state after every step, (steps,).
        temperatures: The temperature of every step (all 1 for plain MH), (steps,).
        proposed: Proposals per move kind that would change the state (a proposal of the
            current state itself, e.g. redrawing the same token, is not counted).
        accepted: Accepted proposals per move kind.
        samples: The states after every ``thin``-th step, if kept.
    """

    state: State
    best: State
    best_log_prob: float
    log_probs: np.ndarray
    temperatures: np.ndarray
    proposed: dict[str, int]
    accepted: dict[str, int]
    samples: list[State] = field(default_factory=list)

    def acceptance(self) -> dict[str, float]:
        """Accepted / proposed per move kind (NaN for kinds never proposed)."""
        return {k: self.accepted[k] / self.proposed[k] if self.proposed[k] else math.nan
                for k in self.proposed}


def _score(target: Target, state: State) -> float:
    return float(np.asarray(target.log_prob([state.tokens]), np.float64)[0])


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(None if seed is None else check_int("seed", seed, low=0))


def _check_start(x0: State, target: Target, proposal: EditProposal) -> float:
    if not isinstance(x0, State):
        raise ValueError(f"x0 must be a State, got {type(x0).__name__}")
    if not proposal.min_len <= len(x0) <= proposal.max_len:
        raise ValueError(f"x0 has length {len(x0)}, outside the proposal's "
                         f"[min_len, max_len] = [{proposal.min_len}, {proposal.max_len}]")
    logp = _score(target, x0)
    if not logp > -math.inf:
        raise ValueError("x0 must have positive target probability (log π(x0) = -inf): "
                         "start from a state that meets the hard constraints")
    return logp


def _chain(target: Target, proposal: EditProposal, x0: State, steps: int,
           temperature: Callable[[int], float], per_token: bool, mode: str,
           rng: np.random.Generator, thin: int, on_step: Callable[[int, State], None] | None,
           top_k: int) -> MCMCResult:
    steps = check_int("steps", steps, low=0)
    if mode not in ("exact", "cgmh"):
        raise ValueError(f"mode must be 'exact' or 'cgmh', got {mode!r}")
    thin = check_int("thin", thin, low=0)
    if mode == "cgmh":
        top_k = check_int("top_k", top_k, low=1)
    x, logp = x0, _check_start(x0, target, proposal)
    energy = (lambda lp, n: lp / max(n, 1)) if per_token else (lambda lp, n: lp)
    best, best_logp, best_score = x, logp, energy(logp, len(x))
    log_probs, temps, samples = np.empty(steps), np.empty(steps), []
    proposed, accepted = dict.fromkeys(KINDS, 0), dict.fromkeys(KINDS, 0)
    for t in range(steps):
        temp = float(temperature(t))
        if not temp > 0:
            raise ValueError(f"temperature must stay > 0, got {temp} at step {t}")
        if mode == "cgmh":
            prop, log_alpha, y_logp = _cgmh_step(target, proposal, x, logp, t, top_k, rng)
        else:
            prop = proposal.propose(x, rng)
            y_logp = logp if prop.state == x else _score(target, prop.state)
            log_alpha = ((energy(y_logp, len(prop.state)) - energy(logp, len(x))) / temp
                         + prop.log_reverse - prop.log_forward)
        if prop.state != x:  # a proposal of x itself is neither accepted nor rejected
            proposed[prop.kind] += 1
        if prop.state != x and math.log(rng.random() + 1e-300) < log_alpha:
            x, logp = prop.state, y_logp
            accepted[prop.kind] += 1
            if energy(logp, len(x)) > best_score:  # best under the energy the chain anneals
                best, best_logp, best_score = x, logp, energy(logp, len(x))
        log_probs[t], temps[t] = logp, temp
        if thin and (t + 1) % thin == 0:
            samples.append(x)
        if on_step is not None:
            on_step(t, x)
    return MCMCResult(x, best, best_logp, log_probs, temps, proposed, accepted, samples)


def metropolis_hastings(target: Target, proposal: EditProposal, x0: State, steps: int, *,
                        seed: int | np.random.Generator | None = None, thin: int = 0,
                        mode: str = "exact", top_k: int = 50,
                        on_step: Callable[[int, State], None] | None = None) -> MCMCResult:
    """Metropolis–Hastings over variable-length sequences.

    α(x → x') = min(1, π(x') q(x | x') / (π(x) q(x' | x))), with both q from ``proposal``.

    Args:
        target: The unnormalised target π.
        proposal: The move kernel.
        x0: Start state (must have π(x0) > 0; its locked spans stay locked).
        steps: Number of proposals.
        seed: Seed or ``np.random.Generator``.
        thin: Keep every ``thin``-th state in ``samples`` (0 keeps none).
        mode: ``"exact"`` (π-invariant) or ``"cgmh"`` (the released CGMH heuristics; not
            π-invariant — see the module docstring).
        top_k: Candidate set size of ``mode="cgmh"``.
        on_step: Called as ``on_step(step, state)`` after every step (progress bars).

    Raises:
        ValueError: For a bad start state, negative ``steps`` or an unknown ``mode``.
    """
    top_k = check_int("top_k", top_k, low=1)
    return _chain(target, proposal, x0, steps, lambda t: 1.0, False, mode, _rng(seed), thin,
                  on_step, top_k)


def linear_cooling(t0: float, t1: float, steps: int) -> Callable[[int], float]:
    """T_t = t0 + (t1 − t0)·t/(steps − 1), from t0 down to t1 > 0."""
    t0 = check_real("t0", t0, low=0, low_open=True)
    t1 = check_real("t1", t1, low=0, low_open=True)
    steps = check_int("steps", steps, low=1)
    return lambda t: t0 + (t1 - t0) * min(t, steps - 1) / max(steps - 1, 1)


def exponential_cooling(t0: float, rate: float) -> Callable[[int], float]:
    """T_t = t0 · rate^t with 0 < rate < 1."""
    t0 = check_real("t0", t0, low=0, low_open=True)
    rate = check_real("rate", rate, low=0, high=1, low_open=True, high_open=True)
    return lambda t: t0 * rate ** t


def logarithmic_cooling(c: float) -> Callable[[int], float]:
    """T_t = c / log(t + 2) (Geman & Geman's schedule, which provably finds the argmax for a
    large enough c, slowly)."""
    c = check_real("c", c, low=0, low_open=True)
    return lambda t: c / math.log(t + 2)


def simulated_annealing(target: Target, proposal: EditProposal, x0: State, steps: int,
                        schedule: Callable[[int], float], *, per_token: bool = False,
                        seed: int | np.random.Generator | None = None,
                        on_step: Callable[[int, State], None] | None = None) -> MCMCResult:
    """Simulated annealing: MH on π^{1/T_t} while T_t cools; returns the best state seen.

    With ``per_token=True`` the energy is the per-token one, E(x) = −log π(x)/|x|, so that long
    sentences are not penalised merely for having more tokens to pay for.

    Args:
        target, proposal, x0, steps, seed, on_step: As in :func:`metropolis_hastings`.
        schedule: Temperature per step, e.g. :func:`exponential_cooling`.
        per_token: Anneal the per-token energy.
    """
    return _chain(target, proposal, x0, steps, schedule, per_token, "exact", _rng(seed), 0,
                  on_step, 0)


def _cgmh_step(target: Target, proposal: EditProposal, x: State, logp: float, t: int,
               top_k: int, rng: np.random.Generator) -> tuple[Proposal, float, float]:
    """One step of CGMH's released sampler (see the module docstring for what it omits)."""
    w = proposal.weights
    kind = KINDS[rng.choice(3, p=[w[k] for k in KINDS])]
    threshold = 0.0 if t % 20 < 10 else 0.5
    n = len(x)
    pos = t % (n + 1)  # cyclic sweep over positions (and the end gap, for insertion)
    stay = Proposal(x, 0.0, 0.0, kind)
    if kind in ("replace", "delete") and (pos >= n or x.spans[pos] != 0):
        return stay, -math.inf, logp
    if kind == "insert" and (n >= proposal.max_len or pos not in x.gaps()):
        return stay, -math.inf, logp
    if kind == "delete":
        if n <= proposal.min_len:
            return stay, -math.inf, logp
        y = x.delete(pos)
        y_logp = _score(target, y)
        cands = _top_k(proposal.tokens(x.tokens[:pos], x.tokens[pos + 1:]), top_k)
        scores = target.log_prob([x.replace(pos, int(v)).tokens for v in cands])
        where = np.flatnonzero(cands == x.tokens[pos])
        if where.size == 0:
            return stay, -math.inf, logp
        log_qnorm = scores[where[0]] - _np_logsumexp(scores)
        log_alpha = log_qnorm + y_logp + math.log(w["insert"]) - math.log(w["delete"]) - logp
    else:
        right = x.tokens[pos + 1:] if kind == "replace" else x.tokens[pos:]
        cands = _top_k(proposal.tokens(x.tokens[:pos], right), top_k)
        ys = [x.replace(pos, int(v)) if kind == "replace" else x.insert(pos, int(v))
              for v in cands]
        scores = np.asarray(target.log_prob([y.tokens for y in ys]), np.float64)
        if kind == "insert":
            scores = scores + math.log(10.0 / max(n, 1))  # CGMH's sample_prior for insertion
        qnorm = scores - _np_logsumexp(scores)
        j = int(rng.choice(len(ys), p=np.exp(qnorm)))
        y, y_logp = ys[j], float(target.log_prob([ys[j].tokens])[0])
        log_alpha = 0.0 if kind == "replace" else (
            scores[j] + math.log(w["delete"]) - logp - math.log(w["insert"]) - qnorm[j])
    if not (y_logp > logp + _log(threshold) or rng.random() < 0.5):
        return stay, -math.inf, logp
    return Proposal(y, 0.0, 0.0, kind), log_alpha, y_logp


def _top_k(logq: np.ndarray, k: int) -> np.ndarray:
    finite = np.flatnonzero(np.isfinite(logq))
    order = finite[np.argsort(-logq[finite], kind="stable")]
    return order[:k]


def _np_logsumexp(a: np.ndarray) -> float:
    m = float(np.max(a))
    return m if m == -math.inf else m + math.log(float(np.sum(np.exp(a - m))))


# ----------------------------------------------------------------------------- Gibbs
def gibbs(target: Target, x0: State, sweeps: int, candidates: Sequence[int], *,
          seed: int | np.random.Generator | None = None,
          conditional: Callable[[State, int], np.ndarray] | None = None,
          thin: int = 0) -> MCMCResult:
    """Gibbs sampling at fixed length: each free position in turn from its exact conditional.

    π(x_i = v | x_{−i}) ∝ π(x_1 … x_{i−1} v x_{i+1} … x_n) for v in ``candidates``, all scored
    in one batch. A masked LM's conditional can be given as ``conditional(state, i)`` instead
    (log-probabilities over ``candidates``, in their order); then the chain targets π only
    if those conditionals are π's.

    Args:
        target: The unnormalised target π.
        x0: Start state (π(x0) > 0).
        sweeps: Passes over the free positions.
        candidates: Token ids a position may take.
        seed: Seed or ``np.random.Generator``.
        conditional: Optional replacement for the exact conditional.
        thin: Keep the state after every ``thin``-th sweep.

    Raises:
        ValueError: For an empty candidate set, negative ``sweeps`` or π(x0) = 0.
    """
    cands = np.asarray(candidates, np.int64).reshape(-1)  # kept in the caller's order:
    if cands.size == 0:                                    # a conditional scores them so
        raise ValueError("candidates must hold at least one token id, got none")
    if np.unique(cands).size != cands.size:
        raise ValueError(f"candidates must be distinct token ids, got {list(candidates)}")
    sweeps = check_int("sweeps", sweeps, low=0)
    thin = check_int("thin", thin, low=0)
    rng = _rng(seed)
    x = x0
    logp = _score(target, x)
    if not logp > -math.inf:
        raise ValueError("x0 must have positive target probability (log π(x0) = -inf)")
    free = x.free()
    steps = sweeps * len(free)
    log_probs, samples, best, best_logp = np.empty(steps), [], x, logp
    t = 0
    for sweep in range(sweeps):
        for i in free:
            if conditional is None:
                scores = np.asarray(target.log_prob([x.replace(i, int(v)).tokens
                                                     for v in cands]), np.float64)
            else:
                scores = np.asarray(conditional(x, i), np.float64)
            if scores.shape != cands.shape or not np.any(scores > -np.inf):
                raise ValueError(f"the conditional at position {i} must give {cands.size} "
                                 "log-probabilities (one per candidate, in order) with at least "
                                 f"one finite; got shape {scores.shape}")
            p = np.exp(scores - np.max(scores))
            j = int(rng.choice(len(cands), p=p / p.sum()))
            x = x.replace(i, int(cands[j]))
            logp = float(scores[j]) if conditional is None else _score(target, x)
            if logp > best_logp:
                best, best_logp = x, logp
            log_probs[t] = logp
            t += 1
        if thin and (sweep + 1) % thin == 0:
            samples.append(x)
    n = {"replace": steps, "insert": 0, "delete": 0}
    return MCMCResult(x, best, best_logp, log_probs, np.ones(steps), n, dict(n), samples)


# ----------------------------------------------------------------------------- IS / rejection
@dataclass
class ImportanceResult:
    """Samples from the proposal with self-normalised weights w_i ∝ π(x_i)/q(x_i).

    Attributes:
        samples: The drawn sequences.
        weights: Normalised weights, (n,).
        ess: Effective sample size 1/Σw_i².
        log_normaliser: log of the unbiased estimate of Z = Σ_x π(x), i.e. log mean π/q.
    """

    samples: list[tuple[int, ...]]
    weights: np.ndarray
    ess: float
    log_normaliser: float


def _draw_batch(sample: Callable[[np.random.Generator], tuple[int, ...]],
                log_q: Callable[[Sequence[tuple[int, ...]]], np.ndarray], n: int,
                rng: np.random.Generator) -> tuple[list[tuple[int, ...]], np.ndarray]:
    xs = [tuple(sample(rng)) for _ in range(n)]
    return xs, np.asarray(log_q(xs), np.float64)


def importance_sampling(target: Target, sample: Callable[[np.random.Generator], tuple[int, ...]],
                        log_q: Callable[[Sequence[tuple[int, ...]]], np.ndarray], n: int, *,
                        seed: int | np.random.Generator | None = None) -> ImportanceResult:
    """Self-normalised importance sampling of π with proposal q.

    Args:
        target: The unnormalised target π.
        sample: Draws one sequence from q given a ``np.random.Generator``.
        log_q: log q of a batch of sequences (normalised).
        n: Number of draws.
        seed: Seed or ``np.random.Generator``.

    Raises:
        ValueError: If ``n`` < 1 or every draw has π = 0.
    """
    n = check_int("n", n, low=1)
    xs, lq = _draw_batch(sample, log_q, n, _rng(seed))
    logw = np.asarray(target.log_prob(xs), np.float64) - lq
    if not np.any(np.isfinite(logw)):
        raise ValueError(f"all {n} proposals have target probability 0; the proposal misses "
                         "the target's support")
    log_z = _np_logsumexp(logw) - math.log(n)
    w = np.exp(logw - _np_logsumexp(logw))
    return ImportanceResult(xs, w, float(1.0 / np.sum(w ** 2)), log_z)


@dataclass
class RejectionResult:
    """Exact samples of π and the acceptance rate (accepted / proposed)."""

    samples: list[tuple[int, ...]]
    proposed: int
    acceptance: float


def rejection_sampling(target: Target, sample: Callable[[np.random.Generator], tuple[int, ...]],
                       log_q: Callable[[Sequence[tuple[int, ...]]], np.ndarray], log_bound: float,
                       n: int, *, seed: int | np.random.Generator | None = None,
                       max_proposals: int = 1_000_000, batch: int = 256) -> RejectionResult:
    """Rejection sampling: accept x ~ q with probability π(x) / (M q(x)), log M = ``log_bound``.

    Exact when π(x) ≤ M q(x) everywhere; a draw that breaks the bound raises instead of
    silently biasing the output.

    Args:
        target: The unnormalised target π.
        sample, log_q: The proposal, as in :func:`importance_sampling`.
        log_bound: log M with π ≤ M q.
        n: Number of accepted samples wanted.
        seed: Seed or ``np.random.Generator``.
        max_proposals: Give up (RuntimeError) after this many proposals.
        batch: Proposals scored per call of the target.

    Raises:
        ValueError: If a draw has π(x) > M q(x), or ``n`` < 1.
        RuntimeError: If ``max_proposals`` pass before ``n`` acceptances.
    """
    n = check_int("n", n, low=1)
    batch = check_int("batch", batch, low=1)
    max_proposals = check_int("max_proposals", max_proposals, low=1)
    log_bound = check_real("log_bound", log_bound)
    rng = _rng(seed)
    out: list[tuple[int, ...]] = []
    proposed = 0
    while len(out) < n:
        if proposed >= max_proposals:
            raise RuntimeError(f"rejection sampling accepted {len(out)} of {proposed} proposals "
                               f"(max_proposals={max_proposals}); the bound M is too loose or "
                               "the target too narrow for this proposal")
        xs, lq = _draw_batch(sample, log_q, batch, rng)
        log_ratio = np.asarray(target.log_prob(xs), np.float64) - lq - log_bound
        if np.any(log_ratio > 1e-9):
            worst = int(np.argmax(log_ratio))
            raise ValueError(f"log_bound={log_bound} is not a bound: π(x)/q(x) = "
                             f"exp({log_ratio[worst] + log_bound:.4g}) for x={xs[worst]}")
        u = np.log(rng.random(batch) + 1e-300)
        for x, keep in zip(xs, u < log_ratio, strict=True):
            proposed += 1
            if keep:
                out.append(x)
                if len(out) == n:
                    break
    return RejectionResult(out, proposed, n / proposed)
