"""Progress per model: trials done / total, failed, interrupted, trials per second, ETA and the
best selected result so far.

On a terminal, a live table (rich) updated in place while the log goes on above it.
Without one (CI, nohup, Ray job logs), a log line per model only when its counts changed,
and at most every `LOG_EVERY_S` seconds, so a log never repeats itself.
"""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from orchestrator.units import UnitState, refresh_selections

log = logging.getLogger("actscale")
LOG_EVERY_S = 30.0  # without a terminal: at most one progress line per model this often
LIVE_EVERY_S = 1.0  # on a terminal: the table's refresh


@dataclass
class ModelProgress:
    model: str
    done: int
    total: int
    failed: int
    interrupted: int
    rate: float  # trials per second since this coordinator started
    best: str  # the best selected trial so far, in words ("-" before any)

    @property
    def eta(self) -> str:
        if self.done >= self.total:
            return "done"
        return f"{(self.total - self.done) / self.rate:.0f}s" if self.rate > 0 else "?"

    @property
    def counts(self) -> tuple[int, int, int, int]:
        return (self.done, self.total, self.failed, self.interrupted)

    def line(self) -> str:
        return (f"{self.model}: {self.done}/{self.total} trials, {self.rate:.2f}/s, ETA {self.eta}, failed {self.failed}, "
                f"interrupted {self.interrupted}, best selected: {self.best}")


def describe_best(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """The highest val flip_rate among the units' selected trials (method, selected row), fewest moved first."""
    if not rows:
        return "-"
    method, row = max(rows, key=lambda mr: (mr[1]["val_flip_rate"], -mr[1]["sites_moved"]))
    return (f"{method} val flip {row['val_flip_rate']:.3f}, {row['sites_moved']}/{row['sites_total']} moved "
            f"({row['trial_id'][-6:]})")


class Progress:
    """Per model: trials finished, and of the total what the units say is left (UnitState.left)."""

    def __init__(self, by_model: dict[str, list[UnitState]], live: bool = False):
        self.by_model = by_model
        self.live = live
        self.started = self.last = time.monotonic()
        self.done_at_start = {m: sum(s.finished for s in states) for m, states in by_model.items()}
        self.logged: dict[str, tuple[int, int, int, int]] = {}
        self._live: Any = None

    def snapshot(self, model: str) -> ModelProgress:
        states = self.by_model[model]
        refresh_selections(states)
        done = sum(s.finished for s in states)
        left = sum(s.left().trials for s in states)
        rate = (done - self.done_at_start[model]) / max(1e-9, time.monotonic() - self.started)
        chosen = [(s.planned.spec.method, row) for s in states if (row := s.selected) is not None]
        return ModelProgress(model, done, done + left, sum(s.failed for s in states),
                             sum(s.interrupted for s in states), rate, describe_best(chosen))

    @contextmanager
    def shown(self) -> Iterator[Progress]:
        """Show progress for the duration of the block (a live table on a terminal)."""
        if not self.live:
            try:
                yield self
            finally:
                self._log_changed()  # the last counts, however soon after the previous line
            return
        from rich.console import Console
        from rich.live import Live

        with Live(self._table(), console=Console(file=sys.stderr), refresh_per_second=2, transient=False) as live:
            # log lines go through rich's stand-in for stderr, so they print above the table instead of
            # breaking its redraw in place
            streams = [(h, h.setStream(sys.stderr)) for h in log.handlers
                       if type(h) is logging.StreamHandler]
            self._live = live
            try:
                yield self
            finally:
                live.update(self._table())
                self._live = None
                for handler, stream in streams:
                    handler.setStream(stream)

    def tick(self) -> None:
        every = LIVE_EVERY_S if self._live is not None else LOG_EVERY_S
        if time.monotonic() - self.last < every:
            return
        self.last = time.monotonic()
        if self._live is not None:
            self._live.update(self._table())
            return
        self._log_changed()

    def _log_changed(self) -> None:
        for model in self.by_model:
            snap = self.snapshot(model)
            if self.logged.get(model) != snap.counts:  # only when something changed
                self.logged[model] = snap.counts
                log.info(snap.line())

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(title="actscale sweep", title_justify="left")
        for name, justify in (("model", "left"), ("done / total", "right"), ("failed", "right"),
                              ("interrupted", "right"), ("trials/s", "right"), ("ETA", "right"),
                              ("best selected so far", "left")):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        for model in self.by_model:
            p = self.snapshot(model)
            table.add_row(p.model, f"{p.done} / {p.total}", str(p.failed), str(p.interrupted), f"{p.rate:.2f}",
                          p.eta, p.best)
        return table
