"""``kexue train MODEL``: any model of ``kexue.generative.TRAINERS`` on real digits, with an
atomic checkpoint after every epoch, an exclusive lock on the run directory, and exact resume."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from kexue.cli._common import (
    CliError,
    Device,
    Precision,
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
    resolve_device_option,
    set_threads,
)
from kexue.generative import RECIPES, TRAINERS
from kexue.generative.data import IMAGE_DATA

Data = choices("Data", tuple(IMAGE_DATA))
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 2  # meta["format"]; 1: before the generative trainers shared one contract
_AUTOCAST = {"fp32": None, "bf16": "bf16"}


def _entry(model: str) -> Any:
    """The registry entry of MODEL (read at call time, so a registered model is offered)."""
    if model not in TRAINERS:
        raise CliError(f"MODEL: {model!r} is not one of {', '.join(map(repr, TRAINERS))}")
    return TRAINERS[model]


def _variant(model: str, entry: Any, recipe: str | None) -> str | None:
    if not entry.variants:
        if recipe is not None:
            raise CliError(f"--recipe {recipe}: {model} has no recipes")
        return None
    if recipe is None:
        return entry.variants[0]
    if recipe not in entry.variants:
        raise CliError(f"--recipe: {recipe!r} is not one of "
                       f"{', '.join(map(repr, entry.variants))}")
    return recipe


def _saved_epochs(ckpt: Path) -> int | None:
    """The epoch count a checkpoint was written for (None when it cannot tell; `_resume`
    then reports what is wrong)."""
    import torch

    try:
        saved = torch.load(ckpt, weights_only=True, map_location="cpu")
        epochs = saved["meta"]["epochs"]
    except Exception:  # damaged or foreign: _resume says so
        return None
    return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) and \
        epochs >= 1 else None


def _resume(trainer: Any, ckpt: Path, meta: dict[str, Any]) -> None:
    """Load ``ckpt`` into ``trainer`` after checking that it was written for ``meta``."""
    import torch

    try:  # weights_only: a checkpoint is data, never code to run
        saved = torch.load(ckpt, weights_only=True, map_location="cpu")
    except Exception as error:  # torch raises several types for a damaged file
        raise CliError(f"--resume: {ckpt} is not a readable checkpoint "
                       f"({type(error).__name__})") from error
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict) \
            or not isinstance(saved.get("meta"), dict):
        raise CliError(f"--resume: {ckpt} is not a kexue checkpoint")
    found = saved["meta"].get("format", 1)
    if found != CHECKPOINT_FORMAT:
        raise CliError(f"--resume: {ckpt} is in checkpoint format {found!r}; this kexue reads "
                       f"format {CHECKPOINT_FORMAT}: start afresh with --overwrite, or resume "
                       f"it with the kexue that wrote it")
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
    model: Annotated[str, typer.Argument(
        help=f"The model to train: one of {', '.join(TRAINERS)}.", show_default=False)],
    data: Annotated[Data, typer.Option("--data", help="digits (8x8) or mnist5k (28x28).")] = (  # type: ignore[valid-type]
        "digits"),
    recipe: Annotated[str | None, typer.Option(
        "--recipe", help=f"The model's variant (gan: {', '.join(RECIPES)}; default the "
        "first).", show_default=False)] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Epochs (default: "
                                               "the model's schedule).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="A tenth of the default schedule.")] = (
        False),
    seed: Seed = 0,
    device: Annotated[Device, typer.Option("--device", help="Where to train; auto: CUDA when "  # type: ignore[valid-type]
                                           "available.")] = "auto",
    precision: Annotated[Precision, typer.Option("--precision", help="bf16: forward passes "  # type: ignore[valid-type]
                                                 "under bfloat16 autocast.")] = "fp32",
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
    continues exactly), a PNG grid of samples and the model's scores."""

    from kexue._io import remove_stale
    from kexue.generative.data import load_images

    data, device, precision = (getattr(v, "value", v) for v in (data, device, precision))
    entry = _entry(model)
    variant = _variant(model, entry, recipe)
    if resume and overwrite:
        raise CliError("--resume and --overwrite exclude each other")
    check_output_dir(out_dir)
    set_threads(threads)
    try:
        images = load_images(data, seed=seed)
    except (ValueError, FileNotFoundError, ImportError) as error:
        raise CliError(f"--data {data}: {missing_data(error) or first_line(error)}") from error
    run_dir = out_dir / "-".join([model, *([variant] if variant else []), data, f"seed{seed}"])
    ckpt = run_dir / CHECKPOINT
    if ckpt.exists() and not ckpt.is_file():
        raise CliError(f"{ckpt} is not a file")
    if resume and epochs is None and not quick:  # the run's own schedule
        epochs = _saved_epochs(ckpt)
    if epochs is None:
        epochs = entry.schedule(images.shape, quick)
    resolve_device_option(device)
    try:
        trainer = entry.build(images, epochs=epochs, seed=seed, device=device,
                              autocast=_AUTOCAST[precision], variant=variant)
    except ValueError as error:
        raise CliError(f"train {model}: {first_line(error)}") from error
    meta = {"format": CHECKPOINT_FORMAT, "model": model, "recipe": variant, "data": data,
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
        _finish(trainer, images, run_dir, seed)
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


def _finish(trainer: Any, images: Any, run_dir: Path, seed: int) -> None:
    """Samples PNG (atomic) and the model's scores on the test split."""
    import matplotlib

    from kexue._io import atomic_save
    from kexue._seeds import stream
    from kexue.generative import image_grid

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = trainer.sample(64, stream(seed, "cli", "samples")).float().cpu()
    grid = image_grid(samples, nrow=8)  # (C, H', W')
    pixels = grid[0].numpy() if grid.shape[0] == 1 else grid.permute(1, 2, 0).numpy()
    try:
        atomic_save(run_dir / "samples.png", lambda f: plt.imsave(
            f, pixels, cmap="gray", vmin=0, vmax=1, format="png"))
    except OSError as error:
        raise RunFailed(f"could not write {run_dir / 'samples.png'}: "
                        f"{error.strerror or error}; the checkpoint is complete") from error
    scores = trainer.evaluate(images, stream(seed, "cli", "evaluate"))
    out.print("test split: " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()),
              markup=False)


def register(app: typer.Typer) -> None:
    # the models in the command's own help, which every typer/rich version prints
    doc = inspect.cleandoc(train.__doc__ or "")
    app.command(help=f"{doc}\n\nMODEL: one of {', '.join(TRAINERS)} (kexue.generative.TRAINERS); "
                     f"gan recipes: {', '.join(RECIPES)}.")(train)
