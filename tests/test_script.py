"""Atoms and the alphabet (kexue.text._script): the atom rule against a hand-written reference,
NFKC against unicodedata, Han-only bit-identity, deterministic alphabets, round trips."""

from __future__ import annotations

import pickle
import random
import re
import unicodedata
import warnings

import numpy as np
import pytest

from kexue.text._script import (
    ALPHABET_SIZE,
    ATOM_FIRST,
    CODE_LIMIT,
    HAN_FIRST,
    PLACEHOLDER,
    Alphabet,
    atom_counts,
    nfkc,
    scan,
    unit_runs,
    units,
)

# The atom rule written out independently of the module: letters/digits (ASCII or full-width),
# a single joiner between two of them, then any '+' run.
_LD = "0-9A-Za-z０-９Ａ-Ｚａ-ｚ"
_REF = re.compile(f"([一-鿿])|([{_LD}]+(?:[-.+－．＋][{_LD}]+)*[+＋]*)|(.)", re.S)


def reference_scan(texts: list[str]) -> tuple[list[int], list[str], list[str]]:
    """Pre-codes, NFKC atoms and surfaces by a left-to-right regex walk (UTF-16 positions)."""
    pre: list[int] = []
    atoms: list[str] = []
    surfaces: list[str] = []
    for m in _REF.finditer("\n".join(texts) + "\n"):
        han, atom, other = m.groups()
        if han:
            pre.append(ord(han) - HAN_FIRST + 1)
        elif atom:
            pre.append(PLACEHOLDER)
            atoms.append(unicodedata.normalize("NFKC", atom))
            surfaces.append(atom)
        else:  # one zero per UTF-16 code unit (astral characters are two)
            pre.extend([0] * (len(other.encode("utf-16-le", "surrogatepass")) // 2))
    return pre, atoms, surfaces


@pytest.mark.parametrize(
    ("text", "atoms"),
    [
        ("PM2.5浓度上升", ["PM2.5"]),
        ("COVID-19疫情和5G、110kV电网", ["COVID-19", "5G", "110kV"]),
        ("学C++11和C++", ["C++", "11", "C++"]),
        (".5 3- 2020. a--b a.-b a+b+", ["5", "3", "2020", "a", "b", "a", "b", "a+b+"]),
        ("１９９８年", ["1998"]),
        ("B超T恤A股", ["B", "T", "A"]),
        ("New York, CO₂ Ⅲ类 é", ["New", "York", "CO"]),
    ],
)
def test_atoms_by_hand(text, atoms):
    s = scan([text])
    assert s.atoms == atoms
    assert int((s.precodes == PLACEHOLDER).sum()) == len(atoms)


def test_atom_takes_one_position():
    s = scan(["你PM2.5好", "１９９８年"])
    ni, hao, nian = (ord(c) - HAN_FIRST + 1 for c in "你好年")
    assert s.precodes.tolist() == [ni, PLACEHOLDER, hao, 0, PLACEHOLDER, nian, 0]
    assert s.atoms == ["PM2.5", "1998"] and s.surfaces == ["PM2.5", "１９９８"]


def _random_text(rng: random.Random) -> str:
    pieces = list("aZ09ｐＭ２５．－＋.-+ \n，中国年") + ["\U0001f600", "\ud800", "é", "Ⅲ"]
    return "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 40)))


def test_scan_matches_reference_walk():
    rng = random.Random(17)
    for _ in range(300):
        texts = [_random_text(rng) for _ in range(rng.randrange(1, 4))]
        s = scan(texts)
        pre, atoms, surfaces = reference_scan(texts)
        assert s.precodes.dtype == np.uint16
        assert s.precodes.tolist() == pre, texts
        assert s.atoms == atoms and s.surfaces == surfaces, texts


def test_units_and_runs_match_scan():
    rng = random.Random(18)
    for _ in range(200):
        text = _random_text(rng)
        s = scan([text])
        assert [nfkc(u) for u in units(text) if not "一" <= u <= "鿿"] == s.atoms
        # one run per maximal stretch of non-zero pre-codes
        nz = np.concatenate([[0], (s.precodes > 0).astype(np.int8), [0]])
        assert len(unit_runs(text)) == int((np.diff(nz) == 1).sum()), text


def test_nfkc_matches_unicodedata():
    chars = "".join(chr(c) for c in range(0xFF01, 0xFF5F))
    for ch in chars + "0aZ.-+":
        s = scan([ch + "1"])
        if s.atoms:
            assert s.atoms[0] == unicodedata.normalize("NFKC", s.surfaces[0])
        assert nfkc(ch) in (ch, unicodedata.normalize("NFKC", ch))
    han = "".join(chr(c) for c in range(HAN_FIRST, HAN_FIRST + ALPHABET_SIZE))
    assert unicodedata.normalize("NFKC", han) == han  # Han codes need no normalisation


def test_han_only_text_is_bit_identical():
    rng = random.Random(3)
    pool = [chr(c) for c in range(HAN_FIRST, HAN_FIRST + 300)] + list("，。 \n《》、")
    texts = ["".join(rng.choice(pool) for _ in range(50)) for _ in range(40)]
    texts.append("\U0001f600中\ud800国")
    joined = "\n".join(texts) + "\n"
    cp = np.frombuffer(joined.encode("utf-16-le", "surrogatepass"), dtype="<u2").astype(np.int64)
    want = np.where((cp >= HAN_FIRST) & (cp < HAN_FIRST + ALPHABET_SIZE), cp - HAN_FIRST + 1, 0)
    mixed, han = scan(texts, "mixed"), scan(texts, "han")
    assert mixed.atoms == [] and han.atoms == []
    np.testing.assert_array_equal(mixed.precodes, want)
    np.testing.assert_array_equal(han.precodes, want)
    # "han" ignores atoms: Latin is a boundary
    assert scan(["PM2.5浓度"], "han").precodes.tolist()[:6] == [0] * 5 + [ord("浓") - HAN_FIRST + 1]


def test_alphabet_build_is_order_free_and_shows_the_majority_form():
    chunks = [
        ["ＰＭ２．５超标", "PM2.5"],
        ["PM2.5浓度", "ＰＭ２．５"],
        ["ＰＭ２．５", "CO2和co2", "x"],
    ]
    partial = [atom_counts(scan(c)) for c in chunks]

    def merged(order):
        counts, surfaces = {}, {}
        for i in order:
            for k, v in partial[i][0].items():
                counts[k] = counts.get(k, 0) + v
            for k, v in partial[i][1].items():
                surfaces[k] = surfaces.get(k, 0) + v
        return Alphabet.build("mixed", counts, surfaces, 2)

    a = merged([0, 1, 2])
    assert a == merged([2, 0, 1])
    assert a.atoms == ("PM2.5",)  # CO2, co2, x: once each (case is kept)
    assert a.surfaces == ("ＰＭ２．５",)  # 3 full-width against 2 ASCII
    tie = Alphabet.build("mixed", {"A1": 2}, {("A1", "A1"): 1, ("A1", "Ａ１"): 1}, 1)
    assert tie.surfaces == ("A1",)  # ties: the smaller string


def test_alphabet_cap_keeps_the_most_frequent_and_warns():
    cap = CODE_LIMIT - ATOM_FIRST
    counts = {f"w{i}": 2 + (i % 7) for i in range(cap + 3)}
    surfaces = {(a, a): c for a, c in counts.items()}
    with pytest.warns(RuntimeWarning, match=r"^3 of the 44545 atoms"):
        a = Alphabet.build("mixed", counts, surfaces, 2)
    assert len(a.atoms) == cap and list(a.atoms) == sorted(a.atoms)
    dropped = set(counts) - set(a.atoms)
    want = sorted(counts, key=lambda w: (-counts[w], w))[cap:]
    assert dropped == set(want)
    assert max(counts[w] for w in dropped) <= min(counts[w] for w in a.atoms)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Alphabet.build("mixed", dict(list(counts.items())[:cap]), surfaces, 2)
        assert Alphabet.build("mixed", counts, surfaces, 8).atoms  # fewer reach 8: no warning


def test_encode_resolve_decode_round_trip():
    texts = ["PM2.5浓度与ＰＭ２．５", "T恤和COVID-19", "稀有XYZ"]
    s = scan(texts)
    a = Alphabet.build("mixed", *atom_counts(s), 2)
    assert a.atoms == ("PM2.5",)
    codes = a.encode(texts)
    want = a.resolve(scan(texts))
    np.testing.assert_array_equal(codes, want)
    assert codes.dtype == np.int32
    pm = ATOM_FIRST
    assert codes[:4].tolist() == [pm, ord("浓") - HAN_FIRST + 1, ord("度") - HAN_FIRST + 1,
                                  ord("与") - HAN_FIRST + 1]
    assert (codes == 0).sum() == (s.precodes == 0).sum() + 3  # T, COVID-19, XYZ: too rare
    grams = np.array([[pm, ord("浓") - HAN_FIRST + 1], [ord("与") - HAN_FIRST + 1, pm]])
    assert a.decode(grams) == ["PM2.5浓", "与PM2.5"]
    assert a.decode(np.zeros((0, 3), np.int32)) == []
    assert a.code("ＰＭ２．５") == pm and a.display("ＰＭ２．５") == "PM2.5"
    with pytest.raises(ValueError, match="codes must be < 20994"):
        a.decode(np.array([[pm + 1]]))
    with pytest.raises(ValueError, match="2-D"):
        a.decode(np.array([pm]))
    with pytest.raises(ValueError, match="texts"):
        a.encode(["ok", 3])


def test_alphabet_pickles_small_and_validates():
    a = Alphabet.build("mixed", {"PM2.5": 5, "5G": 9}, {("PM2.5", "PM2.5"): 5, ("5G", "5G"): 9}, 1)
    a.code("5G")  # fill the lookup cache
    blob = pickle.dumps(a)
    assert pickle.loads(blob) == a
    assert len(blob) < 200  # the fields only, not the caches
    assert pickle.loads(blob).code("PM2.5") == ATOM_FIRST + 1
    with pytest.raises(ValueError, match="script"):
        Alphabet.build("latin", {}, {}, 1)
    with pytest.raises(ValueError, match="min_count"):
        Alphabet.build("mixed", {}, {}, 0)
    with pytest.raises(ValueError, match="surfaces"):
        Alphabet("mixed", ("a",), ())
    with pytest.raises(ValueError, match="script"):
        scan(["x"], "latin")
