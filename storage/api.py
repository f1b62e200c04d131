"""One entry point for results in Python: `open_runs(RUN_DIR, ...)` (docs/python-api.md).

Each table is a pandas DataFrame read when asked for (a sweep still running shows its
newest rows); `sql` runs DuckDB over the tables and the `selected` view; `selected()` is
each unit's selected trial by the project's one rule (storage/selection.py) with its unit's
columns beside it; `models()` who each model is; `compare_models()` the models side by side.
Several run directories at once is how cross-model analysis works.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from storage.query import COMPARE_SQL, check_run_dirs, load, run_sql
from storage.seeds import SeedStats, seed_stats

# the unit columns that `selected()` puts beside each selected trial
UNIT_COLUMNS = ("model", "task", "site", "layers", "method", "n_layers", "n_train", "n_val", "n_test", "min_split",
                "warnings", "moved_measure", "moved_threshold", "base_accuracy", "mean_ld", "near_chance")
# compare_models: what identifies a comparison cell (rows), and what each model has in it (columns)
COMPARE_INDEX = ("task", "task_options", "site", "method", "layer_set", "role", "rel_depth")
COMPARE_VALUES = ("effect", "moved_share", "n_cells", "trial_id", "selected_by", "val_flip_rate", "test_flip_rate",
                  "sites_moved", "sites_total", "base_accuracy", "mean_ld", "near_chance")


class Runs:
    """The results of one or several run directories."""

    def __init__(self, run_dirs: list[Path], min_flip: float | None = None):
        self.run_dirs = check_run_dirs(run_dirs)
        self.min_flip = min_flip  # overrides every run's selection.min_flip when set

    def __repr__(self) -> str:
        return f"Runs({', '.join(str(d) for d in self.run_dirs)})"

    def table(self, name: str) -> pd.DataFrame:
        """One table of every run, as read now."""
        return load(self.run_dirs, name)

    @property
    def runs(self) -> pd.DataFrame:
        return self.table("runs")

    @property
    def units(self) -> pd.DataFrame:
        return self.table("units")

    @property
    def trials(self) -> pd.DataFrame:
        return self.table("trials")

    @property
    def scalars(self) -> pd.DataFrame:
        return self.table("scalars")

    @property
    def examples(self) -> pd.DataFrame:
        return self.table("examples")

    @property
    def predictions(self) -> pd.DataFrame:
        return self.table("predictions")

    @property
    def curves(self) -> pd.DataFrame:
        """Sufficiency/necessity curves and strength sweeps of the selected trials and replicates."""
        return self.table("curves")

    def sql(self, query: str) -> pd.DataFrame:
        """A DuckDB query over the tables (views of the same names) and the view `selected`."""
        frame, _ = run_sql(self.run_dirs, query, self.min_flip)
        return frame

    def selected(self) -> pd.DataFrame:
        """Each unit's selected trial (chosen on val by the one rule), with its unit's columns."""
        columns = ", ".join(f"u.{c}" for c in UNIT_COLUMNS)
        return self.sql(f"""SELECT {columns}, s.* FROM selected s
            JOIN (SELECT DISTINCT ON (run_id, unit_id) * FROM units ORDER BY run_id, unit_id) u
            USING (run_id, unit_id) ORDER BY u.model, u.task, u.site, u.method, s.run_id""")

    def models(self) -> pd.DataFrame:
        """Who each run's models are: family, model_type, checkpoint, source file and sha256, quantisation,
        the precisions trained and evaluated in, layers, d_model, licence (the view `models`)."""
        return self.sql("SELECT * FROM models ORDER BY model, run_id")

    def competence(self) -> pd.DataFrame:
        """How well each model does each task before any intervention (the view `competence`)."""
        return self.sql("SELECT * FROM competence ORDER BY task, task_options, model, run_id")

    def compare_models(self, include_near_chance: bool = False) -> pd.DataFrame:
        """The models side by side: one row per task (and options), site, method, layer set ('all' or the
        layers), role and relative depth (0..1, in tenths); columns (measure, model), so that
        `frame["effect"]` holds each model's mean cell effect there and `frame["val_flip_rate"]` its selected
        trial's, with the trial's id, selection, test rate, sites moved, and the model's base accuracy and mean
        LD on the task. A unit whose model is near chance on its task is left out (its columns NaN) unless
        `include_near_chance`; `frame.attrs["near_chance"]` lists those units. The SQL is
        storage.query.COMPARE_SQL (docs/querying.md)."""
        long = self.sql(COMPARE_SQL)
        near = long[long.near_chance.fillna(False).astype(bool)]
        left_out = sorted({(m, t, s, meth) for m, t, s, meth in zip(near.model, near.task, near.site, near.method)})
        if not include_near_chance:
            long = long[~long.near_chance.fillna(False).astype(bool)]
        doubled = long[long.duplicated([*COMPARE_INDEX, "model"], keep=False)]
        if len(doubled):
            first = doubled.iloc[0]
            raise ValueError(f"model {first.model!r} has several selected trials for task {first.task!r} "
                             f"{first.task_options}, site {first.site!r}, method {first.method!r}, layers "
                             f"{first.layer_set!r} ({sorted(set(doubled.trial_id))[:4]}): the runs opened hold it twice; "
                             "open one run per model")
        index = list(COMPARE_INDEX)  # one pivot per measure keeps each measure's dtype (numbers stay numbers)
        wide = pd.concat({v: long.pivot(index=index, columns="model", values=v) for v in COMPARE_VALUES}, axis=1)
        wide.columns.names = [None, "model"]
        wide.attrs["near_chance"] = [dict(model=m, task=t, site=s, method=meth) for m, t, s, meth in left_out]
        return wide

    def cells(self, trial_id: str, run_id: str | None = None) -> pd.DataFrame:
        """One trial's cells as a grid: rows are layers, columns the cell columns (roles, or
        positions labelled by role), values the stored `value` (alpha, or |v| for SteerVec)."""
        from storage.report import heatmap_matrix  # matplotlib is imported only here

        rows = self.sql(f"SELECT * FROM scalars WHERE trial_id = '{_quoted(trial_id)}'"
                        + (f" AND run_id = '{_quoted(run_id)}'" if run_id else ""))
        if rows.empty:
            raise KeyError(f"no cells for trial {trial_id!r} in {self}")
        if rows.run_id.nunique() > 1:
            raise KeyError(f"trial {trial_id!r} is in several runs ({sorted(rows.run_id.unique())}): pass run_id")
        matrix, layers, labels, _ = heatmap_matrix(rows)
        return pd.DataFrame(matrix, index=pd.Index(layers, name="layer"), columns=labels)

    def seeds(self, trial_id: str) -> SeedStats:
        """How stable a selected trial is over its replicates (storage/seeds.py)."""
        trials = self.trials
        run_ids = trials[trials.trial_id == trial_id].run_id.unique()
        if len(run_ids) != 1:
            raise KeyError(f"trial {trial_id!r} is in {len(run_ids)} runs of {self}; open that run alone")
        scalars = self.scalars
        return seed_stats(trial_id, trials[trials.run_id == run_ids[0]], scalars[scalars.run_id == run_ids[0]])


def _quoted(text: str) -> str:
    return text.replace("'", "''")


def open_runs(*run_dirs: str | Path | Iterable[str | Path], min_flip: float | None = None) -> Runs:
    """Open run directories: `open_runs("runs/a")`, `open_runs("runs/a", "runs/b")` or a list."""
    dirs: list[Path] = []
    for item in run_dirs:
        dirs += [Path(item)] if isinstance(item, (str, Path)) else [Path(d) for d in item]
    if not dirs:
        raise ValueError("open_runs needs at least one run directory")
    return Runs(dirs, min_flip)
