"""docs/python-api.md: the Python API's examples, run on the committed sample run."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from storage.api import open_runs
from storage.query_docs import EXAMPLE_TRIAL, SAMPLE_RUN

# (title, why, code): each code is one expression, evaluated with `runs` open on the sample run
EXAMPLES: list[tuple[str, str, str]] = [
    ("Every table is a DataFrame",
     "`runs.units`, `runs.trials`, `runs.scalars`, `runs.examples`, `runs.predictions`, `runs.curves`, `runs.runs`: "
     "read when asked for, so a sweep that is still running shows its newest rows.",
     "runs.trials.groupby('status').size()"),
    ("Each unit's selected trial",
     "Chosen on val by the project's one rule (docs/architecture.md, Selection), with the unit's columns "
     "beside it: `n_val`/`n_test` are the prompts behind the rates, `warnings` says when they are too few.",
     "runs.selected()[['model', 'method', 'trial_id', 'selected_by', 'n_val', 'val_flip_rate', 'n_test', "
     "'test_flip_rate', 'sites_moved', 'sites_total']]"),
    ("SQL over the tables",
     "The same DuckDB views as `actscale query`, with the view `selected`.",
     "runs.sql(\"SELECT u.method, round(avg(t.val_kl_other), 3) AS mean_val_kl FROM trials t "
     "JOIN units u USING (unit_id) WHERE t.status = 'complete' GROUP BY u.method ORDER BY u.method\")"),
    ("One trial's cells as a grid",
     "Rows are layers, columns the cells' columns (positions labelled by role; roles with their prompt "
     "counts for prompts of several shapes); values are alpha (SteerVec: |v|).",
     f"runs.cells('{EXAMPLE_TRIAL}').round(2).iloc[:, -5:]"),
    ("How stable a selected trial is across seeds",
     "The selected trial and its replicates: mean pairwise Jaccard overlap of the moved cells, Spearman "
     "correlation of the cells' effects, cells moved in all and in any seed, and the test metrics over seeds "
     "(mean, 95% Student-t interval). `.cell_frequency` has the share of seeds in which each cell moved.",
     f"runs.seeds('{EXAMPLE_TRIAL}').summary()"),
    ("Models side by side",
     "`runs.compare_models()`: one row per task (and options), site, method, layer set, role and relative depth "
     "(0..1, in tenths); columns (measure, model), so `['effect']` puts each model's mean cell effect side by side, "
     "and `['val_flip_rate']`, `['trial_id']`, `['base_accuracy']` its selected trial and competence. Units whose "
     "model is near chance on the task are left out unless `include_near_chance=True` (both tiny random models "
     "here are), and listed in `.attrs['near_chance']`. `runs.models()` says who each model is, "
     "`runs.competence()` how well it does each task; the SQL is in docs/querying.md.",
     "runs.compare_models(include_near_chance=True)['effect'].xs('S2', level='role')"
     ".round(3)"),
]

HEADER = """# Python API

```python
from storage import open_runs

runs = open_runs("docs/data/sample-run")           # or several: open_runs("runs/a", "runs/b")
```

`open_runs` takes one or several run directories (several = cross-model analysis: their
tables are unioned) and an optional `min_flip` that overrides each run's
`selection.min_flip`. The object it returns has every table as a pandas DataFrame, `sql()`
over DuckDB, `selected()` by the project's one selection rule, `cells()` for one trial's
grid, `seeds()` for its stability over replicates, and `models()`, `competence()` and
`compare_models()` for comparing models. `docs/querying.md` has more SQL.

Each example below ran on `docs/data/sample-run` (two tiny random-weight models: the numbers
show the tool, not the science); a test re-runs them and fails if this page and the code
disagree (`ACTSCALE_WRITE_DOCS=1` rewrites it).
"""

# Steering needs a model, which storage never imports: this example is written here and
# tests/test_steer.py runs STEERING_CODE and checks that it prints STEERING_OUTPUT.
STEERING_CODE = """from orchestrator.steering import load_trial, next_token_effect
from workers.models import load_model

loaded = load_model("tiny-gpt2")  # or a model and tokenizer of your own, of the trial's depth and width
trial = load_trial("docs/data/sample-run", trial_id="u-14d046a0cc9b-t00001")  # or unit_id=...: its selected trial
effect = next_token_effect(loaded.model, loaded.tokenizer, "When Anna and Tom went to the park, Tom gave a book to",
                           trial, beta=2.0, answers=[" Anna", " Tom"], top=3)
print(effect)"""
STEERING_OUTPUT = """trial   u-14d046a0cc9b-t00001 (tiny-gpt2 / ioi / mlp_out / layers 0,1,2,3 / activscalar), beta 2
prompt  'When Anna and Tom went to the park, Tom gave a book to'
                without              with (beta 2)
p(' Anna')      0.002                0.002
p(' Tom')       3.0e-04              1.6e-04
LD = z_A - z_B  +1.724               +2.418
top 1           'cow' 0.051          'cow' 0.024
top 2           ' Copenhagen' 0.018  '�' 0.021
top 3           'Brussels' 0.016     's' 0.012"""
STEERING = f"""## {len(EXAMPLES) + 1}. What a trial does to a prompt of your own

`next_token_effect` (orchestrator.steering; `actscale steer` prints the same) applies a stored trial to a
model at strength beta and returns a `NextTokenEffect`: the top next tokens without and with it, with
their probabilities, and for two answers (given, or the task's own for a prompt of the task) p(A), p(B)
and LD = z_A - z_B on each side. It applies the trial itself (call it outside a `with steer(...)` block);
one forward per side, or one `generate` per side with `max_new_tokens=N`, which adds the continuations.

```python
{STEERING_CODE}
```

```
{STEERING_OUTPUT}
```
"""


def _shown(value: object) -> str:
    if isinstance(value, (pd.DataFrame, pd.Series)):
        with pd.option_context("display.width", 200, "display.max_columns", 50, "display.max_colwidth", 60):
            return str(value.to_string())
    return repr(value)


def render_page(run_dir: Path = SAMPLE_RUN) -> str:
    runs = open_runs(run_dir)
    parts = [HEADER]
    for number, (title, why, code) in enumerate(EXAMPLES, start=1):
        value = eval(code, {"runs": runs})  # noqa: S307 - the page's own examples
        parts.append(f"## {number}. {title}\n\n{why}\n\n```python\n{code}\n```\n\n```\n{_shown(value)}\n```\n")
    parts.append(STEERING)
    return "\n".join(parts)
