"""Samplers over sequences: exact stationarity of the MH kernel, TV convergence, Gibbs, annealing,
importance and rejection sampling, all against targets enumerated exactly on tiny spaces; the
batched chains (``chains=K``) against the same enumerated kernel: the distribution after t steps,
stationarity, every transition row, and chain-by-chain equality with single chains; and a target
with the word-boundary term (jieba keeps the keyword 节日 a word), exactly."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from kexue.text.constrained import keyword_boundaries
from kexue.text.judging import segmenter
from kexue.text.sampling import (
    EditProposal,
    MCMCChains,
    State,
    chain_generators,
    exponential_cooling,
    gibbs,
    importance_sampling,
    linear_cooling,
    logarithmic_cooling,
    metropolis_hastings,
    rejection_sampling,
    simulated_annealing,
    uniform_tokens,
)

V = 3  # tokens 0, 1, 2 are free; tokens 3 (and 4) make a locked "keyword"
KEY = 3


class TableTarget:
    """π given by a table over enumerated states (0 outside)."""

    def __init__(self, table: dict[tuple[int, ...], float]) -> None:
        self.table = table

    def log_prob(self, batch):
        return np.array([math.log(self.table[tuple(x)]) if tuple(x) in self.table else -np.inf
                         for x in batch])


def context_tokens(left, right):
    """A context-dependent token proposal over {0, 1, 2} (never the keyword)."""
    logits = np.array([0.3 * len(left) - 0.2 * (left[-1] if left else 1),
                       0.5 - 0.1 * len(right), 0.2 * (right[0] if right else 2), -np.inf,
                       -np.inf])
    return logits - np.logaddexp.reduce(logits[:3])


def states_with_key(max_len: int, key: tuple[int, ...] = (KEY,)) -> list[State]:
    """Every sequence over {0,1,2} with the locked keyword (one span) inserted, total length
    len(key) … max_len."""
    out = []
    for n in range(max_len - len(key) + 1):
        for free in itertools.product(range(V), repeat=n):
            for g in range(n + 1):
                tokens = free[:g] + key + free[g:]
                spans = (0,) * g + (1,) * len(key) + (0,) * (n - g)
                out.append(State(tokens, spans))
    return out


def random_table(states, seed, shape=1.0):
    """Gamma(shape) weights: shape 1 is rugged, larger shapes are flatter (faster mixing)."""
    rng = np.random.default_rng(seed)
    return {s.tokens: float(w) for s, w in zip(states, rng.gamma(shape, size=len(states)),
                                                 strict=True)}


def brute_force_kernel(x: State, tokens, weights, min_len, max_len) -> dict[State, float]:
    """q(· | x) enumerated straight from the algorithm's description, independently of
    EditProposal: pick a kind; replace: a uniform free position, a token from ``tokens``;
    insert: a uniform gap not inside a locked span, a token; delete: a uniform free position.
    An impossible move proposes x."""
    total = sum(weights.values())
    w = {k: weights.get(k, 0.0) / total for k in ("replace", "insert", "delete")}
    out: dict[State, float] = {}

    def add(y, p):
        out[y] = out.get(y, 0.0) + p

    free = [i for i, s in enumerate(x.spans) if s == 0]
    n = len(x.tokens)
    if not free:
        add(x, w["replace"])
    for i in free:
        q = np.exp(tokens(x.tokens[:i], x.tokens[i + 1:]))
        for v in np.flatnonzero(q > 0):
            add(State(x.tokens[:i] + (int(v),) + x.tokens[i + 1:], x.spans),
                w["replace"] / len(free) * q[v])
    if n >= max_len:
        add(x, w["insert"])
    else:
        gaps = [g for g in range(n + 1)
                if not (0 < g < n and x.spans[g - 1] != 0 and x.spans[g - 1] == x.spans[g])]
        for g in gaps:
            q = np.exp(tokens(x.tokens[:g], x.tokens[g:]))
            for v in np.flatnonzero(q > 0):
                add(State(x.tokens[:g] + (int(v),) + x.tokens[g:],
                          x.spans[:g] + (0,) + x.spans[g:]), w["insert"] / len(gaps) * q[v])
    if n <= min_len or not free:
        add(x, w["delete"])
    else:
        for i in free:
            add(State(x.tokens[:i] + x.tokens[i + 1:], x.spans[:i] + x.spans[i + 1:]),
                w["delete"] / len(free))
    return out


def transition_matrix(target, kernel, states):
    """The MH kernel P[x, y] = q(y|x)·min(1, π(y)q(x|y) / (π(x)q(y|x))) from a proposal
    kernel given as x -> {y: q(y|x)} (rows of states with π(x) = 0: the identity)."""
    index = {s: i for i, s in enumerate(states)}
    logp = target.log_prob([s.tokens for s in states])
    qs = [kernel(x) for x in states]
    P = np.zeros((len(states), len(states)))
    for i, x in enumerate(states):
        if logp[i] == -np.inf:  # π(x) = 0: never entered, never started from; left at rest
            P[i, i] = 1.0
            continue
        for y, q in qs[i].items():
            if y == x:
                continue
            j = index[y]
            alpha = min(1.0, math.exp(logp[j] - logp[i]) * qs[j][x] / q)
            P[i, j] += q * alpha
        P[i, i] = 1.0 - P[i].sum()
    return P


@pytest.mark.parametrize("weights", [{"replace": 1, "insert": 1, "delete": 1},
                                     {"replace": 0.6, "insert": 0.3, "delete": 0.1}])
def test_proposal_probabilities_equal_the_enumerated_algorithm(weights):
    """support(x) (hence log_prob, the forward and reverse terms of every acceptance ratio)
    equals the brute-force kernel, with a two-token locked span and both length bounds."""
    states = states_with_key(5, key=(KEY, KEY + 1))
    proposal = EditProposal(context_tokens, weights, min_len=3, max_len=5)
    for x in states:
        expected = brute_force_kernel(x, context_tokens, weights, 3, 5)
        got = proposal.support(x)
        assert set(got) == set(expected), x
        for y, q in expected.items():
            assert math.isclose(got[y], q, rel_tol=1e-12, abs_tol=1e-15), (x, y)


@pytest.mark.parametrize("weights", [{"replace": 1, "insert": 1, "delete": 1},
                                     {"replace": 0.6, "insert": 0.3, "delete": 0.1}])
def test_mh_kernel_leaves_the_target_stationary_exactly(weights):
    states = states_with_key(5, key=(KEY, KEY + 1))  # a 2-token keyword, lengths 2..5
    table = random_table(states, seed=1)
    target = TableTarget(table)
    proposal = EditProposal(context_tokens, weights, min_len=2, max_len=5)
    P = transition_matrix(target, proposal.support, states)
    assert np.all(P >= -1e-15) and np.allclose(P.sum(1), 1.0)
    pi = np.array([table[s.tokens] for s in states])
    pi /= pi.sum()
    assert np.max(np.abs(pi @ P - pi)) <= 1e-12
    # and the kernel is irreducible here: every state reachable (a power of P is positive)
    reach = np.linalg.matrix_power((P > 0).astype(float) + np.eye(len(P)), len(P))
    assert np.all(reach > 0)


def test_locked_span_is_never_split_or_touched():
    x = State((0, 5, 6, 1), (0, 2, 2, 0))
    assert x.gaps() == [0, 1, 3, 4]
    proposal = EditProposal(uniform_tokens([0, 1], 7), max_len=6)
    for y in proposal.support(x):
        assert (5, 6) == tuple(t for t, s in zip(y.tokens, y.spans, strict=True) if s == 2)


def test_proposal_draws_match_their_reported_probabilities():
    x = State((0, 0, KEY, 1), (0, 0, 1, 0))  # a run of equal tokens: several ways to one state
    proposal = EditProposal(context_tokens, {"replace": 1, "insert": 1, "delete": 1}, max_len=6)
    support = proposal.support(x)
    assert math.isclose(sum(support.values()), 1.0, rel_tol=1e-12)
    rng = np.random.default_rng(0)
    n = 15_000
    counts: dict[State, int] = {}
    for _ in range(n):
        p = proposal.propose(x, rng)
        counts[p.state] = counts.get(p.state, 0) + 1
        if p.state != x:
            assert math.isclose(p.log_forward, math.log(support[p.state]), rel_tol=1e-12)
            assert math.isclose(p.log_reverse, proposal.log_prob(p.state, x), rel_tol=1e-12)
    # each frequency within 5 standard errors (fixed seed)
    for y, q in support.items():
        assert abs(counts.get(y, 0) / n - q) <= 5 * math.sqrt(q * (1 - q) / n) + 1e-12


def tv(p: dict, q: dict) -> float:
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys)


def test_mh_chain_reaches_the_target_in_total_variation():
    states = states_with_key(3)  # 39 states, lengths 1..3
    table = random_table(states, seed=2, shape=8.0)
    z = sum(table.values())
    exact = {k: v / z for k, v in table.items()}
    proposal = EditProposal(context_tokens, max_len=3)
    result = metropolis_hastings(TableTarget(table), proposal, State((KEY,), (1,)), 60_000,
                                 seed=0, thin=1)
    counts: dict[tuple, float] = {}
    for s in result.samples[2000:]:
        counts[s.tokens] = counts.get(s.tokens, 0) + 1
    total = sum(counts.values())
    assert tv({k: c / total for k, c in counts.items()}, exact) <= 0.05  # declared tolerance
    acc = result.acceptance()
    assert set(acc) == {"replace", "insert", "delete"} and all(0 < a <= 1 for a in acc.values())


def test_cgmh_mode_runs_and_is_not_the_exact_sampler():
    states = states_with_key(3)
    table = random_table(states, seed=2)
    z = sum(table.values())
    exact = {k: v / z for k, v in table.items()}
    proposal = EditProposal(context_tokens, max_len=3)
    result = metropolis_hastings(TableTarget(table), proposal, State((KEY,), (1,)), 30_000,
                                 seed=0, thin=1, mode="cgmh", top_k=3)
    counts: dict[tuple, float] = {}
    for s in result.samples[2000:]:
        counts[s.tokens] = counts.get(s.tokens, 0) + 1
    total = sum(counts.values())
    assert all(s.tokens in table for s in result.samples)  # the keyword stays
    assert tv({k: c / total for k, c in counts.items()}, exact) > 0.05  # biased, as documented


def test_gibbs_with_exact_conditionals_reaches_the_joint():
    rng = np.random.default_rng(3)
    table = {x: float(w) for x, w in zip(itertools.product(range(3), repeat=3),
                                         rng.gamma(1.0, size=27), strict=True)}
    z = sum(table.values())
    result = gibbs(TableTarget(table), State((0, 0, 0)), 20_000, candidates=[0, 1, 2], seed=1,
                   thin=1)
    counts: dict[tuple, float] = {}
    for s in result.samples[500:]:
        counts[s.tokens] = counts.get(s.tokens, 0) + 1
    total = sum(counts.values())
    assert tv({k: c / total for k, c in counts.items()}, {k: v / z for k, v in table.items()}) \
        <= 0.03


@pytest.mark.parametrize("schedule", [linear_cooling(2.0, 0.02, 3000),
                                      exponential_cooling(2.0, 0.998),
                                      logarithmic_cooling(4.0)])
def test_annealing_finds_the_argmax(schedule):
    states = states_with_key(4)
    table = random_table(states, seed=4)
    best = max(table, key=table.get)
    proposal = EditProposal(context_tokens, max_len=4)
    result = simulated_annealing(TableTarget(table), proposal, State((KEY,), (1,)), 3000,
                                 schedule, seed=0)
    assert result.best.tokens == best
    assert math.isclose(result.best_log_prob, math.log(table[best]))


def _uniform_sequences(max_len):
    seqs = [s for n in range(1, max_len + 1) for s in itertools.product(range(3), repeat=n)]
    log_q = -math.log(len(seqs))

    def sample(rng):
        return seqs[rng.integers(len(seqs))]

    return seqs, sample, lambda batch: np.full(len(batch), log_q)


def test_rejection_sampling_is_exact_and_reports_acceptance():
    seqs, sample, log_q = _uniform_sequences(3)
    rng = np.random.default_rng(5)
    table = {s: float(w) for s, w in zip(seqs, rng.uniform(0.1, 1.0, len(seqs)), strict=True)}
    m = max(table.values()) * len(seqs)
    result = rejection_sampling(TableTarget(table), sample, log_q, math.log(m), 20_000, seed=0)
    z = sum(table.values())
    counts: dict[tuple, float] = {}
    for s in result.samples:
        counts[s] = counts.get(s, 0) + 1
    assert tv({k: c / 20_000 for k, c in counts.items()}, {k: v / z for k, v in table.items()}) \
        <= 0.03
    # acceptance rate Z / M within 5 standard errors
    expected = z / m
    assert abs(result.acceptance - expected) <= 5 * math.sqrt(expected / result.proposed)


def test_rejection_sampling_refuses_a_bound_that_is_not_one():
    seqs, sample, log_q = _uniform_sequences(2)
    target = TableTarget(dict.fromkeys(seqs, 1.0))
    with pytest.raises(ValueError, match="log_bound"):
        rejection_sampling(target, sample, log_q, 0.0, 10, seed=0)


def test_importance_sampling_estimates_the_normaliser():
    seqs, sample, log_q = _uniform_sequences(2)
    rng = np.random.default_rng(6)
    table = {s: float(w) for s, w in zip(seqs, rng.uniform(0.1, 2.0, len(seqs)), strict=True)}
    result = importance_sampling(TableTarget(table), sample, log_q, 50_000, seed=0)
    z = sum(table.values())
    assert abs(math.exp(result.log_normaliser) / z - 1) <= 0.02
    assert 0 < result.ess <= 50_000 and math.isclose(result.weights.sum(), 1.0)


def test_bad_inputs_are_named():
    proposal = EditProposal(uniform_tokens([0, 1], 2), max_len=3)
    target = TableTarget({(0,): 1.0})
    with pytest.raises(ValueError, match="positive target probability"):
        metropolis_hastings(target, proposal, State((1,)), 10)
    with pytest.raises(ValueError, match="length"):
        metropolis_hastings(target, proposal, State((0, 0, 0, 0)), 10)
    with pytest.raises(ValueError, match="weights"):
        EditProposal(uniform_tokens([0], 1), {"swap": 1.0})
    with pytest.raises(ValueError, match="candidates"):
        uniform_tokens([], 3)
    with pytest.raises(ValueError, match="mode"):
        metropolis_hastings(target, proposal, State((0,)), 1, mode="fast")
    with pytest.raises(ValueError, match="spans"):
        State((0, 1), (0,))


def test_gibbs_uses_a_conditional_in_the_callers_candidate_order():
    """A conditional putting all mass on the first candidate given: unsorted ids must not be
    reordered under it; duplicated ids and all −inf scores are refused."""
    target = TableTarget({(a,): 1.0 for a in range(3)})
    peak = lambda state, i: np.array([0.0, -np.inf, -np.inf])  # noqa: E731
    result = gibbs(target, State((0,)), 3, [2, 0, 1], seed=0, conditional=peak)
    assert result.state.tokens == (2,)
    with pytest.raises(ValueError, match="distinct"):
        gibbs(target, State((0,)), 1, [0, 0, 1], seed=0)
    with pytest.raises(ValueError, match="at least one finite"):
        gibbs(target, State((0,)), 1, [0, 1, 2], seed=0,
              conditional=lambda state, i: np.full(3, -np.inf))
    with pytest.raises(ValueError, match="batch"):
        rejection_sampling(target, lambda rng: (0,), lambda b: np.zeros(len(b)), 0.0, 1,
                           batch=0)


# --- many chains as one batch ---------------------------------------------------------------

def _exact_setting(seed=2, shape=8.0):
    """39 states (lengths 1..3 around a locked keyword), a random π, the enumerated MH kernel
    P built from the brute-force proposal (independent of EditProposal) and its proposal."""
    states = states_with_key(3)
    table = random_table(states, seed=seed, shape=shape)
    target = TableTarget(table)
    weights = {"replace": 0.5, "insert": 0.3, "delete": 0.2}
    P = transition_matrix(target, lambda x: brute_force_kernel(x, context_tokens, weights, 1, 3),
                          states)
    pi = np.array([table[s.tokens] for s in states])
    return states, target, EditProposal(context_tokens, weights, min_len=1, max_len=3), P, \
        pi / pi.sum()


def _frequencies(final, states):
    index = {s: i for i, s in enumerate(states)}
    counts = np.zeros(len(states))
    for s in final:
        counts[index[s]] += 1
    return counts / len(final)


def _within(freq, p, n, sigmas=5.0):
    """Every frequency within ``sigmas`` binomial standard errors of p (plus 1/n for p = 0)."""
    return np.all(np.abs(freq - p) <= sigmas * np.sqrt(p * (1 - p) / n) + 1.0 / n)


def test_batched_chains_have_the_exact_distribution_after_t_steps():
    """2000 chains from one start, 4 steps: the states are draws of e_x0 P^4, P enumerated."""
    states, target, proposal, P, _ = _exact_setting()
    x0 = State((0, KEY), (0, 1))
    run = metropolis_hastings(target, proposal, x0, 4, chains=2000, seed=0)
    assert isinstance(run, MCMCChains) and run.log_probs.shape == (2000, 4)
    exact = np.linalg.matrix_power(P, 4)[states.index(x0)]
    freq = _frequencies(run.states, states)
    assert _within(freq, exact, 2000)
    assert 0.5 * np.abs(freq - exact).sum() <= 0.08  # declared tolerance, TV


def test_batched_chains_started_from_the_target_stay_there():
    """Stationarity: 2000 chains started from exact draws of π are still π after 5 steps."""
    states, target, proposal, _, pi = _exact_setting()
    rng = np.random.default_rng(1)
    starts = [states[i] for i in rng.choice(len(states), 2000, p=pi)]
    run = metropolis_hastings(target, proposal, starts, 5, chains=2000, seed=1)
    assert _within(_frequencies(run.states, states), pi, 2000)


@pytest.mark.parametrize("x0", [State((1, 1, KEY), (0, 0, 1)),  # a run, at max_len
                                State((KEY,), (1,)),  # only the keyword: min_len
                                State((2, KEY), (0, 1))])
def test_every_batched_transition_row_is_the_enumerated_kernel(x0):
    """One step of 4000 chains from x0: the frequencies are row x0 of P (enumerated from the
    brute-force proposal), and every reported q(x'|x), q(x|x') is the kernel's log_prob."""
    states, target, proposal, P, _ = _exact_setting()
    uniforms = np.random.default_rng(2).random((4000, 3))
    props = proposal.propose_batch([x0] * 4000, uniforms)
    for prop in props[:400]:
        if prop.state != x0:
            assert math.isclose(prop.log_forward, proposal.log_prob(x0, prop.state),
                                rel_tol=1e-12)
            assert math.isclose(prop.log_reverse, proposal.log_prob(prop.state, x0),
                                rel_tol=1e-12, abs_tol=1e-300) or \
                prop.log_reverse == proposal.log_prob(prop.state, x0) == -math.inf
    run = metropolis_hastings(target, proposal, x0, 1, chains=4000, seed=3)
    assert _within(_frequencies(run.states, states), P[states.index(x0)], 4000)


