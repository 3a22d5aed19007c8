"""``kexue bench TOPIC``: run ``benchmarks/bench_TOPIC.py`` from a checkout, with its peers.
``--quick`` results go to ``benchmarks/results/quick/``, never over the committed full ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from kexue.cli._common import CliError, Threads

BENCHMARKS = Path(__file__).resolve().parent.parent.parent / "benchmarks"


def topics() -> list[str]:
    """The benchmark topics of this checkout (none in an installed wheel)."""
    if not (BENCHMARKS / "_timing.py").is_file():  # not kexue's benchmarks folder
        return []
    return sorted(p.stem.removeprefix("bench_") for p in BENCHMARKS.glob("bench_*.py"))


def bench(
    topic: Annotated[str, typer.Argument(help="Benchmark topic: the X of "
                                         "benchmarks/bench_X.py (train, attention, ...).")],
    quick: Annotated[bool, typer.Option("--quick", help="Short sizes only; results go to "
                                        "benchmarks/results/quick/.")] = False,
    threads: Threads = 1,
) -> None:
    """Run benchmarks/bench_TOPIC.py (from a kexue checkout): prints the table and writes
    benchmarks/results/TOPIC.* with peers measured in the same run."""
    known = topics()
    if topic not in known:  # also keeps the topic from naming a path outside benchmarks/
        where = f"known: {', '.join(known)}" if known else f"no benchmarks under {BENCHMARKS}"
        raise CliError(f"unknown benchmark {topic!r}; {where} (benchmarks need a checkout)")
    script = BENCHMARKS / f"bench_{topic}.py"
    done = subprocess.run([sys.executable, str(script), *(["--quick"] if quick else []),
                           "--threads", str(threads)], check=False)
    if done.returncode:  # a child killed by signal N returns -N: the shell's 128 + N
        raise typer.Exit(done.returncode if done.returncode > 0 else 128 - done.returncode)


def register(app: typer.Typer) -> None:
    """Add ``bench`` to the app."""
    app.command()(bench)
