"""Figures and a one-page report from any set of runs (`actscale report RUN_DIR... --out DIR`).

Each unit is shown by its selected trial, chosen on val by the one rule of
storage/selection.py (`--trial ID` picks one trial instead); test data is only reported.
Methods are compared on sites_moved / sites_total (the same unit for every method) with
n_params beside it, and, where a unit has replicates, on how stable its moved cells are
across seeds (storage/seeds.py). Output is deterministic for given tables: fixed bootstrap
seed, sorted inputs.
"""
from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.image import AxesImage  # noqa: E402

from storage.errors import StorageError  # noqa: E402
from storage.query import load, run_min_flip, run_sql  # noqa: E402
from storage.schema import Status  # noqa: E402
from storage.seeds import SeedStats, seed_stats  # noqa: E402
from storage.selection import describe_rule  # noqa: E402

BOOTSTRAP_SAMPLES = 1000


def select_trials(run_dirs: list[Path], trials: pd.DataFrame, trial_id: str | None = None) -> pd.DataFrame:
    """The trials to show: each unit's selected trial (the `selected` view), or the one asked for."""
    if trial_id is not None:
        chosen = trials[(trials.status == Status.COMPLETE) & (trials.trial_id == trial_id)]
        if chosen.empty:
            raise StorageError(f"--trial {trial_id!r} is not a completed trial of these runs")
        return chosen.assign(selected_by="--trial", qualifies=None, min_flip=None)
    chosen, _ = run_sql(run_dirs, "SELECT * FROM selected ORDER BY unit_id, run_id")
    return chosen


