"""Figures and a one-page report from any set of runs (`actscale report RUN_DIR... --out DIR`).

Each unit is shown by its selected trial, chosen on val by the one rule of
storage/selection.py (`--trial ID` picks one trial instead); test data is only reported.
Methods are compared on sites_moved / sites_total (the same unit for every method) with
n_params beside it, and, where a unit has replicates, on how stable its moved cells are
across seeds (storage/seeds.py). What the selected trial's cells do (sufficiency and necessity
curves, the strength sweep; reports/curves.py) and how methods carry over to held-out
templates are drawn from the `curves` table when it has rows. Output is deterministic for
given tables: fixed bootstrap seed, sorted inputs.
"""
from __future__ import annotations

import html
import json
import re
import textwrap
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
from matplotlib.lines import Line2D  # noqa: E402

from reports.curves import FRACTION, TIED, curve_frame, reach_summary, strength_frame, transfer_table  # noqa: E402
from reports.text import interval_text, prompt_interval_text  # noqa: E402
from reports.where import draw_where, where_matrix  # noqa: E402
from storage.errors import StorageError  # noqa: E402
from storage.query import load, model_lines, run_min_flip, run_sql  # noqa: E402
from storage.report import heatmap_matrix  # noqa: E402
from storage.schema import Status  # noqa: E402
from storage.seeds import SeedStats, seed_stats  # noqa: E402
from storage.selection import describe_rule  # noqa: E402

FIGURE_KEYS = ("heatmaps", "seeds", "across", "depth", "relk", "curves", "strength", "tradeoffs")  # keys of made


def select_trials(run_dirs: list[Path], trials: pd.DataFrame, trial_id: str | None = None) -> pd.DataFrame:
    """The trials to show: each unit's selected trial (the `selected` view), or the one asked for."""
    if trial_id is not None:
        chosen = trials[(trials.status == Status.COMPLETE) & (trials.trial_id == trial_id)]
        if chosen.empty:
            raise StorageError(f"--trial {trial_id!r} is not a completed trial of these runs")
        return chosen.assign(selected_by="--trial", qualifies=None, min_flip=None)
    chosen, _ = run_sql(run_dirs, "SELECT * FROM selected ORDER BY unit_id, run_id")
    return chosen


def task_label(task: str) -> str:
    """A task as figure titles show it: a JSONL task by its file name, not its whole path."""
    return Path(task).name if task.endswith(".jsonl") else task


def _slug(*parts: object) -> str:
    return "-".join(str(p).replace("/", "_").replace(" ", "_") for p in parts)


def _options(task_options: str | None) -> dict[str, Any]:
    try:
        options = json.loads(task_options or "{}")
    except ValueError:
        return {}
    return options if isinstance(options, dict) else {}


def task_variants(units: pd.DataFrame) -> dict[str, str]:
    """unit_id -> what tells apart units of one task name in these runs ("" where nothing does):
    the task options that differ, e.g. "heldout_templates: longer", and the layer set where one
    model, task, site and method has several (`layers: each` or a list of layer sets), e.g.
    "layers: 03" (then every model's units of that task, site and method carry theirs, "all"
    included, so cross-model figures still pair them). Without them such units would share
    titles, table rows and file names, and one unit's figure would overwrite another's."""
    out: dict[str, str] = {}
    units = units.drop_duplicates("unit_id")
    for _, group in units.groupby("task", sort=True):
        options = {u: _options(o) for u, o in zip(group.unit_id, group.task_options)}
        keys = sorted({k for o in options.values() for k in o})
        differing = [k for k in keys if len({json.dumps(o.get(k), sort_keys=True) for o in options.values()}) > 1]
        for unit_id, o in options.items():
            out[unit_id] = ", ".join(f"{k}: {'+'.join(map(str, o[k])) if isinstance(o[k], list) else o[k]}"
                                     for k in differing if k in o)
    keyed = units.assign(variant=units.unit_id.map(out))
    for _, group in keyed.groupby(["task", "variant", "site", "method"], sort=True):
        # decided over every model of the group, so that cross-model figures still pair its units
        if group.groupby("model").layers.agg(lambda sets: len({tuple(map(int, x)) for x in sets})).max() > 1:
            width = len(str(int(group.n_layers.max()) - 1))  # zero-padded: layer 2 sorts before layer 10
            for unit_id, layers, n_layers in zip(group.unit_id, group.layers, group.n_layers):
                label = f"layers: {_layers_label(layers, int(n_layers), width)}"
                out[unit_id] = ", ".join(part for part in (out[unit_id], label) if part)
    return out


