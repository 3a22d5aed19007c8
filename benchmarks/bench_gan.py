"""kexue.generative.gan: cost of a training step per recipe, and sample quality per recipe.

    python benchmarks/bench_gan.py [--quick] [--threads N] [--datasets digits mnist5k]
                                   [--recipes dcgan sngan ...] [--jobs 2]

Writes results/gan.json, results/gan.md and results/gan_samples_<dataset>.png. CPU, 1 thread.

a. One training step (D step + G step + EMA update) of each recipe in ``RECIPES`` on a batch of
   real digits, the networks at one size (width 16, z 32, batch 32), interleaved in rounds;
   the baseline is the DCGAN step (there is no PyPI peer that trains these nets on CPU
   without its own torch).
b. Sample quality: every recipe (the same width, batch 16, each with its paper's loss and
   optimiser settings; ``--recipes`` picks some) trained for a fixed number of epochs with 3
   seeds on each dataset, EMA samples scored by
   :func:`kexue.generative.metrics.score_samples` against the test split (cFD, k-NN
   precision/recall, classifier IS), beside the held-out-real floor. The epochs are the same
   for every recipe, so a recipe with smaller learning rates (TTUR: 1e-4 / 4e-4) or several
   D steps per G step (ResNet WGAN-GP: 5, BigGAN: 2) is judged at an equal number of passes
   over the data, not at convergence. ``--jobs 2`` trains two (recipe, seed) runs at a time
   in separate processes, each with ``--threads`` threads; their seconds then include the
   other run's contention.
"""

from __future__ import annotations

import functools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import (  # noqa: E402
    RESULTS,
    measure_interleaved,
    parser,
    run_jobs,
    setup,
    write_results,
)

from kexue.experiments._common import grid_figure  # noqa: E402
from kexue.generative.data import load_images  # noqa: E402
from kexue.generative.gan import RECIPES, make_trainer  # noqa: E402
from kexue.generative.metrics import fit_classifier, score_samples  # noqa: E402

Row = dict[str, Any]
QUALITY_RECIPES = tuple(RECIPES)
# dataset -> (epochs full, epochs quick)
EPOCHS = {"digits": (30, 10), "mnist5k": (4, 1)}


def step_rows(quick: bool) -> tuple[list[Row], list[str]]:
    data = load_images("digits")
    fns = {}
    for name in RECIPES:
        trainer = make_trainer(name, data, epochs=1, seed=0, z_dim=32, width=16, batch_size=32)
        x, y = data.train_x[:32] * 2 - 1, data.train_y[:32]

        def step(trainer: Any = trainer, x: torch.Tensor = x, y: torch.Tensor = y) -> None:
            trainer.train_step(x, y)

        fns[name] = step
    timing = measure_interleaved(fns, warmup=3, repeats=5 if quick else 15, min_time=0.05)
    case = "digits 8×8, batch 32, width 16"
    rows = [{"benchmark": "train step", "case": case, "impl": name, **t,
             **({"baseline": "dcgan"} if name != "dcgan" else {})}
            for name, t in timing.items()]
    return rows, []


def real_floor(data: Any, clf: Any) -> dict[str, float]:
    """Scores of a random subset of held-out real train images (test-split size).

    Random, not the first rows: a split's train images come in file order, which for mnist5k
    is grouped by class.
    """
    pick = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(0))
    return score_samples(data.train_x[pick[:len(data.test_x)]], data, classifier=clf)


def real_grid(data: Any) -> torch.Tensor:
    """64 random test images (the split keeps file order, which may be grouped by class)."""
    pick = torch.randperm(len(data.test_x), generator=torch.Generator().manual_seed(0))
    return data.test_x[pick[:64]]


@functools.cache
def _data_and_classifier(dataset: str) -> tuple[Any, Any]:
    data = load_images(dataset, seed=0)
    return data, fit_classifier(data, seed=0)


def train_and_score(dataset: str, name: str, seed: int, epochs: int
                    ) -> tuple[dict[str, Any], torch.Tensor]:
    """One (recipe, seed) run: its scores row and its first 64 EMA samples."""
    data, clf = _data_and_classifier(dataset)
    start = time.perf_counter()
    trainer = make_trainer(name, data, epochs=epochs, seed=seed, z_dim=32, width=16,
                           batch_size=16)
    while trainer.epoch < trainer.epochs:
        trainer.fit_epoch()
    samples = trainer.sample(len(data.test_x), torch.Generator().manual_seed(seed))
    row = {"recipe": name, "seed": seed, **score_samples(samples, data, classifier=clf),
           "seconds": time.perf_counter() - start}
    print(f"{dataset} {name} seed {seed}: " + ", ".join(
        f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float)), flush=True)
    return row, samples[:64].clone()  # a copy: not the whole batch's storage