def bootstrap_ci(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    if len(values) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(BOOTSTRAP_SAMPLES, len(values)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def task_label(task: str) -> str:
    """A task as figure titles show it: a JSONL task by its file name, not its whole path."""
    return Path(task).name if task.endswith(".jsonl") else task


def _slug(*parts: object) -> str:
    return "-".join(str(p).replace("/", "_").replace(" ", "_") for p in parts)


def _column_order(scalars: pd.DataFrame) -> pd.DataFrame:
    """The cell columns of a trial's rows, in order: key (position, or role where position is NULL),
    label, and whether the column holds a role that only some prompts have."""
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


def _of(frame: pd.DataFrame, row: Any) -> pd.DataFrame:
    """The rows of `frame` that belong to the trial of `row` (trial ids repeat across runs)."""
    return frame[(frame.run_id == row.run_id) & (frame.trial_id == row.trial_id)]


def _shown(scalars: pd.DataFrame, scaled: bool) -> pd.DataFrame:
    """The values a heatmap shows: alpha for scaling methods; for others (SteerVec) the moved
    measure (|v| / mean |h|), the one that decides which cells moved, rather than the raw value."""
    return scalars if scaled else scalars.assign(value=scalars.effect)


def _draw_heatmap(ax: Axes, matrix: np.ndarray, layers: list[Any], labels: list[str], axis: str, scaled: bool,
                  title: str) -> AxesImage:
    if scaled:
        spread = max(1e-3, float(np.nanmax(np.abs(matrix - 1))))
        image = ax.imshow(matrix, aspect="auto", cmap="RdBu_r", norm=TwoSlopeNorm(1.0, 1 - spread, 1 + spread),
                          origin="lower")
    else:
        image = ax.imshow(matrix, aspect="auto", cmap="viridis", origin="lower")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers], fontsize=7)
    ax.set_xlabel(axis)
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    return image


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def render(run_dirs: list[Path], out: Path, trial_id: str | None = None) -> dict[str, list[Any]]:
    """Write figures, index.html and summary.md into `out`; returns what was made.

    A unit whose stored `value` is a scale factor (units.value_identity = 1) is drawn as alpha
    around 1; any other is drawn by its moved measure (`effect`)."""
    out = Path(out)
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    units, trials = load(run_dirs, "units").drop_duplicates("unit_id"), load(run_dirs, "trials")
    scalars, predictions, runs = load(run_dirs, "scalars"), load(run_dirs, "predictions"), load(run_dirs, "runs")
    if trials.empty:
        raise StorageError(f"no trials in {', '.join(map(str, run_dirs))}: nothing to report")
    chosen = select_trials(run_dirs, trials, trial_id).merge(units, on="unit_id", suffixes=("", "_unit"))
    made: dict[str, list[Any]] = {"heatmaps": [], "seeds": [], "across": [], "depth": [], "tradeoffs": [],
                                  "tables": []}  # figures: {file, ...} each; tables: names
    # trial ids repeat across runs of the same unit: every lookup is by (run_id, trial_id)
    stability = {(row.run_id, row.trial_id): seed_stats(row.trial_id, trials[trials.run_id == row.run_id],
                                                        scalars[scalars.run_id == row.run_id])
                 for row in chosen.itertuples()}
    several_runs = chosen.duplicated(["model", "task", "site", "method"], keep=False)
    chosen = chosen.assign(slug=[_slug(r.model, r.task, r.site, r.method) + (f"-{r.run_id}" if dup else "")
                                 for r, dup in zip(chosen.itertuples(), several_runs)])

    # where it happens: one heatmap per unit's selected trial
    for row in chosen.sort_values(["model", "task", "site", "method"]).itertuples():
        scaled = row.value_identity == 1.0
        s = _shown(_of(scalars, row), scaled)
        if s.empty:
            continue
        matrix, layers, labels, axis = heatmap_matrix(s)
        fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(labels) + 2), max(3, 0.18 * len(layers) + 1.5)))
        flag = " (fallback)" if row.selected_by == "fallback" else ""
        image = _draw_heatmap(ax, matrix, layers, labels, axis, scaled,
                              f"{row.model} / {task_label(row.task)} / {row.site} / {row.method}{flag}\n{row.trial_id}, "
                              f"{int(row.sites_moved)} of {int(row.sites_total)} cells moved")
        fig.colorbar(image, ax=ax, label="alpha" if scaled else f"{row.moved_measure} (the moved measure)")
        name = f"heatmap-{row.slug}.png"
        _save(fig, figures_dir / name)
        made["heatmaps"].append(dict(file=f"figures/{name}", trial_id=row.trial_id, model=row.model, method=row.method))
        stats = stability[(row.run_id, row.trial_id)]
        if stats.n_seeds > 1:
            made["seeds"].append(_seed_heatmap(figures_dir, row, stats))

    # across models: side by side, aligned by role, and |alpha-1| against relative depth
    for (task, site, method), group in chosen.groupby(["task", "site", "method"], sort=True):
        scaled = bool((group.value_identity == 1.0).all())
        if group.model.nunique() < 2:
            continue
        group = group.sort_values("model")
        fig, axes = plt.subplots(1, len(group), figsize=(5 * len(group), 4), squeeze=False)
        for ax, row in zip(axes[0], group.itertuples()):
            matrix, layers, labels, axis = heatmap_matrix(_shown(_of(scalars, row), scaled))
            _draw_heatmap(ax, matrix, [f"{layer / max(1, row.n_layers - 1):.2f}" for layer in layers], labels, axis,
                          scaled, f"{row.model}")
            ax.set_ylabel("relative depth l/(L-1)")
        fig.suptitle(f"{task_label(task)} / {site} / {method}: models side by side", fontsize=10)
        name = f"across-{_slug(task, site, method)}.png"
        _save(fig, figures_dir / name)
        made["across"].append(dict(file=f"figures/{name}", task=task, site=site, method=method))
        if scaled:
            fig, ax = plt.subplots(figsize=(6, 4))
            for row in group.itertuples():
                s = _of(scalars, row)
                depth = s.assign(dev=(s.value - 1).abs()).groupby("rel_depth").dev.mean().sort_index()
                ax.plot(depth.index, depth.to_numpy(), marker="o", label=row.model)
            ax.set_xlabel("relative depth l/(L-1)")
            ax.set_ylabel("mean |alpha - 1|")
            ax.set_title(f"{task_label(task)} / {site} / {method}")
            ax.legend()
            name = f"depth-{_slug(task, site, method)}.png"
            _save(fig, figures_dir / name)
            made["depth"].append(dict(file=f"figures/{name}", task=task, site=site, method=method))

    # trade-offs per unit: val flip_rate against l1, coloured by kl_other, Pareto front
    done = trials[trials.status == Status.COMPLETE].merge(units, on="unit_id", suffixes=("", "_unit"))
    for (run_id, unit_id), group in done.groupby(["run_id", "unit_id"], sort=True):
        first = group.iloc[0]
        fig, ax = plt.subplots(figsize=(5.5, 4))
        points = ax.scatter(group.val_l1, group.val_flip_rate, c=group.val_kl_other, cmap="magma_r", edgecolor="k")
        fig.colorbar(points, ax=ax, label="val kl_other")
        front = pareto_front(group[["val_l1", "val_flip_rate"]].to_numpy())
        ax.plot(front[:, 0], front[:, 1], "--", color="tab:blue", label="Pareto front")
        ax.set_xlabel("val l1")
        ax.set_ylabel("val flip_rate")
        ax.set_title(f"{first.model} / {task_label(first.task)} / {first.site} / {first.method}", fontsize=9)
        ax.legend(loc="lower right")
        key = (first.model, first.task, first.site, first.method)
        runs_of_key = done[(done.model == key[0]) & (done.task == key[1]) & (done.site == key[2])
                           & (done.method == key[3])].run_id.nunique()
        name = f"tradeoff-{_slug(*key)}{f'-{run_id}' if runs_of_key > 1 else ''}.png"
        _save(fig, figures_dir / name)
        made["tradeoffs"].append(dict(file=f"figures/{name}", unit_id=unit_id))

    comparison = method_table(chosen, predictions, stability)
    made["tables"].append("methods")
    config = runs.sort_values("created_at").config_yaml.iloc[-1] if not runs.empty else ""
    thresholds = sorted({run_min_flip(Path(d))[1] for d in run_dirs})
    rule = describe_rule(thresholds[0] if len(thresholds) == 1 else None) if trial_id is None else \
        f"trial {trial_id}, chosen by the user (--trial)"
    warnings = warnings_table(chosen)
    (out / "index.html").write_text(_html(run_dirs, made, comparison, config, rule, warnings))
    (out / "summary.md").write_text(_markdown(run_dirs, made, comparison, rule, warnings))
    return made


