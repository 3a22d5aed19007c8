"""``kexue train gan|glann|nvae``: a generative model on real digits, with an atomic checkpoint
after every epoch, an exclusive lock on the run directory, and exact resume."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from kexue.cli._common import (
    CliError,
    RunFailed,
    Seed,
    Threads,
    check_output_dir,
    choices,
    first_line,
    locked,
    make_dir,
    missing_data,
    out,
    progress,
    set_threads,
)
from kexue.generative.data import IMAGE_DATA
from kexue.generative.gan import RECIPES

GEN_MODELS = ("gan", "glann", "nvae")
Model = choices("Model", GEN_MODELS)
Data = choices("Data", tuple(IMAGE_DATA))
Recipe = choices("Recipe", tuple(RECIPES))
CHECKPOINT = "checkpoint.pt"


def _make_trainer(model: str, data: Any, recipe: str, epochs: int | None, quick: bool,
                  seed: int) -> Any:
    """A trainer of the Trainer contract for MODEL, with the library's default schedule
    (``--quick``: a tenth of it) unless ``--epochs`` is given."""
    from kexue.generative import gan, glann, nvae

    big = data.shape[1] > 16  # mnist5k: 2.8x the images of digits, 12x the pixels

    def scaled(default: int) -> int:
        return epochs if epochs is not None else max(1, default // 10) if quick else default

    if model == "gan":
        return gan.make_trainer(recipe, data, epochs=scaled(8 if big else 30), seed=seed)
    if model == "glann":
        total = scaled(50)
        glo = max(1, round(total * 0.6))
        return glann.GLANNTrainer(data, glo_epochs=glo, imle_epochs=total - glo, seed=seed)
    return nvae.NVAETrainer(data, epochs=scaled(20 if big else 50), seed=seed)


def _saved_epochs(ckpt: Path) -> int | None:
    """The epoch count a checkpoint was written for (None when it cannot tell; `_resume`
    then reports what is wrong)."""
    import torch

    try:
        saved = torch.load(ckpt, weights_only=True)
        epochs = saved["meta"]["epochs"]
    except Exception:  # damaged or foreign: _resume says so
        return None
    return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) and \
        epochs >= 1 else None


def _resume(trainer: Any, ckpt: Path, meta: dict[str, Any]) -> None:
    """Load ``ckpt`` into ``trainer`` after checking that it was written for ``meta``."""
    import torch

    try:  # weights_only: a checkpoint is data, never code to run
        saved = torch.load(ckpt, weights_only=True)
    except Exception as error:  # torch raises several types for a damaged file
        raise CliError(f"--resume: {ckpt} is not a readable checkpoint "
                       f"({type(error).__name__})") from error
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        raise CliError(f"--resume: {ckpt} is not a kexue checkpoint")
    if saved.get("meta") != meta:
        raise CliError(f"--resume: {ckpt} was written for {saved.get('meta')}, not {meta}")
    try:
        trainer.load_state_dict(saved["state"])
    except Exception as error:  # config, weights or crafted types that do not fit
        what = f"it lacks {error}" if isinstance(error, KeyError) else first_line(error)
        raise CliError(f"--resume: {ckpt} does not fit this model: {what}") from error
    if trainer.epochs != meta["epochs"] or not 0 <= trainer.epoch <= trainer.epochs:
        raise CliError(f"--resume: {ckpt} holds epoch {trainer.epoch} of {trainer.epochs}, "
                       f"but its meta says {meta['epochs']} epochs")


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: the previous checkpoint survives until the new
    one is complete on disk."""
    import torch

    from kexue._io import atomic_save

    atomic_save(path, lambda f: torch.save(payload, f))


