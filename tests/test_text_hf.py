"""HuggingFace adapters on tiny randomly initialised models that the tests build and save:
batched scores equal one-text scores (padding and masks are right), the causal score is the
chain rule computed token by token, masked-LM conditionals are normalised softmaxes; the causal
scorer as the fluency term of batched chains (one call per step), and on CUDA against the
float64 chain rule on the CPU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from kexue.text.constrained import (  # noqa: E402
    TextTarget,
    TokenSpace,
    generate,
    hard_keywords,
)
from kexue.text.hf import CausalLMScorer, MaskedLMConditional  # noqa: E402
from kexue.text.lm import BiLM, NgramLM  # noqa: E402
from kexue.text.sampling import State, gibbs  # noqa: E402

CHARS = list("经济发展人民生活提高北京")
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _tokenizer(tmp_path):
    """A character-level BERT tokenizer over CHARS (as Chinese BERT tokenises Han text)."""
    vocab = {w: i for i, w in enumerate(SPECIALS + CHARS)}
    return transformers.BertTokenizer(vocab=vocab, do_lower_case=False)


@pytest.fixture(scope="module")
def causal_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt")
    tok = _tokenizer(path)
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2,
                                     n_head=2, bos_token_id=tok.cls_token_id,
                                     eos_token_id=tok.sep_token_id)
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def masked_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("bert")
    tok = _tokenizer(path)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=64)
    transformers.BertForMaskedLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_causal_score_is_the_chain_rule_and_batch_invariant(causal_dir):
    scorer = CausalLMScorer(causal_dir, batch_size=3)
    texts = ["经济发展", "人民", "北京人民生活提高", "高"]
    batched = scorer(texts)
    model, tok = scorer.model, scorer.tokenizer
    for text, score in zip(texts, batched, strict=True):
        ids = [tok.cls_token_id] + tok.convert_tokens_to_ids(list(text)) + [tok.sep_token_id]
        expected = 0.0
        for t in range(1, len(ids)):  # one prefix at a time, no padding involved
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids[:t]])).logits[0, -1].double()
            expected += float(torch.log_softmax(logits, -1)[ids[t]])
        assert math.isclose(score, expected, rel_tol=1e-5, abs_tol=1e-5)
    singles = np.array([scorer([t])[0] for t in texts])
    np.testing.assert_allclose(batched, singles, rtol=1e-5, atol=1e-5)


def chain_rule(model, tok, text: str) -> float:
    """log p(text) one prefix at a time in float64 on the CPU: no batch, no padding."""
    model = model.double().cpu().eval()
    ids = [tok.cls_token_id] + tok.convert_tokens_to_ids(list(text)) + [tok.sep_token_id]
    total = 0.0
    for t in range(1, len(ids)):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids[:t]])).logits[0, -1].double()
        total += float(torch.log_softmax(logits, -1)[ids[t]])
    return total


def test_repeated_texts_are_scored_once(causal_dir):
    scorer = CausalLMScorer(causal_dir, batch_size=8)
    rows = []
    hook = scorer.model.register_forward_hook(lambda m, args, kwargs_out: rows.append(
        kwargs_out.logits.shape[0]))
    got = scorer(["经济", "发展人民", "经济", "经济"])
    hook.remove()
    assert rows == [2]  # one forward pass over the two distinct texts
    assert got[0] == got[2] == got[3]
    np.testing.assert_allclose(got, scorer(["经济"]).tolist() + scorer(["发展人民"]).tolist()
                               + [got[0]] * 2, rtol=1e-5)


def _chains_on(scorer: CausalLMScorer, chains: int, steps: int):
    """Batched MH over the tokenizer's characters with the causal LM as the fluency term,
    a locked keyword; the target counts its calls and their sizes."""
    lm = BiLM.train(["".join(CHARS), "经济发展", "人民生活提高"], order=2)
    space = TokenSpace(lm.forward, ["经济"])
    calls: list[int] = []

    def fluency(texts):
        calls.append(len(texts))
        return scorer(texts)

    target = TextTarget(space, {"fluency": fluency, "keywords": hard_keywords(["经济"])})
    x0 = State((space.phrase_ids["经济"],), (1,))
    runs = generate(target, x0, steps, lm=lm, method="mh", chains=chains, seed=0, max_len=5)
    return runs, calls


def test_causal_scorer_drives_batched_chains(causal_dir):
    """One fluency call per step for all chains (the first scores the start states, the last
    two the outputs and their breakdown), and the chains' log π of their final states is each
    text's own score."""
    scorer = CausalLMScorer(causal_dir, batch_size=16)
    runs, calls = _chains_on(scorer, 4, 12)
    assert calls[0] == 4 and calls[-2:] == [4, 4] and len(calls) <= 1 + 12 + 2
    assert max(calls[1:-2]) > 1 and max(calls) <= 4
    for g, final in zip(runs, runs.chains.log_probs[:, -1], strict=True):
        assert "经济" in g.text
        assert math.isclose(final, scorer([g.text])[0], rel_tol=1e-5, abs_tol=1e-5)


