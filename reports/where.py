"""Where a behaviour lives, on axes that two models share: relative depth l/(L-1) in bins, by token role.

Two models of different depths (SmolLM2-135M: 30 layers, Gemma 3 270M: 18) are compared only this way:
each trial's per-cell effect (scalars.effect: |alpha - 1| for a scale, |v| / mean |h| for a vector) is
averaged over the layers that fall in each relative-depth bin and over heads, per token role. Never by
absolute layer index: layer 9 is a third of the way up one model and half of the other.

`python -m reports.where RUN_DIR... --task ioi --site mlp_out --method activscalar --out FIGURE.png`
draws the selected trials of that task, site and method, one panel per model, with one colour scale
(the README's opening figure is made this way from the committed paper run).
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from storage.api import open_runs  # noqa: E402
from storage.errors import StorageError  # noqa: E402

DEPTH_BINS = 10  # bins of relative depth: 0-0.1, ..., 0.9-1


def depth_bin(rel_depth: pd.Series, bins: int = DEPTH_BINS) -> pd.Series:
    """The bin of each relative depth in [0, 1] (the last layer, depth 1, falls in the top bin)."""
    return np.minimum((rel_depth.to_numpy(dtype=float) * bins).astype(int), bins - 1)


def _one_order(role: str) -> str:
    return "|".join(sorted(role.split("|"))) if "|" in role else role


def role_order(scalars: pd.DataFrame) -> list[str]:
    """Roles in the order their tokens sit in the prompts (mean position), END last."""
    order = scalars.assign(role=scalars.role.map(_one_order)).groupby("role").mean_position.mean().sort_values()
    roles = [r for r in order.index if r != "END"]
    return roles + (["END"] if "END" in order.index else [])


def where_matrix(scalars: pd.DataFrame, bins: int = DEPTH_BINS) -> pd.DataFrame:
    """One trial's mean cell effect per (relative-depth bin, role): rows are the bins' lower edges
    (0.0, 0.1, ...; every bin present, NaN where the model has no layer in it), columns the roles in
    prompt order. Heads are averaged into their layer's cell."""
    if scalars.empty:
        raise StorageError("no cells to draw: the trial has no scalars rows")
    # a position several templates fill with different words is labelled by its words joined with "|" in
    # order of frequency, which differs between models' prompts: one order (sorted) so that maps align
    cells = scalars.assign(bin=depth_bin(scalars.rel_depth, bins), role=scalars.role.map(_one_order))
    grid = cells.pivot_table(index="bin", columns="role", values="effect", aggfunc="mean")
    grid = grid.reindex(index=range(bins), columns=role_order(scalars))
    grid.index = [round(b / bins, 3) for b in grid.index]
    grid.index.name = "relative depth"
    return grid


def selected_where(run_dirs: Sequence[Path], task: str, site: str, method: str,
                   bins: int = DEPTH_BINS) -> dict[str, pd.DataFrame]:
    """{model: where_matrix of its selected trial} for one task, site and method across the runs' units
    (a unit per model; the first run's unit where several runs have one)."""
    runs = open_runs(*run_dirs)
    chosen = runs.selected()
    chosen = chosen[(chosen.task == task) & (chosen.site == site) & (chosen.method == method)]
    if chosen.empty:
        raise StorageError(f"no selected trial for task {task!r}, site {site!r}, method {method!r} in "
                           f"{', '.join(map(str, run_dirs))}")
    scalars = runs.scalars
    out: dict[str, pd.DataFrame] = {}
    for row in chosen.sort_values(["model", "run_id"]).itertuples():
        if row.model not in out:
            mine = scalars[(scalars.run_id == row.run_id) & (scalars.trial_id == row.trial_id)]
            out[str(row.model)] = where_matrix(mine, bins)
    return out


def aligned(maps: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The maps with one column order (the union of roles, in the first map's order, then the others')."""
    columns: list[str] = []
    for frame in maps.values():
        columns += [c for c in frame.columns if c not in columns]
    return {model: frame.reindex(columns=columns) for model, frame in maps.items()}


def draw_where(maps: dict[str, pd.DataFrame], title: str, path: Path, measure: str = "mean |alpha - 1|") -> Path:
    """One panel per model, the same axes and one colour scale; grey where a model has no cell."""
    maps = aligned(maps)
    vmax = max(float(np.nanmax(m.to_numpy())) for m in maps.values()) or 1.0
    fig, axes = plt.subplots(1, len(maps), figsize=(1.2 + 0.45 * len(next(iter(maps.values())).columns) * len(maps),
                                                    4.2), squeeze=False)
    image = None
    for ax, (model, grid) in zip(axes[0], maps.items()):
        data = np.ma.masked_invalid(grid.to_numpy(dtype=float))
        cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
        image = ax.imshow(data, aspect="auto", origin="lower", cmap=cmap, vmin=0.0, vmax=vmax)
        ax.set_xticks(range(len(grid.columns)), list(grid.columns), rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(grid.index)), [f"{d:.1f}" for d in grid.index], fontsize=7)
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("token role")
    axes[0][0].set_ylabel("relative depth l/(L-1), bins of 0.1")
    assert image is not None
    fig.colorbar(image, ax=list(axes[0]), label=measure, shrink=0.85)
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports.where", description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--task", required=True)
    parser.add_argument("--site", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    maps = selected_where(args.run_dirs, args.task, args.site, args.method)
    title = f"{args.task} / {args.site} / {args.method}: where each model's selected trial acts"
    draw_where(maps, title, args.out)
    print(f"wrote {args.out} ({', '.join(maps)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
