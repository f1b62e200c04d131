"""The fast paths give the same answers as the plain ones: prefix cache and trial batching."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY
from workers.forward import last_token_logits, logits_and_states, start_at_layer
from workers.prepare import prepare_unit
from workers.sites import decoder_layers
from workers.tasks.base import TaskSpec
from workers.trainer import train_trials
from workers.unit import Hyper, TrainSettings, UnitSpec


def _same_parameters(a, b, atol: float) -> None:
    """The learned values (per cell) and artifact tensors of two results agree."""
    values_a, values_b = torch.tensor([r["value"] for r in a.scalars]), torch.tensor([r["value"] for r in b.scalars])
    assert len(values_a) > 0 and torch.allclose(values_a, values_b, atol=atol)
    assert a.tensors.keys() == b.tensors.keys()
    for key in a.tensors:
        assert torch.allclose(a.tensors[key], b.tensors[key], atol=atol), key


@pytest.mark.parametrize("name", TINY)
def test_prefix_cache_logits_equal_the_full_forward(tiny_models, name):
    loaded = tiny_models[name]
    ids = torch.randint(1, 500, (4, 11), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([11, 8, 11, 5])  # padded rows too
    with torch.no_grad():
        full = last_token_logits(loaded, ids, lengths)
        for layer in (1, 3):
            _, hidden = logits_and_states(loaded, ids, lengths, chunk=3, layer=layer, stop=True)
            calls = []
            handle = decoder_layers(loaded.model)[0].register_forward_hook(lambda *a: calls.append(1))  # noqa: B023
            with start_at_layer(loaded, layer, hidden):
                part = last_token_logits(loaded, ids, lengths)
            handle.remove()
            assert not calls, "layer 0 ran although its output was cached"
            assert (full - part).abs().max().item() <= 1e-5
    assert len(decoder_layers(loaded.model)) == loaded.n_layers  # layer list restored


@pytest.mark.parametrize("method", ["activscalar", "dynscalar"])
def test_prefix_cache_trains_the_same_parameters(tiny_models, method):
    loaded = tiny_models["tiny-neox"]
    outcomes = []
    for cache in (False, True):
        spec = UnitSpec("tiny-neox", TaskSpec.make("ioi"), "mlp_out", (2, 3), method,
                        TrainSettings(steps=8, prefix_cache=cache))
        unit = prepare_unit(loaded, spec)
        assert unit.first_layer == (2 if cache else 0)
        outcomes.append(train_trials(loaded, unit, [Hyper(lr=0.05, seed=3)])[0])
    _same_parameters(outcomes[0], outcomes[1], atol=1e-6)
    assert abs(outcomes[0].metrics["test"]["kl_other"] - outcomes[1].metrics["test"]["kl_other"]) < 1e-5


@pytest.mark.parametrize("method", ["activscalar", "steervec", "dynscalar"])
def test_batched_trials_equal_trials_one_by_one(tiny_models, method):
    loaded = tiny_models["tiny-gpt2"]
    spec = UnitSpec("tiny-gpt2", TaskSpec.make("ioi"), "attn_out", "all", method, TrainSettings(steps=6))
    unit = prepare_unit(loaded, spec)
    hypers = [Hyper(lr=0.05, lambda_min=0.01, seed=1), Hyper(lr=0.02, lambda_faith=3.0, seed=2, steps=3),
              Hyper(lr=0.1, lambda_min=0.001, seed=3, steps=6)]
    batched = train_trials(loaded, unit, hypers)
    for hyper, together in zip(hypers, batched):
        alone = train_trials(loaded, unit, [hyper])[0]
        assert together.steps == alone.steps == (hyper.steps or 6)
        _same_parameters(together, alone, atol=1e-5)
        for split in ("val", "test"):
            for metric, value in alone.metrics[split].items():
                assert abs(together.metrics[split][metric] - value) <= 1e-4 * max(1.0, abs(value)), (split, metric)
        assert together.sites_moved == alone.sites_moved and together.sites_total == alone.sites_total
