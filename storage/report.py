"""Figures and a one-page report from any set of runs (`actscale report RUN_DIR... --out DIR`).

Selection rule (documented, also used by `make run`'s query): for each unit, the best trial
is the completed one with the highest val flip_rate, then the lowest val kl_other, then
the lowest val l1 (`--trial ID` picks one trial instead). Test data is only reported.
Output is deterministic for given tables: fixed bootstrap seed, sorted inputs.
"""
from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402

from storage.errors import StorageError  # noqa: E402
from storage.query import load  # noqa: E402

SELECTION_RULE = ("best trial per unit = highest val flip_rate, then lowest val kl_other, then lowest val l1 "
                  "(test split only reported)")
BOOTSTRAP_SAMPLES = 1000
SCALED_METHODS = ("activscalar", "dynscalar")


def select_trials(trials: pd.DataFrame, trial_id: str | None = None) -> pd.DataFrame:
    done = trials[trials.status == "complete"]
    if trial_id is not None:
        chosen = done[done.trial_id == trial_id]
        if chosen.empty:
            raise StorageError(f"--trial {trial_id!r} is not a completed trial of these runs")
        return chosen
    ordered = done.sort_values(["unit_id", "val_flip_rate", "val_kl_other", "val_l1", "trial_id"],
                               ascending=[True, False, True, True, True])
    return ordered.groupby("unit_id", sort=True).head(1)


