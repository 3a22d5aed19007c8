"""Fault injection: a user's finished work survives kill -9 during a save, a full disk, two
processes at once, and a failing or interrupted experiment inside a report.

Each test runs the real ``kexue`` command in a subprocess. Faults are injected from outside
the library: a wrapper script slows ``torch.save`` (so a ``kill -9`` lands mid-write) or lowers
``RLIMIT_FSIZE`` after the first checkpoint (the kernel then refuses the next write, as a full
disk would), and fake experiments raise, fail or interrupt themselves.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

EPOCHS = "3"
RUN = "glann-digits-seed0"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

# Runs `kexue` after patching: FAULT=slow-save-N sleeps inside the N-th torch.save, its bytes
# written to the temporary but not yet moved into place; FAULT=fsize-after-1:BYTES lowers
# RLIMIT_FSIZE to BYTES once the first checkpoint is on disk, so the second save fails like a
# full disk.
TRAIN_WRAPPER = textwrap.dedent("""
    import os, resource, signal, sys, time
    import torch
    import kexue.cli.train as train
    fault = os.environ.get("FAULT", "")
    calls = [0]
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        calls[0] += 1
        real_save(obj, f, *args, **kwargs)
        if fault == f"slow-save-{calls[0]}":
            f.flush()
            print(f"SAVING {calls[0]}", flush=True)
            time.sleep(120)

    torch.save = save
    real_checkpoint = train.save_checkpoint

    def checkpoint(path, payload):
        real_checkpoint(path, payload)
        if fault.startswith("fsize-after-1:"):
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
            limit = int(fault.split(":")[1])
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    train.save_checkpoint = checkpoint
    from kexue.cli import main
    sys.argv = ["kexue", *sys.argv[1:]]
    main()
