"""kexue.train.regularizers and kexue.dynamics: cost of a regularised step, recorder overhead.

    python benchmarks/bench_dynamics.py [--quick] [--threads N]

Writes results/dynamics.json and results/dynamics.md. CPU, float32 unless stated, 1 thread.

a. One training step (zero_grad, gradient, SGD step) of an MLP 64-256-256-10 (tanh) on a batch
   of 256 sklearn digits, plain against explicit gradient regularisation λ‖∇L‖² through
   ``regularized_backward`` with each backend: exact double backprop (one backward through the
   graph of the gradient), central finite-difference Hessian-vector product (two extra
   gradients) and the one-extra-gradient approximation. Interleaved in rounds; the ratio to
   the plain step is the figure. Beside it, the peak resident-set growth of one step
   (``rss_growth``; glibc's mmap threshold fixed at 128 kB so freed tensors leave the resident
   set; gradients freed before the step).
b. The same plain step with a ``PathKernelRecorder`` attached (float64 model: the recorder is
   made for exact reconstructions): without training data (it stores θ per step) and with
   the training batch (it also computes per-example data to check attribution).
There is no PyPI peer for these: the baseline is the plain step on the same model.
"""

from __future__ import annotations

import ctypes
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import measure_interleaved, parser, setup, write_results  # noqa: E402

from kexue.dynamics import PathKernelRecorder  # noqa: E402
from kexue.experiments._common import rss_growth  # noqa: E402
from kexue.train.regularizers import BACKENDS, regularized_backward  # noqa: E402

Row = dict[str, Any]
MB = 1e6
LAM = 0.01


def _digits(dtype: torch.dtype, n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x[:n] / 16.0, dtype=dtype), torch.tensor(y[:n])


def _mlp(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(),
                         nn.Linear(256, 10)).to(dtype)


def regularizer_rows(quick: bool) -> tuple[list[Row], list[str]]:
    x, y = _digits(torch.float32)
    steps, opts = {}, {}
    for name in ("plain", *BACKENDS):
        model = _mlp(torch.float32)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        opts[name] = opt

        def closure(model: nn.Module = model) -> torch.Tensor:
            return F.cross_entropy(model(x), y)

        def step(name: str = name, model: nn.Module = model, opt: Any = opt,
                 closure: Any = closure) -> None:
            opt.zero_grad(set_to_none=True)
            if name == "plain":
                closure().backward()
            else:
                regularized_backward(closure, model.parameters(), LAM, backend=name)
            opt.step()

        steps[name] = step
    timing = measure_interleaved(steps, warmup=3, repeats=5 if quick else 15, min_time=0.05)
    ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD: see the docstring
    peaks = {}
    for name, step in steps.items():
        opts[name].zero_grad(set_to_none=True)
        peaks[name] = rss_growth(step)
    bench = "one SGD step, MLP 64-256-256-10, batch 256 digits, float32"
    rows = []
    for name, t in timing.items():
        label = "plain step" if name == "plain" else f"λ‖∇L‖² via {name}"
        row = {"benchmark": bench, "case": f"λ = {LAM}", "impl": label, **t,
               "peak_mb": None if peaks[name] is None else peaks[name] / MB}
        if name != "plain":
            row["baseline"] = "plain step"
        rows.append(row)
    note = "peak memory of one step (MB): " + ", ".join(
        f"{r['impl']} {r['peak_mb']:.2f}" for r in rows if r["peak_mb"] is not None)
    return rows, [note]


def recorder_rows(quick: bool) -> list[Row]:
    x, y = _digits(torch.float64)
    steps, recorders = {}, []
    for name in ("plain", "recorder, no data", "recorder, with data"):
        model = _mlp(torch.float64)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        if name == "recorder, no data":
            recorders.append(PathKernelRecorder(model, opt))
        elif name == "recorder, with data":
            recorders.append(PathKernelRecorder(
                model, opt, lambda out, t: F.cross_entropy(out, t, reduction="none"), x, y))

        def step(model: nn.Module = model, opt: Any = opt) -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

        steps[name] = step
    timing = measure_interleaved(steps, warmup=2, repeats=5 if quick else 15, min_time=0.05)
    for rec in recorders:
        rec.remove()
    bench = "one SGD step with a PathKernelRecorder, MLP 64-256-256-10, batch 256, float64"
    rows = []
    for name, t in timing.items():
        row = {"benchmark": bench, "case": "per step", "impl": name, **t}
        if name != "plain":
            row["baseline"] = "plain"
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    device = setup(args)
    if device.type != "cpu":
        raise SystemExit("bench_dynamics.py measures the CPU; --device cuda is not supported")
    started = time.perf_counter()
    rows, notes = regularizer_rows(args.quick)
    rows += recorder_rows(args.quick)
    params = sum(p.numel() for p in _mlp(torch.float32).parameters())
    notes = [f"mode: {'--quick' if args.quick else 'full'}, threads {torch.get_num_threads()}, "
             f"{params:,} parameters", *notes]
    md = write_results("dynamics", rows, device=device, notes=notes)
    print(md.read_text(encoding="utf-8"))
    print(f"total {time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
