"""Level-wise counting through drivers: bit-identical tables everywhere, spill kept clean.

One PoolDriver of 2 spawned processes serves the whole module, and one ProcessPoolExecutor of
1 process the ``concurrent.futures`` cases (both started at once, so their imports overlap).
"""

import multiprocessing
import operator
import os
import random
import re
import shutil
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest

from kexue.text import _drivers as drivers
from kexue.text import _ngram_engine as engine
from kexue.text._drivers import (
    ExecutorDriver,
    MemoryShard,
    PoolDriver,
    SerialDriver,
    Shard,
    _fold,
    resolve_driver,
)
from kexue.text._script import nfkc, unit_runs, units
from kexue.text.ngrams import count_ngrams


def reference(texts, max_n, min_count, script):
    """Counter over all substrings of the runs of units (NFKC), then the min_count filter."""
    c = Counter()
    for t in texts:
        for a, b in unit_runs(t, script):
            run = [nfkc(u) for u in units(t[a:b], script)]
            for n in range(1, max_n + 1):
                for i in range(len(run) - n + 1):
                    c["".join(run[i : i + n])] += 1
    return {k: v for k, v in c.items() if v >= min_count}


def as_dict(table):
    out = {}
    for n in range(1, table.max_n + 1):
        keys = ["".join(nfkc(u) for u in units(s, table.script)) for s in table.strings(n)]
        out.update(zip(keys, table.counts(n).tolist(), strict=True))
    return out


def assert_identical(a, b):
    """Every level's keys and counts, total_chars and the alphabet, to the bit."""
    assert a.max_n == b.max_n and a.total_chars == b.total_chars and a.alphabet == b.alphabet
    for lev_a, lev_b in zip(a._levels, b._levels, strict=True):
        assert lev_a.keys.dtype == lev_b.keys.dtype and lev_a.counts.dtype == lev_b.counts.dtype
        np.testing.assert_array_equal(lev_a.keys, lev_b.keys)
        np.testing.assert_array_equal(lev_a.counts, lev_b.counts)


def corpus(seed, n_texts=400):
    rng = random.Random(seed)
    pieces = list("的是中国人民大学生活了一在有，。 \n") + ["PM2.5", "ＰＭ２．５", "5G", "CO2",
                                                          "x-1"]
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 30))) for _ in range(n_texts)]


class ListShard:
    """A re-readable shard (any worker can read it again), like a file shard."""

    def __init__(self, key, texts, fail_on_read=False):
        self.key = key
        self.texts = list(texts)
        self.fail_on_read = fail_on_read

    def read(self):
        if self.fail_on_read:
            raise RuntimeError(f"cannot read {self.key}")
        return iter(self.texts)


def list_shards(texts, size):
    return [ListShard(f"part-{j}", texts[i : i + size])
            for j, i in enumerate(range(0, len(texts), size))]


@pytest.fixture(scope="module")
def spill_root(tmp_path_factory):
    """A private TMPDIR for this module (the pool's workers inherit it when spawned)."""
    root = tmp_path_factory.mktemp("spill")
    old_env, old_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = str(root)
    tempfile.tempdir = None
    yield root
    if old_env is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = old_env
    tempfile.tempdir = old_tempdir


@pytest.fixture(scope="module")
def pool(spill_root):
    with PoolDriver(2) as driver:
        yield driver


