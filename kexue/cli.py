"""The ``kexue`` command line: ``kexue report`` (the main job), ``run NAME`` and ``list``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(
    help="kexue: techniques from the Scientific Spaces notes (kexue.fm), rerun on real data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()

Full = Annotated[bool, typer.Option("--full", help="Full-size runs instead of quick mode.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed for every experiment.")]
Out = Annotated[Path, typer.Option("--out", help="Directory for index.html, figures, JSON.")]
Threads = Annotated[int, typer.Option("--threads", min=1, help="torch threads to use.")]


class CliError(Exception):
    """An error the user can fix: printed as one line, exit status 2."""


def _table(records: list[dict]) -> Table:
    table = Table(title="kexue report")
    for col in ("experiment", "claim", "result", "s"):
        table.add_column(col, overflow="fold")
    for r in records:
        mark = "[green]holds[/]" if r["claim_holds"] else "[red]does not hold[/]"
        table.add_row(r["name"], mark, r["summary"], f"{r['seconds']:.1f}")
    return table


def _run_many(names: list[str], full: bool, seed: int, out: Path, threads: int) -> list[dict]:
    import torch

    from kexue.experiments import EXPERIMENTS, run_experiment
    from kexue.report import save_result, write_report

    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise CliError(f"unknown experiment {unknown[0]!r}; known: {', '.join(EXPERIMENTS)}")
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CliError(f"--out {out}: {err.strerror or err}") from err
    if not os.access(out, os.W_OK):
        raise CliError(f"--out {out} is not writable")
    torch.set_num_threads(threads)
    records = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
                  "{task.total}"), TimeElapsedColumn(), console=console,
                  disable=not console.is_terminal and not sys.stderr.isatty()) as progress:
        task = progress.add_task("experiments", total=len(names))
        for name in names:
            progress.update(task, description=f"running {name}")
            records.append(save_result(run_experiment(name, full=full, seed=seed), out))
            progress.advance(task)
    path = write_report(records, out)
    console.print(_table(records))
    console.print(f"report written to {path}")
    return records


@app.command()
def report(
    full: Full = False,
    seed: Seed = 0,
    out: Out = Path("report"),
    only: Annotated[list[str] | None, typer.Option("--only", help="Run only these.")] = None,
    threads: Threads = 1,
) -> None:
    """Rerun every note's claim on embedded real data and write OUT/index.html with figures."""
    from kexue.experiments import EXPERIMENTS

    _run_many(list(only or EXPERIMENTS), full, seed, out, threads)


@app.command()
def run(
    name: Annotated[str, typer.Argument(help="Experiment name (see `kexue list`).")],
    full: Full = False,
    seed: Seed = 0,
    out: Out = Path("report"),
    threads: Threads = 1,
) -> None:
    """Run one experiment and write its figures and results to OUT."""
    _run_many([name], full, seed, out, threads)


BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@app.command()
def bench(
    topic: Annotated[str, typer.Argument(help="Benchmark topic: train, attention, ...")],
    quick: Annotated[bool, typer.Option("--quick", help="Short sizes only.")] = False,
) -> None:
    """Run benchmarks/bench_TOPIC.py (from a kexue checkout): prints the table and writes
    benchmarks/results/TOPIC.* with peers measured in the same run."""
    import subprocess

    script = BENCHMARKS / f"bench_{topic}.py"
    if not script.is_file():
        known = sorted(p.stem.removeprefix("bench_") for p in BENCHMARKS.glob("bench_*.py"))
        where = f"known: {', '.join(known)}" if known else f"no benchmarks under {BENCHMARKS}"
        raise CliError(f"unknown benchmark {topic!r}; {where} (benchmarks need a checkout)")
    done = subprocess.run([sys.executable, str(script), *(["--quick"] if quick else [])],
                          check=False)
    if done.returncode:
        raise typer.Exit(done.returncode)


vocab_app = typer.Typer(help="Mine a corpus's words, or a domain's terms against a general "
                         "corpus, without labels (kexue.fm/archives/6540).",
                         no_args_is_help=True)
app.add_typer(vocab_app, name="vocab")

Corpora = Annotated[list[Path] | None, typer.Argument(
    help="Text files (one document per line), JSON lines, .gz, directories, or - for stdin. "
         "None: the embedded climate corpus.", show_default=False)]