@pytest.mark.gpu
def test_causal_scorer_on_cuda_matches_the_float64_cpu_chain_rule(causal_dir):
    """The scorer on CUDA (float32, padded batches) against the float64 chain rule on the CPU,
    then as the fluency term of batched chains."""
    scorer = CausalLMScorer(causal_dir, batch_size=3, device="cuda")
    reference = transformers.GPT2LMHeadModel.from_pretrained(causal_dir, local_files_only=True)
    texts = ["经济发展", "人民", "北京人民生活提高", "高", "经济发展", ""]
    expected = [chain_rule(reference, scorer.tokenizer, t) for t in texts]
    np.testing.assert_allclose(scorer(texts), expected, rtol=1e-4, atol=1e-4)
    runs, _ = _chains_on(scorer, 4, 6)
    finals = [chain_rule(reference, scorer.tokenizer, g.text) for g in runs]
    np.testing.assert_allclose(runs.chains.log_probs[:, -1], finals, rtol=1e-4, atol=1e-4)


def test_masked_conditionals_are_normalised_softmaxes(masked_dir):
    mlm = MaskedLMConditional(masked_dir)
    text = "经济发展"
    chars = ["人", "民", "生", "活", "雪"]  # "雪" is not in the vocabulary
    logq = mlm.log_probs_at(text, 1, chars)
    assert logq[-1] == -np.inf
    assert math.isclose(np.logaddexp.reduce(logq[:-1]), 0.0, abs_tol=1e-9)
    tok = mlm.tokenizer
    ids = [tok.cls_token_id, *tok.convert_tokens_to_ids(list(text)), tok.sep_token_id]
    ids[2] = tok.mask_token_id
    with torch.no_grad():
        logits = mlm.model(input_ids=torch.tensor([ids])).logits[0, 2].double()
    sub = logits[tok.convert_tokens_to_ids(chars[:-1])]
    np.testing.assert_allclose(logq[:-1], torch.log_softmax(sub, -1).numpy(), atol=1e-5)
    pll = mlm.pseudo_log_likelihood([text, "人民"])
    assert pll.shape == (2,) and np.all(pll < 0)


def test_masked_lm_drives_gibbs(masked_dir):
    lm = NgramLM.train(["".join(CHARS)], order=2)
    space = TokenSpace(lm)
    mlm = MaskedLMConditional(masked_dir)
    cands = [int(i) for i in lm.encode("活生民人")]  # deliberately not in id order
    conditional = mlm.conditional(space, cands)
    state = State(space.encode("经济发展"))
    direct = mlm.log_probs_at("经济发展", 2, list("活生民人"))
    np.testing.assert_allclose(conditional(state, 2), direct)  # scores follow `cands`' order
    target = type("T", (), {"log_prob": staticmethod(lambda b: np.zeros(len(b)))})()
    result = gibbs(target, state, 2, cands, seed=0, conditional=conditional)
    assert set(space.decode(result.state.tokens)) <= set("人民生活")


def test_bad_paths_are_named(tmp_path, causal_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CausalLMScorer(tmp_path / "nothing")
    with pytest.raises(ValueError, match="masked LM"):
        MaskedLMConditional(causal_dir)
