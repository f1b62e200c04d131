"""The example queries of docs/querying.md, and the page rendered from a real run.

A test renders the page from the committed run `docs/data/sample-run` and compares it with
the committed page, so the page cannot drift from the code (`ACTSCALE_WRITE_DOCS=1`
rewrites it; `make docs` also re-runs the sweep).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from storage.query import COMPARE_SQL, run_sql

SAMPLE_RUN = Path(__file__).resolve().parents[1] / "docs" / "data" / "sample-run"
# A real trial id of the sample run (tiny-gpt2's selected ActivScalar trial); a test checks it is there.
EXAMPLE_TRIAL = "u-14d046a0cc9b-t00001"

QUERIES: list[tuple[str, str, str]] = [
    ("Selected trial per unit",
     "Which trial does each unit stand for (the one selection rule, on val), and how does it do on test? "
     "`selected_by` is 'fallback' where no trial reached `selection.min_flip`.",
     """SELECT u.model, u.method, s.trial_id, s.selected_by, s.val_flip_rate, s.test_flip_rate,
       s.sites_moved, s.sites_total, s.n_params
FROM selected s JOIN units u USING (unit_id)
ORDER BY u.model, u.method"""),
    ("Effect against moved sites per method",
     "Does a method buy its effect with more moved sites? Sites are counted in the same unit for every "
     "method, so the shares compare; n_params does not.",
     """SELECT u.method, count(*) AS trials,
       round(avg(t.val_flip_rate), 3) AS mean_val_flip,
       round(avg(t.sites_moved / t.sites_total), 3) AS mean_share_moved,
       round(corr(t.val_flip_rate, t.sites_moved), 3) AS corr_flip_moved
FROM trials t JOIN units u USING (unit_id)
WHERE t.status = 'complete' AND t.replicate_of IS NULL
GROUP BY u.method ORDER BY u.method"""),
    ("One trial's scalars as a layer x role grid",
     "Where did this trial move the activations? Rows are layers, columns token roles; the value is alpha.",
     f"""PIVOT (SELECT layer, role, round(value, 2) AS value
       FROM scalars
       WHERE trial_id = '{EXAMPLE_TRIAL}'
         AND role IN ('IO', 'S1', 'S2', 'END'))
ON role IN ('IO', 'S1', 'S2', 'END') USING first(value)
GROUP BY layer ORDER BY layer"""),
    ("Effects across models by relative depth and role",
     "Do two models with different depths act at the same relative depth and role? `effect` is the "
     "measure that decides `moved` (|alpha-1| for ActivScalar), so it compares across methods too.",
     """SELECT c.model, round(c.rel_depth, 2) AS rel_depth,
       round(avg(c.effect) FILTER (WHERE c.role = 'S2'), 3) AS s2_effect,
       round(avg(c.effect) FILTER (WHERE c.role = 'END'), 3) AS end_effect
FROM scalars c JOIN selected s USING (trial_id)
WHERE c.method = 'activscalar'
GROUP BY ALL ORDER BY c.model, rel_depth"""),
    ("How many cells carry the effect",
     "For each selected trial: the smallest k whose top-k cells alone (sufficiency curve, val) reach 90% of the "
     "full trial's flip_rate, and what removing those k cells leaves (necessity). Decided on val; the test split's "
     "rows are in the same table.",
     """WITH whole AS (
    SELECT run_id, trial_id, flip_rate AS full_flip FROM curves
    WHERE kind = 'sufficiency' AND split = 'val' AND k = n_cells),
k90 AS (
    SELECT c.run_id, c.trial_id, min(c.k) AS k90, any_value(c.n_cells) AS n_cells
    FROM curves c JOIN whole f USING (run_id, trial_id)
    WHERE c.kind = 'sufficiency' AND c.split = 'val' AND f.full_flip > 0
      AND c.flip_rate >= 0.9 * f.full_flip - 1e-6  -- rates are float32 means: an exact 90% counts
    GROUP BY ALL)
SELECT u.model, u.method, s.trial_id, round(f.full_flip, 3) AS full_val_flip, k.k90, k.n_cells,
       round(n.flip_rate, 3) AS val_flip_without_them
FROM selected s JOIN units u USING (run_id, unit_id) JOIN whole f USING (run_id, trial_id)
LEFT JOIN k90 k USING (run_id, trial_id)
LEFT JOIN curves n ON n.run_id = s.run_id AND n.trial_id = s.trial_id AND n.kind = 'necessity' AND n.split = 'val'
                   AND n.k = k.k90
ORDER BY u.model, u.method"""),
    ("Moved cells shared across seeds",
     "Are the moved cells of a selected trial the same when its hyper-parameters are re-trained with other "
     "seeds (`search.replicates`)?",
     """WITH seeds AS (
    SELECT s.unit_id, t.trial_id
    FROM selected s JOIN trials t ON t.trial_id = s.trial_id
                                  OR (t.replicate_of = s.trial_id AND t.status = 'complete')),
n AS (SELECT unit_id, count(*) AS seeds FROM seeds GROUP BY unit_id),
moved AS (
    SELECT seeds.unit_id, c.layer, c.position, c.role, c.head, count(*) AS k
    FROM seeds JOIN scalars c USING (trial_id) WHERE c.moved GROUP BY ALL)