Fmt = Annotated[str, typer.Option("--format", help="auto, lines or jsonl.")]
Field = Annotated[str, typer.Option("--field", help="JSON lines: the text field.")]
Errors = Annotated[str, typer.Option(
    "--errors", help="stop: a bad line (not UTF-8), empty or binary file is an error; skip: "
    "skip it, count it and go on.")]
Top = Annotated[int, typer.Option("--top", min=1, help="Rows to print.")]
TsvOut = Annotated[Path | None, typer.Option("--out", help="Write all rows to this TSV file.")]
MaxLen = Annotated[int, typer.Option("--max-len", min=2, help="Longest word, in characters.")]
MinCount = Annotated[int, typer.Option("--min-count", min=1, help="Frequency floor.")]
Processes = Annotated[int, typer.Option(
    "--processes", min=1, help="Counting processes (used when the corpus spans several "
    "4 M-character chunks).")]


def _documents(paths: list[Path] | None, default: str, fmt: str, field: str, errors: str,
               progress: Progress, task: object) -> tuple[list[str], object | None, str]:
    """All documents of ``paths`` (or an embedded corpus) with a chars/s progress bar."""
    from kexue.text import data, read_documents

    try:
        if not paths:
            docs = getattr(data, default)()
            progress.update(task, advance=sum(len(d) for d in docs))
            return docs, None, f"embedded {default}"
        corpus = read_documents([str(p) for p in paths], fmt=fmt, field=field, errors=errors)
        docs = []
        for doc in corpus:
            docs.append(doc)
            progress.update(task, advance=len(doc))
    except (ValueError, OSError, RuntimeError) as err:  # missing package, bad input file
        raise CliError(str(err)) from err
    if not docs:
        raise CliError(f"no documents in {', '.join(map(str, paths))}")
    return docs, corpus.summary, ", ".join(map(str, paths))


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), TextColumn("{task.completed:,} chars"),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console,
                    disable=not console.is_terminal and not sys.stderr.isatty())


def _write_tsv(path: Path | None, header: list[str], rows: list[tuple]) -> None:
    if path is None:
        return
    try:
        with path.open("w", encoding="utf-8") as f:
            f.write("\t".join(header) + "\n")
            for row in rows:
                f.write("\t".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row)
                        + "\n")
    except OSError as err:
        raise CliError(f"--out {path}: {err.strerror or err}") from err
    console.print(f"{len(rows):,} rows written to {path}", markup=False)


def _rate(progress: Progress, task: object, chars: int, start: float) -> None:
    import time

    seconds = max(time.perf_counter() - start, 1e-9)
    progress.update(task, rate=f"{chars / seconds / 1e6:.2f} M chars/s")


@vocab_app.command("discover")
def vocab_discover(
    corpus: Corpora = None,
    fmt: Fmt = "auto",
    field: Field = "text",
    errors: Errors = "stop",
    top: Top = 30,
    out: TsvOut = None,
    max_len: MaxLen = 6,
    min_count: MinCount = 5,
    processes: Processes = 1,
) -> None:
    """Discover the words of CORPUS (PMI over all splits, branching entropy, frequency)."""
    import time

    from kexue.text.vocab import discover

    start = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task("reading", total=None, rate="")
        docs, summary, source = _documents(corpus, "climate", fmt, field, errors, progress, task)
        chars = sum(len(d) for d in docs)
        progress.update(task, description="counting")
        try:
            vocab = discover(docs, max_len=max_len, min_count=min_count, processes=processes)
        except ValueError as err:
            raise CliError(f"discover: {err}") from err
        _rate(progress, task, chars, start)
    table = Table(title=escape(f"top {min(top, len(vocab))} of {len(vocab):,} words · {source}"))
    for col in ("word", "count", "PMI", "H left", "H right"):
        table.add_column(col)
    for w, c, pmi, hl, hr in vocab.rows()[:top]:
        table.add_row(w, f"{c:,}", f"{pmi:.2f}", f"{hl:.2f}", f"{hr:.2f}")
    console.print(table)
    if summary is not None:
        console.print(summary.describe(), markup=False)
    console.print(f"{chars:,} chars in {time.perf_counter() - start:.1f} s")
    _write_tsv(out, ["word", "count", "pmi", "left_entropy", "right_entropy"], vocab.rows())