def bootstrap_ci(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    if len(values) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(BOOTSTRAP_SAMPLES, len(values)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def _slug(*parts) -> str:
    return "-".join(str(p).replace("/", "_").replace(" ", "_") for p in parts)


def heatmap_matrix(scalars: pd.DataFrame) -> tuple[np.ndarray, list[int], list[str]]:
    """layers x positions (or layers x heads at the last position for per-head sites)."""
    if scalars["head"].notna().any():
        last = scalars.position.max()
        s = scalars[scalars.position == last]
        grid = s.pivot_table(index="layer", columns="head", values="value", aggfunc="first").sort_index()
        return grid.to_numpy(), list(grid.index), [f"head {int(h)}" for h in grid.columns]
    grid = scalars.pivot_table(index="layer", columns="position", values="value", aggfunc="first").sort_index()
    roles = scalars.drop_duplicates("position").set_index("position")["role"]
    return grid.to_numpy(), list(grid.index), [str(roles[p]) for p in grid.columns]


def _draw_heatmap(ax, matrix: np.ndarray, layers: list[int], labels: list[str], method: str, title: str):
    if method in SCALED_METHODS:
        spread = max(1e-3, float(np.nanmax(np.abs(matrix - 1))))
        image = ax.imshow(matrix, aspect="auto", cmap="RdBu_r", norm=TwoSlopeNorm(1.0, 1 - spread, 1 + spread),
                          origin="lower")
    else:
        image = ax.imshow(matrix, aspect="auto", cmap="viridis", origin="lower")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(layers)), layers, fontsize=7)
    ax.set_xlabel("token role (position)" if not labels or not labels[0].startswith("head") else "head (last position)")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    return image


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def render(run_dirs: list[Path], out: Path, trial_id: str | None = None) -> dict:
    """Write figures, index.html and summary.md into `out`; returns what was made."""
    out = Path(out)
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    units, trials = load(run_dirs, "units").drop_duplicates("unit_id"), load(run_dirs, "trials")
    scalars, predictions, runs = load(run_dirs, "scalars"), load(run_dirs, "predictions"), load(run_dirs, "runs")
    if trials.empty:
        raise StorageError(f"no trials in {', '.join(map(str, run_dirs))}: nothing to report")
    chosen = select_trials(trials, trial_id).merge(units, on="unit_id", suffixes=("", "_unit"))
    made: dict = {"heatmaps": [], "across": [], "depth": [], "tradeoffs": [], "tables": []}

    # where it happens: one heatmap per unit's selected trial
    for row in chosen.sort_values(["model", "task", "site", "method"]).itertuples():
        s = scalars[scalars.trial_id == row.trial_id]
        if s.empty:
            continue
        matrix, layers, labels = heatmap_matrix(s)
        fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(labels) + 2), max(3, 0.18 * len(layers) + 1.5)))
        image = _draw_heatmap(ax, matrix, layers, labels, row.method,
                              f"{row.model} / {row.task} / {row.site} / {row.method}\n{row.trial_id}")
        fig.colorbar(image, ax=ax, label="alpha" if row.method in SCALED_METHODS else "|v| (L2 norm)")
        name = f"heatmap-{_slug(row.model, row.task, row.site, row.method)}.png"
        _save(fig, figures_dir / name)
        made["heatmaps"].append(dict(file=f"figures/{name}", trial_id=row.trial_id, model=row.model, method=row.method))

    # across models: side by side, aligned by role, and |alpha-1| against relative depth
    for (task, site, method), group in chosen.groupby(["task", "site", "method"], sort=True):
        if group.model.nunique() < 2:
            continue
        group = group.sort_values("model")
        fig, axes = plt.subplots(1, len(group), figsize=(5 * len(group), 4), squeeze=False)
        for ax, row in zip(axes[0], group.itertuples()):
            matrix, layers, labels = heatmap_matrix(scalars[scalars.trial_id == row.trial_id])
            _draw_heatmap(ax, matrix, [f"{layer / max(1, row.n_layers - 1):.2f}" for layer in layers], labels,
                          method, f"{row.model}")
            ax.set_ylabel("relative depth l/(L-1)")
        fig.suptitle(f"{task} / {site} / {method}: models side by side", fontsize=10)
        name = f"across-{_slug(task, site, method)}.png"
        _save(fig, figures_dir / name)
        made["across"].append(dict(file=f"figures/{name}", task=task, site=site, method=method))
        if method in SCALED_METHODS:
            fig, ax = plt.subplots(figsize=(6, 4))
            for row in group.itertuples():
                s = scalars[scalars.trial_id == row.trial_id]
                depth = s.assign(dev=(s.value - 1).abs()).groupby("rel_depth").dev.mean().sort_index()
                ax.plot(depth.index, depth.to_numpy(), marker="o", label=row.model)
            ax.set_xlabel("relative depth l/(L-1)")
            ax.set_ylabel("mean |alpha - 1|")
            ax.set_title(f"{task} / {site} / {method}")
            ax.legend()
            name = f"depth-{_slug(task, site, method)}.png"
            _save(fig, figures_dir / name)
            made["depth"].append(dict(file=f"figures/{name}", task=task, site=site, method=method))

    # trade-offs per unit: val flip_rate against l1, coloured by kl_other, Pareto front
    done = trials[trials.status == "complete"].merge(units, on="unit_id", suffixes=("", "_unit"))
    for unit_id, group in done.groupby("unit_id", sort=True):
        first = group.iloc[0]
        fig, ax = plt.subplots(figsize=(5.5, 4))
        points = ax.scatter(group.val_l1, group.val_flip_rate, c=group.val_kl_other, cmap="magma_r", edgecolor="k")
        fig.colorbar(points, ax=ax, label="val kl_other")
        front = pareto_front(group[["val_l1", "val_flip_rate"]].to_numpy())
        ax.plot(front[:, 0], front[:, 1], "--", color="tab:blue", label="Pareto front")
        ax.set_xlabel("val l1")
        ax.set_ylabel("val flip_rate")
        ax.set_title(f"{first.model} / {first.task} / {first.site} / {first.method}", fontsize=9)
        ax.legend(loc="lower right")
        name = f"tradeoff-{_slug(first.model, first.task, first.site, first.method)}.png"
        _save(fig, figures_dir / name)
        made["tradeoffs"].append(dict(file=f"figures/{name}", unit_id=unit_id))

    comparison = method_table(chosen, predictions)
    made["tables"].append("methods")
    config = runs.sort_values("created_at").config_yaml.iloc[-1] if not runs.empty else ""
    (out / "index.html").write_text(_html(run_dirs, made, comparison, config))
    (out / "summary.md").write_text(_markdown(run_dirs, made, comparison))
    return made


