"""The science on the embedded real model (SmolLM2-135M): slow, a few minutes."""
from __future__ import annotations

import json

import pytest

from orchestrator.cli import main
from workers.prepare import prepare_unit
from workers.tasks.base import TaskSpec
from workers.trainer import train_trials
from workers.unit import Hyper, TrainSettings, UnitSpec

pytestmark = pytest.mark.slow


def test_activscalar_flips_ioi_with_few_scalars(capsys, embedded_model):
    argv = ["train", "--model", "smollm2-135m", "--task", "ioi", "--site", "mlp_out", "--layers", "all",
            "--method", "activscalar", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    print("activscalar", report["test"], report["sites_moved"], report["sites_total"], report["n_params"])
    assert report["test"]["flip_rate"] >= 0.9
    assert report["sites_total"] == report["n_params"] and report["sites_total"] % 30 == 0  # one alpha per cell
    assert report["sites_moved"] <= 0.15 * report["sites_total"]
    assert report["test"]["kl_other"] <= 0.3


def test_steervec_flips_ioi(embedded_model):
    spec = UnitSpec("smollm2-135m", TaskSpec.make("ioi"), "mlp_out", "all", "steervec", TrainSettings(steps=60))
    outcome = train_trials(embedded_model, prepare_unit(embedded_model, spec), [Hyper(lr=0.01, lambda_min=1e-4)])[0]
    print("steervec", outcome.metrics["test"], outcome.sites_moved, outcome.sites_total, outcome.n_params)
    assert outcome.metrics["test"]["flip_rate"] >= 0.9
    assert outcome.sites_total * 576 == outcome.n_params  # same cells as ActivScalar; one 576-vector per cell


def test_dynscalar_transfers_to_a_heldout_template_of_another_length(embedded_model):
    task = TaskSpec.make("ioi", {"templates": ["when", "after", "while"], "heldout_templates": ["long"]})
    spec = UnitSpec("smollm2-135m", task, "mlp_out", "all", "dynscalar", TrainSettings(steps=80))
    unit = prepare_unit(embedded_model, spec)
    train_lengths = {e.length for e in unit.splits["train"].examples}
    assert not train_lengths & {e.length for e in unit.splits["test"].examples}
    outcome = train_trials(embedded_model, unit, [Hyper(lr=0.01, lambda_min=0.01)])[0]
    print("dynscalar", outcome.metrics)
    assert outcome.metrics["test"]["flip_rate"] >= 0.75
