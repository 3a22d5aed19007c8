"""Atoms: the units that n-grams are counted over, and the corpus-specific alphabet that codes them.

CONTRACT STUB (issue 17). The signatures below are fixed; the mixed-script internals are filled in
by the owner of this file. Today ``scan`` treats every non-Han character as a boundary (the
behaviour of ``script="han"``), so the engine can be built against this module while the
mixed-script atoms are written.

Codes. A Han character U+4E00–U+9FFF is one atom with the fixed code ``ord(c) − 0x4E00 + 1`` in
[1, 20992]. With ``script="mixed"`` a maximal run of Latin letters and digits (ASCII or full-width
U+FF10–FF5A), with the joiners ``.``, ``-``, ``+`` inside it, is ONE atom too ("PM2.5", "COVID-19",
"110kV", "5G"), counted in its NFKC form and shown in the corpus's own (most frequent) form. Atom
codes are corpus-specific: the kept atoms (count ≥ ``min_count``, the level-1 survivors) are sorted
by their NFKC form and the i-th gets code ``ATOM_FIRST + i``; a rarer atom can be part of no kept
n-gram (Apriori), so it becomes a boundary (0) exactly like punctuation. Every code is < 2^16.

Pipeline (what the counting engine calls):

1. ``scan(texts, script)`` per chunk -> :class:`Scan` (pre-codes with a placeholder where an atom
   stands, the atoms' NFKC and surface forms in order). Needs no global knowledge.
2. ``atom_counts(scan)`` per chunk, summed exactly over chunks/workers (dicts of ints).
3. ``Alphabet.build(script, counts, surfaces, min_count)`` once, on the driver: deterministic (no
   dependence on chunk order), picklable, broadcast to workers.
4. ``alphabet.resolve(scan)`` -> int32 codes of the chunk (placeholders -> atom code or 0).

References:
    https://kexue.fm/archives/6540 (分享一次专业领域词汇的无监督挖掘)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

HAN_FIRST = 0x4E00
HAN_LAST = 0x9FFF
ALPHABET_SIZE = HAN_LAST - HAN_FIRST + 1  # 20992 Han codes, 1-based; 0 is the boundary
ATOM_FIRST = ALPHABET_SIZE + 1  # first code of a corpus-specific (mixed-script) atom
PLACEHOLDER = 0xFFFF  # pre-code of an atom whose code is not known yet
CODE_LIMIT = PLACEHOLDER  # every resolved code is below: at most CODE_LIMIT − ATOM_FIRST atoms
SCRIPTS = ("mixed", "han")


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


def scan(texts: Sequence[str], script: str = "mixed") -> Scan:
    """Pre-codes of texts joined with a boundary after each (the stub: Han only)."""
    check_script(script)
    joined = "\n".join(texts) + "\n"
    cp = np.frombuffer(joined.encode("utf-16-le", "surrogatepass"), dtype="<u2")
    out = cp.astype(np.int32)
    out -= HAN_FIRST - 1
    out[(cp < HAN_FIRST) | (cp > HAN_LAST)] = 0
    return Scan(out.astype(np.uint16))


def atom_counts(s: Scan) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """``({nfkc: count}, {(nfkc, surface): count})`` of one chunk's atoms (exact; sum to merge)."""
    counts: dict[str, int] = {}
    surfaces: dict[tuple[str, str], int] = {}
    for a, sf in zip(s.atoms, s.surfaces, strict=True):
        counts[a] = counts.get(a, 0) + 1
        surfaces[a, sf] = surfaces.get((a, sf), 0) + 1
    return counts, surfaces


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

    @classmethod
    def build(
        cls,
        script: str,
        counts: Mapping[str, int],
        surfaces: Mapping[tuple[str, str], int],
        min_count: int,
    ) -> Alphabet:
        """The alphabet of the atoms with count ≥ ``min_count`` (deterministic)."""
        check_script(script)
        kept = sorted(a for a, c in counts.items() if c >= min_count)
        best: dict[str, tuple[int, str]] = {}
        for (a, sf), c in surfaces.items():
            cur = best.get(a)
            if cur is None or (-c, sf) < (-cur[0], cur[1]):
                best[a] = (c, sf)
        return cls(script, tuple(kept), tuple(best[a][1] for a in kept))

    def resolve(self, s: Scan) -> np.ndarray:
        """int32 codes of a scanned chunk: each placeholder becomes its atom's code, or 0."""
        codes = s.precodes.astype(np.int32)
        where = np.flatnonzero(s.precodes == PLACEHOLDER)
        if where.shape[0]:
            index = {a: ATOM_FIRST + i for i, a in enumerate(self.atoms)}
            codes[where] = [index.get(a, 0) for a in s.atoms]
        return codes

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``resolve(scan(texts, self.script))``."""
        return self.resolve(scan(texts, self.script))

    def decode(self, codes: np.ndarray) -> list[str]:
        """Strings (surface forms) of an ``(m, n)`` array of non-zero codes."""
        codes = np.asarray(codes)
        if codes.ndim != 2:
            raise ValueError(f"codes must be 2-D (m, n), got shape {codes.shape}")
        m, n = codes.shape
        if m == 0:
            return []
        cp = np.ascontiguousarray(codes.astype("<u4") + np.uint32(HAN_FIRST - 1))
        return cp.view(f"<U{n}").reshape(m).tolist()
