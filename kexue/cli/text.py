"""``kexue lm train`` and ``kexue generate keywords|paraphrase|compress|correct``: character
n-gram language models and constrained generation by MCMC and simulated annealing
(https://kexue.fm/archives/8084, https://kexue.fm/archives/8194)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from kexue.cli._common import (
    CliError,
    RunFailed,
    Seed,
    Threads,
    choices,
    err,
    first_line,
    missing_data,
    out,
    progress,
    set_threads,
    text_argument,
)
from kexue.cli._corpus import Errors, Field, Fmt, OldOut, documents, output_path, reader

lm_app = typer.Typer(help="Character n-gram language models for constrained generation.",
                     no_args_is_help=True)
gen_app = typer.Typer(help="Constrained text generation by MCMC and simulated annealing "
                      "(kexue.fm/archives/8084, 8194).", no_args_is_help=True)

LmPath = Annotated[str | None, typer.Option(
    "--lm", help="A model file from `kexue lm train` (a KN .npz, or a neural .pt from `kexue lm "
    "train --neural`), or `neural` for the cached default neural model. A neural model is the "
    "target's fluency term; the KN default stays the proposal. None: the embedded People's "
    "Daily 1998 KN model (trained on first use, then cached).", show_default=False)]
Steps = Annotated[int, typer.Option("--steps", min=1, max=10_000_000,
                                     help="Chain steps per sentence.")]
GenMethod = choices("GenMethod", ("anneal", "mh", "cgmh"))
Method = Annotated[GenMethod, typer.Option(  # type: ignore[valid-type]
    "--method", help="anneal (maximise, exponential cooling), mh (sample exactly) or cgmh "
    "(CGMH's published heuristics, not exact).")]
Count = Annotated[int, typer.Option("--n", min=1, max=100_000, help="Sentences to generate: "
                                     "one chain each, all run as one batch.")]
StopRhat = Annotated[float | None, typer.Option(
    "--stop-rhat", help="mh and cgmh: stop once the split R-hat of the energy across the chains "
    "(over the last half of the steps) is below this, e.g. 1.01. Not for anneal, whose target "
    "changes with the temperature.", show_default=False)]
Attention = choices("Attention", ("dense", "local"))
NetKind = choices("NetKind", ("transformer", "gru"))
CheckEvery = Annotated[int, typer.Option("--check-every", min=1, max=10_000_000,
                                         help="Steps between the --stop-rhat checks.")]


@lm_app.command("train")
def lm_train(
    corpus: Annotated[list[Path] | None, typer.Argument(
        help="Text files (one document per line), JSON lines, .gz, directories, or - for "
             "stdin. None: embedded People's Daily 1998.", show_default=False)] = None,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="The model file to write (.npz), atomically. [default: "
        "lm.npz]")] = None,
    old_out: OldOut = None,
    order: Annotated[int, typer.Option("--order", min=1, help="n of the n-grams.")] = 5,
    max_vocab: Annotated[int, typer.Option("--max-vocab", min=1,
                                           help="Most frequent characters kept.")] = 6000,
    fmt: Fmt = "auto",
    field: Field = "text",
    errors: Errors = "stop",
    threads: Threads = 1,
    neural: Annotated[bool, typer.Option(
        "--neural", help="Train a neural character LM (kexue.attention blocks) instead: "
        "opt-in fluency model of `kexue generate ... --lm neural|PATH`. Without CORPUS and -o "
        "it writes the default model into the cache; checkpointed, and the same command "
        "resumes after an interruption.")] = False,
    steps: Annotated[int, typer.Option("--steps", min=1, max=10_000_000,
                                       help="--neural: optimizer steps.")] = 6000,
    minutes: Annotated[float | None, typer.Option(
        "--minutes", help="--neural: stop after this many minutes of training (checkpointed; "
        "the same command continues).", show_default=False)] = None,
    dim: Annotated[int, typer.Option("--dim", min=1, max=4096,
                                     help="--neural: model width.")] = 128,
    layers: Annotated[int, typer.Option("--layers", min=1, max=64,
                                        help="--neural: blocks.")] = 4,
    heads: Annotated[int, typer.Option("--heads", min=1, max=4096,
                                       help="--neural: attention heads (divide --dim).")] = 4,
    attention: Annotated[Attention, typer.Option(  # type: ignore[valid-type]
        "--attention", help="--neural: causal dense or causal local attention.")] = "dense",
    kind: Annotated[NetKind, typer.Option(  # type: ignore[valid-type]
        "--kind", help="--neural: a transformer or a recurrent (GRU) LM.")] = "transformer",
    dropout: Annotated[float, typer.Option(
        "--dropout", min=0.0, max=0.99, help="--neural: dropout in training (measured on "
        "pd1998: 0 learns fastest in the first 20 minutes; 0.1 learns slower).")] = 0.0,
    seed: Seed = 0,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="--neural: replace a finished model at the output path (and "
        "start afresh over its checkpoint).")] = False,
) -> None:
    """Train forward and backward Kneser-Ney character models on CORPUS and write the model
    file (default lm.npz); with --neural, a neural character LM (default lm.pt, or the
    cached default model without CORPUS)."""
    from kexue.text.lm import BiLM, split_sentences

    if neural:
        _train_neural(corpus, output, old_out, steps=steps, minutes=minutes, dim=dim,
                      layers=layers, heads=heads, attention=getattr(attention, "value", attention),
                      kind=getattr(kind, "value", kind), dropout=dropout, seed=seed,
                      max_vocab=max_vocab,
                      fmt=fmt, field=field, errors=errors, threads=threads, overwrite=overwrite)
        return
    path = output_path(output, old_out, corpus) if (output or old_out) else \
        output_path(Path("lm.npz"), None, corpus)
    set_threads(threads)
    start = time.perf_counter()
    with reader() as bar:
        task = bar.add_task("reading", total=None, rate="")
        docs, summary, source = documents(corpus, "pd1998", fmt, field, errors, bar, task)
        bar.update(task, description="counting")
        sentences = split_sentences(docs)
        try:
            model = BiLM.train(sentences, order=order, max_vocab=max_vocab)
        except ValueError as error:
            raise CliError(f"lm train: {error}") from error
        except OSError as error:
            raise RunFailed(f"lm train: {first_line(error)}") from error
    try:
        model.save(path)
    except OSError as error:
        raise RunFailed(f"--output {path}: {error.strerror or first_line(error)}") from error
    if summary is not None:
        out.print(summary.describe(), markup=False)
    out.print(f"{len(sentences):,} sentences of {source}, {model.forward.vocab_size:,} ids, "
              f"order {order}: written to {path} in {time.perf_counter() - start:.1f} s",
              markup=False)


def _train_neural(corpus: list[Path] | None, output: Path | None, old_out: Path | None, *,
                  steps: int, minutes: float | None, dim: int, layers: int, heads: int,
                  attention: str, kind: str, dropout: float, seed: int, max_vocab: int,
                  fmt: Any, field: str,
                  errors: Any, threads: int, overwrite: bool) -> None:
    """``kexue lm train --neural``: train, checkpoint beside the output, resume, write."""
    from kexue.cli._common import make_dir
    from kexue.text.lm import split_sentences
    from kexue.text.neural import NeuralConfig, default_neural_lm_path, train_neural

    if minutes is not None and not 0 < minutes < float("inf"):
        raise CliError(f"--minutes must be a number > 0, got {minutes}")
    try:
        config = NeuralConfig(kind=kind, dim=dim, layers=layers, heads=heads,
                              attention=attention, dropout=dropout)
    except ValueError as error:
        raise CliError(f"lm train --neural: {error}") from error
    default = not corpus and output is None and old_out is None
    if default:
        path = default_neural_lm_path()
        make_dir(path.parent, "the cache directory")
    else:
        path = output_path(output or (None if old_out else Path("lm.pt")), old_out, corpus)
    ckpt = path.with_name(path.name + ".ckpt")
    lock = _lock(path)
    try:
        if ckpt.exists() and overwrite:
            ckpt.unlink()
        if path.exists() and not ckpt.exists() and not overwrite:
            raise CliError(f"{path} already holds a finished model; pass --overwrite to train "
                           "a new one over it, or give another -o")
        set_threads(threads)
        valid = None
        with reader() as bar:
            task = bar.add_task("reading", total=None, rate="")
            if corpus:
                docs, summary, source = documents(corpus, "pd1998", fmt, field, errors, bar,
                                                  task)
                sentences = split_sentences(docs)
            else:
                from kexue.text.data import pd1998_split

                try:
                    sentences = split_sentences(pd1998_split("train"))
                    valid = split_sentences(pd1998_split("heldout"))
                except (ImportError, OSError) as error:
                    raise CliError(missing_data(error) or first_line(error)) from error
                summary, source = None, 'pd1998_split("train")'
        if summary is not None:
            out.print(summary.describe(), markup=False)
        if ckpt.exists():
            err.print(f"resuming from the checkpoint {ckpt}", markup=False)
        tokens = sum(len(s) + 1 for s in sentences) / max(len(sentences), 1) * 32
        start = time.perf_counter()
        with progress(TextColumn("{task.description}"), BarColumn(),
                      TextColumn("step {task.completed}/{task.total}"),
                      TextColumn("{task.fields[info]}"), TimeElapsedColumn()) as bar:
            task = bar.add_task(f"training {kind}", total=steps, info="")
            clock = {"t": time.perf_counter(), "step": None}

            def on_step(step: int, loss: float) -> None:
                if clock["step"] is None:
                    clock["step"] = step - 1
                rate = (step - clock["step"]) / max(time.perf_counter() - clock["t"], 1e-9)
                bar.update(task, completed=step,
                           info=f"loss {loss:.3f} · {rate * tokens:,.0f} tokens/s")

            try:
                model = train_neural(sentences, config, steps=steps, minutes=minutes,
                                     max_vocab=max_vocab, seed=seed, checkpoint=ckpt,
                                     checkpoint_every=200, on_step=on_step)
            except ValueError as error:
                raise CliError(f"lm train --neural: {first_line(error)}") from error
            except OSError as error:
                raise RunFailed(f"lm train --neural: {first_line(error)}") from error
        done = _checkpoint_step(ckpt)
        try:
            model.save(path)
        except OSError as error:
            raise RunFailed(f"--output {path}: {error.strerror or first_line(error)}") from error
        seconds = time.perf_counter() - start
        if done is not None and done < steps:
            out.print(f"stopped at step {done:,} of {steps:,} after --minutes {minutes:g}: the "
                      f"model so far is in {path}; run the same command again to continue "
                      f"(checkpoint {ckpt})", markup=False)
        else:
            ckpt.unlink(missing_ok=True)
            out.print(f"{len(sentences):,} sentences of {source}, {model.vocab_size:,} ids, "
                      f"{kind} d={dim}×{layers}: written to {path} in {seconds:.1f} s",
                      markup=False)
        if valid is not None:
            nll = model.nll_per_char(valid)
            out.print(f"held-out NLL/char (pd1998_split(\"heldout\"), {len(valid):,} "
                      f"sentences): {nll:.4f}", markup=False)
    finally:
        lock.release()


def _lock(path: Path) -> Any:
    """One training per output file at a time (a lock file beside it)."""
    from kexue._io import RunLock, RunLocked

    lock = RunLock(path.with_name(f".{path.name}.lock"))
    try:
        lock.acquire()
    except RunLocked as error:
        raise CliError(f"{path} is being trained by another kexue process; wait for it to "
                       "finish") from error
    except OSError as error:
        raise CliError(f"cannot lock {lock.path}: {error.strerror or error}") from error
    return lock


def _checkpoint_step(ckpt: Path) -> int | None:
    import torch

    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=True)["step"])
    except Exception:  # absent or unreadable: nothing to continue from
        return None


def _is_neural_file(path: Path) -> bool:
    """Whether ``path`` is a torch file (a zip with a ``data.pkl``), not a KN ``.npz``."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(name.endswith("data.pkl") for name in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return path.suffix in (".pt", ".pth", ".ckpt")