def _seed_heatmap(figures_dir: Path, row: Any, stats: SeedStats) -> dict[str, Any]:
    """Per cell, the share of seeds (selected trial and replicates) in which it moved."""
    freq = stats.cell_frequency.rename(columns={"moved_share": "value"})
    matrix, layers, labels, axis = heatmap_matrix(freq)
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(labels) + 2), max(3, 0.18 * len(layers) + 1.5)))
    image = ax.imshow(matrix, aspect="auto", cmap="Greens", vmin=0, vmax=1, origin="lower")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers], fontsize=7)
    ax.set_xlabel(axis)
    ax.set_ylabel("layer")
    ax.set_title(f"{row.model} / {task_label(row.task)} / {row.site} / {row.method}: moved in how many of {stats.n_seeds} "
                 "seeds\n"
                 f"Jaccard {stats.jaccard:.2f}, rank corr {stats.rank_corr:.2f}, in all seeds {stats.moved_in_all}, "
                 f"in any {stats.moved_in_any}", fontsize=9)
    fig.colorbar(image, ax=ax, label="share of seeds in which the cell moved")
    name = f"seeds-{row.slug}.png"
    _save(fig, figures_dir / name)
    return dict(file=f"figures/{name}", trial_id=row.trial_id, model=row.model, method=row.method,
                n_seeds=stats.n_seeds)


def pareto_front(points: np.ndarray) -> np.ndarray:
    """Points (l1, flip) not dominated by any other (lower l1 and higher flip are better)."""
    order = points[np.lexsort((-points[:, 1], points[:, 0]))]
    front, best = [], -np.inf
    for l1, flip in order:
        if flip > best:
            front.append((l1, flip))
            best = flip
    return np.array(front)