def _layers_label(layers: Any, n_layers: int, width: int) -> str:
    """A layer set in a few characters: "all", "03" (one layer), "00-05" (a contiguous run), "01+04+07"."""
    values = sorted(int(x) for x in layers)
    if values == list(range(n_layers)):
        return "all"
    shown = [f"{v:0{width}d}" for v in values]
    if len(values) > 2 and values == list(range(values[0], values[-1] + 1)):
        return f"{shown[0]}-{shown[-1]}"
    return "+".join(shown)


def _with_variant(frame: pd.DataFrame, variants: dict[str, str]) -> pd.DataFrame:
    """Adds `variant` and the task as titles (`task_title`), tables (`task_shown`) and file names
    (`task_file`) show it: the task with the options that tell its units apart."""
    variant = frame.unit_id.map(variants).fillna("")
    suffix = variant.map(lambda v: f" ({v})" if v else "")
    file = variant.map(lambda v: "+" + re.sub(r"[^A-Za-z0-9._+-]+", "_", v.replace(": ", "-").replace(", ", "+"))
                       if v else "")
    return frame.assign(variant=variant, task_title=[task_label(t) for t in frame.task] + suffix,
                        task_shown=frame.task + suffix, task_file=frame.task + file)


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
    _title(ax, title)
    return image


