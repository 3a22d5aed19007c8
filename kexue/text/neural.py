"""A small causal character language model that kexue trains itself, offline, on one thread.

The neural counterpart of :class:`kexue.text.lm.NgramLM` for constrained generation
(:mod:`kexue.text.constrained`): the same vocabulary rule and the same sentence convention, so the
two are interchangeable as the fluency term ``fluency_lm=`` and their NLL/char compare directly::

    log p(x) = Σ_{t=1}^{L+1} log p(z_t | z_0 … z_{t−1}),   z = <s> x_1 … x_L </s>,
    NLL/char = −Σ_x log p(x) / Σ_x (|x| + 1).

``kind="transformer"``: token + position embeddings, ``layers`` pre-norm
:class:`kexue.attention.Block` s around causal :class:`~kexue.attention.DenseAttention` (or causal
:class:`~kexue.attention.LocalAttention` for ``attention="local"``), a final LayerNorm and an output
head tied to the token embedding (plus a bias). ``kind="gru"``: a recurrent LM (embedding, GRU,
tied head), a model of another family, e.g. a judge of text a transformer or an n-gram model
produced.

Scoring is batched and, for the transformer, incremental: the keys and values of every layer of
recently scored sentences stay in an LRU cache found through a prefix index, so a sentence that
shares its first m characters with a cached one runs only positions m+1 … L through the layers
(an MH proposal shares the prefix of its chain's state up to the edit). Cached and fresh scores
agree to float32 rounding (tests: ``tests/test_text_neural.py``).

Sentences longer than ``max_len − 1`` characters: training reads their first ``max_len`` tokens;
scoring predicts token t > max_len from a window of the tokens before it that starts at a multiple
k·S of the stride S = max_len // 2 (the smallest k with t − kS ≤ max_len), so every prediction
sees at least max_len − S tokens of context.

References:
    https://kexue.fm/archives/8084 (【搜出来的文本】⋅(二)从MCMC到模拟退火)
    https://kexue.fm/archives/6853 (为节约而生:从标准Attention到稀疏Attention)
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kexue._checks import check_int, check_real
from kexue._io import atomic_save
from kexue._seeds import derive_seed
from kexue.attention import Block, DenseAttention, LocalAttention
from kexue.text.lm import _SPECIALS, BOS, EOS, UNK, cache_dir, vocabulary

__all__ = [
    "NeuralConfig",
    "NeuralLM",
    "default_neural_lm",
    "default_neural_lm_path",
    "train_neural",
]

_CACHE_SIZE = 1024  # sentences the prefix cache of a NeuralLM keeps by default
_FORMAT = 1  # version of the saved-model and checkpoint layout
_KINDS = ("transformer", "gru")
_ATTENTIONS = ("dense", "local")


@dataclass(frozen=True)
class NeuralConfig:
    """The architecture of a :class:`NeuralLM` (validated on construction).

    Attributes:
        kind: ``"transformer"`` (causal :mod:`kexue.attention` blocks) or ``"gru"``.
        dim: model width D.
        layers: number of blocks (transformer) or stacked GRU layers.
        heads: attention heads; must divide ``dim`` (transformer only).
        mlp_ratio: hidden width of each block's MLP as a multiple of ``dim``.
        dropout: dropout probability in training, in [0, 1).
        attention: ``"dense"`` (causal SDPA) or ``"local"`` (causal band: a query sees the
            ``window // 2`` keys before it and itself, as in
            :func:`kexue.attention.local_attention`).
        window: band width of ``attention="local"``.
        max_len: positions of the model (``<s>`` + characters; see the module docstring for
            longer sentences).

    Raises:
        ValueError: naming the field that is out of range.
    """

    kind: str = "transformer"
    dim: int = 128
    layers: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    attention: str = "dense"
    window: int = 32
    max_len: int = 128

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {self.kind!r}")
        if self.attention not in _ATTENTIONS:
            raise ValueError(f"attention must be one of {_ATTENTIONS}, got {self.attention!r}")
        check_int("dim", self.dim, low=1, high=4096)
        check_int("layers", self.layers, low=1, high=64)
        check_int("heads", self.heads, low=1)
        if self.dim % self.heads:
            raise ValueError(f"heads must divide dim={self.dim}, got heads={self.heads}")
        check_real("mlp_ratio", self.mlp_ratio, low=0, high=64)
        check_real("dropout", self.dropout, low=0, high=1, high_open=True)
        check_int("window", self.window, low=1)
        check_int("max_len", self.max_len, low=2, high=65536)


class _Net(nn.Module):
    """The network: ids (B, T) -> logits (B, T, V) of the next id at every position."""

    def __init__(self, config: NeuralConfig, vocab_size: int) -> None:
        super().__init__()
        c, d = config, config.dim
        self.config = config
        self.embed = nn.Embedding(vocab_size, d)
        self.drop = nn.Dropout(c.dropout)
        if c.kind == "transformer":
            self.pos = nn.Embedding(c.max_len, d)

            def mixer() -> nn.Module:
                if c.attention == "local":
                    return LocalAttention(d, c.heads, window=c.window, causal=True)
                return DenseAttention(d, c.heads, causal=True)

            self.blocks = nn.ModuleList(
                Block(d, mixer(), mlp_ratio=c.mlp_ratio, dropout=c.dropout)
                for _ in range(c.layers))
        else:
            self.rnn = nn.GRU(d, d, c.layers, batch_first=True,
                              dropout=c.dropout if c.layers > 1 else 0.0)
        self.norm = nn.LayerNorm(d)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        for name, p in self.named_parameters():
            if p.ndim == 2 and not name.startswith("rnn"):
                nn.init.normal_(p, std=0.02)
            elif name.endswith(".bias") and p.ndim == 1 and "norm" not in name:
                nn.init.zeros_(p)

    def hidden(self, ids: Tensor) -> Tensor:
        """(B, T) ids -> (B, T, D) final normalised states (causal: position t sees ids ≤ t)."""
        x = self.embed(ids)  # (B, T, D)
        if self.config.kind == "transformer":
            x = x + self.pos(torch.arange(ids.shape[1], device=ids.device))
            x = self.drop(x)
            for block in self.blocks:
                x = block(x)
        else:
            x, _ = self.rnn(self.drop(x))
        return self.norm(x)

    def head(self, h: Tensor) -> Tensor:
        """(..., D) states -> (..., V) logits through the tied embedding."""
        return F.linear(h, self.embed.weight, self.bias)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.drop(self.hidden(ids)))  # (B, T, V)


@dataclass
class _Entry:
    """What the cache keeps of one scored sentence of L characters (positions 0 … L)."""

    kv: Tensor      # (layers, 2, L + 1, D) keys and values of every layer
    h: Tensor       # (L + 1, D) final states
    logp: Tensor    # (L + 1,) float64 log p(z_{t+1} | z_≤t) at each position t


class _PrefixCache:
    """An LRU map text -> :class:`_Entry` with an index from every prefix of a cached text to
    the most recent text that has it (the index plays the part of a character trie)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: OrderedDict[str, _Entry] = OrderedDict()
        self.prefixes: dict[str, str] = {}

    def longest(self, text: str) -> tuple[int, str | None]:
        """The longest m such that a cached text starts with text[:m] (m ≥ 1), and that text."""
        for m in range(len(text), 0, -1):
            owner = self.prefixes.get(text[:m])
            if owner is not None:
                self.entries.move_to_end(owner)
                return m, owner
        return 0, None

    def put(self, text: str, entry: _Entry) -> None:
        if self.size <= 0:
            return
        self.entries[text] = entry
        self.entries.move_to_end(text)
        for m in range(1, len(text) + 1):
            self.prefixes[text[:m]] = text
        while len(self.entries) > self.size:
            old, _ = self.entries.popitem(last=False)
            for m in range(1, len(old) + 1):
                if self.prefixes.get(old[:m]) == old:
                    del self.prefixes[old[:m]]

    def clear(self) -> None:
        self.entries.clear()
        self.prefixes.clear()