def pareto_front(points: np.ndarray) -> np.ndarray:
    """Points (l1, flip) not dominated by any other (lower l1 and higher flip are better)."""
    order = points[np.lexsort((-points[:, 1], points[:, 0]))]
    front, best = [], -np.inf
    for l1, flip in order:
        if flip > best:
            front.append((l1, flip))
            best = flip
    return np.array(front)


def method_table(chosen: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for row in chosen.sort_values(["model", "task", "site", "method"]).itertuples():
        p = predictions[predictions.trial_id == row.trial_id].sort_values("index")
        flips = p.flipped.to_numpy(dtype=float)
        kls = p.kl_other.to_numpy(dtype=float)
        f_lo, f_hi = bootstrap_ci(flips)
        k_lo, k_hi = bootstrap_ci(kls)
        rows.append(dict(model=row.model, task=row.task, site=row.site, method=row.method, trial_id=row.trial_id,
                         test_flip_rate=row.test_flip_rate, flip_ci95=f"[{f_lo:.3f}, {f_hi:.3f}]",
                         test_kl_other=row.test_kl_other, kl_ci95=f"[{k_lo:.3f}, {k_hi:.3f}]",
                         n_params=int(row.n_params), n_active=int(row.n_active), n_test_prompts=len(p)))
    return pd.DataFrame(rows)


def _html(run_dirs, made, comparison: pd.DataFrame, config: str) -> str:
    def imgs(key, caption):
        return "".join(f'<figure><img src="{html.escape(m["file"])}" alt="{html.escape(m["file"])}">'
                       f"<figcaption>{html.escape(caption(m))}</figcaption></figure>" for m in made[key])
    sections = [
        "<h2>Where it happens</h2><p>" + html.escape(SELECTION_RULE) + "</p>"
        + imgs("heatmaps", lambda m: f"{m['model']} {m['method']} ({m['trial_id']})"),
        "<h2>Across models</h2>" + (imgs("across", lambda m: f"{m['task']} {m['site']} {m['method']}") or
                                    "<p>Only one model per task, site and method in these runs: nothing to compare. "
                                    "Give several run directories, or a sweep with several models.</p>")
        + imgs("depth", lambda m: f"mean |alpha-1| by relative depth: {m['task']} {m['site']} {m['method']}"),
        "<h2>Trade-offs</h2>" + imgs("tradeoffs", lambda m: m["unit_id"]),
        "<h2>Methods compared (test split, 95% bootstrap intervals over prompts)</h2>"
        + f'<div id="table-methods">{comparison.to_html(index=False, float_format=lambda v: f"{v:.3f}")}</div>',
        f"<h2>Sweep config</h2><pre>{html.escape(config)}</pre>",
    ]
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}figure{display:inline-block;margin:.5em}"
             "img{max-width:680px;border:1px solid #ddd}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px}pre{background:#f6f6f6;padding:1em}")
    runs = ", ".join(html.escape(str(d)) for d in run_dirs)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>actscale report</title><style>{style}</style>"
            f"</head><body><h1>actscale report</h1><p>Runs: {runs}</p>{''.join(sections)}</body></html>\n")


def _markdown(run_dirs, made, comparison: pd.DataFrame) -> str:
    lines = ["# actscale report", "", f"Runs: {', '.join(map(str, run_dirs))}", "", SELECTION_RULE, "",
             "| model | task | site | method | test flip_rate (95% CI) | test kl_other (95% CI) | n_active / n_params |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in comparison.itertuples():
        lines.append(f"| {r.model} | {r.task} | {r.site} | {r.method} | {r.test_flip_rate:.3f} {r.flip_ci95} | "
                     f"{r.test_kl_other:.3f} {r.kl_ci95} | {r.n_active} / {r.n_params} |")
    lines += ["", "Figures: " + ", ".join(m["file"] for key in ("heatmaps", "across", "depth", "tradeoffs")
                                          for m in made[key])]
    return "\n".join(lines) + "\n"


__all__ = ["render", "select_trials", "bootstrap_ci", "heatmap_matrix", "pareto_front"]
