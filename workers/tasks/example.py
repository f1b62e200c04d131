"""One example of a task: what every task (built-in or JSONL) is made of."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    """One prompt; answer_a is the answer the model is expected to give, answer_b the alternative."""

    prompt: str
    answer_a: str
    answer_b: str
    template: str
    heldout: bool = False  # only for the test split (e.g. a held-out template)
    # What the prompt is about (names, countries): no entity is in two splits. Empty: the prompt itself.
    entities: tuple[str, ...] = ()

    @property
    def split_keys(self) -> tuple[str, ...]:
        return self.entities or (self.prompt,)