class NeuralLM:
    """A trained neural character LM: sentence log-probabilities and next-character distributions.

    Build one with :func:`train_neural` or :meth:`load`. Its module is in eval mode and float32;
    scoring runs under ``torch.inference_mode`` on the CPU.

    Attributes:
        chars: the characters of ids 3, 4, … (0, 1, 2 are ``<unk>``, ``<s>``, ``</s>``).
        vocab_size: number of ids, specials included.
        config: the architecture.
        module: the network, ids (B, T) -> logits (B, T, vocab_size).
        cache_size: sentences whose per-layer keys and values the prefix cache keeps (0: none).
    """

    def __init__(self, chars: Sequence[str], config: NeuralConfig, module: nn.Module | None = None,
                 *, cache_size: int = _CACHE_SIZE) -> None:
        if not isinstance(config, NeuralConfig):
            raise ValueError(f"config must be a NeuralConfig, got {type(config).__name__}")
        self.chars = list(chars)
        self.vocab_size = len(self.chars) + len(_SPECIALS)
        self.config = config
        self.module = module if module is not None else _Net(config, self.vocab_size)
        self.module.eval()
        self._ids = {c: i + len(_SPECIALS) for i, c in enumerate(self.chars)}
        self.cache_size = check_int("cache_size", cache_size, low=0)
        self._cache = _PrefixCache(self.cache_size)

    # ------------------------------------------------------------------ vocabulary
    def encode(self, text: str) -> np.ndarray:
        """Ids of the characters of ``text``; unknown characters map to ``<unk>``."""
        return np.fromiter((self._ids.get(c, UNK) for c in text), np.int64, len(text))

    def unknown(self, text: str) -> list[str]:
        """The distinct characters of ``text`` that the model has never seen, in order."""
        return list(dict.fromkeys(c for c in text if c not in self._ids))

    def clear_cache(self) -> None:
        """Forget the prefix cache (it is also dropped whenever the weights could change)."""
        self._cache = _PrefixCache(self.cache_size)

    # ------------------------------------------------------------------ scoring
    def log_prob(self, texts: Sequence[str] | str) -> np.ndarray | float:
        """Natural-log probability of whole sentences, ``</s>`` included, given ``<s>``.

        Args:
            texts: One sentence or a sequence of them (scored in one batch).

        Returns:
            A float for one sentence, else an (N,) float64 array.
        """
        if isinstance(texts, str):
            return float(self.log_prob([texts])[0])
        return np.array([float(t.sum()) for t in self.token_log_probs(texts)], np.float64)

    def token_log_probs(self, texts: Sequence[str]) -> list[np.ndarray]:
        """log p(z_t | z_<t) of every predicted id of each text, scored in one batch.

        Returns:
            One (|x| + 1,) float64 array per text: its characters, then ``</s>``.
        """
        if isinstance(texts, str):
            raise ValueError("texts must be a sequence of strings, got one string")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"texts must be strings, got {type(t).__name__} at {i}")
        out: list[np.ndarray] = [np.zeros(0)] * len(texts)
        short = [i for i, t in enumerate(texts) if len(t) + 1 <= self.config.max_len]
        with torch.inference_mode():
            if short:
                score = self._score_incremental if self.config.kind == "transformer" \
                    else self._score_full
                for i, logp in zip(short, score([texts[i] for i in short]), strict=True):
                    out[i] = logp
            for i, t in enumerate(texts):
                if len(t) + 1 > self.config.max_len:
                    out[i] = self._score_windows(t)
        return out

    def nll_per_char(self, texts: Sequence[str]) -> float:
        """−Σ log p(x) / Σ (|x| + 1) over ``texts`` (nats per character, ``</s>`` counted)."""
        texts = list(texts)
        if not texts:
            raise ValueError("texts must hold at least one sentence, got none")
        total = 0.0
        for start in range(0, len(texts), 256):
            total += float(np.sum(self.log_prob(texts[start:start + 256])))
        return -total / sum(len(t) + 1 for t in texts)

    def next_probs(self, contexts: Sequence[str]) -> np.ndarray:
        """p(next id | <s> + context) for every id: (N,) contexts -> (N, vocab_size) float64.

        Rows sum to 1; ``<s>`` has the (small) probability the model gives it. A context of
        ``max_len`` or more characters is read through the window of the module docstring.
        """
        if isinstance(contexts, str):
            raise ValueError("contexts must be a sequence of strings, got one string")
        contexts = list(contexts)
        w = self.config.max_len
        rows = []
        for ctx in contexts:
            z = np.concatenate([[BOS], self.encode(ctx)])  # (c + 1,) inputs
            t = len(z)  # the target's index in <s> ctx </s>
            start = 0 if t <= w else _window_start(t, w)
            rows.append(z[start:t])
        out = np.zeros((len(contexts), self.vocab_size))
        with torch.inference_mode():
            for chunk in range(0, len(rows), 256):
                part = rows[chunk:chunk + 256]
                ids, lengths = _pad(part)
                h = self.module.hidden(ids)  # (B, T, D)
                last = h[torch.arange(len(part)), lengths - 1]  # (B, D)
                logits = self.module.head(last).double()  # (B, V)
                out[chunk:chunk + len(part)] = torch.softmax(logits, -1).numpy()
        return out

    def _score_full(self, texts: list[str]) -> list[np.ndarray]:
        """log p of every position by one padded forward pass (any kind, no cache)."""
        seqs = [np.concatenate([[BOS], self.encode(t), [EOS]]) for t in texts]
        ids, lengths = _pad([s[:-1] for s in seqs])  # (B, T) inputs
        targets, _ = _pad([s[1:] for s in seqs])
        keep = torch.arange(ids.shape[1])[None, :] < lengths[:, None]  # (B, T)
        h = self.module.hidden(ids)[keep]  # (R, D) real positions only
        picked = _head_log_probs(self.module, h, targets[keep]).numpy()  # (R,)
        return np.split(picked, np.cumsum(lengths.numpy())[:-1])

    def _score_windows(self, text: str) -> np.ndarray:
        """log p of every position of one sentence longer than the model's positions, window
        by window."""
        w = self.config.max_len
        z = np.concatenate([[BOS], self.encode(text), [EOS]])
        parts, t = [], 1
        while t < len(z):
            start = 0 if t <= w else _window_start(t, w)
            stop = min(start + w, len(z) - 1)  # inputs z[start:stop] predict z[start+1:stop+1]
            ids = torch.as_tensor(z[start:stop])[None]  # (1, T)
            logp = torch.log_softmax(self.module(ids)[0].float(), -1)  # (T, V)
            targets = torch.as_tensor(z[start + 1:stop + 1])
            picked = logp.gather(-1, targets[:, None])[:, 0].double()  # (T,)
            parts.append(picked[t - start - 1:].numpy())
            t = stop + 1
        return np.concatenate(parts)

    def _score_incremental(self, texts: list[str]) -> list[np.ndarray]:
        """The transformer's batched scoring with the prefix cache (see the module docstring).

        Per text i of L_i characters, the cache serves positions 0 … m_i (their keys, values
        and final states, and the log-probabilities of z_1 … z_{m_i}); positions s_i = m_i + 1 …
        L_i run through the layers as packed rows (the linear layers see no padding), attention
        runs on (B, H, N_max, K_max) with a causal (or causal band) mask, and the head runs on
        positions m_i … L_i only.
        """
        net, c = self.module, self.config
        d, nl, heads = c.dim, c.layers, c.heads
        dh = d // heads
        radius = c.window // 2 if c.attention == "local" else None
        b = len(texts)
        # deduplicate: a text scored twice in one batch is computed once
        unique = list(dict.fromkeys(texts))
        index = {t: k for k, t in enumerate(unique)}
        texts_u, b = unique, len(unique)
        enc = [self.encode(t) for t in texts_u]
        lengths = np.array([len(e) for e in enc], np.int64)  # (B,) L_i
        hits = [self._cache.longest(t) if self.cache_size else (0, None) for t in texts_u]
        cached = [self._cache.entries[o] if o is not None else None for _, o in hits]
        m = np.array([h[0] for h in hits], np.int64)
        full = np.array([o == t for (_, o), t in zip(hits, texts_u, strict=True)], bool)
        starts = np.where([e is not None for e in cached], m + 1, 0)  # (B,) s_i
        counts = lengths + 1 - starts  # (B,) new positions (0 when all of 0 … L_i are cached)
        kmax = int(lengths.max()) + 1
        nmax = max(int(counts.max()), 1)
        rows_b = np.repeat(np.arange(b), counts)  # (R,) batch index of each new row
        rows_r = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        rows_p = np.repeat(starts, counts) + rows_r  # (R,) absolute position; rows_r: query row
        seq = np.concatenate([np.concatenate([[BOS], e, [EOS]]) for e in enc])  # z of each text
        base = np.cumsum(lengths + 2) - (lengths + 2)  # (B,) where each text's z begins
        tokens = seq[base[rows_b] + rows_p]  # (R,) inputs z_p
        tb, tp, tr = (torch.as_tensor(a) for a in (rows_b, rows_p, rows_r))

        kv = torch.zeros(b, nl, 2, kmax, d)  # (B, layers, 2, K, D)
        hs = torch.zeros(b, kmax, d)  # (B, K, D) final states
        for i, e in enumerate(cached):
            if e is not None:
                s = int(starts[i])
                kv[i, :, :, :s] = e.kv[:, :, :s]
                hs[i, :s] = e.h[:s]
        x = net.embed(torch.as_tensor(tokens)) + net.pos(tp)  # (R, D)
        kpos = torch.arange(kmax)
        qpos = torch.as_tensor(starts)[:, None] + torch.arange(nmax)[None, :]  # (B, N)
        visible = kpos[None, None, :] <= qpos[:, :, None]  # (B, N, K)
        if radius is not None:
            visible &= qpos[:, :, None] - kpos[None, None, :] <= radius
        # (B, 1, N, K) additive mask; padded query rows see key 0 (their outputs are dropped)
        bias = torch.zeros(b, 1, nmax, kmax).masked_fill_(~visible[:, None], float("-inf"))
        scale = dh ** -0.5
        for layer, block in enumerate(net.blocks):
            attn = block.mixer
            qkv = attn.qkv(block.norm1(x)).view(-1, 3, heads, dh)  # (R, 3, H, Dh)
            kv[tb, layer, 0, tp] = qkv[:, 1].reshape(-1, d)
            kv[tb, layer, 1, tp] = qkv[:, 2].reshape(-1, d)
            q = torch.zeros(b, nmax, heads, dh)
            q[tb, tr] = qkv[:, 0]
            keys = kv[:, layer, 0].view(b, kmax, heads, dh).transpose(1, 2)  # (B, H, K, Dh)
            values = kv[:, layer, 1].view(b, kmax, heads, dh).transpose(1, 2)
            scores = q.transpose(1, 2) @ keys.transpose(-1, -2) * scale + bias  # (B, H, N, K)
            y = torch.softmax(scores, -1) @ values  # (B, H, N, Dh); small blocks: no SDPA call
            y = y.transpose(1, 2)[tb, tr].reshape(-1, d)  # (R, D)
            x = x + attn.out(y)
            if block.mlp is not None:
                x = x + block.mlp(block.norm2(x))
        hs[tb, tp] = net.norm(x)
        # head on positions m_i … L_i (m_i's state from the cache, the rest new)
        head_from = np.where(full, lengths + 1, np.where(starts > 0, m, 0))  # (B,)
        hn = lengths + 1 - head_from
        hb = np.repeat(np.arange(b), hn)
        hp = np.repeat(head_from, hn) + np.arange(int(hn.sum())) - np.repeat(np.cumsum(hn) - hn, hn)
        targets = seq[base[hb] + hp + 1]  # (R',) z_{p+1}, </s> after the last character
        new = _head_log_probs(net, hs[torch.as_tensor(hb), torch.as_tensor(hp)],
                              torch.as_tensor(targets))  # (R',)
        offsets = np.concatenate([[0], np.cumsum(hn)])
        per: list[np.ndarray] = []
        for i in range(b):
            e, f = cached[i], int(head_from[i])
            part = new[offsets[i]:offsets[i + 1]]
            logp = torch.cat([e.logp[:f], part]) if e is not None else part  # (L_i + 1,)
            per.append(logp.numpy().copy())  # a copy: the cache keeps its own
            if self.cache_size:
                n = int(lengths[i]) + 1
                self._cache.put(texts_u[i],
                                _Entry(kv[i, :, :, :n].clone(), hs[i, :n].clone(), logp))
        return [per[index[t]] for t in texts]

    # ------------------------------------------------------------------ files
    def _payload(self) -> dict[str, Any]:
        return {"format": _FORMAT, "what": "kexue.text.neural.NeuralLM",
                "config": asdict(self.config), "chars": list(self.chars),
                "state": self.module.state_dict()}

    def save(self, path: str | Path) -> None:
        """Write the model to ``path`` atomically (``torch.save`` of plain tensors and lists)."""
        payload = self._payload()
        atomic_save(path, lambda f: torch.save(payload, f))

    @classmethod
    def load(cls, path: str | Path) -> NeuralLM:
        """Read a file of :meth:`save` (or a checkpoint of :func:`train_neural`).

        Raises:
            FileNotFoundError: if ``path`` does not exist.
            ValueError: if ``path`` is not a readable kexue neural LM of this format.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no neural language model at {path}")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # pickle, zip and torch errors alike
            raise ValueError(f"{path} is not a kexue neural language model "
                             f"({type(error).__name__}: {str(error).splitlines()[0][:200]})"
                             ) from error
        return cls._from_payload(data, path)

    @classmethod
    def _from_payload(cls, data: Any, path: str | Path) -> NeuralLM:
        if isinstance(data, dict) and data.get("what") == "kexue.text.neural.checkpoint":
            data = data.get("model")
        if not isinstance(data, dict) or data.get("what") != "kexue.text.neural.NeuralLM":
            raise ValueError(f"{path} is not a kexue neural language model")
        if data.get("format") != _FORMAT:
            raise ValueError(f"{path} is in neural-LM format {data.get('format')!r}; this kexue "
                             f"reads format {_FORMAT}")
        try:
            config = NeuralConfig(**data["config"])
            chars = data["chars"]
            if not all(isinstance(ch, str) and len(ch) == 1 for ch in chars):
                raise ValueError("chars must be single characters")
            lm = cls(chars, config)
            lm.module.load_state_dict(data["state"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise ValueError(f"{path} holds a damaged neural language model: "
                             f"{str(error).splitlines()[0][:200]}") from error
        lm.module.eval()
        return lm


def _head_log_probs(net: _Net, h: Tensor, targets: Tensor, chunk: int = 256) -> Tensor:
    """log softmax(h Eᵀ + b)[target] per row: (R, D) states, (R,) ids -> (R,) float64.

    The bias rides in the matrix product as an extra input feature of 1 (no bias copy) and
    rows go in chunks, so each (chunk, V) logit block stays in cache.
    """
    w = torch.cat([net.embed.weight, net.bias[:, None]], 1).T.contiguous()  # (D + 1, V)
    h = torch.cat([h, h.new_ones(len(h), 1)], 1)  # (R, D + 1)
    out = torch.empty(len(h), dtype=torch.float64)
    for lo in range(0, len(h), chunk):
        logits = h[lo:lo + chunk] @ w  # (chunk, V)
        out[lo:lo + chunk] = torch.log_softmax(logits, -1).gather(
            -1, targets[lo:lo + chunk, None])[:, 0]
    return out


def _window_start(t: int, w: int) -> int:
    """Start of the input window that predicts token t > w: k·S with S = w // 2 and the
    smallest k with t − k·S ≤ w."""
    s = max(w // 2, 1)
    return math.ceil((t - w) / s) * s


def _pad(seqs: Sequence[np.ndarray]) -> tuple[Tensor, Tensor]:
    """Right-padded (B, T) int64 ids (pads are ``<unk>``; causal models never read them) and
    the (B,) lengths."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    ids = torch.full((len(seqs), int(lengths.max()) if len(seqs) else 0), UNK, dtype=torch.int64)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.as_tensor(s)
    return ids, lengths


