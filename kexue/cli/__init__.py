"""The ``kexue`` command line, one module per command group.

``kexue report`` (the main job), ``run``, ``list``; ``train``; ``vocab``; ``lm`` and
``generate``; ``bench``; ``doctor``. Results go to stdout, progress and messages to stderr;
a user error is one line on stderr with exit status 2.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from typing import Annotated

import typer

from kexue.cli._common import CliError, RunFailed, err, fail_line, safe_streams

__all__ = ["app", "main"]

app = typer.Typer(
    help="kexue: techniques from the Scientific Spaces notes (kexue.fm), rerun on real data.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from kexue.experiments.base import kexue_version

        print(f"kexue {kexue_version()}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="Print the kexue version and exit.")] = False) -> None:
    """kexue: techniques from the Scientific Spaces notes (kexue.fm), rerun on real data."""


from kexue.cli import bench, doctor, experiments, text, train, vocab  # noqa: E402

for module in (experiments, train, vocab, text, bench, doctor):
    module.register(app)


def main() -> None:
    """Entry point: user errors (bad arguments too) become one line on stderr, exit status 2;
    a run that could not finish is one line with exit status 1; Ctrl-C is 130."""
    if sys.stdout is None:  # `kexue ... >&-`: results would vanish silently
        _fail("stdout is closed; redirect it to a file instead", 2)
    safe_streams()
    warnings.showwarning = _warning
    for i, arg in enumerate(sys.argv[1:], start=1):
        # what an unset $VAR gives (`--out $X`, `--out=$X`): never "the current directory"
        if arg == "" or (arg.startswith("--") and arg.endswith("=")):
            _fail(f"argument {i} ({arg!r}) is empty (an unset variable?)", 2)
    try:
        code = app(standalone_mode=False)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("kexue: interrupted", markup=False)
        sys.exit(130)
    except CliError as error:
        _fail(str(error), 2)
    except RunFailed as error:
        _fail(str(error), 1)
    except BrokenPipeError:  # the reader of stdout went away (`| head`): nothing to report
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - no flush error at exit
        sys.exit(141)  # 128 + SIGPIPE, as a shell tool killed by the pipe
    except Exception as error:
        # usage errors of the CLI framework (missing argument, bad option value, unknown
        # command) carry their own message
        if hasattr(error, "format_message") and hasattr(error, "exit_code"):
            if type(error).__name__ == "Abort":
                sys.exit(130)
            if not error.format_message():  # `kexue` alone: the help was printed
                sys.exit(0)
            _fail(error.format_message(), 2)
        raise
    sys.exit(code if isinstance(code, int) else 0)


def _warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: object = None, line: str | None = None) -> None:
    """A library warning as one line, not a source excerpt."""
    print("kexue: warning: " + " ".join(str(message).split()), file=sys.stderr)


def _fail(message: str, code: int) -> None:
    if sys.stderr is not None:
        print(fail_line(message), file=sys.stderr)
    sys.exit(code)