@pytest.fixture(scope="module")
def processes(spill_root):
    """A ProcessPoolExecutor (one spawned worker: the code path, at little cost)."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx) as executor:
        executor.submit(int)  # start it now: it imports while the pool's workers do
        yield executor


def left_behind(root):
    return [p for p in os.listdir(root) if p.startswith(("kexue-ngrams-", "kexue-broadcast-"))]


@pytest.mark.parametrize(("script", "max_n", "min_count"), [("mixed", 5, 2), ("han", 4, 1)])
def test_every_driver_gives_the_same_bits(pool, processes, spill_root, script, max_n,
                                          min_count):
    texts = corpus(0)
    want = reference(texts, max_n, min_count, script)
    one = count_ngrams(texts, max_n, min_count, script=script)  # one chunk, in memory
    assert one.stats["shards"] == 1 and as_dict(one) == want
    kw = {"chunk_chars": 600, "script": script}
    with ThreadPoolExecutor(2) as threads:
        runs = {  # the spawned workers start meanwhile: the executor's is asked last
            "serial": count_ngrams(texts, max_n, min_count, **kw),
            "tiny chunks": count_ngrams(texts, max_n, min_count, chunk_chars=7, script=script),
            "threads": count_ngrams(texts, max_n, min_count, scheduler=threads, **kw),
            "pool": count_ngrams(texts, max_n, min_count, scheduler=pool, **kw),
            "stream": count_ngrams(iter(texts), max_n, min_count, scheduler=pool, **kw),
            "shards": count_ngrams(list_shards(texts, 90), max_n, min_count, scheduler=pool,
                                   **kw),
            "processes": count_ngrams(texts, max_n, min_count, scheduler=processes, **kw),
        }
    for name, table in runs.items():
        assert table.stats["shards"] > 1, name
        assert_identical(table, one)
    assert left_behind(spill_root) == []


class Wrapped(SerialDriver):
    """A driver that hands every call to ``inner`` (itself a SerialDriver by default)."""

    def __init__(self, inner=None):
        self.inner = inner or SerialDriver()

    def map(self, fn, shards, *args):
        return self.inner.map(fn, shards, *args)

    def reduce(self, fn, handles):
        return self.inner.reduce(fn, handles)

    def broadcast(self, obj):
        return self.inner.broadcast(obj)

    def gather(self, handles):
        return self.inner.gather(handles)

    def release(self, handles):
        getattr(self.inner, "release", lambda h: None)(handles)


class Forgetful(Wrapped):
    """Loses every shard's spill before each level: each task runs 'on another machine'."""

    def map(self, fn, shards, *args):
        if fn is engine._map_level:
            shutil.rmtree(engine._spill_dir(args[0]), ignore_errors=True)
        return self.inner.map(fn, shards, *args)


def test_missing_spill_is_recomputed_from_the_shard(pool, spill_root):
    texts = corpus(1)
    want = count_ngrams(texts, 5, 2, chunk_chars=700)
    for driver in (Forgetful(), Forgetful(pool)):
        got = count_ngrams(list_shards(texts, 70), 5, 2, chunk_chars=700, scheduler=driver)
        assert_identical(got, want)
    assert left_behind(spill_root) == []
    # an in-memory shard's text travels once: without its spill a clear error, nothing left
    with pytest.raises(RuntimeError, match=r"in-memory shard 'texts:0'.*plan_shards"):
        count_ngrams(texts, 5, 2, chunk_chars=700, scheduler=Forgetful())
    assert left_behind(spill_root) == []


class FailAt(Wrapped):
    """Interrupted when the engine maps level ``n`` (after earlier levels spilled)."""

    def __init__(self, n, inner=None):
        super().__init__(inner)
        self.n = n
        self.seen = []

    def map(self, fn, shards, *args):
        if fn is engine._map_level and args[1] == self.n:
            self.seen = left_behind(engine.tempfile.gettempdir())
            raise KeyboardInterrupt
        return self.inner.map(fn, shards, *args)


def test_spill_is_removed_after_an_error(pool, spill_root):
    texts = corpus(2)
    for inner in (None, pool):
        driver = FailAt(3, inner)
        with pytest.raises(KeyboardInterrupt):
            count_ngrams(texts, 4, 2, chunk_chars=500, scheduler=driver)
        assert driver.seen != []  # there was a spill to remove
        assert left_behind(spill_root) == []
    shards = list_shards(texts, 100)
    shards[2].fail_on_read = True  # a worker fails while reading its shard
    with pytest.raises(RuntimeError, match="cannot read part-2"):
        count_ngrams(shards, 4, 2, chunk_chars=500, scheduler=pool)
    assert left_behind(spill_root) == []


def test_reduce_order_does_not_matter(monkeypatch):
    # the exact merge is associative and commutative: any tree, any order, the same bits
    monkeypatch.setattr(drivers, "_SPLIT", 1)  # fold by key ranges in two threads, even small
    rng = np.random.default_rng(0)
    parts = []
    for _ in range(9):
        keys = np.unique(rng.integers(0, 1 << 20, rng.integers(0, 300)).astype(np.uint64))
        parts.append(engine._Part(keys, rng.integers(1, 50, keys.shape[0]), 0))
    want = Counter()
    for p in parts:
        want.update(dict(zip(p.keys.tolist(), p.counts.tolist(), strict=True)))
    for seed in range(5):
        order = random.Random(seed).sample(parts, len(parts))
        left = order[0]
        for p in order[1:]:
            left = engine._add_parts(p, left) if seed % 2 else engine._add_parts(left, p)
        for got in (left, _fold(engine._add_parts, order),
                    drivers._fold_split(engine._add_parts, order)):
            assert got.keys.tolist() == sorted(want)
            assert got.counts.tolist() == [want[k] for k in sorted(want)]


