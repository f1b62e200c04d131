"""Cross-fitted folds (workers/splits.py assign_folds, PreparedUnit.for_fold), the per-trial measures a verdict
needs (ld_shift, top1_b, n_test, clusters), and that units of one split keep their ids and their numbers."""
from __future__ import annotations

import random

import pytest
import torch

from orchestrator.plan import unit_id
from workers.errors import UsageError
from workers.objective import normalised_shift
from workers.prepare import prepare_unit
from workers.scoring import is_top1
from workers.splits import assign_folds, assign_splits
from workers.tasks.base import Example, TaskSpec
from workers.trainer import train_trials
from workers.unit import Hyper, TrainSettings, UnitSpec

SPLITS = ("train", "val", "test")


def _pairs(n_entities: int, n: int, seed: int = 0, heldout_share: float = 0.0) -> list[Example]:
    """ccc-like examples: two entities each (the asked one first), some of them held out."""
    rng = random.Random(seed)
    names = [f"c{i}" for i in range(n_entities)]
    out = []
    for i, (a, b) in enumerate(rng.sample([(a, b) for a in names for b in names if a != b], n)):
        out.append(Example(prompt=f"p{i} {a} {b}", answer_a=" x", answer_b=" y", template="t",
                           heldout=rng.random() < heldout_share, entities=(a, b)))
    return out


def _entities(examples: list[Example], indices: list[int]) -> set[str]:
    return {k for i in indices for k in examples[i].split_keys}


@pytest.mark.parametrize("k", [2, 3, 5])
def test_every_entity_is_tested_in_exactly_one_fold_and_never_trained_on_there(k):
    examples = _pairs(30, 600)
    folds = assign_folds(examples, range(len(examples)), k, (0.5, 0.25, 0.25), seed=4)
    assert len(folds) == k
    tested = [_entities(examples, f.parts["test"]) for f in folds]
    assert set().union(*tested) == _entities(examples, list(range(len(examples))))  # every entity tested ...
    assert sum(map(len, tested)) == 30  # ... exactly once
    for fold, test in zip(folds, tested):
        train, val = (_entities(examples, fold.parts[s]) for s in ("train", "val"))
        assert not test & (train | val) and not train & val  # whole entities: no entity in two splits
        placed = [i for s in SPLITS for i in fold.parts[s]]
        assert len(placed) == len(set(placed)) and len(placed) + fold.dropped == len(examples)
        # an example is dropped only when its entities straddle this fold's splits
        homes = {k: s for s in SPLITS for k in _entities(examples, fold.parts[s])}
        for i in set(range(len(examples))) - set(placed):
            assert len({homes.get(key, "none") for key in examples[i].split_keys}) > 1 or \
                any(key not in homes for key in examples[i].split_keys)
    # the same data seed, the same folds; another seed, others
    again = assign_folds(examples, range(len(examples)), k, (0.5, 0.25, 0.25), seed=4)
    assert [f.parts for f in again] == [f.parts for f in folds]
    assert [f.parts for f in assign_folds(examples, range(len(examples)), k, (0.5, 0.25, 0.25), seed=5)] != \
        [f.parts for f in folds]


def test_folds_test_every_heldout_entity_once_on_heldout_examples_only():
    """IOI-like: one entity (a name pair) per prompt, a held-out template for the test."""
    rng = random.Random(2)
    examples = [Example(prompt=f"p{i}", answer_a=" x", answer_b=" y", template=t, heldout=t == "long",
                        entities=(f"pair{rng.randrange(25)}",)) for i in range(300) for t in ("short", "long")]
    folds = assign_folds(examples, range(len(examples)), 4, (0.5, 0.25, 0.25), seed=1)
    heldout = {k for e in examples if e.heldout for k in e.split_keys}
    tested = [_entities(examples, f.parts["test"]) for f in folds]
    assert sum(map(len, tested)) == len(set().union(*tested)) == len(heldout)
    for fold in folds:
        assert all(examples[i].heldout for i in fold.parts["test"])
        assert not any(examples[i].heldout for s in ("train", "val") for i in fold.parts[s])


def test_more_folds_than_entities_is_refused():
    examples = _pairs(4, 12)
    with pytest.raises(UsageError, match=r"train.folds=5 but the task has only 4 entities to test"):
        assign_folds(examples, range(len(examples)), 5, (0.5, 0.25, 0.25), seed=0)


def test_fold_and_single_split_count_the_same_kind_of_loss():
    """With two entities per prompt a fold drops about what the single split drops, but its folds together test
    every entity (the single split: about a quarter of them)."""
    examples = _pairs(40, 800)
    parts, dropped = assign_splits(examples, range(len(examples)), (0.5, 0.25, 0.25), seed=0)
    folds = assign_folds(examples, range(len(examples)), 5, (0.5, 0.25, 0.25), seed=0)
    single_tested = _entities(examples, parts["test"])
    pooled = sum(len(f.parts["test"]) for f in folds)
    assert len(single_tested) <= 15 and sum(len(_entities(examples, f.parts["test"])) for f in folds) == 40
    assert pooled >= 2 * len(parts["test"])


