"""Tests for kexue.text.corpus: formats, directories, stdin, and the error policies."""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import re
import sys

import pytest

from kexue.text.corpus import chunks, read_documents


def _write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_lines_strip_bom_and_count_blank_lines(tmp_path):
    p = _write(tmp_path / "a.txt", "\ufeff第一行\n\n  第二行 \r\n".encode())
    corpus = read_documents(p)
    assert list(corpus) == ["第一行", "第二行"]
    s = corpus.summary
    assert (s.files, s.lines, s.documents, s.chars) == (1, 3, 2, 6)
    assert s.skipped == {"blank_line": 1}
    assert s.messages == []


def test_jsonl_field_and_gzip_autodetect(tmp_path):
    rows = [{"text": "气候变化", "id": 1}, {"body": "别的字段"}, {"text": "碳排放"}]
    data = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode()
    _write(tmp_path / "a.jsonl", data)
    _write(tmp_path / "b.jsonl.gz", gzip.compress(data))
    _write(tmp_path / "c.txt.gz", gzip.compress("一行\n两行\n".encode()))

    skip = read_documents(tmp_path / "a.jsonl", errors="skip")
    assert list(skip) == ["气候变化", "碳排放"]
    assert skip.summary.skipped == {"missing_field": 1}
    assert skip.summary.messages[0].startswith(f"{tmp_path / 'a.jsonl'}:2:")

    assert list(read_documents(tmp_path / "b.jsonl.gz", field="body", errors="skip")) == [
        "别的字段"
    ]
    assert list(read_documents(tmp_path / "c.txt.gz")) == ["一行", "两行"]
    # fmt="lines" forces raw lines even for .jsonl names
    assert next(iter(read_documents(tmp_path / "a.jsonl", fmt="lines"))).startswith("{")


def test_jsonl_stop_names_file_and_line(tmp_path):
    p = _write(tmp_path / "x.jsonl", b'{"text": "ok"}\n{not json}\n')
    with pytest.raises(ValueError, match=r"x\.jsonl:2: invalid JSON"):
        list(read_documents(p))


def test_directory_recursive_sorted_by_extension(tmp_path):
    _write(tmp_path / "b" / "2.txt", "乙\n".encode())
    _write(tmp_path / "a.txt", "甲\n".encode())
    _write(tmp_path / "b" / "1.jsonl", json.dumps({"text": "丙"}).encode())
    _write(tmp_path / "ignored.csv", "丁\n".encode())
    _write(tmp_path / ".hidden" / "3.txt", "戊\n".encode())
    corpus = read_documents(tmp_path)
    assert list(corpus) == ["甲", "丙", "乙"]
    assert corpus.summary.files == 3
    assert list(read_documents(tmp_path, extensions=(".csv",))) == ["丁"]
    # re-iterable: a second pass gives the same documents and a fresh summary
    assert list(corpus) == ["甲", "丙", "乙"] and corpus.summary.documents == 3


def test_stdin_bytes_and_text(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("标准输入\n第二行\n".encode())))
    corpus = read_documents("-")
    assert list(corpus) == ["标准输入", "第二行"]
    with pytest.raises(RuntimeError, match="can be read only once"):
        list(corpus)
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"t": "文本"}\n'))
    assert list(read_documents("-", fmt="jsonl", field="t")) == ["文本"]


def test_invalid_utf8_both_policies(tmp_path):
    p = _write(tmp_path / "bad.txt", "好的\n".encode() + b"\xff\xfe bad\n" + "也好\n".encode())
    with pytest.raises(ValueError, match=r"bad\.txt:2: invalid UTF-8"):
        list(read_documents(p))
    corpus = read_documents(p, errors="skip")
    assert list(corpus) == ["好的", "也好"]
    assert corpus.summary.skipped == {"invalid_utf8": 1}
    assert corpus.summary.lines == 3
    assert len(corpus.summary.messages) == 1 and "bad.txt:2:" in corpus.summary.messages[0]
    assert "invalid_utf8=1" in corpus.summary.describe()


def test_binary_and_empty_files_both_policies(tmp_path):
    good = _write(tmp_path / "good.txt", "正常\n".encode())
    binary = _write(tmp_path / "bin.txt", b"line one\nline\x00two\n")
    utf16 = _write(tmp_path / "u16.txt", "中文\n".encode("utf-16"))
    empty = _write(tmp_path / "empty.txt", b"")
    empty_gz = _write(tmp_path / "empty.txt.gz", gzip.compress(b""))

    with pytest.raises(ValueError, match=r"bin\.txt:2: binary file"):
        list(read_documents([good, binary]))
    with pytest.raises(ValueError, match=r"u16\.txt:\d+: binary file"):
        list(read_documents(utf16))
    with pytest.raises(ValueError, match=r"empty\.txt: empty file"):
        list(read_documents(empty))

    corpus = read_documents([binary, good, utf16, empty, empty_gz], errors="skip")
    assert list(corpus) == ["正常"]
    s = corpus.summary
    assert s.skipped == {"binary_file": 2, "empty_file": 2}
    assert s.files == 5 and s.documents == 1
    assert len(s.messages) == 4
    assert any("empty.txt.gz" in m for m in s.messages)


