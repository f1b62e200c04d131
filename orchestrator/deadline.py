"""`--stop-after DURATION`: a run that ends cleanly before a wall-clock limit (e.g. a batch job's).

The run stops handing out work once the time left is less than what the next piece of work, or a
piece in flight, is expected to take: the longest measured duration of finished work of the same
kind (the same phase, on the same unit, else on the same model; trial batches an earlier run
finished count too, from their rows' times; nothing measured yet: it is handed out). Work in flight
that is expected to end in time is waited for; the rest is cut off and its trials recorded as
`interrupted` and re-queued, as a crash would leave them, so that running the same command again
resumes with no trial lost or counted twice. The last part of the limit
(`reserve`) is kept for writing what is buffered and compacting the tables.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from orchestrator.units import Phase, Work

STOPPED_AT_LIMIT = 3  # the exit status of `actscale run`/`resume` that stopped at its --stop-after limit


def reserve_for(limit_s: float) -> float:
    """Seconds kept at the end of a limit for the last writes: 5% of it, 5 s to 60 s."""
    return min(60.0, max(5.0, 0.05 * limit_s))


def kind_keys(phase: Phase, unit_id: str, model: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """The kinds a piece of work is measured under: its phase on its unit, and its phase on its model."""
    return (phase.value, unit_id), (phase.value, model)


def work_keys(work: Work) -> tuple[tuple[str, str], tuple[str, str]]:
    return kind_keys(work.phase, work.unit.unit_id, work.unit.planned.spec.model)


class Deadline:
    """Time left before a limit, and how long finished work of each kind took."""

    def __init__(self, limit_s: float, started: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.limit_s = limit_s
        self.clock = clock
        self.ends = (clock() if started is None else started) + limit_s - reserve_for(limit_s)
        self.took: dict[tuple[str, str], float] = {}  # kind -> the longest duration measured

    def left(self) -> float:
        """Seconds left for work."""
        return self.ends - self.clock()

    def passed(self) -> bool:
        return self.left() <= 0

    def measured(self, work: Work, seconds: float) -> None:
        self.learn(work_keys(work), seconds)

    def learn(self, keys: tuple[tuple[str, str], ...], seconds: float) -> None:
        """A duration of finished work (measured now, or stored by an earlier run: a trial batch's)."""
        for key in keys:
            self.took[key] = max(seconds, self.took.get(key, 0.0))

    def learn_from_rows(self, rows: list[dict], model_of: dict[str, str]) -> None:
        """Trial batches an earlier run finished (their rows' started_at and ended_at, one pair a batch), so that a
        resumed run does not hand out a batch that cannot end before its limit."""
        for row in rows:
            if row.get("started_at") is not None and row.get("ended_at") is not None and row["unit_id"] in model_of:
                phase = Phase.SEARCH if row["replicate_of"] is None else Phase.REPLICATES
                phase = Phase.PILOT if row.get("pilot") else phase
                phase = Phase.CONTROLS if row.get("control_of") is not None else phase
                self.learn(kind_keys(phase, row["unit_id"], model_of[row["unit_id"]]),
                           (row["ended_at"] - row["started_at"]).total_seconds())

    def expected(self, work: Work) -> float | None:
        """How long work of this kind took at most, or None when none has finished yet."""
        return next((self.took[key] for key in work_keys(work) if key in self.took), None)

    def fits(self, work: Work) -> bool:
        """Whether a piece of work started now is expected to end in time (unmeasured work: yes)."""
        expected = self.expected(work)
        return expected is None or expected <= self.left()

    def will_end_in_time(self, work: Work, since: float) -> bool:
        """Whether a piece in flight since `since` is expected to end in time (unmeasured: until the limit)."""
        expected = self.expected(work)
        return not self.passed() and (expected is None or since + expected <= self.ends)