""")


def _wrapper(tmp: Path, text: str, name: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def _train(tmp: Path, out: Path, *extra: str, fault: str = "",
           wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    script = _wrapper(tmp, TRAIN_WRAPPER, "train_wrapper.py")
    args = [sys.executable, str(script), "train", "glann", "--epochs", EPOCHS, "--out",
            str(out), *extra]
    env = {**ENV, "FAULT": fault}
    if not wait:
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, env=env)
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)


def _wait_for(proc: subprocess.Popen, word: str, timeout: float = 600) -> None:
    """Block until ``proc`` prints ``word`` on stdout (a reader thread keeps the deadline)."""
    import threading

    seen = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            if word in line:
                seen.set()
                return

    threading.Thread(target=read, daemon=True).start()
    if not seen.wait(timeout):
        proc.kill()
        raise AssertionError(f"no {word!r} within {timeout} s (exit {proc.poll()})")


@pytest.fixture
def children():
    """Popen children of a test, killed whatever the test's outcome."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _assert_same(a, b, where="state"):
    """Bit-for-bit equality of two checkpoint trees."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """The checkpoint of a run that nothing disturbed."""
    tmp = tmp_path_factory.mktemp("clean")
    proc = _train(tmp, tmp / "runs")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return _load(tmp / "runs" / RUN / "checkpoint.pt")


def _temporaries(run: Path) -> list[Path]:
    return sorted(run.glob(".checkpoint.pt.*.tmp"))


def test_kill_9_during_a_save_keeps_the_previous_checkpoint(tmp_path, uninterrupted, children):
    out = tmp_path / "runs"
    proc = _train(tmp_path, out, fault="slow-save-2", wait=False)
    children.append(proc)
    _wait_for(proc, "SAVING 2")  # epoch 2's checkpoint is half written
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    run = out / RUN
    assert _temporaries(run), "the torn write should be a temporary, not the checkpoint"
    saved = _load(run / "checkpoint.pt")  # the previous good checkpoint, readable
    assert saved["state"]["epoch"] == 1
    done = _train(tmp_path, out, "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming at epoch 1 of 3" in done.stdout
    assert not _temporaries(run), "stale temporaries are removed on the next start"
    _assert_same(_load(run / "checkpoint.pt"), uninterrupted)


@pytest.mark.parametrize("limit", [1000, 1_500_000])  # in Python's write, in torch's writer
def test_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, uninterrupted, limit):
    out = tmp_path / "runs"
    proc = _train(tmp_path, out, fault=f"fsize-after-1:{limit}")
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kexue: error:"), proc.stderr
    assert "checkpoint" in lines[-1] and "File too large" in lines[-1], proc.stderr
    assert "previous checkpoint is kept" in lines[-1]
    run = out / RUN
    assert not _temporaries(run)
    assert _load(run / "checkpoint.pt")["state"]["epoch"] == 1
    done = _train(tmp_path, out, "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_same(_load(run / "checkpoint.pt"), uninterrupted)


def test_two_trainings_in_one_run_directory(tmp_path, children):
    out = tmp_path / "runs"
    first = _train(tmp_path, out, fault="slow-save-1", wait=False)
    children.append(first)
    _wait_for(first, "SAVING 1")  # holds the run's lock
    second = _train(tmp_path, out, "--overwrite")
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use by another kexue process" in lines[0], second.stderr
    first.send_signal(signal.SIGKILL)  # the kernel drops the flock
    first.wait(timeout=60)
    third = _train(tmp_path, out, "--epochs", "1", "--overwrite")
    assert third.returncode == 0, third.stderr[-2000:]


def test_a_finished_run_is_not_overwritten_silently(tmp_path):
    out = tmp_path / "runs"
    run = out / RUN
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(b"finished work")
    proc = _train(tmp_path, out)
    assert proc.returncode == 2
    assert "--resume" in proc.stderr and "--overwrite" in proc.stderr
    assert (run / "checkpoint.pt").read_bytes() == b"finished work"


# Fake experiments (fast) through the real report command: one holds with a figure, one
# raises, one fails, one interrupts itself as Ctrl-C would.
REPORT_WRAPPER = textwrap.dedent("""
    import os, signal, sys, time
    from dataclasses import dataclass
    import kexue.experiments as ex
    from kexue.experiments.base import Anchor, Experiment, Result

    @dataclass(frozen=True)
    class C:
        n: int = 1

    def ok(c, ctx):
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots()
        ax.plot([1, 2, 3])
        ax.set_title("气候 climate")
        return Result({"x": 1.5}, True, "fine: 气候变化",
                      figures={os.environ.get("FIGURE", "curve"): fig})

    def boom(c, ctx):
        raise RuntimeError("the data package is missing: pip install nothing")

    if os.environ.get("OK_RAISES"):
        ok = boom

    def fails(c, ctx):
        import numpy as np
        from kexue.experiments.base import Table
        table = Table("cells", ("a", "b"), ((np.int64(3), float("nan")),))
        return Result({"x": 0.0}, False, "does not hold", tables=(table,))

    def interrupt(c, ctx):
        # Python's own Ctrl-C handler, as in a terminal: a parent started in the background
        # without job control hands SIGINT down ignored. raise() signals this (main) thread.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.raise_signal(signal.SIGINT)
        time.sleep(30)

    def lowp(c, ctx):  # declares bf16: says what it was handed
        return Result({"precision": ctx.precision, "device": ctx.device.type}, True, "bf16")

    fns = {"ok": ok, "boom": boom, "fails": fails, "interrupt": interrupt, "slow": fails,
           "lowp": lowp}
    exps = {n: Experiment(name=n, title=n, note="https://kexue.fm/archives/1", claim=n,
                          threshold=None, anchor=Anchor(None, "a test"), quick=C(),
                          full=C(2), run=f, timed=n == "slow",
                          precisions=("fp32", "bf16") if n == "lowp" else ("fp32",))
            for n, f in fns.items()}
    ex.NAMES = tuple(exps)
    ex.EXPERIMENTS = exps
    from kexue.cli import main
    sys.argv = ["kexue", *sys.argv[1:]]
    main()
