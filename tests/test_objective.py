"""Loss terms and metrics against hand-computed values."""
from __future__ import annotations

import math

import torch

from workers.objective import effectiveness_per_prompt, flipped, kl_other_per_prompt, logit_diff, mass_shift_per_prompt

A, B = torch.tensor([0, 0]), torch.tensor([1, 1])


def test_logit_diff_and_flip_rate():
    before = torch.tensor([[3.0, 1.0, 0.0, 0.0], [2.0, 0.0, 1.0, 0.0]])
    after = torch.tensor([[0.0, 1.0, 0.0, 0.0], [2.5, 0.0, 1.0, 0.0]])
    assert logit_diff(before, A, B).tolist() == [2.0, 2.0]
    ld_before, ld_after = logit_diff(before, A, B), logit_diff(after, A, B)
    assert flipped(ld_after, ld_before).float().mean().item() == 0.5
    assert ld_after.mean().item() == (-1.0 + 2.5) / 2


def test_kl_other_zero_when_only_answers_change():
    before = torch.tensor([[3.0, 1.0, 0.5, -1.0, 2.0]])
    after = before.clone()
    after[0, 0], after[0, 1] = -4.0, 7.0  # answers move, everything else the same
    assert kl_other_per_prompt(before, after, A[:1], B[:1]).item() < 1e-6
    after[0, 2] += 1.0
    assert kl_other_per_prompt(before, after, A[:1], B[:1]).item() > 1e-3


def test_kl_other_matches_definition():
    before = torch.tensor([[0.2, 0.1, 1.0, 2.0, 3.0]])
    after = torch.tensor([[5.0, -3.0, 3.0, 1.0, 0.0]])
    p = torch.softmax(before[0, 2:], 0)
    q = torch.softmax(after[0, 2:], 0)
    expected = float((p * (p.log() - q.log())).sum())
    assert math.isclose(kl_other_per_prompt(before, after, A[:1], B[:1]).item(), expected, rel_tol=1e-5)


def test_effectiveness_is_smallest_at_the_exact_swap():
    ld_before = torch.tensor([2.0])
    grid = torch.linspace(-6, 6, 241)
    losses = torch.stack([effectiveness_per_prompt(torch.tensor([x]), ld_before)[0] for x in grid])
    assert math.isclose(grid[losses.argmin()].item(), -2.0, abs_tol=0.06)


def test_mass_shift():
    before = torch.zeros(1, 4)
    after = torch.tensor([[10.0, 10.0, 0.0, 0.0]])
    assert math.isclose(mass_shift_per_prompt(before, after, A[:1], B[:1]).item(), 1.0 - 0.5, abs_tol=1e-3)


def test_flip_is_a_change_of_sign_not_a_negative_ld():
    from workers.objective import flipped

    before = torch.tensor([2.0, -1.0, -3.0, 1.0])  # the model prefers b on prompts 1 and 2
    after = torch.tensor([-1.0, 2.0, -0.5, 0.5])
    assert flipped(after, before).tolist() == [True, True, False, False]
    # a prompt the model already got "wrong" and left alone is not a flip
    logits_before = torch.tensor([[0.0, 3.0, 0.0], [3.0, 0.0, 0.0]])  # LD = -3, +3
    logits_after = logits_before.clone()
    ld_before, ld_after = logit_diff(logits_before, A, B), logit_diff(logits_after, A, B)
    assert not flipped(ld_after, ld_before).any()


def test_an_untrained_intervention_flips_nothing_even_where_the_model_prefers_b(tiny_models):
    """With filter: none, about half the prompts start with LD < 0; leaving them alone is not a flip."""
    from workers.prepare import prepare_unit
    from workers.tasks.base import TaskSpec
    from workers.trainer import train_trials
    from workers.unit import Hyper, TrainSettings, UnitSpec

    loaded = tiny_models["tiny-llama"]
    spec = UnitSpec("tiny-llama", TaskSpec.make("ioi", {"n": 40}), "mlp_out", "all", "activscalar",
                    TrainSettings(steps=1, filter="none"))
    unit = prepare_unit(loaded, spec)
    assert (unit.splits["test"].ld < 0).any() and (unit.splits["test"].ld > 0).any()
    outcome = train_trials(loaded, unit, [Hyper(lr=1e-12)])[0]  # parameters stay (almost exactly) at identity
    assert outcome.metrics["test"]["flip_rate"] == 0.0 and outcome.metrics["val"]["flip_rate"] == 0.0
    assert not any(p["flipped"] for p in outcome.predictions)
    assert outcome.sites_moved == 0 and outcome.sites_total == outcome.n_params
