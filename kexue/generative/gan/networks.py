"""The generator and discriminator, assembled from :mod:`~kexue.generative.gan.layers`.

References:
    https://kexue.fm/archives/6549 (从DCGAN到SELF-MOD:GAN的模型架构发展一览)
    Radford, Metz & Chintala, "Unsupervised Representation Learning with DCGANs", 2016.
    Miyato & Koyama, "cGANs with Projection Discriminator", 2018.
    Brock, Donahue & Simonyan, 2019 (BigGAN: hierarchical latent, truncation trick).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kexue._checks import check_int, check_real
from kexue.generative.gan.layers import (
    BatchNorm,
    DCGANDown,
    DCGANUp,
    NormFactory,
    SelfAttention,
)

__all__ = ["Discriminator", "Generator", "truncated_normal"]

ImageShape = tuple[int, int, int]


def _check_shape(image_shape: ImageShape, stages: int) -> tuple[int, int, int]:
    """(channels, size, base) for square images of side size = base · 2^stages, base ≥ 2."""
    if len(image_shape) != 3 or image_shape[1] != image_shape[2] or min(image_shape) < 1:
        raise ValueError(f"image_shape must be (C, H, W) with H == W, got {tuple(image_shape)}")
    check_int("stages", stages, low=1)
    c, size, _ = image_shape
    scale = 2 ** stages
    if size % scale or size // scale < 2:
        raise ValueError(
            f"image size {size}×{size} is not supported with stages={stages}: the side must be "
            f"base·2^stages with an integer base >= 2, i.e. a multiple of {scale} that is at "
            f"least {2 * scale} (e.g. 8 or 28 with stages=2)")
    return c, size, size // scale


def _check_attention(attention: int | None, resolutions: list[int]) -> None:
    """``attention`` is None or one of the network's ``resolutions``."""
    if attention is None:
        return
    check_int("attention", attention, low=1)
    if attention not in resolutions:
        raise ValueError(f"attention must be one of the resolutions {resolutions}, "
                         f"got {attention}")


