"""kexue.estimators: Gumbel-softmax beside torch's, variance tables, direct-metric training, memory.

    python benchmarks/bench_estimators.py [--quick] [--threads N]

Writes results/estimators.json and results/estimators.md (+ PNG figures of b and c).

a. Gumbel-softmax on (4096, 1000) float32 logits, forward+backward, soft and hard: kexue
   ``gumbel_softmax`` against the peer ``torch.nn.functional.gumbel_softmax`` (torch's own),
   interleaved in rounds. Beside the times: how often each returns a non-finite value at small
   temperatures (1e-4, 1e-6 and 0) over 100 draws; kexue refuses τ = 0 with a ValueError.
b. Gradient variance per estimator on the problems of ``kexue run estimator_variance`` with
   its FULL configuration (40,000 replicates): variance and bias z-score against the exact
   gradient, offsets c = 0 and 100.
c. Direct-metric training: ``kexue run direct_metric`` FULL (10 stratified splits, 40 epochs):
   test F1 of cross-entropy, cross-entropy with a tuned threshold, policy gradient and
   zeroth-order on the metric.
d. Memory and time of one training step of an 8-layer MLP (8 × Linear(2048, 2048), 33.6M
   float32 parameters, batch 64): backprop + SGD, backprop + Adam, and ``SeedZO`` (one
   direction, seed replay), the peak resident-set growth of the step (``rss_growth``: the
   parameters themselves excluded; Adam's state allocated by a first step beforehand, the
   gradients freed before; glibc's mmap threshold fixed at 128 kB so that freed tensors leave
   the resident set, which costs the timed steps a page fault per fresh allocation).
"""

from __future__ import annotations

import ctypes
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import RESULTS, measure_interleaved, parser, setup, write_results  # noqa: E402

from kexue.estimators import SeedZO, gumbel_softmax  # noqa: E402
from kexue.experiments import EXPERIMENTS, run_experiment  # noqa: E402
from kexue.experiments._common import rss_growth  # noqa: E402

Row = dict[str, Any]
MB = 1e6


def gumbel_rows(quick: bool) -> tuple[list[Row], list[str]]:
    """(a) kexue vs torch Gumbel-softmax, forward+backward; non-finite counts at small τ."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4096, 1000, generator=gen, requires_grad=True)
    weights = torch.randn(4096, 1000, generator=gen)  # a fixed downstream linear loss

    def step(fn: Any, **kw: Any) -> Any:
        def call() -> None:
            logits.grad = None
            (fn(logits, **kw) * weights).sum().backward()

        return call

    rows: list[Row] = []
    for hard in (False, True):
        fns = {"torch F.gumbel_softmax": step(F.gumbel_softmax, tau=0.5, hard=hard),
               "kexue gumbel_softmax": step(gumbel_softmax, tau=0.5, hard=hard)}
        timing = measure_interleaved(fns, warmup=2, repeats=5 if quick else 15, min_time=0.05)
        bench = "Gumbel-softmax (4096, 1000) forward+backward"
        for impl, t in timing.items():
            row = {"benchmark": bench, "case": f"hard={hard}", "impl": impl, **t}
            if impl.startswith("kexue"):
                row["baseline"] = "torch F.gumbel_softmax"
            rows.append(row)

    notes = []
    small = logits.detach()[:64]
    for tau in (1e-4, 1e-6, 0.0):
        theirs = sum(not torch.isfinite(F.gumbel_softmax(small, tau=tau)).all().item()
                     for _ in range(100))
        try:
            ours = sum(not torch.isfinite(gumbel_softmax(small, tau)).all().item()
                       for _ in range(100))
            ours_note = f"{ours}/100 non-finite"
        except ValueError as e:
            ours_note = f"ValueError ({str(e).split(';')[0]})"
        notes.append(f"τ = {tau:g}: torch F.gumbel_softmax {theirs}/100 draws non-finite; "
                     f"kexue gumbel_softmax {ours_note}")
    return rows, notes


class MLP(nn.Module):
    def __init__(self, width: int = 2048, depth: int = 8) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.head(x)


def memory_rows(quick: bool) -> tuple[list[Row], list[str]]:
    """(d) one training step: backprop + SGD / Adam against SeedZO; time and peak memory."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 2048, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    models = {name: MLP() for name in ("backprop + SGD", "backprop + Adam", "kexue SeedZO")}
    params = sum(p.numel() for p in models["kexue SeedZO"].parameters())
    opts = {"backprop + SGD": torch.optim.SGD(models["backprop + SGD"].parameters(), lr=1e-4),
            "backprop + Adam": torch.optim.Adam(models["backprop + Adam"].parameters(), lr=1e-6),
            "kexue SeedZO": SeedZO(models["kexue SeedZO"].parameters(), lr=1e-6, eps=1e-3)}

    def step(name: str) -> Any:
        model, opt = models[name], opts[name]
        if name == "kexue SeedZO":
            def closure() -> torch.Tensor:
                return F.cross_entropy(model(x), y)

            return lambda: opt.step(closure)

        def backprop() -> None:
            opt.zero_grad(set_to_none=True)  # the gradients' memory counts in the step
            F.cross_entropy(model(x), y).backward()
            opt.step()

        return backprop

    steps = {name: step(name) for name in models}
    for fn in steps.values():
        fn()  # Adam's state, lazy initialisation
    # Every allocation above 128 kB straight from mmap and back to the OS when freed (no
    # dynamic threshold, no heap reuse), so the resident set follows live tensors; and no
    # gradients before the step, so that the gradients a step allocates count.
    ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    peaks = {}
    for name, fn in steps.items():
        opts[name].zero_grad(set_to_none=True)
        peaks[name] = rss_growth(fn)
    timing = measure_interleaved(steps, warmup=1, repeats=3 if quick else 7, min_time=0.0)
    bench = f"one training step, MLP {params / 1e6:.1f}M params, batch 64"
    rows = []
    for name, t in timing.items():
        row = {"benchmark": bench, "case": "float32", "impl": name, **t,
               "peak_mb": None if peaks[name] is None else peaks[name] / MB}
        if name != "backprop + SGD":
            row["baseline"] = "backprop + SGD"
        rows.append(row)
    notes = ["memory of one step (MB, resident-set growth, parameters excluded): "
             + ", ".join(f"{n} {p / MB:.0f}" for n, p in peaks.items() if p is not None)
             + f"; parameters are {params * 4 / MB:.0f} MB"]
    return rows, notes