def _title(ax: Axes, text: str, fontsize: float = 9) -> None:
    """A title wrapped to its figure's width: long model and task names must not be cut off."""
    inches = float(ax.figure.get_size_inches()[0]) if isinstance(ax.figure, Figure) else 6.0
    width = max(30, int(inches * 72 / (0.6 * fontsize) * 0.8))
    ax.set_title("\n".join(textwrap.fill(line, width) for line in text.split("\n")), fontsize=fontsize)


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
    curves = load(run_dirs, "curves")
    if trials.empty:
        raise StorageError(f"no trials in {', '.join(map(str, run_dirs))}: nothing to report")
    variants = task_variants(units)
    selected = select_trials(run_dirs, trials, trial_id)
    chosen = _with_variant(selected.merge(units, on="unit_id", suffixes=("", "_unit")), variants)
    made: dict[str, list[Any]] = {key: [] for key in FIGURE_KEYS}
    made.update(tables=[], transfer=[])  # figures: {file, ...} each; tables: names; transfer: the table's rows
    # trial ids repeat across runs of the same unit: every lookup is by (run_id, trial_id)
    stability = {(row.run_id, row.trial_id): seed_stats(row.trial_id, trials[trials.run_id == row.run_id],
                                                        scalars[scalars.run_id == row.run_id])
                 for row in chosen.itertuples()}
    several_runs = chosen.duplicated(["model", "task_file", "site", "method"], keep=False)
    chosen = chosen.assign(slug=[_slug(r.model, r.task_file, r.site, r.method) + (f"-{r.run_id}" if dup else "")
                                 for r, dup in zip(chosen.itertuples(), several_runs)])

    # where it happens: one heatmap per unit's selected trial
    for row in chosen.sort_values(["model", "task_file", "site", "method"]).itertuples():
        scaled = row.value_identity == 1.0
        s = _shown(_of(scalars, row), scaled)
        if s.empty:
            continue
        matrix, layers, labels, axis = heatmap_matrix(s)
        fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(labels) + 2), max(3, 0.18 * len(layers) + 1.5)))
        flag = " (fallback)" if row.selected_by == "fallback" else ""
        image = _draw_heatmap(ax, matrix, layers, labels, axis, scaled,
                              f"{row.model} / {row.task_title} / {row.site} / {row.method}{flag}\n{row.trial_id}, "
                              f"{int(row.sites_moved)} of {int(row.sites_total)} cells moved")
        fig.colorbar(image, ax=ax, label="alpha" if scaled else f"{row.moved_measure}\n(the moved measure)")
        name = f"heatmap-{row.slug}.png"
        _save(fig, figures_dir / name)
        made["heatmaps"].append(dict(file=f"figures/{name}", trial_id=row.trial_id, model=row.model, method=row.method,
                                     task=row.task_title))
        stats = stability[(row.run_id, row.trial_id)]
        if stats.n_seeds > 1:
            made["seeds"].append(_seed_heatmap(figures_dir, row, stats))

    # across models: side by side, aligned by role, and |alpha-1| against relative depth
    for (task_file, site, method), group in chosen.groupby(["task_file", "site", "method"], sort=True):
        scaled = bool((group.value_identity == 1.0).all())
        if group.model.nunique() < 2:
            continue
        group = group.sort_values(["model", "run_id"])
        title = group.task_title.iloc[0]
        # one relative-depth x role grid per model (reports/where.py): never paired by absolute layer index
        maps: dict[str, pd.DataFrame] = {}
        for row in group.itertuples():
            maps.setdefault(_line_label(row, group, "model"), where_matrix(_of(scalars, row)))
        name = f"across-{_slug(task_file, site, method)}.png"
        draw_where(maps, f"{title} / {site} / {method}: where each model acts (relative depth x role)",
                   figures_dir / name, "mean |alpha - 1|" if scaled else f"mean effect ({group.moved_measure.iloc[0]})")
        made["across"].append(dict(file=f"figures/{name}", task=title, site=site, method=method))
        if scaled:
            fig, ax = plt.subplots(figsize=(6, 4))
            for row in group.itertuples():
                s = _of(scalars, row)
                depth = s.assign(dev=(s.value - 1).abs()).groupby("rel_depth").dev.mean().sort_index()
                ax.plot(depth.index, depth.to_numpy(), marker="o", label=_line_label(row, group, "model"))
            ax.set_xlabel("relative depth l/(L-1)")
            ax.set_ylabel("mean |alpha - 1|")
            _title(ax, f"{title} / {site} / {method}", 11)
            ax.legend()
            name = f"depth-{_slug(task_file, site, method)}.png"
            _save(fig, figures_dir / name)
            made["depth"].append(dict(file=f"figures/{name}", task=title, site=site, method=method))

    # what the cells do: sufficiency / necessity curves and the strength sweep (table curves)
    if not curves.empty:
        _curve_figures(figures_dir, chosen, curves, stability, made)

    # trade-offs per unit: val flip_rate against l1, coloured by kl_other, Pareto front
    done = _with_variant(trials[trials.status == Status.COMPLETE].merge(units, on="unit_id", suffixes=("", "_unit")),
                         variants)
    for (run_id, unit_id), group in done.groupby(["run_id", "unit_id"], sort=True):
        first = group.iloc[0]
        fig, ax = plt.subplots(figsize=(5.5, 4))
        points = ax.scatter(group.val_l1, group.val_flip_rate, c=group.val_kl_other, cmap="magma_r", edgecolor="k")
        fig.colorbar(points, ax=ax, label="val kl_other")
        front = pareto_front(group[["val_l1", "val_flip_rate"]].to_numpy())
        ax.plot(front[:, 0], front[:, 1], "--", color="tab:blue", label="Pareto front")
        ax.set_xlabel("val l1")
        ax.set_ylabel("val flip_rate")
        _title(ax, f"{first.model} / {first.task_title} / {first.site} / {first.method}")
        ax.legend(loc="lower right")
        key = (first.model, first.task_file, first.site, first.method)
        runs_of_key = done[(done.model == key[0]) & (done.task_file == key[1]) & (done.site == key[2])
                           & (done.method == key[3])].run_id.nunique()
        name = f"tradeoff-{_slug(*key)}{f'-{run_id}' if runs_of_key > 1 else ''}.png"
        _save(fig, figures_dir / name)
        made["tradeoffs"].append(dict(file=f"figures/{name}", unit_id=unit_id))

    comparison = method_table(chosen, predictions, stability)
    made["tables"].append("methods")
    transfer = transfer_table(selected, units, trials, predictions, scalars)
    if len(transfer):
        made["tables"].append("transfer")
        made["transfer"] = transfer.astype(object).where(transfer.notna(), None).to_dict("records")
    config = runs.sort_values("created_at").config_yaml.iloc[-1] if not runs.empty else ""
    thresholds = sorted({run_min_flip(Path(d))[1] for d in run_dirs})
    rule = describe_rule(thresholds[0] if len(thresholds) == 1 else None) if trial_id is None else \
        f"trial {trial_id}, chosen by the user (--trial)"
    warnings = warnings_table(chosen)
    (out / "index.html").write_text(_html(run_dirs, made, comparison, transfer, config, rule, warnings))
    (out / "summary.md").write_text(_markdown(run_dirs, made, comparison, transfer, rule, warnings))
    return made


def _band(frame: pd.DataFrame, short: str) -> tuple[pd.Series, pd.Series, str]:
    """The band to draw around a line: the interval over seeds, or over prompts with one seed."""
    if int(frame.n_seeds.max()) > 1:
        return frame[f"{short}_lo"], frame[f"{short}_hi"], "seeds"
    return frame[f"{short}_prompt_lo"], frame[f"{short}_prompt_hi"], "prompts"


