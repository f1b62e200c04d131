"""The example queries of docs/querying.md, and the page rendered from a run.

A test renders the page from a generated run and compares it with the committed file, so
the page cannot drift from the code (`ACTSCALE_WRITE_DOCS=1` rewrites it).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from storage.query import run_sql

QUERIES: list[tuple[str, str, str]] = [
    ("Best trial per unit",
     "Which trial of each unit is best on val (highest flip rate, then lowest kl_other, then lowest l1), "
     "and how does it do on test?",
     """SELECT u.model, u.method, t.trial_number, t.val_flip_rate, t.test_flip_rate, t.val_kl_other
FROM trials t JOIN units u USING (unit_id)
WHERE t.status = 'complete'
QUALIFY row_number() OVER (PARTITION BY t.unit_id
                           ORDER BY t.val_flip_rate DESC, t.val_kl_other, t.val_l1) = 1
ORDER BY u.model, u.method"""),
    ("Flip rate against l1 per method",
     "Does a method buy its effect with more movement? Mean flip rate and l1, and their correlation.",
     """SELECT u.method, count(*) AS trials,
       round(avg(t.val_flip_rate), 3) AS mean_val_flip,
       round(avg(t.val_l1), 3) AS mean_val_l1,
       round(corr(t.val_flip_rate, t.val_l1), 3) AS corr_flip_l1
FROM trials t JOIN units u USING (unit_id)
WHERE t.status = 'complete'
GROUP BY u.method ORDER BY u.method"""),
    ("One trial's scalars as a layer x role grid",
     "Where did this trial move the activations? Rows are layers, columns token roles.",
     """PIVOT (SELECT layer, role, round(value, 2) AS value
       FROM scalars
       WHERE trial_id = 'tiny-gpt2-ioi-mlp_out-activscalar-t000'
         AND role IN ('IO', 'S1', 'S2', 'END'))
ON role IN ('IO', 'S1', 'S2', 'END') USING first(value)
GROUP BY layer ORDER BY layer"""),
    ("Scalars across models by relative depth and role",
     "Do two models with different depths act at the same relative depth and role?",
     """SELECT model, round(rel_depth, 2) AS rel_depth,
       round(avg(abs(value - 1)) FILTER (WHERE role = 'S2'), 3) AS s2_shift,
       round(avg(abs(value - 1)) FILTER (WHERE role = 'END'), 3) AS end_shift
FROM scalars
WHERE method = 'activscalar'
GROUP BY ALL ORDER BY model, rel_depth"""),
    ("Failed trials with their errors",
     "Which trials failed, and why?",
     """SELECT u.model, u.method, t.trial_number, t.error
FROM trials t JOIN units u USING (unit_id)
WHERE t.status <> 'complete'
ORDER BY u.model, u.method, t.trial_number"""),
]

HEADER = """# Querying results

Every result of a sweep is a Parquet table under `RUN_DIR/tables/<table>/part-*.parquet`
(tables: `runs`, `units`, `trials`, `scalars`, `examples`, `predictions`; schemas in
`storage/schema.py`). Query one or several run directories at once (several = cross-model
analysis); the tables appear as DuckDB views of the same names:

```
actscale query RUN_DIR [RUN_DIR...] "SQL"          # a table on the terminal
actscale query RUN_DIR "SQL" --csv | --json         # machine-readable
actscale query RUN_DIR "SQL" --parquet out.parquet  # a file
```

From Python: `storage.query.load(run_dir, "trials")` gives a pandas DataFrame and
`storage.query.run_sql([run_a, run_b], sql)` a DataFrame of any query. Queries work while a
sweep is still running: parts appear whole or not at all.

The outputs below come from a small generated run (two tiny models, ActivScalar and
SteerVec, four trials per unit; `tests/sample_run.py`), rendered by a test that fails if
this page and the code disagree.
"""


def _table(frame: pd.DataFrame) -> str:
    with pd.option_context("display.width", 200, "display.max_columns", 50, "display.max_colwidth", 80):
        return frame.to_string(index=False)


def render_page(run_dir: Path) -> str:
    parts = [HEADER]
    for number, (title, question, sql) in enumerate(QUERIES, start=1):
        frame, problems = run_sql([run_dir], sql)
        assert not problems, problems
        parts.append(f"## {number}. {title}\n\n{question}\n\n```sql\n{sql}\n```\n\n```\n{_table(frame)}\n```\n")
    return "\n".join(parts)
