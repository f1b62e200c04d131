"""Built-in tasks, roles, JSONL loading, filters and splits."""
from __future__ import annotations

import json

import pytest

from workers.errors import UsageError
from workers.prepare import prepare_unit
from workers.tasks.base import TaskSpec, load_examples, load_jsonl
from workers.tasks.roles import token_roles, tokenize_examples
from workers.unit import TrainSettings, UnitSpec


def test_ioi_roles_for_a_tokenizer(tiny_models):
    tok = tiny_models["tiny-gpt2"].tokenizer
    examples = load_examples(TaskSpec.make("ioi", {"templates": ["when"], "n": 5}), seed=1)
    kept, dropped = tokenize_examples(examples, tok)
    assert not dropped
    roles = kept[0].roles
    assert roles[:4] == ["When", "IO", "and", "S1"]
    assert "S2" in roles and roles[-1] == "END"
    assert tok.decode([kept[0].answer_a_id]) == examples[0].answer_a


def test_roles_of_repeated_and_split_words():
    prompt = "The capital of France is Paris. Q: What is the capital of France? A:"
    template = "The capital of {COUNTRY} is {CITY}. Q: What is the capital of {COUNTRY_Q}? A:"
    offsets = [(0, 3), (3, 11), (11, 14), (14, 21), (21, 24), (24, 30), (30, 31), (31, 33), (33, 34),
               (34, 39), (39, 42), (42, 46), (46, 54), (54, 57), (57, 64), (64, 65), (65, 67), (67, 68)]
    roles = token_roles(prompt, template, offsets)
    assert roles[3] == "COUNTRY" and roles[5] == "CITY" and roles[14] == "COUNTRY_Q"
    assert roles[10] == "is#2" and roles[-1] == "END"
    assert token_roles("Hello", "Hello", [(0, 0), (0, 3), (3, 5)]) == ["BOS", "Hello", "END"]


def test_tasks_are_deterministic():
    spec = TaskSpec.make("ccc", {"answer": "memory"})
    assert load_examples(spec, 3) == load_examples(spec, 3)
    assert load_examples(spec, 3) != load_examples(spec, 4)


def test_splits_are_deterministic_and_disjoint(tiny_models):
    loaded = tiny_models["tiny-llama"]
    spec = UnitSpec("tiny-llama", TaskSpec.make("ioi"), "mlp_out", "all", "activscalar", TrainSettings(seed=7))
    one, two = prepare_unit(loaded, spec), prepare_unit(loaded, spec)
    prompts = {s: [e.example.prompt for e in one.splits[s].examples] for s in one.splits}
    assert prompts == {s: [e.example.prompt for e in two.splits[s].examples] for s in two.splits}
    assert not set(prompts["train"]) & set(prompts["test"])
    c = one.counts
    assert c["kept_train"] + c["kept_val"] + c["kept_test"] + c["dropped_model_prefers_b"] + \
        c["dropped_other_length"] + c["dropped_not_single_token_answer"] == c["total"]
    assert all(ld > 0 for s in one.splits.values() for ld in s.ld.tolist())  # model_prefers_a


def test_heldout_template_is_the_test_split(tiny_models):
    loaded = tiny_models["tiny-neox"]
    spec = UnitSpec("tiny-neox", TaskSpec.make("ioi", {"heldout_templates": ["long"]}), "mlp_out", "all", "dynscalar")
    unit = prepare_unit(loaded, spec)
    assert all(e.example.heldout for e in unit.splits["test"].examples)
    assert not any(e.example.heldout for e in unit.splits["train"].examples)
    assert min(e.length for e in unit.splits["test"].examples) > max(e.length for e in unit.splits["train"].examples)


def _write(tmp_path, lines):
    path = tmp_path / "task.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_loader(tmp_path):
    rows = [dict(prompt=f"{c} is in", answer_a=" Italy", answer_b=" France", template="{CITY} is in") for c in ["Rome"] * 3]
    examples = load_jsonl(_write(tmp_path, [json.dumps(r) for r in rows]))
    assert len(examples) == 3 and examples[0].answer_a == " Italy"


def test_jsonl_errors_name_the_line_and_field(tmp_path):
    good = json.dumps(dict(prompt="Rome is in", answer_a=" Italy", answer_b=" France", template="x"))
    with pytest.raises(UsageError, match=r"line 2: missing field\(s\) \['answer_b'\]"):
        load_jsonl(_write(tmp_path, [good, json.dumps(dict(prompt="p", answer_a="a", template="t"))]))
    with pytest.raises(UsageError, match="line 1: not valid JSON"):
        load_jsonl(_write(tmp_path, ["{not json"]))
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"prompt": "\xff\xfe"}\n')
    with pytest.raises(UsageError, match="not valid UTF-8"):
        load_jsonl(path)


def test_unknown_task_and_option():
    with pytest.raises(UsageError, match="unknown task 'nope'; accepted: \\['ccc', 'city_country', 'ioi'\\]"):
        load_examples(TaskSpec.make("nope"), 0)
    with pytest.raises(UsageError, match="unknown option 'colour'"):
        load_examples(TaskSpec.make("ioi", {"colour": 1}), 0)


