"""``kexue list``, ``kexue run NAME`` and ``kexue report``: the claims of the notes, rerun and
kept in a ledger (``OUT/results.json`` and ``OUT/index.html``, rewritten after every
experiment)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from kexue.cli._common import (
    CliError,
    Device,
    Json,
    Precision,
    RunFailed,
    Seed,
    Threads,
    check_output_dir,
    choices,
    dumps,
    err,
    first_line,
    locked,
    make_dir,
    out,
    progress,
    resolve_device_option,
    set_threads,
)
from kexue.experiments import NAMES

Name = choices("Name", NAMES)
Full = Annotated[bool, typer.Option("--full", help="Full-size runs instead of quick mode.")]
Out = Annotated[Path, typer.Option("--out", help="Report directory: index.html, figures and "
                                   "results.json (other experiments' rows there are kept).")]
StrictTiming = Annotated[bool, typer.Option(
    "--strict-timing", help="Let a failed wall-clock (timed) claim set exit status 1; by "
    "default its verdict is shown only, since shared cores make it flaky.")]
DeviceOption = Annotated[Device, typer.Option(  # type: ignore[valid-type]
    "--device", help="Where the experiments run; auto: CUDA when available. Experiments that "
    "cannot use CUDA (text, scipy, CPU timing) run on the CPU; each record says where it ran. "
    "Default cpu, where the claims' lines and the README's figures were measured.")]
PrecisionOption = Annotated[Precision, typer.Option(  # type: ignore[valid-type]
    "--precision", help="bf16: training and evaluation forward passes under bfloat16 "
    "autocast, in the experiments that honour it (the others run fp32; each record says "
    "which).")]


def _failed(record: dict[str, Any], strict_timing: bool) -> bool:
    if record["status"] == "error":
        return True
    return record["status"] == "fails" and (strict_timing or not record.get("timed"))


def _stub(experiment: Any, full: bool, seed: int, device: Any, precision: str,
          start: float) -> dict[str, Any]:
    """The provenance of a run that raised (run_experiment made none)."""
    import dataclasses

    from kexue.experiments.base import provenance

    ctx = experiment.context(seed, device, precision)
    return dataclasses.asdict(provenance(experiment, full=full, seed=seed, device=ctx.device,
                                         precision=ctx.precision,
                                         seconds=time.perf_counter() - start))


def _overview(records: list[dict[str, Any]]) -> Table:
    table = Table(title="kexue report")
    table.add_column("experiment", no_wrap=True)
    for col in ("verdict", "result", "s"):
        table.add_column(col, overflow="fold")
    marks = {"holds": "[green]holds[/]", "fails": "[red]does not hold[/]",
             "error": "[red]error[/]"}
    for r in records:
        mark = marks[r["status"]] + (" (timed)" if r.get("timed") else "")
        seconds = (r.get("provenance") or {}).get("seconds")
        table.add_row(r["name"], mark, escape(r["summary"]),
                      f"{seconds:.1f}" if isinstance(seconds, float) else "")
    return table


def _figure_style() -> None:
    """Headless figures, with CJK text drawn by the first installed of these fonts."""
    import matplotlib

    matplotlib.use("Agg")
    fonts = ["DejaVu Sans", "Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Zen Hei",
             "PingFang SC", "Microsoft YaHei", "SimHei"]
    matplotlib.rcParams["font.sans-serif"] = [
        *fonts, *(f for f in matplotlib.rcParams["font.sans-serif"] if f not in fonts)]


def _run_one(ledger: Any, experiment: Any, full: bool, seed: int, device: Any, precision: str,
             out_dir: Path) -> dict:
    """Run one experiment into the ledger: its record, or its error row."""
    from kexue.experiments import run_experiment

    start = time.perf_counter()

    def error_row(error: Exception) -> dict:
        err.print(f"kexue: {experiment.name} raised {type(error).__name__}: "
                  f"{first_line(error)}", markup=False)
        return ledger.add_error(experiment, error,
                                _stub(experiment, full, seed, device, precision, start))

    try:
        try:
            result, provenance = run_experiment(experiment, full=full, seed=seed, device=device,
                                                precision=precision)
        except KeyboardInterrupt:
            raise
        except Exception as error:  # one failing experiment keeps the others
            return error_row(error)
        try:
            return ledger.add(experiment, result, provenance)
        except OSError:
            raise
        except Exception as error:  # e.g. a value JSON cannot hold: nothing was written
            return error_row(error)
    except OSError as error:  # the ledger itself could not be written
        raise RunFailed(f"could not write the report into {out_dir}: "
                        f"{error.strerror or error}; finished experiments are kept "
                        "there") from error


def _fallbacks(names: list[str], device: Any, precision: str) -> None:
    """One stderr line naming the experiments that will not run where or how asked."""
    from kexue.experiments import EXPERIMENTS

    for what, asked, declared in (("device", device.type, "devices"),
                                  ("precision", precision, "precisions")):
        off = [n for n in names if asked not in getattr(EXPERIMENTS[n], declared)]
        if off:
            where = "on the CPU" if what == "device" else "in fp32"
            err.print(f"kexue: note: {', '.join(off)} run {where} (they cannot use --{what} "
                      f"{asked}; their records say so)", markup=False)


def run_many(names: list[str], *, full: bool, seed: int, out_dir: Path, threads: int,
             as_json: bool, strict_timing: bool, device: str = "cpu",
             precision: str = "fp32") -> int:
    """Run ``names`` into the ledger of ``out_dir`` on ``device`` ("cpu", "cuda" or "auto")
    in ``precision``; return the exit status (0 all hold, 1 a claim failed or an experiment
    errored, 130 interrupted — the finished part saved)."""
    from kexue.experiments import EXPERIMENTS
    from kexue.report import Ledger

    resolved = resolve_device_option(device)  # before anything is written
    check_output_dir(out_dir)
    for name in ("results.json", "index.html"):
        if (out_dir / name).exists() and not (out_dir / name).is_file():
            raise CliError(f"--out {out_dir}: {out_dir / name} is not a file")
    make_dir(out_dir)
    set_threads(threads)
    _figure_style()
    with locked(out_dir):
        from kexue._io import remove_stale

        remove_stale(out_dir)  # temporaries of a killed report
        try:
            ledger = Ledger(out_dir, order=NAMES)
        except ValueError as error:
            raise CliError(f"--out: {error}") from error
        records: list[dict[str, Any]] = []
        interrupted = False
        _fallbacks(names, resolved, precision)
        with progress() as bar:
            task = bar.add_task("experiments", total=len(names))
            try:
                for name in names:
                    experiment = EXPERIMENTS[name]
                    bar.update(task, description=f"running {name}")
                    records.append(_run_one(ledger, experiment, full, seed, resolved,
                                            precision, out_dir))
                    bar.advance(task)
            except KeyboardInterrupt:  # the ledger on disk holds every finished experiment
                interrupted = True
    if as_json:
        print(dumps(records))
    else:
        out.print(_overview(records))
        if records:
            out.print(f"report written to {out_dir / 'index.html'}", markup=False)
    if interrupted:
        err.print(f"kexue: interrupted; {len(records)} finished experiment(s) kept in "
                  f"{out_dir}", markup=False)
        return 130
    return 1 if any(_failed(r, strict_timing) for r in records) else 0


def report(
    full: Full = False,
    seed: Seed = 0,
    out_dir: Out = Path("report"),
    only: Annotated[list[Name] | None, typer.Option(  # type: ignore[valid-type]
        "--only", help="Run only these (repeat the option).")] = None,
    threads: Threads = 1,
    as_json: Json = False,
    strict_timing: StrictTiming = False,
    device: DeviceOption = "cpu",
    precision: PrecisionOption = "fp32",
) -> None:
    """Rerun every note's claim on embedded real data and write OUT/index.html with figures.

    Exit status: 0 every claim holds; 1 a claim does not hold or an experiment raised
    (timed claims only with --strict-timing); 2 a usage error (--device cuda without CUDA
    included); 130 interrupted (the finished experiments are saved)."""
    names = [n.value for n in only] if only else list(NAMES)
    raise typer.Exit(run_many(list(dict.fromkeys(names)), full=full, seed=seed,
                              out_dir=out_dir, threads=threads, as_json=as_json,
                              strict_timing=strict_timing, device=_value(device),
                              precision=_value(precision)))


def run(
    name: Annotated[Name, typer.Argument(help="Experiment name (see `kexue list`).")],  # type: ignore[valid-type]
    full: Full = False,
    seed: Seed = 0,
    out_dir: Out = Path("report"),
    threads: Threads = 1,
    as_json: Json = False,
    strict_timing: StrictTiming = False,
    device: DeviceOption = "cpu",
    precision: PrecisionOption = "fp32",
) -> None:
    """Run one experiment and upsert its row, figures and verdict into the report in OUT."""
    raise typer.Exit(run_many([name.value], full=full, seed=seed, out_dir=out_dir,
                              threads=threads, as_json=as_json, strict_timing=strict_timing,
                              device=_value(device), precision=_value(precision)))


def _value(choice: Any) -> str:
    """A choice option's string (typer hands over the Enum member, a default the string)."""
    return getattr(choice, "value", choice)


def list_(as_json: Json = False) -> None:
    """List the experiments: the claim each one checks, its threshold and published number."""
    import dataclasses

    from kexue.experiments import EXPERIMENTS

    if as_json:
        print(dumps([{"name": e.name, "title": e.title, "note": e.note, "claim": e.claim,
                      "threshold": e.threshold, "anchor": dataclasses.asdict(e.anchor),
                      "timed": e.timed, "devices": list(e.devices),
                      "precisions": list(e.precisions)} for e in EXPERIMENTS.values()]))
        return
    table = Table()
    table.add_column("name", no_wrap=True)
    for col in ("claim", "published", "note"):
        table.add_column(col, overflow="fold")
    for e in EXPERIMENTS.values():
        table.add_row(e.name, escape(e.claim), escape(e.anchor.describe()), e.note)
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command()(report)
    app.command()(run)
    app.command(name="list")(list_)