def _names_neural(path: Path | str) -> bool:
    """Whether ``--lm`` asks for a neural model: ``neural`` (the cached default) or a torch
    file."""
    return str(path) == "neural" or _is_neural_file(Path(path))


def load_lm(path: Path | str | None) -> Any:
    """The KN model of ``--lm`` (a KN file), or the embedded default from the shared disk
    cache (also the proposal when ``--lm`` names a neural model)."""
    from kexue.text.lm import BiLM

    if path is not None and not _names_neural(path):
        try:
            return BiLM.load(path)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CliError(f"--lm: {first_line(error)}") from error
    from kexue.text.constrained import default_lm

    try:
        return default_lm(status=err.status)  # a status line only while it trains
    except (FileNotFoundError, ImportError) as error:
        raise CliError(missing_data(error) or first_line(error)) from error


def load_fluency(path: Path | str | None) -> Any:
    """The neural model of ``--lm neural`` (the cached default) or ``--lm FILE.pt``; None for a
    KN model (the target's fluency is then its forward model)."""
    if path is None or not _names_neural(path):
        return None
    from kexue.text.neural import NeuralLM, default_neural_lm

    try:
        return default_neural_lm() if str(path) == "neural" else NeuralLM.load(path)
    except (OSError, ValueError) as error:
        raise CliError(f"--lm {path}: {first_line(error)}") from error