@pytest.mark.parametrize("task", ["ioi", "ccc", "city_country"])
def test_no_prompt_or_entity_in_two_splits(tiny_models, task):
    loaded = tiny_models["tiny-llama"]
    spec = UnitSpec("tiny-llama", TaskSpec.make(task), "mlp_out", "all", "activscalar", TrainSettings(filter="none"))
    unit = prepare_unit(loaded, spec)
    prompts = {s: {e.example.prompt for e in d.examples} for s, d in unit.splits.items()}
    entities = {s: {k for e in d.examples for k in e.example.entities} for s, d in unit.splits.items()}
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        assert not prompts[a] & prompts[b], (task, a, b)
        assert not entities[a] & entities[b], (task, a, b)
    assert all(entities.values())  # every built-in task splits by entity
    c = unit.counts
    assert c["kept_train"] + c["kept_val"] + c["kept_test"] + c["dropped_entity_across_splits"] + \
        c["dropped_duplicate_prompt"] + c["dropped_other_length"] + c["dropped_not_single_token_answer"] + \
        c["dropped_model_prefers_b"] == c["total"]
    assert min(len(d) for d in unit.splits.values()) >= 5


def test_heldout_template_shares_no_name_pair_with_training(tiny_models):
    loaded = tiny_models["tiny-neox"]
    spec = UnitSpec("tiny-neox", TaskSpec.make("ioi", {"heldout_templates": ["long"]}), "mlp_out", "all", "dynscalar",
                    TrainSettings(filter="none"))
    unit = prepare_unit(loaded, spec)
    pairs = {s: {e.example.entities for e in d.examples} for s, d in unit.splits.items()}
    assert not (pairs["train"] | pairs["val"]) & pairs["test"]


def test_duplicates_are_dropped_before_splitting(tiny_models, tmp_path):
    rows = [dict(prompt=f"When Mary and John went to the store, John gave a {o} to", answer_a=" Mary",
                 answer_b=" John", template="t") for o in ["drink", "book", "ball", "ring", "bag", "key"] * 3]
    path = _write(tmp_path, [json.dumps(r) for r in rows])
    spec = UnitSpec("tiny-gpt2", TaskSpec.make(str(path)), "mlp_out", "all", "activscalar", TrainSettings(filter="none"))
    unit = prepare_unit(tiny_models["tiny-gpt2"], spec)
    assert unit.counts["dropped_duplicate_prompt"] == 12
    assert sum(len(d) for d in unit.splits.values()) == 6


def test_a_task_asked_for_more_distinct_prompts_than_it_has_says_so():
    with pytest.raises(UsageError, match=r"task 'city_country': n=200 asks for more distinct prompts than the task "
                                         r"has \(112 = 112 cities x 1 template\(s\)\)"):
        load_examples(TaskSpec.make("city_country", {"n": 200}), 0)
    with pytest.raises(UsageError, match=r"task 'ccc': n=20000 asks for more distinct prompts than the task has "
                                         r"\(12432 \(country, other country\) pairs of 112 countries"):
        load_examples(TaskSpec.make("ccc", {"n": 20000}), 0)
    assert len({e.prompt for e in load_examples(TaskSpec.make("ccc", {"n": 300}), 0)}) == 300


def test_jsonl_entities_must_be_strings(tmp_path):
    bad = json.dumps(dict(prompt="Rome is in", answer_a=" Italy", answer_b=" France", template="x", entities="Italy"))
    with pytest.raises(UsageError, match="line 1: field 'entities' must be a list of non-empty strings"):
        load_jsonl(_write(tmp_path, [bad]))


class _Vocabulary:
    """A tokenizer that knows a few words as single tokens and splits every other word in two."""

    def __init__(self, words: set[str]):
        self.words = words

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        ids = []
        for word in text.split():
            ids += [hash(word) % 1000] if word in self.words else [1, 2]
        return {"input_ids": ids}


def test_builtin_tasks_use_only_entities_that_are_single_tokens_for_the_tokenizer():
    from workers.tasks.builtin import CAPITALS, NAMES, OBJECTS, PLACES

    countries = ["France", "Italy", "Spain", "Japan", "Kenya"]
    known = set(countries) | {CAPITALS[c] for c in countries} | set(NAMES[:4]) | set(PLACES) | set(OBJECTS)
    known.discard("Tokyo")  # Japan's capital is two tokens: Japan is out
    tokenizer = _Vocabulary(known)
    for task in ("ccc", "city_country"):
        examples = load_examples(TaskSpec.make(task), 0, tokenizer)
        used = {entity for e in examples for entity in e.entities}
        assert used == {"France", "Italy", "Spain", "Kenya"}, task
        assert all(len(tokenizer(e.answer_a)["input_ids"]) == 1 == len(tokenizer(e.answer_b)["input_ids"])
                   for e in examples)
    assert len(load_examples(TaskSpec.make("ccc"), 0, tokenizer)) == 4 * 3  # every pair: fewer than the default n
    ioi = load_examples(TaskSpec.make("ioi", {"n": 10}), 0, tokenizer)
    assert {n for e in ioi for n in e.entities[0].split("+")} <= set(NAMES[:4]) and len(ioi) == 30
    # without a tokenizer: the task as defined (what the coordinator hashes), every country
    assert {c for e in load_examples(TaskSpec.make("city_country"), 0) for c in e.entities} == set(CAPITALS)
    with pytest.raises(UsageError, match=r"task 'ccc': only 1 countries \(name and capital\) are single tokens"):
        load_examples(TaskSpec.make("ccc"), 0, _Vocabulary({"France", "Paris"}))


def test_a_unit_hashes_its_task_as_the_coordinator_does(tiny_models):
    """The stored task_hash is taken without a tokenizer, so a resume can check it without a model."""
    from workers.tasks.base import task_hash

    spec = UnitSpec("tiny-llama", TaskSpec.make("ccc", {"n": 40}), "mlp_out", "all", "activscalar", TrainSettings())
    unit = prepare_unit(tiny_models["tiny-llama"], spec)
    assert unit.task_hash == task_hash(spec.task, spec.settings.seed)
    assert unit.counts["dropped_not_single_token_answer"] == 0
