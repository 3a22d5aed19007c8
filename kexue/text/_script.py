"""Atoms: the units that n-grams are counted over, and the corpus-specific alphabet that codes them.

Codes. A Han character U+4E00–U+9FFF is one atom with the fixed code ``ord(c) − 0x4E00 + 1`` in
[1, 20992]. With ``script="mixed"`` a maximal run of Latin letters and digits (ASCII or full-width
U+FF10–FF5A), with the joiners ``.``, ``-``, ``+`` inside it, is ONE atom too ("PM2.5", "COVID-19",
"110kV", "5G"), counted in its NFKC form and shown in the corpus's own (most frequent) form. Atom
codes are corpus-specific: the kept atoms (count ≥ ``min_count``, the level-1 survivors) are sorted
by their NFKC form and the i-th gets code ``ATOM_FIRST + i``; a rarer atom can be part of no kept
n-gram (Apriori), so it becomes a boundary (0) exactly like punctuation. Every code is < 2^16.

What is an atom (``script="mixed"``). Let A be a letter or digit, ASCII ``[0-9A-Za-z]`` or its
full-width form (U+FF10–FF19, FF21–FF3A, FF41–FF5A), and J a joiner ``.``, ``-``, ``+`` or its
full-width form (U+FF0E, FF0D, FF0B). An atom is the leftmost-longest match of

    A+ (J A+)* (+)*

so:

* a joiner joins only when it stands alone between two letters/digits: "PM2.5", "2.5",
  "COVID-19", "Wi-Fi", "1+1" are one atom each; "a--b" and "a.-b" are two atoms "a", "b";
* a joiner at the start or at the end is not part of the atom (".5" -> "5", "3-" -> "3",
  "2020." -> "2020"), except a trailing run of ``+``: "C++", "A+", "5G+" (a plus after a name is
  part of it far more often than it is arithmetic or punctuation). "C++11" is "C++" followed by
  the atom "11" (two atoms, adjacent like two Han characters);
* letters and digits mix freely ("110kV", "CO2", "PM10"); "１９９８年" (pd1998 writes digits
  full-width) is the atom "1998" followed by the Han character 年, which may form the 2-gram
  "1998年";
* whitespace, other punctuation and every other character (accented and Greek letters, Roman
  numerals such as Ⅲ, super/subscripts such as CO₂, astral characters, lone surrogates) are
  boundaries, so an English phrase "New York" is two atoms that no n-gram joins; case is kept
  ("pH" and "PH" are different atoms; NFKC does not fold case).

NFKC of an atom is the atom with every full-width character replaced by its ASCII form (exactly
what :func:`unicodedata.normalize` ("NFKC") does to these characters; Han characters of the block
are NFKC-invariant), so "ＰＭ２．５" and "PM2.5" are one atom and count together.

Pipeline (what the counting engine calls):

1. ``scan(texts, script)`` per chunk -> :class:`Scan` (pre-codes with a placeholder where an atom
   stands, the atoms' NFKC and surface forms in order). Needs no global knowledge.
2. ``atom_counts(scan)`` per chunk, summed exactly over chunks/workers (dicts of ints).
3. ``Alphabet.build(script, counts, surfaces, min_count)`` once, on the driver: deterministic (no
   dependence on chunk order), picklable, broadcast to workers.
4. ``alphabet.resolve(scan)`` -> int32 codes of the chunk (placeholders -> atom code or 0).

``scan`` runs on every character of the corpus, so it is one table lookup over the UTF-16 code
units (Han code, boundary, or "Latin letter/digit/joiner" marker); only a chunk that holds a
Latin letter or digit goes on to the atom rule, vectorised over the marked units alone.

References:
    https://kexue.fm/archives/6540 (分享一次专业领域词汇的无监督挖掘)
"""

from __future__ import annotations

import collections
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from kexue._checks import check_int

HAN_FIRST = 0x4E00
HAN_LAST = 0x9FFF
ALPHABET_SIZE = HAN_LAST - HAN_FIRST + 1  # 20992 Han codes, 1-based; 0 is the boundary
ATOM_FIRST = ALPHABET_SIZE + 1  # first code of a corpus-specific (mixed-script) atom
PLACEHOLDER = 0xFFFF  # pre-code of an atom whose code is not known yet
CODE_LIMIT = PLACEHOLDER  # every resolved code is below: at most CODE_LIMIT − ATOM_FIRST atoms
SCRIPTS = ("mixed", "han")