def _interval(mean: float, lo: float, hi: float) -> str:
    return "-" if mean != mean else f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def _prompt_interval(values: np.ndarray, too_few: bool) -> str:
    """The 95% bootstrap interval over prompts, or why there is none."""
    if too_few:
        return f"none (n={len(values)} < min_split)"
    lo, hi = bootstrap_ci(values)
    return f"[{lo:.3f}, {hi:.3f}]"


def warnings_table(chosen: pd.DataFrame) -> list[tuple[str, str]]:
    """(unit, warning) for every shown unit whose splits are small or whose model is near chance."""
    out = []
    for row in chosen.drop_duplicates("unit_id").sort_values(["model", "task", "site", "method"]).itertuples():
        for warning in (row.warnings if row.warnings is not None else []):
            out.append((f"{row.model} / {row.task} / {row.site} / {row.method} ({row.unit_id})", str(warning)))
    return out


def method_table(chosen: pd.DataFrame, predictions: pd.DataFrame,
                 stability: dict[tuple[str, str], SeedStats]) -> pd.DataFrame:
    """One row per shown trial: test metrics with intervals over prompts and over seeds, and the
    moved sites in the same unit for every method, with the parameter count beside them."""
    rows = []
    for row in chosen.sort_values(["model", "task", "site", "method"]).itertuples():
        p = _of(predictions, row).sort_values("index")
        small = len(p) < int(row.min_split)  # too few test prompts for an interval to mean anything
        flip_ci, kl_ci = (_prompt_interval(p.flipped.to_numpy(dtype=float), small),
                          _prompt_interval(p.kl_other.to_numpy(dtype=float), small))
        stats = stability[(row.run_id, row.trial_id)]
        rows.append(dict(model=row.model, task=row.task, site=row.site, method=row.method, trial_id=row.trial_id,
                         selected_by=row.selected_by, n_val=int(row.n_val), val_flip_rate=row.val_flip_rate,
                         n_test=len(p), small_split=bool(small or int(row.n_val) < int(row.min_split)),
                         test_flip_rate=row.test_flip_rate, flip_ci95=flip_ci,
                         test_kl_other=row.test_kl_other, kl_ci95=kl_ci,
                         sites_moved=f"{int(row.sites_moved)} / {int(row.sites_total)}", n_params=int(row.n_params),
                         seeds=stats.n_seeds,
                         flip_over_seeds=_interval(*stats.test_flip) if stats.n_seeds > 1 else "-",
                         kl_over_seeds=_interval(*stats.test_kl) if stats.n_seeds > 1 else "-",
                         moved_jaccard=stats.jaccard, moved_rank_corr=stats.rank_corr,
                         moved_in_all_seeds=stats.moved_in_all if stats.n_seeds > 1 else None))
    return pd.DataFrame(rows)


def _warnings_html(warnings: list[tuple[str, str]]) -> str:
    if not warnings:
        return ""
    items = "".join(f"<li><b>{html.escape(unit)}</b>: {html.escape(text)}</li>" for unit, text in warnings)
    return f'<h3>Warnings</h3><ul id="warnings">{items}</ul>'