@pytest.mark.parametrize("mode", ["exact", "cgmh"])
def test_chain_k_of_a_batch_is_the_single_chain_on_its_generator(mode):
    """Per-chain reproducibility: chain k of a batch equals a single chain run on chain k's
    generator, whatever the batch size, and chain 0 equals the single chain of the same seed."""
    states, target, proposal, _, _ = _exact_setting()
    x0 = State((0, KEY), (0, 1))
    batch = metropolis_hastings(target, proposal, x0, 150, chains=5, seed=7, mode=mode, top_k=2)
    wider = metropolis_hastings(target, proposal, x0, 150, chains=8, seed=7, mode=mode, top_k=2)
    for k, rng in enumerate(chain_generators(7, 5)):
        single = metropolis_hastings(target, proposal, x0, 150, seed=rng, mode=mode, top_k=2)
        np.testing.assert_array_equal(single.log_probs, batch.log_probs[k])
        np.testing.assert_array_equal(wider.log_probs[k], batch.log_probs[k])
        assert single.state == batch.states[k] and single.proposed == batch.chain(k).proposed
    same_seed = metropolis_hastings(target, proposal, x0, 150, seed=7, mode=mode, top_k=2)
    np.testing.assert_array_equal(same_seed.log_probs, batch.log_probs[0])


