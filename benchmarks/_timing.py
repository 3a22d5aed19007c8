"""The one way kexue benchmarks time code and record results.

    measure(fn)                      -> {"median_s", "iqr_s", "min_s", "runs", "number"}
    measure_interleaved({name: fn})  -> {name: {...the same...}}
    run_jobs(fn, *iterables, jobs=2) -> map in separate processes (long benchmark runs)
    write_results(topic, rows)       -> results/<topic>.json and results/<topic>.md

A *run* is ``number`` back-to-back calls of ``fn``, timed with ``time.perf_counter`` (after
``torch.cuda.synchronize`` when CUDA is in use) and divided by ``number``; ``number`` is chosen
so that a run lasts at least ``min_time``. Figures are medians over ``repeats`` runs after
``warmup`` calls. :func:`measure_interleaved` runs the candidates in rounds (one run of each
per round, in rotating order), so a burst of load from other processes on shared cores hits
every candidate alike.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from kexue._env import environment

RESULTS = Path(__file__).resolve().parent / "results"
if "--quick" in sys.argv[1:]:  # quick runs never overwrite the committed full results
    RESULTS = RESULTS / "quick"


def parser(description: str) -> argparse.ArgumentParser:
    """The flags every ``bench_<topic>.py`` takes: ``--quick``, ``--device``, ``--threads``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="fewer repeats and smaller cases")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1, for stable CPU figures)")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads`` and check ``--device``; returns the device to benchmark on."""
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but torch.cuda.is_available() is False")
    return torch.device(args.device)


def run_jobs(fn: Callable[..., Any], *iterables: Iterable[Any], jobs: int = 1,
             threads: int = 1) -> list[Any]:
    """``list(map(fn, *iterables))``, in ``jobs`` processes (each with ``threads`` torch threads)
    when ``jobs`` > 1; results keep the input order."""
    if jobs == 1:
        return list(map(fn, *iterables))
    with ProcessPoolExecutor(jobs, initializer=torch.set_num_threads,
                             initargs=(threads,)) as pool:
        return list(pool.map(fn, *iterables))


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _run(fn: Callable[[], Any], number: int) -> float:
    """Seconds per call over ``number`` calls."""
    _sync()
    start = time.perf_counter()
    for _ in range(number):
        fn()
    _sync()
    return (time.perf_counter() - start) / number


def _summary(runs: list[float]) -> dict[str, Any]:
    q1, _, q3 = statistics.quantiles(runs, n=4) if len(runs) > 1 else (runs[0],) * 3
    return {"median_s": statistics.median(runs), "iqr_s": q3 - q1, "min_s": min(runs),
            "runs": runs}


def measure_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    *,
    warmup: int = 3,
    repeats: int = 15,
    min_time: float = 0.02,
) -> dict[str, dict[str, Any]]:
    """Time several callables in alternating rounds.

    Args:
        fns: name -> zero-argument callable.
        warmup: untimed calls of each callable before timing.
        repeats: timed runs (rounds) of each callable.
        min_time: shortest duration of one run in seconds; fast callables are called
            ``number`` times per run to reach it (``number`` fixed per callable after warm-up).

    Returns:
        name -> ``{"median_s", "iqr_s", "min_s", "runs", "number"}``, seconds per call.
    """
    if repeats < 1 or warmup < 0 or min_time < 0:
        raise ValueError(f"need repeats >= 1, warmup >= 0, min_time >= 0; got "
                         f"{repeats}, {warmup}, {min_time}")
    names = list(fns)
    number = {}
    for name in names:
        for _ in range(warmup):
            fns[name]()
        once = _run(fns[name], 1)
        number[name] = max(1, int(min_time / max(once, 1e-9)))
    runs: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            runs[name].append(_run(fns[name], number[name]))
    return {name: {**_summary(runs[name]), "number": number[name]} for name in names}


def measure(
    fn: Callable[[], Any], *, warmup: int = 3, repeats: int = 15, min_time: float = 0.02
) -> dict[str, Any]:
    """Median, interquartile range and minimum of the seconds per call of ``fn``."""
    return measure_interleaved({"fn": fn}, warmup=warmup, repeats=repeats, min_time=min_time)["fn"]


def _fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} µs"


def model_label(model: torch.nn.Module) -> str:
    """``"48.1M params, 420 tensors"``: the size of a benchmark's model, for its case column."""
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    size = f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"
    return f"{size} params, {len(params)} tensors"


