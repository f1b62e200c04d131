"""The one selection rule, defined here once as SQL, decided on val only.

For each unit (of each run): among its complete *search* trials (replicates, convergence pilots and
masked controls excluded) whose val flip_rate is at least `min_flip` (sweep YAML `selection.min_flip`, default 0.9), the one
with the fewest `sites_moved`, then the lowest val kl_other; if none qualifies, the one with
the highest val flip_rate, then the lowest val kl_other, flagged `selected_by = 'fallback'`.
Ties end on trial_id. Test metrics never enter the choice.

Every consumer uses this SQL: the `selected` DuckDB view of `storage.query.connect` (and so
`actscale query`, `status`, `report`, the Makefile and the docs), and the coordinator, which
runs it over a unit's rows in memory to pick the hyper-parameters its replicates re-train.
"""
from __future__ import annotations

from typing import Any

from storage.schema import Status

DEFAULT_MIN_FLIP = 0.9
# Rates are means over prompts computed in float32 (9/10 is stored as 0.89999998): a rate counts as
# reaching a threshold within this slack, so an exact hit is one.
RATE_SLACK = 1e-6

RULE = ("the selected trial of a unit is chosen on val only: among its complete search trials with val flip_rate "
        ">= min_flip (selection.min_flip, default {min_flip}), the fewest sites_moved, then the lowest val kl_other; "
        "if none qualifies, the highest val flip_rate (marked 'fallback'); test metrics are only reported")


def describe_rule(min_flip: float | None = None) -> str:
    """The rule in words, with the threshold used (or the default)."""
    if min_flip is None:
        return RULE.format(min_flip=DEFAULT_MIN_FLIP)
    return RULE.replace(" (selection.min_flip, default {min_flip})", f" (selection.min_flip = {min_flip:g})")


def selected_sql(trials: str = "trials", min_flip: str = str(DEFAULT_MIN_FLIP)) -> str:
    """SQL selecting one trial per (run_id, unit_id) from the relation `trials`.

    `min_flip` is an SQL expression: a number, or a column of `trials`. The result has every
    column of `trials` plus `min_flip`, `qualifies` (val flip_rate >= min_flip) and
    `selected_by` ('min_flip' or 'fallback')."""
    q = f"(t.val_flip_rate >= {min_flip} - {RATE_SLACK})"
    return f"""SELECT t.*, {min_flip} AS min_flip, {q} AS qualifies,
       CASE WHEN bool_or({q}) OVER (PARTITION BY t.run_id, t.unit_id) THEN 'min_flip' ELSE 'fallback' END
           AS selected_by
FROM {trials} t
WHERE t.status = '{Status.COMPLETE}' AND t.replicate_of IS NULL AND t.control_of IS NULL
      AND NOT coalesce(t.pilot, false)
QUALIFY row_number() OVER (PARTITION BY t.run_id, t.unit_id
                           ORDER BY {q} DESC,
                                    CASE WHEN {q} THEN t.sites_moved ELSE 0 END,
                                    CASE WHEN {q} THEN 0 ELSE -t.val_flip_rate END,
                                    t.val_kl_other, t.trial_id) = 1"""


def select_per_unit(rows: list[dict[str, Any]], min_flip: float) -> dict[str, dict[str, Any]]:
    """{unit_id: its selected trial} among trials rows held in memory (the coordinator's use),
    by the SQL above, for any number of units in one query."""
    import duckdb
    import pyarrow as pa

    from storage.schema import schema_for

    if not rows:
        return {}
    table = pa.Table.from_pylist(rows, schema=schema_for("trials"))
    con = duckdb.connect()
    try:
        con.register("candidate_trials", table)
        found = con.sql(selected_sql("candidate_trials", repr(float(min_flip)))).to_arrow_table()
    finally:
        con.close()
    return {row["unit_id"]: row for row in found.to_pylist()}


def select_rows(rows: list[dict[str, Any]], min_flip: float) -> dict[str, Any] | None:
    """The selected trial among one unit's trials rows held in memory."""
    chosen = select_per_unit(rows, min_flip)
    if len(chosen) > 1:
        raise ValueError(f"select_rows got rows of {len(chosen)} units; use select_per_unit")
    return next(iter(chosen.values()), None)
