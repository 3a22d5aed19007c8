"""kexue inside the real ``transformers.Trainer`` on tiny BERT / GPT-2 / Llama built from configs.

Each Trainer test proves one wiring claim against an independent reference: the EMA against its
closed form from the recorded weights, the transform's input against a float64 gradient, the
optimizer's gradients against the clip bound, AdamW's state across a skipped step, and a resumed
run against an uninterrupted one (bit-equal: the CPU runs are deterministic).
"""

from __future__ import annotations

import copy
import importlib
import math
import os
import shutil
import sys
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from kexue.integrations.hf import (  # noqa: E402
    EMA_FILE,
    EMACallback,
    trainer_optimizers,
    transform_clips,
)
from kexue.train import (  # noqa: E402
    GradientTransform,
    accumulate,
    adaptive_clip,
    centralize,
    chain,
    clip_by_global_norm,
    clip_by_norm,
    clip_by_value,
    select,
    skip_nonfinite,
)

VOCAB, T = 16, 8
TINY = {"vocab_size": VOCAB, "max_position_embeddings": T}


def _gpt2() -> torch.nn.Module:
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=T, n_embd=8, n_layer=2,
                                     n_head=2, bos_token_id=0, eos_token_id=0, resid_pdrop=0.0,
                                     embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config)