def test_corrupt_gzip(tmp_path):
    # random Han lines compress poorly, so the first half of the stream holds many whole lines
    # (a highly repetitive text would fail already at the first read, with no line read at all)
    rng = random.Random(0)
    lines = ["".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(20)) for _ in range(5000)]
    data = gzip.compress("".join(f"{line}\n" for line in lines).encode())
    p = _write(tmp_path / "cut.txt.gz", data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.txt\.gz:\d+: cannot read further"):
        list(read_documents(p))
    corpus = read_documents(p, errors="skip")
    docs = list(corpus)
    assert len(docs) > 100 and docs == lines[: len(docs)]
    assert corpus.summary.skipped == {"corrupt_file": 1}
    (message,) = corpus.summary.messages
    lineno = int(re.search(r"cut\.txt\.gz:(\d+): cannot read further", message).group(1))
    assert lineno == len(docs) + 1


def test_lone_surrogate_is_invalid_utf8(tmp_path, monkeypatch):
    p = _write(tmp_path / "s.jsonl", b'{"text": "ok"}\n{"text": "\\ud800\xe4\xb8\xad"}\n')
    with pytest.raises(ValueError, match=r"s\.jsonl:2: .*lone surrogate"):
        list(read_documents(p))
    corpus = read_documents(p, errors="skip")
    assert list(corpus) == ["ok"]
    assert corpus.summary.skipped == {"invalid_utf8": 1}
    # an already decoded stdin holding a lone surrogate is reported the same way
    monkeypatch.setattr(sys, "stdin", io.StringIO("好\n\ud800中\n"))
    corpus = read_documents("-", errors="skip")
    assert list(corpus) == ["好"] and corpus.summary.skipped == {"invalid_utf8": 1}


def test_deeply_nested_json_is_invalid_json(tmp_path):
    deep = ("[" * 100_000 + "]" * 100_000).encode()
    p = _write(tmp_path / "deep.jsonl", deep + b'\n{"text": "ok"}\n')
    with pytest.raises(ValueError, match=r"deep\.jsonl:1: invalid JSON"):
        list(read_documents(p))
    corpus = read_documents(p, errors="skip")
    assert list(corpus) == ["ok"] and corpus.summary.skipped == {"invalid_json": 1}


def test_unreadable_file_both_policies(tmp_path):
    good = _write(tmp_path / "d" / "a.txt", "正常\n".encode())
    (tmp_path / "d" / "b.txt").symlink_to(tmp_path / "missing.txt")  # broken symlink
    with pytest.raises(ValueError, match=r"b\.txt: cannot open"):
        list(read_documents(tmp_path / "d"))
    corpus = read_documents(tmp_path / "d", errors="skip")
    assert list(corpus) == ["正常"]
    assert corpus.summary.skipped == {"unreadable_file": 1} and corpus.summary.files == 2
    # a file removed between read_documents() and the pass
    gone = _write(tmp_path / "gone.txt", b"x\n")
    corpus = read_documents([gone, good], errors="skip")
    gone.unlink()
    assert list(corpus) == ["正常"] and corpus.summary.skipped == {"unreadable_file": 1}
    assert "gone.txt: cannot open" in corpus.summary.messages[0]


def test_unreadable_subdirectory_both_policies(tmp_path, monkeypatch):
    _write(tmp_path / "a.txt", "正常\n".encode())
    _write(tmp_path / "locked" / "b.txt", "看不到\n".encode())
    real_scandir = os.scandir

    def scandir(path="."):
        if os.path.basename(os.fspath(path)) == "locked":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # os.walk lists directories via os.scandir
    with pytest.raises(ValueError, match=r"locked: cannot list directory"):
        list(read_documents(tmp_path))
    corpus = read_documents(tmp_path, errors="skip")
    assert list(corpus) == ["正常"] and corpus.summary.skipped == {"unreadable_dir": 1}


def test_empty_directory_and_missing_path(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="no files ending"):
        list(read_documents(tmp_path / "d"))
    corpus = read_documents(tmp_path / "d", errors="skip")
    assert list(corpus) == [] and corpus.summary.skipped == {"no_matching_files": 1}
    with pytest.raises(FileNotFoundError, match="nope"):
        read_documents(tmp_path / "nope.txt")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"fmt": "csv"}, "fmt"),
        ({"errors": "ignore"}, "errors"),
        ({"field": ""}, "field"),
        ({"extensions": ()}, "extensions"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    p = _write(tmp_path / "a.txt", b"x\n")
    with pytest.raises(ValueError, match=match):
        read_documents(p, **kwargs)


def test_chunks_sizes_and_order():
    docs = ["ab", "cde", "f", "ghijklmnop", "q"]
    out = list(chunks(docs, 4))
    assert out == [["ab", "cde"], ["f", "ghijklmnop"], ["q"]]
    assert [d for c in out for d in c] == docs
    assert list(chunks([], 3)) == []
    with pytest.raises(ValueError, match="chunk_chars"):
        list(chunks(docs, 0))


# -- the 8 KiB sniff, stdin given twice, and why a skipped file was skipped -------------------


@pytest.mark.parametrize("offset", [4096, 6000, 8191])
@pytest.mark.parametrize("gz", [False, True])
def test_binary_sniff_reads_the_whole_first_8_kib(tmp_path, offset, gz):
    # Text lines up to `offset`, then a NUL: the sniff must see it (first 8 KiB).
    text = b"".join(b"%05d abcdefghij\n" % i for i in range(offset // 16 + 1))[:offset]
    data = text + b"\0" + b"tail\n" * 10
    assert data.index(b"\0") == offset
    p = _write(tmp_path / ("late.txt.gz" if gz else "late.txt"),
               gzip.compress(data) if gz else data)
    line = data[:offset].count(b"\n") + 1
    with pytest.raises(ValueError, match=rf"late\.txt(\.gz)?:{line}: binary file "
                                         rf"\(NUL byte at offset {offset};"):
        list(read_documents(p))
    # Just past the sniff the NUL is read as part of a line: the file is taken as text.
    later = _write(tmp_path / "later.txt", text.ljust(8192, b"x") + b"\0\n")
    docs = list(read_documents(later))
    assert docs[-1].endswith("\0") and len(docs) == text.count(b"\n") + 1


def test_sniff_reads_a_pipe_that_delivers_in_small_pieces(monkeypatch):
    class Trickle(io.RawIOBase):  # a pipe: each read returns at most 1000 bytes
        def __init__(self, data: bytes) -> None:
            self.data = data

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:
            n = min(len(b), 1000, len(self.data))
            b[:n], self.data = self.data[:n], self.data[n:]
            return n

    data = b"ok line\n" * 700 + b"\0"  # NUL at 5600
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(Trickle(data), 1000)))
    with pytest.raises(ValueError, match=r"<stdin>:701: binary file \(NUL byte at offset 5600"):
        list(read_documents("-"))


def test_stdin_given_twice_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"one\ntwo\n")))
    with pytest.raises(ValueError, match=r"- \(stdin\) given twice"):
        read_documents(["-", "-"])
    first = read_documents("-")
    second = read_documents("-")  # both made before either is read
    assert list(first) == ["one", "two"]
    with pytest.raises(RuntimeError, match=r"- \(stdin\) given twice: .* by another corpus"):
        list(second)
    with pytest.raises(ValueError, match=r"- \(stdin\) given twice: .* by an earlier corpus"):
        read_documents("-")
    with pytest.raises(RuntimeError, match=r"given twice: .* earlier pass over this corpus"):
        list(first)