# ----------------------------------------------------------------------------- training
def _digest(sentences: Sequence[str]) -> str:
    h = hashlib.sha256()
    for s in sentences:
        h.update(s.encode("utf-8", "surrogatepass"))
        h.update(b"\n")
    return h.hexdigest()


def _lr_at(step: int, lr: float, schedule_steps: int) -> float:
    """Linear warmup over min(200, schedule_steps // 20) steps, then cosine to lr / 10 at
    ``schedule_steps`` (and lr / 10 after): a function of the step alone."""
    warmup = max(1, min(200, schedule_steps // 20))
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, schedule_steps - warmup))
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


class _Batches:
    """The batches of an epoch, a function of (seed, epoch) alone: a shuffle, then chunks of 64
    batches sorted by length (little padding), then the batches in shuffled order."""

    def __init__(self, encoded: list[np.ndarray], batch_size: int, seed: int) -> None:
        self.encoded, self.batch_size, self.seed = encoded, batch_size, seed
        self.lengths = np.array([len(e) for e in encoded], np.int64)
        self.per_epoch = math.ceil(len(encoded) / batch_size)
        self._epoch, self._order = -1, []

    def __call__(self, step: int) -> tuple[Tensor, Tensor]:
        epoch, k = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            rng = np.random.default_rng(derive_seed(self.seed, "neural-lm-data", str(epoch)))
            perm = rng.permutation(len(self.encoded))
            chunk = self.batch_size * 64
            batches = []
            for lo in range(0, len(perm), chunk):
                part = perm[lo:lo + chunk]
                part = part[np.argsort(self.lengths[part], kind="stable")]
                batches += [part[j:j + self.batch_size]
                            for j in range(0, len(part), self.batch_size)]
            self._order = [batches[j] for j in rng.permutation(len(batches))]
            self._epoch = epoch
        seqs = [self.encoded[j] for j in self._order[k]]
        ids, lengths = _pad([s[:-1] for s in seqs])  # (B, T) inputs
        targets, _ = _pad([s[1:] for s in seqs])
        targets[torch.arange(ids.shape[1])[None, :] >= lengths[:, None]] = -100  # ignored
        return ids, targets


