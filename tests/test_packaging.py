"""Packaging: the library core runs on torch and numpy alone, the public names of 0.1 stay
importable, and the metadata files agree with each other (version, license, typing marker,
dependency floors, links)."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))

# Meta-path finders that make every third-party module unfindable except torch, numpy and the
# distributions they themselves require (sympy, jinja2, ...), and record each refused import
# that a kexue module attempted.
_LEAN_PRELUDE = r'''
import importlib.abc, importlib.machinery, re, sys
from importlib import metadata

def _closure(roots):
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for req in requires:
            if "extra ==" in req:
                continue
            todo.append(re.match(r"[A-Za-z0-9_.-]+", req)[0])
    return seen

_dists = _closure(ROOTS)
ALLOWED = set(sys.stdlib_module_names) | set(sys.builtin_module_names) | {"kexue", "torch",
                                                                          "numpy"}
for module, owners in metadata.packages_distributions().items():
    if any(re.sub(r"[-_.]+", "-", d).lower() in _dists for d in owners):
        ALLOWED.add(module)
REFUSED_FROM_KEXUE = []

class _Lean(importlib.abc.MetaPathFinder):
    """Wraps a path-based finder: a refused module is not found, as if it were not installed
    (so an import raises ModuleNotFoundError and importlib.util.find_spec returns None)."""

    def __init__(self, inner):
        self.inner = inner

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top in ALLOWED or top.startswith("_"):
            return self.inner.find_spec(fullname, path, target)
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.startswith("<frozen"):
            frame = frame.f_back
        importer = frame.f_globals.get("__name__", "") if frame is not None else ""
        if importer.partition(".")[0] == "kexue" and (importer, fullname) not in REFUSED_FROM_KEXUE:
            REFUSED_FROM_KEXUE.append((importer, fullname))
        return None

    def invalidate_caches(self):
        getattr(self.inner, "invalidate_caches", lambda: None)()

_KEEP = (importlib.machinery.BuiltinImporter, importlib.machinery.FrozenImporter)
sys.meta_path[:] = [f if f in _KEEP else _Lean(f) for f in sys.meta_path]
'''


def _run_lean(body: str, roots: tuple[str, ...] = ("torch", "numpy")) -> dict:
    """Run ``body`` in a fresh interpreter where only the distributions ``roots`` (and what they
    require) can be imported; ``body`` prints one JSON line."""
    code = f"ROOTS = {list(roots)!r}\n" + _LEAN_PRELUDE + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                               "OMP_NUM_THREADS": "1", "HOME": str(Path.home())})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_lean_finder_refuses_third_party_imports():
    """Negative control: under the prelude the CLI's and the text's dependencies cannot be
    imported or found (installed or not), while torch and numpy can; an import attempted by a
    kexue module is recorded."""
    result = _run_lean('''
        import json, importlib, importlib.util
        refused = []
        for name in ["matplotlib", "scipy", "sklearn", "rich", "typer", "click", "jieba",
                     "snownlp", "transformers", "pandas", "hypothesis", "pytest"]:
            try:
                importlib.import_module(name)
            except ImportError:
                refused.append(name)
        import numpy, torch
        spec_none = importlib.util.find_spec("scipy") is None
        try:  # an import made by a kexue module is recorded
            exec("import scipy.special", {"__name__": "kexue.probe"})
        except ImportError:
            pass
        print(json.dumps({"refused": refused, "spec_none": spec_none,
                          "recorded": REFUSED_FROM_KEXUE}))
    ''')
    assert len(result["refused"]) == 12, result
    assert result["spec_none"], result
    assert result["recorded"] == [["kexue.probe", "scipy"]], result


def test_core_imports_and_works_with_only_torch_and_numpy():
    """kexue, kexue.train, kexue.attention, kexue.estimators, kexue.generative, kexue.dynamics
    import with every other third-party package refused, never even try one, and compute:
    per-pattern learning rates and one EMA step against the recursion, local attention against
    a float64 softmax written here, a Gumbel-softmax sample against softmax((l + g) / τ)."""
    result = _run_lean('''
        import json, math
        import torch
        torch.set_num_threads(1)
        import kexue, kexue.train, kexue.attention, kexue.estimators
        import kexue.generative.base, kexue.generative.data, kexue.generative.glann
        import kexue.generative.nvae, kexue.generative.metrics, kexue.generative.gan
        import kexue.dynamics  # scipy only inside gradient_flow
        from kexue.train import EMA, param_groups
        from kexue.attention import local_attention
        from kexue.estimators import gumbel_noise, gumbel_softmax
        out = {}

        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
        groups = param_groups(model, lr=0.1, multipliers={"1.*": 10.0})
        lrs = {name: g["lr"] for g in groups for name in g["names"]}
        out["lr_ok"] = (lrs["0.weight"] == 0.1 and math.isclose(lrs["1.weight"], 1.0))
        opt = torch.optim.SGD(groups)
        ema = EMA(model, decay=0.9)
        before = [p.detach().clone() for p in model.parameters()]
        model(torch.randn(5, 3)).square().sum().backward()
        opt.step()
        ema.update()
        after = [p.detach().clone() for p in model.parameters()]
        expected = [0.9 * b + 0.1 * a for b, a in zip(before, after)]
        with ema.swapped():
            got = [p.detach().clone() for p in model.parameters()]
        out["ema_err"] = max((g - e).abs().max().item() for g, e in zip(got, expected))

        q, k, v = (torch.randn(1, 2, 9, 4, dtype=torch.float64) for _ in range(3))
        fast = local_attention(q, k, v, window=4)
        i = torch.arange(9)
        band = (i[:, None] - i[None, :]).abs() <= 2
        scores = (q @ k.transpose(-1, -2) / 2.0).masked_fill(~band, -math.inf)
        ref = torch.softmax(scores, dim=-1) @ v
        out["attn_err"] = (fast - ref).abs().max().item()

        logits = torch.randn(6, 5)
        y = gumbel_softmax(logits, tau=0.5, generator=torch.Generator().manual_seed(3))
        g = gumbel_noise(logits.shape, generator=torch.Generator().manual_seed(3))
        out["gumbel_err"] = (y - torch.softmax((logits + g) / 0.5, dim=-1)).abs().max().item()
        hard = gumbel_softmax(logits, tau=0.5, hard=True,
                              generator=torch.Generator().manual_seed(3))
        out["hard_is_onehot_of_soft"] = bool(
            (hard == torch.nn.functional.one_hot(y.argmax(-1), 5).float()).all())
        out["refused_from_kexue"] = REFUSED_FROM_KEXUE
        out["version"] = kexue.__version__
        print(json.dumps(out))
    ''')
    assert result["refused_from_kexue"] == [], result["refused_from_kexue"]
    assert result["lr_ok"], result
    assert result["ema_err"] < 1e-6, result
    assert result["attn_err"] < 1e-12, result
    assert result["gumbel_err"] < 1e-6, result
    assert result["hard_is_onehot_of_soft"], result
    assert result["version"] == PYPROJECT["project"]["version"]


def _requirement_names(requirements: list[str]) -> list[str]:
    return [re.match(r"[A-Za-z0-9_.-]+", r)[0] for r in requirements
            if not r.startswith("kexue")]


def test_the_command_and_the_report_import_with_the_cli_and_text_extras():
    """The quick start installs ``.[cli,text]`` (and envtext, mlxtend without dependencies) before
    ``kexue report``: the command, the report and every experiment import with those alone
    (no pytest, hypothesis or transformers), and never try anything else."""
    pytest.importorskip("typer")
    extras = PYPROJECT["project"]["optional-dependencies"]
    roots = ("torch", "numpy", *_requirement_names(extras["cli"] + extras["text"]))
    result = _run_lean('''
        import importlib, json, pkgutil
        import kexue.cli, kexue.report, kexue.experiments
        names = [m.name for m in pkgutil.iter_modules(kexue.experiments.__path__)]
        for name in names:
            importlib.import_module(f"kexue.experiments.{name}")
        for m in pkgutil.iter_modules(kexue.cli.__path__):
            importlib.import_module(f"kexue.cli.{m.name}")
        print(json.dumps({"experiments": len(names), "refused_from_kexue": REFUSED_FROM_KEXUE}))
    ''', roots)
    assert result["experiments"] >= 10, result
    assert result["refused_from_kexue"] == [], result["refused_from_kexue"]


# The names that version 0.1 (git 8d4db86) exported through ``__all__``. kexue.generative had no
# ``__all__`` in its package then; its modules' lists are frozen instead.
PUBLIC_0_1 = {
    "kexue": ["EMA", "__version__", "capture", "chain", "param_groups", "train",
              "with_transforms"],
    "kexue.train": [
        "EMA", "Captured", "GradientPenalty", "GradientTransform", "ShardedIterable",
        "TransformHandle", "accumulate", "adaptive_clip", "add_noise", "apply_transform",
        "block_of", "capture", "centralize", "chain", "clip_by_global_norm", "clip_by_norm",
        "clip_by_value", "ema_warmup", "gradient_penalty_loss", "implicit_lambda",
        "is_bias_or_norm", "map_grads", "midpoint_backward", "minibatch_regularized_backward",
        "param_groups", "regularized_backward", "scale", "scale_parametrize", "select",
        "skip_nonfinite", "unwrap_model", "with_transforms"],
    "kexue.attention": [
        "MIXERS", "Affine", "AtrousAttention", "AttendFn", "Block", "DenseAttention",
        "ExternalAttention", "FNetMixer", "GatingUnit", "LocalAttention", "MLPMixerToken",
        "MultiHeadAttention", "NystromAttention", "ResMLPToken", "SparseAttention",
        "SynthesizerDense", "SynthesizerRandom", "atrous_attention", "block_mask", "build_mixer",
        "check_heads", "check_padding_mask", "check_qkv", "dense_attention",
        "flex_sparse_attention", "iterative_pinv", "local_attention", "masks",
        "nystrom_attention", "sdpa_attention", "sparse_attention"],
    "kexue.estimators": [
        "LearnedBaseline", "MetricEstimator", "MovingAverageBaseline", "PolicyGradient",
        "SeedZO", "Surrogate", "ZerothOrder", "accuracy", "binary_f1", "gaussian_rsample",
        "gumbel_max", "gumbel_noise", "gumbel_softmax", "leave_one_out", "macro_f1",
        "magic_box", "maximize", "score_function_surrogate", "straight_through",
        "straight_through_round", "straight_through_sign", "zo_backward", "zo_gradient"],
    "kexue.text": [
        "BiLM", "Corpus", "EditProposal", "NgramCounter", "NgramLM", "NgramTable",
        "ReadSummary", "Scored", "State", "TextTarget", "TokenSpace", "Vocabulary",
        "WordScores", "chunks", "compress", "correct", "count_ngrams", "discover", "gibbs",
        "importance_sampling", "is_han_word", "keywords_to_sentence", "metropolis_hastings",
        "paraphrase", "precision_at_k", "read_documents", "rejection_sampling",
        "simulated_annealing"],
    "kexue.dynamics": [
        "DIRAC_LOSSES", "Game", "PathKernelRecorder", "TopK", "alternating_gd",
        "bilinear_game", "consensus", "consensus_penalty", "dirac_gan", "eigenvalues_at",
        "flow_error", "gd_iterates", "gradient_flow", "gradient_penalty", "jacobian",
        "modified_loss", "r1_penalty", "r2_penalty", "simultaneous_gd", "with_penalty"],
    "kexue.generative.base": ["Trainer", "image_grid"],
    "kexue.generative.data": ["IMAGE_DATA", "ImageData", "binarize", "load_images"],
    "kexue.generative.gan": [
        "LOSSES", "RECIPES", "NormFactory", "BatchNorm", "ConditionalBatchNorm", "DCGANDown",
        "DCGANUp", "Discriminator", "GANLoss", "GANRecipe", "GANTrainer", "Generator",
        "ResDown", "ResUp", "SelfAttention", "SelfModulatedBatchNorm", "SpectralNorm",
        "add_spectral_norm", "init_weights", "make_trainer", "orthogonal_penalty",
        "spectral_norm", "truncated_normal"],
    "kexue.generative.glann": [
        "GLANNTrainer", "fit_gaussian", "imle_assign", "lap1_loss", "laplacian_pyramid",
        "project_to_sphere", "reconstruct_pyramid"],
    "kexue.generative.nvae": [
        "LIKELIHOODS", "NVAE", "NVAEConfig", "NVAEOutput", "NVAETrainer", "SpectralRegularizer",
        "kl_balance_coefficients", "log_mean_exp", "logistic_mixture_log_prob",
        "normal_log_prob", "reestimate_batchnorm", "residual_normal_kl",
        "sample_logistic_mixture"],
    "kexue.generative.metrics": [
        "FeatureClassifier", "fit_classifier", "frechet_distance", "frechet_distance_gaussian",
        "inception_score", "init_parameters_", "precision_recall", "score_samples"],
}
_NEEDS = {"kexue.text": ["scipy"]}


@pytest.mark.parametrize("module_name", sorted(PUBLIC_0_1))
def test_the_public_names_of_0_1_are_still_exported(module_name):
    """A rename or removal of a 0.1 name fails here instead of in users' code: each name is
    still an attribute and still in ``__all__`` (so ``from module import *`` keeps it)."""
    for dependency in _NEEDS.get(module_name, []):
        pytest.importorskip(dependency)
    module = importlib.import_module(module_name)
    missing = [n for n in PUBLIC_0_1[module_name] if not hasattr(module, n)]
    assert not missing, f"{module_name} lost {missing}"
    unlisted = sorted(set(PUBLIC_0_1[module_name]) - set(getattr(module, "__all__", ())))
    assert not unlisted, f"{module_name}.__all__ lost {unlisted}"


def _floors(requirements: list[str]) -> dict[str, str]:
    out = {}
    for req in requirements:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9A-Za-z.]*)", req.replace(" ", ""))
        if m:
            out[m[1].lower()] = m[2]
    return out


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def test_core_dependencies_are_torch_and_numpy_only():
    """The library core's install pulls no CLI, plotting or text package; those are extras."""
    deps = _floors(PYPROJECT["project"]["dependencies"])
    assert sorted(deps) == ["numpy", "torch"], PYPROJECT["project"]["dependencies"]
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"typer", "rich", "matplotlib", "scikit-learn", "scipy"} <= set(_floors(extras["cli"]))
    assert {"jieba", "snownlp", "scipy"} <= set(_floors(extras["text"]))