def test_the_rhat_stop_ends_mixed_chains_early():
    states, target, proposal, _, _ = _exact_setting()
    run = metropolis_hastings(target, proposal, State((KEY,), (1,)), 20_000, chains=8, seed=0,
                              stop_rhat=1.05, check_every=100)
    assert run.steps < 20_000 and run.steps % 100 == 0 and run.log_probs.shape == (8, run.steps)
    assert run.rhat() < 1.05  # the window of the last check: the last half
    assert 0 < run.ess() <= 8 * run.steps
    full = metropolis_hastings(target, proposal, State((KEY,), (1,)), run.steps, chains=8,
                               seed=0)
    np.testing.assert_array_equal(full.log_probs, run.log_probs)  # stopping changes nothing else


def test_annealed_chains_report_best_energies_and_refuse_rhat():
    states = states_with_key(4)
    table = random_table(states, seed=4)
    best = max(table, key=table.get)
    target = TableTarget(table)
    proposal = EditProposal(context_tokens, max_len=4)
    x0 = State((KEY,), (1,))
    run = simulated_annealing(target, proposal, x0, 3000, exponential_cooling(2.0, 0.998),
                              chains=4, seed=0)
    assert all(b.tokens == best for b in run.best)
    start = -target.log_prob([x0.tokens])[0]
    expected = np.minimum.accumulate(np.minimum(-run.log_probs, start), axis=1)
    np.testing.assert_array_equal(run.best_energies, expected)  # the running best, by hand
    with pytest.raises(ValueError, match="annealed"):
        run.rhat()
    with pytest.raises(ValueError, match="annealed"):
        run.ess()


