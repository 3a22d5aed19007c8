"""The ``kexue`` command line: ``kexue report`` (the main job), ``run NAME`` and ``list``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
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
