"""Chinese text without labels: domain vocabulary mining and constrained text generation.

- :mod:`~kexue.text.ngrams`: exact n-gram counts of Han characters and mixed-script atoms,
  level-wise Apriori as map/reduce over shards, in this process, a process pool, any
  ``concurrent.futures`` executor or a Dask cluster (:mod:`~kexue.text.shards`: inputs that
  workers read themselves).
- :mod:`~kexue.text.segmentation`: SIGHAN-scored unsupervised segmentation (nVBE autonomy).
- :mod:`~kexue.text.diagnostics`: split R-hat and ESS of MCMC chains.
- :mod:`~kexue.text.vocab`: word discovery (all-splits PMI, branching entropy, frequency floor)
  and the unigram segmenter of the discovered vocabulary.
- :mod:`~kexue.text.corpus`: streaming input (text lines, JSON lines, gz, directories, stdin)
  with a chosen policy for bad bytes, empty and binary files, and a summary of what was skipped.
- :mod:`~kexue.text.data`: the real corpora and lexicons that ship inside PyPI packages.
- :mod:`~kexue.text.contrast`: domain against general corpus (log-likelihood ratio, log-odds
  with an informative Dirichlet prior, and the note's formula as ``method="blog"``).
- :mod:`~kexue.text.lm`: modified Kneser–Ney character n-gram models, forward and backward;
  :func:`~kexue.text.lm.default_lm`, the People's Daily model cached under
  :func:`~kexue.text.lm.cache_dir`.
- :mod:`~kexue.text.sampling`: importance, rejection, Gibbs, Metropolis–Hastings (replace /
  insert / delete with locked spans, exact acceptance ratios) and simulated annealing.
- :mod:`~kexue.text.constrained`: p(x | c) ∝ p(x)·χ(x, c) from composable terms; keywords to
  sentence, paraphrase, compression, correction.
- :mod:`~kexue.text.neural`: a causal character LM that kexue trains itself (``kexue lm train
  --neural``), opt-in as the fluency term of constrained generation.
- :mod:`~kexue.text.judging`: judges that need no language model (do keywords stay words under a
  segmenter; grammar proxies) and the held-out keyword sets; :mod:`~kexue.text.wordlm`: a word
  bigram judge that scores raw text by summing over every segmentation.
- :mod:`~kexue.text.hf`: local HuggingFace causal and masked LMs as terms and conditionals.

References:
    https://kexue.fm/archives/6540 (分享一次专业领域词汇的无监督挖掘)
    https://kexue.fm/archives/8084, https://kexue.fm/archives/8194 (【搜出来的文本】)
"""

from kexue.text.constrained import (
    Generations,
    TextTarget,
    TokenSpace,
    compress,
    correct,
    keyword_boundaries,
    keywords_to_sentence,
    paraphrase,
)

# The function ``contrast`` is not re-exported here: it would shadow the module of that name.
from kexue.text.contrast import Scored, is_han_word, precision_at_k
from kexue.text.corpus import Corpus, ReadSummary, chunks, read_documents
from kexue.text.data import DataPackageError
from kexue.text.judging import heldout_keyword_sets, keyword_integrity
from kexue.text.lm import BiLM, NgramLM, cache_dir, default_lm
from kexue.text.ngrams import NgramCounter, NgramTable, count_ngrams
from kexue.text.sampling import (
    EditProposal,
    MCMCChains,
    State,
    gibbs,
    importance_sampling,
    metropolis_hastings,
    rejection_sampling,
    simulated_annealing,
)
from kexue.text.segmentation import AutonomySegmenter, score_segmentation
from kexue.text.shards import plan_shards
from kexue.text.vocab import Vocabulary, WordScores, discover
from kexue.text.wordlm import WordLM

__all__ = [
    "AutonomySegmenter",
    "BiLM",
    "Corpus",
    "DataPackageError",
    "EditProposal",
    "Generations",
    "MCMCChains",
    "NeuralConfig",
    "NeuralLM",
    "NgramCounter",
    "NgramLM",
    "NgramTable",
    "ReadSummary",
    "Scored",
    "State",
    "TextTarget",
    "TokenSpace",
    "Vocabulary",
    "WordLM",
    "WordScores",
    "cache_dir",
    "chunks",
    "compress",
    "correct",
    "count_ngrams",
    "default_lm",
    "discover",
    "gibbs",
    "heldout_keyword_sets",
    "importance_sampling",
    "is_han_word",
    "keyword_boundaries",
    "keyword_integrity",
    "keywords_to_sentence",
    "metropolis_hastings",
    "paraphrase",
    "plan_shards",
    "precision_at_k",
    "read_documents",
    "rejection_sampling",
    "score_segmentation",
    "simulated_annealing",
    "train_neural",
]

_NEURAL = ("NeuralConfig", "NeuralLM", "train_neural")


def __getattr__(name: str) -> object:
    """The neural LM's names, imported on first use (they pull in torch and kexue.attention)."""
    if name in _NEURAL:
        from kexue.text import neural

        return getattr(neural, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
