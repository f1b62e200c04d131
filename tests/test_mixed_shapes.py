"""Prompts of several shapes: DynScalar's cells are roles, never raw positions, and a split
too small to mean anything is warned about, stored with the unit and marked in the report."""
from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import replace

import pytest
import torch

from orchestrator.cli import main
from orchestrator.coordinator import Coordinator
from search_spaces.config import parse_config
from storage.query import load
from storage.report import heatmap_matrix
from tests.sweeps import tiny_config
from workers.columns import position_columns
from workers.interventions import CellRecorder, CellStats, build_intervention
from workers.prepare import prepare_unit
from workers.scoring import score
from workers.sites import resolve_site
from workers.tasks.base import Example, TaskSpec
from workers.tasks.roles import TokenizedExample
from workers.unit import TrainSettings, UnitSpec

# three templates of three token lengths; "office", "book" and "and#2" are in one template only
TEMPLATES = ["{IO} and {S1} met. {S2} thanked",
             "When {IO} and {S1} went to the office, {S2} gave a book to",
             "Then {IO} and {S1} talked, and {S2} called"]
NAMES = ["Mary", "John", "Tom", "James", "Anna", "David", "Sarah", "Michael", "Paul", "Laura", "Peter", "Kate"]


def write_task(path, per_template: int, seed: int = 0):
    rng = random.Random(seed)
    pairs = [(a, b) for a in NAMES for b in NAMES if a != b]
    rng.shuffle(pairs)
    lines = []
    for t, template in enumerate(TEMPLATES):
        for io, s in pairs[t * per_template:(t + 1) * per_template]:
            lines.append(json.dumps(dict(prompt=template.format(IO=io, S1=s, S2=s), answer_a=" " + io,
                                         answer_b=" " + s, template=template)))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_dynscalar_cells_aggregate_one_role_per_column(tiny_models, tmp_path):
    """Each role column's value is the mean alpha over exactly the val tokens of that role, as
    computed prompt by prompt (one prompt, its own positions) with a random non-trivial DynScalar."""
    loaded = tiny_models["tiny-gpt2"]
    task = write_task(tmp_path / "task.jsonl", per_template=12)
    spec = UnitSpec("tiny-gpt2", TaskSpec.make(str(task)), "mlp_out", (1, 2), "dynscalar",
                    TrainSettings(filter="none", prefix_cache=False, eval_batch=7))
    unit = prepare_unit(loaded, spec)
    val = unit.splits["val"]
    assert len({e.length for e in val.examples}) == 3, "val must mix the three lengths"
    columns, column_ids = unit.cell_columns("val")
    assert all(c.position is None for c in columns) and columns[-1].role == "END"
    refs = resolve_site(loaded.model, spec.site, unit.layers)
    intervention = build_intervention("dynscalar", refs, 1, None)
    with torch.no_grad():
        for w, b in zip(intervention.weights, intervention.biases):
            w.copy_(torch.randn(w.shape, generator=torch.Generator().manual_seed(1)))
            b.copy_(torch.full(b.shape, 0.3))
    recorder = CellRecorder(len(columns))
    score(loaded, intervention, intervention.refs, val, batch_rows=spec.settings.eval_batch, token_columns=column_ids,
          recorder=recorder)
    values, effects = intervention.cells(0, CellStats(recorded=recorder))  # [L, C]
    assert values.shape == (2, len(columns))

    # the same alphas, prompt by prompt, by position, then grouped by each prompt's own roles
    sums: dict[str, torch.Tensor] = {}
    counts: Counter[str] = Counter()
    for n, example in enumerate(val.examples):
        one = replace(val, examples=[example], ids=val.ids[n:n + 1, :example.length], lengths=val.lengths[n:n + 1],
                      a_ids=val.a_ids[n:n + 1], b_ids=val.b_ids[n:n + 1], logits=val.logits[n:n + 1], prefix=None)
        one_prompt = CellRecorder(example.length)  # a column per position of this prompt
        score(loaded, intervention, intervention.refs, one, token_columns=torch.arange(example.length)[None],
              recorder=one_prompt)
        alpha, _ = intervention.cells(0, CellStats(recorded=one_prompt))  # [L, T] of this prompt
        for pos, role in enumerate(example.roles):
            sums[role] = sums.get(role, 0) + alpha[:, pos]
            counts[role] += 1
    for c, column in enumerate(columns):
        assert column.n_prompts == counts[column.role]
        torch.testing.assert_close(values[:, c], sums[column.role] / counts[column.role], rtol=1e-5, atol=1e-6)
    partial = {c.role for c in columns if c.n_prompts < len(val)}
    assert {"office", "book", "and#2"} <= partial and "IO" not in partial and "END" not in partial