_FULL_WIDTH_SHIFT = 0xFEE0  # U+FF01–FF5E are U+0021–007E shifted by this (their NFKC forms)
_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# transient pre-codes of scan, above every Han code and below PLACEHOLDER; none survives scan
_MARK_JOINER, _MARK_PLUS, _MARK_ALNUM = 0xFFF0, 0xFFF1, 0xFFF2


def _lookup_tables() -> dict[str, np.ndarray]:
    han = np.zeros(1 << 16, dtype=np.uint16)
    han[HAN_FIRST : HAN_LAST + 1] = np.arange(1, ALPHABET_SIZE + 1, dtype=np.uint16)
    mixed = han.copy()
    for chars, mark in ((_ALNUM, _MARK_ALNUM), (".-", _MARK_JOINER), ("+", _MARK_PLUS)):
        for c in chars:
            mixed[ord(c)] = mixed[ord(c) + _FULL_WIDTH_SHIFT] = mark
    return {"han": han, "mixed": mixed}


_TABLES = _lookup_tables()

# The atom rule as a regular expression: the reference for scan's vectorised rule (the tests
# check that both agree) and the tokenizer of single texts (Vocabulary.segment).
_A = "0-9A-Za-z\uff10-\uff19\uff21-\uff3a\uff41-\uff5a"
_ATOM = f"[{_A}]+(?:[.\\-+\uff0e\uff0d\uff0b][{_A}]+)*[+\uff0b]*"
_HAN = "\u4e00-\u9fff"
_UNIT = {"mixed": re.compile(f"[{_HAN}]|{_ATOM}"), "han": re.compile(f"[{_HAN}]")}
_RUN = {"mixed": re.compile(f"(?:[{_HAN}]|{_ATOM})+"), "han": re.compile(f"[{_HAN}]+")}
_HAS_ALNUM = re.compile(f"[{_A}]")
_NFKC = str.maketrans({chr(ord(c) + _FULL_WIDTH_SHIFT): c for c in _ALNUM + ".-+"})


@dataclass
class Scan:
    """One chunk before the alphabet is known.

    Attributes:
        precodes: ``(L,)`` uint16: Han codes, 0 at boundaries (a 0 also separates texts and ends
            the array), ``PLACEHOLDER`` at the one position each atom occupies.
        atoms: the NFKC form of each placeholder, in order (``len == #placeholders``).
        surfaces: the surface form of each placeholder, in order.
    """

    precodes: np.ndarray
    atoms: list[str] = field(default_factory=list)
    surfaces: list[str] = field(default_factory=list)


def check_script(script: object) -> str:
    """Return ``script`` if it is one of :data:`SCRIPTS`, else raise a ValueError naming it."""
    if script not in SCRIPTS:
        raise ValueError(f"script must be one of {SCRIPTS}, got {script!r}")
    return script  # type: ignore[return-value]


def nfkc(text: str) -> str:
    """NFKC of a string of atom characters and Han: full-width letters, digits, ``.-+`` to ASCII.

    Equal to ``unicodedata.normalize("NFKC", text)`` on every string that :func:`scan` makes
    atoms or Han codes of (other characters are left as they are).
    """
    return text.translate(_NFKC)


def units(text: str, script: str = "mixed") -> list[str]:
    """The units (Han characters and atoms, in surface form) of ``text``, in order.

    Characters that are neither (punctuation, whitespace, other scripts) are dropped, so
    ``"".join(units(w)) == w`` exactly when ``w`` is made of units only.
    """
    return _UNIT[check_script(script)].findall(text)


def unit_runs(text: str, script: str = "mixed") -> list[tuple[int, int]]:
    """``(start, end)`` string offsets of the maximal runs of adjacent units of ``text``.

    A run is what :func:`scan` turns into consecutive non-zero pre-codes (before rare atoms
    become boundaries): n-grams live inside runs.
    """
    return [m.span() for m in _RUN[check_script(script)].finditer(text)]