def _line_label(row: Any, group: pd.DataFrame, by: str) -> str:
    """A line's legend label: the method (or model), with its run where it appears in several."""
    value = getattr(row, by)
    return f"{value} ({row.run_id})" if (group[by] == value).sum() > 1 else str(value)


def _k_axis(ax: Axes, ks: list[float], relative: bool) -> None:
    """A log-like k axis on which k = 0 (the model itself, or all cells kept) still shows."""
    positive = sorted(k for k in ks if k > 0)
    linthresh = positive[0] if positive else 1.0
    ax.set_xscale("symlog", linthresh=linthresh, linscale=0.5)
    ticks: list[float] = []
    for k in sorted(set(positive), reverse=True):  # from all cells down, labels a factor 1.5 apart: no overlaps
        if not ticks or ticks[-1] / k >= 1.5:
            ticks.append(k)
    shown = sorted(ticks + ([0.0] if 0 in ks else []))
    ax.set_xticks(shown, [f"{k:.2g}" if relative else str(int(k)) for k in shown], fontsize=7)
    ax.minorticks_off()
    ax.set_xlim(-0.3 * linthresh, (positive[-1] if positive else 1.0) * 1.15)
    ax.set_xlabel("k / n_cells (share of the trial's cells, largest effect first)" if relative else
                  "k (cells, largest effect first)")


def _curve_lines(ax: Axes, frames: list[tuple[str, pd.DataFrame]], color: str, x: str) -> str:
    """Sufficiency solid, necessity dashed, each with its band; returns what the bands are over."""
    over = ""
    for kind, frame in frames:
        if frame.empty:
            continue
        lo, hi, over = _band(frame, "flip")
        solid = kind == "sufficiency"
        ax.plot(frame[x], frame.flip_rate, "-" if solid else "--", color=color, marker="o" if solid else None, ms=3,
                lw=1.5)
        ax.fill_between(frame[x], lo, hi, color=color, alpha=0.12 if solid else 0.06, lw=0)
    return over


def _style_legend(ax: Axes, handles: list[Line2D], extra: list[Line2D]) -> None:
    ax.legend(handles=handles + extra, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)


