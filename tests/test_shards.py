"""Tests for kexue.text.shards: every line read by exactly one shard, and the shards' documents
and summary equal to a Corpus reading of the same inputs (the independent reference)."""

from __future__ import annotations

import gzip
import json
import os
import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kexue.text.corpus import read_documents
from kexue.text.shards import plan_shards

# pieces of lines: multi-byte characters (3 and 4 bytes), CRLF, blank lines, a BOM, bad bytes
_BITS = ["中", "文字", "a", " ", "\n", "\r\n", "\n\n", "\ufeff", "😀", "é"]
_BAD = b"\xff\xfe"


def _documents(plan):
    return [doc for shard in plan for doc in shard.read()]


def _same_as_corpus(paths, **kwargs):
    corpus = read_documents(paths, **{k: v for k, v in kwargs.items() if k != "shard_bytes"})
    reference = list(corpus)
    plan = plan_shards(paths, **kwargs)
    assert _documents(plan) == reference
    assert plan.read_summary() == corpus.summary
    return plan, reference


@st.composite
def _file(draw):
    lines = draw(st.lists(st.lists(st.sampled_from(_BITS), max_size=6), max_size=8))
    data = "\n".join("".join(line) for line in lines).encode()
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data = data[:at] + _BAD + data[at:]
    return data


@st.composite
def _jsonl(draw):
    rows = draw(st.lists(st.sampled_from(
        ['{"text": "气候变化"}', '{"text": "  "}', '{"body": "别的"}', "{not json}",
         '{"text": 5}', '"text"', '{"text": "碳\\u6392放"}', ""]), max_size=8))
    return "\n".join(rows).encode() + draw(st.sampled_from([b"", b"\n", b"\r\n"]))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.lists(st.tuples(_file(), st.booleans()), min_size=1, max_size=4),
       jsonl=st.lists(st.tuples(_jsonl(), st.booleans()), max_size=2),
       shard_bytes=st.integers(1, 48))
def test_shards_read_what_a_corpus_reads(tmp_path_factory, files, jsonl, shard_bytes):
    root = tmp_path_factory.mktemp("random")
    paths = []
    for k, (data, gz) in enumerate(files + jsonl):
        name = f"{k:02d}.{'jsonl' if k >= len(files) else 'txt'}" + (".gz" if gz else "")
        path = root / name
        path.write_bytes(gzip.compress(data) if gz else data)
        paths.append(path)
    plan, _ = _same_as_corpus(paths, errors="skip", shard_bytes=shard_bytes)
    for shard in plan:  # gzip alone; plain pieces within the target unless one line is longer
        assert not any(p.compressed for p in shard.pieces) or len(shard.pieces) == 1


def test_boundaries_follow_newlines_whatever_the_target(tmp_path):
    data = "一\n二三\r\n\n四😀五\n最后一行没有换行".encode()
    path = tmp_path / "a.txt"
    path.write_bytes(data)
    reference = list(read_documents(path))
    for shard_bytes in range(1, len(data) + 2):  # targets inside characters, on every "\n"
        plan = plan_shards(path, shard_bytes=shard_bytes)
        pieces = [p for s in plan for p in s.pieces]
        assert pieces[0].start == 0 and pieces[-1].stop == len(data)
        for a, b in zip(pieces, pieces[1:]):
            assert a.stop == b.start and data[b.start - 1 : b.start] == b"\n"
        assert _documents(plan) == reference == ["一", "二三", "四😀五", "最后一行没有换行"]


def test_stop_names_the_absolute_line_of_a_later_shard(tmp_path):
    path = tmp_path / "big.txt"
    lines = [f"第{i}行".encode() for i in range(300)]
    lines[217] = b"bad \xff byte"
    path.write_bytes(b"\n".join(lines) + b"\n")
    plan = plan_shards(path, shard_bytes=256)
    assert len(plan) > 5
    with pytest.raises(ValueError, match=r"big\.txt:218: invalid UTF-8 at byte 4"):
        _documents(plan)
    with pytest.raises(ValueError, match=r"big\.txt:218: invalid UTF-8"):
        plan.read_summary()
    with pytest.raises(ValueError, match=r"big\.txt:218: invalid UTF-8"):
        list(read_documents(path))  # the reference says the same