def test_batched_bad_inputs_are_named():
    proposal = EditProposal(uniform_tokens([0, 1], 2), max_len=3)
    target = TableTarget({(0,): 1.0, (1,): 1.0})
    with pytest.raises(ValueError, match=r"x0\[1\] must have positive target probability"):
        metropolis_hastings(target, proposal, [State((0,)), State((0, 0))], 3, chains=2)
    with pytest.raises(ValueError, match="chains=2"):
        metropolis_hastings(target, proposal, [State((0,)), State((1,))], 3, chains=3)
    with pytest.raises(ValueError, match="chains"):
        metropolis_hastings(target, proposal, State((0,)), 3, chains=0)
    with pytest.raises(ValueError, match="stop_rhat"):
        metropolis_hastings(target, proposal, State((0,)), 3, chains=2, stop_rhat=1.0)
    with pytest.raises(ValueError, match="check_every"):
        metropolis_hastings(target, proposal, State((0,)), 3, chains=2, check_every=0)
    with pytest.raises(ValueError, match="uniforms"):
        proposal.propose_batch([State((0,))], np.zeros((1, 2)))


def test_the_public_names_of_the_sampling_api_still_import():
    """Every name the sampling and constrained modules exported before batching still imports
    from its old place (and the package re-exports stay)."""
    import kexue.text as text
    import kexue.text.constrained as constrained
    import kexue.text.sampling as sampling

    for name in ("EditProposal", "ImportanceResult", "MCMCResult", "RejectionResult", "State",
                 "Target", "TokenProposal", "exponential_cooling", "gibbs",
                 "importance_sampling", "linear_cooling", "logarithmic_cooling",
                 "metropolis_hastings", "rejection_sampling", "simulated_annealing",
                 "uniform_tokens"):
        assert name in sampling.__all__ and hasattr(sampling, name), name
    for name in ("Generation", "TextTarget", "TokenSpace", "compress", "correct", "default_lm",
                 "fluency", "generate", "hard_keywords", "keyword_multiplicity",
                 "keywords_to_sentence", "length_prior", "lm_tokens", "paraphrase",
                 "placements", "repetition_penalty", "similarity", "soft_keywords"):
        assert name in constrained.__all__ and hasattr(constrained, name), name
    for name in ("EditProposal", "State", "gibbs", "metropolis_hastings", "simulated_annealing",
                 "keywords_to_sentence", "TextTarget"):
        assert hasattr(text, name), name


