"""One house for the generative models: every entry of ``kexue.generative.TRAINERS`` meets the
same contract, composes the shared pieces of ``kexue.generative.common``, resumes bit for bit,
refuses an old state format in one line, trains under bf16 autocast, and runs on CUDA."""

from __future__ import annotations

import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from kexue.generative import STATE_FORMAT, TRAINERS, Trainer, TrainerEntry, common
from kexue.generative.base import check_state_format
from kexue.generative.data import ImageData, load_images

CASES = [(name, variant) for name, entry in TRAINERS.items()
         for variant in (entry.variants or (None,))]
ONE_PER_MODEL = [(name, (entry.variants or (None,))[0]) for name, entry in TRAINERS.items()]


@pytest.fixture(scope="module")
def tiny() -> ImageData:
    """64 training and 32 test images of the real digits: every trainer runs an epoch fast."""
    d = load_images("digits", seed=0)
    return ImageData("digits", d.train_x[:64], d.train_y[:64], d.test_x[:32], d.test_y[:32])


def _build(name: str, variant: str | None, data: ImageData, **kwargs: Any) -> Trainer:
    return TRAINERS[name].build(data, epochs=kwargs.pop("epochs", 2), seed=kwargs.pop("seed", 3),
                                variant=variant, **kwargs)


