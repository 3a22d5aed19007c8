"""Per-pattern and layer-wise learning rates against hand-computed values; the θ = λ·φ identity."""

from __future__ import annotations

import copy
import re
import warnings

import pytest
import torch
from torch import nn

from kexue.train import block_of, param_groups, scale_parametrize


class Tower(nn.Module):
    """embed -> blocks.0..3 -> norm -> head: the usual stacked-block naming."""

    def __init__(self, width: int = 6, depth: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(3, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = torch.tanh(block(h))
        return self.head(self.norm(h))


def _lr_of(groups: list[dict]) -> dict[str, float]:
    return {n: g["lr"] for g in groups for n in g["names"]}


def test_multipliers_glob_and_regex_multiply():
    groups = param_groups(Tower(), 0.1, multipliers={"head.*": 10.0, re.compile(r"bias$"): 0.5})
    lr = _lr_of(groups)
    assert lr["head.weight"] == pytest.approx(1.0)
    assert lr["head.bias"] == pytest.approx(0.5)  # 0.1 · 10 · 0.5
    assert lr["embed.bias"] == pytest.approx(0.05)
    assert lr["blocks.2.weight"] == pytest.approx(0.1)
    assert len(lr) == sum(1 for _ in Tower().parameters())


def test_zero_multiplier_freezes():
    groups = param_groups(Tower(), 0.1, multipliers={"embed.*": 0.0})
    names = {n for g in groups for n in g["names"]}
    assert not any(n.startswith("embed.") for n in names)


def test_layer_decay_exponents():
    d = 0.5
    lr = _lr_of(param_groups(Tower(), 1.0, layer_decay=d))
    # depth: embed 0, blocks.i i+1, norm/head 5 (= L); lr = d^(L - depth)
    assert lr["embed.weight"] == pytest.approx(d**5)
    for i in range(4):
        assert lr[f"blocks.{i}.weight"] == pytest.approx(d ** (4 - i))
    assert lr["norm.weight"] == lr["head.bias"] == pytest.approx(1.0)


def test_layer_decay_on_torch_transformer_and_user_depth():
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 3,
                                enable_nested_tensor=False)
    lr = _lr_of(param_groups(enc, 1.0, layer_decay=0.8))
    assert lr["layers.0.linear1.weight"] == pytest.approx(0.8**3)
    assert lr["layers.2.linear1.weight"] == pytest.approx(0.8)

    def depth(name: str) -> int | None:
        return {"embed": 0, "head": 1}.get(name.split(".")[0])

    lr = _lr_of(param_groups(Tower(), 1.0, layer_decay=0.5, depth=depth))
    # user blocks: embed = block 0 (depth 1), head = block 1 (depth 2), L = 3; parameters in
    # no block between them take the depth of the block before them.
    assert lr["embed.weight"] == pytest.approx(0.25)
    assert lr["blocks.3.weight"] == lr["norm.weight"] == pytest.approx(0.25)
    assert lr["head.weight"] == pytest.approx(0.5)


class Staged(nn.Module):
    """timm-style stages.S.blocks.B naming, a root-level tensor and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(4))
        self.stages = nn.ModuleList(
            nn.ModuleDict({"blocks": nn.ModuleList(nn.Linear(4, 4) for _ in range(2))})
            for _ in range(2)
        )
        self.head = nn.Linear(4, 2)


@pytest.mark.parametrize(
    "name, block",
    [
        ("encoder.layer.3.attn.q.weight", "encoder.layer.3"),
        ("stages.1.blocks.0.mlp.fc1.bias", "stages.1.blocks.0"),
        ("stages.2.downsample.weight", "stages.2"),
        ("encoder.block.0.layer.1.wo.weight", "encoder.block.0"),
        ("transformer.h.11.mlp.c_fc.weight", "transformer.h.11"),
        ("layers.0.weight", "layers.0"),
        ("head.weight", None),
        ("players.1.weight", None),
    ],
)
def test_block_of(name, block):
    assert block_of(name) == block


def test_layer_decay_nested_stages_and_encoder_decoder():
    lr = _lr_of(param_groups(Staged(), 1.0, layer_decay=0.5))
    # blocks in order: s0b0, s0b1, s1b0, s1b1 -> depths 1..4; cls_token 0; head 5
    assert lr["cls_token"] == pytest.approx(0.5**5)
    assert lr["stages.0.blocks.0.weight"] == pytest.approx(0.5**4)
    assert lr["stages.0.blocks.1.weight"] == pytest.approx(0.5**3)
    assert lr["stages.1.blocks.0.weight"] == pytest.approx(0.5**2)
    assert lr["stages.1.blocks.1.weight"] == pytest.approx(0.5)
    assert lr["head.weight"] == pytest.approx(1.0)

    tr = nn.Transformer(8, 2, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=16,
                        batch_first=True)
    lr = _lr_of(param_groups(tr, 1.0, layer_decay=0.5))
    # encoder layers 1, 2; encoder.norm stays at 2; decoder layers 3, 4; decoder.norm L = 5
    assert lr["encoder.layers.0.linear1.weight"] == pytest.approx(0.5**4)
    assert lr["encoder.norm.weight"] == pytest.approx(0.5**3)
    assert lr["decoder.layers.1.linear1.weight"] == pytest.approx(0.5)
    assert lr["decoder.norm.weight"] == pytest.approx(1.0)


def test_no_decay_and_group_merging():
    groups = param_groups(Tower(), 0.1, weight_decay=0.05)
    wd = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert wd["blocks.0.bias"] == wd["norm.weight"] == 0.0
    assert wd["blocks.0.weight"] == 0.05
    assert len(groups) == 2  # one lr, two weight decays
    for no_decay in (["head.*"], "head.*"):
        groups = param_groups(Tower(), 0.1, weight_decay=0.05, no_decay=no_decay)
        wd = {n: g["weight_decay"] for g in groups for n in g["names"]}
        assert wd["head.weight"] == 0.0 and wd["blocks.0.bias"] == 0.05


@pytest.mark.parametrize(
    "make_sched",
    [
        lambda opt: torch.optim.lr_scheduler.StepLR(opt, 2, gamma=0.3),
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10),
        lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + s)),
        lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in
                                                                     opt.param_groups],
                                                        total_steps=20),
        lambda opt: torch.optim.lr_scheduler.LinearLR(opt, 0.1, 1.0, 5),
    ],
)
def test_scheduler_keeps_ratios(make_sched):
    model = Tower()
    opt = torch.optim.AdamW(param_groups(model, 0.01, layer_decay=0.7,
                                         multipliers={"head.*": 3.0}))
    sched = make_sched(opt)
    # The multipliers asked for, written out by hand: 0.7^(5 − depth), ×3 on the head.
    want = {"embed.weight": 0.7**5, "blocks.0.weight": 0.7**4, "blocks.3.bias": 0.7,
            "norm.weight": 1.0, "head.weight": 3.0}
    lr = {n: g for g in opt.param_groups for n in g["names"]}
    for _ in range(7):
        opt.step()
        sched.step()
        base = lr["norm.weight"]["lr"]
        for name, mult in want.items():
            assert lr[name]["lr"] == pytest.approx(base * mult, rel=1e-9), name


def test_sgd_step_uses_group_lrs():
    torch.manual_seed(0)
    model = Tower().double()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    groups = param_groups(model, 0.1, layer_decay=0.5, multipliers={"*.bias": 2.0})
    opt = torch.optim.SGD(groups)
    model(torch.randn(5, 3, dtype=torch.float64)).pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    lr = _lr_of(groups)
    opt.step()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[n] - lr[n] * grads[n])


def _run(model, opt, xs):
    for x in xs:
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


@pytest.mark.parametrize("lam", [0.3, 4.0])
def test_reparameterisation_identity_sgd(lam):
    torch.manual_seed(0)
    xs = [torch.randn(7, 3, dtype=torch.float64) for _ in range(5)]
    alpha = 0.05
    plain = Tower().double()
    reparam = scale_parametrize(copy.deepcopy(plain), {"blocks.*": lam})
    torch.testing.assert_close(reparam(xs[0]), plain(xs[0]))  # θ unchanged at start
    # Plain model: lr λ²α on the block weights, α elsewhere.
    _run(plain, torch.optim.SGD(param_groups(plain, alpha, multipliers={"blocks.*": lam**2})),
         xs)
    _run(reparam, torch.optim.SGD(reparam.parameters(), lr=alpha), xs)
    for i in range(4):
        torch.testing.assert_close(reparam.blocks[i].weight, plain.blocks[i].weight)
    torch.testing.assert_close(reparam.head.weight, plain.head.weight)


@pytest.mark.parametrize("lam", [0.3, 4.0])
def test_reparameterisation_identity_adam(lam):
    torch.manual_seed(0)
    xs = [torch.randn(7, 3, dtype=torch.float64) for _ in range(5)]
    alpha, eps = 0.01, 1e-8
    plain = Tower().double()
    reparam = scale_parametrize(copy.deepcopy(plain), {"head.weight": lam})
    rest = [p for n, p in plain.named_parameters() if n != "head.weight"]
    opt = torch.optim.Adam([{"params": rest},
                            {"params": [plain.head.weight], "lr": lam * alpha, "eps": eps / lam}],
                           lr=alpha, eps=eps)
    _run(plain, opt, xs)
    _run(reparam, torch.optim.Adam(reparam.parameters(), lr=alpha, eps=eps), xs)
    torch.testing.assert_close(reparam.head.weight, plain.head.weight)
    torch.testing.assert_close(reparam.blocks[0].weight, plain.blocks[0].weight)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"multipliers": {"decoder.*": 2.0}}, "decoder"),
        ({"multipliers": {"head.*": -1.0}}, "head"),
        ({"layer_decay": 1.5}, "layer_decay"),
        ({"layer_decay": 0.0}, "layer_decay"),
        ({"no_decay": ["nothing.*"]}, "nothing"),
        ({"weight_decay": -0.1}, "weight_decay"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        param_groups(Tower(), 0.1, **kwargs)


def test_scale_parametrize_refuses_tied_weights():
    emb, head = nn.Embedding(5, 4), nn.Linear(4, 5, bias=False)
    head.weight = emb.weight
    model = nn.ModuleDict({"emb": emb, "head": head})
    for pattern in ("emb.weight", "head.weight"):
        with pytest.raises(ValueError, match="shared"):
            scale_parametrize(model, {pattern: 2.0})


def test_bad_model_and_lr():
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups(nn.ReLU(), 0.1)
    with pytest.raises(ValueError, match="lr"):
        param_groups(Tower(), 0.0)
    with pytest.raises(ValueError, match="block index"):
        param_groups(nn.Linear(2, 2), 0.1, layer_decay=0.5)
    with pytest.raises(ValueError, match="matches no parameter"):
        scale_parametrize(Tower(), {"nope": 2.0})
    with pytest.raises(ValueError, match="> 0"):
        scale_parametrize(Tower(), {"head.weight": 0.0})


def test_underflowing_scale_is_an_error_not_a_silent_drop():
    # 1e-200 · 1e-200 = 0.0 in float64: neither factor is 0, so the parameter must not vanish.
    assert 1e-200 * 1e-200 == 0.0
    with pytest.raises(ValueError, match="underflows to 0.0"):
        param_groups(Tower(), 0.1, multipliers={"head.*": 1e-200, "*.weight": 1e-200})
    # layer_decay^5 = (1e-70)^5 = 1e-350 underflows for the embedding (depth 0, L = 5).
    with pytest.raises(ValueError, match="embed.weight"):
        param_groups(Tower(), 0.1, layer_decay=1e-70)
    # lr · scale underflowing counts too: 1e-300 · 1e-100 = 0.0.
    with pytest.raises(ValueError, match="underflows"):
        param_groups(Tower(), 1e-300, multipliers={"head.*": 1e-100})
    with pytest.raises(ValueError, match="overflows"):
        param_groups(Tower(), 1e300, multipliers={"head.*": 1e10})
    # Only an explicit 0 drops, even where it is combined with other factors.
    groups = param_groups(Tower(), 0.1, multipliers={"head.*": 0.0, "*.bias": 1e-200})
    names = {n for g in groups for n in g["names"]}
    assert "head.weight" not in names and "head.bias" not in names
    assert _lr_of(groups)["embed.bias"] == pytest.approx(1e-201)


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -0.1, 0.0, -float("inf"), True, "1"])
def test_lr_must_be_finite_and_positive(bad):
    with pytest.raises(ValueError, match=r"^lr must be a finite number > 0"):
        param_groups(Tower(), bad)


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -1.0])
def test_multipliers_weight_decay_and_scales_must_be_finite(bad):
    with pytest.raises(ValueError, match=r"multipliers\['head\.\*'\] must be a finite number"):
        param_groups(Tower(), 0.1, multipliers={"head.*": bad})
    with pytest.raises(ValueError, match="weight_decay must be a finite number"):
        param_groups(Tower(), 0.1, weight_decay=bad)
    with pytest.raises(ValueError, match=r"scales\['head\.weight'\] must be a finite number > 0"):
        scale_parametrize(Tower(), {"head.weight": bad})


def test_scale_parametrize_refuses_a_scale_whose_inverse_overflows():
    model = Tower()
    with pytest.raises(ValueError, match="overflows"):
        scale_parametrize(model, {"head.weight": 1e-300})  # θ/λ = inf in float32
    assert not hasattr(model.head, "parametrizations")  # nothing was half-done


@pytest.mark.parametrize("key", ["lr", "params", "names", "lr_scale", "weight_decay"])
def test_extra_cannot_override_group_keys(key):
    with pytest.raises(ValueError, match=f"extra may not set '{key}'"):
        param_groups(Tower(), 0.1, extra={key: 1.0})
    groups = param_groups(Tower(), 0.1, extra={"momentum": 0.9})
    assert all(g["momentum"] == 0.9 and g["lr"] == pytest.approx(0.1) for g in groups)


def _tiny_gpt2():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=16, n_positions=8, n_embd=8, n_layer=2, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    assert model.lm_head.weight is model.transformer.wte.weight  # tied by the config default
    return model


def _scale_of(groups: list[dict], tensor: torch.Tensor) -> float:
    (scale,) = [g["lr_scale"] for g in groups for p in g["params"] if p is tensor]
    return scale


# GPT-2 with 2 blocks (transformer.h.0, transformer.h.1 at depths 1, 2): the embedding
# transformer.wte.weight is at depth 0, lm_head.weight after the last block at L = 3, so with
# layer_decay 0.5 the two names of the one tensor ask for 0.5^3 = 0.125 and 0.5^0 = 1.
@pytest.mark.parametrize("tied, want", [("first", 0.125), ("max", 1.0)])
def test_tied_gpt2_layer_decay(tied, want):
    model = _tiny_gpt2()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit choice is silent
        groups = param_groups(model, 1.0, layer_decay=0.5, tied=tied)
    assert _scale_of(groups, model.lm_head.weight) == want
    # Each tensor once, under its first name; the other parameters keep their own depths.
    names = [n for g in groups for n in g["names"]]
    assert "transformer.wte.weight" in names and "lm_head.weight" not in names
    assert len(names) == len(list(model.parameters()))
    assert _scale_of(groups, model.transformer.wpe.weight) == 0.125
    assert _scale_of(groups, model.transformer.h[0].attn.c_attn.weight) == 0.25
    assert _scale_of(groups, model.transformer.ln_f.weight) == 1.0


def test_tied_gpt2_error_names_both_and_their_multipliers():
    model = _tiny_gpt2()
    with pytest.raises(ValueError, match=r"'transformer\.wte\.weight' \(multiplier 0\.125.*"
                                         r"'lm_head\.weight' \(multiplier 1\.0"):
        param_groups(model, 1.0, layer_decay=0.5, tied="error")


def test_tied_gpt2_default_warns_and_takes_the_first_name():
    model = _tiny_gpt2()
    with pytest.warns(UserWarning, match=r"'transformer\.wte\.weight'.*'lm_head\.weight'.*"
                                         r"tied='first'"):
        groups = param_groups(model, 1.0, layer_decay=0.5)
    assert _scale_of(groups, model.lm_head.weight) == 0.125


def test_tied_multiplier_on_the_second_name():
    # A pattern that matches only the tied head is found (before, it "matched nothing") and,
    # with layer decay 0.5, asks for 2 · 1 against the embedding's 0.125: max takes 2.
    model = _tiny_gpt2()
    groups = param_groups(model, 0.1, layer_decay=0.5, multipliers={"lm_head.*": 2.0},
                          tied="max")
    assert _scale_of(groups, model.lm_head.weight) == 2.0
    assert _lr_of(groups)["transformer.wte.weight"] == pytest.approx(0.2)
    # An explicit 0 on one name loses to the other name under max, wins under first.
    groups = param_groups(model, 0.1, multipliers={"transformer.wte.*": 0.0}, tied="max")
    assert _scale_of(groups, model.lm_head.weight) == 1.0
    groups = param_groups(model, 0.1, multipliers={"transformer.wte.*": 0.0}, tied="first")
    assert not any(p is model.lm_head.weight for g in groups for p in g["params"])


def test_tied_names_that_agree_are_silent_and_tied_is_checked():
    model = _tiny_gpt2()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        groups = param_groups(model, 0.1, multipliers={"*.weight": 3.0}, tied="error")
    assert _scale_of(groups, model.lm_head.weight) == 3.0
    with pytest.raises(ValueError, match="tied must be"):
        param_groups(Tower(), 0.1, tied="last")
