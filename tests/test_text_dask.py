"""The Dask backend (kexue.text._dask): counts on a 2-worker LocalCluster bit-identical to the
serial engine on file shards the workers read themselves; spill removed; errors; the CLI.

One LocalCluster (2 worker processes, 1 thread each) serves the whole module; its workers get
a private temporary directory, so the spill check sees only this module's runs."""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from kexue.cli import main  # noqa: E402
from kexue.text import data  # noqa: E402
from kexue.text._dask import DaskDriver, dask_driver  # noqa: E402
from kexue.text._drivers import MemoryShard  # noqa: E402
from kexue.text.ngrams import count_ngrams  # noqa: E402
from kexue.text.shards import plan_shards, word_counts  # noqa: E402
from kexue.text.vocab import discover  # noqa: E402

MAX_N, MIN_COUNT = 4, 3


@pytest.fixture(scope="module")
def spill_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("worker-tmp")


@pytest.fixture(scope="module")
def client(spill_dir):
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        silence_logs=40, env={"TMPDIR": str(spill_dir)},
    ) as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Plain text, gzip and JSON lines (a little mixed script): the texts and their files."""
    root = tmp_path_factory.mktemp("corpus")
    climate = data.climate()[:400]
    reviews = [r + " PM2.5 5G" if i % 7 == 0 else r for i, r in enumerate(data.reviews()[:900])]
    (root / "climate.txt").write_text("\n".join(climate) + "\n", encoding="utf-8")
    with gzip.open(root / "reviews.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(reviews[:600]))
    rows = (json.dumps({"text": t}, ensure_ascii=False) for t in reviews[600:])
    (root / "rest.jsonl").write_text("\r\n".join(rows), encoding="utf-8")
    paths = [root / "climate.txt", root / "reviews.txt.gz", root / "rest.jsonl"]
    return climate + reviews, paths


def _levels(table):
    return [(table.codes(n).tolist(), table.counts(n).tolist())
            for n in range(1, table.max_n + 1)]


def test_counts_and_terms_identical_to_the_serial_engine(client, corpus, spill_dir):
    texts, paths = corpus
    plan = plan_shards(paths, shard_bytes=150_000)  # several shards of the plain files
    assert len(plan) >= 5 and any(p.compressed for s in plan for p in s.pieces)
    serial = count_ngrams(texts, MAX_N, MIN_COUNT)
    on_dask = count_ngrams(list(plan), MAX_N, MIN_COUNT, scheduler=client)
    assert on_dask.stats["shards"] == len(plan) and on_dask.stats["spill_bytes"]
    assert on_dask.total_chars == serial.total_chars
    assert on_dask.alphabet == serial.alphabet and "PM2.5" in on_dask.alphabet.atoms
    assert _levels(on_dask) == _levels(serial)
    # the spill lived on the workers' disks and is gone
    assert client.run(lambda: __import__("tempfile").gettempdir()) == {
        w: str(spill_dir) for w in client.scheduler_info()["workers"]}
    assert [p.name for p in spill_dir.iterdir() if p.name.startswith("kexue-")] == []
    # the same term list from discover, and the same segmentation counts
    vocab = discover(texts, min_count=MIN_COUNT, max_len=MAX_N - 1)
    with dask_driver(client) as driver:
        assert isinstance(driver, DaskDriver) and driver.parallelism == 2
        vocab_dask = discover(list(plan), min_count=MIN_COUNT, max_len=MAX_N - 1,
                              scheduler=driver)
        assert vocab_dask.rows() == vocab.rows() and len(vocab.rows()) > 50
        assert word_counts(vocab, list(plan), driver) == vocab.word_counts(texts)


def test_driver_places_tasks_reduces_as_a_tree_and_broadcasts(client, corpus):
    _, paths = corpus
    plan = list(plan_shards(paths, shard_bytes=150_000))
    driver = DaskDriver(client)
    # an order-keeping fold shows the tree: every leaf once, depth O(log k) (a chain per
    # worker, merging each result into the last as it comes, goes deeper: the leaves finish
    # 3 ms apart, so the merges keep up with them)
    leaves = [MemoryShard(f"leaf{i:02d}", []) for i in range(32)]
    tree = driver.reduce(_pair, driver.map(_slow_key, leaves))  # results come one by one
    assert sorted(re.findall(r"leaf\d+", tree)) == [s.key for s in leaves]
    depth = max(tree[:i].count("(") - tree[:i].count(")") for i in range(len(tree)))
    # per worker a binary counter (ranks <= log2 16), then the few left: log2 32 + 2 = 7
    assert depth <= math.floor(math.log2(len(leaves))) + 2
    first = driver.gather(driver.map(_worker, plan))
    big = driver.broadcast(np.arange(10))
    again = driver.gather(driver.map(_worker, plan, big))
    assert first == [w for w, _ in again] and len(set(first)) == 2  # each shard stays home
    assert {s for _, s in again} == {45}
    with pytest.raises(ValueError, match="empty"):
        driver.reduce(_pair, [])


def _slow_key(shard):
    time.sleep(0.003 * int(shard.key[4:]))
    return shard.key


def _pair(a, b):
    return f"({a} {b})"


def _worker(shard, arr=None):
    from distributed import get_worker

    return get_worker().address if arr is None else (get_worker().address, int(arr.sum()))


def test_a_workers_read_error_names_the_file_and_line(client, tmp_path):
    path = tmp_path / "bad.txt"
    lines = ["气候变化"] * 500
    lines[400] = "坏\udcff"
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogateescape"))
    plan = list(plan_shards(path, shard_bytes=2000))
    assert len(plan) > 2
    with pytest.raises(ValueError, match=r"bad\.txt:401: invalid UTF-8"):
        count_ngrams(plan, 3, 2, scheduler=client)
    assert len(count_ngrams(list(plan_shards(path, errors="skip", shard_bytes=2000)), 3, 2,
                            scheduler=client)) > 0


def test_cli_scheduler_end_to_end(client, corpus, tmp_path, capsys, monkeypatch):
    """``--scheduler tcp://...`` against the module's cluster: the TSV equals the local run's."""
    _, paths = corpus
    address = client.scheduler.address
    outputs = []
    for extra in ([], ["--scheduler", address, "--shard-mb", "1"]):
        tsv = tmp_path / f"out{len(outputs)}.tsv"
        code, out, err = _kexue(capsys, monkeypatch, "vocab", "discover", *map(str, paths),
                                "--min-count", "3", "-o", str(tsv), *extra)
        assert code == 0, err
        outputs.append(tsv.read_text(encoding="utf-8"))
        assert "3 input(s)" in out
    assert outputs[0] == outputs[1] and outputs[0].count("\n") > 50
    code, _, err = _kexue(capsys, monkeypatch, "vocab", "contrast", str(paths[0]), "--general",
                          str(paths[1]), "--scheduler", address, "--min-count", "3", "--top", "3")
    assert code == 0, err