def test_unit_of_one_split_keeps_its_id():
    """train.folds is left out of the unit id at its default: ids of sweeps stored before folds hold."""
    spec = UnitSpec("tiny-gpt2", TaskSpec.make("ioi", {"n": 20}), "mlp_out", "all", "activscalar",
                    TrainSettings(steps=3, batch_size=8))
    assert "folds" not in spec.settings.to_dict()
    assert unit_id(spec) == "u-af9660bbd94e"  # computed by the code before folds existed (main 55d332b)
    folded = UnitSpec(spec.model, spec.task, spec.site, spec.layers, spec.method,
                      TrainSettings(steps=3, batch_size=8, folds=3))
    assert folded.settings.to_dict()["folds"] == 3 and unit_id(folded) != unit_id(spec)


def test_ld_shift_is_one_for_the_full_swap_and_zero_for_no_change():
    ld = torch.tensor([2.0, -1.5, 0.5])
    assert torch.equal(normalised_shift(-ld, ld), torch.ones(3))
    assert torch.equal(normalised_shift(ld, ld), torch.zeros(3))
    assert torch.allclose(normalised_shift(torch.zeros(3), ld), torch.full((3,), 0.5))  # half way: no preference


def test_top1_b_is_the_top_token_of_the_whole_vocabulary():
    logits = torch.tensor([[[0.0, 5.0, 1.0, 2.0],   # b = 1 on top
                            [0.0, 2.0, 1.0, 3.0]]])  # b = 1 beats a = 2, but token 3 is on top: not top-1
    b = torch.tensor([[1, 1]])
    assert is_top1(logits, b).tolist() == [[True, False]]


def _folded_unit(tiny_models, method: str = "activscalar", **settings):
    spec = UnitSpec("tiny-llama", TaskSpec.make("ioi", {"n": 40}), "mlp_out", "all", method,
                    TrainSettings(steps=4, batch_size=8, filter="none", precision="fp32", folds=3, **settings))
    return prepare_unit(tiny_models["tiny-llama"], spec)


def test_a_folded_unit_keeps_one_pool_and_each_fold_indexes_it(tiny_models):
    unit = _folded_unit(tiny_models, patience=2)
    pool = unit.pool
    assert pool is not None and unit.fold == 0 and len(unit.folds) == 3
    for f in range(3):
        view = unit.for_fold(f)
        assert view.pool is pool and view.fold == f  # the same pool, not a copy per fold
        for split in SPLITS:
            rows = unit.folds[f][split]
            data = view.splits[split]
            assert [e.example.prompt for e in data.examples] == [pool.examples[i].example.prompt for i in rows]
            assert torch.equal(data.logits, pool.logits[rows]) and view.row_index(split) == rows
        assert view.check is not None and [e.example.prompt for e in view.check.examples] == \
            [e.example.prompt for e in view.splits["val"].examples[: len(view.check)]]
        test = {k for i in unit.folds[f]["test"] for k in pool.examples[i].example.split_keys}
        seen = {k for s in ("train", "val") for i in unit.folds[f][s] for k in pool.examples[i].example.split_keys}
        assert test and not test & seen
        assert unit.counts[f"fold{f}_test"] == len(unit.folds[f]["test"])
    assert unit.counts["pooled_test"] == sum(len(f["test"]) for f in unit.folds) == len(pool)  # one entity each
    with pytest.raises(UsageError, match="fold 3 asked"):
        unit.for_fold(3)


@pytest.mark.parametrize("method", ["activscalar", "steervec", "dynscalar"])
def test_trials_of_different_folds_in_one_forward_equal_each_trained_alone(tiny_models, method):
    unit = _folded_unit(tiny_models, method, patience=2, check_every=2)
    loaded = tiny_models["tiny-llama"]
    hypers = [Hyper(lr=0.1, seed=1), Hyper(lr=0.05, seed=2, fold=1), Hyper(lr=0.2, lambda_min=0.001, seed=3, fold=2)]
    together = train_trials(loaded, unit, hypers)
    for hyper, trial in zip(hypers, together):
        alone = train_trials(loaded, unit, [hyper])[0]
        assert trial.ok and alone.ok and trial.steps == alone.steps
        for split in ("val", "test"):
            for metric, value in alone.metrics[split].items():
                assert abs(trial.metrics[split][metric] - value) <= 1e-4 * max(1.0, abs(value)), (split, metric)
        fold = hyper.fold or 0
        test = unit.folds[fold]["test"]
        assert trial.fold == fold and [p["index"] for p in trial.predictions] == test  # its own fold's test
        assert all(p["fold"] == fold for p in trial.predictions) and trial.n_test == len(test)
        clusters = {unit.pool.examples[i].example.entities[0] for i in test}
        assert {p["cluster"] for p in trial.predictions} == clusters and trial.n_test_clusters == len(clusters)
        after = torch.tensor([p["ld_after"] for p in trial.predictions])
        torch.testing.assert_close(after, torch.tensor([p["ld_after"] for p in alone.predictions]), atol=1e-4, rtol=0)


