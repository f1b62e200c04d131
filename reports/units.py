"""What every unit's selected trial does to its test prompts, as data: LD', the normalised shift, the distance from
the exact swap, the share of prompts whose target becomes the top-1 token (where the tables have it), flip_rate and
kl_other, each over the trial's replicates and prompt clusters (the two-level bootstrap)."""
from __future__ import annotations

from dataclasses import dataclass

from reports.claims.common import mean_of
from reports.run import FLIP, KL, LD, LD_AFTER, MIRROR, SHIFT, Run, measured
from reports.stats import Estimate

METRICS = (LD, LD_AFTER, SHIFT, MIRROR, FLIP, KL)


@dataclass(frozen=True)
class UnitRow:
    model: str
    unit: str  # model (where several) / task / site
    method: str  # the paper's name, or the run's
    trial: str  # the selected trial's id
    selected_by: str
    apart: str  # why it is kept out of C1 and C3 ("" if it is not)
    n_prompts: int  # distinct test prompts over the trial's replicates (with fold replicates: pooled over folds)
    n_clusters: int  # distinct prompt clusters (the task's grouping key: entities) over the same
    replicates: int
    values: dict[str, Estimate]  # METRICS -> estimate
    top1: float | None  # mean over replicates of trials.test_top1_b; None where not measured


def unit_rows(run: Run) -> list[UnitRow]:
    rows = []
    top1 = run.trials.set_index("trial_id").test_top1_b if measured(run.trials, "test_top1_b") else None
    for r in run.selected.itertuples(index=False):
        seeds = list(r.seeds)
        # LD is the unintervened network's: one key per task and site, so that units on the same prompts agree
        values = {m: mean_of(run, f"{run.where(r)}/units/{m}" if m == LD else f"{run.where(r)}/{r.method}/units/{m}",
                             seeds, m) for m in METRICS}
        share = float(top1.reindex(seeds).mean()) if top1 is not None and top1.reindex(seeds).notna().any() else None
        n_prompts, n_clusters = pooled_test(run, seeds)
        rows.append(UnitRow(r.model, run.where(r), r.role or r.method, str(r.trial_id), str(r.selected_by), r.apart,
                            n_prompts, n_clusters, len(seeds), values, share))
    return rows


def pooled_test(run: Run, trial_ids: list[str]) -> tuple[int, int]:
    """(distinct test prompts, distinct prompt clusters) over the trials' test sets (`Run.pooled_prompts`): the
    same as one trial's with seed replicates on one split, every tested entity once with fold replicates."""
    pooled = run.pooled_prompts(trial_ids)
    return len(pooled), pooled.cluster.nunique()
