"""Every public callable refuses a bad number with a ValueError that names the argument.

One table holds, for each public callable with an int- or float-annotated parameter, a call that
is valid and, per parameter, the values that must be refused: ``True`` (a bool is never a
number), NaN, ``2.5`` for an int, and the out-of-range values of the documented range (``inf``
and negatives only where the docstring forbids them). ``test_table_is_complete`` enumerates the
public callables of :data:`MODULES` with ``inspect.signature`` and fails when a parameter
annotated ``int``/``float`` (``int | None``, ``Tensor | float``, ...) has no row and no
commented exemption.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import re
import types
import typing
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import kexue.attention as A
import kexue.dynamics as D
import kexue.estimators as E
import kexue.text as X
import kexue.train as T
from kexue.attention import masks as M
from kexue.generative import base as GB
from kexue.generative import common as GC
from kexue.generative import data as GD
from kexue.generative import gan as GG
from kexue.generative import glann as GL
from kexue.generative import metrics as GM
from kexue.generative import nvae as GV
from kexue.text.sampling import uniform_tokens
from kexue.train.data import shard_indices

# The packages whose public face the completeness test scans (their ``__all__``).
MODULES = (
    "kexue.train",
    "kexue.estimators",
    "kexue.dynamics",
    "kexue.attention",
    "kexue.attention.masks",
    "kexue.text",
    "kexue.generative",
    "kexue.generative.base",
    "kexue.generative.common",
    "kexue.generative.data",
    "kexue.generative.metrics",
    "kexue.generative.gan",
    "kexue.generative.glann",
    "kexue.generative.nvae",
    # the integrations, when their framework is installed (the test extra installs them)
    *(name for name, needs in (("kexue.integrations.lightning", "lightning"),
                               ("kexue.integrations.hf", "transformers"))
      if importlib.util.find_spec(needs) is not None),
)

# Parameters with no row, each with the reason. Records that the library fills in and hands back
# (their fields are results, not arguments a user chooses) are exempt as a whole ("*").
EXEMPT: dict[tuple[str, str], str] = {
    ("kexue.text.ReadSummary", "*"): "record of what a Corpus pass read; filled by the reader",
    ("kexue.text.WordScores", "*"): "NamedTuple of one discovered word's statistics (results)",
    ("kexue.text.MCMCChains", "*"): "record of a batch of chains that the samplers return",
    ("kexue.train.RegularizedStep", "*"): "record that regularized_backward returns",
    ("kexue.train.GradientPenalty", "*"): "deprecated name of RegularizedStep",
    ("kexue.generative.base.check_state", "seed"): "compared with the state's seed, which "
    "names both in its error; never used as a number",
}

NAN, INF = math.nan, math.inf
INT = (True, 2.5, NAN, "3")  # refused by every int parameter
REAL = (True, NAN, "1.0")  # refused by every float parameter
SEED = (True, 2.5, -1)  # numpy seeds: ints >= 0 (or a Generator, or None)


@dataclass
class Case:
    fn: Callable[..., Any]
    arg: str
    bad: tuple
    valid: dict[str, Any]
    run_valid: bool = True  # False where the valid call is slow (trains a model)


CASES: list[Case] = []


def rows(fn: Callable[..., Any], valid: dict[str, Any], run_valid: bool = True,
         **bad: tuple) -> None:
    """One row per ``arg=bad_values`` of ``fn``, all sharing the valid call ``fn(**valid)``."""
    for arg, values in bad.items():
        CASES.append(Case(fn, arg, values, valid, run_valid))


def pos(values: tuple = ()) -> tuple:  # a finite number > 0
    return (*REAL, 0.0, -1.0, INF, *values)


def nonneg(values: tuple = ()) -> tuple:  # a finite number >= 0
    return (*REAL, -1.0, INF, *values)


def count(low: int, values: tuple = ()) -> tuple:  # an int >= low
    return (*INT, low - 1, *values)


def finite() -> tuple:  # any finite number
    return (*REAL, INF, -INF)


# -- shared fixtures (tiny, built once) ---------------------------------------------------------

_gen = torch.Generator().manual_seed(0)
LIN = nn.Linear(2, 2)
OPT = torch.optim.SGD(LIN.parameters(), lr=0.1)
P = nn.Parameter(torch.zeros(3))
LOGITS = torch.zeros(2, 3)
QKV = {k: torch.randn(1, 2, 8, 4, generator=_gen) for k in ("q", "k", "v")}
THETA = torch.tensor([1.0, -1.0], dtype=torch.float64)


def quad(theta: torch.Tensor) -> torch.Tensor:
    return 0.5 * (theta**2).sum()


# -- kexue.train ---------------------------------------------------------------------------------

rows(T.EMA, {"model": LIN}, decay=(*REAL, 0.0, 1.0, -0.5, INF), update_every=count(1))
rows(T.ShardedIterable, {"source": [0, 1, 2, 3]}, seed=count(0, (2**64,)), threads=count(0),
     prefetch=count(1))
rows(T.ShardedIterable, {"source": [0, 1, 2, 3], "rank": 0, "world_size": 2},
     rank=count(0, (2,)), world_size=count(1))
rows(shard_indices, {"n": 5, "shard": 0, "num_shards": 2}, n=count(0), shard=count(0, (2,)),
     num_shards=count(1))
rows(T.accumulate, {"every": 2}, every=count(1))
rows(T.adaptive_clip, {}, clipping=pos(), eps=pos())
rows(T.add_noise, {}, eta=nonneg(), gamma=nonneg())
rows(T.clip_by_global_norm, {"max_norm": 1.0}, max_norm=pos(), eps=nonneg())
rows(T.clip_by_norm, {"max_norm": 1.0}, max_norm=pos(), eps=nonneg())
rows(T.clip_by_value, {"limit": 1.0}, limit=pos())
rows(T.ema_warmup, {"decay": 0.9}, decay=(*REAL, 0.0, 1.0, INF), power=pos(), gamma=pos())
rows(T.param_groups, {"model": LIN, "lr": 0.1}, lr=pos(), weight_decay=nonneg(),
     layer_decay=(*REAL, 0.0, 1.5, INF))
rows(T.scale, {"factor": 0.5}, factor=finite())
rows(T.capture, {"model": LIN, "patterns": ""}, max_map_elements=count(1))
rows(T.attention_top_k, {"k": 2}, k=count(1))


def _integration_rows() -> None:
    """Rows for kexue.integrations, where the framework is installed."""
    if importlib.util.find_spec("lightning") is not None:
        from kexue.integrations import lightning as IL

        rows(IL.EMACallback, {}, decay=(*REAL, 0.0, 1.0, INF), update_every=count(1))
    if importlib.util.find_spec("transformers") is not None:
        from kexue.integrations import hf as IH

        rows(IH.EMACallback, {}, decay=(*REAL, 0.0, 1.0, INF), update_every=count(1))
        rows(IH.trainer_optimizers, {"model": LIN, "lr": 0.1}, lr=pos(),
             weight_decay=nonneg(), layer_decay=(*REAL, 0.0, 1.5, INF))


_integration_rows()

# -- kexue.estimators ----------------------------------------------------------------------------

rows(E.LearnedBaseline, {"in_features": 3}, in_features=count(1), hidden=count(1))
rows(E.MovingAverageBaseline, {}, momentum=(*REAL, 1.0, -0.1, INF))
rows(E.PolicyGradient, {}, samples=count(2))
rows(E.SeedZO, {"params": [P]}, lr=nonneg(), eps=pos(), weight_decay=nonneg(),
     num_directions=count(1), seed=(*INT, 2**64), warn_unchanged=nonneg())
rows(E.ZerothOrder, {}, sigma=pos(), directions=count(1))
rows(E.binary_f1, {"y_true": torch.tensor([0, 1]), "y_pred": torch.tensor([1, 1])},
     positive=INT)
rows(E.macro_f1, {"y_true": torch.tensor([0, 1]), "y_pred": torch.tensor([1, 1]),
                  "num_classes": 2}, num_classes=count(1))
rows(E.gaussian_rsample, {"mean": torch.zeros(2), "std": 1.0}, std=pos(),
     sample_shape=(True, 2.5, -1, (2, -1), (1.5,)))
rows(E.gumbel_noise, {"shape": (2,)}, shape=(True, 2.5, -1, (2, -1), (1.5,)))
rows(E.gumbel_max, {"logits": LOGITS}, dim=(*INT, 2, -3))
rows(E.gumbel_softmax, {"logits": LOGITS, "tau": 1.0}, tau=pos(), dim=(*INT, 2, -3))
rows(E.leave_one_out, {"rewards": torch.arange(4.0)}, dim=(*INT, 1, -2))
rows(E.maximize, {"metric_fn": lambda y, p: 0.0, "model": LIN, "data": [],
                  "estimator": E.ZerothOrder(), "optimizer": OPT, "steps": None},
     run_valid=False, epochs=count(1), steps=count(1))
rows(E.score_function_surrogate, {"log_prob": torch.zeros(2), "cost": torch.ones(2),
                                  "baseline": 0.5}, baseline=finite())
rows(E.zo_backward, {"closure": lambda: quad(P.detach()), "params": [P], "eps": 1e-3},
     eps=pos(), num_directions=count(1), warn_unchanged=nonneg())
rows(E.zo_gradient, {"f": lambda: quad(P.detach()), "params": [P], "sigma": 0.1,
                     "num_samples": 2}, sigma=pos(), num_samples=count(1),
     baseline=(True, NAN, INF))

# -- kexue.dynamics ------------------------------------------------------------------------------

rows(D.PathKernelRecorder, {"model": LIN, "optimizer": OPT}, rtol=nonneg())
rows(D.modified_loss, {"loss": quad, "h": 0.1}, h=pos())
rows(D.gd_iterates, {"loss": quad, "theta0": THETA, "h": 0.1, "steps": 2}, h=pos(),
     steps=count(0))
rows(D.flow_error, {"iterates": THETA[None], "loss": quad, "h": 0.1}, h=pos())
rows(D.gradient_flow, {"loss": quad, "theta0": THETA, "times": [0.0, 0.1]}, rtol=pos(),
     atol=nonneg())

# -- kexue.attention -----------------------------------------------------------------------------

rows(A.Affine, {"dim": 4}, dim=count(1), init=finite())
rows(A.Block, {"dim": 4, "mixer": nn.Identity()}, dim=count(1), mlp_ratio=nonneg(),
     dropout=(*REAL, 1.0, -0.1, INF))
for _cls in (A.DenseAttention, A.MultiHeadAttention):
    _valid = {"dim": 4, "heads": 2} | ({"attend": A.dense_attention}
                                       if _cls is A.MultiHeadAttention else {})
    rows(_cls, _valid, dim=count(1), heads=count(1, (3,)))
rows(A.check_heads, {"dim": 4, "heads": 2}, dim=count(1), heads=count(1, (3,)))
rows(A.check_padding_mask, {"mask": None, "batch": 2, "length": 3}, batch=count(0),
     length=count(0))
rows(A.ExternalAttention, {"dim": 4}, dim=count(1), memory=count(1), eps=pos())
rows(A.GatingUnit, {"dim": 4, "seq_len": 3}, dim=count(1), seq_len=count(1),
     expansion=pos(), attention_dim=count(1), init_scale=pos())
rows(A.MLPMixerToken, {"dim": 4, "seq_len": 3}, dim=count(1), seq_len=count(1),
     expansion=pos())
rows(A.ResMLPToken, {"dim": 4, "seq_len": 3}, dim=count(1), seq_len=count(1),
     layerscale=finite())
rows(A.SynthesizerDense, {"dim": 4, "seq_len": 3, "heads": 2}, dim=count(1),
     seq_len=count(1), heads=count(1))
rows(A.SynthesizerRandom, {"seq_len": 3, "heads": 2, "dim": 4}, seq_len=count(1),
     heads=count(1), dim=count(1))
rows(A.build_mixer, {"name": "fnet", "dim": 4, "seq_len": 3, "heads": 2}, dim=count(1),
     seq_len=count(1), heads=count(1))
rows(A.block_mask, {"mask": M.causal(), "length": 8}, length=count(1), batch=count(1),
     heads=count(1))
rows(A.dense_attention, dict(QKV), scale=pos())
rows(A.sdpa_attention, dict(QKV), scale=pos())
rows(A.flex_sparse_attention, dict(QKV, mask=M.causal(), compiled=False), run_valid=False,
     scale=pos())
rows(M.dense_mask, {"mask_fn": M.causal(), "B": 1, "H": 1, "T": 4}, B=count(1), H=count(1),
     T=count(1))
rows(M.local, {"window": 3}, window=count(1))
rows(M.dilated, {"rate": 2}, rate=count(1))
rows(M.strided, {"stride": 2}, stride=count(1))
rows(M.fixed, {"stride": 2, "c": 1}, stride=count(1), c=count(1))

# -- kexue.text ----------------------------------------------------------------------------------

_SENTENCES = ["经济发展很快", "经济发展", "发展经济", "社会经济发展"]
_LM = X.BiLM.train(_SENTENCES, order=2)
_TABLE = X.count_ngrams("经济发展经济", 2)


class _Target:
    """π uniform over the sequences of length 1..2 of ids {0, 1}."""

    def log_prob(self, batch):
        return np.array([0.0 if 1 <= len(x) <= 2 else -np.inf for x in batch])


_PROPOSAL = X.EditProposal(uniform_tokens([0, 1], 2), max_len=2)
_X0 = X.State((0,))
_CHAIN = {"target": _Target(), "proposal": _PROPOSAL, "x0": _X0, "steps": 2}


def _sample(rng: np.random.Generator) -> tuple[int, ...]:
    return (int(rng.integers(2)),)


def _log_q(batch) -> np.ndarray:
    return np.full(len(batch), math.log(0.5))


rows(X.EditProposal, {"tokens": uniform_tokens([0, 1], 2)}, min_len=count(0),
     max_len=count(1, (0,)))
rows(X.NgramCounter, {"max_n": 2}, max_n=count(1))
rows(X.NgramLM, {"order": 2, "chars": _LM.forward.chars, "orders": _LM.forward._orders},
     order=count(1))
rows(X.NgramTable, {"levels": _TABLE._levels, "total_chars": 6, "min_count": 1},
     total_chars=count(0), min_count=count(1))
rows(X.Vocabulary, {"scores": [], "char_counts": {}, "total_chars": 0}, total_chars=count(0))
rows(X.chunks, {"documents": ["a"], "chunk_chars": 4}, chunk_chars=count(1))
rows(X.count_ngrams, {"texts": "经济发展", "max_n": 2}, max_n=count(1), min_count=count(1),
     processes=count(1), chunk_chars=count(1, (2**24 + 1,)))
rows(X.default_lm, {}, run_valid=False, order=count(1))  # the valid call trains a model
rows(X.discover, {"texts": "经济发展经济发展", "max_len": 2, "min_count": 1},
     max_len=count(2), min_count=count(1), min_pmi=REAL, pmi_per_char=(*REAL, -1.0),
     min_entropy=REAL, processes=count(1), chunk_chars=count(1))
rows(X.is_han_word, {"word": "经济"}, min_len=INT)
rows(X.keywords_to_sentence, {"keywords": ["经济"], "steps": 1, "lm": _LM, "seed": 0},
     steps=count(0), repetition=finite(), seed=SEED, chains=count(1))
rows(X.keywords_to_sentence, {"keywords": ["经济"], "steps": 1, "lm": _LM, "seed": 0,
                              "method": "mh", "chains": 2},
     stop_rhat=(*REAL, 1.0, 0.5, INF), check_every=count(1))
rows(X.paraphrase, {"source": "经济发展", "steps": 1, "lm": _LM, "seed": 0},
     steps=count(0), closeness=finite(), seed=SEED, chains=count(1))
rows(X.correct, {"source": "经济发展", "steps": 1, "lm": _LM, "seed": 0},
     steps=count(0), closeness=finite(), seed=SEED, chains=count(1))
rows(X.compress, {"source": "经济发展", "steps": 1, "lm": _LM, "seed": 0},
     run_valid=False,  # the valid call loads jieba's dictionary (~1 s)
     ratio=(*REAL, 0.0, 1.5, INF), steps=count(0), closeness=finite(), seed=SEED,
     chains=count(1))
_NCFG = X.NeuralConfig(dim=8, layers=1, heads=1, max_len=8)
rows(X.NeuralConfig, {"dim": 8, "layers": 1, "heads": 1},
     dim=count(1, (4097,)), layers=count(1, (65,)), heads=count(1, (3,)),
     mlp_ratio=(*REAL, -1.0, INF), dropout=(*REAL, -0.1, 1.0, INF),
     window=count(1), max_len=count(2, (65537,)))
rows(X.NeuralLM, {"chars": ["经", "济"], "config": _NCFG}, cache_size=count(0))
rows(X.train_neural, {"sentences": ["经济发展"], "config": _NCFG, "steps": 1},
     steps=count(1), minutes=pos(), batch_size=count(1), lr=(*pos(), 2.0),
     max_vocab=count(1), seed=count(0), checkpoint_every=count(1), schedule_steps=count(1))
rows(X.keyword_boundaries, {"keywords": ["经济"]}, cache=count(0))
rows(X.WordLM, {"unigrams": Counter({"a": 1, "</s>": 1}),
                "bigrams": Counter({("<s>", "a"): 1}),
                "chars": Counter("a"), "max_word": 2},
     max_word=count(1))
rows(X.heldout_keyword_sets, {"n": 1}, run_valid=False,  # the valid call reads pd1998 (~1 s)
     n=count(1), seed=count(0))
rows(X.AutonomySegmenter, {"levels": [], "train_units": 1}, train_units=count(0),
     piece_cost=(*REAL, -1.0, INF), length_exponent=(*REAL, -1.0, INF))
rows(X.plan_shards, {"paths": [__file__]}, run_valid=False,  # a .py file is no corpus input
     shard_bytes=count(1))
rows(X.metropolis_hastings, _CHAIN, steps=count(0), seed=SEED, thin=count(0),
     top_k=count(1))
rows(X.simulated_annealing, dict(_CHAIN, schedule=lambda t: 1.0), steps=count(0), seed=SEED)
rows(X.gibbs, {"target": _Target(), "x0": _X0, "sweeps": 1, "candidates": [0, 1]},
     sweeps=count(0), seed=SEED, thin=count(0))
rows(X.importance_sampling, {"target": _Target(), "sample": _sample, "log_q": _log_q,
                             "n": 4}, n=count(1), seed=SEED)
rows(X.rejection_sampling, {"target": _Target(), "sample": _sample, "log_q": _log_q,
                            "log_bound": math.log(2.0) + 1e-6, "n": 2},
     log_bound=finite(), n=count(1), seed=SEED, max_proposals=count(1), batch=count(1))

# -- kexue.generative ----------------------------------------------------------------------------

_g = torch.Generator().manual_seed(1)
_DATA = GD.ImageData("tiny", torch.rand(8, 1, 8, 8, generator=_g), torch.arange(8) % 2,
                     torch.rand(6, 1, 8, 8, generator=_g), torch.arange(6) % 2)
_TINY_G = {"image_shape": (1, 8, 8), "z_dim": 4, "width": 4}
_SEED = (*INT, -1, 2**64)  # a trainer's seed: an int in [0, 2⁶⁴)
_UNIT = (*REAL, -0.1, 1.5, INF)  # a fraction in [0, 1]

rows(GB.image_grid, {"images": torch.zeros(3, 1, 2, 2)}, nrow=count(1), pad=count(0))
rows(GC.power_iteration, {"matrix": torch.eye(2), "u": torch.tensor([1.0, 0.0])},
     iterations=count(1), eps=pos())
for _fn in (GC.reestimate_batchnorm, GC.recalibrated_batchnorm):
    rows(_fn, {"module": nn.Identity(), "forward": lambda: None, "steps": 1}, steps=count(1))
rows(GD.load_images, {"name": "digits"}, run_valid=False,  # imports sklearn (~0.7 s)
     seed=count(0))
rows(GM.FeatureClassifier, {"image_shape": (1, 8, 8), "num_classes": 2}, num_classes=count(1))
rows(GM.fit_classifier, {"data": _DATA, "epochs": 1}, run_valid=False,  # trains
     seed=_SEED, epochs=count(1))
rows(GM.precision_recall, {"real": torch.randn(6, 2, generator=_g),
                           "fake": torch.randn(6, 2, generator=_g)}, k=count(1))
rows(GM.score_samples, {"samples": _DATA.test_x, "data": _DATA,
                        "classifier": GM.FeatureClassifier((1, 8, 8), 2)}, k=count(1, (6,)))

rows(GG.GANTrainConfig, {}, epochs=count(1), batch_size=count(1), n_critic=count(1),
     lr_g=pos(), lr_d=pos(), gp=nonneg(), r1=nonneg(), r2=nonneg(), ortho=nonneg(),
     ema_decay=(*REAL, -0.1, 1.0, INF), truncation=pos())
rows(GG.GANTrainer, {"data": _DATA, "generator": GG.Generator(**_TINY_G),
                     "discriminator": GG.Discriminator((1, 8, 8), width=4),
                     "config": GG.GANTrainConfig(batch_size=4)}, seed=_SEED)
rows(GG.make_trainer, {"recipe": "dcgan", "data": _DATA, "batch_size": 4}, seed=_SEED,
     z_dim=count(1), width=count(1), stages=count(1, (3,)))
rows(GG.Generator, _TINY_G, z_dim=count(1), width=count(1), stages=count(1, (3,)),
     attention=(*INT, 0, 3), num_classes=count(0), embed_dim=count(1))
rows(GG.Discriminator, {"image_shape": (1, 8, 8), "width": 4}, width=count(1),
     stages=count(1, (3,)), attention=(*INT, 0, 3), num_classes=count(0))
rows(GG.BatchNorm, {"num_features": 4}, num_features=count(1), cond_dim=count(0))
rows(GG.ConditionalBatchNorm, {"num_features": 4, "cond_dim": 3}, num_features=count(1),
     cond_dim=count(1))
rows(GG.SelfModulatedBatchNorm, {"num_features": 4, "cond_dim": 3}, num_features=count(1),
     cond_dim=count(1), hidden=count(1))
for _cls in (GG.DCGANUp, GG.ResUp):
    rows(_cls, {"in_ch": 4, "out_ch": 2, "norm": GG.BatchNorm, "cond_dim": 0},
         in_ch=count(1), out_ch=count(1), cond_dim=count(0))
for _cls in (GG.DCGANDown, GG.ResDown):
    rows(_cls, {"in_ch": 1, "out_ch": 4}, in_ch=count(1), out_ch=count(1))
rows(GG.SelfAttention, {"channels": 4}, channels=count(1))
rows(GG.SpectralNorm, {"weight": torch.ones(3, 2)}, dim=(*INT, 2, -3), eps=pos())
rows(GG.spectral_norm, {"module": nn.Linear(2, 3)}, dim=(*INT, 2, -3), eps=pos())
rows(GG.GANLoss, {"d": lambda r, f: r.mean(), "g": lambda f: f.mean()}, gp=nonneg())
rows(GG.orthogonal_penalty, {"model": nn.Linear(2, 3), "beta": 1e-4}, beta=nonneg())
rows(GG.truncated_normal, {"shape": (3,), "threshold": 1.0, "generator": _g},
     threshold=pos())

rows(GL.GLANNTrainConfig, {}, glo_epochs=count(1), imle_epochs=count(0), code_dim=count(1),
     noise_dim=count(1), width=count(2), batch_size=count(1), lr=pos(), code_lr=pos(),
     imle_batch=count(1), imle_pool=count(1), levels=count(1))
rows(GL.GLANNTrainer, {"data": _DATA, "config": GL.GLANNTrainConfig(code_dim=2, width=4)},
     seed=_SEED)
rows(GL.laplacian_pyramid, {"x": torch.zeros(1, 1, 8, 8)}, levels=count(1, (5,)))
rows(GL.lap1_loss, {"x": torch.zeros(1, 1, 8, 8), "y": torch.ones(1, 1, 8, 8)},
     levels=count(1, (5,)))
rows(GL.project_to_sphere, {"z": torch.ones(2, 3)}, eps=pos())

rows(GV.NVAEConfig, {}, channels=count(1), downsamples=count(0), groups=count(1),
     scales=count(1), latent_channels=count(1), encoder_cells=count(0),
     decoder_cells=count(0), expand=count(1), residual_scale=pos(), mixtures=count(1),
     bn_momentum=_UNIT)
rows(GV.NVAETrainConfig, {}, epochs=count(1), batch_size=count(2), lr=pos(),
     lr_min=nonneg(), kl_warmup=_UNIT, kl_min=_UNIT, spectral=nonneg(),
     weight_decay=nonneg())
rows(GV.NVAETrainer, {"data": _DATA, "config": GV.NVAETrainConfig(model=GV.NVAEConfig(
    channels=4, groups=1, latent_channels=1, expand=1))}, seed=_SEED)
rows(GV.kl_balance_coefficients, {"kl": torch.ones(2, 3), "group_sizes": torch.tensor([1, 2, 3])},
     floor=nonneg())
rows(GV.log_mean_exp, {"x": torch.zeros(2, 3), "dim": 1}, dim=(*INT, 2, -3))
_MIX = {"logit_pi": torch.zeros(1, 2, 2, 2), "means": torch.zeros(1, 2, 1, 2, 2),
        "log_scales": torch.zeros(1, 2, 1, 2, 2)}
rows(GV.logistic_mixture_log_prob, dict(_MIX, x=torch.full((1, 1, 2, 2), 0.5)), bins=count(2))
rows(GV.sample_logistic_mixture, dict(_MIX, generator=_g), bins=count(2))

# -- modules converted by other helpers (rows last; xfail while their file does not validate) ----

_XFAIL: dict[tuple[Callable[..., Any], str], str] = {}

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    _LOSS = (P**2).sum()
    _D = nn.Linear(3, 1)
    rows(T.implicit_lambda, {"h": 0.1}, h=pos())
    rows(T.midpoint_backward, {"closure": lambda: (P**2).sum(), "params": [P], "h": 0.1},
         h=pos())
    rows(T.regularized_backward, {"closure": lambda: (P**2).sum(), "params": [P], "lam": 0.1},
         lam=nonneg(), eps=pos())
    rows(T.minibatch_regularized_backward, {"closures": [lambda: (P**2).sum()] * 2,
                                            "params": [P], "lam": 0.1},
         lam=nonneg(), eps=pos())
    rows(T.gradient_penalty_loss, {"loss": (P**2).sum(), "params": [P], "lam": 0.1},
         run_valid=False, lam=nonneg())
    rows(T.r1_penalty, {"discriminator": _D, "real_x": torch.zeros(2, 3), "gamma": 1.0},
         gamma=nonneg())
    rows(T.r2_penalty, {"discriminator": _D, "fake_x": torch.zeros(2, 3), "gamma": 1.0},
         gamma=nonneg())
    rows(T.gradient_penalty, {"discriminator": _D, "real_x": torch.zeros(2, 3),
                              "fake_x": torch.ones(2, 3), "gamma": 1.0},
         gamma=nonneg(), center=finite())
    rows(T.consensus_penalty, {"losses": [lambda: None], "params": [[P]], "gamma": 1.0},
         run_valid=False, gamma=nonneg())

    _G = D.dirac_gan()
    rows(D.Game, {"loss_g": _G.loss_g, "loss_d": _G.loss_d, "dim_g": 1, "dim_d": 1},
         dim_g=count(1), dim_d=count(1))
    rows(D.dirac_gan, {}, gamma=nonneg(), center=finite())
    rows(D.bilinear_game, {"matrix": torch.eye(2, dtype=torch.float64)}, reg_g=nonneg(),
         reg_d=nonneg())
    rows(D.consensus, {"game": _G, "gamma": 0.1}, gamma=nonneg())
    rows(D.simultaneous_gd, {"game": _G, "phi0": [1.0, 1.0], "lr": 0.1, "steps": 2},
         lr=pos(), steps=count(0))
    rows(D.simultaneous_gd, {"game": _G, "phi0": [1.0, 1.0], "lr_g": 0.1, "lr_d": 0.1,
                             "steps": 2}, lr_g=pos(), lr_d=pos())
    rows(D.alternating_gd, {"game": _G, "phi0": [1.0, 1.0], "lr": 0.1, "steps": 2},
         lr=pos(), steps=count(0), d_steps=count(1))
    rows(D.alternating_gd, {"game": _G, "phi0": [1.0, 1.0], "lr_g": 0.1, "lr_d": 0.1,
                            "steps": 2}, lr_g=pos(), lr_d=pos())

for _cls, _extra in ((A.LocalAttention, {"window": 3}), (A.AtrousAttention, {"rate": 2}),
                     (A.SparseAttention, {"window": 3, "stride": 2}),
                     (A.NystromAttention, {"landmarks": 2})):
    rows(_cls, {"dim": 4, "heads": 2} | _extra, dim=count(1), heads=count(1, (3,)),
         **{k: count(1) for k in _extra})
rows(A.NystromAttention, {"dim": 4, "heads": 2, "landmarks": 2}, pinv_iters=count(0))
rows(A.local_attention, dict(QKV, window=3), window=count(1), scale=pos())
rows(A.atrous_attention, dict(QKV, rate=2), rate=count(1), scale=pos())
rows(A.sparse_attention, dict(QKV, window=3, stride=2), window=count(1), stride=count(1),
     scale=pos())
rows(A.nystrom_attention, dict(QKV, landmarks=2), landmarks=count(1), pinv_iters=count(0),
     scale=pos())
rows(A.iterative_pinv, {"a": torch.eye(3)}, iters=count(0))


# -- the tests -----------------------------------------------------------------------------------


def _name(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def _calls() -> list[Any]:
    out = []
    for c in CASES:
        for value in c.bad:
            marks = ()
            reason = _XFAIL.get((c.fn, c.arg))
            if reason:
                marks = (pytest.mark.xfail(reason=reason, strict=False),)
            out.append(pytest.param(c, value, id=f"{c.fn.__qualname__}-{c.arg}={value!r}",
                                    marks=marks))
    return out


def _names_argument(message: str, arg: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(arg)}(?!\w)", message) is not None


@pytest.mark.parametrize(("case", "value"), _calls())
def test_bad_number_is_a_value_error_naming_the_argument(case: Case, value: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(ValueError) as info:
            case.fn(**(case.valid | {case.arg: value}))
    assert _names_argument(str(info.value), case.arg), str(info.value)


def _valid_calls() -> list[Any]:
    seen, out = set(), []
    for c in CASES:
        key = (id(c.fn), tuple(sorted(c.valid)))
        if c.run_valid and key not in seen:
            seen.add(key)
            out.append(pytest.param(c, id=f"{c.fn.__qualname__}({', '.join(sorted(c.valid))})"))
    return out


@pytest.mark.parametrize("case", _valid_calls())
def test_valid_call_of_each_row_passes(case: Case) -> None:
    """Each row's base call succeeds, so a refusal above is the bad argument's doing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        case.fn(**case.valid)


