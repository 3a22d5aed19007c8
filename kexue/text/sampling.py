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

Many chains at once. ``chains=K`` runs K independent chains as one batch: each step draws every
chain's move, asks the token proposal for the distributions of all their contexts in one call
(:meth:`EditProposal.propose_batch`, through a proposal's ``probs`` method where it has one) and
scores all K proposals in one ``target.log_prob`` call. Each chain is the single-chain kernel,
with the same proposal probabilities and the same acceptance ratio; the result,
:class:`MCMCChains`, carries the (K, steps) energy traces and their split R̂ and ESS
(:mod:`kexue.text.diagnostics`), and :func:`metropolis_hastings` can stop once R̂ < 1.01.

Randomness, per chain. Every step of a chain consumes exactly four uniforms of that chain's own
``np.random.Generator`` (move kind, site, token, acceptance). Chain k's generator is
``default_rng(derive_seed(seed, "chain", str(k)))`` for an int seed (``Generator.spawn`` of a
given generator; fresh entropy for ``None``), so chain k follows the same path whatever the
number of chains run beside it, and a single-chain run with seed s is chain 0 of any batch
with seed s (a single chain given a ``Generator`` draws from it directly).

References:
    https://kexue.fm/archives/8062 (【搜出来的文本】⋅(一)从文本生成到搜索采样)
    https://kexue.fm/archives/8084 (【搜出来的文本】⋅(二)从MCMC到模拟退火)
    Miao et al., "CGMH: Constrained Sentence Generation by Metropolis-Hastings Sampling", AAAI 2019.
    Vehtari et al., "Rank-normalization, folding, and localization: an improved R-hat", 2021.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, overload

import numpy as np

from kexue._checks import check_int, check_real
from kexue._seeds import derive_seed
from kexue.text.diagnostics import ess, split_rhat

__all__ = [
    "BatchTokenProposal",
    "EditProposal",
    "ImportanceResult",
    "MCMCChains",
    "MCMCResult",
    "RejectionResult",
    "State",
    "Target",
    "TokenProposal",
    "chain_generators",
    "ess",
    "exponential_cooling",
    "gibbs",
    "importance_sampling",
    "linear_cooling",
    "logarithmic_cooling",
    "metropolis_hastings",
    "rejection_sampling",
    "simulated_annealing",
    "split_rhat",
    "token_probs",
    "uniform_tokens",
]

KINDS = ("replace", "insert", "delete")
UNIFORMS_PER_STEP = 4  # move kind, site, token, acceptance
_BLOCK = 64  # steps of uniforms drawn per chain at a time

Context = tuple[tuple[int, ...], tuple[int, ...]]  # (tokens left of the slot, tokens right of it)


class Target(Protocol):
    """An unnormalised log-density over token-id sequences, scored in batches."""

    def log_prob(self, batch: Sequence[tuple[int, ...]]) -> np.ndarray: ...


class TokenProposal(Protocol):
    """log q(v | left, right) over the whole vocabulary for one free slot between two contexts.

    Returns a (vocab_size,) array that log-sum-exps to 0 (``-inf`` for ids never proposed).
    """

    def __call__(self, left: tuple[int, ...], right: tuple[int, ...]) -> np.ndarray: ...


class BatchTokenProposal(TokenProposal, Protocol):
    """A token proposal that also gives the probabilities of many contexts in one call.

    ``probs(contexts)[j] = exp(self(*contexts[j]))``, a (len(contexts), vocab_size) array whose
    rows sum to 1. The batched chains use it when it exists (:func:`token_probs`).
    """

    def probs(self, contexts: Sequence[Context]) -> np.ndarray: ...


def token_probs(tokens: TokenProposal, contexts: Sequence[Context]) -> np.ndarray:
    """q(· | left, right) of every context as probabilities, (len(contexts), vocab_size).

    One ``tokens.probs(contexts)`` call for a :class:`BatchTokenProposal`, else the exponential
    of one ``tokens(left, right)`` call per context.
    """
    batch = getattr(tokens, "probs", None)
    if callable(batch):
        return np.asarray(batch(contexts), np.float64)
    return np.exp(np.stack([np.asarray(tokens(left, right), np.float64)
                            for left, right in contexts]))


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

    def is_gap(self, g: int) -> bool:
        """Whether a token may be inserted at gap ``g`` (0 … len)."""
        s = self.spans
        return g == 0 or g == len(s) or s[g - 1] == 0 or s[g - 1] != s[g]

    def replace(self, i: int, token: int) -> State:
        return State(self.tokens[:i] + (token,) + self.tokens[i + 1:], self.spans)

    def insert(self, g: int, token: int) -> State:
        return State(self.tokens[:g] + (token,) + self.tokens[g:],
                     self.spans[:g] + (0,) + self.spans[g:])

    def delete(self, i: int) -> State:
        return State(self.tokens[:i] + self.tokens[i + 1:], self.spans[:i] + self.spans[i + 1:])

    def run(self, i: int, token: int) -> tuple[int, int]:
        """The free tokens equal to ``token`` next to position i: (how many end just before
        i, how many start at i). Inserting ``token`` at any gap of that run, or deleting any of
        its tokens, gives the same sequence."""
        t, s = self.tokens, self.spans
        left = i
        while left > 0 and t[left - 1] == token and s[left - 1] == 0:
            left -= 1
        right = i
        while right < len(t) and t[right] == token and s[right] == 0:
            right += 1
        return i - left, right - i


class UniformTokens:
    """q(v | left, right) = 1/|C| for v in the candidate set C, whatever the context."""

    def __init__(self, candidates: Sequence[int], vocab_size: int) -> None:
        ids = np.unique(np.asarray(candidates, np.int64))
        if ids.size == 0 or ids[0] < 0 or ids[-1] >= vocab_size:
            raise ValueError(f"candidates must be a non-empty set of ids in [0, {vocab_size}), "
                             f"got {list(candidates)[:10]}")
        self.log_q = np.full(vocab_size, -np.inf)
        self.log_q[ids] = -math.log(ids.size)
        self.q = np.exp(self.log_q)

    def __call__(self, left: tuple[int, ...], right: tuple[int, ...]) -> np.ndarray:
        return self.log_q

    def probs(self, contexts: Sequence[Context]) -> np.ndarray:
        return np.broadcast_to(self.q, (len(contexts), len(self.q)))


def uniform_tokens(candidates: Sequence[int], vocab_size: int) -> UniformTokens:
    """The proposal that draws every id of ``candidates`` with equal probability.

    Raises:
        ValueError: If ``candidates`` is empty or holds ids outside [0, vocab_size).
    """
    return UniformTokens(candidates, vocab_size)


def _log(p: float) -> float:
    return math.log(p) if p > 0 else -math.inf


def _logsumexp(values: Sequence[float]) -> float:
    m = max(values)
    return m if m == -math.inf else m + math.log(sum(math.exp(v - m) for v in values))


def _draw(p: np.ndarray, u: float, block: int = 64) -> int:
    """The id v with P(v) ∝ p[v] (p >= 0, 1-D), by inversion of the uniform ``u`` in [0, 1).

    The cumulative sum runs over block sums first, then inside one block: a vocabulary-sized
    cumsum per draw would cost more than the proposal itself.
    """
    n = len(p)
    sums = np.add.reduceat(p, np.arange(0, n, block))  # (ceil(n / block),)
    cum = np.cumsum(sums)
    t = u * cum[-1]
    b = min(int(np.searchsorted(cum, t, side="right")), len(cum) - 1)
    while b and sums[b] <= 0:  # rounding at the very top: back to the last block with mass
        b -= 1
    inside = p[b * block:(b + 1) * block]
    cum_in = np.cumsum(inside)
    i = int(np.searchsorted(cum_in, t - (cum[b - 1] if b else 0.0), side="right"))
    i = min(i, len(inside) - 1)
    while i and inside[i] <= 0:  # the same at the top of the block
        i -= 1
    return b * block + i


@dataclass(frozen=True)
class Proposal:
    """A proposed move: the new state, log q(x'|x), log q(x|x') and the move kind."""

    state: State
    log_forward: float
    log_reverse: float
    kind: str


@dataclass
class _Plan:
    """One chain's move before its token is drawn: the site and the contexts it needs."""

    kind: str
    x: State
    stay: bool = False  # the move is impossible here: propose x itself
    site: int = -1
    draw: int = -1  # row of the drawing context (replace, insert)
    reverse: list[int] = field(default_factory=list)  # rows of a deletion's reverse insertions
    y: State | None = None  # a deletion's result


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

    # --- exact probabilities of one move kind (the reference the fast path is tested on) ----
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
        """Draw x' ~ q(· | x) and return it with log q(x'|x) and log q(x|x').

        Uses three uniforms of ``rng`` (see :meth:`propose_batch`).
        """
        return self.propose_batch([x], rng.random((1, 3)))[0]

    def kinds(self, u: np.ndarray) -> np.ndarray:
        """Move-kind indices (into ``KINDS``) of uniforms ``u`` by inversion of the weights."""
        w = np.array([self.weights[k] for k in KINDS])
        last = int(np.flatnonzero(w > 0)[-1])  # rounding never picks a kind of weight 0
        return np.minimum(np.searchsorted(np.cumsum(w), u, side="right"), last)

    def propose_batch(self, states: Sequence[State], uniforms: np.ndarray) -> list[Proposal]:
        """One proposal per state, the token distributions of all their contexts in one call.

        Chain k uses ``uniforms[k] = (u_kind, u_site, u_token)``: the kind by inversion of the
        weights, the site as ``sites[floor(u_site·|sites|)]`` and the token by inversion of
        q(· | context). q(x'|x) and q(x|x') are those of :meth:`log_prob`; for the common case
        both come from the one context of the move (for a deletion: the slot it leaves), and
        the few moves into a run of equal tokens ask for the run's other contexts in one more
        call.

        Args:
            states: Current states, (K,).
            uniforms: (K, 3) numbers in [0, 1).

        Returns:
            K proposals; a move that is impossible, or redraws the token in place, proposes
            the state itself (``proposal.state is states[k]``, log q terms 0).

        Raises:
            ValueError: If ``uniforms`` does not have shape (K, 3).
        """
        u = np.asarray(uniforms, np.float64)
        if u.shape != (len(states), 3):
            raise ValueError(f"uniforms must have shape ({len(states)}, 3), got {u.shape}")
        contexts: dict[Context, int] = {}
        plans = [self._plan(x, KINDS[j], float(us), contexts)
                 for x, j, us in zip(states, self.kinds(u[:, 0]), u[:, 1], strict=True)]
        rows = token_probs(self.tokens, list(contexts)) if contexts else None
        out: list[Proposal | None] = []
        extra: dict[Context, int] = {}  # contexts of insertions into a run, asked for after
        pending = []
        for k, plan in enumerate(plans):
            x = plan.x
            if plan.stay:
                out.append(Proposal(x, 0.0, 0.0, plan.kind))
            elif plan.kind == "delete":
                out.append(self._deletion(plan, rows))
            else:
                v = _draw(rows[plan.draw], float(u[k, 2]))
                if plan.kind == "replace":
                    out.append(self._replacement(plan, v, rows))
                    continue
                before, after = x.run(plan.site, v)
                gaps = [(g, extra.setdefault((x.tokens[:g], x.tokens[g:]), len(extra)))
                        for g in range(plan.site - before, plan.site + after + 1)
                        if g != plan.site]
                pending.append((k, v, before + after + 1, gaps))
                out.append(None)
        more = token_probs(self.tokens, list(extra)) if extra else None
        for k, v, run, gaps in pending:
            plan = plans[k]
            x = plan.x
            q = rows[plan.draw][v] + sum(more[j][v] for _, j in gaps)
            y = x.insert(plan.site, v)
            n_gaps = len(x.gaps())
            log_f = _log(self.weights["insert"] / n_gaps * q)
            log_r = self._log_delete(y, run)
            out[k] = Proposal(y, log_f, log_r, "insert")
        return out  # type: ignore[return-value]

    def _plan(self, x: State, kind: str, u: float, contexts: dict[Context, int]) -> _Plan:
        """Pick the site of ``kind`` and register the contexts the move needs."""
        if kind == "insert":
            if len(x) >= self.max_len:
                return _Plan(kind, x, stay=True)
            gaps = x.gaps()
            g = gaps[min(int(u * len(gaps)), len(gaps) - 1)]
            return _Plan(kind, x, site=g, draw=contexts.setdefault(
                (x.tokens[:g], x.tokens[g:]), len(contexts)))
        free = x.free()
        if not free or (kind == "delete" and len(x) <= self.min_len):
            return _Plan(kind, x, stay=True)
        i = free[min(int(u * len(free)), len(free) - 1)]
        if kind == "replace":
            return _Plan(kind, x, site=i, draw=contexts.setdefault(
                (x.tokens[:i], x.tokens[i + 1:]), len(contexts)))
        y = x.delete(i)  # its reverse: insert x_i at any gap of the run it leaves in y
        before, after = y.run(i, x.tokens[i])
        reverse = [contexts.setdefault((y.tokens[:g], y.tokens[g:]), len(contexts))
                   for g in range(i - before, i + after + 1) if y.is_gap(g)]
        return _Plan(kind, x, site=i, reverse=reverse, y=y)

    def _replacement(self, plan: _Plan, v: int, rows: np.ndarray) -> Proposal:
        x, i = plan.x, plan.site
        if v == x.tokens[i]:  # redrawing the same token proposes x itself
            return Proposal(x, 0.0, 0.0, "replace")
        row = rows[plan.draw]  # the reverse move redraws x_i in the same context
        share = self.weights["replace"] / len(x.free())
        return Proposal(x.replace(i, v), _log(share * row[v]), _log(share * row[x.tokens[i]]),
                        "replace")

    def _deletion(self, plan: _Plan, rows: np.ndarray) -> Proposal:
        x, i, y = plan.x, plan.site, plan.y
        before, after = x.run(i, x.tokens[i])
        log_f = _log(self.weights["delete"] * (before + after) / len(x.free()))
        q = sum(rows[j][x.tokens[i]] for j in plan.reverse)
        log_r = _log(self.weights["insert"] / len(y.gaps()) * q) if len(y) < self.max_len \
            else -math.inf
        return Proposal(y, log_f, log_r, "delete")

    def _log_delete(self, y: State, run: int) -> float:
        """log q_delete(y → y minus one token of a free run of length ``run``)."""
        if len(y) <= self.min_len:
            return -math.inf
        return _log(self.weights["delete"] * run / len(y.free()))

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


@dataclass
class MCMCChains:
    """What K chains run together did (shapes: K chains, T steps run).

    Attributes:
        states: The final state of every chain, (K,).
        best: The best state of every chain (by the energy it annealed), (K,).
        best_log_prob: Their log π, (K,).
        log_probs: log π of every chain's current state after every step, (K, T).
        best_energies: The lowest energy seen so far, after every step, (K, T): −log π, or
            −log π(x)/|x| for chains annealed per token. Annealing's progress report.
        temperatures: The temperature of every step, (T,).
        proposed: Per move kind, proposals that would change the state, per chain, (K,) ints.
        accepted: Per move kind, accepted proposals per chain, (K,) ints.
        samples: Per chain, the states after every ``thin``-th step.
        annealed: Whether the target changed with the temperature (simulated annealing): then
            the chains have no stationary distribution to converge to, and :meth:`rhat` and
            :meth:`ess` refuse.
        steps: Steps run (fewer than asked when R̂ stopped the chains).
    """

    states: list[State]
    best: list[State]
    best_log_prob: np.ndarray
    log_probs: np.ndarray
    best_energies: np.ndarray
    temperatures: np.ndarray
    proposed: dict[str, np.ndarray]
    accepted: dict[str, np.ndarray]
    samples: list[list[State]]
    annealed: bool
    steps: int

    def __len__(self) -> int:
        return len(self.states)

    def chain(self, k: int) -> MCMCResult:
        """Chain k alone, as a single-chain run reports it."""
        k = check_int("k", k, low=0, high=len(self) - 1)
        return MCMCResult(self.states[k], self.best[k], float(self.best_log_prob[k]),
                          self.log_probs[k], self.temperatures,
                          {m: int(v[k]) for m, v in self.proposed.items()},
                          {m: int(v[k]) for m, v in self.accepted.items()}, self.samples[k])

    def acceptance(self) -> dict[str, float]:
        """Accepted / proposed per move kind over all chains (NaN for kinds never proposed)."""
        out = {}
        for k in self.proposed:
            n = int(self.proposed[k].sum())
            out[k] = int(self.accepted[k].sum()) / n if n else math.nan
        return out

    def energies(self, warmup: float = 0.5) -> np.ndarray:
        """The energy −log π of every chain after the first ``warmup`` fraction of steps,
        (K, T − floor(warmup·T)).

        Raises:
            ValueError: If the chains annealed (their target changed along the way), or
                ``warmup`` is outside [0, 1).
        """
        if self.annealed:
            raise ValueError("rhat/ess: these chains annealed, so their target changed with "
                             "the temperature and R-hat and ESS are undefined; read "
                             "best_energies, the best-energy trace, instead")
        warmup = check_real("warmup", warmup, low=0, high=1, high_open=True)
        return -self.log_probs[:, int(warmup * self.log_probs.shape[1]):]

    def rhat(self, warmup: float = 0.5, *, rank: bool = True) -> float:
        """Split R̂ of the energy across the chains, after ``warmup`` (see
        :func:`~kexue.text.diagnostics.split_rhat`). Raises ValueError for annealed chains."""
        return split_rhat(self.energies(warmup), rank=rank)

    def ess(self, warmup: float = 0.5, *, rank: bool = True) -> float:
        """ESS of the energy across the chains, after ``warmup`` (see
        :func:`~kexue.text.diagnostics.ess`). Raises ValueError for annealed chains."""
        return ess(self.energies(warmup), rank=rank)


def _score(target: Target, state: State) -> float:
    return float(np.asarray(target.log_prob([state.tokens]), np.float64)[0])


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(None if seed is None else check_int("seed", seed, low=0))


def chain_generators(seed: int | np.random.Generator | None, chains: int
                     ) -> list[np.random.Generator]:
    """One ``np.random.Generator`` per chain (see the module docstring).

    Chain k of seed s: ``default_rng(derive_seed(s, "chain", str(k)))``, independent of the
    number of chains; a generator is split with ``spawn``; ``None`` draws fresh entropy.

    Raises:
        ValueError: If ``seed`` is not None, a generator or an int >= 0, or ``chains`` < 1.
    """
    chains = check_int("chains", chains, low=1)
    if isinstance(seed, np.random.Generator):
        return list(seed.spawn(chains))
    if seed is None:
        return [np.random.default_rng(s) for s in np.random.SeedSequence().spawn(chains)]
    seed = check_int("seed", seed, low=0, high=2**64 - 1)
    return [np.random.default_rng(derive_seed(seed, "chain", str(k))) for k in range(chains)]


def _starts(x0: State | Sequence[State], chains: int | None) -> list[State]:
    """The start state of every chain."""
    if isinstance(x0, State):
        return [x0] * (1 if chains is None else chains)
    starts = list(x0) if isinstance(x0, Sequence) and not isinstance(x0, str) else None
    if starts is None or not all(isinstance(s, State) for s in starts):
        raise ValueError(f"x0 must be a State or a sequence of States, got "
                         f"{type(x0).__name__}")
    if chains is None or len(starts) != chains:
        raise ValueError(f"x0 holds {len(starts)} start states: pass chains={len(starts)} "
                         f"(one start per chain), got chains={chains}")
    return starts


def _check_starts(x0s: list[State], target: Target, proposal: EditProposal) -> np.ndarray:
    for k, x in enumerate(x0s):
        if not proposal.min_len <= len(x) <= proposal.max_len:
            where = f"x0[{k}]" if len(x0s) > 1 else "x0"
            raise ValueError(f"{where} has length {len(x)}, outside the proposal's "
                             f"[min_len, max_len] = [{proposal.min_len}, {proposal.max_len}]")
    logp = np.asarray(target.log_prob([x.tokens for x in x0s]), np.float64)
    bad = np.flatnonzero(~(logp > -np.inf))
    if len(bad):
        where = f"x0[{bad[0]}]" if len(x0s) > 1 else "x0"
        raise ValueError(f"{where} must have positive target probability (log π(x0) = -inf): "
                         "start from a state that meets the hard constraints")
    return logp


class _Uniforms:
    """Four uniforms per chain and step, each chain from its own generator, drawn in blocks."""

    def __init__(self, rngs: list[np.random.Generator]) -> None:
        self.rngs, self.block, self.at = rngs, np.empty((0, len(rngs), 4)), 0

    def next(self) -> np.ndarray:
        if self.at == len(self.block):  # (BLOCK, K, 4): chain k's stream, in order
            self.block = np.stack([r.random((_BLOCK, UNIFORMS_PER_STEP)) for r in self.rngs], 1)
            self.at = 0
        self.at += 1
        return self.block[self.at - 1]


def _run(target: Target, proposal: EditProposal, x0s: list[State], steps: int,
         temperature: Callable[[int], float], per_token: bool, mode: str,
         rngs: list[np.random.Generator], thin: int,
         on_step: Callable[[int, list[State]], None] | None, top_k: int, annealed: bool,
         stop_rhat: float | None = None, check_every: int = 50) -> MCMCChains:
    """K chains as one batch: one token-proposal call and one target call per step."""
    steps = check_int("steps", steps, low=0)
    if mode not in ("exact", "cgmh"):
        raise ValueError(f"mode must be 'exact' or 'cgmh', got {mode!r}")
    thin = check_int("thin", thin, low=0)
    if mode == "cgmh":
        top_k = check_int("top_k", top_k, low=1)
    k_chains = len(x0s)
    xs = list(x0s)
    logp = _check_starts(xs, target, proposal)
    lengths = np.array([len(x) for x in xs], np.float64)

    def energy(lp: np.ndarray, n: np.ndarray) -> np.ndarray:  # what the chain anneals, −E
        return lp / np.maximum(n, 1) if per_token else lp

    best, best_logp = list(xs), logp.copy()
    best_score = np.array(energy(logp, lengths))  # a copy: logp changes in place
    log_probs, best_trace = np.empty((k_chains, steps)), np.empty((k_chains, steps))
    temps = np.empty(steps)
    samples: list[list[State]] = [[] for _ in xs]
    proposed = {m: np.zeros(k_chains, np.int64) for m in KINDS}
    accepted = {m: np.zeros(k_chains, np.int64) for m in KINDS}
    uniforms = _Uniforms(rngs)
    done = steps
    for t in range(steps):
        temp = float(temperature(t))
        if not temp > 0:
            raise ValueError(f"temperature must stay > 0, got {temp} at step {t}")
        u = uniforms.next()  # (K, 4)
        if mode == "cgmh":
            props, log_alpha, y_logp = _cgmh_batch(target, proposal, xs, logp, t, top_k, u)
        else:
            props = proposal.propose_batch(xs, u[:, :3])
            y_logp = logp.copy()
            moved = [k for k in range(k_chains) if props[k].state is not xs[k]]
            if moved:
                y_logp[moved] = np.asarray(target.log_prob([props[k].state.tokens
                                                           for k in moved]), np.float64)
            y_len = np.array([len(p.state) for p in props], np.float64)
            q_ratio = np.array([p.log_reverse - p.log_forward for p in props])
            with np.errstate(invalid="ignore"):  # −inf − (−inf) only where nothing moved
                log_alpha = (energy(y_logp, y_len) - energy(logp, lengths)) / temp + q_ratio
        log_u = np.log(u[:, 3] + 1e-300)
        for k, prop in enumerate(props):
            if prop.state is xs[k] or prop.state == xs[k]:
                continue  # a proposal of x itself is neither accepted nor rejected
            proposed[prop.kind][k] += 1
            if log_u[k] < log_alpha[k]:
                xs[k], logp[k], lengths[k] = prop.state, y_logp[k], len(prop.state)
                accepted[prop.kind][k] += 1
                score = float(energy(logp[k:k + 1], lengths[k:k + 1])[0])
                if score > best_score[k]:  # best under the energy the chain anneals
                    best[k], best_logp[k], best_score[k] = xs[k], logp[k], score
        log_probs[:, t], best_trace[:, t], temps[t] = logp, -best_score, temp
        if thin and (t + 1) % thin == 0:
            for k in range(k_chains):
                samples[k].append(xs[k])
        if on_step is not None:
            on_step(t, list(xs))
        half = (t + 1) // 2  # R̂ of the last half of the steps so far
        if stop_rhat is not None and (t + 1) % check_every == 0 and t + 1 - half >= 4:
            if split_rhat(-log_probs[:, half:t + 1]) < stop_rhat:
                done = t + 1
                break
    return MCMCChains(list(xs), best, best_logp, log_probs[:, :done], best_trace[:, :done],
                      temps[:done], proposed, accepted, samples, annealed, done)


def _single_rng(seed: int | np.random.Generator | None) -> list[np.random.Generator]:
    """A single chain's generator: the given one, or chain 0's of the seed."""
    if isinstance(seed, np.random.Generator):
        return [seed]
    return chain_generators(seed, 1)


def _single(on_step: Callable[[int, State], None] | None
            ) -> Callable[[int, list[State]], None] | None:
    return None if on_step is None else (lambda t, xs: on_step(t, xs[0]))


def _check_stop(stop_rhat: float | None, check_every: int) -> tuple[float | None, int]:
    check_every = check_int("check_every", check_every, low=1)
    if stop_rhat is not None:
        stop_rhat = check_real("stop_rhat", stop_rhat, low=1, low_open=True)
    return stop_rhat, check_every


@overload
def metropolis_hastings(target: Target, proposal: EditProposal, x0: State | Sequence[State],
                        steps: int, *, chains: None = None,
                        seed: int | np.random.Generator | None = None, thin: int = 0,
                        mode: str = "exact", top_k: int = 50,
                        on_step: Callable[[int, State], None] | None = None,
                        stop_rhat: float | None = None, check_every: int = 50
                        ) -> MCMCResult: ...


@overload
def metropolis_hastings(target: Target, proposal: EditProposal, x0: State | Sequence[State],
                        steps: int, *, chains: int,
                        seed: int | np.random.Generator | None = None, thin: int = 0,
                        mode: str = "exact", top_k: int = 50,
                        on_step: Callable[[int, list[State]], None] | None = None,
                        stop_rhat: float | None = None, check_every: int = 50
                        ) -> MCMCChains: ...


def metropolis_hastings(target, proposal, x0, steps, *, chains=None, seed=None, thin=0,
                        mode="exact", top_k=50, on_step=None, stop_rhat=None,
                        check_every=50):
    """Metropolis–Hastings over variable-length sequences, one chain or K as one batch.

    α(x → x') = min(1, π(x') q(x | x') / (π(x) q(x' | x))), with both q from ``proposal``.

    Args:
        target: The unnormalised target π.
        proposal: The move kernel.
        x0: Start state (must have π(x0) > 0; its locked spans stay locked), shared by every
            chain, or one start state per chain.
        steps: Number of proposals per chain.
        chains: ``None``: one chain, an :class:`MCMCResult`. K: K independent chains as one
            batch, an :class:`MCMCChains` (see the module docstring for their generators).
        seed: Seed or ``np.random.Generator``.
        thin: Keep every ``thin``-th state in ``samples`` (0 keeps none).
        mode: ``"exact"`` (π-invariant) or ``"cgmh"`` (the released CGMH heuristics; not
            π-invariant — see the module docstring).
        top_k: Candidate set size of ``mode="cgmh"``.
        on_step: Called after every step as ``on_step(step, state)`` (one chain) or
            ``on_step(step, states)`` (K chains), e.g. for progress bars.
        stop_rhat: Stop once the split R̂ of the energy over the last half of the steps so far
            is below this (e.g. 1.01), checked every ``check_every`` steps; ``None`` runs all
            ``steps``. Stopping on R̂ looks at the chains, so it is a diagnostic convenience:
            the stopping step itself is random.
        check_every: Steps between R̂ checks.

    Raises:
        ValueError: For a bad start state, negative ``steps``, an unknown ``mode``, or
            ``stop_rhat`` <= 1.
    """
    top_k = check_int("top_k", top_k, low=1)
    stop_rhat, check_every = _check_stop(stop_rhat, check_every)
    if chains is None:
        result = _run(target, proposal, _starts(x0, None), steps, lambda t: 1.0, False, mode,
                      _single_rng(seed), thin, _single(on_step), top_k, False, stop_rhat,
                      check_every)
        return result.chain(0)
    chains = check_int("chains", chains, low=1)
    return _run(target, proposal, _starts(x0, chains), steps, lambda t: 1.0, False, mode,
                chain_generators(seed, chains), thin, on_step, top_k, False, stop_rhat,
                check_every)


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


@overload
def simulated_annealing(target: Target, proposal: EditProposal, x0: State | Sequence[State],
                        steps: int, schedule: Callable[[int], float], *,
                        per_token: bool = False, chains: None = None,
                        seed: int | np.random.Generator | None = None,
                        on_step: Callable[[int, State], None] | None = None) -> MCMCResult: ...


@overload
def simulated_annealing(target: Target, proposal: EditProposal, x0: State | Sequence[State],
                        steps: int, schedule: Callable[[int], float], *,
                        per_token: bool = False, chains: int,
                        seed: int | np.random.Generator | None = None,
                        on_step: Callable[[int, list[State]], None] | None = None
                        ) -> MCMCChains: ...


def simulated_annealing(target, proposal, x0, steps, schedule, *, per_token=False, chains=None,
                        seed=None, on_step=None):
    """Simulated annealing: MH on π^{1/T_t} while T_t cools; returns the best state seen.

    With ``per_token=True`` the energy is the per-token one, E(x) = −log π(x)/|x|, so that long
    sentences are not penalised merely for having more tokens to pay for. The target changes
    with T_t, so there is no R̂ to report: :attr:`MCMCChains.best_energies` traces the progress.

    Args:
        target, proposal, x0, steps, chains, seed, on_step: As in :func:`metropolis_hastings`.
        schedule: Temperature per step, e.g. :func:`exponential_cooling`.
        per_token: Anneal the per-token energy.
    """
    if chains is None:
        return _run(target, proposal, _starts(x0, None), steps, schedule, per_token, "exact",
                    _single_rng(seed), 0, _single(on_step), 0, True).chain(0)
    chains = check_int("chains", chains, low=1)
    return _run(target, proposal, _starts(x0, chains), steps, schedule, per_token, "exact",
                chain_generators(seed, chains), 0, on_step, 0, True)


def _cgmh_batch(target: Target, proposal: EditProposal, xs: list[State], logp: np.ndarray,
                t: int, top_k: int, u: np.ndarray
                ) -> tuple[list[Proposal], np.ndarray, np.ndarray]:
    """One step of CGMH's released sampler on every chain (see the module docstring for what
    it omits): the candidate distributions in one call, every candidate state in one target
    call. Chain k uses u[k] = (kind, candidate, gate, —)."""
    w = proposal.weights
    threshold = 0.0 if t % 20 < 10 else 0.5
    contexts: dict[Context, int] = {}
    plans: list[tuple[str, int, int] | None] = []
    kinds = [KINDS[j] for j in proposal.kinds(u[:, 0])]
    for x, kind in zip(xs, kinds, strict=True):
        n = len(x)
        pos = t % (n + 1)  # cyclic sweep over positions (and the end gap, for insertion)
        if (kind in ("replace", "delete") and (pos >= n or x.spans[pos] != 0)) or \
                (kind == "insert" and (n >= proposal.max_len or not x.is_gap(pos))) or \
                (kind == "delete" and n <= proposal.min_len):
            plans.append(None)
            continue
        right = x.tokens[pos:] if kind == "insert" else x.tokens[pos + 1:]
        plans.append((kind, pos, contexts.setdefault((x.tokens[:pos], right), len(contexts))))
    rows = token_probs(proposal.tokens, list(contexts)) if contexts else None
    batch, spans = [], []  # every candidate state of every chain, scored in one call
    for x, plan in zip(xs, plans, strict=True):
        if plan is None:
            spans.append(None)
            continue
        kind, pos, row = plan
        cands = _top_k(rows[row], top_k)
        ys = [x.insert(pos, int(v)) if kind == "insert" else x.replace(pos, int(v))
              for v in cands]
        if kind == "delete":
            ys.append(x.delete(pos))
        spans.append((len(batch), cands, ys))
        batch += [y.tokens for y in ys]
    scores_all = np.asarray(target.log_prob(batch), np.float64) if batch else np.zeros(0)
    props, log_alpha, y_logp = [], np.full(len(xs), -np.inf), logp.copy()
    for k, (x, plan) in enumerate(zip(xs, plans, strict=True)):
        stay = Proposal(x, 0.0, 0.0, kinds[k])
        if plan is None:
            props.append(stay)
            continue
        kind, pos, _ = plan
        start, cands, ys = spans[k]
        if kind == "delete":
            scores = scores_all[start:start + len(cands)]
            where = np.flatnonzero(cands == x.tokens[pos])
            y, lp = ys[-1], float(scores_all[start + len(cands)])
            if where.size == 0:
                props.append(stay)
                continue
            log_qnorm = scores[where[0]] - _np_logsumexp(scores)
            alpha = log_qnorm + lp + _log(w["insert"]) - _log(w["delete"]) - logp[k]
        else:
            raw = scores_all[start:start + len(ys)]
            # CGMH's sample_prior 10/|x| for insertion (a constant: it leaves qnorm unchanged)
            scores = raw + math.log(10.0 / max(len(x), 1)) if kind == "insert" else raw
            qnorm = scores - _np_logsumexp(scores)
            j = _draw(np.exp(qnorm), float(u[k, 1]))
            y, lp = ys[j], float(raw[j])
            alpha = 0.0 if kind == "replace" else (
                scores[j] + _log(w["delete"]) - logp[k] - _log(w["insert"]) - qnorm[j])
        if not (lp > logp[k] + _log(threshold) or u[k, 2] < 0.5):
            props.append(stay)
            continue
        props.append(Proposal(y, 0.0, 0.0, kind))
        log_alpha[k], y_logp[k] = alpha, lp
    return props, log_alpha, y_logp


def _top_k(q: np.ndarray, k: int) -> np.ndarray:
    """The ids of the k largest positive entries of ``q``, largest first (ties: lower id)."""
    positive = np.flatnonzero(q > 0)
    order = positive[np.argsort(-q[positive], kind="stable")]
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