@vocab_app.command("contrast")
def vocab_contrast(
    domain: Corpora = None,
    general: Annotated[list[Path] | None, typer.Option(
        "--general", help="The general corpus (repeat the option for several paths). "
        "None: embedded People's Daily 1998.")] = None,
    method: Annotated[str, typer.Option(
        "--method", help="ratio_lcb_edges (default: 95% lower bound of the log rate ratio, "
        "less for words whose edge characters usually stand alone), ratio_lcb (the bound "
        "alone), llr (log-likelihood ratio), log_odds (informative Dirichlet prior), blog (the "
        "note's formula; words missing from the general side last), blog_filled (the same, "
        "missing counts as 0).")] = "ratio_lcb_edges",
    fmt: Fmt = "auto",
    field: Field = "text",
    errors: Errors = "stop",
    top: Top = 30,
    out: TsvOut = None,
    max_len: MaxLen = 6,
    min_count: MinCount = 5,
    processes: Processes = 1,
) -> None:
    """Rank DOMAIN's own terms against a general corpus: one vocabulary and one segmenter
    for both sides, missing counts as 0, a proper statistic."""
    import time

    from kexue.text.contrast import METHODS, contrast, is_han_word
    from kexue.text.vocab import paired_counts

    if method not in METHODS:
        raise CliError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    start = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task("reading", total=None, rate="")
        docs, summary, source = _documents(domain, "climate", fmt, field, errors, progress, task)
        gen, gen_summary, gen_source = _documents(general, "pd1998", fmt, field, errors,
                                                  progress, task)
        progress.update(task, description="counting and segmenting")
        domain_counts, general_counts = paired_counts(docs, gen, max_len=max_len,
                                                      min_count=min_count, processes=processes)
        _rate(progress, task, sum(map(len, docs)) + sum(map(len, gen)), start)
    try:
        ranked = [s for s in contrast(domain_counts, general_counts, method=method)
                  if is_han_word(s.word)]
    except ValueError as err:  # e.g. a side whose documents hold no Han text
        raise CliError(f"contrast: {err}") from err
    table = Table(title=escape(f"top {min(top, len(ranked))} terms of {source} against "
                               f"{gen_source} ({method})"))
    for col in ("term", "score", "domain", "general"):
        table.add_column(col)
    for s in ranked[:top]:
        table.add_row(s.word, f"{s.score:.4g}", f"{s.domain_count:,}", f"{s.general_count:,}")
    console.print(table)
    for name, summ in (("domain", summary), ("general", gen_summary)):
        if summ is not None:
            console.print(f"{name}: {summ.describe()}", markup=False)
    _write_tsv(out, ["term", "score", "domain_count", "general_count"],
               [tuple(s) for s in ranked])


lm_app = typer.Typer(help="Character n-gram language models for constrained generation.",
                     no_args_is_help=True)
app.add_typer(lm_app, name="lm")
gen_app = typer.Typer(help="Constrained text generation by MCMC and simulated annealing "
                      "(kexue.fm/archives/8084, 8111).", no_args_is_help=True)
app.add_typer(gen_app, name="generate")

LmPath = Annotated[Path | None, typer.Option(
    "--lm", help="A model file from `kexue lm train`. None: the embedded People's Daily 1998 "
    "model (trained on first use, then cached).")]
Steps = Annotated[int, typer.Option("--steps", min=1, help="Chain steps per sentence.")]
GenSeed = Annotated[int, typer.Option("--seed", help="Random seed.")]


