"""Data accounting is loud (issue #30): a unit that drops more than a small share of its task's
prompts warns, once, with the count per reason and what would keep them; `actscale tasks FILE
--model M` prints the same before a sweep starts; a sweep logs it and `status` and the report list it."""
from __future__ import annotations

import json
import random

import pytest

from orchestrator.cli import main
from workers.prepare import prepare_unit
from workers.tasks.base import TaskSpec
from workers.unit import TrainSettings, UnitSpec

NAMES = ["Mary", "John", "Tom", "James", "Anna", "David", "Sarah", "Michael", "Paul", "Laura", "Peter", "Kate"]
WARN_SHARE = 0.1  # workers.prepare.DROP_WARN_SHARE: more than this share dropped is warned about
# the task: three templates, the third a token longer than the others for the tiny tokenizer
TEMPLATES = ["When {IO} and {S1} went to the store, {S2} gave a drink to",
             "After {IO} and {S1} went to the store, {S2} gave a drink to",
             "When {IO} and {S1} went to the store together, {S2} gave a drink to"]


def ioi_rows(per_template: int, templates=tuple(TEMPLATES), seed: int = 0) -> list[dict]:
    pairs = [(a, b) for a in NAMES for b in NAMES if a != b]
    random.Random(seed).shuffle(pairs)
    return [dict(prompt=template.format(IO=io, S1=s, S2=s), answer_a=" " + io, answer_b=" " + s, template=template)
            for t, template in enumerate(templates) for io, s in pairs[t * per_template:(t + 1) * per_template]]


def write_task(path, rows: list[dict]):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prepared(tiny_models, path, method: str = "activscalar", filter: str = "none", model: str = "tiny-gpt2"):
    spec = UnitSpec(model, TaskSpec.make(str(path)), "mlp_out", "all", method, TrainSettings(filter=filter))
    return prepare_unit(tiny_models[model], spec)


def drop_warning(unit) -> str:
    found = [w for w in unit.warnings if w.startswith("dropped ")]
    assert len(found) == 1, unit.warnings  # one warning per unit, every reason in it
    return found[0]


def test_other_length_names_the_lengths_per_template_and_the_three_remedies(tiny_models, tmp_path):
    tok = tiny_models["tiny-gpt2"].tokenizer
    lengths = [len(tok(t.format(IO="Mary", S1="John", S2="John"))["input_ids"]) for t in TEMPLATES]
    assert lengths[0] == lengths[1] == lengths[2] - 1  # the shape: one template a token longer
    path = write_task(tmp_path / "sva.jsonl", ioi_rows(40))
    unit = prepared(tiny_models, path)
    assert unit.counts["dropped_other_length"] == 40 and unit.n_positions == lengths[0]
    warning = drop_warning(unit)
    assert warning.startswith("dropped 40 of 120 prompts (33%; warned above 10%)"), warning
    assert "(1) 40 other length: 'activscalar' has one parameter per position" in warning
    assert f"{TEMPLATES[2]!r}: {lengths[2]} tokens (40)" in warning and f"{TEMPLATES[0]!r}: {lengths[0]} tokens (40)" in warning
    # what would keep them: one length per unit, a method for any length, the file split by template
    assert "prompts of one length per unit" in warning and "a method for any length (dynscalar" in warning
    assert "the file split by template" in warning
    # a method for any length keeps every prompt: nothing to warn of
    assert not any(w.startswith("dropped ") for w in prepared(tiny_models, path, method="dynscalar").warnings)


def test_answers_that_are_not_one_token_are_named(tiny_models, tmp_path):
    rows = ioi_rows(40, templates=TEMPLATES[:1])
    for row in rows[:8]:
        row["answer_a"] = " Zebedee"  # seven tokens for the tiny tokenizer
    rows[8]["answer_b"] = rows[8]["answer_a"]  # both answers the same token
    unit = prepared(tiny_models, write_task(tmp_path / "answers.jsonl", rows))
    assert unit.counts["dropped_not_single_token_answer"] == 9
    warning = drop_warning(unit)
    assert "(1) 9 not single token answer: ' Zebedee' (7 tokens)" in warning, warning
    assert f"{rows[8]['answer_a']!r} and {rows[8]['answer_a']!r} (the same token)" in warning
    assert "use answers that are one token for 'tiny-gpt2''s tokenizer" in warning


def test_repeated_prompts_are_counted_and_the_remedy_named(tiny_models, tmp_path):
    rows = ioi_rows(12, templates=TEMPLATES[:1]) * 2
    unit = prepared(tiny_models, write_task(tmp_path / "repeats.jsonl", rows))
    assert unit.counts["dropped_duplicate_prompt"] == 12
    warning = drop_warning(unit)
    assert "dropped 12 of 24 prompts (50%" in warning and "(1) 12 duplicate prompt:" in warning
    assert "remove the repeats" in warning


