"""Helpers of the CLI tests: run the real entry point in this process."""

from __future__ import annotations

import sys

import pytest

from kexue.cli import main


def kexue(capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    """Run the real entry point in this process: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["kexue", *map(str, args)])
    with pytest.raises(SystemExit) as done:
        main()
    captured = capsys.readouterr()
    return done.value.code, captured.out, captured.err


def one_line(stderr: str) -> str:
    """The one ``kexue: error:`` line of ``stderr`` (fails if there is more or less)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kexue: error:"), stderr
    return lines[0]