def _print(rows: Any, title: str) -> None:
    table = Table(title=escape(title))
    for col in ("#", "sentence", "chars", "log π", "NLL/char", "acceptance r/i/d"):
        table.add_column(col, overflow="fold")
    for i, g in enumerate(rows, start=1):
        acc = g.chain.acceptance()
        table.add_row(str(i), escape(g.text), str(len(g.text)), f"{g.log_prob:.1f}",
                      f"{-g.terms['fluency'] / (len(g.text) + 1):.2f}",
                      "/".join("-" if v != v else f"{v:.2f}" for v in acc.values()))
    out.print(table)


def _summary(rows: Any, seconds: float) -> None:
    """R-hat and ESS of the energy for a fixed target; annealing's best-energy trace."""
    chains = rows.chains
    speed = f"{len(rows)} chains × {chains.steps} steps in {seconds:.1f} s " \
            f"({len(rows) / seconds:.1f} sentences/s)"
    if chains.annealed:
        best = chains.best_energies.mean(axis=0)  # (T,)
        marks = sorted({0, *(int(f * (len(best) - 1)) for f in (0.25, 0.5, 0.75, 1.0))}) \
            if len(best) else []
        trace = " → ".join(f"{best[t]:.1f}" for t in marks)
        out.print(f"{speed}. Annealing changes its target, so no R-hat: best energy −log π, "
                  f"mean over chains, at steps {', '.join(str(t + 1) for t in marks)}: {trace}",
                  markup=False)
        return
    try:
        rhat, ess = chains.rhat(), chains.ess()
        diag = (f"energy −log π over the last half of the steps: split R-hat {rhat:.3f} "
                f"(rank-normalised; < 1.01 means mixed), bulk ESS {ess:.0f}")
    except ValueError:
        diag = "R-hat and ESS need at least 8 steps"
    out.print(f"{speed}. {diag}", markup=False)