def _html(run_dirs: list[Path], made: dict[str, list[Any]], comparison: pd.DataFrame, config: str,
          rule: str, warnings: list[tuple[str, str]]) -> str:
    def imgs(key: str, caption: Callable[[dict[str, Any]], str]) -> str:
        return "".join(f'<figure><img src="{html.escape(m["file"])}" alt="{html.escape(m["file"])}">'
                       f"<figcaption>{html.escape(caption(m))}</figcaption></figure>" for m in made[key])
    sections = [
        "<h2>Where it happens</h2><p>" + html.escape(rule[0].upper() + rule[1:]) + ".</p>"
        + imgs("heatmaps", lambda m: f"{m['model']} {m['method']} ({m['trial_id']})"),
        "<h2>Across seeds</h2>" + (imgs("seeds", lambda m: f"{m['model']} {m['method']}: {m['trial_id']} and its "
                                                           f"{m['n_seeds'] - 1} replicate(s)") or
                                   "<p>No replicates in these runs: set <code>search.replicates</code> to 2 or "
                                   "more to see how stable the moved cells are across seeds.</p>"),
        "<h2>Across models</h2>" + (imgs("across", lambda m: f"{m['task']} {m['site']} {m['method']}") or
                                    "<p>Only one model per task, site and method in these runs: nothing to compare. "
                                    "Give several run directories, or a sweep with several models.</p>")
        + imgs("depth", lambda m: f"mean |alpha-1| by relative depth: {m['task']} {m['site']} {m['method']}"),
        "<h2>Trade-offs</h2>" + imgs("tradeoffs", lambda m: m["unit_id"]),
        "<h2>Methods compared</h2><p>Test split; n_val and n_test are the prompts behind each rate; 95% bootstrap "
        "intervals over prompts, none where a split holds fewer than the unit's min_split prompts (small_split "
        "marks such rows: their rates are noise-prone); over seeds, the mean "
        "and 95% Student-t interval across the selected trial and its replicates. sites_moved counts cells "
        "(layer, column[, head]) whose effect is above the method's threshold (units.moved_measure, "
        "units.moved_threshold), in the same unit for every method; n_params is the parameter count.</p>"
        + f'<div id="table-methods">{comparison.to_html(index=False, float_format=lambda v: f"{v:.3f}")}</div>'
        + _warnings_html(warnings),
        f"<h2>Sweep config</h2><pre>{html.escape(config)}</pre>",
    ]
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}figure{display:inline-block;margin:.5em}"
             "img{max-width:680px;border:1px solid #ddd}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px}pre{background:#f6f6f6;padding:1em}")
    runs = ", ".join(html.escape(str(d)) for d in run_dirs)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>actscale report</title><style>{style}</style>"
            f"</head><body><h1>actscale report</h1><p>Runs: {runs}</p>{''.join(sections)}</body></html>\n")


def _markdown(run_dirs: list[Path], made: dict[str, list[Any]], comparison: pd.DataFrame, rule: str,
              warnings: list[tuple[str, str]]) -> str:
    lines = ["# actscale report", "", f"Runs: {', '.join(map(str, run_dirs))}", "", rule[0].upper() + rule[1:] + ".",
             "", "| model | task | site | method | val flip_rate (n) | test flip_rate (95% CI, prompts; n) | "
             "test kl_other (95% CI) | sites moved / total | n_params | seeds | test flip_rate over seeds | "
             "moved Jaccard |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in comparison.itertuples():
        flag = " (fallback)" if r.selected_by == "fallback" else ""
        star = "*" if r.small_split else ""
        jac = "-" if r.moved_jaccard != r.moved_jaccard else f"{r.moved_jaccard:.2f}"
        lines.append(f"| {r.model} | {r.task} | {r.site} | {r.method}{flag} | {r.val_flip_rate:.3f}{star} (n={r.n_val}) | "
                     f"{r.test_flip_rate:.3f}{star} {r.flip_ci95} (n={r.n_test}) | "
                     f"{r.test_kl_other:.3f}{star} {r.kl_ci95} | {r.sites_moved} | {r.n_params} | {r.seeds} | "
                     f"{r.flip_over_seeds} | {jac} |")
    if comparison.small_split.any():
        lines += ["", "\\* a split of this unit holds fewer prompts than its min_split: the rates are noise-prone and "
                  "get no interval over prompts."]
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- **{unit}**: {text}" for unit, text in warnings]
    lines += ["", "Figures: " + ", ".join(m["file"] for key in ("heatmaps", "seeds", "across", "depth", "tradeoffs")
                                          for m in made[key])]
    return "\n".join(lines) + "\n"


__all__ = ["render", "select_trials", "bootstrap_ci", "heatmap_matrix", "pareto_front"]
