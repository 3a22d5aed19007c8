"""The command line end to end: every command's --help, the report, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from kexue.cli import app
from kexue.experiments import EXPERIMENTS

runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["report"], ["run"], ["list"], ["bench"]])
def test_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_list_names_every_experiment():
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    for name in EXPERIMENTS:
        assert name in result.output


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kexue", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize(
    "args, words",
    [
        (["run", "no_such_thing"], ["no_such_thing", "known:"]),
        (["run"], ["Missing argument"]),
        (["report", "--threads", "0"], ["--threads"]),
        (["frobnicate"], ["frobnicate"]),
        (["bench", "no_such_topic"], ["no_such_topic", "attention", "train"]),
    ],
)
def test_bad_input_is_one_line_error(tmp_path, args, words):
    proc = _cli(*args, "--out", str(tmp_path)) if args[0] in ("run", "report") and len(args) > 1 \
        else _cli(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kexue: error:"), proc.stderr
    for word in words:
        assert word in lines[0]


def test_out_that_is_a_file_fails_before_running(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    proc = _cli("run", "attention_maps", "--out", str(target))
    assert proc.returncode == 2 and "not a directory" in proc.stderr
    assert target.read_text() == "x"


@pytest.mark.slow
def test_report_runs_every_experiment(tmp_path):
    """The main job in quick mode: every claim holds, every figure and the page are written.

    Claims about wall-clock speed (``TIMED`` experiments) are measured, not asserted: shared
    cores can slow any one call.
    """
    proc = _cli("report", "--out", str(tmp_path), "--seed", "0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = json.loads((tmp_path / "results.json").read_text())
    assert [r["name"] for r in records] == list(EXPERIMENTS)
    page = (tmp_path / "index.html").read_text()
    for r in records:
        assert r["claim_holds"] or getattr(EXPERIMENTS[r["name"]], "TIMED", False), (
            r["name"], r["summary"])
        for key in ("seed", "config", "torch", "device", "git_sha"):
            assert key in r
        for fig in r["figures"]:
            assert (tmp_path / fig).stat().st_size > 1000
            assert fig in page
