"""Chinese text without labels: domain vocabulary mining.

- :mod:`~kexue.text.corpus`: streaming input (text lines, JSON lines, gz, directories, stdin)
  with a chosen policy for bad bytes, empty and binary files, and a summary of what was skipped.
- :mod:`~kexue.text.data`: the real corpora and lexicons that ship inside PyPI packages.
- :mod:`~kexue.text.contrast`: domain against general corpus (log-likelihood ratio, log-odds
  with an informative Dirichlet prior, and the note's formula as ``method="blog"``).

References:
    https://kexue.fm/archives/6540 (分享一次专业领域词汇的无监督挖掘)
"""

from kexue.text.contrast import Scored, contrast, is_han_word, precision_at_k
from kexue.text.corpus import Corpus, ReadSummary, chunks, read_documents

__all__ = [
    "Corpus",
    "ReadSummary",
    "Scored",
    "chunks",
    "contrast",
    "is_han_word",
    "precision_at_k",
    "read_documents",
]