# --- the word-boundary term (issue 18): π(x) ∝ w(x)·β(x), β = 0 where jieba breaks 节日 --------

CHARS = ("春", "的", "假", "节", "日")  # token t spells CHARS[t]; 3 4 is the locked keyword 节日


def _spell(tokens) -> str:
    return "".join(CHARS[t] for t in tokens)


class BoundaryTarget:
    """A random table over states times the keyword-boundary term of the decoded text."""

    def __init__(self, table: dict[tuple[int, ...], float]) -> None:
        self.table, self.term = table, keyword_boundaries(["节日"])

    def log_prob(self, batch):
        return np.log([self.table[tuple(x)] for x in batch]) + \
            self.term([_spell(x) for x in batch])


def _boundary_setting():
    states = states_with_key(5, key=(KEY, KEY + 1))  # 142 states, lengths 2..5
    table = random_table(states, seed=5, shape=4.0)
    weights = {"replace": 0.5, "insert": 0.3, "delete": 0.2}
    target = BoundaryTarget(table)
    P = transition_matrix(target, lambda x: brute_force_kernel(x, context_tokens, weights, 2, 5),
                          states)
    pi = np.array([table[x.tokens] * _intact_by_hand(_spell(x.tokens)) for x in states])
    return states, target, EditProposal(context_tokens, weights, min_len=2, max_len=5), P, \
        pi / pi.sum()


