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


PRONOUN_TEMPLATES = ["{NAME} stayed home because",
                     "{NAME} went to the office early because",
                     "After the long meeting at work, {NAME} said that"]
NAMES_BY_PRONOUN = {" he": ["John", "David", "Michael", "James", "Robert", "Peter", "Thomas", "Daniel", "Mark", "Paul",
                            "George", "Steven", "Kevin", "Brian", "Edward"],
                    " she": ["Mary", "Sarah", "Anna", "Laura", "Emma", "Alice", "Jessica", "Emily", "Linda", "Susan",
                             "Karen", "Lisa", "Nancy", "Helen", "Rachel"]}


def test_a_mixed_shape_jsonl_task_runs_through_a_sweep_and_reads_by_role(embedded_model, ray_session, tmp_path):
    """Pronoun resolution in three templates of three lengths, DynScalar through `actscale run`:
    the scalars and the report's heatmap are by role (NAME, END, template words with their counts)."""
    from orchestrator.coordinator import Coordinator
    from search_spaces.config import parse_config
    from storage.query import load, run_sql
    from storage.report import heatmap_matrix
    from tests.sweeps import tiny_config

    lines = []
    for template in PRONOUN_TEMPLATES:
        for pronoun, names in NAMES_BY_PRONOUN.items():
            other = " she" if pronoun == " he" else " he"
            lines += [json.dumps(dict(prompt=template.format(NAME=name), answer_a=pronoun, answer_b=other,
                                      template=template, entities=[name])) for name in names]
    task = tmp_path / "pronouns.jsonl"
    task.write_text("\n".join(lines) + "\n")
    config = parse_config(tiny_config(models=["smollm2-135m"], tasks=[{"name": str(task)}], methods=["dynscalar"],
                                      layers=[[8, 12, 16, 20]], search={"n_trials": 2, "batch": 2},
                                      train={"steps": 30, "batch_size": 16}))
    run = tmp_path / "run"
    Coordinator(config, run).run()
    (unit,) = load([run], "units").itertuples()
    val = load([run], "examples").query("split == 'val'")
    assert len({len(r) for r in val.roles}) >= 3, "val must mix prompt shapes (templates, names of 1-2 tokens)"
    scalars = load([run], "scalars")
    assert scalars.position.isna().all() and {"NAME", "END", "office", "meeting"} <= set(scalars.role)
    for row in scalars.drop_duplicates(["trial_id", "role"]).itertuples():
        assert row.n_prompts == sum(row.role in set(r) for r in val.roles), row.role
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    selected = run_sql([run], "SELECT trial_id FROM selected")[0].trial_id.iloc[0]
    _, _, labels, axis = heatmap_matrix(scalars[scalars.trial_id == selected])
    print("roles", labels, "n_val", unit.n_val, "warnings", list(unit.warnings))
    assert f"NAME ({unit.n_val})" in labels and labels[-1] == f"END ({unit.n_val})"
    assert any(label.startswith("office (") and label.endswith("*") for label in labels)
    assert "not every prompt" in axis and list((tmp_path / "report" / "figures").glob("heatmap-*dynscalar*.png"))