def test_message_cap_and_line_numbers_across_shards(tmp_path):
    path = tmp_path / "bad.txt"
    rows = [b"\xff" if i % 3 else "好".encode() for i in range(1800)]  # 1200 bad lines
    path.write_bytes(b"\n".join(rows))
    plan, _ = _same_as_corpus(path, errors="skip", shard_bytes=500)
    summary = plan.read_summary()
    assert len(plan) > 3
    assert (summary.skipped["invalid_utf8"], len(summary.messages),
            summary.messages_dropped) == (1200, 1000, 200)
    assert summary.messages[-1].startswith(f"{path}:1500:")  # the 1000th bad line


def test_whole_file_problems_are_found_when_planning(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "empty.txt").write_bytes(b"")
    (tmp_path / "d" / "utf16.txt").write_bytes("ab中文".encode("utf-16"))
    (tmp_path / "d" / "corrupt.txt.gz").write_bytes(gzip.compress("好".encode())[:12])
    (tmp_path / "d" / "blank.txt").write_bytes(b"\n \n")
    (tmp_path / "d" / "gbk.txt").write_bytes("中文".encode("gbk"))
    (tmp_path / "d" / "ok.txt").write_bytes("可以".encode())
    (tmp_path / "d" / "skip.csv").write_bytes(b"x")
    (tmp_path / "nothing").mkdir()
    plan, docs = _same_as_corpus([tmp_path / "d", tmp_path / "nothing"], errors="skip")
    assert docs == ["可以"]
    assert sorted(plan.summary.skipped) == ["binary_file", "corrupt_file", "empty_file",
                                            "no_matching_files"]
    with pytest.raises(ValueError, match="corrupt.txt.gz: cannot read"):
        plan_shards(tmp_path / "d")  # errors="stop": before any shard is read


def test_directories_globs_gzip_jsonl_and_packing(tmp_path):
    rows = "\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in ["气候", "变化"])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.jsonl.gz").write_bytes(gzip.compress(rows.encode()))
    (tmp_path / "b" / "y.jsonl").write_text(rows, encoding="utf-8")
    for k in range(5):
        (tmp_path / f"s{k}.txt").write_text(f"小文件{k}\n", encoding="utf-8")
    inputs = [tmp_path / "b", str(tmp_path / "s*.txt"), str(tmp_path / "**" / "*.jsonl")]
    plan, docs = _same_as_corpus(inputs, shard_bytes=40)
    assert docs[:4] == ["气候", "变化"] * 2 and docs[4:] == [f"小文件{k}" for k in range(5)] + [
        "气候", "变化"]
    sizes = [len(s.pieces) for s in plan]
    assert sizes[0] == 1 and plan[0].pieces[0].compressed  # the .gz alone
    assert max(sizes) >= 2  # small files share a shard
    assert all(s.nbytes <= 40 for s in plan if len(s.pieces) > 1)
    keys = [s.key for s in plan]
    assert len(set(keys)) == len(keys) and all(k.replace("-", "").isalnum() for k in keys)
    assert keys == [s.key for s in plan_shards(inputs, shard_bytes=40)]  # stable
    assert not set(keys) & {s.key for s in plan_shards(inputs, shard_bytes=40, key_prefix="g")}
    assert max(len(pickle.dumps(s)) for s in plan) < 1000  # descriptions, never the text
    with pytest.raises(FileNotFoundError, match="matches no file"):
        plan_shards(str(tmp_path / "*.nope"))


def test_bad_arguments_and_files_that_change(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("一行\n", encoding="utf-8")
    with pytest.raises(ValueError, match="stdin"):
        plan_shards("-")
    with pytest.raises(ValueError, match="shard_bytes"):
        plan_shards(path, shard_bytes=0)
    with pytest.raises(ValueError, match="errors"):
        plan_shards(path, errors="ignore")
    with pytest.raises(ValueError, match="key_prefix"):
        plan_shards(path, key_prefix="a/b")
    plan = plan_shards(path)
    path.write_text("一行变长了\n", encoding="utf-8")
    with pytest.raises(ValueError, match="changed since the shards were planned"):
        _documents(plan)
    os.remove(path)
    with pytest.raises(OSError, match="every worker must see"):
        _documents(plan)