def test_cli_errors_are_one_line(client, capsys, monkeypatch, tmp_path):
    import kexue.text._dask as dask_module

    monkeypatch.setattr(dask_module, "CONNECT_TIMEOUT", 0.5)
    with _free_port() as port:
        code, _, err = _kexue(capsys, monkeypatch, "vocab", "discover", "--scheduler",
                              f"tcp://127.0.0.1:{port}")
    assert code == 2 and err.count("\n") == 1
    assert f"tcp://127.0.0.1:{port} within 0.5 s" in err
    monkeypatch.setitem(sys.modules, "distributed", None)
    code, _, err = _kexue(capsys, monkeypatch, "vocab", "discover", "--scheduler", "local:2")
    assert code == 2 and "pip install 'kexue[dask]'" in err and err.count("\n") == 1


def _kexue(capsys, monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", ["kexue", *args])
    with pytest.raises(SystemExit) as done:
        main()
    captured = capsys.readouterr()
    return done.value.code, captured.out, captured.err


class _free_port:
    """A port that nothing listens on (bound, not listening, while in use)."""

    def __enter__(self):
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc):
        self.sock.close()


def test_kexue_text_imports_without_dask():
    code = textwrap.dedent("""
        import sys
        sys.modules["dask"] = sys.modules["distributed"] = None  # importing either fails
        import kexue.text, kexue.text.shards, kexue.text.ngrams, kexue.text._dask, kexue.cli.vocab
        from kexue.text._dask import dask_driver
        try:
            dask_driver("local:1").__enter__()
        except ImportError as e:
            print(e)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=os.getcwd())
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'kexue[dask]'" in proc.stdout