def test_fixed_length_methods_label_a_position_by_every_role_it_holds():
    """Templates of one length that hold different words at a position: the label names them all,
    most frequent first; a position holding one role everywhere keeps that role."""
    def tokenized(roles: list[str]) -> TokenizedExample:
        return TokenizedExample(Example("p", " a", " b", "t"), list(range(len(roles))), roles, 1, 2)

    examples = [tokenized(["IO", "met", "S1", "END"])] * 3 + [tokenized(["IO", "saw", "S1", "END"])] \
        + [tokenized(["IO", "heard", "S1", "END"]), tokenized(["IO", "told", "S1", "END"])]
    columns = position_columns(examples, 4)
    assert [c.position for c in columns] == [0, 1, 2, 3]
    assert [c.role for c in columns] == ["IO", "met|saw|heard|...", "S1", "END"]
    assert {c.n_prompts for c in columns} == {6}


@pytest.mark.slow
def test_a_mixed_shape_sweep_reads_by_role_and_warns_of_small_splits(ray_session, tmp_path, capsys):
    # 81 prompts (a quarter would be 20, the default min_split), of which the random model prefers
    # answer a on about half: after the default filter the test split holds fewer than 20
    task = write_task(tmp_path / "task.jsonl", per_template=27)
    config = parse_config(tiny_config(tasks=[{"name": str(task)}], methods=["dynscalar"],
                                      search={"n_trials": 2, "batch": 2}, train={"steps": 3}))
    run = tmp_path / "run"
    Coordinator(config, run).run()

    units, examples = load([run], "units"), load([run], "examples")
    (unit,) = units.itertuples()
    assert unit.min_split == 20 and unit.n_test < 20
    warnings = list(unit.warnings)
    assert any("smaller than min_split=20" in w and f"test {unit.n_test}" in w for w in warnings), warnings
    assert "use a larger task" in " ".join(warnings) and "model prefers b" in " ".join(warnings)
    assert json.loads(unit.counts)["dropped_model_prefers_b"] > 0
    assert "smaller than min_split=20" in (run / "actscale.log").read_text()

    # every DynScalar cell is a role, counted over exactly the val prompts that hold it
    val_roles = [set(r) for r in examples[examples.split == "val"].roles]
    scalars = load([run], "scalars")
    assert scalars.position.isna().all()
    for row in scalars.drop_duplicates(["trial_id", "role"]).itertuples():
        assert row.n_prompts == sum(row.role in roles for roles in val_roles), row.role
    shown = scalars[scalars.trial_id == scalars.trial_id.iloc[0]]
    _, _, labels, axis = heatmap_matrix(shown)
    n_val = len(val_roles)
    assert labels[-1] == f"END ({n_val})" and f"IO ({n_val})" in labels
    assert any(label.startswith("office (") and label.endswith(")*") for label in labels), labels
    assert "not every prompt" in axis

    # status and report: n beside the rates, rates of small splits marked and without an interval
    capsys.readouterr()
    assert main(["status", str(run)]) == 0
    status = capsys.readouterr().out
    assert "n_test" in status and "warnings:" in status and "fewer than the unit's min_split" in status
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert f"(n={unit.n_test})" in summary and "none (n=" in summary and "## Warnings" in summary
    page = (tmp_path / "report" / "index.html").read_text()
    assert 'id="warnings"' in page and "min_split" in page