def _curve_figures(figures_dir: Path, chosen: pd.DataFrame, curves: pd.DataFrame,
                   stability: dict[tuple[str, str], SeedStats], made: dict[str, list[Any]]) -> None:
    """curves-<model>-<task>-<site>.png (a line per method), strength-<model>-<task>-<site>.png and,
    where several models share a task, site and method, relk-<task>-<site>-<method>.png."""
    methods = sorted(chosen.method.unique())
    colors: dict[tuple[str, str], str] = {}  # a method's colour in every figure; its units of other runs get others
    spare = len(methods)
    for method, run_id in sorted(set(zip(chosen.method, chosen.run_id))):
        if any(m == method for m, _ in colors):
            colors[(method, run_id)], spare = f"C{spare % 10}", spare + 1
        else:
            colors[(method, run_id)] = f"C{methods.index(method) % 10}"

    def seeds_of(row: Any) -> tuple[pd.DataFrame, list[str]]:
        return curves[curves.run_id == row.run_id], stability[(row.run_id, row.trial_id)].trial_ids

    kind_handles = [Line2D([], [], color="k", ls="-", marker="o", ms=3, label="sufficiency (only k act)"),
                    Line2D([], [], color="k", ls="--", label="necessity (k set to identity)"),
                    Line2D([], [], color="k", ls="", marker="*", ms=10, label=f"k reaching {FRACTION:.0%} (val)")]
    for (model, task_file, site), group in chosen.groupby(["model", "task_file", "site"], sort=True):
        group = group.sort_values(["method", "run_id"])
        title, slug = f"{model} / {group.task_title.iloc[0]} / {site}", _slug(model, task_file, site)
        fig, ax = plt.subplots(figsize=(8.5, 4.5))
        handles, reached, ks, overs = [], [], [], set()
        for row in group.itertuples():
            c, ids = seeds_of(row)
            frames = [(kind, curve_frame(c, ids, kind, "test")) for kind in ("sufficiency", "necessity")]
            if all(f.empty for _, f in frames):
                continue
            color, label = colors[(row.method, row.run_id)], _line_label(row, group, "method")
            overs.add(_curve_lines(ax, frames, color, "k"))
            ks += [float(k) for _, f in frames for k in f.k]
            reach = reach_summary(c, ids)
            if reach["k"] is not None:
                ax.plot([reach["k"]], [reach["test_at_k"][0]], marker="*", ms=12, color=color, mec="k", ls="")
            handles.append(Line2D([], [], color=color, lw=2, label=label))
            reached.append(dict(reach, method=label, trial_id=row.trial_id))
        if handles:  # none where the sweep ran only the strength sweep (analysis.curves: false)
            _k_axis(ax, ks, relative=False)
            ax.set_ylabel("test flip_rate")
            _title(ax, f"{title}\ntest flip_rate keeping (solid) or removing (dashed) the k cells of largest effect; "
                       f"bands: 95% interval over {' / '.join(sorted(o for o in overs if o))}")
            _style_legend(ax, handles, kind_handles)
            name = f"curves-{slug}.png"
            _save(fig, figures_dir / name)
            made["curves"].append(dict(file=f"figures/{name}", model=model, task=group.task_title.iloc[0], site=site,
                                       methods=reached))
        else:
            plt.close(fig)

        fig, ax = plt.subplots(figsize=(8.5, 4.5))
        handles, own, overs = [], set(), set()
        for row in group.itertuples():
            c, ids = seeds_of(row)
            frame = strength_frame(c, ids, "test")
            if frame.empty:
                continue
            color = colors[(row.method, row.run_id)]
            lo, hi, over = _band(frame, "ld")
            overs.add(over)
            ax.plot(frame.beta, frame.ld_after, "-", marker="o", ms=3, color=color)
            ax.fill_between(frame.beta, lo, hi, color=color, alpha=0.15, lw=0)
            own.add(round(float(frame.ld_before.iloc[0]), 6))
            handles.append(Line2D([], [], color=color, lw=2, label=_line_label(row, group, "method")))
        if not handles:
            plt.close(fig)
            continue
        for value in sorted(own):
            ax.axhline(value, color="0.4", ls=":", lw=1.2)
        ax.axhline(0.0, color="k", lw=0.8)
        for beta in (0.0, 1.0):
            ax.axvline(beta, color="0.8", lw=0.8, zorder=0)
        ax.set_xlabel("strength beta (alpha' = 1 + beta (alpha - 1); v' = beta v): 0 = the model, 1 = the trial")
        ax.set_ylabel("mean test LD'")
        _title(ax, f"{title}\nthe learned values at strength beta; bands: 95% interval over {' / '.join(sorted(overs))}")
        _style_legend(ax, handles, [Line2D([], [], color="0.4", ls=":", label="the model's own LD (beta = 0)"),
                                    Line2D([], [], color="k", lw=0.8, label="LD' = 0 (the answer flips below)")])
        name = f"strength-{slug}.png"
        _save(fig, figures_dir / name)
        made["strength"].append(dict(file=f"figures/{name}", model=model, task=group.task_title.iloc[0], site=site,
                                     ld_before=sorted(own)))

    for (task_file, site, method), group in chosen.groupby(["task_file", "site", "method"], sort=True):
        if group.model.nunique() < 2:
            continue
        group = group.sort_values(["model", "run_id"])
        fig, ax = plt.subplots(figsize=(8.5, 4.5))
        handles, ks, overs = [], [], set()
        for i, row in enumerate(group.itertuples()):
            c, ids = seeds_of(row)
            frames = [(kind, curve_frame(c, ids, kind, "test")) for kind in ("sufficiency", "necessity")]
            if all(f.empty for _, f in frames):
                continue
            color = f"C{i % 10}"
            overs.add(_curve_lines(ax, frames, color, "rel_k"))
            ks += [float(k) for _, f in frames for k in f.rel_k]
            n_cells = int(next(f for _, f in frames if not f.empty).n_cells.iloc[0])
            handles.append(Line2D([], [], color=color, lw=2, label=f"{_line_label(row, group, 'model')} "
                                                                   f"({n_cells} cells)"))
        if len(handles) < 2:
            plt.close(fig)
            continue
        _k_axis(ax, ks, relative=True)
        ax.set_ylabel("test flip_rate")
        _title(ax, f"{group.task_title.iloc[0]} / {site} / {method}\nmodels by the share of cells kept (solid) or "
                   f"removed (dashed); bands: 95% interval over {' / '.join(sorted(o for o in overs if o))}")
        _style_legend(ax, handles, kind_handles[:2])
        name = f"relk-{_slug(task_file, site, method)}.png"
        _save(fig, figures_dir / name)
        made["relk"].append(dict(file=f"figures/{name}", task=group.task_title.iloc[0], site=site, method=method))


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
    _title(ax, f"{row.model} / {row.task_title} / {row.site} / {row.method}: moved in how many of {stats.n_seeds} "
               "seeds\n"
               f"Jaccard {stats.jaccard:.2f}, rank corr {stats.rank_corr:.2f}, in all seeds {stats.moved_in_all}, "
               f"in any {stats.moved_in_any}")
    fig.colorbar(image, ax=ax, label="share of seeds\nin which the cell moved")
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


