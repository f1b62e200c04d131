"""Early stopping and pruning (workers/stopping.py): a stopped trial leaves the batched forward,
the others train exactly as without it, and a sweep stores, tells and resumes pruned trials."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from workers.interventions import ActivScalar
from workers.prepare import prepare_unit
from workers.results import TrialResult
from workers.tasks.base import TaskSpec
from workers.trainer import train_trials
from workers.unit import Hyper, TrainSettings, UnitSpec

GOOD = [Hyper(lr=0.2, lambda_min=0.001, seed=0), Hyper(lr=0.15, lambda_min=0.001, seed=1)]
HOPELESS = Hyper(lr=1e-7, lambda_min=0.001, seed=2)


def _unit(tiny_models, **settings):
    spec = UnitSpec("tiny-llama", TaskSpec.make("ioi", {"n": 120}), "mlp_out", (1, 2, 3), ActivScalar.method,
                    TrainSettings(**{"steps": 30, "batch_size": 16, "filter": "none", "precision": "fp32",
                                     "check_every": 5, "check_prompts": 24, **settings}))
    return prepare_unit(tiny_models["tiny-llama"], spec)


def _same(a, b) -> None:
    assert a.steps == b.steps and a.stop_reason == b.stop_reason
    assert torch.allclose(a.tensors["alpha"], b.tensors["alpha"], atol=1e-4)
    for split in ("val", "test"):
        for name, value in a.metrics[split].items():
            assert abs(value - b.metrics[split][name]) <= 1e-4 * (1 + abs(value)), (split, name)


def test_a_pruned_trial_leaves_the_batch_and_the_others_are_unchanged(tiny_models):
    loaded = tiny_models["tiny-llama"]
    pruning = _unit(tiny_models, prune=True, prune_margin=0.2)
    good0, hopeless, good1 = train_trials(loaded, pruning, [GOOD[0], HOPELESS, GOOD[1]])
    assert hopeless.ok and hopeless.pruned and hopeless.steps < 30, hopeless.stop_reason
    assert hopeless.stop_reason.startswith("pruned at step") and hopeless.metrics["val"], "scored where it stopped"
    assert not good0.pruned and not good1.pruned and good0.steps == good1.steps == 30
    alone = train_trials(loaded, _unit(tiny_models), GOOD)  # no pruning, without the hopeless trial
    _same(good0, alone[0])
    _same(good1, alone[1])


def test_replicates_are_never_pruned(tiny_models):
    loaded = tiny_models["tiny-llama"]
    pruning = _unit(tiny_models, prune=True, prune_margin=0.2)
    results = train_trials(loaded, pruning, [GOOD[0], dataclasses.replace(HOPELESS, prunable=False)])
    assert not results[1].pruned and results[1].steps == 30


def test_patience_stops_a_trial_that_stopped_improving(tiny_models):
    loaded = tiny_models["tiny-llama"]
    unit = _unit(tiny_models, patience=2)
    flat, good = train_trials(loaded, unit, [HOPELESS, GOOD[0]])
    # checks at steps 5, 10, 15: the first sets its best, two more without a 1% gain stop it
    assert flat.ok and not flat.pruned and flat.steps == 15, (flat.steps, flat.stop_reason)
    assert flat.stop_reason.startswith("patience") and "at step 15" in flat.stop_reason
    assert good.steps > 15


@pytest.mark.slow
def test_a_pruning_sweep_stores_tells_and_resumes_pruned_trials(tmp_path, ray_session):
    """Pruned trials count in n_trials, are told to Optuna as pruned, are never selected, and a
    resume runs nothing again."""
    from orchestrator.coordinator import Coordinator
    from orchestrator.sweep_cmds import unit_status
    from storage.query import load, run_sql
    from tests.sweeps import check_run, parsed, tiny_config

    config = parsed(tiny_config(
        models=["tiny-llama"], tasks=[{"name": "ioi", "options": {"n": 120}}], layers=[[1, 2, 3]],
        search={"n_trials": 8, "batch": 4, "replicates": 3,
                "space": {"lr": {"low": 1e-7, "high": 0.3, "log": True}, "lambda_min": {"low": 1e-3, "high": 2e-3}}},
        train={"steps": 20, "batch_size": 16, "filter": "none", "check_every": 5, "check_prompts": 24, "prune": True,
               "prune_margin": 0.05}))  # a margin this small would prune one of two replicates of a batch, were they prunable
    summary = Coordinator(config, tmp_path, quiet=True).run()
    trials = load(tmp_path, "trials")
    pruned = trials[trials.status == "pruned"]
    assert summary.pruned == len(pruned) > 0, trials[["status", "lr", "steps_done", "stop_reason"]]
    assert (pruned.steps_done < 20).all() and pruned.stop_reason.str.startswith("pruned at step").all()
    assert pruned.val_flip_rate.notna().all(), "a pruned trial is scored where it stopped"
    check_run(tmp_path, n_trials=8, n_units=1, replicates=3)  # no replicate pruned, 2 complete
    selected, _ = run_sql([tmp_path], "SELECT trial_id FROM selected")
    assert not set(selected.trial_id) & set(pruned.trial_id)
    status = unit_status(tmp_path)[0]
    assert status["pruned"] == len(pruned) and status["pending"] == 0
    again = Coordinator(config, tmp_path, quiet=True).run()
    assert len(load(tmp_path, "trials")) == len(trials) and again.completed == summary.completed


def test_the_pruned_trial_no_longer_runs_in_the_forward(tiny_models):
    """Compute is saved, not masked: after the prune, each training forward holds 2 x 16 prompts."""
    from workers.sites import decoder_layers, resolve_site
    from workers.trainer import train_group

    loaded = tiny_models["tiny-llama"]
    unit = _unit(tiny_models, prune=True, prune_margin=0.2, check_prompts=20)
    hypers = [GOOD[0], HOPELESS, GOOD[1]]
    outcomes = [TrialResult(h) for h in hypers]
    sizes: list[int] = []
    handle = decoder_layers(loaded.model)[2].mlp.register_forward_hook(lambda m, i, out: sizes.append(out.shape[0]))
    try:
        train_group(loaded, unit, hypers, resolve_site(loaded.model, "mlp_out", unit.layers), outcomes)
    finally:
        handle.remove()
    pruned_at = outcomes[1].steps
    assert outcomes[1].pruned and 0 < pruned_at < 30
    training = [n for n in sizes if n in (48, 32)]  # checks score 20 val prompts a trial: 60 or 40 rows
    assert training == [48] * pruned_at + [32] * (30 - pruned_at), training


def test_under_bf16_the_checks_compare_against_the_training_models_own_logits(tiny_models):
    """An untrained intervention scores no faithfulness loss and no flip on the check slice under
    bf16: the slice's reference is the training model's own logits, not the fp32 model's (against
    which the bf16 forward alone shows a KL)."""
    from workers.interventions import build_intervention
    from workers.objective import kl_other_per_prompt
    from workers.precision import training_model
    from workers.sites import resolve_site
    from workers.stopping import TrialStopper

    loaded = tiny_models["tiny-llama"]
    unit = _unit(tiny_models, prune=True, precision="bf16")
    check = unit.check
    assert check is not None and check.own_logits is not None and len(check) == 24
    trains_on = training_model(loaded, unit.precision)
    refs = resolve_site(trains_on.model, "mlp_out", unit.layers)
    intervention = build_intervention(unit.spec.method, refs, 2, unit.n_positions)
    hypers = [Hyper(lambda_faith=1.0, lambda_min=0.0), Hyper(lambda_faith=0.0, lambda_min=0.0)]
    stopper = TrialStopper(unit, hypers, [30, 30], [TrialResult(h) for h in hypers], trains_on, refs)
    loss, flips = stopper.slice_scores(intervention, [0, 1])
    assert flips == [0.0, 0.0]
    assert abs(loss[0] - loss[1]) < 1e-6, "faithfulness term (the loss difference) of an untouched model"
    a_a, b_b = check.a_ids, check.b_ids
    assert float(kl_other_per_prompt(check.logits, check.own_logits, a_a, b_b).mean()) > 1e-5, \
        "the fp32 reference would have put a floor under it"
    fp32 = _unit(tiny_models, prune=True)
    assert fp32.check is not None and fp32.check.own_logits is None, "fp32: the slice is val's own"
    assert _unit(tiny_models).check is None, "no checks: no slice"
