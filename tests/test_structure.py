"""The import structure keeps one direction: the library never reaches up into the front ends.

Library modules (everything under ``kexue/`` except ``cli/``, ``experiments/``, ``report.py``
and ``__main__.py``) never import the CLI, the experiments, the report, matplotlib, rich or
typer; the experiments never import the CLI. Checked on the source with :mod:`ast`, so an
import inside a function, under ``if TYPE_CHECKING:``, a relative one, or a constant
``importlib.import_module("...")`` counts as much as one at the top of the file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kexue"

FRONT_ENDS = ("kexue.cli", "kexue.experiments", "kexue.report", "kexue.__main__")
#: Who may not import what: (rule name, modules it covers, forbidden imports).
LIBRARY_FORBIDDEN = ("kexue.cli", "kexue.experiments", "kexue.report", "kexue.__main__",
                     "matplotlib", "rich", "typer")
EXPERIMENTS_FORBIDDEN = ("kexue.cli", "kexue.__main__")


def _within(name: str, prefixes: tuple[str, ...]) -> str | None:
    """The prefix that ``name`` is (or is a submodule of), or None."""
    for prefix in prefixes:
        if name == prefix or name.startswith(prefix + "."):
            return prefix
    return None


def module_name(path: Path) -> str:
    """``kexue/train/data.py`` -> ``kexue.train.data``; a package's ``__init__`` -> the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def forbidden_for(module: str) -> tuple[str, ...]:
    """The imports ``module`` may not make (nothing is forbidden to the CLI and the report)."""
    if _within(module, ("kexue.experiments",)):
        return EXPERIMENTS_FORBIDDEN
    if _within(module, FRONT_ENDS):
        return ()
    return LIBRARY_FORBIDDEN


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names, relative levels resolved."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_names(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """Every (line, module) that ``source`` imports anywhere in its tree.

    ``from a import b`` yields ``a`` and ``a.b`` (``b`` may be a submodule); a call
    ``importlib.import_module("x")`` or ``__import__("x")`` with a constant string yields ``x``.
    """
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names
                      if alias.name != "*"]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            arg = node.args[0]
            if (name in ("import_module", "__import__") and isinstance(arg, ast.Constant)
                    and isinstance(arg.value, str)):
                found.append((node.lineno, arg.value))
    return found


def violations(source: str, module: str, path: str, is_package: bool = False) -> list[str]:
    """One line per forbidden import in ``source``: ``path:line: module imports name``."""
    forbidden = forbidden_for(module)
    lines = source.splitlines()
    out = []
    seen = set()
    for line, name in imported_names(source, module, is_package):
        prefix = _within(name, forbidden)
        if prefix is None or (line, prefix) in seen:
            continue
        seen.add((line, prefix))
        text = lines[line - 1].strip() if line <= len(lines) else ""
        out.append(f"{path}:{line}: {module} imports {name} ({prefix} is off limits to it): "
                   f"{text}")
    return out


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_library_never_imports_the_front_ends_and_experiments_never_import_the_cli():
    assert len(_sources()) > 20  # the walk found the package
    found = []
    for path in _sources():
        found += violations(path.read_text(encoding="utf-8"), module_name(path),
                            str(path.relative_to(ROOT)), is_package=path.name == "__init__.py")
    assert not found, "imports against the one direction:\n" + "\n".join(found)


PLANTED = """\
from __future__ import annotations
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def draw():
    import rich.console
    from ..cli import _common
    from kexue import report
    return importlib.import_module("typer")
"""


def test_the_checker_catches_planted_imports_at_any_depth():
    found = violations(PLANTED, "kexue.train.planted", "kexue/train/planted.py")
    assert [f.split(":")[1] for f in found] == ["7", "11", "12", "13", "14"], found
    assert "kexue/train/planted.py:7: kexue.train.planted imports matplotlib.figure" in found[0]
    assert "imports kexue.cli " in found[2] and found[2].endswith("from ..cli import _common")
    assert "kexue.report" in found[3]


@pytest.mark.parametrize(("module", "source", "bad"), [
    ("kexue.experiments.demo", "import matplotlib.pyplot as plt\nimport kexue.train\n", False),
    ("kexue.experiments.demo", "def f():\n    from kexue.cli._common import out\n", True),
    ("kexue.experiments", "from ..cli import out\n", True),  # the package's relative import
    ("kexue.experiments", "from .cli import out\n", False),  # kexue.experiments.cli
    ("kexue.cli.text", "import typer\nfrom kexue.experiments import EXPERIMENTS\n", False),
    ("kexue.report", "import matplotlib\nimport rich\n", False),
    ("kexue", "from . import report\n", True),
    ("kexue.train.data", "from kexue.train import capture\nimport richer\n", False),
])
def test_the_rules_by_module(module, source, bad):
    is_package = module in ("kexue", "kexue.experiments")
    assert bool(violations(source, module, "x.py", is_package)) == bad


def test_importing_the_library_leaves_the_heavy_torch_subsystems_alone():
    # torch.distributed.tensor (DTensor) and torch._dynamo take about a second to import, paid
    # by every process (each CLI call, each report subprocess): kexue imports them only when
    # a DTensor exists or a compiled call runs.
    import subprocess
    import sys

    code = ("import sys, kexue, kexue.train, kexue.attention, kexue.integrations; "
            "print(sorted(m for m in ('torch._dynamo', 'torch.distributed.tensor', "
            "'torch.distributed.fsdp') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]", out.stdout