def test_skip_says_why_each_file_was_skipped(tmp_path):
    files = [
        _write(tmp_path / "good.txt", "好的文本\n".encode()),
        _write(tmp_path / "bin.txt", b"abc\n\0def\n"),
        _write(tmp_path / "empty.txt", b""),
        _write(tmp_path / "gbk.txt", "你好\n世界\n".encode("gbk")),
        _write(tmp_path / "blank.txt", b"\n  \n\n"),
        _write(tmp_path / "bad.jsonl", b"{\n[1]\n"),
    ]
    # 1500 bad lines first: line messages are capped at 1000, file messages never are.
    noisy = _write(tmp_path / "a_noisy.txt", b"\xff\n" * 1500 + b"fine\n")
    corpus = read_documents([noisy, *files], errors="skip")
    assert list(corpus) == ["fine", "好的文本"]
    text = corpus.summary.describe()
    assert "bin.txt:2: binary file" in text
    assert "empty.txt: empty file" in text
    assert "gbk.txt: skipped, no document in it (undecodable: none of its 2 line(s) is UTF-8" \
        in text
    assert "blank.txt: skipped, no document in it (all 3 line(s) blank)" in text
    assert ("bad.jsonl: skipped, no document in it (every line skipped: invalid_json=1, "
            "missing_field=1)") in text
    assert corpus.summary.skipped["file_without_documents"] == 3
    # Line messages: 1500 (a_noisy) + 2 (gbk) + 2 (bad.jsonl), of which 1000 are kept.
    assert corpus.summary.messages_dropped == 1500 + 2 + 2 - 1000
    assert text.endswith("... and 504 more message(s)")


def test_glob_patterns_read_their_sorted_matches(tmp_path):
    for name, text in (("b.txt", "乙"), ("a.txt", "甲"), ("sub/c.txt", "丙"), ("d.csv", "丁")):
        _write(tmp_path / name, text.encode())
    assert list(read_documents(str(tmp_path / "*.txt"))) == ["甲", "乙"]
    assert list(read_documents(str(tmp_path / "**" / "*.txt"))) == ["甲", "乙", "丙"]
    odd = _write(tmp_path / "x[1].txt", "戊".encode())  # an existing name is never a pattern
    assert list(read_documents(odd)) == ["戊"]
    with pytest.raises(FileNotFoundError, match="matches no file"):
        read_documents(str(tmp_path / "*.jsonl"))
