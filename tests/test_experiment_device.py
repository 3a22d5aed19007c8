"""Experiments on a device and in a precision (``kexue.experiments.base``): the Context's
checks and autocast, the CPU/fp32 fallback recorded in the provenance, bf16 autocast on the CPU
within a declared tolerance of fp32, and (``gpu``) quick experiments on CUDA against their CPU
results.

Tolerances. bf16 keeps 8 significant bits (relative rounding 2⁻⁹), and a training run
compounds it; the bounds below are 3–5× the largest difference measured on seeds 0–2 (quick
configs cut to one or two epochs): test losses within 5 % relative, accuracies within 0.01.
A CUDA run in fp32 differs from the CPU one by reduction order and, in convolutions, by
cuDNN's TF32 (10 significant bits) — no more than bf16's rounding — so it is held to the same
bounds; the generative cases, whose short runs are noisier, to the bounds stated beside them
(each 5× or more the bf16-vs-fp32 difference measured on the CPU).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import matplotlib
import pytest
import torch

from kexue.experiments import EXPERIMENTS
from kexue.experiments.base import Anchor, Context, Experiment, Result, run_experiment

matplotlib.use("Agg")

# the experiments that cannot use CUDA, each with its reason beside ``devices`` in its module
CPU_ONLY = {"attention_scaling", "estimator_variance", "direct_metric", "gan_dynamics",
            "modified_flow", "domain_vocab", "constrained_text", "segmentation_pd1998"}
# float64 identities (path kernel) honour no bf16; the training experiments do
FP32_ONLY = CPU_ONLY | {"path_kernel_digits"}


@pytest.fixture(autouse=True)
def _close_figures():
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


@dataclass(frozen=True)
class _Config:
    n: int = 1


def _probe(devices: tuple[str, ...], precisions: tuple[str, ...]
           ) -> tuple[Experiment, list[Context]]:
    """An experiment that records the context it is run in."""
    seen: list[Context] = []

    def run(config: _Config, ctx: Context) -> Result:
        seen.append(ctx)
        x = ctx.put(torch.ones(3))
        with ctx.autocast():
            y = (x[:, None] @ x[None, :]).sum()
        return Result({"y": y.item()}, True, "probe")

    return Experiment(name="probe", title="probe", note="https://kexue.fm/archives/1",
                      claim="probe", threshold=None, anchor=Anchor(None, "a test"),
                      quick=_Config(), full=_Config(2), run=run, devices=devices,
                      precisions=precisions), seen


# --- the Context -----------------------------------------------------------------------------

def test_context_checks_its_precision_and_device():
    with pytest.raises(ValueError, match=r"precision must be one of 'fp32', 'bf16', got 'fp16'"):
        Context(precision="fp16")
    with pytest.raises(ValueError, match=r"device .*'not-a-device'"):
        Context(device="not-a-device")
    assert Context(device="cpu").device == torch.device("cpu")  # a name becomes a device


def test_context_autocast_is_bf16_for_float32_and_leaves_float64_alone():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, 32, generator=gen), torch.randn(32, 8, generator=gen)
    exact = a.double() @ b.double()  # float64 reference
    with Context(precision="fp32").autocast():
        full = a @ b
    with Context(precision="bf16").autocast():
        low = a @ b
        wide = a.double() @ b.double()
    assert full.dtype == torch.float32 and low.dtype == torch.bfloat16
    torch.testing.assert_close(full.double(), exact, rtol=1e-5, atol=1e-5)
    # each bf16 operand is rounded by ≤ 2⁻⁹ relative, the product once more: |Δ| ≤ 2⁻⁷ |a||b|
    bound = 2.0**-7 * (a.abs().double() @ b.abs().double())
    err = (low.double() - exact).abs()
    assert (err <= bound).all() and err.max() > 1e-4  # it really ran in bf16
    assert wide.dtype == torch.float64 and torch.equal(wide, exact)  # float64: untouched
    assert Context(precision="bf16").autocast_name == "bf16"
    assert Context().autocast_name is None


def test_context_put_and_place_on_the_cpu_move_nothing():
    ctx = Context()
    x = torch.ones(2)
    layer = torch.nn.Linear(2, 2)
    assert ctx.put(x) is x and ctx.place(layer) is layer


# --- the declaration and the fallback --------------------------------------------------------

@pytest.mark.parametrize("field, value", [("devices", ("cuda",)), ("devices", ("cpu", "tpu")),
                                          ("precisions", ("bf16",)),
                                          ("precisions", ("fp32", "fp16"))])
def test_a_declaration_must_hold_cpu_fp32_and_known_names(field, value):
    with pytest.raises(ValueError, match=field):
        _probe(**{"devices": ("cpu",), "precisions": ("fp32",), field: value})


def test_a_device_or_precision_an_experiment_lacks_falls_back_to_cpu_fp32():
    cuda = torch.device("cuda")  # a device object needs no CUDA to exist
    only_cpu, _ = _probe(("cpu",), ("fp32",))
    both, _ = _probe(("cpu", "cuda"), ("fp32", "bf16"))
    assert only_cpu.context(3, cuda, "bf16") == Context(3, torch.device("cpu"), "fp32")
    assert both.context(3, cuda, "bf16") == Context(3, cuda, "bf16")
    with pytest.raises(ValueError, match="precision"):
        both.context(0, "cpu", "fp64")


@pytest.mark.parametrize("precisions, recorded", [(("fp32",), "fp32"),
                                                  (("fp32", "bf16"), "bf16")])
def test_provenance_records_what_the_run_used(precisions, recorded):
    experiment, seen = _probe(("cpu",), precisions)
    result, prov = run_experiment(experiment, seed=5, device="auto" if torch.cuda.is_available()
                                  else "cpu", precision="bf16")
    assert [c.precision for c in seen] == [recorded] and seen[0].seed == 5
    assert seen[0].device == torch.device("cpu")  # CPU-only, whatever was asked
    assert prov.precision == recorded and prov.device.startswith("cpu:")
    assert result.metrics["y"] == 9.0  # bf16 holds 1·1 summed 9 times exactly


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_where_there_is_none_is_refused_before_running():
    experiment, seen = _probe(("cpu", "cuda"), ("fp32",))
    with pytest.raises(ValueError, match="CUDA is not available"):
        run_experiment(experiment, device="cuda")
    assert not seen


def test_the_registry_says_which_experiments_use_cuda_and_bf16():
    assert {n for n, e in EXPERIMENTS.items() if "cuda" not in e.devices} == CPU_ONLY
    assert {n for n, e in EXPERIMENTS.items() if "bf16" not in e.precisions} == FP32_ONLY


# --- bf16 autocast on the CPU, two cheap experiments -----------------------------------------

LOSS_RTOL, ACC_ATOL = 0.05, 0.01
BF16_CASES = {
    # name: (config overrides, {metric: (kind, tolerance)})
    "ema_digits": ({"epochs": 1}, {"test_loss_raw": ("rel", LOSS_RTOL),
                                   "test_loss_ema": ("rel", LOSS_RTOL),
                                   "test_acc_raw": ("abs", ACC_ATOL),
                                   "test_acc_ema": ("abs", ACC_ATOL)}),
    "attention_maps": ({"epochs": 2}, {"test_acc": ("abs", ACC_ATOL)}),
}


def _run(name: str, overrides: dict, ctx: Context) -> Result:
    exp = EXPERIMENTS[name]
    return exp.run(dataclasses.replace(exp.quick, **overrides), ctx)


def _close(name: str, metrics: dict, got: Result, reference: Result) -> None:
    for key, (kind, tol) in metrics.items():
        a, b = got.metrics[key], reference.metrics[key]
        assert math.isfinite(a), (name, key, a)
        limit = tol * abs(b) if kind == "rel" else tol
        assert abs(a - b) <= limit, f"{name} {key}: {a} vs {b} (tolerance {limit:.3g})"


@pytest.mark.parametrize("name", list(BF16_CASES))
def test_bf16_autocast_on_the_cpu_is_finite_and_close_to_fp32(name):
    overrides, metrics = BF16_CASES[name]
    fp32 = _run(name, overrides, Context(seed=0))
    bf16 = _run(name, overrides, Context(seed=0, precision="bf16"))
    _close(name, metrics, bf16, fp32)
    # the verdicts agree: EMA beats the raw weights (not the same weights scored twice), the
    # captured maps still equal the float64 softmax
    assert fp32.holds and bf16.holds, bf16.summary
    assert bf16.metrics != fp32.metrics  # bf16 really changed the run


# --- CUDA (gpu): quick experiments against their CPU results ---------------------------------

GPU_CASES = {
    **BF16_CASES,
    "layerwise_lr": ({"identity_steps": 10, "pretrain_epochs": 2, "finetune_steps": 30,
                      "seeds": 1},
                     {"identity_gap_sgd": ("max", 1e-9), "identity_gap_adam": ("max", 1e-9),
                      "acc_uniform": ("abs", 0.02), "acc_layer_decay": ("abs", 0.02),
                      "acc_head_only": ("abs", 0.02)}),
    "mixers_digits": ({"epochs": 1, "batch_size": 128},
                      {"acc_worst_mixer": ("abs", 0.02), "acc_best_mixer": ("abs", 0.02),
                       "acc_median_mixer": ("abs", 0.02)}),
    # float64: only the reduction order differs
    "path_kernel_digits": ({"train": 100, "steps": 20},
                           {"exact relative error": ("max", 1e-10),
                            "tangent relative error": ("rel", 1e-6),
                            "test accuracy": ("abs", 0.005)}),
    # bf16 vs fp32 on the CPU moved these by 3 % (cFD), 2 % and 0.02 nats
    "gan_digits": ({"seeds": 1, "epochs": 2}, {"cfd_dcgan_mean": ("rel", 0.25)}),
    "glann_digits": ({"seeds": 1, "glo_epochs": 3, "imle_epochs": 2, "draws": 1},
                     {"cfd_glann_mean": ("rel", 0.15), "cfd_glo_gaussian_mean": ("rel", 0.15)}),
    "nvae_digits": ({"epochs": 2, "iw_samples": 10}, {"test_nll_iw": ("abs", 0.5),
                                                      "test_neg_elbo": ("abs", 0.5)}),
}


def _gpu_close(name: str, metrics: dict, got: Result, reference: Result) -> None:
    maxima = {k: v for k, v in metrics.items() if v[0] == "max"}
    for key, (_, bound) in maxima.items():  # an identity: below its bound on both devices
        assert got.metrics[key] <= bound and reference.metrics[key] <= bound, key
    _close(name, {k: v for k, v in metrics.items() if k not in maxima}, got, reference)


def test_every_cuda_experiment_has_a_gpu_case():
    assert set(GPU_CASES) == {n for n, e in EXPERIMENTS.items() if "cuda" in e.devices}


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(GPU_CASES))
def test_quick_experiment_on_cuda_matches_the_cpu(name):
    overrides, metrics = GPU_CASES[name]
    cpu = _run(name, overrides, Context(seed=0))
    cuda = _run(name, overrides, Context(seed=0, device="cuda"))
    _gpu_close(name, metrics, cuda, cpu)
    assert cuda.holds == cpu.holds or name in ("gan_digits", "glann_digits"), cuda.summary


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(BF16_CASES))
def test_bf16_on_cuda_is_close_to_fp32_on_the_cpu(name):
    overrides, metrics = BF16_CASES[name]
    cpu = _run(name, overrides, Context(seed=0))
    cuda = _run(name, overrides, Context(seed=0, device="cuda", precision="bf16"))
    _close(name, metrics, cuda, cpu)
    assert cuda.holds, cuda.summary


@pytest.mark.gpu
def test_provenance_names_the_cuda_device():
    experiment, seen = _probe(("cpu", "cuda"), ("fp32", "bf16"))
    _, prov = run_experiment(experiment, device="auto", precision="bf16")
    assert seen[0].device.type == "cuda" and prov.device.startswith("cuda:")
    assert prov.precision == "bf16"
    cpu_only, seen = _probe(("cpu",), ("fp32",))
    _, prov = run_experiment(cpu_only, device="cuda")
    assert seen[0].device.type == "cpu" and prov.device.startswith("cpu:")
