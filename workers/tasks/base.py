"""Task lookup (built-in name or JSONL path), the JSONL loader and the task-data hash."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from workers.errors import UsageError
from workers.tasks.builtin import BUILTIN_TASKS
from workers.tasks.example import Example

__all__ = ["Example", "TaskSpec", "examples_hash", "load_examples", "load_jsonl", "task_hash", "task_names"]

REQUIRED_FIELDS = ("prompt", "answer_a", "answer_b", "template")


@dataclass(frozen=True)
class TaskSpec:
    name: str  # a built-in name or a path to a .jsonl file
    options: tuple = ()  # sorted (key, value) pairs, hashable

    @classmethod
    def make(cls, name: str, options: dict | None = None) -> TaskSpec:
        frozen = {k: tuple(v) if isinstance(v, list) else v for k, v in (options or {}).items()}
        return cls(name, tuple(sorted(frozen.items(), key=lambda kv: kv[0])))

    @property
    def options_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.options}


def task_names() -> dict[str, str]:
    return {name: doc for name, (_, doc) in BUILTIN_TASKS.items()}


def load_jsonl(path: Path) -> list[Example]:
    """Read a user task: one JSON object per line with prompt, answer_a, answer_b, template."""
    if not path.is_file():
        raise UsageError(f"task file {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"task file {path}: not valid UTF-8 at byte {exc.start}; save it as UTF-8") from exc
    examples = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"task file {path} line {number}: not valid JSON ({exc.msg}); "
                             "each line must be one JSON object") from exc
        if not isinstance(record, dict):
            raise UsageError(f"task file {path} line {number}: expected a JSON object, got {type(record).__name__}")
        missing = [f for f in REQUIRED_FIELDS if f not in record]
        if missing:
            raise UsageError(f"task file {path} line {number}: missing field(s) {missing}; each line needs "
                             f"{list(REQUIRED_FIELDS)} (optional: heldout, entities, counterfactual)")
        bad = [f for f in REQUIRED_FIELDS if not isinstance(record[f], str) or not record[f]]
        if bad:
            raise UsageError(f"task file {path} line {number}: field(s) {bad} must be non-empty strings")
        entities = record.get("entities", [])
        if not isinstance(entities, list) or not all(isinstance(x, str) and x for x in entities):
            raise UsageError(f"task file {path} line {number}: field 'entities' must be a list of non-empty strings "
                             f"(what the prompt is about; no entity is put in two splits), got {entities!r}")
        counterfactual = record.get("counterfactual")
        if counterfactual is not None and (not isinstance(counterfactual, str) or not counterfactual):
            raise UsageError(f"task file {path} line {number}: field 'counterfactual' must be a non-empty string (a "
                             "prompt of the same template whose expected answer is answer_b), got "
                             f"{counterfactual!r}")
        examples.append(Example(prompt=record["prompt"], answer_a=record["answer_a"], answer_b=record["answer_b"],
                                template=record["template"], heldout=bool(record.get("heldout", False)),
                                entities=tuple(entities), counterfactual=counterfactual))
    if not examples:
        raise UsageError(f"task file {path} holds no examples")
    return examples


def load_examples(spec: TaskSpec, seed: int, tokenizer=None) -> list[Example]:
    """A task's examples. Given a model's tokenizer, a built-in task uses only entities whose words are
    single tokens for it (so its n prompts are all usable); without one, the task as defined, which is
    what its data hash (`examples_hash`) is taken of, so a changed task is noticed without a model."""
    if spec.name in BUILTIN_TASKS:
        return BUILTIN_TASKS[spec.name][0](spec.options_dict, seed, tokenizer)
    if spec.name.endswith(".jsonl") or Path(spec.name).exists():
        if spec.options:
            raise UsageError(f"task file {spec.name} takes no options, got {spec.options_dict}")
        return load_jsonl(Path(spec.name))
    raise UsageError(f"unknown task {spec.name!r}; accepted: {sorted(BUILTIN_TASKS)} or a path to a .jsonl file")


def task_hash(spec: TaskSpec, seed: int) -> str:
    """The data hash of a task as stored in units.task_hash: of its examples without a tokenizer. A built-in
    task's counterfactual prompts are left out: its code derives them from each prompt (a change there is a
    change of code, not of data, and must not make stored runs unresumable); a JSONL file's are its data."""
    examples = load_examples(spec, seed)
    if spec.name in BUILTIN_TASKS:
        examples = [replace(e, counterfactual=None) for e in examples]
    return examples_hash(examples)


def examples_hash(examples: list[Example]) -> str:
    """Content hash of a task's data, so that a changed task file is noticed. A counterfactual prompt is
    hashed only where a task has one, so the hashes of tasks stored before counterfactuals existed hold."""
    h = hashlib.sha256()
    for e in examples:
        fields = asdict(e)
        if fields["counterfactual"] is None:
            del fields["counterfactual"]
        h.update(json.dumps(fields, sort_keys=True).encode())
    return h.hexdigest()[:16]
