"""One progress line per model, at most every few seconds and only when something changed."""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.coordinator import UnitState

log = logging.getLogger("actscale")


class Progress:
    def __init__(self, by_model: dict[str, list[UnitState]], per_unit: int, every_s: float = 5.0):
        self.by_model = by_model
        self.per_unit = per_unit  # trials a unit runs: search trials plus replicates
        self.every_s = every_s
        self.started = self.last = time.monotonic()
        self.done_at_start = {m: sum(s.completed for s in states) for m, states in by_model.items()}
        self.last_line: dict[str, str] = {}

    def tick(self) -> None:
        if time.monotonic() - self.last <= self.every_s:
            return
        self.last = time.monotonic()
        for model, states in self.by_model.items():
            self._line(model, states)

    def _line(self, model: str, states: list[UnitState]) -> None:
        done = sum(s.completed for s in states)
        total = self.per_unit * len(states)
        failed = sum(s.failed for s in states)
        interrupted = sum(s.interrupted for s in states)
        rate = (done - self.done_at_start[model]) / max(1e-9, time.monotonic() - self.started)
        eta = f"{(total - done) / rate:.0f}s" if rate > 0 else "?"
        key = f"{done}/{total} {failed} {interrupted}"
        if self.last_line.get(model) == key:
            return
        self.last_line[model] = key
        log.info(f"{model}: {done}/{total} trials, {rate:.2f}/s, ETA {eta}, failed {failed}, interrupted {interrupted}")
