"""The difference-in-means baseline (`diffmeans`: h <- h + c v, v the train split's mean difference
counterfactual - prompt per cell, one learned c per trial): the identity at c = 0, c its only parameter,
the direction as computed by hand, strength beta on c, a clear error without counterfactuals, and a real
tiny sweep that trains and analyses it."""
from __future__ import annotations

import json

import pytest
import torch

from orchestrator.coordinator import Coordinator
from orchestrator.steering import load_trial
from search_spaces.config import parse_config
from storage import open_runs
from tests.sweeps import check_run, tiny_config
from workers.directions import mean_difference
from workers.errors import UsageError
from workers.forward import attention_mask, last_token_logits, pad_batch
from workers.interventions import CellStats, DiffMeans, Setup, build_intervention, installed
from workers.objective import logit_diff
from workers.prepare import prepare_unit
from workers.sites import resolve_site
from workers.steer import apply_trial
from workers.tasks.base import TaskSpec
from workers.trainer import train_trials
from workers.unit import Hyper, TrainSettings, UnitSpec


def _unit(loaded, model: str, site: str = "resid_post", layers=(0, 1, 2), task: TaskSpec | None = None):
    spec = UnitSpec(model, task or TaskSpec.make("ioi", {"n": 60}), site, layers, "diffmeans",
                    TrainSettings(steps=10, batch_size=8, filter="none", precision="fp32"))
    return prepare_unit(loaded, spec)


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama"])
def test_the_direction_is_the_mean_difference_computed_by_hand(tiny_models, model):
    """resid_post of layer l is hidden_states[l + 1] of the model's own forward (the last layers' aside: some
    architectures normalise the last one)."""
    loaded = tiny_models[model]
    unit = _unit(loaded, model)
    train = unit.splits["train"]
    refs = resolve_site(loaded.model, "resid_post", unit.layers)
    direction = mean_difference(loaded, refs, train, 7, "ioi", model)  # [L, T, W], in chunks of 7 prompts
    has = train.has_counterfactual
    assert has.sum() > 5
    ids, cf = train.ids[has], train.counterfactual_ids(loaded.tokenizer.pad_token_id)[has]
    mask = attention_mask(ids, train.lengths[has])
    with torch.no_grad():
        h = loaded.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        h_cf = loaded.model(input_ids=cf, attention_mask=mask, output_hidden_states=True).hidden_states
    by_hand = torch.stack([(h_cf[layer + 1] - h[layer + 1]).mean(0) for layer in unit.layers])  # [L, T, W]
    assert direction.shape == by_hand.shape == (3, unit.n_positions, loaded.d_model)
    torch.testing.assert_close(direction, by_hand, rtol=1e-4, atol=1e-5)
    assert direction.abs().sum() > 0


def test_at_c_zero_the_model_is_unchanged_and_c_is_the_only_parameter(tiny_models):
    loaded = tiny_models["tiny-llama"]
    unit = _unit(loaded, "tiny-llama", "mlp_out", (1, 2, 3))
    refs = resolve_site(loaded.model, "mlp_out", unit.layers)
    direction = torch.randn(3, unit.n_positions, loaded.d_model)
    made = build_intervention("diffmeans", refs, 3, unit.n_positions, direction)
    assert made.n_params == 1 and [p.shape for p in made.parameters()] == [torch.Size([])] * 3
    assert not made.direction.requires_grad and "direction" in dict(made.named_buffers())
    split = unit.splits["val"]
    with torch.no_grad():
        base = last_token_logits(loaded, split.ids, split.lengths)
        with installed(made):
            at_zero = last_token_logits(loaded, split.ids.repeat(3, 1), split.lengths.repeat(3))
        with torch.no_grad():
            made.scales[1].fill_(0.5)
        with installed(made):
            moved = last_token_logits(loaded, split.ids.repeat(3, 1), split.lengths.repeat(3))
    n = len(split)
    assert torch.equal(at_zero, base.repeat(3, 1)), "c = 0 is the model itself, bit for bit"
    assert torch.equal(moved[:n], base) and not torch.equal(moved[n:2 * n], base)
    torch.testing.assert_close(made.minimality(None), torch.tensor([0.0, 0.5, 0.0]) * direction.abs().sum())


def test_cells_strength_and_heads(tiny_models):
    loaded = tiny_models["tiny-llama"]
    unit = _unit(loaded, "tiny-llama", "head", (1, 2))
    refs = resolve_site(loaded.model, "head", unit.layers)
    v = torch.randn(2, unit.n_positions, refs[0].width)
    made = DiffMeans(Setup(refs, 1, unit.n_positions, v))
    with torch.no_grad():
        made.scales[0].fill_(-2.0)
    norms = torch.ones(2, unit.n_positions, refs[0].n_heads)
    value, effect = made.cells(0, CellStats(norms))
    slices = v.reshape(2, unit.n_positions, refs[0].n_heads, -1)  # each head's slice of v
    torch.testing.assert_close(value, 2.0 * slices.norm(dim=-1))
    torch.testing.assert_close(effect, value)
    tensors = made.artifact_tensors(0)
    half = DiffMeans.from_artifact(refs, tensors, 0.5)
    assert float(half.scales[0].detach()) == -1.0 and torch.equal(half.direction, v)  # c' = beta c, v as estimated
    assert float(DiffMeans.from_artifact(refs, tensors, 0.0).scales[0].detach()) == 0.0
    with pytest.raises(UsageError, match="needs the train split's difference-in-means direction"):
        DiffMeans(Setup(refs, 1, unit.n_positions))