def warnings_table(chosen: pd.DataFrame) -> list[tuple[str, str]]:
    """(unit, warning) for every shown unit whose splits are small or whose model is near chance."""
    out = []
    for row in chosen.drop_duplicates("unit_id").sort_values(["model", "task_shown", "site", "method"]).itertuples():
        for warning in (row.warnings if row.warnings is not None else []):
            out.append((f"{row.model} / {row.task_shown} / {row.site} / {row.method} ({row.unit_id})", str(warning)))
    return out


def method_table(chosen: pd.DataFrame, predictions: pd.DataFrame,
                 stability: dict[tuple[str, str], SeedStats]) -> pd.DataFrame:
    """One row per shown trial: test metrics with intervals over prompts and over seeds, and the
    moved sites in the same unit for every method, with the parameter count beside them."""
    rows = []
    for row in chosen.sort_values(["model", "task_shown", "site", "method"]).itertuples():
        p = _of(predictions, row).sort_values("index")
        small = len(p) < int(row.min_split)  # too few test prompts for an interval to mean anything
        flip_ci, kl_ci = (prompt_interval_text(p.flipped.to_numpy(dtype=float), small),
                          prompt_interval_text(p.kl_other.to_numpy(dtype=float), small))
        stats = stability[(row.run_id, row.trial_id)]
        rows.append(dict(model=row.model, task=row.task_shown, site=row.site, method=row.method, trial_id=row.trial_id,
                         selected_by=row.selected_by, n_val=int(row.n_val), val_flip_rate=row.val_flip_rate,
                         n_test=len(p), small_split=bool(small or int(row.n_val) < int(row.min_split)),
                         test_flip_rate=row.test_flip_rate, flip_ci95=flip_ci,
                         test_kl_other=row.test_kl_other, kl_ci95=kl_ci,
                         sites_moved=f"{int(row.sites_moved)} / {int(row.sites_total)}", n_params=int(row.n_params),
                         seeds=stats.n_seeds,
                         flip_over_seeds=interval_text(*stats.test_flip) if stats.n_seeds > 1 else "-",
                         kl_over_seeds=interval_text(*stats.test_kl) if stats.n_seeds > 1 else "-",
                         moved_jaccard=stats.jaccard, moved_rank_corr=stats.rank_corr,
                         moved_in_all_seeds=stats.moved_in_all if stats.n_seeds > 1 else None))
    return pd.DataFrame(rows)


def _warnings_html(warnings: list[tuple[str, str]]) -> str:
    if not warnings:
        return ""
    items = "".join(f"<li><b>{html.escape(unit)}</b>: {html.escape(text)}</li>" for unit, text in warnings)
    return f'<h3>Warnings</h3><ul id="warnings">{items}</ul>'


def _over_seeds(interval: tuple[float, float, float], n_seeds: int) -> str:
    return interval_text(*interval) if n_seeds > 1 else "-" if interval[0] != interval[0] else f"{interval[0]:.3f}"


def curves_table(made: dict[str, list[Any]]) -> pd.DataFrame:
    """One row per line of the curve figures: the smallest k whose sufficiency flip_rate reaches
    FRACTION of the full effect, decided on the selected trial's val curve, and the test flip_rate
    at that k and of the full trial, over seeds."""
    rows = []
    for figure in made["curves"]:
        for m in figure["methods"]:
            k = m["k"]
            rows.append({"model": figure["model"], "task": figure["task"], "site": figure["site"],
                         "method": m["method"], "n_cells": m["n_cells"],
                         f"k reaching {FRACTION:.0%} (val)": f"{k} of {m['n_cells']}" if k is not None else
                         "n/a: no effect on val",
                         "k per seed": ", ".join("-" if s is None else str(s) for s in m["k_per_seed"]),
                         "test flip_rate at k": _over_seeds(m["test_at_k"], m["n_seeds"]) if k is not None else "-",
                         "test flip_rate, all cells": _over_seeds(m["test_full"], m["n_seeds"]),
                         "seeds": m["n_seeds"]})
    return pd.DataFrame(rows)