def scan(texts: Sequence[str], script: str = "mixed") -> Scan:
    """Pre-codes of ``texts`` joined with a boundary after each (see :class:`Scan`).

    One lookup table maps each UTF-16 code unit to its Han code, 0 (boundary: a lone surrogate,
    both halves of an astral character, anything else), or, with ``script="mixed"``, a marker
    for "letter/digit", "joiner" or "plus". Only when the chunk holds a letter or digit are the
    marked units (gathered into a compact array) run through the atom rule of the module
    docstring: a joiner is inside an atom iff both of its neighbours are letters/digits, a
    ``+`` run is inside iff it follows a letter/digit and is not such an inner joiner; a new atom
    starts at a member whose predecessor is not a member, or is a trailing ``+`` while it is a
    letter/digit ("C++" "11"). The first unit of each atom becomes ``PLACEHOLDER``, its other
    units are removed, unattached joiners become 0.

    Args:
        texts: the chunk's documents.
        script: ``"mixed"`` (atoms) or ``"han"`` (Han characters only; every other character
            is a boundary).

    Returns:
        The chunk's :class:`Scan`.

    Raises:
        ValueError: if ``script`` is not one of :data:`SCRIPTS`.
    """
    check_script(script)
    joined = "\n".join(texts) + "\n"
    cp = np.frombuffer(joined.encode("utf-16-le", "surrogatepass"), dtype="<u2")
    pre = np.take(_TABLES[script], cp)
    if script == "han":
        return Scan(pre)
    pos = np.flatnonzero(pre >= _MARK_JOINER)  # every letter, digit and joiner
    if pos.shape[0] == 0:
        return Scan(pre)
    kind = pre[pos]
    alnum = kind == _MARK_ALNUM
    if not alnum.any():
        pre[pos] = 0
        return Scan(pre)
    m = pos.shape[0]
    adj = np.diff(pos) == 1  # (m − 1,) the compact neighbours are neighbours in the text
    a_prev = np.zeros(m, dtype=bool)
    a_prev[1:] = adj & alnum[:-1]
    a_next = np.zeros(m, dtype=bool)
    a_next[:-1] = adj & alnum[1:]
    inner = ~alnum & a_prev & a_next
    plus = kind == _MARK_PLUS
    trailing = plus & ~inner
    pp = np.flatnonzero(trailing)  # (#p,) candidate trailing pluses (never inner joiners)
    if pp.shape[0]:
        # a run of '+' starts where the unit before is not a '+'; it is trailing iff that unit
        # is a letter/digit (a run holding an inner joiner has length 1 and is not here)
        p_prev = np.zeros(m, dtype=bool)
        p_prev[1:] = adj & plus[:-1]
        first = ~p_prev[pp]
        run_ok = a_prev[pp][first]  # (#runs,)
        trailing[pp] = run_ok[np.cumsum(first) - 1]
    member = alnum | inner | trailing
    t_prev = np.zeros(m, dtype=bool)
    t_prev[1:] = adj & trailing[:-1]
    m_prev = np.zeros(m, dtype=bool)
    m_prev[1:] = adj & member[:-1]
    start = member & (~m_prev | (t_prev & alnum))
    pre[pos[~member]] = 0
    pre[pos[start]] = PLACEHOLDER
    members = pos[member]
    # (#members + #atoms − 1,) the atoms' units, a newline between two atoms
    text = np.insert(cp[members], np.flatnonzero(start[member])[1:], 0x0A)
    surfaces = text.astype("<u2").tobytes().decode("utf-16-le").split("\n")
    wide = text >= 0xFF00
    if wide.any():
        folded = np.where(wide, text - _FULL_WIDTH_SHIFT, text).astype("<u2")
        atoms = folded.tobytes().decode("utf-16-le").split("\n")
    else:
        atoms = surfaces.copy()
    return Scan(np.delete(pre, pos[member & ~start]), atoms, surfaces)


def atom_counts(s: Scan) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """``({nfkc: count}, {(nfkc, surface): count})`` of one chunk's atoms (exact; sum to merge)."""
    counts = collections.Counter(s.atoms)
    surfaces = collections.Counter(zip(s.atoms, s.surfaces, strict=True))
    return dict(counts), dict(surfaces)


