"""kexue.generative.gan: each architectural piece against its formula, and resumable training."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from kexue.generative.base import Trainer
from kexue.generative.data import ImageData, load_images
from kexue.generative.gan import (
    LOSSES,
    RECIPES,
    BatchNorm,
    ConditionalBatchNorm,
    Discriminator,
    GANTrainConfig,
    GANTrainer,
    Generator,
    ResUp,
    SelfAttention,
    SelfModulatedBatchNorm,
    SpectralNorm,
    add_spectral_norm,
    init_weights,
    make_trainer,
    orthogonal_penalty,
    spectral_norm,
    truncated_normal,
)
from kexue.train.penalties import gradient_penalty, r1_penalty

torch.set_num_threads(1)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def tiny() -> ImageData:
    """96 training digits (3 batches of 32), a few test digits."""
    d = load_images("digits")
    return ImageData("digits", d.train_x[:96], d.train_y[:96], d.test_x[:20], d.test_y[:20])


# -- spectral norm ---------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [nn.Linear(20, 30), nn.Conv2d(3, 8, 3),
                                   nn.ConvTranspose2d(6, 4, 4, stride=2)])
def test_spectral_norm_sigma_converges_to_matrix_norm(layer):
    raw = layer.weight.detach().clone()
    spectral_norm(layer, generator=_gen(1))
    sn = layer.parametrizations.weight[0]
    for _ in range(300):  # one power iteration per training-mode access
        _ = layer.weight
    matrix = raw.movedim(1, 0) if isinstance(layer, nn.ConvTranspose2d) else raw
    matrix = matrix.reshape(matrix.shape[0], -1)  # (out, in·k·k)
    expected = torch.linalg.matrix_norm(matrix, ord=2)
    torch.testing.assert_close(sn.sigma(raw), expected, rtol=1e-4, atol=0)
    normalised = layer.weight.detach()
    normalised = normalised.movedim(1, 0) if isinstance(layer, nn.ConvTranspose2d) else normalised
    torch.testing.assert_close(torch.linalg.matrix_norm(normalised.reshape(len(matrix), -1), ord=2),
                               torch.tensor(1.0), rtol=1e-4, atol=0)


def test_spectral_norm_one_power_iteration_per_training_forward_only():
    layer = spectral_norm(nn.Linear(5, 4), generator=_gen(2))
    sn = layer.parametrizations.weight[0]
    w = layer.parametrizations.weight.original.detach()
    u0 = sn.u.clone()
    layer(torch.zeros(1, 5))
    v = F.normalize(w.T @ u0, dim=0)
    torch.testing.assert_close(sn.u, F.normalize(w @ v, dim=0))
    torch.testing.assert_close(sn.v, v)
    layer.eval()
    u1 = sn.u.clone()
    layer(torch.zeros(1, 5))
    assert torch.equal(sn.u, u1)  # eval mode: no iteration
    assert "parametrizations.weight.0.u" in layer.state_dict()  # persistent, checkpointed


def test_spectral_norm_gradient_treats_u_v_as_constants():
    w = torch.randn(4, 6, dtype=torch.float64, generator=_gen(3), requires_grad=True)
    sn = SpectralNorm(w.detach(), generator=_gen(4)).double()
    sn.eval()
    u, v = sn.u.clone(), sn.v.clone()
    g = torch.randn(4, 6, dtype=torch.float64, generator=_gen(5))
    (sn(w) * g).sum().backward()
    sigma = u @ w.detach() @ v
    expected = g / sigma - (g * w.detach()).sum() / sigma**2 * torch.outer(u, v)
    torch.testing.assert_close(w.grad, expected)


def test_add_spectral_norm_skips_modulation_layers():
    g = Generator((1, 8, 8), z_dim=6, width=4, norm=SelfModulatedBatchNorm)
    add_spectral_norm(g)
    assert parametrize.is_parametrized(g.stem, "weight")
    assert parametrize.is_parametrized(g.head, "weight")
    for m in g.modules():
        if isinstance(m, SelfModulatedBatchNorm):
            assert not any(parametrize.is_parametrized(x) for x in m.modules())


# -- norms -------------------------------------------------------------------------------------


def test_self_mod_at_init_is_exactly_plain_bn():
    h = torch.randn(10, 6, 4, 4, generator=_gen(6))
    z = torch.randn(10, 8, generator=_gen(7))
    sm = SelfModulatedBatchNorm(6, 8)
    bn = nn.BatchNorm2d(6)
    assert torch.equal(sm(h, z), bn(h))
    assert torch.equal(sm.bn.running_mean, bn.running_mean)


def test_self_mod_with_constant_z_is_bn_with_the_mlp_affine():
    sm = SelfModulatedBatchNorm(5, 3, hidden=7, zero_init=False)
    h = torch.randn(12, 5, 3, 3, generator=_gen(8))
    z0 = torch.randn(3, generator=_gen(9))
    z = z0.expand(12, 3)  # the same z for the whole batch
    bn = nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.weight.copy_(sm.gain(z0[None])[0])
        bn.bias.copy_(sm.shift(z0[None])[0])
    torch.testing.assert_close(sm(h, z), bn(h))
    # The gain's output bias starts at 1 (γ(z) = 1 + …), the shift's at 0.
    assert torch.equal(sm.gain[2].bias, torch.ones(5))
    assert torch.equal(sm.shift[2].bias, torch.zeros(5))


def test_conditional_bn_equals_per_class_bn_by_hand():
    k, e_dim, c = 3, 4, 5
    embed = nn.Embedding(k, e_dim)
    cbn = ConditionalBatchNorm(c, e_dim)
    h = torch.randn(9, c, 2, 2, generator=_gen(10))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 2, 2, 0])
    out = cbn(h, embed(y))
    mean = h.mean(dim=(0, 2, 3), keepdim=True)
    var = h.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    normed = (h - mean) / torch.sqrt(var + cbn.bn.eps)
    for cls in range(k):
        gamma = 1 + cbn.gain.weight @ embed.weight[cls]  # per-class gain, (C,)
        beta = cbn.shift.weight @ embed.weight[cls]
        rows = y == cls
        expected = gamma[None, :, None, None] * normed[rows] + beta[None, :, None, None]
        torch.testing.assert_close(out[rows], expected)


def test_batch_norm_ignores_conditioning():
    h = torch.randn(4, 3, 2, 2, generator=_gen(11))
    norm = BatchNorm(3)
    assert torch.equal(norm(h, torch.randn(4, 9)), norm(h))


# -- self-attention ----------------------------------------------------------------------------


def test_self_attention_is_identity_at_init_and_matches_formula():
    attn = SelfAttention(16)
    h = torch.randn(2, 16, 3, 3, generator=_gen(12))
    assert torch.equal(attn(h), h)
    with torch.no_grad():
        attn.gamma.fill_(0.7)
    flat = h.flatten(2)  # (B, C, N)
    f = torch.einsum("kc,bcn->bkn", attn.f.weight[:, :, 0, 0], flat)
    g = torch.einsum("kc,bcn->bkn", attn.g.weight[:, :, 0, 0], flat)
    v = torch.einsum("dc,bcn->bdn", attn.h.weight[:, :, 0, 0], flat)
    a = torch.softmax(torch.einsum("bki,bkj->bij", f, g), dim=-1)  # (B, N_i, N_j)
    o = torch.einsum("bdj,bij->bdi", v, a)
    o = torch.einsum("ed,bdi->bei", attn.o.weight[:, :, 0, 0], o).reshape(h.shape)
    torch.testing.assert_close(attn(h), h + 0.7 * o)


# -- BigGAN pieces -----------------------------------------------------------------------------


def test_orthogonal_penalty_closed_form():
    layer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0]]))
    # Filters w1 = (1, 2, 0), w2 = (0, 1, 3): w1·w2 = 2, twice off the diagonal: 2 · 2² = 8.
    torch.testing.assert_close(orthogonal_penalty(layer, 0.5), torch.tensor(4.0))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, -2.0]]))
    assert orthogonal_penalty(layer, 1.0).item() == 0.0  # orthogonal filters, any norms
    sn = spectral_norm(nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        sn.parametrizations.weight.original.copy_(torch.tensor([[1.0, 2.0, 0.0],
                                                                [0.0, 1.0, 3.0]]))
    torch.testing.assert_close(orthogonal_penalty(sn, 1.0), torch.tensor(8.0))  # raw weight


def test_truncation_never_exceeds_threshold():
    z = truncated_normal((4000, 8), 0.5, _gen(13))
    assert z.abs().max() <= 0.5
    assert z.std() > 0.2  # still spread over [-0.5, 0.5] (uniform-ish: std ≈ 0.28)
    assert torch.equal(z, truncated_normal((4000, 8), 0.5, _gen(13)))
    with pytest.raises(ValueError, match="threshold"):
        truncated_normal((2,), 0.0)


def test_split_latent_feeds_every_chunk_and_the_class():
    g = Generator((1, 8, 8), z_dim=8, width=4, block=ResUp, norm=ConditionalBatchNorm,
                  num_classes=3, embed_dim=2, split_latent=True)
    assert g.chunks == [3, 3, 2]
    z = torch.randn(4, 8, generator=_gen(14), requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    out = g(z, y)
    assert out.shape == (4, 1, 8, 8)
    (grad,) = torch.autograd.grad(out.sum(), z)
    for chunk in grad.split(g.chunks, dim=1):  # stem, block 1, block 2 (+ head)
        assert chunk.abs().sum() > 0
    with torch.no_grad():
        assert not torch.equal(g(z, y), g(z, torch.tensor([1, 2, 0, 1])))


# -- losses ------------------------------------------------------------------------------------


def test_losses_against_hand_values():
    r = torch.tensor([1.0, -0.5])
    f = torch.tensor([0.2, -1.5])

    def sp(t: float) -> float:
        return math.log1p(math.exp(t))

    ns = LOSSES["ns"]
    assert ns.d(r, f).item() == pytest.approx((sp(-1.0) + sp(0.5)) / 2 + (sp(0.2) + sp(-1.5)) / 2)
    assert ns.g(f).item() == pytest.approx((sp(-0.2) + sp(1.5)) / 2)
    hinge = LOSSES["hinge"]
    assert hinge.d(r, f).item() == pytest.approx((0.0 + 1.5) / 2 + (1.2 + 0.0) / 2)
    assert hinge.g(f).item() == pytest.approx(0.65)
    wgan = LOSSES["wgan-gp"]
    assert wgan.d(r, f).item() == pytest.approx(-0.65 - 0.25)
    assert wgan.g(f).item() == pytest.approx(0.65)
    assert wgan.gp == 10.0 and ns.gp == 0.0 and hinge.gp == 0.0


# -- trainer -----------------------------------------------------------------------------------


def test_trainer_d_loss_is_the_loss_plus_the_penalties_of_kexue_dynamics(tiny):
    t = make_trainer("resnet", tiny, epochs=1, z_dim=6, width=4, batch_size=8, r1=0.3)
    assert t.config.gp_weight == 10.0 and t.config.n_critic == 5  # WGAN-GP's defaults
    twin = copy.deepcopy(t)
    x = tiny.train_x[:8] * 2 - 1
    got = t.train_step(x, tiny.train_y[:8])
    assert set(got) == {"loss_d"}  # step 1 of 5: no G step yet
    twin.G.train()
    z = torch.randn(8, 6, generator=twin.rng)
    with torch.no_grad():
        fake = twin.G(z)
    expected = (LOSSES["wgan-gp"].d(twin.D(x), twin.D(fake))
                + gradient_penalty(twin.D, x, fake, 10.0, generator=twin.rng)
                + r1_penalty(twin.D, x, 0.3))
    assert got["loss_d"] == pytest.approx(expected.item(), rel=1e-6)


def test_trainer_meets_protocol_and_sample_leaves_training_alone(tiny):
    t = make_trainer("selfmod", tiny, epochs=1, z_dim=6, width=4, batch_size=32)
    assert isinstance(t, Trainer)
    seen = []
    losses = t.fit_epoch(lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)] and set(losses) == {"loss_d", "loss_g"}
    before = copy.deepcopy(t.state_dict())
    a = t.sample(10, _gen(1))
    b = t.sample(10, _gen(1))
    assert a.shape == (10, 1, 8, 8) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    after = t.state_dict()
    for key in ("G", "D"):
        for name, value in before[key].items():
            assert torch.equal(value, after[key][name]), name
    assert torch.equal(before["rng"], after["rng"])
    assert t.sample(0).shape == (0, 1, 8, 8)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("size", [8, 28])
def test_every_recipe_builds_for_digits_and_mnist_sizes(recipe, size):
    shape = (1, size, size)
    data = ImageData("fake", torch.rand(8, *shape, generator=_gen(15)),
                     torch.arange(8) % 10, torch.rand(2, *shape), torch.arange(2))
    t = make_trainer(recipe, data, epochs=1, z_dim=6, width=4, batch_size=4)
    out = t.train_step(data.train_x * 2 - 1, data.train_y)
    assert all(math.isfinite(v) for v in out.values())
    assert t.sample(3, stat_batches=1, stat_batch_size=8).shape == (3, *shape)


# -- bad input ---------------------------------------------------------------------------------


def test_unsupported_image_sizes_are_named():
    with pytest.raises(ValueError, match=r"10×10"):
        Generator((1, 10, 10))
    with pytest.raises(ValueError, match=r"6×6"):
        Discriminator((1, 6, 6))
    with pytest.raises(ValueError, match="H == W"):
        Generator((1, 8, 16))
    with pytest.raises(ValueError, match="attention"):
        Generator((1, 8, 8), attention=3)
    with pytest.raises(ValueError, match="z_dim=2"):
        Generator((1, 8, 8), z_dim=2, split_latent=True)


def test_bad_trainer_input(tiny):
    empty = ImageData("empty", tiny.train_x[:0], tiny.train_y[:0], tiny.test_x, tiny.test_y)
    with pytest.raises(ValueError, match="no training images"):
        make_trainer("dcgan", empty, epochs=1)
    with pytest.raises(ValueError, match="recipe"):
        make_trainer("stylegan", tiny, epochs=1)
    with pytest.raises(ValueError, match="loss"):
        make_trainer("dcgan", tiny, epochs=1, loss="lsgan")
    with pytest.raises(ValueError, match="batch_size"):
        make_trainer("dcgan", tiny, epochs=1, batch_size=1000)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="epochs"):
            make_trainer("dcgan", tiny, epochs=bad)
    with pytest.raises(ValueError, match="lr_g"):
        make_trainer("dcgan", tiny, epochs=1, lr_g=float("nan"))
    with pytest.raises(ValueError, match="unknown GANTrainConfig field"):
        make_trainer("dcgan", tiny, epochs=1, lr=1e-3)
    with pytest.raises(ValueError, match="r1"):
        make_trainer("dcgan", tiny, epochs=1, r1=-1.0)
    with pytest.raises(ValueError, match="without BatchNorm"):  # D's BN couples the samples
        make_trainer("dcgan", tiny, epochs=1, r1=0.5)
    with pytest.raises(ValueError, match="no training images"):
        make_trainer("biggan", empty, epochs=1)
    g = Generator((1, 28, 28), z_dim=4, width=4)
    with pytest.raises(ValueError, match=r"\(1, 28, 28\)"):
        GANTrainer(tiny, g, Discriminator((1, 8, 8), width=4), GANTrainConfig(epochs=1))
    with pytest.raises(ValueError, match="z must have shape"):
        g(torch.zeros(2, 5))


def test_building_and_training_never_touch_the_global_rng(tiny):
    before = torch.get_rng_state()
    t = make_trainer("sagan", tiny, epochs=1, z_dim=6, width=4, batch_size=32, r1=0.1)
    t.fit_epoch()
    t.sample(4, stat_batches=1, stat_batch_size=8)
    assert torch.equal(torch.get_rng_state(), before)
    # Same seed, same networks: initialisation comes from the seed alone.
    again = make_trainer("sagan", tiny, epochs=1, z_dim=6, width=4, batch_size=32, r1=0.1)
    fresh = make_trainer("sagan", tiny, epochs=1, z_dim=6, width=4, batch_size=32, r1=0.1)
    for (name, a), b in zip(again.G.state_dict().items(), fresh.G.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name


def test_init_weights_keeps_modulation_biases_and_zero_gains():
    g = Generator((1, 8, 8), z_dim=6, width=4, attention=4,
                  norm=lambda c, d: SelfModulatedBatchNorm(c, d, zero_init=False))
    init_weights(g, "normal", _gen(16))
    sm = g.head_norm
    assert torch.equal(sm.gain[2].bias, torch.ones(4)) and sm.gain[2].weight.abs().sum() > 0
    assert torch.equal(sm.shift[2].bias, torch.zeros(4))
    assert g.attention["4"].gamma.item() == 0.0
