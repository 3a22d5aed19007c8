"""Chinese text without labels: domain vocabulary mining.

- :mod:`~kexue.text.ngrams`: exact streaming n-gram counts (map per chunk, exact merge, prune
  once), over processes.
- :mod:`~kexue.text.vocab`: word discovery (all-splits PMI, branching entropy, frequency floor)
  and the unigram segmenter of the discovered vocabulary.
- :mod:`~kexue.text.corpus`: streaming input (text lines, JSON lines, gz, directories, stdin)
  with a chosen policy for bad bytes, empty and binary files, and a summary of what was skipped.
- :mod:`~kexue.text.data`: the real corpora and lexicons that ship inside PyPI packages.
- :mod:`~kexue.text.contrast`: domain against general corpus (log-likelihood ratio, log-odds
  with an informative Dirichlet prior, and the note's formula as ``method="blog"``).

References:
    https://kexue.fm/archives/6540 (分享一次专业领域词汇的无监督挖掘)
"""

# The function ``contrast`` is not re-exported here: it would shadow the module of that name.
from kexue.text.contrast import Scored, is_han_word, precision_at_k
from kexue.text.corpus import Corpus, ReadSummary, chunks, read_documents
from kexue.text.ngrams import NgramCounter, NgramTable, count_ngrams
from kexue.text.vocab import Vocabulary, WordScores, discover

__all__ = [
    "Corpus",
    "NgramCounter",
    "NgramTable",
    "ReadSummary",
    "Scored",
    "Vocabulary",
    "WordScores",
    "chunks",
    "count_ngrams",
    "discover",
    "is_han_word",
    "precision_at_k",
    "read_documents",
]
