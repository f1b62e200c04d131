"""Each unit's search, as data: every search trial's hyper-parameters (the lambda values the sampler drew), how far
it trained (complete, or pruned at a rung), its val scores, and whether it is on the unit's val front. What a reader
needs to see that units did not share their draws and what the search explored; the page draws it as a table."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from reports.run import Run
from storage.schema import Status


@dataclass(frozen=True)
class SearchRow:
    unit: str  # model / task / site / method
    trial: str  # the trial's number (t00003)
    status: str  # complete, or "pruned at step N"
    lambda_faith: float
    lambda_min: float
    lr: float
    val_flip: float | None
    val_kl: float | None
    moved_share: float | None
    on_front: bool  # complete and not dominated on val (flip up, kl_other down, moved share down)
    selected: bool


def _dominated(row: pd.Series, others: pd.DataFrame) -> bool:
    """Some other trial is at least as good on all three val objectives and better on one."""
    at_least = ((others.val_flip_rate >= row.val_flip_rate) & (others.val_kl_other <= row.val_kl_other)
                & (others.moved <= row.moved))
    better = ((others.val_flip_rate > row.val_flip_rate) | (others.val_kl_other < row.val_kl_other)
              | (others.moved < row.moved))
    return bool((at_least & better).any())


def search_rows(run: Run) -> list[SearchRow]:
    """One row per search trial of every unit that has a selected trial, in the page's unit order."""
    rows = []
    for r in run.selected.itertuples(index=False):
        own = run.search_trials(r.unit_id, complete=False).copy()
        own["moved"] = own.sites_moved / own.sites_total.where(own.sites_total > 0)
        complete = own[own.status == Status.COMPLETE]
        name = f"{run.where(r)} / {r.role or r.method}"
        for _, x in own.iterrows():
            done = x.status == Status.COMPLETE
            status = "complete" if done else f"{x.status} at step {int(x.steps_done)}" if pd.notna(x.steps_done) \
                else str(x.status)
            front = done and not _dominated(x, complete[complete.trial_id != x.trial_id])
            rows.append(SearchRow(name, str(x.trial_id).rsplit("-", 1)[-1], status, float(x.lambda_faith),
                                  float(x.lambda_min), float(x.lr), _num(x.val_flip_rate), _num(x.val_kl_other),
                                  _num(x.moved) if done else None, front, str(x.trial_id) == str(r.trial_id)))
    return rows


def _num(value: object) -> float | None:
    return None if value is None or pd.isna(value) else float(value)  # type: ignore[arg-type]
