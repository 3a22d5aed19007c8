"""``kexue vocab discover|contrast``: a corpus's words, or a domain's terms against a general
corpus, without labels (https://kexue.fm/archives/6540)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from kexue.cli._common import CliError, RunFailed, Threads, choices, first_line, out, set_threads
from kexue.cli._corpus import (
    Corpora,
    Errors,
    Field,
    Fmt,
    OldOut,
    Output,
    check_inputs,
    cluster,
    cluster_failed,
    documents,
    output_path,
    rate,
    reader,
    sharded,
    write_tsv,
)
from kexue.text._script import SCRIPTS
from kexue.text.contrast import METHODS

T = TypeVar("T")

vocab_app = typer.Typer(help="Mine a corpus's words, or a domain's terms against a general "
                        "corpus, without labels (kexue.fm/archives/6540).",
                        no_args_is_help=True)

Top = Annotated[int, typer.Option("--top", min=1, help="Rows to print.")]
MaxLen = Annotated[int, typer.Option("--max-len", min=2, max=32,
                                      help="Longest word, in units (a Han character, or with "
                                      "--script mixed a Latin/digit run such as PM2.5).")]
MinCount = Annotated[int, typer.Option("--min-count", min=1, help="Frequency floor.")]
Processes = Annotated[int, typer.Option(
    "--processes", min=1, help="Counting processes (used when the corpus spans several "
    "4 M-character chunks).")]
Scheduler = Annotated[str | None, typer.Option(
    "--scheduler", help="Count on a Dask cluster instead: tcp://HOST:PORT (a running scheduler) "
    "or local:N (N worker processes here). The workers read the input files themselves (byte "
    "ranges split at line boundaries, one task per .gz file), so every worker must see them "
    "under the same paths. Needs pip install 'kexue\\[dask]'. Not with --processes.",
    show_default=False)]
ShardMB = Annotated[int, typer.Option(
    "--shard-mb", min=1, max=1 << 20, help="With --scheduler: megabytes of input per task.")]
Script = Annotated[choices("Script", SCRIPTS), typer.Option(  # type: ignore[valid-type]
    "--script", help="mixed: Han characters and runs of Latin letters/digits (PM2.5, 5G, "
    "COVID-19) as units; han: Han characters only.")]
Method = choices("Method", tuple(METHODS))


def _check_scheduler(scheduler: str | None, processes: int, corpora: list[Path]) -> None:
    """One line for --scheduler beside --processes, a malformed address, or stdin."""
    if scheduler is None:
        return
    from kexue.text._dask import check_scheduler

    if processes != 1:
        raise CliError("give --processes N (a pool of processes here) or --scheduler (a Dask "
                       "cluster), not both")
    try:
        check_scheduler(scheduler)
    except ValueError as error:
        raise CliError(f"--scheduler: {error}") from error
    if any(str(p) == "-" for p in corpora):
        raise CliError("-: the workers of --scheduler cannot read stdin; save it to a file and "
                       "name the file")


@vocab_app.command("discover")
def discover(
    corpus: Corpora = None,
    fmt: Fmt = "auto",
    field: Field = "text",
    errors: Errors = "stop",
    top: Top = 30,
    output: Output = None,
    old_out: OldOut = None,
    max_len: MaxLen = 6,
    min_count: MinCount = 5,
    processes: Processes = 1,
    scheduler: Scheduler = None,
    shard_mb: ShardMB = 64,
    script: Script = "mixed",
    threads: Threads = 1,
) -> None:
    """Discover the words of CORPUS (PMI over all splits, branching entropy, frequency)."""
    from kexue.text.vocab import discover as run_discover

    script = getattr(script, "value", script)
    _check_scheduler(scheduler, processes, corpus or [])
    tsv = output_path(output, old_out, corpus)  # before any counting
    set_threads(threads)
    start = time.perf_counter()
    with reader() as bar, contextlib.ExitStack() as stack:
        task = bar.add_task("reading", total=None, rate="")
        if scheduler is None:
            texts, summary, source = documents(corpus, "climate", fmt, field, errors, bar, task)
            chars = sum(len(d) for d in texts)
            where: object = None
        else:
            where = stack.enter_context(cluster(scheduler))
            texts, summary, source, chars = sharded(corpus, "climate", fmt, field, errors,
                                                    shard_mb, "s", where, bar, task)
        bar.update(task, description="counting")
        vocab = _counted("discover", lambda: run_discover(
            texts, max_len=max_len, min_count=min_count, processes=processes, script=script,
            scheduler=where))
        rate(bar, task, chars, start)
    table = Table(title=escape(f"top {min(top, len(vocab))} of {len(vocab):,} words · {source}"))
    for col in ("word", "count", "PMI", "H left", "H right"):
        table.add_column(col)
    for w, c, pmi, hl, hr in vocab.rows()[:top]:
        table.add_row(escape(w), f"{c:,}", f"{pmi:.2f}", f"{hl:.2f}", f"{hr:.2f}")
    out.print(table)
    if summary is not None:
        out.print(summary.describe(), markup=False)
    out.print(f"{chars:,} chars in {time.perf_counter() - start:.1f} s", markup=False)
    write_tsv(tsv, ["word", "count", "pmi", "left_entropy", "right_entropy"], vocab.rows())


@vocab_app.command("contrast")
def contrast(
    domain: Corpora = None,
    general: Annotated[list[Path] | None, typer.Option(
        "--general", help="The general corpus (repeat the option for several paths). "
        "None: embedded People's Daily 1998.")] = None,
    method: Annotated[Method, typer.Option(  # type: ignore[valid-type]
        "--method", help="ratio_lcb_edges (default: 95% lower bound of the log rate ratio, "
        "less for words whose edge characters usually stand alone), ratio_lcb (the bound "
        "alone), llr (log-likelihood ratio), log_odds (informative Dirichlet prior), blog (the "
        "note's formula; words missing from the general side last), blog_filled (the same, "
        "missing counts as 0).")] = "ratio_lcb_edges",
    fmt: Fmt = "auto",
    field: Field = "text",
    errors: Errors = "stop",
    top: Top = 30,
    output: Output = None,
    old_out: OldOut = None,
    max_len: MaxLen = 6,
    min_count: MinCount = 5,
    processes: Processes = 1,
    scheduler: Scheduler = None,
    shard_mb: ShardMB = 64,
    script: Script = "mixed",
    threads: Threads = 1,
) -> None:
    """Rank DOMAIN's own terms against a general corpus: one vocabulary and one segmenter
    for both sides, missing counts as 0, a proper statistic."""
    from kexue.text.contrast import contrast as run_contrast
    from kexue.text.contrast import is_han_word, is_term
    from kexue.text.vocab import CONTRAST_PMI_PER_CHAR, paired_counts
    from kexue.text.vocab import discover as run_discover

    method = getattr(method, "value", method)
    script = getattr(script, "value", script)
    _check_scheduler(scheduler, processes, [*(domain or []), *(general or [])])
    check_inputs(domain, "DOMAIN")
    check_inputs(general, "--general")
    tsv = output_path(output, old_out, [*(domain or []), *(general or [])])
    set_threads(threads)
    start = time.perf_counter()
    with reader() as bar, contextlib.ExitStack() as stack:
        task = bar.add_task("reading", total=None, rate="")
        if scheduler is None:
            docs, summary, source = documents(domain, "climate", fmt, field, errors, bar, task)
            gen, gen_summary, gen_source = documents(general, "pd1998", fmt, field, errors,
                                                     bar, task)
            chars = sum(map(len, docs)) + sum(map(len, gen))
            bar.update(task, description="counting and segmenting")
            domain_counts, general_counts = _counted("contrast", lambda: paired_counts(
                docs, gen, max_len=max_len, min_count=min_count, processes=processes,
                script=script))
        else:
            from kexue.text.shards import word_counts

            driver = stack.enter_context(cluster(scheduler))
            docs, summary, source, chars = sharded(domain, "climate", fmt, field, errors,
                                                   shard_mb, "d", driver, bar, task)
            gen, gen_summary, gen_source, gen_chars = sharded(
                general, "pd1998", fmt, field, errors, shard_mb, "g", driver, bar, task)
            chars += gen_chars
            bar.update(task, description="counting and segmenting")

            def paired() -> tuple:  # paired_counts, with the shards read by the workers
                vocab = run_discover(docs + gen, pmi_per_char=CONTRAST_PMI_PER_CHAR,
                                     max_len=max_len, min_count=min_count, script=script,
                                     scheduler=driver)
                return word_counts(vocab, docs, driver), word_counts(vocab, gen, driver)

            domain_counts, general_counts = _counted("contrast", paired)
        rate(bar, task, chars, start)
    keep = is_term if script == "mixed" else is_han_word
    try:
        ranked = [s for s in run_contrast(domain_counts, general_counts, method=method)
                  if keep(s.word)]
    except ValueError as error:  # e.g. a side whose documents hold no Han text
        raise CliError(f"contrast: {error}") from error
    table = Table(title=escape(f"top {min(top, len(ranked))} terms of {source} against "
                               f"{gen_source} ({method})"))
    for col in ("term", "score", "domain", "general"):
        table.add_column(col)
    for s in ranked[:top]:
        table.add_row(escape(s.word), f"{s.score:.4g}", f"{s.domain_count:,}",
                      f"{s.general_count:,}")
    out.print(table)
    for name, summ in (("domain", summary), ("general", gen_summary)):
        if summ is not None:
            out.print(f"{name}: {summ.describe()}", markup=False)
    write_tsv(tsv, ["term", "score", "domain_count", "general_count"],
              [tuple(s) for s in ranked])


def _counted(command: str, run: Callable[[], T]) -> T:
    """``run()`` with its errors as one line: bad input (exit 2), a full disk or a failed
    cluster (exit 1)."""
    try:
        return run()
    except ValueError as error:
        raise CliError(f"{command}: {first_line(error)}") from error
    except OSError as error:  # e.g. the n-gram spill of a big corpus hit a full disk
        raise RunFailed(f"{command}: {first_line(error)}") from error
    except Exception as error:
        failed = cluster_failed(command, error)
        if failed is None:
            raise
        raise failed from error


def register(app: typer.Typer) -> None:
    app.add_typer(vocab_app, name="vocab")