class Shuffled(SerialDriver):
    """Folds map outputs left-deep in a seeded random order."""

    def __init__(self, seed):
        self.rng = random.Random(seed)

    def reduce(self, fn, handles):
        values = [h() for h in handles]
        self.rng.shuffle(values)
        out = values[0]
        for v in values[1:]:
            out = fn(v, out)
        return out


def test_table_does_not_depend_on_reduce_order_or_chunking():
    texts = corpus(3, 150)
    want = count_ngrams(texts, 5, 2)
    for seed, chunk_chars in ((0, 300), (1, 50), (2, 1)):
        assert_identical(count_ngrams(texts, 5, 2, chunk_chars=chunk_chars,
                                      scheduler=Shuffled(seed)), want)


def _pid(shard):
    time.sleep(0.02)
    return os.getpid()


def _ready(driver):
    while not all(w.ready for w in driver._workers):  # the spawned worker has started
        driver._pump()


def _boom(shard, n):
    if shard.key == "part-1":
        raise ArithmeticError(f"no luck with {n}")
    return 1


def test_pool_runs_tasks_in_every_process_and_survives_a_task_error(pool):
    shards = list_shards(corpus(4), 40)
    assert len(shards) >= 6
    _ready(pool)
    assert len(set(pool.gather(pool.map(_pid, shards)))) == 2  # this process and the spawned one
    with pytest.raises(ArithmeticError, match="no luck with 3") as info:
        pool.reduce(max, pool.map(_boom, shards, 3))
    assert "raised in a kexue pool worker" in "".join(info.value.__notes__)
    assert pool.reduce(operator.add, pool.map(_boom, shards[2:], 3)) == len(shards) - 2
    with pytest.raises(AttributeError, match="pickle"):  # a task that cannot travel
        pool.gather(pool.map(lambda shard: 1, shards))
    assert pool.reduce(operator.add, pool.map(_boom, shards[2:], 3)) == len(shards) - 2


def test_resolve_driver_and_errors():
    assert isinstance(resolve_driver(), SerialDriver)
    assert isinstance(resolve_driver(3), PoolDriver)  # not started until entered
    with ThreadPoolExecutor(1) as ex:
        assert isinstance(resolve_driver(1, ex), ExecutorDriver)
    expected = re.escape("scheduler must be 'local:N', 'tcp://HOST:PORT', a dask Client or a "
                         "concurrent.futures.Executor")
    for bad in ("local:0", "local", "tcp://host", "http://h:1", "dask", 3, object()):
        with pytest.raises(ValueError, match=expected + ".*got"):
            resolve_driver(1, bad)
        with pytest.raises(ValueError, match=expected):
            count_ngrams(["中国"], 2, scheduler=bad)
    with pytest.raises(ValueError, match="processes.*or scheduler, not both"):
        resolve_driver(2, "local:2")
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="processes must be an int >= 1"):
            resolve_driver(bad)
    shard = ListShard("a", ["中国"])
    assert isinstance(shard, Shard) and isinstance(MemoryShard("k", ["x"]), Shard)
    with pytest.raises(ValueError, match=r"texts\[1\] must be a Shard"):
        count_ngrams([shard, "中国"], 2)
    with pytest.raises(ValueError, match="unique keys, got 'a' twice"):
        count_ngrams([shard, ListShard("a", ["人民"])], 2)
    with pytest.raises(ValueError, match=r"shard 'b' texts\[1\] must be str, got int"):
        count_ngrams([ListShard("b", ["中国", 3])], 2)
    with pytest.raises(ValueError, match="script must be one of"):
        count_ngrams(["中国"], 2, script="latin")


def _die(shard):
    if shard.key == "part-0":
        os._exit(3)  # a worker killed mid-task (OOM killer, segfault)
    return 1


def test_a_dead_worker_fails_the_run_instead_of_hanging(pool):
    # the last test of the module: the dead worker breaks the shared pool
    shards = list_shards(corpus(5), 40)
    _ready(pool)
    with pytest.raises(RuntimeError, match=r"pool worker kexue-pool-1 died \(exit code 3\)"):
        # part-0 goes to the spawned worker: it is the first idle one
        pool.gather(pool.map(_die, shards))