def _transfer_shown(transfer: pd.DataFrame) -> pd.DataFrame:
    """The transfer table as the page and summary.md show it: readable cells, in-distribution
    beside held-out."""
    def cell(rate: Any, ci: Any, n: Any) -> str:
        return "-" if rate is None or rate != rate else f"{float(rate):.3f} {ci} (n={int(n)})"

    def seeds(value: Any, held: str) -> str:
        return TIED if held == TIED else "-" if value is None or value != value else str(value)

    return pd.DataFrame({
        "model": transfer.model, "task": transfer.task, "site": transfer.site, "method": transfer.method,
        "held-out templates": transfer.heldout_templates,
        "in-distribution test flip_rate (95% CI, prompts; n)": [
            cell(r, c, n) for r, c, n in zip(transfer.indist_test_flip_rate, transfer.indist_flip_ci95,
                                             transfer.indist_n_test)],
        "in-distribution, over seeds": [seeds(v, "") for v in transfer.indist_flip_over_seeds],
        "held-out test flip_rate (95% CI, prompts; n)": transfer.heldout,
        "held-out, over seeds": [seeds(v, h) for v, h in zip(transfer.heldout_flip_over_seeds, transfer.heldout)],
        "in-distribution test kl_other (95% CI)": [
            "-" if r != r else f"{r:.3f} {c}" for r, c in zip(transfer.indist_test_kl_other, transfer.indist_kl_ci95)],
        "held-out test kl_other (95% CI)": transfer.heldout_kl,
    })


def _html(run_dirs: list[Path], made: dict[str, list[Any]], comparison: pd.DataFrame, transfer: pd.DataFrame,
          config: str, rule: str, warnings: list[tuple[str, str]]) -> str:
    def imgs(key: str, caption: Callable[[dict[str, Any]], str]) -> str:
        return "".join(f'<figure><img src="{html.escape(m["file"])}" alt="{html.escape(m["file"])}">'
                       f"<figcaption>{html.escape(caption(m))}</figcaption></figure>" for m in made[key])

    def table(name: str, frame: pd.DataFrame) -> str:
        return f'<div id="table-{name}">{frame.to_html(index=False, float_format=lambda v: f"{v:.3f}")}</div>'

    def reach(m: dict[str, Any]) -> str:
        return f"smallest k reaching {FRACTION:.0%} of the full effect (val), and the test flip_rate there: " + ", ".join(
            f"{r['method']} {r['k']} of {r['n_cells']} ({r['test_at_k'][0]:.3f})" if r["k"] is not None else
            f"{r['method']} n/a (no effect on val)" for r in m["methods"])

    curves = curves_table(made)
    sections = [
        "<h2>Where it happens</h2><p>" + html.escape(rule[0].upper() + rule[1:]) + ".</p>"
        + imgs("heatmaps", lambda m: f"{m['model']} {m['task']} {m['method']} ({m['trial_id']})"),
        "<h2>Across seeds</h2>" + (imgs("seeds", lambda m: f"{m['model']} {m['method']}: {m['trial_id']} and its "
                                                           f"{m['n_seeds'] - 1} replicate(s)") or
                                   "<p>No replicates in these runs: set <code>search.replicates</code> to 2 or "
                                   "more to see how stable the moved cells are across seeds.</p>"),
        "<h2>Across models</h2>" + (imgs("across", lambda m: f"{m['task']} {m['site']} {m['method']}") or
                                    "<p>Only one model per task, site and method in these runs: nothing to compare. "
                                    "Give several run directories, or a sweep with several models.</p>")
        + imgs("depth", lambda m: f"mean |alpha-1| by relative depth: {m['task']} {m['site']} {m['method']}")
        + imgs("relk", lambda m: f"test flip_rate by the share of cells kept (solid) or removed (dashed): "
                                 f"{m['task']} {m['site']} {m['method']}"),
        "<h2>What the cells do</h2>" + (
            "<p>Test split, for each unit's selected trial and its replicates. Sufficiency (solid): only the k "
            "cells of largest effect act; necessity (dashed): only those k are set back to identity. Bands are "
            "95% intervals over seeds (Student t), or over prompts (bootstrap) where a unit has one seed. The "
            f"star marks the smallest k whose val flip_rate reaches {FRACTION:.0%} of the full trial's "
            "(decided on val, on the selected trial) at its test flip_rate. The strength figures apply every "
            "learned value at strength beta: beta = 0 is the model itself (dotted line: its own mean LD), "
            "beta = 1 the trial; below LD' = 0 the answer flips.</p>"
            + imgs("curves", lambda m: f"{m['model']} / {m['task']} / {m['site']}: {reach(m)}")
            + table("curves", curves)
            + imgs("strength", lambda m: f"{m['model']} {m['task']} {m['site']}: mean test LD' against beta")
            if made["curves"] or made["strength"] else
            "<p>No curves in these runs: the sweep's analysis (<code>analysis:</code> in the sweep config) was "
            "disabled, or the runs predate it.</p>"),
        "<h2>Transfer to held-out templates</h2>" + (
            "<p>Units whose task holds out templates are tested on those templates only; each sits beside its "
            "in-distribution counterpart (same model, task, site and method, no templates held out). Test "
            "flip_rate with a 95% bootstrap interval over prompts; over seeds, the mean and 95% Student-t "
            "interval across the selected trial and its replicates. Methods whose cells are token positions "
            "cannot run on prompts of another length: they show their in-distribution numbers only.</p>"
            + table("transfer", _transfer_shown(transfer)) if len(transfer) else
            "<p>No unit holds out templates: add a task entry with <code>options: {heldout_templates: [...]}</code> "
            "(and <code>methods:</code> the methods for prompts of any length) to see whether a method carries "
            "over.</p>"),
        "<h2>Trade-offs</h2>" + imgs("tradeoffs", lambda m: m["unit_id"]),
        "<h2>Methods compared</h2><p>Test split; n_val and n_test are the prompts behind each rate; 95% bootstrap "
        "intervals over prompts, none where a split holds fewer than the unit's min_split prompts (small_split "
        "marks such rows: their rates are noise-prone); over seeds, the mean "
        "and 95% Student-t interval across the selected trial and its replicates. sites_moved counts cells "
        "(layer, column[, head]) whose effect is above the method's threshold (units.moved_measure, "
        "units.moved_threshold), in the same unit for every method; n_params is the parameter count.</p>"
        + table("methods", comparison) + _warnings_html(warnings),
        f"<h2>Sweep config</h2><pre>{html.escape(config)}</pre>",
    ]
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}figure{display:inline-block;margin:.5em}"
             "img{max-width:680px;border:1px solid #ddd}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px}pre{background:#f6f6f6;padding:1em}"
             "div[id^=table-]{overflow-x:auto;max-width:100%}figcaption{max-width:680px}")
    runs = ", ".join(html.escape(str(d)) for d in run_dirs)
    models = "".join(f"<li>{html.escape(line)}</li>" for line in model_lines(run_dirs))  # who each model is
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>actscale report</title><style>{style}</style>"
            f"</head><body><h1>actscale report</h1><p>Runs: {runs}</p><ul id='models'>{models}</ul>"
            f"{''.join(sections)}</body></html>\n")