def table_rows(benchmark: str, case: str, timings: Mapping[str, Mapping[str, Any]],
               **extra: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per timed candidate; ``extra[name]`` adds baseline/target/note to that row."""
    return [{"benchmark": benchmark, "case": case, "impl": name, **extra.get(name, {}), **t}
            for name, t in timings.items()]


def run_cases(
    topic: str, cases: Sequence[tuple[Callable[..., list[dict[str, Any]]], tuple[Any, ...]]],
    device: torch.device, timing: Mapping[str, Any], notes: Sequence[str] = (),
) -> Path:
    """Run each ``bench(device, *case, timing)`` in turn (garbage-collected in between, its
    time on stderr) and write the rows as ``<topic>`` (``<topic>-<device>`` off the CPU);
    prints and returns the Markdown."""
    import gc

    rows: list[dict[str, Any]] = []
    for bench, case in cases:
        start = time.perf_counter()
        rows += bench(device, *case, timing)
        gc.collect()
        print(f"{bench.__name__}{case}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    name = topic if device.type == "cpu" else f"{topic}-{device.type}"
    md = write_results(name, rows, device=device, notes=notes)
    print(md.read_text(encoding="utf-8"))
    return md


def write_results(
    topic: str, rows: Sequence[Mapping[str, Any]], *, device: torch.device | str | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """Write ``results/<topic>.json`` and ``results/<topic>.md``; returns the Markdown path.

    Each row needs ``benchmark``, ``case``, ``impl`` and the fields of :func:`measure`. A row
    with ``baseline`` (the ``impl`` of another row of the same benchmark and case) gets
    ``ratio``: the median over rounds of (its run / the baseline's run in the same round) when
    both were timed in the same :func:`measure_interleaved` call, so that slow drifts of load
    cancel, with ``ratio_iqr``; ``ratio_of_medians`` too. Optional: ``target_ratio`` (largest
    acceptable ratio) or ``target_s`` (largest acceptable median), which set ``met``; ``note``.
    A row without ``median_s`` records something that could not be measured, with its ``note``.
    """
    rows = [dict(r) for r in rows]
    medians = {(r["benchmark"], r["case"], r["impl"]): r["median_s"] for r in rows
               if "median_s" in r}
    runs = {(r["benchmark"], r["case"], r["impl"]): r["runs"] for r in rows if "runs" in r}
    for r in rows:
        base = r.get("baseline")
        if base is None or "median_s" not in r:
            continue
        key = (r["benchmark"], r["case"], base)
        if key not in medians:
            raise ValueError(f"row {r['impl']!r} names baseline {base!r}, which was not measured "
                             f"in {r['benchmark']!r} / {r['case']!r}")
        base_runs = runs[key]
        if len(base_runs) == len(r["runs"]):  # interleaved rounds: pair run i with run i
            paired = _summary([a / b for a, b in zip(r["runs"], base_runs, strict=True)])
            r["ratio"], r["ratio_iqr"] = paired["median_s"], paired["iqr_s"]
        else:
            r["ratio"], r["ratio_iqr"] = r["median_s"] / medians[key], None
        r["ratio_of_medians"] = r["median_s"] / medians[key]
        if "target_ratio" in r:
            r["met"] = r["ratio"] <= r["target_ratio"]
    for r in rows:
        if "target_s" in r and "median_s" in r:
            r["met"] = r["median_s"] <= r["target_s"]
    header = {"topic": topic,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              **environment(device)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{topic}.json").write_text(
        json.dumps({"environment": header, "notes": list(notes), "rows": rows}, indent=1) + "\n",
        encoding="utf-8")
    md = RESULTS / f"{topic}.md"
    md.write_text(_markdown(header, rows, notes), encoding="utf-8")
    return md


def _markdown(header: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
              notes: Sequence[str]) -> str:
    baselines = {(r["benchmark"], r["case"], r["baseline"]) for r in rows if r.get("baseline")}
    lines = [f"# Benchmark: {header['topic']}", "",
             " · ".join(f"{k}: `{v}`" for k, v in header.items() if k != "topic"), "",
             "Seconds per call: median over the timed runs after warm-up (runs × calls per "
             "run), interquartile range (IQR) and fastest run (min). Candidates of one case run "
             "in the same process, interleaved in rounds; ratio = median over rounds of (run / "
             "the baseline's run in the same round), with its IQR. Lower is faster.", ""]
    lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    lines += ["| benchmark | case | implementation | median | IQR | min | runs | ratio | target |",
              "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        head = f"| {r['benchmark']} | {r['case']} | {r['impl']} |"
        if "median_s" not in r:
            lines.append(f"{head} — | — | — | — | — | not measured: {r.get('note', '')} |")
            continue
        if "ratio" in r:
            spread = f" (IQR {r['ratio_iqr']:.2g})" if r.get("ratio_iqr") is not None else ""
            value = f"{r['ratio']:.2f}" if r["ratio"] >= 0.1 else f"{r['ratio']:.2g}"
            ratio = f"{value}×{spread} vs {r['baseline']}"
        elif (r["benchmark"], r["case"], r["impl"]) in baselines:
            ratio = "baseline"
        else:
            ratio = "—"
        target = ""
        if "target_ratio" in r:
            target = f"≤ {r['target_ratio']:.2f}×"
        elif "target_s" in r:
            target = f"≤ {_fmt_time(r['target_s'])}"
        if "met" in r:
            target += " met" if r["met"] else " **missed**"
            if not r["met"] and "target_ratio" in r and r.get("ratio_iqr") and \
                    r["ratio"] - r["target_ratio"] < r["ratio_iqr"] / 2:
                target += " (by less than half the ratio's IQR)"
        lines.append(f"{head} {_fmt_time(r['median_s'])} | {_fmt_time(r['iqr_s'])} | "
                     f"{_fmt_time(r['min_s'])} | {len(r['runs'])}×{r.get('number', 1)} | "
                     f"{ratio} | {target} |")
    return "\n".join(lines) + "\n"


def peer_version(dist: str) -> str:
    """The installed version of the PyPI distribution ``dist``, or "not installed"."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