def experiment_tables(quick: bool) -> tuple[dict[str, Any], list[str]]:
    """(b), (c): the experiments' FULL configurations (QUICK with --quick); tables + figures."""
    out, notes = {}, []
    for name in ("estimator_variance", "direct_metric"):
        result, prov = run_experiment(EXPERIMENTS[name], full=not quick, seed=0)
        for fig_name, fig in result.figures.items():
            fig.savefig(RESULTS / f"estimators_{fig_name}.png", dpi=110)
        out[name] = {"config": dict(prov.config),
                     "tables": [t.to_dict() for t in result.tables],
                     "claim_holds": result.holds, "summary": result.summary,
                     "seconds": prov.seconds}
        notes.append(f"{name} ({'quick' if quick else 'full'}): {result.summary}")
    return out, notes


def _markdown_table(table: dict[str, Any], fmt: str) -> list[str]:
    columns = [c.replace("|", "\\|") for c in table["columns"]]  # "max |z|" in a cell
    lines = ["| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]
    for row in table["rows"]:
        lines.append("| " + " | ".join([str(row[0])] + [format(v, fmt) for v in row[1:]])
                     + " |")
    return lines


def tables_markdown(tables: dict[str, Any]) -> str:
    lines = ["", "## Gradient variance (trace of covariance) and bias |z| against the exact "
             "gradient", ""]
    for table in tables["estimator_variance"]["tables"]:
        lines += [f"**{table['caption']}**", "", *_markdown_table(table, ".4g"), ""]
    lines += ["## Direct-metric training: test F1 over stratified splits", ""]
    for table in tables["direct_metric"]["tables"]:
        lines += [f"**{table['caption']}**", "", *_markdown_table(table, ".3f"), ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    device = setup(args)
    if device.type != "cpu":
        raise SystemExit("bench_estimators.py measures the CPU; --device cuda is not supported")
    started = time.perf_counter()
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows, notes = gumbel_rows(args.quick)
    mem_rows, mem_notes = memory_rows(args.quick)
    tables, table_notes = experiment_tables(args.quick)
    notes = [f"mode: {'--quick' if args.quick else 'full'}, threads "
             f"{torch.get_num_threads()}", *notes, *mem_notes, *table_notes]
    md = write_results("estimators", rows + mem_rows, device=device, notes=notes)
    with md.open("a", encoding="utf-8") as f:
        f.write(tables_markdown(tables))
    data = json.loads((RESULTS / "estimators.json").read_text(encoding="utf-8"))
    data["experiments"] = tables
    data["seconds_total"] = time.perf_counter() - started
    (RESULTS / "estimators.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(md.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