# -- completeness ---------------------------------------------------------------------------------


def _members(annotation: Any) -> set[str]:
    """The names of the top-level members of a (possibly string) union annotation."""
    if isinstance(annotation, str):
        parts, depth, cur = [], 0, ""
        for ch in annotation:
            depth += ch in "[(" and 1 or (ch in "])" and -1 or 0)
            if ch == "|" and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        parts.append(cur)
        out: set[str] = set()
        for part in (p.strip() for p in parts):
            m = re.fullmatch(r"(?:typing\.)?(?:Optional|Union)\[(.*)\]", part)
            out |= {x.strip() for x in m.group(1).split(",")} if m else {part}
        return out
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return {getattr(a, "__name__", str(a)) for a in typing.get_args(annotation)}
    return {getattr(annotation, "__name__", str(annotation))}


def _numeric_params(obj: Any) -> list[str]:
    fn = obj.__init__ if inspect.isclass(obj) else obj
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation that does not resolve: read the strings
        hints = {}
    out = []
    for p in inspect.signature(obj).parameters.values():
        ann = hints.get(p.name, p.annotation)
        if ann is not inspect.Parameter.empty and {"int", "float"} & _members(ann):
            out.append(p.name)
    return out


def _public_callables() -> dict[str, Any]:
    found: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for module in MODULES:
            mod = importlib.import_module(module)
            for name in mod.__all__:
                obj = getattr(mod, name)
                if inspect.isfunction(obj) or inspect.isclass(obj):
                    found[f"{module}.{name}"] = obj
    return found


def test_table_is_complete() -> None:
    covered = {(c.fn, c.arg) for c in CASES}
    missing = []
    for public, obj in _public_callables().items():
        if (public, "*") in EXEMPT:
            continue
        for arg in _numeric_params(obj):
            if (obj, arg) not in covered and (public, arg) not in EXEMPT:
                missing.append(f"{public}({arg}=...)")
    assert not missing, "public callables with an int/float parameter but no row: " + ", ".join(
        missing)


def test_annotation_parser() -> None:
    assert _members("int | None") == {"int", "None"}
    assert _members("Tensor | float | None") == {"Tensor", "float", "None"}
    assert _members("Callable[[int], float] | None") == {"Callable[[int], float]", "None"}
    assert _members("Optional[int]") == {"int"}
    assert _members(int | None) == {"int", "NoneType"}