def test_one_split_trials_carry_clusters_and_no_fold(tiny_models):
    spec = UnitSpec("tiny-llama", TaskSpec.make("ccc", {"n": 60}), "mlp_out", "all", "activscalar",
                    TrainSettings(steps=2, batch_size=8, filter="none"))
    unit = prepare_unit(tiny_models["tiny-llama"], spec)
    (result,) = train_trials(tiny_models["tiny-llama"], unit, [Hyper()])
    test = unit.splits["test"].examples
    assert unit.pool is None and result.fold is None and unit.n_folds == 1
    assert [p["index"] for p in result.predictions] == list(range(len(test)))
    assert [p["cluster"] for p in result.predictions] == [e.example.entities[0] for e in test]  # the asked country
    assert {p["template"] for p in result.predictions} == {e.example.template for e in test}
    assert 0 <= result.metrics["test"]["top1_b"] <= 1 and result.n_test == len(test)


def test_abba_and_baba_templates_mix_in_one_fixed_length_unit(tiny_models):
    """An ABBA template and its BABA twin have one token length: a fixed-length unit keeps both, and a position
    column is labelled by the roles it holds in either."""
    spec = UnitSpec("tiny-llama", TaskSpec.make("ioi", {"n": 20, "templates": ["when", "when_baba", "after",
                                                                                "after_baba"]}),
                    "mlp_out", "all", "activscalar", TrainSettings(filter="none", folds=3))
    unit = prepare_unit(tiny_models["tiny-llama"], spec)
    assert unit.counts["dropped_other_length"] == 0 and unit.counts["pooled_test"] == 80
    roles = [c.role for c in unit.cell_columns("val")[0]]
    assert {"IO|S1", "S1|IO"} <= set(roles) and "S2" in roles


@pytest.mark.slow
def test_folds_on_the_embedded_model_test_every_country_and_enough_ioi_prompts(embedded_model):
    """SmolLM2-135M: ccc with K = 5 tests all 40 countries (8 a fold) where the single split tests 10, on three
    times its test prompts, keeping about as many prompts per fold; ioi's pooled test passes 100 prompts at
    n = 40 per template; city_country's default template keeps every city at one token length."""
    def unit(task: str, options: dict, folds: int):
        spec = UnitSpec("smollm2-135m", TaskSpec.make(task, options), "mlp_out", "all", "activscalar",
                        TrainSettings(folds=folds))
        return prepare_unit(embedded_model, spec)

    def countries(u, rows) -> set[str]:
        return {k for i in rows for k in u.pool.examples[i].example.entities}

    single, folded = unit("ccc", {}, 1), unit("ccc", {}, 5)
    single_kept = sum(map(len, single.splits.values()))
    single_test = {k for e in single.splits["test"].examples for k in e.example.entities}
    assert len(single_test) == 10 and len(single.splits["test"]) == 39 and single_kept == 242  # measured
    per_fold = [countries(folded, f["test"]) for f in folded.folds]
    assert [len(c) for c in per_fold] == [8] * 5 and len(set().union(*per_fold)) == 40
    assert folded.counts["pooled_test"] >= 3 * len(single.splits["test"])
    assert all(sum(map(len, f.values())) >= 0.9 * single_kept for f in folded.folds)
    assert len(folded.pool) >= 2.5 * single_kept  # prompts some fold uses
    ioi = unit("ioi", {"n": 40}, 5)
    assert ioi.counts["pooled_test"] == 120 >= 100
    city = unit("city_country", {}, 1)
    assert city.counts["dropped_other_length"] == 0 and city.counts["total"] == 40


def test_rows_of_trials_gathered_from_splits_of_other_widths_line_up():
    """A batch gathers each trial's rows from its fold's train split, whose padded width may be narrower than the
    batch's longest prompt: narrower rows are right-padded (ids with the pad id, prefix states with zeros)."""
    from workers.trainer import _gathered

    ids = _gathered([torch.ones(2, 3, dtype=torch.long), torch.full((1, 5), 7)], width=4, pad=0)
    assert ids.tolist() == [[1, 1, 1, 0], [1, 1, 1, 0], [7, 7, 7, 7]]
    states = _gathered([torch.ones(1, 2, 3), torch.ones(1, 4, 3)], width=4)  # [B, T, d]
    assert states.shape == (2, 4, 3) and states[0, 2:].abs().sum() == 0 and states[1].sum() == 12
