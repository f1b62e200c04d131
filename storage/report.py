"""Data behind the pages that other storage modules and tools read: a trial's cells as a grid, and the
plain bootstrap interval over prompts. No drawing here (no matplotlib): the pages themselves are in the
reports package (`actscale report` is reports/report.py, docs/findings.md reports/findings.py).

Kept at this path for its importers: storage/api.py (`Runs.cells`), bench/pruning.py and some tests.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

BOOTSTRAP_SAMPLES = 1000


def bootstrap_ci(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """The 95% percentile bootstrap interval of a mean over independent values (prompts), fixed seed."""
    if len(values) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(BOOTSTRAP_SAMPLES, len(values)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def _column_order(scalars: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The cell columns of a trial's rows, in order: key (position, or role where position is NULL),
    label, and whether the column holds a role that only some prompts have; and the rows with their key."""
    first = scalars.assign(key=[f"p{int(p)}" if p == p and p is not None else f"r:{r}"
                                for p, r in zip(scalars.position, scalars.role)])
    cols = first.drop_duplicates("key").assign(end=lambda f: f.role == "END")
    cols = cols.sort_values(["end", "mean_position", "role"]) if cols.position.isna().any() else \
        cols.sort_values("mean_position")
    by_role = cols.position.isna()
    most = int(cols.n_prompts.max()) if len(cols) else 0
    partial = by_role & (cols.n_prompts < most)
    labels = [f"{r} ({int(n)}){'*' if part else ''}" if role else str(r)
              for r, n, role, part in zip(cols.role, cols.n_prompts, by_role, partial)]
    return pd.DataFrame({"key": cols.key.to_numpy(), "label": labels, "by_role": by_role.to_numpy()}), first


def heatmap_matrix(scalars: pd.DataFrame) -> tuple[np.ndarray, list[int], list[str], str]:
    """layers x columns, and the column axis's title: token positions labelled by role, or, for
    prompts of several shapes, roles labelled by how many prompts have them ("office (9)*": *
    marks a role that not every prompt has); per-head sites: layers x heads at the last column (END)."""
    columns, keyed = _column_order(scalars)
    if scalars["head"].notna().any():
        last = keyed[keyed.role == "END"].key.iloc[0] if (keyed.role == "END").any() else columns.key.iloc[-1]
        s = keyed[keyed.key == last]
        grid = s.pivot_table(index="layer", columns="head", values="value", aggfunc="first").sort_index()
        return grid.to_numpy(), list(grid.index), [f"head {int(h)}" for h in grid.columns], "head (at END)"
    grid = keyed.pivot_table(index="layer", columns="key", values="value", aggfunc="first").sort_index()
    grid = grid[columns.key.tolist()]
    axis = "token role (prompts that have it; * = not every prompt)" if columns.by_role.any() else \
        "token role (position)"
    return grid.to_numpy(), list(grid.index), columns.label.tolist(), axis


__all__ = ["bootstrap_ci", "heatmap_matrix", "BOOTSTRAP_SAMPLES"]