def _bert() -> torch.nn.Module:
    config = transformers.BertConfig(**TINY, hidden_size=8, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=16,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertForMaskedLM(config)


def _llama() -> torch.nn.Module:
    config = transformers.LlamaConfig(**TINY, hidden_size=8, intermediate_size=16,
                                      num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=1, bos_token_id=0, eos_token_id=0)
    return transformers.LlamaForCausalLM(config)


def _model(build, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build()


class Tokens(torch.utils.data.Dataset):
    """Random token ids; the labels are the inputs (causal and masked LMs alike)."""

    def __init__(self, n: int, seed: int) -> None:
        self.ids = torch.randint(0, VOCAB, (n, T), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _args(path, **kwargs) -> transformers.TrainingArguments:
    base = {"output_dir": str(path), "use_cpu": True, "report_to": [], "disable_tqdm": True,
            "per_device_train_batch_size": 4, "per_device_eval_batch_size": 8,
            "save_strategy": "no", "logging_steps": 1, "learning_rate": 1e-2, "seed": 0}
    return transformers.TrainingArguments(**{**base, **kwargs})


class Recorder(transformers.TrainerCallback):
    """What the Trainer did: weights after each optimizer step, the gradients the optimizer
    stepped with, logs and evaluation metrics."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []
        self.step_grads: list[float] = []
        self.logs: list[dict] = []
        self.evals: dict[int, float] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.weights.append({n: p.detach().clone() for n, p in model.named_parameters()})

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.weights.append({n: p.detach().clone() for n, p in model.named_parameters()})
        grads = [p.grad.double() for p in model.parameters() if p.grad is not None]
        self.step_grads.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads]))) if grads else math.nan)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.evals[state.global_step] = metrics["eval_loss"]


def _closed_form(weights: list[dict[str, torch.Tensor]], d: float) -> list[dict]:
    """ema_t = d·ema_{t−1} + (1 − d)·θ_t in float64, ema_0 = θ_0; one entry per t."""
    ema = {n: w.double() for n, w in weights[0].items()}
    out = [ema]
    for theta in weights[1:]:
        ema = {n: d * ema[n] + (1 - d) * theta[n].double() for n in ema}
        out.append(ema)
    return out


def _causal_loss(model, data, weights) -> float:
    """The Trainer's eval loss of a causal LM with ``weights`` (float64): cross-entropy of
    next-token predictions summed, divided by the number of label tokens (the Trainer's
    ``num_items_in_batch`` counts all of them, T per row, though only T − 1 are predicted)."""
    model = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(weights[n])
        logits = model(input_ids=data.ids).logits[:, :-1]  # (B, T − 1, V)
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB),
                                               data.ids[:, 1:].reshape(-1), reduction="sum")
    return float(ce) / data.ids.numel()


# -- EMA ---------------------------------------------------------------------------------------


def test_ema_callback_gpt2_closed_form_evaluate_save_and_restore(tmp_path):
    d, steps = 0.8, 4
    data, held_out = Tokens(16, seed=1), Tokens(8, seed=2)
    args = dict(max_steps=steps, gradient_accumulation_steps=2, eval_strategy="steps",
                eval_steps=2, save_strategy="steps", save_steps=2)
    model = _model(_gpt2)
    micro_batches = []
    model.register_forward_pre_hook(lambda m, a: micro_batches.append(1) if m.training else None)
    ema_cb, rec = EMACallback(d), Recorder()
    trainer = transformers.Trainer(model=model, args=_args(tmp_path / "ema", **args),
                                   train_dataset=data, eval_dataset=held_out,
                                   callbacks=[ema_cb, rec])
    trainer.train()
    # One update per optimizer step, not per micro-batch (gradient_accumulation_steps=2).
    assert len(micro_batches) == 2 * steps
    assert ema_cb.ema.num_updates == len(rec.weights) - 1 == steps
    want = _closed_form(rec.weights, d)
    shadow = ema_cb.ema.state_dict()["shadow"]
    for n in want[steps]:
        torch.testing.assert_close(shadow[n].double(), want[steps][n], rtol=1e-5, atol=1e-7)

    # Evaluation ran on the EMA weights: the loss of the closed-form EMA, computed here.
    for step in (2, 4):
        assert rec.evals[step] == pytest.approx(_causal_loss(model, held_out, want[step]),
                                                rel=1e-5)
    # The checkpoint's model is the EMA model; kexue_ema.pt holds the training weights.
    folder = tmp_path / "ema" / "checkpoint-2"
    saved = transformers.GPT2LMHeadModel.from_pretrained(folder)
    for n, p in saved.named_parameters():
        torch.testing.assert_close(p.double(), want[2][n], rtol=1e-5, atol=1e-7)
    beside = torch.load(folder / EMA_FILE, weights_only=True)
    assert set(rec.weights[2]) <= set(beside["training"])
    for n, w in rec.weights[2].items():  # (older transformers also keep GPT-2's mask buffer)
        assert torch.equal(beside["training"][n], w), n

    # The swaps changed nothing in training: the weights match a run without the callback.
    plain_rec = Recorder()
    plain = transformers.Trainer(model=_model(_gpt2), args=_args(tmp_path / "plain", **args),
                                 train_dataset=data, eval_dataset=held_out,
                                 callbacks=[plain_rec])
    plain.train()
    for ours, theirs in zip(rec.weights, plain_rec.weights):
        for n in ours:
            assert torch.equal(ours[n], theirs[n]), n
    # After training the model holds the EMA; restore() brings the training weights back.
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach().double(), want[steps][n], rtol=1e-5, atol=1e-7)
    ema_cb.restore()
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), rec.weights[steps][n]), n


# -- the optimizer builder ---------------------------------------------------------------------


def _recording(log: list) -> GradientTransform:
    """Records the global L2 norm (float64) of the gradients it sees; changes nothing."""

    def update(grads, state, params):
        log.append([g.detach().double().clone() for g in grads])
        return grads, state

    return GradientTransform(lambda params: None, update)


def _global_norm(grads: list[torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g)
                                                       for g in grads])))


def test_builder_bert_clips_once_bounds_every_step_and_logs_the_base_lr(tmp_path):
    bound, steps, lr = 0.01, 4, 1e-2
    data = Tokens(8, seed=3)  # one batch of all 8 rows per step: step 1's gradient is known
    model = _model(_bert)
    args = _args(tmp_path, max_steps=steps, per_device_train_batch_size=8, learning_rate=lr,
                 max_grad_norm=0.05)
    seen: list = []
    opts = trainer_optimizers(model, args, layer_decay=0.5, multipliers={"*.bias": 2.0},
                              tied="max", transform=chain(_recording(seen),
                                                          clip_by_global_norm(bound)))
    assert args.max_grad_norm == 0.0  # the chain clips, so the Trainer does not
    groups = opts.optimizer.param_groups
    assert groups[0]["lr_scale"] == 1.0 and {g["lr_scale"] for g in groups} != {1.0}
    rec = Recorder()
    reference = copy.deepcopy(model).double()
    transformers.Trainer(model=model, args=args, train_dataset=data, optimizers=opts,
                         callbacks=[rec]).train()

    # Step 1: the transform saw the raw float64 gradient of the whole batch, computed here.
    reference(input_ids=data.ids, labels=data.ids).loss.backward()
    name = {id(p): n for n, p in model.named_parameters()}
    raw = [reference.get_parameter(name[id(p)]).grad for p in opts.handle.params]
    assert len(raw) == len(seen[0])
    for got, want in zip(seen[0], raw):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    logged = [entry for entry in rec.logs if "learning_rate" in entry]
    assert len(seen) == len(logged) == len(rec.step_grads) == steps
    for t in range(steps):
        # Unclipped by the Trainer (the transform saw a norm above its old bound 0.05; the
        # Trainer logs the norm it measured since transformers 5.x, when it does: the same) ...
        assert _global_norm(seen[t]) > 0.05
        if "grad_norm" in logged[t]:
            assert _global_norm(seen[t]) == pytest.approx(logged[t]["grad_norm"], rel=1e-5)
        # ... and the optimizer stepped with gradients inside the chain's bound.
        assert rec.step_grads[t] <= bound * (1 + 1e-6)
        # The logged rate is the base rate of the Trainer's linear schedule, lr·(1 − (t−1)/T).
        assert logged[t]["learning_rate"] == pytest.approx(lr * (1 - t / steps), rel=1e-12)
    base = groups[0]["lr"]
    for g in groups:
        assert g["lr"] == pytest.approx(base * g["lr_scale"], rel=1e-12)


def test_skipped_step_leaves_llama_adamw_state_untouched(tmp_path):
    steps, bad = 4, 2  # NaN in the third step's gradients (global_step 2 before it)
    model = _model(_llama)
    opts = trainer_optimizers(model, _args(tmp_path, max_steps=steps),
                              transform=chain(skip_nonfinite(), clip_by_global_norm(1.0)))
    ema_cb = EMACallback(0.9)

    class Inject(transformers.TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None,
                                  **kwargs):
            self.before = {k: v.clone() if torch.is_tensor(v) else v
                           for p, s in opts.optimizer.state.items() for k, v in
                           ((f"{id(p)}.{k}", v) for k, v in s.items())}
            self.weights = [p.detach().clone() for p in model.parameters()]
            if state.global_step == bad:
                with torch.no_grad():
                    next(model.parameters()).grad[0].fill_(float("nan"))

        def on_optimizer_step(self, args, state, control, model=None, **kwargs):
            after = {f"{id(p)}.{k}": v for p, s in opts.optimizer.state.items()
                     for k, v in s.items()}
            same = self.before.keys() == after.keys() and all(
                torch.equal(torch.as_tensor(self.before[k]), torch.as_tensor(after[k]))
                for k in after)
            unmoved = all(torch.equal(w, p) for w, p in zip(self.weights, model.parameters()))
            self.outcome = getattr(self, "outcome", []) + [(same, unmoved)]

    inject = Inject()
    transformers.Trainer(model=model, args=_args(tmp_path, max_steps=steps),
                         train_dataset=Tokens(16, seed=4), optimizers=opts,
                         callbacks=[ema_cb, inject]).train()
    # Only the poisoned step left the AdamW state (exp_avg, exp_avg_sq, step) and weights alone.
    assert inject.outcome == [(t == bad, t == bad) for t in range(steps)]
    assert (opts.handle.steps_taken, opts.handle.steps_skipped) == (steps - 1, 1)
    assert ema_cb.ema.num_updates == steps - 1  # a skipped step is not folded into the EMA
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _resumable(path, seed: int = 0):
    model = _model(_gpt2, seed)
    args = _args(path, max_steps=4, save_strategy="steps", save_steps=2)
    opts = trainer_optimizers(model, args, layer_decay=0.5, tied="first",
                              transform=chain(skip_nonfinite(), clip_by_global_norm(0.05)))
    ema_cb = EMACallback(0.7)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(24, seed=5),
                                   optimizers=opts, callbacks=[ema_cb])
    return model, opts, ema_cb, trainer


def test_resume_from_checkpoint_equals_an_uninterrupted_gpt2_run(tmp_path):
    model, opts, ema_cb, trainer = _resumable(tmp_path / "full")
    trainer.train()
    # A second run from a fresh model, resumed at step 2 from the first run's checkpoint.
    shutil.copytree(tmp_path / "full" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    model2, opts2, ema_cb2, trainer2 = _resumable(tmp_path / "resumed", seed=1)
    trainer2.train(resume_from_checkpoint=True)
    assert trainer2.state.global_step == 4
    for a, b in ((ema_cb.ema.state_dict(), ema_cb2.ema.state_dict()),):
        assert (a["step"], a["num_updates"]) == (b["step"], b["num_updates"]) == (4, 4)
        for n in a["shadow"]:
            assert torch.equal(a["shadow"][n], b["shadow"][n]), n
    ema_cb.restore(), ema_cb2.restore()
    for (n, p), q in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(p, q), n
    for p, q in zip(model.parameters(), model2.parameters()):
        for key, value in opts.optimizer.state[p].items():
            assert torch.equal(torch.as_tensor(value),
                               torch.as_tensor(opts2.optimizer.state[q][key])), key
    assert opts.handle.steps_taken == opts2.handle.steps_taken == 4


@pytest.mark.gpu
def test_gpu_trainer_ema_clip_and_transform_state_on_cuda(tmp_path):
    import io

    model = _model(_gpt2).cuda()
    args = _args(tmp_path, max_steps=3, use_cpu=False)
    opts = trainer_optimizers(model, args, tied="first",
                              transform=chain(accumulate(1), clip_by_global_norm(0.05)))
    ema_cb, rec = EMACallback(0.8), Recorder()
    transformers.Trainer(model=model, args=args, train_dataset=Tokens(12, seed=6),
                         optimizers=opts, callbacks=[ema_cb, rec]).train()
    assert all(norm <= 0.05 * (1 + 1e-5) for norm in rec.step_grads)
    cpu = [{n: w.cpu() for n, w in weights.items()} for weights in rec.weights]
    want = _closed_form(cpu, 0.8)[-1]
    shadow = ema_cb.ema.state_dict()["shadow"]
    for n in want:
        assert shadow[n].is_cuda
        torch.testing.assert_close(shadow[n].cpu().double(), want[n], rtol=1e-5, atol=1e-6)
    # Transform state saved, read back on the CPU (as a checkpoint may be), lands on the GPU.
    buffer = io.BytesIO()
    torch.save(opts.optimizer.state_dict(), buffer)
    buffer.seek(0)
    fresh = trainer_optimizers(model, lr=0.1, transform=chain(accumulate(1),
                                                              clip_by_global_norm(0.05)))
    fresh.optimizer.load_state_dict(torch.load(buffer, map_location="cpu", weights_only=True))
    assert all(b.is_cuda for b in fresh.handle.state[0]["buffers"])


# -- fast checks without a Trainer -------------------------------------------------------------


def test_import_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.delitem(sys.modules, "kexue.integrations.hf")
    with pytest.raises(ImportError, match=r"pip install 'kexue\[hf\]'"):
        importlib.import_module("kexue.integrations.hf")


def test_transform_clips_finds_kexue_clipping_inside_chain_and_select():
    model = torch.nn.Linear(2, 2)
    for tx in (clip_by_norm(1.0), clip_by_value(1.0), adaptive_clip(),
               chain(skip_nonfinite(), clip_by_global_norm(1.0)),
               chain(centralize(), select(model, "weight", clip_by_norm(1.0)))):
        assert transform_clips(tx)
    for tx in (centralize(), skip_nonfinite(), accumulate(2), chain(centralize())):
        assert not transform_clips(tx)


def test_builder_without_args_warns_of_double_clipping_and_carries_an_empty_base_group():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    with pytest.warns(UserWarning, match="clip after clip"):
        opts = trainer_optimizers(model, lr=0.1, multipliers={"*": 0.5},
                                  transform=clip_by_norm(1.0))
    first, *rest = opts.optimizer.param_groups
    assert first["params"] == [] and first["lr"] == 0.1 and first["lr_scale"] == 1.0
    assert [g["lr"] for g in rest] == [0.05]
    optimizer, scheduler = opts  # what Trainer(optimizers=...) unpacks
    assert optimizer is opts.optimizer and scheduler is None
    sched = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step(), sched.step()
    assert sched.get_last_lr()[:2] == [0.05, 0.025]  # what the Trainer logs comes first
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        args = _args("unused", max_grad_norm=1.0)
        trainer_optimizers(model, args, transform=centralize())
    assert args.max_grad_norm == 1.0  # a chain that does not clip leaves the Trainer's alone


def test_transform_state_rides_in_the_optimizer_state_dict():
    model = torch.nn.Linear(2, 1)
    opts = trainer_optimizers(model, lr=0.1, transform=accumulate(3))
    model(torch.ones(1, 2)).sum().backward()
    opts.optimizer.step()  # one micro-batch of three accumulated
    saved = copy.deepcopy(opts.optimizer.state_dict())
    fresh = trainer_optimizers(model, lr=0.1, transform=accumulate(3))
    fresh.optimizer.load_state_dict(saved)
    assert fresh.handle.state["count"] == 1 and fresh.handle.steps_skipped == 1
    for a, b in zip(fresh.handle.state["buffers"], opts.handle.state["buffers"]):
        assert torch.equal(a, b) and a.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"args": "out"}, "args must be transformers.TrainingArguments"),
        ({}, "pass lr= or args="),
        ({"lr": 0.1, "transform": "clip"}, "transform must be a GradientTransform"),
        ({"lr": 0.1, "optimizer": 3}, "optimizer must be callable"),
        ({"lr": 0.1, "clips": 1}, "clips must be True, False or None"),
        ({"lr": 0.1, "optimizer": lambda groups: groups}, "must return a torch.optim"),
    ],
)
def test_builder_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        trainer_optimizers(torch.nn.Linear(2, 1), **kwargs)


def test_ema_callback_refuses_a_resume_without_its_file(tmp_path):
    model = torch.nn.Linear(2, 1)
    args = _args(tmp_path)
    state = transformers.TrainerState(global_step=3)
    with pytest.raises(ValueError, match=r"checkpoint-3.*kexue_ema\.pt.*resume_from"):
        EMACallback(0.9).on_train_begin(args, state, transformers.TrainerControl(),
                                        model=model)
    os.makedirs(tmp_path / "elsewhere")
    torch.save({"global_step": 2, "ema": {}, "training": {}}, tmp_path / "elsewhere" / EMA_FILE)
    with pytest.raises(ValueError, match="saved at step 2"):
        EMACallback(0.9, resume_from=tmp_path / "elsewhere").on_train_begin(
            args, state, transformers.TrainerControl(), model=model)
    with pytest.raises(ValueError, match="decay"):
        EMACallback(1.5)


def test_ema_skips_a_step_that_grad_scaler_skipped():
    # Under fp16 the Trainer calls on_optimizer_step also after a step GradScaler skipped
    # (accelerate's optimizer wrapper then says step_was_skipped); the average must not move.
    import types

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    callback = EMACallback(0.5)
    state = types.SimpleNamespace(global_step=0)
    callback.on_train_begin(None, state, None, model=model, optimizer=opt)
    with torch.no_grad():
        model.weight.add_(1.0)
    skipped = types.SimpleNamespace(step_was_skipped=True, optimizer=opt)
    callback.on_optimizer_step(None, state, None, optimizer=skipped)
    assert callback.ema.num_updates == 0
    stepped = types.SimpleNamespace(step_was_skipped=False, optimizer=opt)
    callback.on_optimizer_step(None, state, None, optimizer=stepped)
    assert callback.ema.num_updates == 1
