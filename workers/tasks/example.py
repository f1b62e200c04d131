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
    # A prompt of the same template, the same length in tokens, whose expected answer is answer_b: the
    # swap the objective asks for, made by changing only the tokens that decide the answer (IOI: S2 named
    # as the IO; ccc: the context made to agree with the asked-for answer b). Difference-in-means steering
    # and activation patching read it; None: the task has none.
    counterfactual: str | None = None

    @property
    def split_keys(self) -> tuple[str, ...]:
        return self.entities or (self.prompt,)

    @property
    def cluster(self) -> str:
        """The prompt's grouping key for intervals over prompt clusters: its first entity (an IOI name pair,
        the country a ccc prompt asks about, a city_country country), else its template."""
        return self.entities[0] if self.entities else self.template
