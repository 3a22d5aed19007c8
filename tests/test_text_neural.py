"""kexue.text.neural: the neural character LM against independent recomputations.

Declared tolerances: scores of the float32 model agree with a float64 copy of the same module
run through its own forward (``Block`` + SDPA, no cache, no packing) to 1e-4 nats per sentence;
batched, cached and alone-scored values agree to 1e-5 nats per sentence (float32 rounding of
differently shaped products; in practice they are bit-equal on the CPU).
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from kexue.text.data import pd1998_split
from kexue.text.lm import BOS, EOS, UNK, NgramLM, split_sentences
from kexue.text.neural import (
    NeuralConfig,
    NeuralLM,
    default_neural_lm,
    default_neural_lm_path,
    train_neural,
)

TINY = {"dim": 16, "layers": 2, "heads": 2, "dropout": 0.0, "max_len": 24}
CONFIGS = {
    "dense": NeuralConfig(**TINY),
    "local": NeuralConfig(**TINY, attention="local", window=6),
    "gru": NeuralConfig(**TINY, kind="gru"),
}


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], list[str]]:
    train = split_sentences(pd1998_split("train")[:200])
    held = split_sentences(pd1998_split("heldout")[:40])
    return train, held


@pytest.fixture(scope="module")
def models(corpus) -> dict[str, NeuralLM]:
    train, _ = corpus
    return {name: train_neural(train, cfg, steps=25, batch_size=16, lr=5e-3)
            for name, cfg in CONFIGS.items()}


def _reference(lm: NeuralLM, text: str) -> float:
    """log p(text) by a float64 copy of the module's own forward (no cache, no windows)."""
    net = copy.deepcopy(lm.module).double().eval()
    z = torch.as_tensor(np.concatenate([[BOS], lm.encode(text), [EOS]]))
    with torch.no_grad():
        logp = torch.log_softmax(net(z[None, :-1])[0], -1)  # (L + 1, V)
    return float(logp.gather(-1, z[1:, None]).sum())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_log_prob_matches_float64_forward(models, corpus, name):
    lm = models[name]
    texts = [t for t in corpus[1] if len(t) < 23][:6]
    got = lm.log_prob(texts)
    want = np.array([_reference(lm, t) for t in texts])
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_next_probs_sum_to_one_and_chain_to_log_prob(models, name):
    lm = models[name]
    text = "中国人民"
    probs = lm.next_probs([text[:k] for k in range(len(text) + 1)])  # (L + 1, V)
    assert probs.dtype == np.float64 and probs.shape == (len(text) + 1, lm.vocab_size)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-12)
    targets = [*lm.encode(text), EOS]
    chain = sum(np.log(probs[k, t]) for k, t in enumerate(targets))
    assert lm.log_prob(text) == pytest.approx(chain, abs=1e-4)


def test_long_sentences_are_scored_through_windows(models):
    """A sentence past max_len: log p = Σ_t log next_probs(prefix)[z_t], the same window rule."""
    lm = models["dense"]
    text = ("全国人民代表大会常务委员会的工作报告" * 4)[:70]  # 71 targets > max_len = 24
    probs = lm.next_probs([text[:k] for k in range(len(text) + 1)])
    targets = [*lm.encode(text), EOS]
    chain = sum(np.log(probs[k, t]) for k, t in enumerate(targets))
    assert lm.log_prob(text) == pytest.approx(chain, abs=1e-3)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_batch_invariance_and_prefix_cache(models, corpus, name):
    lm = models[name]
    texts = [t for t in corpus[1] if len(t) < 23][:8]
    edits = [t[:3] + "的" + t[4:] for t in texts] + [t[:2] for t in texts] \
        + [t + "了" for t in texts]
    lm.cache_size = 0
    lm.clear_cache()
    alone = np.array([lm.log_prob(t) for t in edits])
    batched = lm.log_prob(edits[::-1])[::-1]
    np.testing.assert_allclose(batched, alone, atol=1e-5, rtol=0)
    lm.cache_size = 64
    lm.clear_cache()
    lm.log_prob(texts)  # the states; the edits then reuse their prefixes
    if name != "gru":
        hits = [lm._cache.longest(e)[0] for e in edits]
        assert min(hits) >= 2  # the cache serves the shared prefixes
    cached = lm.log_prob(edits + texts[:2])
    np.testing.assert_allclose(cached[:len(edits)], alone, atol=1e-5, rtol=0)
    assert lm.log_prob(texts[0]) == pytest.approx(cached[-2], abs=1e-5)  # a full hit


def test_cache_is_bounded(models):
    lm = models["dense"]
    lm.cache_size = 3
    lm.clear_cache()
    lm.log_prob(["中国", "中国人", "人民", "日报", "北京"])
    assert list(lm._cache.entries) == ["人民", "日报", "北京"]
    assert lm._cache.longest("中国人民") == (0, None)  # the evicted prefixes left the index
    assert lm._cache.longest("北京市")[0] == 2


