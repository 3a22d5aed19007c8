"""``kexue vocab discover|contrast``: a corpus's words, or a domain's terms against a general
corpus, without labels (https://kexue.fm/archives/6540)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

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
    documents,
    output_path,
    rate,
    reader,
    write_tsv,
)
from kexue.text.contrast import METHODS

vocab_app = typer.Typer(help="Mine a corpus's words, or a domain's terms against a general "
                        "corpus, without labels (kexue.fm/archives/6540).",
                        no_args_is_help=True)

Top = Annotated[int, typer.Option("--top", min=1, help="Rows to print.")]
MaxLen = Annotated[int, typer.Option("--max-len", min=2, max=32,
                                      help="Longest word, in characters.")]
MinCount = Annotated[int, typer.Option("--min-count", min=1, help="Frequency floor.")]
Processes = Annotated[int, typer.Option(
    "--processes", min=1, help="Counting processes (used when the corpus spans several "
    "4 M-character chunks).")]
Method = choices("Method", tuple(METHODS))


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
    threads: Threads = 1,
) -> None:
    """Discover the words of CORPUS (PMI over all splits, branching entropy, frequency)."""
    from kexue.text.vocab import discover as run_discover

    tsv = output_path(output, old_out, corpus)  # before any counting
    set_threads(threads)
    start = time.perf_counter()
    with reader() as bar:
        task = bar.add_task("reading", total=None, rate="")
        docs, summary, source = documents(corpus, "climate", fmt, field, errors, bar, task)
        chars = sum(len(d) for d in docs)
        bar.update(task, description="counting")
        try:
            vocab = run_discover(docs, max_len=max_len, min_count=min_count,
                                 processes=processes)
        except ValueError as error:
            raise CliError(f"discover: {error}") from error
        except OSError as error:  # e.g. the n-gram spool of a big corpus hit a full disk
            raise RunFailed(f"discover: {first_line(error)}") from error
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
    threads: Threads = 1,
) -> None:
    """Rank DOMAIN's own terms against a general corpus: one vocabulary and one segmenter
    for both sides, missing counts as 0, a proper statistic."""
    from kexue.text.contrast import contrast as run_contrast
    from kexue.text.contrast import is_han_word
    from kexue.text.vocab import paired_counts

    method = getattr(method, "value", method)
    check_inputs(domain, "DOMAIN")
    check_inputs(general, "--general")
    tsv = output_path(output, old_out, [*(domain or []), *(general or [])])
    set_threads(threads)
    start = time.perf_counter()
    with reader() as bar:
        task = bar.add_task("reading", total=None, rate="")
        docs, summary, source = documents(domain, "climate", fmt, field, errors, bar, task)
        gen, gen_summary, gen_source = documents(general, "pd1998", fmt, field, errors,
                                                 bar, task)
        bar.update(task, description="counting and segmenting")
        try:
            domain_counts, general_counts = paired_counts(
                docs, gen, max_len=max_len, min_count=min_count, processes=processes)
        except ValueError as error:
            raise CliError(f"contrast: {error}") from error
        except OSError as error:
            raise RunFailed(f"contrast: {first_line(error)}") from error
        rate(bar, task, sum(map(len, docs)) + sum(map(len, gen)), start)
    try:
        ranked = [s for s in run_contrast(domain_counts, general_counts, method=method)
                  if is_han_word(s.word)]
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


def register(app: typer.Typer) -> None:
    app.add_typer(vocab_app, name="vocab")