def train(
    model: Annotated[Model, typer.Argument(help="The model to train.")],  # type: ignore[valid-type]
    data: Annotated[Data, typer.Option("--data", help="digits (8x8) or mnist5k (28x28).")] = (  # type: ignore[valid-type]
        "digits"),
    recipe: Annotated[Recipe, typer.Option("--recipe", help="gan only: the architecture.")] = (  # type: ignore[valid-type]
        "dcgan"),
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Epochs (default: "
                                               "the model's schedule).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="A tenth of the default schedule.")] = (
        False),
    seed: Seed = 0,
    out_dir: Annotated[Path, typer.Option("--out", help="Directory under which the run "
                                          "directory (checkpoint.pt, samples.png) is made.")] = (
        Path("runs")),
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run's "
                                         "checkpoint.pt (with its epoch count unless "
                                         "--epochs is given).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start afresh over a run that "
                                            "already has a checkpoint.")] = False,
    threads: Threads = 1,
) -> None:
    """Train a generative model on real digits, with a checkpoint after every epoch (resume
    continues exactly) and a PNG grid of samples."""

    from kexue._io import remove_stale
    from kexue.generative.base import image_grid
    from kexue.generative.data import load_images

    model, data, recipe = getattr(model, "value", model), getattr(data, "value", data), \
        getattr(recipe, "value", recipe)
    if resume and overwrite:
        raise CliError("--resume and --overwrite exclude each other")
    check_output_dir(out_dir)
    set_threads(threads)
    try:
        images = load_images(data, seed=seed)
    except (ValueError, FileNotFoundError, ImportError) as error:
        raise CliError(f"--data {data}: {missing_data(error) or first_line(error)}") from error
    run_dir = out_dir / "-".join([model, *([recipe] if model == "gan" else []), data,
                                  f"seed{seed}"])
    ckpt = run_dir / CHECKPOINT
    if ckpt.exists() and not ckpt.is_file():
        raise CliError(f"{ckpt} is not a file")
    if resume and epochs is None and not quick:  # the run's own schedule
        epochs = _saved_epochs(ckpt)
    try:
        trainer = _make_trainer(model, images, recipe, epochs, quick, seed)
    except ValueError as error:
        raise CliError(f"train {model}: {first_line(error)}") from error
    meta = {"model": model, "recipe": recipe if model == "gan" else None, "data": data,
            "seed": seed, "epochs": trainer.epochs}
    if resume and not ckpt.is_file():
        raise CliError(f"--resume: no checkpoint at {ckpt}")
    make_dir(run_dir)  # every argument is valid by now
    with locked(run_dir):
        remove_stale(run_dir)  # temporaries of a killed save (checkpoint, samples)
        if ckpt.exists() and not resume and not overwrite:
            raise CliError(f"{ckpt} already holds a run: pass --resume to continue it or "
                           "--overwrite to start afresh")
        if resume:
            _resume(trainer, ckpt, meta)
            out.print(f"resuming at epoch {trainer.epoch} of {trainer.epochs}", markup=False)
        _fit(trainer, ckpt, meta)
        _finish(trainer, images, run_dir, model, seed, image_grid)
        out.print(f"checkpoint {ckpt}, samples {run_dir / 'samples.png'}", markup=False)


def _fit(trainer: Any, ckpt: Path, meta: dict[str, Any]) -> None:
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

    with progress(TextColumn("{task.description}"), BarColumn(), TextColumn(
            "{task.completed}/{task.total}"), TextColumn("{task.fields[losses]}"),
            TimeElapsedColumn()) as bar:
        task = bar.add_task("epochs", total=trainer.epochs, completed=trainer.epoch, losses="")
        batch = bar.add_task("batches", total=None, losses="")
        saved = False  # a checkpoint of this run is on disk
        while trainer.epoch < trainer.epochs:
            losses = trainer.fit_epoch(lambda done, total: bar.update(
                batch, completed=done, total=total))
            try:
                save_checkpoint(ckpt, {"meta": meta, "state": trainer.state_dict()})
                saved = True
            except (OSError, RuntimeError) as error:  # torch.save re-raises a full disk
                if isinstance(error.__context__, OSError):
                    error = error.__context__
                kept = ("the previous checkpoint is kept" if saved else
                        "the earlier run's checkpoint is untouched" if ckpt.is_file() else
                        "no checkpoint was written")
                reason = getattr(error, "strerror", None) or first_line(error)
                raise RunFailed(f"could not write {ckpt} after epoch {trainer.epoch}: "
                                f"{reason}; {kept}") from error
            bar.update(task, completed=trainer.epoch, losses="  ".join(
                f"{k} {v:.3g}" for k, v in losses.items()))


def _finish(trainer: Any, images: Any, run_dir: Path, model: str, seed: int,
            image_grid: Any) -> None:
    """Samples PNG (atomic) and the model's scores."""
    import matplotlib
    import torch

    from kexue._io import atomic_save

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = trainer.sample(64, torch.Generator().manual_seed(seed))
    grid = image_grid(samples, nrow=8)  # (C, H', W')
    pixels = grid[0].numpy() if grid.shape[0] == 1 else grid.permute(1, 2, 0).numpy()
    try:
        atomic_save(run_dir / "samples.png", lambda f: plt.imsave(
            f, pixels, cmap="gray", vmin=0, vmax=1, format="png"))
    except OSError as error:
        raise RunFailed(f"could not write {run_dir / 'samples.png'}: "
                        f"{error.strerror or error}; the checkpoint is complete") from error
    if model in ("gan", "glann"):
        from kexue.generative.metrics import score_samples

        n = len(images.test_x)
        scores = score_samples(trainer.sample(n, torch.Generator().manual_seed(seed + 1)), images,
                               generator=torch.Generator().manual_seed(seed))
        out.print("  ".join(f"{k} {v:.3f}" for k, v in scores.items()), markup=False)
    else:
        from kexue.generative.data import binarize

        bits = binarize(images.test_x, torch.Generator().manual_seed(seed))  # static test bits
        scores = trainer.evaluate(bits, samples=20, generator=torch.Generator().manual_seed(seed))
        out.print(f"test −ELBO {scores['neg_elbo']:.2f} nats, importance-weighted NLL "
                  f"(K=20) {scores['nll']:.2f} nats", markup=False)


def register(app: typer.Typer) -> None:
    app.command()(train)