@lm_app.command("train")
def lm_train(
    corpus: Annotated[list[Path] | None, typer.Argument(
        help="Text files (one document per line), JSON lines, .gz, directories, or - for "
             "stdin. None: embedded People's Daily 1998.", show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", help="Model file to write (.npz).")] = Path(
        "lm.npz"),
    order: Annotated[int, typer.Option("--order", min=1, help="n of the n-grams.")] = 5,
    max_vocab: Annotated[int, typer.Option("--max-vocab", min=1,
                                           help="Most frequent characters kept.")] = 6000,
    fmt: Fmt = "auto",
    field: Field = "text",
    errors: Errors = "stop",
) -> None:
    """Train forward and backward Kneser-Ney character models on CORPUS and write OUT."""
    import time

    from kexue.text.lm import BiLM, split_sentences

    start = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task("reading", total=None, rate="")
        docs, summary, source = _documents(corpus, "pd1998", fmt, field, errors, progress, task)
        progress.update(task, description="counting")
        sentences = split_sentences(docs)
        try:
            model = BiLM.train(sentences, order=order, max_vocab=max_vocab)
        except ValueError as err:
            raise CliError(f"lm train: {err}") from err
        _rate(progress, task, sum(map(len, docs)), start)
    try:
        model.save(out)
    except OSError as err:
        raise CliError(f"--out {out}: {err.strerror or err}") from err
    if summary is not None:
        console.print(summary.describe(), markup=False)
    console.print(f"{len(sentences):,} sentences of {source}, {model.forward.vocab_size:,} ids, "
                  f"order {order}: written to {out} in {time.perf_counter() - start:.1f} s",
                  markup=False)


def _load_lm(path: Path | None):
    """The model of --lm, or the embedded default (cached under $KEXUE_CACHE or ~/.cache)."""
    from kexue.text.constrained import default_lm
    from kexue.text.lm import BiLM

    if path is not None:
        try:
            return BiLM.load(path)
        except (OSError, ValueError) as err:
            raise CliError(f"--lm: {err}") from err
    cache = Path(os.environ.get("KEXUE_CACHE", Path.home() / ".cache" / "kexue"))
    cached = cache / "lm-pd1998-order5.npz"
    if cached.is_file():
        try:
            return BiLM.load(cached)
        except ValueError:
            pass  # a stale or broken cache: train again
    with console.status("training the default language model on People's Daily 1998 "
                        "(first run only)"):
        model = default_lm()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        model.save(cached)
    except OSError:
        pass  # caching is an optimisation only
    return model


def _print_generations(rows: list, title: str) -> None:
    table = Table(title=escape(title))
    for col in ("#", "sentence", "chars", "log π", "NLL/char", "acceptance r/i/d"):
        table.add_column(col, overflow="fold")
    for i, g in enumerate(rows, start=1):
        acc = g.chain.acceptance()
        table.add_row(str(i), escape(g.text), str(len(g.text)), f"{g.log_prob:.1f}",
                      f"{-g.terms['fluency'] / (len(g.text) + 1):.2f}",
                      "/".join("-" if v != v else f"{v:.2f}" for v in acc.values()))
    console.print(table)


def _run_generations(make, n: int, steps: int, what: str) -> list:
    rows = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn(
            "{task.completed}/{task.total} steps"), TimeElapsedColumn(), console=console,
            disable=not console.is_terminal and not sys.stderr.isatty()) as progress:
        for i in range(n):
            task = progress.add_task(f"{what} {i + 1}/{n}", total=steps)
            try:
                rows.append(make(i, lambda t, state, task=task: progress.update(
                    task, completed=t + 1)))
            except ValueError as err:
                raise CliError(f"generate {what}: {err}") from err
    return rows


Method = Annotated[str, typer.Option(
    "--method", help="anneal (maximise, exponential cooling), mh (sample exactly) or cgmh "
    "(CGMH's published heuristics, not exact).")]
Count = Annotated[int, typer.Option("--n", min=1, help="Sentences to generate.")]


@gen_app.command("keywords")
def generate_keywords(
    keywords: Annotated[list[str], typer.Argument(help="Words the sentence must contain, "
                                                       "in order.")],
    steps: Steps = 200,
    method: Method = "anneal",
    n: Count = 3,
    seed: GenSeed = 0,
    lm: LmPath = None,
) -> None:
    """Make sentences that contain every KEYWORD (a hard constraint), by MCMC."""
    from kexue.text.constrained import keywords_to_sentence

    if method not in ("anneal", "mh", "cgmh"):
        raise CliError(f"--method must be anneal, mh or cgmh, got {method!r}")
    model = _load_lm(lm)
    rows = _run_generations(lambda i, cb: keywords_to_sentence(
        keywords, steps, lm=model, method=method, seed=seed + i, on_step=cb), n, steps,
        "keywords")
    _print_generations(rows, f"{' '.join(keywords)} · {method}, {steps} steps")


@gen_app.command("paraphrase")
def generate_paraphrase(
    text: Annotated[str, typer.Argument(help="The sentence to rephrase.")],
    steps: Steps = 300,
    n: Count = 3,
    seed: GenSeed = 0,
    lm: LmPath = None,
) -> None:
    """Rephrase TEXT: fluent, close to it, not a copy."""
    from kexue.text.constrained import paraphrase

    model = _load_lm(lm)
    rows = _run_generations(lambda i, cb: paraphrase(text, steps, lm=model, seed=seed + i,
                                                     on_step=cb), n, steps, "paraphrase")
    _print_generations(rows, f"paraphrases of {text}")