@dataclass(frozen=True)
class Alphabet:
    """The corpus's atoms beyond Han: ``atoms[i]`` (NFKC) has code ``ATOM_FIRST + i``.

    Attributes:
        script: ``"mixed"`` or ``"han"``.
        atoms: sorted NFKC forms of the kept atoms.
        surfaces: the display form of each (its most frequent surface; ties: the smallest string).
    """

    script: str = "mixed"
    atoms: tuple[str, ...] = ()
    surfaces: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_script(self.script)
        if len(self.atoms) != len(self.surfaces):
            raise ValueError(
                f"surfaces must have one entry per atom ({len(self.atoms)}), "
                f"got {len(self.surfaces)}"
            )
        if len(self.atoms) > CODE_LIMIT - ATOM_FIRST:
            raise ValueError(
                f"atoms must hold at most {CODE_LIMIT - ATOM_FIRST} atoms, got {len(self.atoms)}"
            )

    def __reduce__(self) -> tuple:
        # the fields only: the lookup caches below are rebuilt where the alphabet is used
        return (Alphabet, (self.script, self.atoms, self.surfaces))

    @classmethod
    def build(
        cls,
        script: str,
        counts: Mapping[str, int],
        surfaces: Mapping[tuple[str, str], int],
        min_count: int,
    ) -> Alphabet:
        """The alphabet of the atoms with count ≥ ``min_count`` (deterministic).

        The result depends on the summed counts only, not on the order in which chunks or
        workers were merged. At most ``CODE_LIMIT − ATOM_FIRST`` (44,542) atoms get a code; when
        more reach ``min_count`` the most frequent are kept (ties: the smaller NFKC string) and a
        ``RuntimeWarning`` names how many were dropped (they become boundaries, so n-grams
        through them are not counted).

        Args:
            script: ``"mixed"`` or ``"han"``.
            counts: ``{nfkc: count}`` summed over the corpus (:func:`atom_counts`).
            surfaces: ``{(nfkc, surface): count}`` summed over the corpus.
            min_count: the counting threshold, ≥ 1.

        Raises:
            ValueError: on an unknown ``script`` or ``min_count < 1``.
        """
        check_script(script)
        min_count = check_int("min_count", min_count, low=1)
        kept = [a for a, c in counts.items() if c >= min_count]
        cap = CODE_LIMIT - ATOM_FIRST
        if len(kept) > cap:
            kept.sort(key=lambda a: (-counts[a], a))
            warnings.warn(
                f"{len(kept) - cap} of the {len(kept)} atoms with count >= {min_count} were "
                f"dropped (they become boundaries): at most {cap} atoms get a code; the most "
                "frequent were kept",
                RuntimeWarning,
                stacklevel=2,
            )
            kept = kept[:cap]
        kept.sort()
        best: dict[str, tuple[int, str]] = {}
        for (a, sf), c in surfaces.items():
            cur = best.get(a)
            if cur is None or (-c, sf) < (-cur[0], cur[1]):
                best[a] = (c, sf)
        return cls(script, tuple(kept), tuple(best.get(a, (0, a))[1] for a in kept))

    @cached_property
    def _index(self) -> dict[str, int]:
        return {a: ATOM_FIRST + i for i, a in enumerate(self.atoms)}

    @cached_property
    def _display(self) -> dict[str, str]:
        return dict(zip(self.atoms, self.surfaces, strict=True))

    def code(self, atom: str) -> int:
        """Code of one atom given in any surface form (NFKC-equal), 0 if it has none."""
        return self._index.get(nfkc(atom), 0)

    def display(self, atom: str) -> str:
        """The corpus's surface form of an atom given in any form (itself if unknown)."""
        return self._display.get(nfkc(atom), atom)

    def resolve(self, s: Scan) -> np.ndarray:
        """int32 codes of a scanned chunk: each placeholder becomes its atom's code, or 0."""
        codes = s.precodes.astype(np.int32)
        if s.atoms:
            index = self._index
            codes[codes == PLACEHOLDER] = [index.get(a, 0) for a in s.atoms]
        return codes

    def encode(self, texts: str | Sequence[str]) -> np.ndarray:
        """``resolve(scan(texts, self.script))`` (a single string is one text)."""
        if isinstance(texts, str):
            texts = [texts]
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"texts[{i}] must be str, got {type(t).__name__}")
        return self.resolve(scan(texts, self.script))

    def decode(self, codes: np.ndarray) -> list[str]:
        """Strings (surface forms) of an ``(m, n)`` array of non-zero codes.

        Raises:
            ValueError: if ``codes`` is not 2-D or holds an atom code this alphabet lacks.
        """
        codes = np.asarray(codes)
        if codes.ndim != 2:
            raise ValueError(f"codes must be 2-D (m, n), got shape {codes.shape}")
        m, n = codes.shape
        if m == 0:
            return []
        atom = codes >= ATOM_FIRST
        han = np.where(atom, 1, codes) if atom.any() else codes
        cp = np.ascontiguousarray(han.astype("<u4") + np.uint32(HAN_FIRST - 1))
        out = cp.view(f"<U{n}").reshape(m).tolist()
        rows = np.flatnonzero(atom.any(axis=1))
        if rows.shape[0]:
            top = int(codes.max())
            if top >= ATOM_FIRST + len(self.atoms):
                raise ValueError(
                    f"codes must be < {ATOM_FIRST + len(self.atoms)} (this alphabet has "
                    f"{len(self.atoms)} atoms), got {top}"
                )
            surf = self.surfaces
            for r in rows.tolist():
                out[r] = "".join(
                    surf[c - ATOM_FIRST] if c >= ATOM_FIRST else chr(c + HAN_FIRST - 1)
                    for c in codes[r].tolist()
                )
        return out