def _intact_by_hand(text: str) -> float:
    """β from the definition, on jieba's tokens: 1 if no token crosses an edge of 节日 (the
    only 节 of the text: the free tokens spell 春 的 假)."""
    a, cuts, pos = text.index("节日"), [], 0
    for tok in segmenter("jieba")(text):
        cuts.append((pos, pos + len(tok)))
        pos += len(tok)
    assert pos == len(text)
    return float(not any(s < edge < e for s, e in cuts for edge in (a, a + 2)))


def test_the_word_boundary_term_keeps_the_mh_kernel_exact():
    """The term excludes 春节日 and its extensions (jieba: 春节|日), and the enumerated kernel
    (brute-force proposal, MH acceptance) leaves π ∝ w·β exactly stationary; it never enters an
    excluded state, and it is irreducible on the rest."""
    states, target, _, P, pi = _boundary_setting()
    excluded = {_spell(x.tokens) for x, p in zip(states, pi, strict=True) if p == 0}
    assert {"春节日", "春节日的", "假春节日", "春春节日春"} <= excluded
    assert all("春节日" in t for t in excluded) and len(excluded) == 34
    assert np.all(P >= -1e-15) and np.allclose(P.sum(1), 1.0)
    assert np.max(np.abs(pi @ P - pi)) <= 1e-12
    live = pi > 0
    assert np.all(P[np.ix_(live, ~live)] == 0.0)
    reach = np.linalg.matrix_power((P[np.ix_(live, live)] > 0) + np.eye(live.sum()),
                                   int(live.sum()))
    assert np.all(reach > 0)


def test_chains_on_the_word_boundary_target_follow_the_enumerated_kernel():
    """2000 chains from 节日, 4 steps of the real sampler: the states are draws of
    e_x0 P^4, P enumerated (declared tolerance: 5 binomial SEs per state, TV <= 0.08)."""
    states, target, proposal, P, _ = _boundary_setting()
    x0 = State((KEY, KEY + 1), (1, 1))
    run = metropolis_hastings(target, proposal, x0, 4, chains=2000, seed=4)
    exact = np.linalg.matrix_power(P, 4)[states.index(x0)]
    freq = _frequencies(run.states, states)
    assert all("春节日" not in _spell(x.tokens) for x in run.states)
    assert _within(freq, exact, 2000)
    assert 0.5 * np.abs(freq - exact).sum() <= 0.08