@gen_app.command("compress")
def generate_compress(
    text: Annotated[str, typer.Argument(help="The sentence to shorten.")],
    ratio: Annotated[float, typer.Option("--ratio", help="Target length / source length, "
                                                         "in (0, 1].")] = 0.6,
    steps: Steps = 300,
    n: Count = 3,
    seed: GenSeed = 0,
    lm: LmPath = None,
) -> None:
    """Shorten TEXT by deletions that keep it fluent and close to the source."""
    from kexue.text.constrained import compress

    model = _load_lm(lm)
    rows = _run_generations(lambda i, cb: compress(text, ratio, steps, lm=model, seed=seed + i,
                                                   on_step=cb), n, steps, "compress")
    _print_generations(rows, f"compressions of {text}")


@gen_app.command("correct")
def generate_correct(
    text: Annotated[str, typer.Argument(help="The sentence to correct.")],
    steps: Steps = 300,
    n: Count = 1,
    seed: GenSeed = 0,
    lm: LmPath = None,
) -> None:
    """Correct TEXT with the few edits that buy the most fluency."""
    from kexue.text.constrained import correct

    model = _load_lm(lm)
    rows = _run_generations(lambda i, cb: correct(text, steps, lm=model, seed=seed + i,
                                                  on_step=cb), n, steps, "correct")
    _print_generations(rows, f"corrections of {text}")


GEN_MODELS = ("gan", "glann", "nvae")


