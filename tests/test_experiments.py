"""Every experiment of the registry: its config builds, its anchor is honest, its negative
control fails its claim (fast), and its claim holds on a real run (slow)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from kexue.experiments import EXPERIMENTS
from kexue.experiments.base import MAX_METRICS, Context, Result, config_dict

NAMES = list(EXPERIMENTS)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", NAMES)
def test_configs_build_and_serialise(name):
    exp = EXPERIMENTS[name]
    for config in (exp.quick, exp.full):
        assert dataclasses.is_dataclass(config)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(config, dataclasses.fields(config)[0].name, None)
        json.dumps(config_dict(config))  # recorded in the ledger as JSON
    assert exp.quick != exp.full, "full mode must differ from quick mode"
    assert type(exp.quick) is type(exp.full)


@pytest.mark.parametrize("name", NAMES)
def test_every_claim_names_a_published_number_or_says_there_is_none(name):
    anchor = EXPERIMENTS[name].anchor
    assert anchor.source.strip() and "TODO" not in anchor.source and "not yet" not in anchor.source
    if anchor.number is not None:
        assert anchor.data.strip(), "a published number must say what it was measured on"
        assert "http" in anchor.source, "a published number cites its source with a link"


@pytest.mark.parametrize("name", [n for n in NAMES if EXPERIMENTS[n].threshold is not None])
def test_negative_control_fails_the_claim(name):
    """The claim's scorer on blurred/shuffled/class-dropped data or an untrained model must
    not pass: a claim that its own control passes cannot fail."""
    exp = EXPERIMENTS[name]
    result = exp.control(exp.quick, Context(seed=0))
    assert isinstance(result, Result)
    assert not result.holds, (name, result.summary)
    assert len(result.metrics) <= MAX_METRICS