""")


def _report(tmp: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    script = _wrapper(tmp, REPORT_WRAPPER, "report_wrapper.py")
    return subprocess.run([sys.executable, str(script), *args], capture_output=True,
                          text=True, env={**ENV, **(env or {})}, timeout=600)


def _ledger(out: Path) -> dict[str, dict]:
    return {r["name"]: r for r in json.loads((out / "results.json").read_text("utf-8"))}


def test_a_failing_experiment_keeps_the_others(tmp_path):
    out = tmp_path / "report"
    proc = _report(tmp_path, "report", "--out", str(out), "--only", "boom", "--only", "ok")
    assert proc.returncode == 1, proc.stderr
    ledger = _ledger(out)
    assert ledger["ok"]["status"] == "holds" and ledger["ok"]["metrics"] == {"x": 1.5}
    assert (out / "ok_curve.png").stat().st_size > 1000
    assert ledger["boom"]["status"] == "error"
    assert "pip install nothing" in ledger["boom"]["error"]["message"]
    assert "RuntimeError" in ledger["boom"]["error"]["traceback"]
    page = (out / "index.html").read_text("utf-8")
    assert "Traceback" in page and "ok_curve.png" in page
    assert list(ledger) == ["ok", "boom"]  # the registry's order
    assert ledger["ok"]["provenance"]["seed"] == 0 and "date" in ledger["ok"]["provenance"]


def test_exit_status_says_whether_every_claim_holds(tmp_path):
    assert _report(tmp_path, "run", "ok", "--out", str(tmp_path / "a")).returncode == 0
    assert _report(tmp_path, "run", "fails", "--out", str(tmp_path / "b")).returncode == 1
    # a failed wall-clock claim is shown, but sets 1 only with --strict-timing
    timed = _report(tmp_path, "run", "slow", "--out", str(tmp_path / "c"))
    assert timed.returncode == 0 and _ledger(tmp_path / "c")["slow"]["status"] == "fails"
    assert _report(tmp_path, "run", "slow", "--out", str(tmp_path / "c"),
                   "--strict-timing").returncode == 1


def test_records_say_where_and_in_what_precision_they_ran(tmp_path):
    out = tmp_path / "report"
    proc = _report(tmp_path, "report", "--out", str(out), "--only", "ok", "--only", "lowp",
                   "--only", "boom", "--precision", "bf16", "--device", "auto")
    assert proc.returncode == 1, proc.stderr  # boom raises
    ledger = _ledger(out)
    assert ledger["lowp"]["metrics"] == {"precision": "bf16", "device": "cpu"}  # CPU only
    assert ledger["lowp"]["provenance"]["precision"] == "bf16"
    for name in ("ok", "boom"):  # fp32 only: run (or failed) in fp32, and the record says so
        assert ledger[name]["provenance"]["precision"] == "fp32", name
        assert ledger[name]["provenance"]["device"].startswith("cpu:"), name
    assert "kexue: note: ok, boom run in fp32" in proc.stderr
    page = (out / "index.html").read_text("utf-8")
    assert "cpu bf16" in page and "cpu fp32" in page  # the overview's "ran on" column


def test_ctrl_c_keeps_the_finished_part(tmp_path):
    out = tmp_path / "report"
    proc = _report(tmp_path, "report", "--out", str(out), "--only", "ok", "--only",
                   "interrupt", "--only", "fails")
    assert proc.returncode == 130, proc.stderr
    ledger = _ledger(out)
    assert list(ledger) == ["ok"] and ledger["ok"]["status"] == "holds"
    assert "interrupted" in proc.stderr


def test_run_upserts_into_an_existing_report_without_orphans(tmp_path):
    out = tmp_path / "report"
    assert _report(tmp_path, "report", "--out", str(out), "--only", "ok", "--only",
                   "fails").returncode == 1
    before = _ledger(out)
    proc = _report(tmp_path, "run", "ok", "--out", str(out), "--seed", "3",
                   env={"FIGURE": "renamed"})
    assert proc.returncode == 0, proc.stderr
    after = _ledger(out)
    assert after["fails"] == before["fails"]  # the other row is kept as it was
    assert after["fails"]["tables"][0]["rows"] == [[3, "nan"]]  # numpy and NaN cells
    assert after["ok"]["provenance"]["seed"] == 3
    assert after["ok"]["figures"] == ["ok_renamed.png"]
    assert not (out / "ok_curve.png").exists(), "the replaced record's figure is removed"
    assert (out / "ok_renamed.png").exists()


def test_report_under_a_non_utf8_locale(tmp_path):
    out = tmp_path / "report"
    c_locale = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": "ascii",
                "PYTHONCOERCECLOCALE": "0"}
    proc = _report(tmp_path, "run", "ok", "--out", str(out), env=c_locale)
    assert proc.returncode == 0, proc.stderr
    assert _ledger(out)["ok"]["summary"] == "fine: 气候变化"  # UTF-8 on disk whatever the locale
    proc = _report(tmp_path, "run", "ok", "--out", str(out), "--json", env=c_locale)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["summary"] == "fine: 气候变化"  # escaped, never "?"


def test_a_rerun_that_raises_keeps_the_last_finished_result(tmp_path):
    out = tmp_path / "report"
    assert _report(tmp_path, "run", "ok", "--out", str(out)).returncode == 0
    proc = _report(tmp_path, "run", "ok", "--out", str(out), env={"OK_RAISES": "1"})
    assert proc.returncode == 1
    record = _ledger(out)["ok"]
    assert record["status"] == "error"
    assert record["previous"]["status"] == "holds"
    assert record["previous"]["figures"] == ["ok_curve.png"]
    assert (out / "ok_curve.png").exists()
    assert "The last finished run" in (out / "index.html").read_text("utf-8")
    proc = _report(tmp_path, "run", "ok", "--out", str(out), env={"FIGURE": "renamed"})
    assert proc.returncode == 0, proc.stderr
    assert _ledger(out)["ok"]["figures"] == ["ok_renamed.png"]
    assert not (out / "ok_curve.png").exists(), "the kept result's figure is not orphaned"


def test_files_kexue_did_not_write_are_never_touched(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "index.html").write_text("<html>my own page</html>")
    proc = _report(tmp_path, "run", "ok", "--out", str(out))
    assert proc.returncode == 2 and "not a kexue report" in proc.stderr
    assert (out / "index.html").read_text() == "<html>my own page</html>"
    # a ledger whose record names a file of the user's as its figure
    (out / "index.html").unlink()
    assert _report(tmp_path, "run", "ok", "--out", str(out)).returncode == 0
    ledger = json.loads((out / "results.json").read_text("utf-8"))
    ledger[0]["figures"].append("notes.txt")
    (out / "results.json").write_text(json.dumps(ledger), encoding="utf-8")
    (out / "notes.txt").write_text("mine")
    assert _report(tmp_path, "run", "ok", "--out", str(out), env={"FIGURE": "b"}).returncode == 0
    assert (out / "notes.txt").read_text() == "mine"
    # the old ledger format is refused, not misread
    (out / "results.json").write_text(json.dumps([{"name": "ok", "claim_holds": True}]),
                                      encoding="utf-8")
    proc = _report(tmp_path, "run", "ok", "--out", str(out))
    assert proc.returncode == 2 and "not a kexue report ledger" in proc.stderr


def test_stale_temporaries_and_odd_lock_files(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    stale = out / ".results.json.abcd1234.tmp"
    stale.write_text("torn")
    assert _report(tmp_path, "run", "ok", "--out", str(out)).returncode == 0
    assert not stale.exists(), "a killed writer's temporary is removed under the lock"
    (out / ".kexue.lock").unlink()
    (out / ".kexue.lock").mkdir()
    proc = _report(tmp_path, "run", "ok", "--out", str(out))
    assert proc.returncode == 2 and "cannot lock" in proc.stderr.strip().splitlines()[-1]
    (out / ".kexue.lock").rmdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (out / ".kexue.lock").symlink_to(victim)  # never followed (and so never truncated)
    proc = _report(tmp_path, "run", "ok", "--out", str(out))
    assert proc.returncode == 2
    assert victim.read_text() == "keep me"


def test_missing_data_package_is_an_error_row(tmp_path):
    """A real experiment whose data package is shadowed by an empty one on PYTHONPATH."""
    shadow = tmp_path / "shadow" / "envtext"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "kexue", "run", "domain_vocab", "--out",
                           str(out)], capture_output=True, text=True, timeout=600,
                          env={**ENV, "PYTHONPATH": str(tmp_path / "shadow")})
    assert proc.returncode == 1, proc.stderr
    record = _ledger(out)["domain_vocab"]
    assert record["status"] == "error" and "pip install --no-deps envtext" in record["summary"]