def _make_trainer(model: str, data, recipe: str, epochs: int | None, quick: bool, seed: int):
    """A trainer of the Trainer contract for MODEL, with the library's default schedule
    (``--quick``: a tenth of it) unless ``--epochs`` is given."""
    from kexue.generative import gan, glann, nvae

    big = data.shape[1] > 16  # mnist5k: 2.8x the images of digits, 12x the pixels

    def scaled(default: int) -> int:
        return epochs if epochs is not None else max(1, default // 10) if quick else default

    if model == "gan":
        if recipe not in gan.RECIPES:
            raise CliError(f"--recipe must be one of {', '.join(gan.RECIPES)}, got {recipe!r}")
        return gan.make_trainer(recipe, data, epochs=scaled(8 if big else 30), seed=seed)
    if model == "glann":
        total = scaled(50)
        glo = max(1, round(total * 0.6))
        return glann.GLANNTrainer(data, glo_epochs=glo, imle_epochs=total - glo, seed=seed)
    return nvae.NVAETrainer(data, epochs=scaled(20 if big else 50), seed=seed)


@app.command()
def train(
    model: Annotated[str, typer.Argument(help="gan, glann or nvae.")],
    data: Annotated[str, typer.Option("--data", help="digits (8x8) or mnist5k (28x28).")] = (
        "digits"),
    recipe: Annotated[str, typer.Option(
        "--recipe", help="gan only: dcgan, selfmod, resnet, sngan, sagan or biggan.")] = "dcgan",
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="Epochs (default: "
                                               "the model's schedule).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="A tenth of the default schedule.")] = (
        False),
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split, weights and "
                                      "training.")] = 0,
    out: Annotated[Path, typer.Option("--out", help="Directory for checkpoint.pt and "
                                      "samples.png.")] = Path("runs"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoint.pt.")] = (
        False),
    threads: Threads = 1,
) -> None:
    """Train a generative model on real digits, with a checkpoint after every epoch (resume
    continues exactly) and a PNG grid of samples."""
    import torch

    from kexue.generative.base import image_grid
    from kexue.generative.data import load_images

    if model not in GEN_MODELS:
        raise CliError(f"model must be one of {', '.join(GEN_MODELS)}, got {model!r}")
    torch.set_num_threads(threads)
    try:
        images = load_images(data, seed=seed)
    except (ValueError, FileNotFoundError) as err:
        raise CliError(f"--data: {err}") from err
    run_dir = out / "-".join([model, *([recipe] if model == "gan" else []), data, f"seed{seed}"])
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CliError(f"--out {out}: {err.strerror or err}") from err
    ckpt = run_dir / "checkpoint.pt"
    try:
        trainer = _make_trainer(model, images, recipe, epochs, quick, seed)
    except ValueError as err:
        raise CliError(f"train {model}: {err}") from err
    meta = {"model": model, "recipe": recipe if model == "gan" else None, "data": data,
            "seed": seed, "epochs": trainer.epochs}
    if resume:
        if not ckpt.is_file():
            raise CliError(f"--resume: no checkpoint at {ckpt}")
        try:  # weights_only: a checkpoint is data, never code to run
            saved = torch.load(ckpt, weights_only=True)
        except Exception as err:  # torch raises several types for a damaged file
            raise CliError(f"--resume: {ckpt} is not a readable checkpoint "
                           f"({type(err).__name__})") from err
        if not isinstance(saved, dict) or "state" not in saved:
            raise CliError(f"--resume: {ckpt} is not a kexue checkpoint")
        if saved.get("meta") != meta:
            raise CliError(f"--resume: {ckpt} was written for {saved.get('meta')}, not {meta}")
        try:
            trainer.load_state_dict(saved["state"])
        except (ValueError, KeyError, RuntimeError) as err:  # config or weights do not fit
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CliError(f"--resume: {ckpt} does not fit this model: {first}") from err
        console.print(f"resuming at epoch {trainer.epoch} of {trainer.epochs}", markup=False)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn(
            "{task.completed}/{task.total}"), TextColumn("{task.fields[losses]}"),
            TimeElapsedColumn(), console=console,
            disable=not console.is_terminal and not sys.stderr.isatty()) as progress:
        task = progress.add_task("epochs", total=trainer.epochs, completed=trainer.epoch,
                                 losses="")
        batch = progress.add_task("batches", total=None, losses="")
        while trainer.epoch < trainer.epochs:
            losses = trainer.fit_epoch(lambda done, total: progress.update(
                batch, completed=done, total=total))
            torch.save({"meta": meta, "state": trainer.state_dict()}, ckpt)
            progress.update(task, completed=trainer.epoch, losses="  ".join(
                f"{k} {v:.3g}" for k, v in losses.items()))
    samples = trainer.sample(64, torch.Generator().manual_seed(seed))
    grid = image_grid(samples, nrow=8)  # (C, H', W')
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = run_dir / "samples.png"
    plt.imsave(png, grid[0].numpy() if grid.shape[0] == 1 else grid.permute(1, 2, 0).numpy(),
               cmap="gray", vmin=0, vmax=1)
    if model in ("gan", "glann"):
        from kexue.generative.metrics import score_samples

        n = len(images.test_x)
        scores = score_samples(trainer.sample(n, torch.Generator().manual_seed(seed + 1)), images,
                               generator=torch.Generator().manual_seed(seed))
        console.print("  ".join(f"{k} {v:.3f}" for k, v in scores.items()), markup=False)
    else:
        from kexue.generative.data import binarize

        bits = binarize(images.test_x, torch.Generator().manual_seed(seed))  # static test bits
        scores = trainer.evaluate(bits, samples=20, generator=torch.Generator().manual_seed(seed))
        console.print(f"test −ELBO {scores['neg_elbo']:.2f} nats, importance-weighted NLL "
                      f"(K=20) {scores['nll']:.2f} nats", markup=False)
    console.print(f"checkpoint {ckpt}, samples {png}", markup=False)


@app.command(name="list")
def list_() -> None:
    """List the experiments with the claim each one checks."""
    from kexue.experiments import EXPERIMENTS

    table = Table()
    table.add_column("name")
    table.add_column("claim", overflow="fold")
    table.add_column("note")
    for name, module in EXPERIMENTS.items():
        table.add_row(name, module.CLAIM, module.NOTE)
    console.print(table)


def main() -> None:
    """Entry point: user errors (bad arguments too) become one line on stderr, exit status 2."""
    try:
        code = app(standalone_mode=False)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        sys.exit(130)
    except CliError as err:
        _fail(str(err))
    except Exception as err:
        # Usage errors of the CLI framework (missing argument, bad option value, unknown
        # command) carry their own message.
        if hasattr(err, "format_message") and hasattr(err, "exit_code"):
            if not err.format_message():  # `kexue` alone: the help was printed
                sys.exit(0)
            _fail(err.format_message())
        raise
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str) -> None:
    line = " ".join(message.split())
    Console(stderr=True, width=10_000).print(f"kexue: error: {line}", highlight=False,
                                             markup=False)
    sys.exit(2)