def test_training_learns_c_and_proximal_keeps_it_exactly_zero_when_heavy(tiny_models):
    loaded = tiny_models["tiny-llama"]
    unit = _unit(loaded, "tiny-llama", "mlp_out", (1, 2, 3))
    (trained,) = train_trials(loaded, unit, [Hyper(lr=0.1, lambda_min=1e-6, seed=0)])
    assert trained.ok and trained.n_params == 1 and float(trained.tensors["scale"][0]) != 0.0
    assert set(trained.tensors) == {"scale", "direction"}
    heavy_unit = prepare_unit(loaded, UnitSpec("tiny-llama", TaskSpec.make("ioi", {"n": 60}), "mlp_out", (1, 2, 3),
                                               "diffmeans", TrainSettings(steps=10, batch_size=8, filter="none",
                                                                          precision="fp32", l1="proximal")))
    (heavy,) = train_trials(loaded, heavy_unit, [Hyper(lr=0.1, lambda_min=10.0, seed=0)])
    assert float(heavy.tensors["scale"][0]) == 0.0 and heavy.sites_moved == 0


def test_a_task_without_counterfactuals_is_refused_by_name(tiny_models, tmp_path):
    rows = [dict(prompt=f"When Mary and John went to the store, John gave a {o} to", answer_a=" Mary",
                 answer_b=" John", template="t", entities=[o]) for o in ["drink", "book", "ball", "ring", "bag", "key",
                                                                         "cup", "pen", "hat", "box", "map", "car"]]
    path = tmp_path / "plain.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = tiny_models["tiny-gpt2"]
    unit = _unit(loaded, "tiny-gpt2", "mlp_out", "all", TaskSpec.make(str(path)))
    with pytest.raises(UsageError, match=r"task '.*plain.jsonl' has none .* field 'counterfactual'"):
        train_trials(loaded, unit, [Hyper()])


@pytest.mark.slow
def test_a_tiny_sweep_trains_analyses_and_steers_with_diffmeans(tmp_path, ray_session, tiny_models):
    config = parse_config(tiny_config(methods=["diffmeans", "steervec"], search={"n_trials": 2, "batch": 2},
                                      train={"steps": 6, "batch_size": 8}, analysis={"betas": [0.0, 1.0, 2.0]}))
    run = tmp_path / "run"
    Coordinator(config, run).run()
    check_run(run, n_trials=2, n_units=2)  # includes the curves of each selected trial
    runs = open_runs(run)
    units = runs.units.set_index("method")
    assert units.loc["diffmeans", "moved_measure"].endswith("(v estimated, not learned)")
    assert units.loc["diffmeans", "value_identity"] == 0.0
    trials = runs.trials.merge(runs.units[["unit_id", "method"]], on="unit_id")
    assert set(trials.query("method == 'diffmeans'").n_params) == {1}
    curves = runs.curves.merge(runs.units[["unit_id", "method"]], on="unit_id").query("method == 'diffmeans'")
    zero = curves.query("kind == 'strength' and beta == 0.0 and split == 'test'")  # val: the sufficiency curve only
    assert len(zero) == 1 and zero.flip_rate.iloc[0] == 0.0  # beta = 0: c' = 0, the model itself
    # `actscale steer`'s path: the stored trial at beta 1 gives its stored test predictions
    chosen = runs.selected().query("method == 'diffmeans'").iloc[0]
    examples = runs.examples.query(f"unit_id == '{chosen.unit_id}' and split == 'test'").sort_values("index")
    loaded = tiny_models["tiny-gpt2"]
    ids, lengths = pad_batch([loaded.tokenizer(p)["input_ids"] for p in examples.prompt], loaded.tokenizer.pad_token_id)
    a, b = ([loaded.tokenizer(x, add_special_tokens=False)["input_ids"][0] for x in answers]
            for answers in (examples.answer_a, examples.answer_b))
    with torch.no_grad(), apply_trial(loaded.model, load_trial(run, chosen.trial_id), beta=1.0):
        at_one = last_token_logits(loaded, ids, lengths)
    stored = runs.predictions.query(f"trial_id == '{chosen.trial_id}'").sort_values("index")
    torch.testing.assert_close(logit_diff(at_one, torch.tensor(a), torch.tensor(b)),
                               torch.tensor(stored.ld_after.to_numpy(), dtype=torch.float32), rtol=1e-4, atol=1e-4)
