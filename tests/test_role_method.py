"""ActivScalar per token role (method `activscalar_role`, workers/interventions.py ActivScalarRole): one scalar per
(layer, role) from a role vocabulary fixed once per unit (workers/columns.py RoleVocabulary), so it trains on some
templates and runs by role on held-out ones (C6's role-aligned baseline)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from workers.errors import UsageError
from workers.interventions import ActivScalarRole, ForwardContext, Setup, build_intervention
from workers.prepare import prepare_unit
from workers.sites import SiteRef
from workers.steer import apply_trial
from workers.stored_trial import StoredTrial
from workers.tasks.base import TaskSpec
from workers.trainer import train_trials
from workers.unit import Hyper, TrainSettings, UnitSpec

LAYERS = (0, 1, 2, 3)


def _unit(tiny_models, folds: int = 1, precision: str = "fp32"):
    spec = UnitSpec("tiny-llama", TaskSpec.make("ioi", {"n": 40, "heldout_templates": ["longer"]}), "mlp_out", LAYERS,
                    "activscalar_role", TrainSettings(steps=6, batch_size=16, filter="none", folds=folds,
                                                      precision=precision, patience=2))
    return prepare_unit(tiny_models["tiny-llama"], spec)


def test_a_role_has_one_index_in_every_split_and_a_held_out_templates_own_words_none(tiny_models):
    unit = _unit(tiny_models)
    vocabulary = unit.roles
    assert vocabulary is not None and vocabulary.roles[-1] == "END" and {"IO", "S1", "S2"} <= set(vocabulary.roles)
    for split, data in unit.splits.items():
        columns, ids = unit.cell_columns(split)
        assert [c.role for c in columns] == list(vocabulary.roles)  # the same columns on every split
        assert all(c.position is None for c in columns)
        for e, row in zip(data.examples, ids):
            want = [vocabulary.roles.index(r) if r in vocabulary.roles else vocabulary.other for r in e.roles]
            assert row[: e.length].tolist() == want
    test = unit.splits["test"]
    held = [e for e in test.examples if e.example.heldout]
    assert held and all(not e.example.heldout for s in ("train", "val") for e in unit.splits[s].examples)
    # "Later that day, ... together ... decided to give": words no trained template has
    assert any(vocabulary.other in row[: e.length].tolist() for e, row in zip(test.examples, test.roles) if e.example.heldout)


def test_each_token_is_scaled_by_its_roles_scalar_and_a_role_outside_is_left_alone():
    refs = [SiteRef(0, nn.Identity(), False, None, 4)]
    made = build_intervention("activscalar_role", refs, 1, None, roles=("IO", "END"))
    with torch.no_grad():
        made.alphas[0].copy_(torch.tensor([[2.0, 0.5]]))  # [L, R]
    h = torch.randn(1, 3, 4)
    out = made.transform(0, h, ForwardContext(torch.ones(1, 3, dtype=torch.long), token_roles=torch.tensor([[1, 2, 0]])))
    torch.testing.assert_close(out, h * torch.tensor([0.5, 1.0, 2.0])[None, :, None], rtol=0, atol=0)
    with pytest.raises(UsageError, match="gives no token roles"):
        made.transform(0, h, ForwardContext.every_token(h))
    with pytest.raises(UsageError, match="role vocabulary"):
        ActivScalarRole(Setup(refs, 1))


def test_it_trains_on_its_templates_and_is_scored_on_held_out_ones(tiny_models):
    unit = _unit(tiny_models, folds=2)
    n_roles = len(unit.roles.roles)
    (result,) = train_trials(tiny_models["tiny-llama"], unit, [Hyper(lr=0.2, lambda_min=0.001, seed=3)])
    assert result.ok, result.error
    assert result.n_params == len(LAYERS) * n_roles
    cells = result.scalars
    assert len(cells) == len(LAYERS) * n_roles and all(c["position"] is None for c in cells)
    assert [c["role"] for c in cells[:n_roles]] == list(unit.roles.roles)
    assert any(abs(c["value"] - 1) > 1e-3 for c in cells), "training moved some scalar"
    held = {e.example.template for e in unit.splits["test"].examples if e.example.heldout}
    assert held and held <= {p["template"] for p in result.predictions}  # scored on the held-out template's prompts
    assert result.tensors["alpha"].shape == (len(LAYERS), n_roles)
    # rebuilt from its tensors it is the same function (the analysis and a resumed run rebuild it so)
    rebuilt = ActivScalarRole.from_artifact([SiteRef(i, nn.Identity(), False, None, 8) for i in LAYERS],
                                            {k: torch.as_tensor(v) for k, v in result.tensors.items()})
    assert torch.equal(rebuilt.alphas[0].detach(), torch.as_tensor(result.tensors["alpha"]).float())
    assert rebuilt.roles == unit.roles.roles  # the vocabulary's names travel with the tensors


def test_in_bf16_with_folds_the_training_models_own_splits_carry_the_roles_too(tiny_models):
    """bf16 training: the train split and the check slice come from the training model's own pool (trained_pool),
    which must carry each token's role; the trial trains (its early-stopping checks score the slice) and moves."""
    unit = _unit(tiny_models, folds=2, precision="bf16")
    assert unit.precision == "bf16" and unit.trained_pool is not None and unit.trained_pool.roles is not None
    assert unit.check is not None and unit.check.roles is not None and unit.splits["train"].roles is not None
    (result,) = train_trials(tiny_models["tiny-llama"], unit, [Hyper(lr=0.2, lambda_min=0.001, seed=3)])
    assert result.ok, result.error
    assert any(abs(c["value"] - 1) > 1e-3 for c in result.scalars)


def test_steering_applies_it_by_the_prompts_roles_as_scoring_does(tiny_models):
    """apply_trial with a prompt's roles gives the LD' the trial's test predictions hold for that prompt; without
    roles it is refused by name."""
    loaded = tiny_models["tiny-llama"]
    unit = _unit(tiny_models)
    (result,) = train_trials(loaded, unit, [Hyper(lr=0.2, lambda_min=0.001, seed=3)])
    config = loaded.model.config
    trial = StoredTrial(Path("."), "u-x-t00000", {"method": "activscalar_role", "n_layers": config.num_hidden_layers,
                                                  "d_model": config.hidden_size, "site": "mlp_out",
                                                  "layers": list(LAYERS), "model": "tiny-llama", "task": "ioi"},
                        {k: torch.as_tensor(v) for k, v in result.tensors.items()})
    with pytest.raises(UsageError, match="activscalar_role.*token roles"):
        with apply_trial(loaded.model, trial):
            pass
    test = unit.splits["test"]  # the held-out template's prompts only
    assert any(abs(p["ld_after"] - p["ld_before"]) > 1e-3 for p in result.predictions), "the trial changes nothing"
    for n in (0, len(test) - 1):
        e = test.examples[n]
        with apply_trial(loaded.model, trial, 1.0, roles=e.roles), torch.no_grad():
            z = loaded.model(input_ids=torch.tensor([e.input_ids])).logits[0, -1]  # [V]
        ld_after = float(z[e.answer_a_id] - z[e.answer_b_id])
        assert abs(ld_after - result.predictions[n]["ld_after"]) < 1e-4, (n, ld_after, result.predictions[n])