def train_neural(sentences: Sequence[str], config: NeuralConfig = NeuralConfig(), *,
                 steps: int = 6000, minutes: float | None = None, batch_size: int = 32,
                 lr: float = 3e-3, max_vocab: int = 6000, seed: int = 0,
                 checkpoint: str | Path | None = None, checkpoint_every: int = 500,
                 schedule_steps: int | None = None,
                 valid: Sequence[str] | None = None, eval_at_minutes: Sequence[float] = (),
                 on_eval: Callable[[dict], None] | None = None,
                 on_step: Callable[[int, float], None] | None = None) -> NeuralLM:
    """Train a :class:`NeuralLM` on ``sentences`` (teacher forcing, cross-entropy per character).

        loss = −(1/|T|) Σ_{(x, t) ∈ batch} log p(z_t | z_<t),   AdamW(β = (0.9, 0.98), wd 0.01),
        lr(step): linear warmup, then cosine from ``lr`` to ``lr/10`` at ``schedule_steps``,

    gradients clipped to norm 1. Each step's batch is a function of (seed, step) and dropout
    draws from a generator saved in the checkpoint, so stopping after k steps and resuming gives
    bit-identical weights to training straight through (on the CPU, same thread count). Call it
    with ``torch.set_num_threads(1)`` for the recorded figures. The caller's global torch RNG is
    left as it was.

    Args:
        sentences: training sentences (e.g. :func:`kexue.text.lm.split_sentences` of lines).
        config: the architecture.
        steps: optimizer steps to reach (counted from the start, resumed runs included).
        minutes: wall-clock cap on this call's training (evaluations excluded): stop early,
            write the checkpoint, return the model so far.
        batch_size: sentences per step.
        lr: peak learning rate.
        max_vocab: keep the ``max_vocab`` most frequent characters (NgramLM.train's rule).
        seed: seeds the initialisation, the batch order and dropout.
        checkpoint: file to resume from when present (it must come from the same sentences,
            config and hyperparameters) and to write atomically every ``checkpoint_every``
            steps, at a ``minutes`` stop and at the end.
        checkpoint_every: steps between checkpoints.
        schedule_steps: length of the cosine schedule (default ``steps``); set it to resume a
            run to more steps than the first call asked for with the same schedule.
        valid: held-out sentences for ``eval_at_minutes``.
        eval_at_minutes: training minutes (the total of all calls) at which to evaluate on
            ``valid``; each reports once to ``on_eval``.
        on_eval: ``on_eval({"step", "minutes", "train_nll", "valid_nll_per_char"})``;
            ``train_nll`` is the mean training loss (nats per character) since the last report.
        on_step: ``on_step(step, loss)`` after every step (step counts from 1).

    Returns:
        The model (eval mode).

    Raises:
        ValueError: naming a bad argument, or a checkpoint of another run.
    """
    if not isinstance(config, NeuralConfig):
        raise ValueError(f"config must be a NeuralConfig, got {type(config).__name__}")
    if isinstance(sentences, str):
        raise ValueError("sentences must be a sequence of strings, got one string")
    steps = check_int("steps", steps, low=1)
    if minutes is not None:
        minutes = check_real("minutes", minutes, low=0, low_open=True)
    batch_size = check_int("batch_size", batch_size, low=1)
    lr = check_real("lr", lr, low=0, low_open=True, high=1)
    max_vocab = check_int("max_vocab", max_vocab, low=1)
    seed = check_int("seed", seed, low=0, high=2**63 - 1)
    checkpoint_every = check_int("checkpoint_every", checkpoint_every, low=1)
    schedule_steps = steps if schedule_steps is None else \
        check_int("schedule_steps", schedule_steps, low=1)
    marks = sorted(check_real("eval_at_minutes", v, low=0) for v in eval_at_minutes)
    if marks and not valid:
        raise ValueError("eval_at_minutes needs valid sentences, got valid=None or empty")
    for name, fn in (("on_eval", on_eval), ("on_step", on_step)):
        if fn is not None and not callable(fn):
            raise ValueError(f"{name} must be callable, got {fn!r}")
    sentences = [s for s in sentences if s]
    chars = vocabulary(sentences, max_vocab)
    lm = NeuralLM(chars, config, _net_seeded(config, len(chars) + len(_SPECIALS), seed),
                  cache_size=0)
    w = config.max_len
    encoded = [np.concatenate([[BOS], lm.encode(s), [EOS]])[:w + 1] for s in sentences]
    batches = _Batches(encoded, batch_size, seed)
    net = lm.module
    decay = [p for n, p in net.named_parameters() if p.ndim >= 2]
    rest = [p for n, p in net.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": rest, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))
    dropout = torch.Generator().manual_seed(derive_seed(seed, "neural-lm-dropout"))
    run = {"corpus": _digest(sentences), "config": asdict(config), "chars": chars,
           "batch_size": batch_size, "lr": lr, "seed": seed, "schedule_steps": schedule_steps}
    step, done_minutes, reported = 0, 0.0, 0
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        state = _read_checkpoint(path)
        for key, value in run.items():
            if state["run"].get(key) != value:
                what = "the training sentences" if key == "corpus" else \
                    "the vocabulary" if key == "chars" else key
                raise ValueError(f"checkpoint {path} belongs to another run: {what} differs "
                                 f"(saved {_short(state['run'].get(key))}, now {_short(value)}); "
                                 "use another checkpoint path or delete it to start afresh")
        net.load_state_dict(state["model"]["state"])
        opt.load_state_dict(state["optimizer"])
        dropout.set_state(state["dropout"])
        step, done_minutes = int(state["step"]), float(state["minutes"])
        reported = int(state["reported"])

    def save() -> None:
        if path is None:
            return
        payload = {"format": _FORMAT, "what": "kexue.text.neural.checkpoint", "run": run,
                   "model": lm._payload(), "optimizer": opt.state_dict(),
                   "dropout": dropout.get_state(), "step": step,
                   "minutes": done_minutes, "reported": reported}
        atomic_save(path, lambda f: torch.save(payload, f))

    def evaluate() -> None:
        nonlocal reported, loss_sum, loss_count
        net.eval()
        nll = lm.nll_per_char(valid)
        net.train()
        if on_eval is not None:
            on_eval({"step": step, "minutes": done_minutes,
                     "train_nll": loss_sum / max(loss_count, 1), "valid_nll_per_char": nll})
        reported += 1
        loss_sum = loss_count = 0.0

    loss_sum = loss_count = 0.0
    began = time.perf_counter()
    start_minutes = done_minutes
    last_save = step
    net.train()
    with torch.random.fork_rng(devices=[]):
        while step < steps:
            if minutes is not None and done_minutes - start_minutes >= minutes:
                break
            ids, targets = batches(step)
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, lr, schedule_steps)
            torch.default_generator.set_state(dropout.get_state())
            logits = net(ids)  # (B, T, V)
            dropout.set_state(torch.default_generator.get_state())
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                   ignore_index=-100)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            step += 1
            value = float(loss.detach())
            n = int((targets >= 0).sum())
            loss_sum += value * n
            loss_count += n
            done_minutes = start_minutes + (time.perf_counter() - began) / 60
            if on_step is not None:
                on_step(step, value)
            while reported < len(marks) and done_minutes >= marks[reported]:
                paused = time.perf_counter()
                evaluate()
                began += time.perf_counter() - paused  # evaluation is not training time
            if step - last_save >= checkpoint_every:
                save()
                last_save = step
    net.eval()
    if step != last_save or (path is not None and not path.exists()):
        save()
    lm.cache_size = _CACHE_SIZE  # trained with no cache: the weights kept changing
    lm.clear_cache()
    return lm


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _net_seeded(config: NeuralConfig, vocab_size: int, seed: int) -> _Net:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "neural-lm-init"))
        return _Net(config, vocab_size)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"checkpoint {path} is not readable ({type(error).__name__}: "
                         f"{str(error).splitlines()[0][:200]}); delete it to start afresh"
                         ) from error
    if not isinstance(state, dict) or state.get("what") != "kexue.text.neural.checkpoint":
        raise ValueError(f"checkpoint {path} is not a kexue neural-LM checkpoint")
    if state.get("format") != _FORMAT:
        raise ValueError(f"checkpoint {path} is in format {state.get('format')!r}; this kexue "
                         f"reads format {_FORMAT}")
    return state


# ----------------------------------------------------------------------------- default model
def default_neural_lm_path() -> Path:
    """The cache file of :func:`default_neural_lm`: ``cache_dir()/neural-lm-pd1998.pt``, beside
    the Kneser–Ney default of :func:`kexue.text.lm.default_lm_path`."""
    return cache_dir() / "neural-lm-pd1998.pt"


_DEFAULT_MEMO: dict[tuple[Path, float], NeuralLM] = {}


def default_neural_lm() -> NeuralLM:
    """The neural LM trained by ``kexue lm train --neural`` on ``pd1998_split("train")``.

    Never trained on demand (it takes minutes): read from :func:`default_neural_lm_path`.

    Raises:
        FileNotFoundError: if it was not trained yet (the message names the command).
        ValueError: if the cache file is not a readable model.
    """
    path = Path(os.path.abspath(default_neural_lm_path()))
    if not path.is_file():
        raise FileNotFoundError(f"no neural language model at {path}: train it once with "
                                "`kexue lm train --neural` (about 25 minutes on one thread)")
    key = (path, path.stat().st_mtime)
    if key not in _DEFAULT_MEMO:
        _DEFAULT_MEMO[key] = NeuralLM.load(path)
    return _DEFAULT_MEMO[key]