def _generate(make: Callable[[Callable], Any], n: int, steps: int, what: str) -> Any:
    """Run ``make(on_step)`` (n chains as one batch) under one progress bar; its seconds."""
    with progress() as bar:
        task = bar.add_task(f"{what}: {n} chains", total=steps)
        start = time.perf_counter()
        try:
            rows = make(lambda t, states: bar.update(task, completed=t + 1))
        except ValueError as error:
            raise CliError(f"generate {what}: {error}") from error
    return rows, time.perf_counter() - start


@gen_app.command("keywords")
def keywords(
    words: Annotated[list[str], typer.Argument(metavar="KEYWORDS", help="Words the sentence "
                                               "must contain, in order.")],
    steps: Steps = 200,
    method: Method = "anneal",
    n: Count = 3,
    stop_rhat: StopRhat = None,
    check_every: CheckEvery = 50,
    seed: Seed = 0,
    lm: LmPath = None,
    threads: Threads = 1,
) -> None:
    """Make sentences that contain every KEYWORD (a hard constraint), by MCMC: --n chains run
    as one batch; mh reports the split R-hat and ESS of the energy, anneal its best energy."""
    from kexue.text.constrained import keywords_to_sentence

    method = getattr(method, "value", method)
    if stop_rhat is not None and method == "anneal":
        raise CliError("--stop-rhat: anneal changes its target with the temperature, so it has "
                       "no R-hat (it reports its best-energy trace); use --method mh")
    if stop_rhat is not None and not stop_rhat > 1:
        raise CliError(f"--stop-rhat must be a number > 1 (e.g. 1.01), got {stop_rhat}")
    words = [text_argument(w) for w in words]
    set_threads(threads)
    fluency = load_fluency(lm)
    model = load_lm(lm)
    rows, seconds = _generate(lambda cb: keywords_to_sentence(
        words, steps, lm=model, method=method, chains=n, stop_rhat=stop_rhat,
        check_every=check_every, seed=seed, on_step=cb, fluency_lm=fluency), n, steps,
        "keywords")
    _print(rows, f"{' '.join(words)} · {method}, {rows.chains.steps} steps")
    _summary(rows, seconds)