def _roundtrip(state: dict) -> dict:
    """Through torch.save and a weights_only load, as the CLI's checkpoints go."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _assert_same(a: Any, b: Any, path: str = "state") -> None:
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for key in a:
            _assert_same(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.mark.parametrize("name, variant", CASES)
def test_resume_equals_uninterrupted_training(tiny, name, variant):
    # 4 epochs, saved after 3: inside GLANN's second stage (GLO 2 + IMLE 2), where the cosine
    # learning rate depends on the epoch; past NVAE's KL warm-up start; several GAN n_critic turns
    straight = _build(name, variant, tiny, epochs=4)
    for _ in range(3):
        straight.fit_epoch()
    state = _roundtrip(straight.state_dict())
    straight.fit_epoch()  # uninterrupted: the snapshot must not have changed anything

    resumed = _build(name, variant, tiny, epochs=4)
    resumed.fit_epoch()  # every tensor now differs from the checkpoint's: load must overwrite all
    resumed.load_state_dict(state)
    assert resumed.epoch == 3
    resumed.fit_epoch()

    assert resumed.epoch == straight.epoch == 4
    _assert_same(straight.state_dict(), resumed.state_dict())
    gen = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    assert torch.equal(straight.sample(6, gen()), resumed.sample(6, gen()))


@pytest.mark.parametrize("name, variant", ONE_PER_MODEL)
def test_an_old_state_format_is_one_line_naming_the_format(tiny, name, variant):
    trainer = _build(name, variant, tiny, epochs=1)
    state = trainer.state_dict()
    assert state["format"] == STATE_FORMAT and isinstance(state["rng"], Tensor)
    old = {k: v for k, v in state.items() if k != "format"}
    with pytest.raises(ValueError, match=r"format 1; this kexue reads format 2") as info:
        trainer.load_state_dict(old)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="state_dict"):
        check_state_format([1, 2])


@pytest.mark.parametrize("name, variant", ONE_PER_MODEL)
def test_every_trainer_meets_the_contract(tiny, name, variant):
    trainer = _build(name, variant, tiny, epochs=1)
    assert isinstance(trainer, Trainer)
    assert trainer.device == torch.device("cpu") and isinstance(trainer.rng, torch.Generator)
    seen: list[tuple[int, int]] = []
    losses = trainer.fit_epoch(lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1] and trainer.epoch == 1
    assert losses and all(math.isfinite(v) for v in losses.values())
    before = _roundtrip(trainer.state_dict())
    a = trainer.sample(5, torch.Generator().manual_seed(1))
    b = trainer.sample(5, torch.Generator().manual_seed(1))
    assert a.shape == (5, *tiny.shape) and torch.equal(a, b) and 0 <= a.min() <= a.max() <= 1
    assert a.device.type == "cpu" and a.dtype == torch.float32
    scores = trainer.evaluate(tiny, torch.Generator().manual_seed(2))
    assert scores and all(isinstance(v, float) and math.isfinite(v) for v in scores.values())
    _assert_same(before, _roundtrip(trainer.state_dict()))  # sampling and scoring change nothing


@pytest.mark.parametrize("name, variant", ONE_PER_MODEL)
def test_default_schedules_come_from_the_entry(name, variant):
    entry = TRAINERS[name]
    assert isinstance(entry, TrainerEntry) and entry.summary
    for shape in ((1, 8, 8), (1, 28, 28)):
        full = entry.schedule(shape)
        assert isinstance(full, int) and full >= 1
        assert entry.schedule(shape, quick=True) == max(1, full // 10)


# -- the shared pieces are the ones used -----------------------------------------------------

SHARED = {
    "init": common.init_module.__code__,
    "loop": common.EpochLoop.run.__code__,
    "power iteration": common.power_iteration.__wrapped__.__code__
    if hasattr(common.power_iteration, "__wrapped__") else common.power_iteration.__code__,
    "BN recalibration": common.reestimate_batchnorm.__wrapped__.__code__
    if hasattr(common.reestimate_batchnorm, "__wrapped__")
    else common.reestimate_batchnorm.__code__,
}
USES = {  # what each model must call: GLANN has neither spectral terms nor BatchNorm at 8×8
    ("gan", "sngan"): {"init", "loop", "power iteration", "BN recalibration"},
    ("glann", None): {"init", "loop"},
    ("nvae", None): {"init", "loop", "power iteration", "BN recalibration"},
}


@pytest.mark.parametrize("case", sorted(USES, key=str))
def test_gan_glann_and_nvae_call_the_shared_pieces(tiny, case):
    called: set[str] = set()
    codes = {code: name for name, code in SHARED.items()}

    def profile(frame, event, arg):  # noqa: ARG001
        if event == "call" and frame.f_code in codes:
            called.add(codes[frame.f_code])

    sys.setprofile(profile)
    try:
        trainer = _build(*case, tiny, epochs=1)
        trainer.fit_epoch()
        trainer.sample(4, torch.Generator().manual_seed(0))
    finally:
        sys.setprofile(None)
    assert USES[case] <= called, USES[case] - called


def test_no_generative_module_rewrites_a_shared_piece():
    """The copies the shared module replaced do not come back under another name."""
    root = Path(common.__file__).parent
    for path in sorted(root.rglob("*.py")):
        if path.name == "common.py":
            continue
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(root)
        assert "reset_running_stats" not in text, f"{rel}: BN re-estimation outside common"
        assert "fork_rng" not in text, f"{rel}: initialisation must come from a generator"
        assert "manual_seed(self.seed +" not in text and "seed + 7919" not in text, \
            f"{rel}: derive named streams with kexue._seeds"


# -- precision and device --------------------------------------------------------------------


@pytest.mark.parametrize("name, variant", ONE_PER_MODEL)
def test_bf16_autocast_trains_on_cpu(tiny, name, variant):
    trainer = _build(name, variant, tiny, epochs=1, autocast="bf16")
    dtypes: set[torch.dtype] = set()
    hooks = [m.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))
             for m in _modules(trainer) if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        losses = trainer.fit_epoch()
    finally:
        for h in hooks:
            h.remove()
    assert torch.bfloat16 in dtypes  # the forward passes really ran in bf16
    assert all(math.isfinite(v) for v in losses.values())
    for value in trainer.state_dict().values():  # the master weights stay float32
        if isinstance(value, dict):
            for t in value.values():
                if isinstance(t, Tensor) and t.is_floating_point():
                    assert t.dtype == torch.float32
    out = trainer.sample(3, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def _modules(trainer: Any) -> list[nn.Module]:
    return [m for value in vars(trainer).values() if isinstance(value, nn.Module)
            for m in value.modules()]


def test_bad_device_and_autocast_are_named(tiny):
    with pytest.raises(ValueError, match="autocast"):
        common.EpochLoop("cpu", "int8")
    with pytest.raises(ValueError, match="fp16"):
        common.EpochLoop("cpu", "fp16")
    with pytest.raises(ValueError, match="device"):
        common.EpochLoop("tpu:7")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            _build("gan", "dcgan", tiny, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name, variant", ONE_PER_MODEL)
def test_cuda_training_matches_the_contract_and_resumes_on_cpu(tiny, name, variant):
    trainer = _build(name, variant, tiny, device="cuda", autocast="bf16")
    assert all(p.is_cuda for m in _modules(trainer) for p in m.parameters())
    losses = trainer.fit_epoch()
    assert all(math.isfinite(v) for v in losses.values())
    images = trainer.sample(4, torch.Generator().manual_seed(0))
    assert images.device.type == "cpu" and images.dtype == torch.float32  # the contract
    state = _roundtrip(trainer.state_dict())
    on_cpu = _build(name, variant, tiny)
    on_cpu.load_state_dict(torch.load(io.BytesIO(_bytes(state)), map_location="cpu",
                                      weights_only=True))
    on_cpu.fit_epoch()
    assert on_cpu.epoch == 2


def _bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


# -- a registered model is a model of `kexue train` -------------------------------------------


@dataclass
class _DummyTrainer:
    """The smallest Trainer: a mean image, learnt one epoch at a time."""

    data: ImageData
    epochs: int
    seed: int

    def __post_init__(self) -> None:
        self.epoch = 0
        self.device = torch.device("cpu")
        self.rng = torch.Generator().manual_seed(self.seed)
        self.mean = torch.zeros(self.data.shape)

    def fit_epoch(self, on_batch=None) -> dict[str, float]:
        self.epoch += 1
        self.mean += (self.data.train_x.mean(0) - self.mean) / self.epoch
        if on_batch is not None:
            on_batch(1, 1)
        return {"gap": float((self.data.train_x.mean(0) - self.mean).abs().max())}

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.mean.expand(n, *self.data.shape).clone()

    def evaluate(self, data: ImageData, generator: torch.Generator | None = None):
        return {"mse": float((data.test_x - self.mean).square().mean())}

    def state_dict(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "epoch": self.epoch, "mean": self.mean.clone(),
                "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_state_format(state)
        self.epoch, self.mean = state["epoch"], state["mean"].clone()
        self.rng.set_state(state["rng"])


def _dummy_entry() -> TrainerEntry:
    def build(data, *, epochs, seed=0, device=None, autocast=None, variant=None):
        return _DummyTrainer(data, epochs, seed)

    return TrainerEntry(build=build, epochs=lambda shape: 20, summary="a mean image")


def test_kexue_train_runs_a_registered_model(tmp_path, capsys, monkeypatch):
    from kexue.cli import main

    monkeypatch.setitem(TRAINERS, "dummy", _dummy_entry())

    def kexue(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["kexue", *args])
        with pytest.raises(SystemExit) as done:
            main()
        captured = capsys.readouterr()
        return done.value.code, captured.out, captured.err

    code, out, err = kexue("train", "dummy", "--quick", "--out", str(tmp_path))
    assert code == 0, err
    run = tmp_path / "dummy-digits-seed0"
    assert (run / "checkpoint.pt").is_file() and (run / "samples.png").is_file()
    assert "mse" in out
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    assert saved["meta"]["epochs"] == 2 and saved["state"]["epoch"] == 2  # a tenth of 20

    saved["meta"].pop("format")  # as a kexue before the trainers shared one contract wrote it
    torch.save(saved, run / "checkpoint.pt")
    code, _, err = kexue("train", "dummy", "--out", str(tmp_path), "--resume")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "checkpoint format 1" in lines[0], err
    assert "reads format 2" in lines[0]

    code, _, err = kexue("train", "dummy", "--recipe", "x", "--out", str(tmp_path))
    assert code == 2 and "dummy has no recipes" in err
    if not torch.cuda.is_available():
        code, _, err = kexue("train", "dummy", "--device", "cuda", "--out", str(tmp_path / "c"))
        assert code == 2 and err.startswith("kexue: error: --device cuda") and "CUDA" in err
        assert not (tmp_path / "c").exists()  # refused before anything was made
