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

LmPath = Annotated[Path | None, typer.Option(
    "--lm", help="A model file from `kexue lm train`. None: the embedded People's Daily 1998 "
    "model (trained on first use, then cached).")]
Steps = Annotated[int, typer.Option("--steps", min=1, max=10_000_000,
                                     help="Chain steps per sentence.")]
GenMethod = choices("GenMethod", ("anneal", "mh", "cgmh"))
Method = Annotated[GenMethod, typer.Option(  # type: ignore[valid-type]
    "--method", help="anneal (maximise, exponential cooling), mh (sample exactly) or cgmh "
    "(CGMH's published heuristics, not exact).")]
Count = Annotated[int, typer.Option("--n", min=1, help="Sentences to generate.")]


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
) -> None:
    """Train forward and backward Kneser-Ney character models on CORPUS and write the model
    file (default lm.npz)."""
    from kexue.text.lm import BiLM, split_sentences

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


def load_lm(path: Path | None) -> Any:
    """The model of ``--lm``, or the embedded default from the shared disk cache."""
    from kexue.text.lm import BiLM

    if path is not None:
        try:
            return BiLM.load(path)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CliError(f"--lm: {first_line(error)}") from error
    from kexue.text.constrained import default_lm

    try:
        return default_lm(status=err.status)  # a status line only while it trains
    except (FileNotFoundError, ImportError) as error:
        raise CliError(missing_data(error) or first_line(error)) from error


def _print(rows: list, title: str) -> None:
    table = Table(title=escape(title))
    for col in ("#", "sentence", "chars", "log π", "NLL/char", "acceptance r/i/d"):
        table.add_column(col, overflow="fold")
    for i, g in enumerate(rows, start=1):
        acc = g.chain.acceptance()
        table.add_row(str(i), escape(g.text), str(len(g.text)), f"{g.log_prob:.1f}",
                      f"{-g.terms['fluency'] / (len(g.text) + 1):.2f}",
                      "/".join("-" if v != v else f"{v:.2f}" for v in acc.values()))
    out.print(table)


def _generate(make: Callable[[int, Callable], Any], n: int, steps: int, what: str) -> list:
    rows = []
    with progress() as bar:
        for i in range(n):
            task = bar.add_task(f"{what} {i + 1}/{n}", total=steps)
            try:
                rows.append(make(i, lambda t, state, task=task: bar.update(
                    task, completed=t + 1)))
            except ValueError as error:
                raise CliError(f"generate {what}: {error}") from error
    return rows


@gen_app.command("keywords")
def keywords(
    words: Annotated[list[str], typer.Argument(metavar="KEYWORDS", help="Words the sentence "
                                               "must contain, in order.")],
    steps: Steps = 200,
    method: Method = "anneal",
    n: Count = 3,
    seed: Seed = 0,
    lm: LmPath = None,
    threads: Threads = 1,
) -> None:
    """Make sentences that contain every KEYWORD (a hard constraint), by MCMC."""
    from kexue._seeds import derive_seed
    from kexue.text.constrained import keywords_to_sentence

    method = getattr(method, "value", method)
    words = [text_argument(w) for w in words]
    set_threads(threads)
    model = load_lm(lm)
    rows = _generate(lambda i, cb: keywords_to_sentence(
        words, steps, lm=model, method=method,
        seed=derive_seed(seed, "sentence", str(i)), on_step=cb), n, steps,
        "keywords")
    _print(rows, f"{' '.join(words)} · {method}, {steps} steps")


def _edit(task: str, text: str, steps: int, n: int, seed: int, lm: Path | None, threads: int,
          title: str, **options: Any) -> None:
    """Run the sentence-editing task ``task`` of kexue.text.constrained ``n`` times."""
    from kexue._seeds import derive_seed
    from kexue.text import constrained

    run = getattr(constrained, task)
    text = text_argument(text)
    set_threads(threads)
    model = load_lm(lm)
    rows = _generate(lambda i, cb: run(text, *options.values(), steps, lm=model,
                                       seed=derive_seed(seed, "sentence", str(i)), on_step=cb),
                     n, steps, task)
    _print(rows, f"{title} of {text}")


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