def quality(dataset: str, quick: bool, recipes: list[str], jobs: int,
            threads: int) -> dict[str, Any]:
    data, clf = _data_and_classifier(dataset)
    floor = real_floor(data, clf)
    epochs = EPOCHS[dataset][1 if quick else 0]
    tasks = [(name, seed) for name in recipes for seed in range(3)]
    args = ([dataset] * len(tasks), [n for n, _ in tasks], [s for _, s in tasks],
            [epochs] * len(tasks))
    results = run_jobs(train_and_score, *args, jobs=jobs, threads=threads)
    runs = [row for row, _ in results]
    grids = {row["recipe"]: samples for row, samples in results if row["seed"] == 0}
    grids["real (test)"] = real_grid(data)
    fig = grid_figure(grids, f"{dataset}: EMA samples after {epochs} epochs, seed 0", 3.2)
    fig.savefig(RESULTS / f"gan_samples_{dataset}.png", dpi=100)
    plt.close(fig)
    return {"epochs": epochs, "floor": floor, "classifier_test_accuracy": clf.test_accuracy,
            "runs": runs}


def quality_markdown(tables: dict[str, Any]) -> str:
    lines = []
    for dataset, t in tables.items():
        lines += ["", f"## Sample quality on {dataset}: {t['epochs']} epochs, batch 16, width 16, "
                  f"EMA samples vs the test split", "",
                  f"Feature classifier test accuracy {t['classifier_test_accuracy']:.3f}. "
                  f"Held-out real train images score cFD {t['floor']['cfd']:.3f}, precision "
                  f"{t['floor']['precision']:.3f}, recall {t['floor']['recall']:.3f}, cIS "
                  f"{t['floor']['cis']:.2f}.", "",
                  "| recipe | seed | cFD | precision | recall | cIS | seconds |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in t["runs"]:
            lines.append(f"| {r['recipe']} | {r['seed']} | {r['cfd']:.3f} | "
                         f"{r['precision']:.3f} | {r['recall']:.3f} | {r['cis']:.2f} | "
                         f"{r['seconds']:.1f} |")
        lines += ["", "| recipe | mean cFD | mean precision | mean recall | mean cIS |",
                  "|---|---:|---:|---:|---:|"]
        for name in dict.fromkeys(r["recipe"] for r in t["runs"]):
            rs = [r for r in t["runs"] if r["recipe"] == name]
            means = {k: statistics.fmean(r[k] for r in rs)
                     for k in ("cfd", "precision", "recall", "cis")}
            lines.append(f"| {name} | {means['cfd']:.3f} | {means['precision']:.3f} | "
                         f"{means['recall']:.3f} | {means['cis']:.2f} |")
        lines += ["", f"![samples](gan_samples_{dataset}.png)"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", choices=sorted(EPOCHS), default=None,
                   help="datasets of part b (default: digits with --quick, else both)")
    p.add_argument("--recipes", nargs="+", choices=QUALITY_RECIPES, default=list(QUALITY_RECIPES),
                   help="recipes of part b (default: all)")
    p.add_argument("--jobs", type=int, default=1, choices=[1, 2],
                   help="part b runs at a time, in separate processes")
    args = p.parse_args(argv)
    device = setup(args)
    if device.type != "cpu":
        raise SystemExit("bench_gan.py measures the CPU; --device cuda is not supported")
    datasets = args.datasets or (["digits"] if args.quick else ["digits", "mnist5k"])
    started = time.perf_counter()
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows, notes = step_rows(args.quick)
    notes = [f"mode: {'--quick' if args.quick else 'full'}, threads {torch.get_num_threads()}, "
             f"part b {args.jobs} run(s) at a time", *notes]
    tables: dict[str, Any] = {}
    for dataset in datasets:  # results rewritten after each dataset: a long run leaves a record
        tables[dataset] = quality(dataset, args.quick, args.recipes, args.jobs, args.threads)
        md = write_results("gan", rows, device=device, notes=notes)
        with md.open("a", encoding="utf-8") as f:
            f.write(quality_markdown(tables))
        data = json.loads((RESULTS / "gan.json").read_text(encoding="utf-8"))
        data["quality"] = tables
        data["seconds_total"] = time.perf_counter() - started
        (RESULTS / "gan.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(md.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