def _edit(task: str, text: str, steps: int, n: int, seed: int, lm: str | None, threads: int,
          title: str, **options: Any) -> None:
    """Run the sentence-editing task ``task`` of kexue.text.constrained with ``n`` chains."""
    from kexue.text import constrained

    run = getattr(constrained, task)
    text = text_argument(text)
    set_threads(threads)
    fluency = load_fluency(lm)
    model = load_lm(lm)
    rows, seconds = _generate(lambda cb: run(text, *options.values(), steps, lm=model,
                                             chains=n, seed=seed, on_step=cb,
                                             fluency_lm=fluency),
                              n, steps, task)
    _print(rows, f"{title} of {text}")
    _summary(rows, seconds)


@gen_app.command("paraphrase")
def paraphrase(
    text: Annotated[str, typer.Argument(help="The sentence to rephrase.")],
    steps: Steps = 300,
    n: Count = 3,
    seed: Seed = 0,
    lm: LmPath = None,
    threads: Threads = 1,
) -> None:
    """Rephrase TEXT: fluent, close to it, not a copy."""
    _edit("paraphrase", text, steps, n, seed, lm, threads, "paraphrases")


@gen_app.command("compress")
def compress(
    text: Annotated[str, typer.Argument(help="The sentence to shorten.")],
    ratio: Annotated[float, typer.Option("--ratio", help="Target length / source length, "
                                                         "in (0, 1].")] = 0.6,
    steps: Steps = 300,
    n: Count = 3,
    seed: Seed = 0,
    lm: LmPath = None,
    threads: Threads = 1,
) -> None:
    """Shorten TEXT by deletions that keep it fluent and close to the source."""
    _edit("compress", text, steps, n, seed, lm, threads, "compressions", ratio=ratio)


@gen_app.command("correct")
def correct(
    text: Annotated[str, typer.Argument(help="The sentence to correct.")],
    steps: Steps = 300,
    n: Count = 1,
    seed: Seed = 0,
    lm: LmPath = None,
    threads: Threads = 1,
) -> None:
    """Correct TEXT with the few edits that buy the most fluency."""
    _edit("correct", text, steps, n, seed, lm, threads, "corrections")


def register(app: typer.Typer) -> None:
    app.add_typer(lm_app, name="lm")
    app.add_typer(gen_app, name="generate")
