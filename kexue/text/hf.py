"""Adapters for local HuggingFace language models (``transformers``), loaded by path only.

- :class:`CausalLMScorer`: log p(x) of whole texts from a causal LM, batched — a drop-in
  fluency term for :class:`~kexue.text.constrained.TextTarget`. With ``chains=K`` the samplers
  score all K proposals of a step in one call; the scorer drops repeated texts and groups the
  rest by length, so a batch pads little.
- :class:`MaskedLMConditional`: the conditionals p(x_i = v | x_{−i}) of a masked LM over the
  characters of a :class:`~kexue.text.constrained.TokenSpace`, for
  :func:`~kexue.text.sampling.gibbs` (the "Gibbs sampling with BERT" of the series), and its
  pseudo-log-likelihood Σ_i log p(x_i | x_{−i}) as a term.

Nothing is downloaded: ``path`` must be a directory that holds a model and its tokenizer
(``save_pretrained``); ``local_files_only=True`` is always set. Install with
``pip install transformers``.

References:
    https://kexue.fm/archives/8119 (【搜出来的文本】⋅(三)基于BERT的文本采样)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kexue._checks import check_int

__all__ = ["CausalLMScorer", "MaskedLMConditional"]


def _load(path: str | Path, kind: str) -> tuple[Any, Any]:
    try:
        import transformers
    except ImportError as err:
        raise ImportError("the HuggingFace adapters need transformers: pip install "
                          "transformers") from err
    if not Path(path).is_dir():
        raise FileNotFoundError(f"model directory {path} does not exist (give the path of a "
                                "save_pretrained directory; nothing is downloaded)")
    auto = {"causal": transformers.AutoModelForCausalLM,
            "masked": transformers.AutoModelForMaskedLM}[kind]
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = auto.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} does not hold a {kind} LM and its tokenizer: {err}") from None
    return tokenizer, model.eval()


def _special(tokenizer: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(tokenizer, f"{name}_token_id", None)
        if value is not None:
            return int(value)
    return None


class CausalLMScorer:
    """log p(x) = Σ_t log p(x_t | <bos>, x_{<t}) + log p(<eos> | x) under a local causal LM.

    The text is tokenised without special tokens; the start token is the tokenizer's BOS (or
    CLS, or EOS), the end token its EOS (or SEP) if it has one. Distinct texts are scored in
    right-padded batches of ``batch_size`` with an attention mask, shortest first (similar
    lengths share a batch); the log-softmax is taken in float32 at least and summed in
    float64.

    Args:
        path: A directory written by ``save_pretrained`` (model and tokenizer).
        batch_size: Texts per forward pass.
        device: Where the model runs.

    Raises:
        FileNotFoundError: If ``path`` is not a directory.
        ValueError: If it holds no causal LM, or the tokenizer has no usable start token.
    """

    def __init__(self, path: str | Path, batch_size: int = 32,
                 device: str | torch.device = "cpu") -> None:
        batch_size = check_int("batch_size", batch_size, low=1)
        self.tokenizer, model = _load(path, "causal")
        self.model = model.to(device)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.start = _special(self.tokenizer, "bos", "cls", "eos")
        self.end = _special(self.tokenizer, "eos", "sep")
        if self.start is None:
            raise ValueError(f"the tokenizer of {path} has no BOS, CLS or EOS token to start with")

    def _ids(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return [self.start, *ids] + ([self.end] if self.end is not None else [])

    @torch.no_grad()
    def log_prob(self, texts: Sequence[str]) -> np.ndarray:
        """Natural-log probability of each text, (N,)."""
        unique = list(dict.fromkeys(texts))
        seqs = [self._ids(t) for t in unique]
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        scores = np.empty(len(unique))
        for lo in range(0, len(order), self.batch_size):
            chunk = order[lo:lo + self.batch_size]
            width = max(len(seqs[i]) for i in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)  # (B, T), right-padded
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for row, i in enumerate(chunk):
                ids[row, :len(seqs[i])] = torch.tensor(seqs[i])
                mask[row, :len(seqs[i])] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            logits = self.model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
            if logits.dtype in (torch.float16, torch.bfloat16):
                logits = logits.float()
            logp = torch.log_softmax(logits[:, :-1], -1)  # (B, T−1, V) predicts ids[:, 1:]
            picked = logp.gather(-1, ids[:, 1:, None])[..., 0] * mask[:, 1:]  # (B, T−1)
            scores[chunk] = picked.double().sum(1).cpu().numpy()
        where = {t: i for i, t in enumerate(unique)}
        return scores[[where[t] for t in texts]] if len(texts) else scores

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """The fluency term: log p(x) of each text."""
        return self.log_prob(texts)


class MaskedLMConditional:
    """Conditionals of a local masked LM over one character position.

    For a character-level tokenizer (Chinese BERT: one token per Han character), masking
    position i of ``text`` and reading the masked LM's softmax at that position gives
    p(x_i = v | x_{−i}); restricted to ``candidates`` and renormalised, it is what
    :func:`~kexue.text.sampling.gibbs` needs as ``conditional``.

    Args:
        path: A directory written by ``save_pretrained`` (model and tokenizer).
        device: Where the model runs.

    Raises:
        FileNotFoundError: If ``path`` is not a directory.
        ValueError: If it holds no masked LM or its tokenizer has no mask token.
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        self.tokenizer, model = _load(path, "masked")
        self.model = model.to(device)
        self.device = torch.device(device)
        if self.tokenizer.mask_token_id is None:
            raise ValueError(f"the tokenizer of {path} has no mask token")

    def _char_ids(self, chars: Sequence[str]) -> np.ndarray:
        ids = self.tokenizer.convert_tokens_to_ids(list(chars))
        unk = self.tokenizer.unk_token_id
        return np.array([-1 if i is None or i == unk else i for i in ids])

    @torch.no_grad()
    def log_probs_at(self, text: str, i: int, chars: Sequence[str]) -> np.ndarray:
        """log p(x_i = c | x_{−i}) for each character c of ``chars``, renormalised over them.

        Characters the tokenizer does not know get −inf.

        Raises:
            ValueError: If ``i`` is outside the text or no character of ``chars`` is known.
        """
        if not 0 <= i < len(text):
            raise ValueError(f"position i={i} is outside the text of length {len(text)}")
        start = _special(self.tokenizer, "cls", "bos")
        tokens = [] if start is None else [start]
        offset = len(tokens)
        tokens += self.tokenizer.convert_tokens_to_ids(list(text))
        tokens[offset + i] = self.tokenizer.mask_token_id
        if self.tokenizer.sep_token_id is not None:
            tokens.append(self.tokenizer.sep_token_id)
        ids = torch.tensor([tokens], device=self.device)  # (1, T)
        logits = self.model(input_ids=ids).logits[0, offset + i].float()  # (V,)
        logp = torch.log_softmax(logits, -1).double().cpu().numpy()
        vocab = self._char_ids(chars)
        if np.all(vocab < 0):
            raise ValueError("none of the candidate characters is in the masked LM's vocabulary")
        out = np.where(vocab >= 0, logp[np.maximum(vocab, 0)], -np.inf)
        return out - np.logaddexp.reduce(out[np.isfinite(out)])

    def conditional(self, space: Any,
                    candidates: Sequence[int]) -> Callable[[Any, int], np.ndarray]:
        """A ``conditional(state, i)`` for :func:`~kexue.text.sampling.gibbs` over a
        character :class:`~kexue.text.constrained.TokenSpace` (one character per token);
        it scores ``candidates`` in the order given, as :func:`gibbs` expects."""
        chars = [space.strings[c] for c in candidates]

        def conditional(state: Any, i: int) -> np.ndarray:
            return self.log_probs_at(space.decode(state.tokens), i, chars)
        return conditional

    @torch.no_grad()
    def pseudo_log_likelihood(self, texts: Sequence[str]) -> np.ndarray:
        """Σ_i log p(x_i | x_{−i}) of each text (over the model's whole vocabulary), (N,)."""
        out = np.zeros(len(texts))
        for n, text in enumerate(texts):
            start = _special(self.tokenizer, "cls", "bos")
            prefix = [] if start is None else [start]
            base = prefix + self.tokenizer.convert_tokens_to_ids(list(text))
            if self.tokenizer.sep_token_id is not None:
                base = base + [self.tokenizer.sep_token_id]
            if not text:
                continue
            ids = torch.tensor(base).repeat(len(text), 1)  # (L, T): row i masks character i
            rows = torch.arange(len(text))
            cols = rows + len(prefix)
            target = ids[rows, cols].clone()
            ids[rows, cols] = self.tokenizer.mask_token_id
            logits = self.model(input_ids=ids.to(self.device)).logits.float()  # (L, T, V)
            logp = torch.log_softmax(logits[rows, cols], -1)  # (L, V)
            out[n] = float(logp[rows, target.to(logp.device)].sum())
        return out