def test_prompts_the_model_gets_wrong_point_to_filter_none(tiny_models, tmp_path):
    path = write_task(tmp_path / "ioi.jsonl", ioi_rows(60, templates=TEMPLATES[:1]))
    unit = prepared(tiny_models, path, filter="model_prefers_a")
    dropped = unit.counts["dropped_model_prefers_b"]
    assert dropped > WARN_SHARE * 60  # a random model prefers b on about half
    warning = drop_warning(unit)
    assert f"{dropped} model prefers b: the model ranks answer b above a" in warning
    assert f"base accuracy {unit.base_accuracy:.0%}" in warning and "train: {filter: none}" in warning
    assert not any(w.startswith("dropped ") for w in prepared(tiny_models, path, filter="none").warnings)


def test_prompts_whose_entities_straddle_splits_point_to_fewer_entities(tiny_models, tmp_path):
    rows = ioi_rows(60, templates=TEMPLATES[:1])
    for n, row in enumerate(rows):  # every other prompt is about both names: many of those straddle two splits
        io, s = row["answer_a"].strip(), row["answer_b"].strip()
        row["entities"] = [io, s] if n % 2 else [io]
    unit = prepared(tiny_models, write_task(tmp_path / "entities.jsonl", rows))
    dropped = unit.counts["dropped_entity_across_splits"]
    assert dropped > WARN_SHARE * 60
    warning = drop_warning(unit)
    assert f"{dropped} entity across splits: prompts whose entities landed in different splits" in warning
    assert "fewer entities per prompt" in warning


def test_a_small_share_dropped_is_counted_but_not_warned(tiny_models, tmp_path):
    rows = ioi_rows(40, templates=TEMPLATES[:1])
    unit = prepared(tiny_models, write_task(tmp_path / "few.jsonl", rows + rows[:4]))  # 4 of 44: 9%
    assert unit.counts["dropped_duplicate_prompt"] == 4
    assert not any(w.startswith("dropped ") for w in unit.warnings), unit.warnings


def test_tasks_command_prints_the_accounting_before_a_sweep(tmp_path, capsys):
    path = write_task(tmp_path / "sva.jsonl", ioi_rows(40))
    assert main(["tasks", str(path), "--model", "tiny-gpt2", "--filter", "none"]) == 0
    out = capsys.readouterr().out
    assert "prompts: 120, kept train 40, val 20, test 20" in out, out
    assert "  other length                 40" in out and "  duplicate prompt              0" in out
    longer = next(line for line in out.splitlines() if line.startswith(f"  {TEMPLATES[2]}"))
    assert longer.split()[-4:] == ["40", "0", "0", "0"]  # given 40, none kept in train, val or test
    assert "warnings a sweep would log for this unit" in out and "  - dropped 40 of 120 prompts" in out
    assert main(["tasks", str(path), "--model", "tiny-gpt2", "--method", "dynscalar", "--filter", "none"]) == 0
    out = capsys.readouterr().out
    assert "other length" not in out and "(any token length" in out
    # below the warned share: the counts, each with what was dropped and what would keep it, and no drop warning
    rows = ioi_rows(40, templates=TEMPLATES[:1])
    few = write_task(tmp_path / "few.jsonl", rows + rows[:4])
    assert main(["tasks", str(few), "--model", "tiny-gpt2", "--filter", "none"]) == 0
    out = capsys.readouterr().out
    assert "  duplicate prompt              4" in out and "a prompt repeated in the task is kept once" in out and "- dropped " not in out
    assert main(["tasks", str(path)]) == 2
    assert "give --model MODEL" in capsys.readouterr().err
    assert main(["tasks", "--model", "tiny-gpt2"]) == 2
    assert main(["tasks"]) == 0 and "city_country" in capsys.readouterr().out


@pytest.mark.slow
def test_a_sweep_logs_the_drops_once_per_unit_and_status_and_report_list_them(ray_session, tmp_path, capsys):
    from orchestrator.coordinator import Coordinator
    from search_spaces.config import parse_config
    from tests.sweeps import tiny_config

    path = write_task(tmp_path / "sva.jsonl", ioi_rows(40))
    config = parse_config(tiny_config(tasks=[{"name": str(path)}], methods=["activscalar", "steervec"],
                                      search={"n_trials": 2, "batch": 2}, train={"steps": 2, "filter": "none"}))
    run = tmp_path / "run"
    Coordinator(config, run).run()
    log = [line for line in (run / "actscale.log").read_text().splitlines() if "dropped 40 of 120 prompts" in line]
    assert len(log) == 2 and all("40 other length" in line for line in log), log  # once per unit
    capsys.readouterr()
    assert main(["status", str(run)]) == 0
    status = capsys.readouterr().out
    assert status.count("dropped 40 of 120 prompts") == 2
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    assert "dropped 40 of 120 prompts" in (tmp_path / "report" / "summary.md").read_text()