def test_training_learns(corpus, models):
    train, held = corpus
    untrained = train_neural(train, CONFIGS["dense"], steps=1, lr=1e-9)
    assert models["dense"].nll_per_char(held) < untrained.nll_per_char(held) - 0.4


def test_vocabulary_and_unknown_characters_follow_ngram_lm(corpus, models):
    train, _ = corpus
    lm = models["dense"]
    assert lm.chars == list(NgramLM.train(train, order=1).chars)
    assert train_neural(train, CONFIGS["dense"], steps=1, max_vocab=50).chars == \
        list(NgramLM.train(train, order=1, max_vocab=50).chars)
    assert lm.encode("中𠀀")[1] == UNK
    assert lm.unknown("中𠀀国𠀁𠀀") == ["𠀀", "𠀁"]
    assert lm.log_prob("中𠀀国") == pytest.approx(lm.log_prob("中𠀁国"), abs=1e-6)


def test_exact_resume(corpus, tmp_path):
    train, _ = corpus
    cfg = NeuralConfig(**{**TINY, "dropout": 0.1})
    straight = train_neural(train, cfg, steps=16, batch_size=8)
    ckpt = tmp_path / "run.ckpt"
    train_neural(train, cfg, steps=8, schedule_steps=16, batch_size=8, checkpoint=ckpt)
    resumed = train_neural(train, cfg, steps=16, batch_size=8, checkpoint=ckpt)
    for (name, a), b in zip(straight.module.state_dict().items(),
                            resumed.module.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="dim"):
        train_neural(train, NeuralConfig(**{**TINY, "dropout": 0.1, "dim": 8}), steps=16,
                     batch_size=8, checkpoint=ckpt)
    with pytest.raises(ValueError, match="training sentences"):
        train_neural(train[:-1], cfg, steps=16, batch_size=8, checkpoint=ckpt)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.ckpt"):
        train_neural(train, cfg, steps=2, checkpoint=tmp_path / "junk.ckpt")


def test_minutes_cap_and_evaluations(corpus, tmp_path):
    train, held = corpus
    seen = []
    lm = train_neural(train, CONFIGS["dense"], steps=10_000, minutes=0.002, batch_size=8,
                      valid=held[:5], eval_at_minutes=[0.0], on_eval=seen.append,
                      checkpoint=tmp_path / "c.ckpt")
    assert (tmp_path / "c.ckpt").is_file() and isinstance(lm, NeuralLM)
    assert len(seen) == 1 and set(seen[0]) == {"step", "minutes", "train_nll",
                                               "valid_nll_per_char"}
    assert seen[0]["valid_nll_per_char"] == pytest.approx(lm.nll_per_char(held[:5]), abs=1.0)


