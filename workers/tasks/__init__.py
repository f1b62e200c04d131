"""Tasks: examples with per-token roles, the JSONL loader, filters and splits."""
from workers.tasks.base import Example, TaskSpec, load_examples, task_names

__all__ = ["Example", "TaskSpec", "load_examples", "task_names"]