def _markdown_table(frame: pd.DataFrame) -> list[str]:
    return (["| " + " | ".join(frame.columns) + " |", "|" + " --- |" * len(frame.columns)]
            + ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)])


def _markdown(run_dirs: list[Path], made: dict[str, list[Any]], comparison: pd.DataFrame, transfer: pd.DataFrame,
              rule: str, warnings: list[tuple[str, str]]) -> str:
    lines = ["# actscale report", "", f"Runs: {', '.join(map(str, run_dirs))}", ""]
    lines += [f"- {line}" for line in model_lines(run_dirs)] + [""]  # who each model is
    lines += [rule[0].upper() + rule[1:] + ".",
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
    if made["curves"]:
        lines += ["", "## What the cells do", "",
                  f"Per unit's selected trial: the smallest k whose sufficiency flip_rate (only the k cells of largest "
                  f"effect act) reaches {FRACTION:.0%} of the full trial's, decided on val; the test flip_rate at that "
                  "k and with all cells, over seeds (mean [95% t interval]) where there are replicates.", ""]
        lines += _markdown_table(curves_table(made))
    if len(transfer):
        lines += ["", "## Transfer to held-out templates", "",
                  "Test flip_rate on the held-out templates beside the in-distribution counterpart (95% bootstrap "
                  "interval over prompts; over seeds: mean [95% t interval]). Methods tied to token positions cannot "
                  "run on prompts of another length.", ""]
        lines += _markdown_table(_transfer_shown(transfer))
    lines += ["", "Figures: " + ", ".join(m["file"] for key in FIGURE_KEYS for m in made[key])]
    return "\n".join(lines) + "\n"


__all__ = ["render", "select_trials", "heatmap_matrix", "pareto_front", "task_variants", "curves_table", "FIGURE_KEYS"]