def test_declared_floors_are_the_tested_ones():
    """Floors that were found broken are not declared: typer < 0.16 crashes on ``--help`` with
    click >= 8.2, torch below 2.13 is untested, the HF tests need transformers 5, matplotlib
    < 3.8.4 and scikit-learn < 1.4.2 fail to import beside numpy 2."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert _version_tuple(_floors(extras["cli"])["typer"]) >= (0, 16)
    assert _version_tuple(_floors(PYPROJECT["project"]["dependencies"])["torch"]) >= (2, 13)
    assert _version_tuple(_floors(extras["hf"])["transformers"]) >= (5, 0)
    # Their wheels allow numpy 2 but were built against numpy 1: importing them fails.
    assert _version_tuple(_floors(extras["cli"])["matplotlib"]) >= (3, 8, 4)
    assert _version_tuple(_floors(extras["cli"])["scikit-learn"]) >= (1, 4, 2)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "torch==2.13.0" in ci


def test_version_is_the_project_version():
    """``kexue.__version__`` is the installed distribution's version, which is pyproject's."""
    import kexue

    assert kexue.__version__ == PYPROJECT["project"]["version"]
    try:
        installed = metadata.version("kexue")
    except metadata.PackageNotFoundError:
        pytest.skip("kexue is not installed (run from a plain checkout)")
    assert kexue.__version__ == installed


def test_typing_marker_license_changelog_and_citation_agree():
    """py.typed ships (package data), LICENSE is the declared MIT license, the CHANGELOG has a
    section for the version, and CITATION.cff cites that version."""
    assert (ROOT / "kexue" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["kexue"]
    assert PYPROJECT["project"]["license"] == "MIT"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")
    version = PYPROJECT["project"]["version"]
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## \[{re.escape(version)}\] - \d{{4}}-\d\d-\d\d$", changelog, re.M)
    assert re.search(r"^## \[Unreleased\]$", changelog, re.M)
    citation = (ROOT / "CITATION.cff").read_text(encoding="utf-8")
    assert re.search(r"^cff-version: 1\.2\.0$", citation, re.M)
    assert re.search(rf"^version: \"?{re.escape(version)}\"?$", citation, re.M)
    classifiers = PYPROJECT["project"]["classifiers"]
    assert "Typing :: Typed" in classifiers
    python_floor = _version_tuple(PYPROJECT["project"]["requires-python"])
    listed = [_version_tuple(c.rsplit("::", 1)[1]) for c in classifiers
              if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)]
    assert listed and min(listed) == python_floor[:2]


# Absolute links may point to the notes and to papers only; nothing else is invented.
_ALLOWED_HOSTS = {"kexue.fm", "arxiv.org", "doi.org", "openreview.net", "aclanthology.org",
                  "proceedings.mlr.press", "papers.nips.cc", "proceedings.neurips.cc"}


@pytest.mark.parametrize("name", ["README.md", "pyproject.toml", "CITATION.cff", "CHANGELOG.md"])
def test_absolute_links_go_to_the_notes_or_papers_only(name):
    text = (ROOT / name).read_text(encoding="utf-8")
    hosts = {m[1].lower().removeprefix("www.")
             for m in re.finditer(r"https?://([^/\s)>\"'`]+)", text)}
    assert hosts <= _ALLOWED_HOSTS, f"{name} links to {sorted(hosts - _ALLOWED_HOSTS)}"


def test_doctor_checks_the_declared_torch_floor():
    """``kexue doctor`` and pyproject state the same torch floor."""
    pytest.importorskip("typer")
    try:
        doctor = importlib.import_module("kexue.cli.doctor")
    except ImportError as err:  # the CLI package is not there in this checkout
        pytest.skip(f"kexue.cli.doctor: {err}")
    floor = _version_tuple(_floors(PYPROJECT["project"]["dependencies"])["torch"])
    assert tuple(doctor.TORCH_FLOOR) == floor[: len(doctor.TORCH_FLOOR)]
