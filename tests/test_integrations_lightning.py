"""kexue's EMA and gradient transforms as callbacks of the real ``lightning.Trainer`` (CPU).

The references are independent of the callbacks: the EMA is recomputed in float64 from the
weights recorded after every optimizer step, the clipped update from float64 gradients of a
copy of the model, and Lightning's own ``EMAWeightAveraging`` runs beside ours.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import functional_call

pl = pytest.importorskip("lightning.pytorch")

from kexue.integrations.lightning import (  # noqa: E402
    EMACallback,
    GradientTransformCallback,
    transform_handles,
)
from kexue.train import (  # noqa: E402
    accumulate,
    chain,
    clip_by_global_norm,
    clip_by_value,
    ema_warmup,
    skip_nonfinite,
    with_transforms,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*but have no `val_dataloader`.*"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),  # lightning on torch 2.13
]

ROOT = Path(__file__).resolve().parent.parent


# -- a tiny regression problem ----------------------------------------------------------------


def _batches(n: int, size: int = 4, seed: int = 0, nan_at: int | None = None):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n * size, 3, generator=gen)
    y = torch.randn(n * size, 2, generator=gen)
    if nan_at is not None:
        x[nan_at * size] = float("nan")
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=size)


class Regression(pl.LightningModule):
    """Linear → BatchNorm → tanh → Linear, mean squared error; records what evaluation sees."""

    def __init__(self, optimizer: str = "sgd", lr: float = 0.1, manual: bool = False,
                 bn: bool = True, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6) if bn else nn.Identity(),
                                 nn.Tanh(), nn.Linear(6, 2))
        self.optimizer, self.lr = optimizer, lr
        self.automatic_optimization = not manual
        self.seen: list[tuple[str, int, dict[str, torch.Tensor]]] = []  # (stage, step, weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, batch) -> torch.Tensor:
        x, y = batch
        return ((self(x) - y) ** 2).mean()

    def training_step(self, batch, batch_idx):
        if self.automatic_optimization:
            return self.loss(batch)
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(self.loss(batch))
        opt.step()

    def _record(self, stage: str, batch_idx: int) -> None:
        if batch_idx == 0:
            self.seen.append((stage, self.trainer.global_step, _weights(self)))

    def validation_step(self, batch, batch_idx):
        self._record("validate", batch_idx)

    def test_step(self, batch, batch_idx):
        self._record("test", batch_idx)

    def predict_step(self, batch, batch_idx):
        self._record("predict", batch_idx)
        return self(batch[0])

    def configure_optimizers(self):
        if self.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.lr)
        if self.optimizer == "momentum":
            return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        if self.optimizer == "lbfgs":
            return torch.optim.LBFGS(self.parameters(), lr=self.lr, max_iter=4)
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def _weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _floating(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in d.items() if v.is_floating_point()}


class Recorder(pl.Callback):
    """Weights at the start of training and before and after every training batch."""

    def __init__(self) -> None:
        self.before: list[dict[str, torch.Tensor]] = []
        self.after: list[dict[str, torch.Tensor]] = []

    def on_train_start(self, trainer, pl_module):
        self.start = _weights(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before.append(_weights(pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after.append(_weights(pl_module))


def _trainer(callbacks, **kwargs) -> pl.Trainer:
    options = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False,
                   num_sanity_val_steps=0)
    return pl.Trainer(callbacks=callbacks, **{**options, **kwargs})


def _closed_form(start, thetas, decays):
    """ema_t = d_t · ema_{t-1} + (1 − d_t) · θ_t in float64, ema_0 = θ_0 (floating tensors)."""
    ema = {k: v.double() for k, v in _floating(start).items()}
    out = [dict(ema)]
    for theta, d in zip(thetas, decays, strict=True):
        ema = {k: d * ema[k] + (1 - d) * theta[k].double() for k in ema}
        out.append(ema)
    return out  # out[n]: the average after n updates


def _assert_close_dicts(got, expected, **tol):
    assert set(got) >= set(expected)
    for k in expected:
        torch.testing.assert_close(got[k].double(), expected[k].double(), msg=k, **tol)


# -- EMA callback -----------------------------------------------------------------------------


def test_ema_closed_form_swap_for_evaluation_and_exact_restore():
    decay = ema_warmup(0.9, power=1.0)  # d_n = min(0.9, n / (n + 1))
    model, ema_cb, rec = Regression("momentum"), EMACallback(decay=decay), Recorder()
    loader = _batches(12)
    trainer = _trainer([ema_cb, rec], max_steps=12, val_check_interval=4, limit_val_batches=1,
                       num_sanity_val_steps=1)
    trainer.fit(model, loader, _batches(1, seed=1))
    steps = len(rec.after)
    assert steps == 12 and ema_cb.ema.num_updates == 12
    expected = _closed_form(rec.start, rec.after, [decay(n) for n in range(1, steps + 1)])
    _assert_close_dicts(ema_cb.ema.state_dict()["shadow"], expected[-1], rtol=1e-6, atol=1e-6)

    # Validation (the sanity check at step 0, then after steps 4, 8, 12) saw the average;
    # BatchNorm's num_batches_tracked is copied, not averaged.
    assert [(s, g) for s, g, _ in model.seen] == [("validate", g) for g in (0, 4, 8, 12)]
    for _, g, seen in model.seen:
        _assert_close_dicts(seen, expected[g], rtol=1e-6, atol=1e-6)
        counter = rec.after[g - 1] if g else rec.start
        assert torch.equal(seen["net.1.num_batches_tracked"], counter["net.1.num_batches_tracked"])
    # Training went on from the training weights, bit for bit, across every validation.
    for after, before in zip(rec.after[:-1], rec.before[1:], strict=True):
        for k in after:
            assert torch.equal(after[k], before[k]), k
    final = _weights(model)
    assert all(torch.equal(final[k], rec.after[-1][k]) for k in final)

    # Test and predict see the average too; the prediction is the float64 averaged model's.
    model.seen.clear()
    trainer.test(model, _batches(1, seed=2), verbose=False)
    predicted = trainer.predict(model, _batches(1, seed=2))[0]
    assert [s for s, _, _ in model.seen] == ["test", "predict"]
    for _, _, seen in model.seen:
        _assert_close_dicts(seen, expected[-1], rtol=1e-6, atol=1e-6)
    x = next(iter(_batches(1, seed=2)))[0]
    reference = functional_call(copy.deepcopy(model).double().eval(), expected[-1], (x.double(),))
    torch.testing.assert_close(predicted.double(), reference, rtol=1e-5, atol=1e-6)
    final = _weights(model)
    assert all(torch.equal(final[k], rec.after[-1][k]) for k in final)


@pytest.mark.parametrize("update_every", [1, 2])
def test_ema_averages_only_steps_that_stepped(update_every):
    # accumulate_grad_batches=2: 12 batches are 6 optimizer steps; a NaN in batch 5 makes
    # skip_nonfinite skip step 3 (batches 4, 5). The average takes the 5 real steps.
    model, rec = Regression("momentum", bn=False), Recorder()
    ema_cb = EMACallback(decay=0.8, update_every=update_every)
    tx = GradientTransformCallback(skip_nonfinite())
    _trainer([ema_cb, tx, rec], max_steps=6, accumulate_grad_batches=2).fit(
        model, _batches(12, nan_at=5))
    real = [1, 3, 7, 9, 11]  # batch indices that end a step that stepped
    skipped = rec.after[5]
    assert all(torch.equal(skipped[k], rec.after[3][k]) for k in skipped)  # nothing moved
    averaged = [rec.after[i] for i in real][update_every - 1::update_every]
    assert ema_cb.ema.num_updates == len(averaged) == 5 // update_every
    expected = _closed_form(rec.start, averaged, [0.8] * len(averaged))[-1]
    _assert_close_dicts(ema_cb.ema.state_dict()["shadow"], expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("multi", [False, True])
def test_ema_equals_lightning_ema_weight_averaging(multi):
    # Lightning's EMAWeightAveraging (an AveragedModel updated when global_step advances)
    # copies the weights at the first update and then takes d·ema + (1 − d)·θ per tensor.
    # kexue's EMA starts from the initial weights; d_1 = 0 makes its first update that copy.
    # Its base class WeightAveraging with torch's foreach EMA (multi_avg_fn) updates on the
    # same steps with _foreach_lerp_(ema, θ, 1 − d), as kexue does: bit for bit.
    from lightning.pytorch.callbacks import EMAWeightAveraging, WeightAveraging
    from torch.optim.swa_utils import get_ema_multi_avg_fn

    d = 0.9
    ours = EMACallback(decay=lambda n: 0.0 if n == 1 else d)
    if multi:
        theirs = WeightAveraging(multi_avg_fn=get_ema_multi_avg_fn(d))
    else:
        theirs = EMAWeightAveraging(decay=d)
    _trainer([ours, theirs], max_steps=10).fit(Regression("momentum"), _batches(10))
    got = ours.ema.state_dict()["shadow"]
    module = theirs._average_model.module
    reference = _floating(dict(module.state_dict()))
    assert set(got) == set(reference)  # parameters and BatchNorm statistics
    for k, v in reference.items():
        if multi:
            assert torch.equal(got[k], v), k
        else:
            torch.testing.assert_close(got[k], v, rtol=1e-6, atol=1e-7, msg=k)


def test_ema_of_a_bf16_model_is_float32_and_swaps_only_where_asked():
    # precision="bf16-true" trains a bf16 model; the average stays float32 (a bf16 average
    # would round away most of each (1 − d)·(θ − ema) increment). Validation is not swapped
    # here, test is.
    model, rec = Regression("sgd", lr=0.5, bn=False), Recorder()
    ema_cb = EMACallback(decay=0.9, swap_during=("test",))
    trainer = _trainer([ema_cb, rec], max_steps=4, precision="bf16-true", val_check_interval=4,
                       limit_val_batches=1)
    trainer.fit(model, _batches(4), _batches(1, seed=1))
    shadow = ema_cb.ema.state_dict()["shadow"]
    assert all(v.dtype == torch.float32 for v in shadow.values())
    assert all(v.dtype == torch.bfloat16 for v in rec.after[-1].values())
    expected = _closed_form(rec.start, rec.after, [0.9] * 4)[-1]
    _assert_close_dicts(shadow, expected, rtol=1e-6, atol=1e-7)
    (_, _, validated), = model.seen
    assert all(torch.equal(validated[k], rec.after[-1][k]) for k in validated)
    trainer.test(model, _batches(1, seed=2), verbose=False)
    _, _, tested = model.seen[-1]
    for k, v in shadow.items():  # swapped in as bf16 copies of the float32 average
        assert torch.equal(tested[k], v.bfloat16()), k


def test_checkpoint_saved_during_validation_holds_training_weights(tmp_path):
    path = tmp_path / "mid.ckpt"

    class SavesInValidation(Regression):
        def on_validation_epoch_end(self):
            self.trainer.save_checkpoint(path)
            self.after_save = _weights(self)  # the average is still in place

    model, ema_cb, rec = SavesInValidation(), EMACallback(decay=0.5), Recorder()
    _trainer([ema_cb, rec], max_steps=3, val_check_interval=3, limit_val_batches=1).fit(
        model, _batches(3), _batches(1, seed=1))
    ckpt = torch.load(path, weights_only=False)
    state = ckpt["callbacks"][ema_cb.state_key]["ema"]
    for k, v in rec.after[-1].items():
        assert torch.equal(ckpt["state_dict"][k], v), k
    weight = "net.0.weight"
    assert not torch.equal(state["shadow"][weight], ckpt["state_dict"][weight])
    for k, v in state["shadow"].items():
        assert torch.equal(v, ema_cb.ema.state_dict()["shadow"][k]), k
        assert torch.equal(model.after_save[k], v), k


def test_training_weights_come_back_when_validation_raises():
    class Fails(Regression):
        def validation_step(self, batch, batch_idx):
            raise RuntimeError("validation failed")

    model, ema_cb, rec = Fails(), EMACallback(decay=0.5), Recorder()
    trainer = _trainer([ema_cb, rec], max_steps=2, val_check_interval=2, limit_val_batches=1)
    with pytest.raises(RuntimeError, match="validation failed"):
        trainer.fit(model, _batches(2), _batches(1, seed=1))
    assert ema_cb.ema.num_updates == 2
    for k, v in _weights(model).items():
        assert torch.equal(v, rec.after[-1][k]), k


def _resume_run(tmp_path, epochs: int, ckpt: Path | None = None, save: Path | None = None):
    model = Regression("adamw", lr=0.05, seed=1 if ckpt else 0)  # a resumed run restores
    ema_cb = EMACallback(decay=ema_warmup(0.99, power=1.0))
    tx = GradientTransformCallback(chain(clip_by_global_norm(0.5), accumulate(3)))
    trainer = _trainer([ema_cb, tx], max_epochs=epochs, default_root_dir=tmp_path)
    trainer.fit(model, _batches(4), ckpt_path=ckpt)
    if save is not None:
        trainer.save_checkpoint(save)
    return model, ema_cb, tx


def test_resume_equals_uninterrupted_run(tmp_path):
    # 4 batches per epoch, accumulate(3): the checkpoint after 8 batches holds 2 accumulated
    # micro-batches, and the warm-up decay depends on the restored update counter.
    whole_model, whole_ema, whole_tx = _resume_run(tmp_path, 4)
    path = tmp_path / "half.ckpt"
    _resume_run(tmp_path, 2, save=path)
    model, ema_cb, tx = _resume_run(tmp_path, 4, ckpt=path)
    for k, v in _weights(whole_model).items():
        assert torch.equal(_weights(model)[k], v), k
    got, want = ema_cb.ema.state_dict(), whole_ema.ema.state_dict()
    assert (got["step"], got["num_updates"]) == (want["step"], want["num_updates"]) == (5, 5)
    for k, v in want["shadow"].items():
        assert torch.equal(got["shadow"][k], v), k
    (got_tx,), (want_tx,) = tx.state_dict()["handles"], whole_tx.state_dict()["handles"]
    assert (got_tx["steps_taken"], got_tx["steps_skipped"]) == (5, 11)
    assert (got_tx["steps_taken"], got_tx["steps_skipped"]) == (
        want_tx["steps_taken"], want_tx["steps_skipped"])
    acc, want_acc = got_tx["state"][1], want_tx["state"][1]
    assert acc["count"] == want_acc["count"] == 1 and acc["seen"] == want_acc["seen"]
    for a, b in zip(acc["buffers"], want_acc["buffers"], strict=True):
        assert torch.equal(a, b)


# -- gradient-transform callback --------------------------------------------------------------


@pytest.mark.parametrize("manual", [False, True])
def test_transform_callback_clips_every_step(manual):
    # SGD without momentum: the applied gradient is (θ_before − θ_after) / lr. It must be the
    # float64 gradient of the batch loss, clipped to global norm c, on every step.
    lr, c = 0.5, 0.05
    model, rec = Regression("sgd", lr=lr, manual=manual, bn=False), Recorder()
    loader = _batches(6)
    tx = GradientTransformCallback(clip_by_global_norm(c, eps=0.0))
    _trainer([tx, rec], max_steps=6).fit(model, loader)
    reference = Regression(bn=False).double()
    clipped = 0
    for batch, before, after in zip(loader, rec.before, rec.after, strict=True):
        names = [n for n, _ in reference.named_parameters()]
        params = {n: before[n].double().requires_grad_() for n in names}
        x, y = (t.double() for t in batch)
        loss = ((functional_call(reference, params, (x,)) - y) ** 2).mean()
        raw = torch.autograd.grad(loss, list(params.values()))
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in raw]))
        scale_ = min(1.0, c / norm.item())
        clipped += scale_ < 1
        applied = [(before[n].double() - after[n].double()) / lr for n in names]
        assert torch.linalg.vector_norm(torch.stack([a.norm() for a in applied])) <= c * 1.0001
        for a, g in zip(applied, raw, strict=True):
            torch.testing.assert_close(a, g * scale_, rtol=1e-4, atol=1e-6)
    assert clipped == 6  # the bound was active on every step, so the test can fail
    assert tx.handles[0].steps_taken == 6


def test_transform_callback_with_lbfgs_equals_plain_loop():
    # LBFGS evaluates Lightning's closure several times per step; each evaluation's gradients
    # pass the transform. Same as LBFGS + with_transforms in a plain loop, bit for bit.
    loader = _batches(3)
    model = Regression("lbfgs", lr=0.5, bn=False)
    _trainer([GradientTransformCallback(clip_by_value(0.05))], max_steps=3).fit(model, loader)
    plain = Regression("lbfgs", lr=0.5, bn=False)
    opt = plain.configure_optimizers()
    with_transforms(opt, clip_by_value(0.05))
    for batch in loader:
        def closure(batch=batch):
            opt.zero_grad()
            loss = plain.loss(batch)
            loss.backward()
            return loss
        opt.step(closure)
    for k, v in _weights(plain).items():
        assert torch.equal(_weights(model)[k], v), k


def test_transform_handles_found_on_the_optimizer():
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    assert transform_handles(opt) == []
    a, b = with_transforms(opt, clip_by_value(1.0)), with_transforms(opt, skip_nonfinite())
    assert transform_handles(opt) == [a, b]
    a.remove()
    assert transform_handles(opt) == [b]


# -- arguments and import ---------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, name", [
    ({"decay": 1.0}, "decay"), ({"decay": True}, "decay"), ({"update_every": 0}, "update_every"),
    ({"buffers": "mean"}, "buffers"), ({"dtype": torch.int64}, "dtype"),
    ({"device": "nowhere"}, "device"), ({"swap_during": ("train",)}, "swap_during"),
    ({"swap_during": "test"}, "swap_during"), ({"ema_weights_at_end": 1}, "ema_weights_at_end"),
])
def test_ema_callback_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        EMACallback(**kwargs)


def test_transform_callback_rejects_bad_arguments():
    for bad in (None, clip_by_value, [None], ["clip"]):
        with pytest.raises(ValueError, match="transform must be"):
            GradientTransformCallback(bad)
    two = GradientTransformCallback([clip_by_value(1.0), clip_by_value(1.0)])
    with pytest.raises(ValueError, match="2 transforms for 1 optimizers"):
        _trainer([two], max_steps=1).fit(Regression(), _batches(1))
    with pytest.raises(ValueError, match="'handles'"):
        two.load_state_dict({"state": 1})


def test_ema_weights_at_end_and_state_keys():
    model, ema_cb, rec = Regression(), EMACallback(decay=0.5, ema_weights_at_end=True), Recorder()
    _trainer([ema_cb, rec], max_steps=3).fit(model, _batches(3))
    shadow = ema_cb.ema.state_dict()["shadow"]
    assert all(torch.equal(v, shadow[k]) for k, v in _floating(_weights(model)).items())
    assert not torch.equal(shadow["net.0.weight"], rec.after[-1]["net.0.weight"])
    keys = {EMACallback(0.9).state_key, EMACallback(0.999).state_key,
            EMACallback(0.9, update_every=2).state_key}
    assert len(keys) == 3  # two averages of one model can ride in one checkpoint


def test_import_names_the_extra_when_lightning_is_missing(monkeypatch):
    import importlib

    for name in [m for m in sys.modules if m == "lightning" or m.startswith("lightning.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.delitem(sys.modules, "kexue.integrations.lightning")
    with pytest.raises(ImportError, match=r"pip install 'kexue\[integrations\]'"):
        importlib.import_module("kexue.integrations.lightning")


# -- DDP and CUDA -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process_on_concatenated_batches(tmp_path):
    # A script of its own: under pytest, strategy="ddp" would re-launch pytest (sys.argv). Both
    # ranks are started here at once, as torchrun does (LOCAL_RANK set: Lightning launches
    # nothing), so their imports overlap. Each rank sees half of every global batch and DDP
    # averages the gradients: the 1-process reference steps on the concatenated batch with the
    # same mean loss, clips by hand and averages in closed form, in float64.
    script = ROOT / "tests" / "_lightning_ddp_script.py"
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "WORLD_SIZE": "2", "NODE_RANK": "0", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    ranks = [subprocess.Popen([sys.executable, str(script), str(tmp_path)], cwd=ROOT,
                              env={**env, "LOCAL_RANK": str(r)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        errors = [p.communicate(timeout=240)[1] for p in ranks]
    finally:
        for p in ranks:
            p.kill()
    for p, err in zip(ranks, errors, strict=True):
        assert p.returncode == 0, err[-4000:]
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import _lightning_ddp_script as ddp
    finally:
        sys.path.remove(str(ROOT / "tests"))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for k in ranks[0]["ema"]:
        assert torch.equal(ranks[0]["ema"][k], ranks[1]["ema"][k]), k  # the ranks agree
    reference = ddp.reference()
    _assert_close_dicts(ranks[0]["ema"], reference["ema"], rtol=1e-5, atol=1e-6)
    _assert_close_dicts(ranks[0]["weights"], reference["weights"], rtol=1e-5, atol=1e-6)
    _assert_close_dicts(ranks[0]["validated"], reference["ema"], rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_ema_offloaded_to_cpu_on_cuda():
    model, rec = Regression("momentum"), Recorder()
    ema_cb = EMACallback(decay=0.8, device="cpu")
    trainer = _trainer([ema_cb, rec], accelerator="gpu", max_steps=6, val_check_interval=6,
                       limit_val_batches=1)
    trainer.fit(model, _batches(6), _batches(1, seed=1))
    shadow = ema_cb.ema.state_dict()["shadow"]
    assert all(t.device.type == "cpu" for t in shadow.values())
    expected = _closed_form(rec.start, rec.after, [0.8] * 6)
    _assert_close_dicts({k: v.cpu() for k, v in shadow.items()},
                        {k: v.cpu() for k, v in expected[-1].items()}, rtol=1e-5, atol=1e-6)
    _, step, seen = model.seen[-1]
    assert step == 6
    _assert_close_dicts({k: v.cpu() for k, v in seen.items()},
                        {k: v.cpu() for k, v in expected[-1].items()}, rtol=1e-5, atol=1e-6)
    assert all(v.device.type == "cuda" for v in rec.after[-1].values())  # trained on the GPU
