"""A pre-norm residual block around any token mixer, and factories for the MLP-family mixers.

References:
    https://kexue.fm/archives/8431 (也来盘点一些最近的非Transformer工作)
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from kexue._checks import check_int, check_real
from kexue.attention.base import check_padding_mask
from kexue.attention.mixers import (
    ExternalAttention,
    FNetMixer,
    GatingUnit,
    MLPMixerToken,
    ResMLPToken,
    SynthesizerDense,
    SynthesizerRandom,
)

__all__ = ["MLP_MIXERS", "Block", "build_mixer"]


class Block(nn.Module):
    """Pre-norm residual block: a token-mixing sublayer, then a per-token channel MLP.

        x = x + Dropout( mixer(Norm_1(x), key_padding_mask) )
        x = x + Dropout( W_2 Dropout(GELU(W_1 Norm_2(x))) )       # W_1: D -> mlp_ratio·D

    Any module meeting the mixer contract works, e.g. a mixer from :mod:`kexue.attention.mixers`
    or :class:`kexue.attention.MultiHeadAttention`. The channel MLP acts on each token alone, so
    it commutes with any permutation of the tokens. ``mlp_ratio=0`` drops the second sublayer:
    ``Block(dim, GatingUnit(dim, T), mlp_ratio=0)`` is gMLP's block, and
    ``Block(dim, ResMLPToken(dim, T), norm=Affine)`` uses ResMLP's Affine in place of LayerNorm.

    Key padding: the mask is handed to the mixer; the other parts act per token. Outputs at kept
    positions are as independent of padded tokens as the mixer makes them.

    Args:
        dim: model width D.
        mixer: ``(x, key_padding_mask=None) -> y`` module on (B, T, D).
        mlp_ratio: channel-MLP hidden width as a multiple of ``dim``; 0 for no channel MLP.
        dropout: dropout probability on both residual branches and the MLP hidden layer.
        norm: factory ``norm(dim) -> nn.Module`` for the two pre-norms.

    Raises:
        ValueError: for a non-positive ``dim``, a negative or non-finite ``mlp_ratio``,
            ``dropout`` outside [0, 1), or a ``mixer``/``norm`` of the wrong kind.

    References:
        https://kexue.fm/archives/8431 (也来盘点一些最近的非Transformer工作)

        Xiong et al., "On Layer Normalization in the Transformer Architecture", ICML 2020,
        arXiv:2002.04745 (pre-norm).
    """

    def __init__(
        self,
        dim: int,
        mixer: nn.Module,
        *,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        norm: Callable[[int], nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        dim = check_int("dim", dim, low=1)
        if not isinstance(mixer, nn.Module):
            raise ValueError(f"mixer must be an nn.Module, got {type(mixer).__name__}")
        mlp_ratio = check_real("mlp_ratio", mlp_ratio, low=0)
        dropout = check_real("dropout", dropout, low=0, high=1, high_open=True)
        if not callable(norm):
            raise ValueError(f"norm must be a callable norm(dim) -> nn.Module, got {norm!r}")
        self.dim = dim
        self.norm1 = norm(dim)
        self.mixer = mixer
        self.drop = nn.Dropout(dropout)
        hidden = round(mlp_ratio * dim)
        if hidden > 0:
            self.norm2 = norm(dim)
            self.mlp = nn.Sequential(
                nn.Linear(dim, hidden),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, dim),
            )
        else:
            self.norm2 = self.mlp = None

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[-1] != self.dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, T, dim={self.dim}), got {got}")
        check_padding_mask(key_padding_mask, x.shape[0], x.shape[1])
        x = x + self.drop(self.mixer(self.norm1(x), key_padding_mask=key_padding_mask))
        if self.mlp is not None:
            x = x + self.drop(self.mlp(self.norm2(x)))
        return x  # (B, T, D)


MixerFactory = Callable[[int, int, int], nn.Module]

#: The MLP-family mixers by name, each a factory ``(dim, seq_len, heads) -> nn.Module`` with the
#: papers' defaults. Mixers that do not use an argument ignore it.
MLP_MIXERS: dict[str, MixerFactory] = {
    "mlp_mixer": lambda dim, seq_len, heads: MLPMixerToken(dim, seq_len),
    "gmlp": lambda dim, seq_len, heads: GatingUnit(dim, seq_len),
    "amlp": lambda dim, seq_len, heads: GatingUnit(dim, seq_len, attention_dim=64),
    "resmlp": lambda dim, seq_len, heads: ResMLPToken(dim, seq_len),
    "fnet": lambda dim, seq_len, heads: FNetMixer(),
    "external": lambda dim, seq_len, heads: ExternalAttention(dim, memory=64),
    "synthesizer_dense": lambda dim, seq_len, heads: SynthesizerDense(dim, seq_len, heads),
    "synthesizer_random": lambda dim, seq_len, heads: SynthesizerRandom(seq_len, heads, dim=dim),
}


def build_mixer(name: str, dim: int, seq_len: int, heads: int) -> nn.Module:
    """Build the MLP-family mixer registered under ``name`` in :data:`MLP_MIXERS`.

    Args:
        name: a key of :data:`MLP_MIXERS`.
        dim: model width D.
        seq_len: number of tokens T (fixed-length mixers only accept this length).
        heads: number of heads (used by the Synthesizers).

    Raises:
        ValueError: for an unknown ``name``, ``dim``, ``seq_len`` or ``heads`` not an int >= 1
            (even where the mixer ignores it), or the mixer's own argument errors.
    """
    if name not in MLP_MIXERS:
        raise ValueError(f"name must be one of {sorted(MLP_MIXERS)}, got {name!r}")
    dim = check_int("dim", dim, low=1)
    seq_len = check_int("seq_len", seq_len, low=1)
    heads = check_int("heads", heads, low=1)
    return MLP_MIXERS[name](dim, seq_len, heads)