SELECT u.model, u.method, n.seeds,
       count(*) FILTER (WHERE moved.k = n.seeds) AS moved_in_all_seeds,
       count(*) AS moved_in_any_seed
FROM moved JOIN n USING (unit_id) JOIN units u USING (unit_id)
GROUP BY ALL ORDER BY u.model, u.method"""),
    ("Who the models are",
     "Which checkpoint of which model, dequantised from what, trained and evaluated in which precision, under which "
     "licence (the view `models`, from the units table). This sample run predates schema version 5, which added "
     "these columns: they read as NULL here, as in any run written before them.",
     """SELECT model, model_family, model_type, model_checkpoint, model_quantisation, train_dtypes, eval_dtype,
       n_layers, d_model, model_licence
FROM models ORDER BY model"""),
    ("Base competence per model and task",
     "How well does each model do each task before any intervention: the share of prompts where it ranks answer a "
     "above b, and the mean logit difference (the view `competence`). `near_chance` (below 0.6) units are flagged "
     "and no basis for claims; these tiny models have random weights, so they are at chance.",
     """SELECT model, task, units, round(base_accuracy, 3) AS base_accuracy, round(mean_ld, 3) AS mean_ld,
       near_chance
FROM competence ORDER BY task, model"""),
    ("Models side by side",
     "The cross-model comparison that `runs.compare_models()` returns (docs/python-api.md), as SQL: per task, site, "
     "method and layer set, each model's selected trial, its base competence, and its cells' mean effect by role on "
     "a relative-depth axis 0..1. `compare_models()` leaves out units whose model is near chance (as both tiny models "
     "here are); the SQL keeps them, with `near_chance` to filter on. Pivoted on the model, the effects of two roles "
     "sit side by side:",
     f"""WITH long AS (
{COMPARE_SQL}
)
PIVOT (SELECT task, site, method, role, rel_depth, model, round(effect, 3) AS effect
       FROM long WHERE method = 'activscalar' AND role IN ('S2', 'END'))
ON model USING first(effect)
ORDER BY role, rel_depth"""),
    ("Trials that failed or were interrupted",
     "Which trials failed (their own computation), and which were cut off by a crash and re-run?",
     """SELECT u.model, u.method, t.trial_number, t.status, t.error
FROM trials t JOIN units u USING (unit_id)
WHERE t.status <> 'complete'
ORDER BY u.model, u.method, t.trial_number"""),
    ("No prompt in two splits",
     "Is any prompt (or, for tasks split by entity, any entity such as an IOI name pair) in more than one split?",
     """SELECT unit_id, e.entity, count(DISTINCT split) AS splits
FROM (SELECT unit_id, split, unnest(entities) AS entity FROM examples) e
GROUP BY ALL HAVING count(DISTINCT split) > 1"""),
]

HEADER = """# Querying results

Every result of a sweep is a Parquet table under `RUN_DIR/tables/<table>/part-*.parquet`
(tables: `runs`, `units`, `trials`, `scalars`, `examples`, `predictions`; schemas in
`storage/schema.py`, columns explained in `docs/architecture.md`). Query one or several run
directories at once (several = cross-model analysis); the tables appear as DuckDB views of
the same names, plus the view `selected`: each unit's selected trial by the project's one
selection rule (docs/architecture.md, Selection), with columns `selected_by`, `qualifies`
and `min_flip` added; the view `models` (who each run's models are) and the view
`competence` (each model's base accuracy and mean LD per task, before any intervention).

```
actscale query RUN_DIR [RUN_DIR...] "SQL"          # a table on the terminal
actscale query RUN_DIR "SQL" --csv | --json         # machine-readable
actscale query RUN_DIR "SQL" --parquet out.parquet  # a file
```

From Python: `from storage import open_runs; runs = open_runs(run_a, run_b)`, then
`runs.trials` (a pandas DataFrame, every table likewise), `runs.sql(sql)` and
`runs.selected()` (docs/python-api.md). Queries work while a sweep is still running: parts
appear whole or not at all.

The outputs below come from a real run, `docs/data/sample-run` (two tiny random-weight
models, ActivScalar and SteerVec on IOI, four search trials and one replicate per unit;
`make docs` re-runs `docs/data/sample-sweep.yaml` and rewrites this page), rendered by a test
that fails if this page, the code and that run disagree. Tiny random models barely flip IOI:
the numbers show the tool, not the science.
"""


def _table(frame: pd.DataFrame) -> str:
    with pd.option_context("display.width", 200, "display.max_columns", 50, "display.max_colwidth", 80):
        return str(frame.to_string(index=False))


def render_page(run_dir: Path) -> str:
    parts = [HEADER]
    for number, (title, question, sql) in enumerate(QUERIES, start=1):
        frame, problems = run_sql([run_dir], sql)
        assert not problems, problems
        shown = _table(frame) if len(frame) else f"(no rows; columns: {', '.join(frame.columns)})"
        parts.append(f"## {number}. {title}\n\n{question}\n\n```sql\n{sql}\n```\n\n```\n{shown}\n```\n")
    return "\n".join(parts)