class Generator(nn.Module):
    """z (and a class y) → image in [−1, 1]: stem, ``stages`` up-blocks, norm-ReLU-conv-tanh.

    Channels halve per stage: 2^stages·width at the base resolution down to ``width``.
    Conditioning vector of block i: ``c_i = z_i ⊕ e(y)``, where z_i is z itself, or with
    ``split_latent`` the i-th of ``stages + 1`` chunks of z, equal up to one (chunk 0 feeds
    the stem, the last block's chunk also feeds the head's norm), and e the shared class
    embedding (only if ``num_classes`` > 0).

    Args:
        image_shape: (C, H, W) of the images, H == W == base·2^stages, base ≥ 2.
        z_dim: Size of z, ≥ 1.
        width: Channels of the last stage, ≥ 1.
        stages: Number of up-blocks (resolution doublings), ≥ 1.
        block: Up-block class ``(in_ch, out_ch, norm, cond_dim)`` (:class:`DCGANUp`,
            :class:`ResUp`).
        norm: Norm factory ``(num_features, cond_dim)`` (:class:`BatchNorm`,
            :class:`ConditionalBatchNorm`, :class:`SelfModulatedBatchNorm`).
        attention: Resolution after which a :class:`SelfAttention` block is inserted, or None.
        num_classes: > 0 for a class-conditional generator, 0 for an unconditional one.
        embed_dim: Size of the shared class embedding, ≥ 1.
        split_latent: Feed z in chunks, one per block (BigGAN's hierarchical latent).

    Raises:
        ValueError: For an unsupported image size, an attention resolution the network does not
            have, or a z_dim too small to split into ``stages + 1`` chunks.
    """

    def __init__(self, image_shape: ImageShape, *, z_dim: int = 64, width: int = 32,
                 stages: int = 2, block: type[nn.Module] = DCGANUp,
                 norm: NormFactory = BatchNorm, attention: int | None = None,
                 num_classes: int = 0, embed_dim: int = 16, split_latent: bool = False) -> None:
        super().__init__()
        channels, size, base = _check_shape(image_shape, stages)
        check_int("z_dim", z_dim, low=1)
        check_int("width", width, low=1)
        check_int("num_classes", num_classes, low=0)
        check_int("embed_dim", embed_dim, low=1)
        if split_latent and z_dim < stages + 1:
            raise ValueError(f"z_dim={z_dim} must be >= stages + 1 = {stages + 1} to split the "
                             f"latent into one chunk per block")
        resolutions = [base * 2 ** i for i in range(stages + 1)]
        _check_attention(attention, resolutions)
        self.image_shape = (channels, size, size)
        self.z_dim, self.num_classes, self.split_latent = z_dim, num_classes, split_latent
        self.base, self.stages = base, stages
        k = stages + 1
        # chunk sizes differ by at most one: z_dim = 32, 3 chunks -> 11, 11, 10
        self.chunks = ([z_dim // k + (i < z_dim % k) for i in range(k)] if split_latent
                       else [z_dim] * k)
        cond = [c + (embed_dim if num_classes else 0) for c in self.chunks]
        chs = [width * 2 ** (stages - i) for i in range(stages + 1)]
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None
        self.stem = nn.Linear(self.chunks[0], chs[0] * base * base)
        self.blocks = nn.ModuleList(block(chs[i], chs[i + 1], norm, cond[i + 1])
                                    for i in range(stages))
        self.attention = nn.ModuleDict(
            {str(r): SelfAttention(chs[i]) for i, r in enumerate(resolutions) if r == attention})
        self.head_norm = norm(chs[-1], cond[-1])
        self.head = nn.Conv2d(chs[-1], channels, 3, padding=1)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """(B, z_dim) latents (and (B,) labels) → (B, C, H, W) images in [−1, 1]."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must have shape (B, {self.z_dim}), got {tuple(z.shape)}")
        if self.num_classes and y is None:
            raise ValueError("this generator is class-conditional: pass labels y")
        chunks = z.split(self.chunks, dim=1) if self.split_latent else (z,) * (self.stages + 1)
        extra = [self.embed(y)] if self.embed is not None else []
        conds = [torch.cat([zi, *extra], dim=1) for zi in chunks]  # (B, cond_dim) each
        h = self.stem(chunks[0]).reshape(len(z), -1, self.base, self.base)  # (B, C0, s, s)
        h = self._attend(h)
        for block, c in zip(self.blocks, conds[1:], strict=True):
            h = self._attend(block(h, c))
        h = F.relu(self.head_norm(h, conds[-1]))
        return torch.tanh(self.head(h))

    def _attend(self, h: Tensor) -> Tensor:
        key = str(h.shape[-1])
        return self.attention[key](h) if key in self.attention else h


class Discriminator(nn.Module):
    """Image (and class y) → one score per image: ``stages`` down-blocks then a linear head.

    Channels double per stage from ``width``. With ``num_classes`` > 0 the head adds the
    projection term ⟨e(y), Σ_{positions} h⟩ (Miyato & Koyama's projection discriminator, used by
    SAGAN and BigGAN).

    Args:
        image_shape: (C, H, W), H == W == base·2^stages, base ≥ 2.
        width: Channels of the first block, ≥ 1.
        stages: Number of down-blocks, ≥ 1.
        block: Down-block class ``(in_ch, out_ch, first, norm)`` (:class:`DCGANDown`,
            :class:`ResDown`).
        norm: Norm factory ``(num_features) -> module`` inside the blocks (DCGAN:
            ``nn.BatchNorm2d``), or None (SNGAN, SAGAN, BigGAN, and any D under a gradient
            penalty).
        attention: Resolution after which a :class:`SelfAttention` block is inserted, or None.
        num_classes: > 0 for a projection discriminator, 0 for an unconditional one.

    Raises:
        ValueError: For an unsupported image size or attention resolution.
    """

    def __init__(self, image_shape: ImageShape, *, width: int = 32, stages: int = 2,
                 block: type[nn.Module] = DCGANDown,
                 norm: Callable[[int], nn.Module] | None = None, attention: int | None = None,
                 num_classes: int = 0) -> None:
        super().__init__()
        channels, size, base = _check_shape(image_shape, stages)
        check_int("width", width, low=1)
        check_int("num_classes", num_classes, low=0)
        resolutions = [size // 2 ** i for i in range(stages + 1)]
        _check_attention(attention, resolutions)
        self.image_shape = (channels, size, size)
        self.num_classes = num_classes
        chs = [channels] + [width * 2 ** i for i in range(stages)]
        self.blocks = nn.ModuleList(block(chs[i], chs[i + 1], first=i == 0, norm=norm)
                                    for i in range(stages))
        self.attention = nn.ModuleDict(
            {str(r): SelfAttention(chs[i]) for i, r in enumerate(resolutions) if r == attention})
        self.act = block.head_activation()
        self.linear = nn.Linear(chs[-1] * base * base, 1)
        self.embed = nn.Embedding(num_classes, chs[-1]) if num_classes else None

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """(B, C, H, W) images (and (B,) labels) → (B,) scores."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.image_shape))}), "
                             f"got {tuple(x.shape)}")
        h = self._attend(x)
        for block in self.blocks:
            h = self._attend(block(h))
        h = self.act(h)
        out = self.linear(h.flatten(1)).squeeze(1)  # (B,)
        if self.embed is not None:
            if y is None:
                raise ValueError("this discriminator is class-conditional: pass labels y")
            out = out + (self.embed(y) * h.sum(dim=(2, 3))).sum(dim=1)
        return out

    def _attend(self, h: Tensor) -> Tensor:
        key = str(h.shape[-1])
        return self.attention[key](h) if key in self.attention else h




def truncated_normal(shape: tuple[int, ...], threshold: float,
                     generator: torch.Generator | None = None) -> Tensor:
    """The truncation trick: z ∼ N(0, I) with every entry |z_i| > threshold resampled.

    Entries are redrawn until all lie in [−threshold, threshold], so each is a standard normal
    conditioned on |z_i| ≤ threshold.

    Args:
        shape: Output shape.
        threshold: Truncation threshold > 0 (BigGAN trades diversity for fidelity below ~2).
        generator: Source of randomness.

    Raises:
        ValueError: If ``threshold`` is not a positive finite number.

    References:
        https://kexue.fm/archives/6549
        Brock, Donahue & Simonyan, 2019, Sec. 3.1.
    """
    check_real("threshold", threshold, low=0, low_open=True)
    z = torch.randn(shape, generator=generator)
    out = z.abs() > threshold
    while out.any():
        z[out] = torch.randn(int(out.sum()), generator=generator)
        out = z.abs() > threshold
    return z