def test_save_load_roundtrip_and_bad_files(models, tmp_path):
    lm = models["local"]
    path = tmp_path / "m.pt"
    lm.save(path)
    back = NeuralLM.load(path)
    assert back.config == lm.config and back.chars == lm.chars
    assert back.log_prob("人民日报") == pytest.approx(lm.log_prob("人民日报"), abs=1e-6)
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="bad.pt"):
        NeuralLM.load(tmp_path / "bad.pt")
    torch.save({"what": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a kexue neural"):
        NeuralLM.load(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        NeuralLM.load(tmp_path / "absent.pt")


_WRITER = """
import os, sys, time, torch
torch.set_num_threads(1)
from kexue.text.neural import NeuralConfig, NeuralLM
lm = NeuralLM([chr(0x4e00 + i) for i in range(500)], NeuralConfig(dim=8, layers=1, heads=1))
def fsync(fd):  # the bytes are written, the file is not yet in place: hold here
    print("mid-save", flush=True)
    time.sleep(60)
os.fsync = fsync
lm.save(sys.argv[1])
"""


def test_kill_during_save_leaves_the_previous_file(models, tmp_path):
    """kill -9 while the new model is being written: the previous file still loads, unchanged."""
    path = tmp_path / "m.pt"
    models["dense"].save(path)
    before = path.read_bytes()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_WRITER), str(path)],
                            stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline().strip() == b"mid-save"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert path.read_bytes() == before
    assert NeuralLM.load(path).config == models["dense"].config
    assert len(list(tmp_path.iterdir())) == 2  # the file and the dead writer's temporary


@pytest.mark.parametrize(("field", "value"), [
    ("kind", "lstm"), ("attention", "global"), ("dim", 0), ("dim", 2.5), ("layers", 0),
    ("heads", 0), ("heads", 3), ("mlp_ratio", -1.0), ("mlp_ratio", float("nan")),
    ("dropout", 1.0), ("dropout", -0.1), ("window", 0), ("max_len", 1), ("dim", True),
])
def test_bad_config_is_named(field, value):
    with pytest.raises(ValueError, match=field):
        NeuralConfig(**{field: value})


@pytest.mark.parametrize(("arg", "value"), [
    ("steps", 0), ("minutes", 0.0), ("minutes", float("inf")), ("batch_size", 0), ("lr", 0.0),
    ("lr", float("nan")), ("max_vocab", 0), ("seed", -1), ("checkpoint_every", 0),
    ("schedule_steps", 0), ("eval_at_minutes", [-1.0]), ("config", "transformer"),
    ("on_step", 3),
])
def test_bad_training_arguments_are_named(corpus, arg, value):
    with pytest.raises(ValueError, match=arg):
        train_neural(corpus[0][:20], **{arg: value})


def test_bad_scoring_arguments(models):
    lm = models["dense"]
    with pytest.raises(ValueError, match="texts"):
        lm.log_prob([1, 2])
    with pytest.raises(ValueError, match="contexts"):
        lm.next_probs("中国")
    with pytest.raises(ValueError, match="texts"):
        lm.nll_per_char([])
    with pytest.raises(ValueError, match="sentences"):
        train_neural(["", ""], steps=1)
    with pytest.raises(ValueError, match="eval_at_minutes"):
        train_neural(["中国"], steps=1, eval_at_minutes=[1.0])


def test_default_model_is_never_trained_on_demand(monkeypatch, tmp_path, models):
    monkeypatch.setenv("KEXUE_CACHE", str(tmp_path))
    assert default_neural_lm_path() == tmp_path / "neural-lm-pd1998.pt"
    with pytest.raises(FileNotFoundError, match="kexue lm train --neural"):
        default_neural_lm()
    models["gru"].save(default_neural_lm_path())
    assert default_neural_lm().config == models["gru"].config


def test_fluency_term_in_constrained_generation(models):
    from kexue.text.constrained import keywords_to_sentence
    from kexue.text.lm import BiLM

    kn = BiLM.train(split_sentences(pd1998_split("train")[:300]), order=3)
    lm = models["dense"]
    out = keywords_to_sentence(["中国"], 5, lm=kn, method="mh", chains=3, fluency_lm=lm,
                               seed=0)
    for g in out:
        assert "中国" in g.text
        assert g.terms["fluency"] == pytest.approx(lm.log_prob(g.text), abs=1e-5)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_token_log_probs_are_the_next_probs_of_each_prefix(models, name):
    lm = models[name]
    texts = ["中国人民", "经济", ("全国人民代表大会" * 4)[:30]]  # the last one past max_len
    per = lm.token_log_probs(texts)
    for text, logp in zip(texts, per, strict=True):
        probs = lm.next_probs([text[:k] for k in range(len(text) + 1)])  # (L + 1, V)
        want = np.log(probs[np.arange(len(text) + 1), [*lm.encode(text), EOS]])
        assert logp.shape == (len(text) + 1,)
        np.testing.assert_allclose(logp, want, atol=1e-4, rtol=0)


def test_mixture_of_neural_and_ngram_is_the_per_character_interpolation(models, corpus):
    """log p_mix(z_t | z_<t) = log(w·p_nn + (1 − w)·p_kn) from each model's next_probs (an
    independent path); the mixture's next-character distribution sums to 1."""
    from kexue.text.lm import MixtureLM

    train, held = corpus
    nn_, kn = models["dense"], NgramLM.train(train, order=3)
    mix = MixtureLM([nn_, kn], [0.3, 0.7])
    text = "中国人民"
    contexts = [text[:k] for k in range(len(text) + 1)]
    p_nn = nn_.next_probs(contexts)  # (L + 1, V)
    p_kn = kn.next_probs([np.concatenate([[BOS] * 2, kn.encode(c)])[-2:] for c in contexts])
    p_kn[:, BOS] = 0.0  # KN's recursion leaves mass on <s>, an id it never predicts
    p_mix = 0.3 * p_nn + 0.7 * p_kn
    np.testing.assert_allclose(p_mix.sum(1), 1.0, atol=1e-9)
    want = np.log(p_mix[np.arange(len(text) + 1), [*kn.encode(text), EOS]])
    np.testing.assert_allclose(mix.token_log_probs([text])[0], want, atol=1e-4, rtol=0)
    assert mix.log_prob(text) == pytest.approx(want.sum(), abs=1e-4)
    np.testing.assert_allclose(mix.log_prob(held[:5]),
                               [mix.log_prob(t) for t in held[:5]], atol=1e-5)
    with pytest.raises(ValueError, match="weights must be 2 numbers"):
        MixtureLM([nn_, kn], [0.5, 0.6])
    with pytest.raises(ValueError, match="another vocabulary"):
        MixtureLM([nn_, NgramLM.train(train[:5], order=2)])
    with pytest.raises(ValueError, match="forward model"):
        MixtureLM([nn_, NgramLM.train(train, order=2, reverse=True)])
    with pytest.raises(ValueError, match="at least two"):
        MixtureLM([nn_])
