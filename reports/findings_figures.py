"""The findings page's figures: each computed as data first (`forest_frame`, and the claims' own frames in
ClaimResult.figure), then drawn (`draw`). One figure per claim: a forest of every interval or bracket that entered
a verdict, one panel per measured quantity with its threshold, coloured by outcome; C4 adds the strength curves,
C5 the fronts of the search trials, C3 its retrained mask controls and (c3-maps.png) the scalars beside the patching map."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from reports.engine import ClaimResult, Outcome  # noqa: E402

COLORS = {Outcome.SUPPORTED: "tab:green", Outcome.NOT_SUPPORTED: "tab:red", Outcome.INCONCLUSIVE: "0.45"}
UNJUDGED = "not judged"  # measured on a design too weak to judge (drawn hollow)
MAX_PANELS = 4


def forest_frame(result: ClaimResult) -> pd.DataFrame:
    """One row per condition that has a value to draw: unit, condition, value, lo, hi, threshold, outcome."""
    rows = [dict(unit=u.unit, condition=c.name, value=c.point[0], lo=c.point[1], hi=c.point[2],
                 threshold=c.threshold, outcome=outcome)
            for u in result.units
            for c, outcome in [(c, c.outcome) for c in u.conditions] + [(c, UNJUDGED) for c in u.unjudged]
            if c.point is not None and not math.isnan(c.point[0])]
    return pd.DataFrame(rows, columns=["unit", "condition", "value", "lo", "hi", "threshold", "outcome"])


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def _forest(ax: Axes, frame: pd.DataFrame, name: str) -> None:
    units = list(dict.fromkeys(frame.unit))
    for row in frame.itertuples(index=False):
        y = len(units) - 1 - units.index(row.unit)
        lo, hi = (row.lo, row.hi) if not (math.isnan(row.lo) or math.isnan(row.hi)) else (row.value, row.value)
        color = COLORS.get(row.outcome, "0.6")
        # a point estimate may lie outside its percentile interval (a skewed bootstrap): the bar still spans it
        lo, hi = min(lo, row.value), max(hi, row.value)
        ax.errorbar([row.value], [y], xerr=[[row.value - lo], [hi - row.value]], fmt="o", capsize=3, color=color,
                    mfc="white" if row.outcome == UNJUDGED else color)
    thresholds = sorted({float(t) for t in frame.threshold.dropna()})
    for t in thresholds:
        ax.axvline(t, color="k", ls="--", lw=0.8)
    values = np.concatenate([frame[c].to_numpy(dtype=float) for c in ("value", "lo", "hi")] + [np.array(thresholds)])
    values = values[np.isfinite(values)]
    if len(values) and values.min() > 0 and values.max() / values.min() > 50:
        ax.set_xscale("log")
    ax.set_yticks(range(len(units)), list(reversed(units)), fontsize=7)
    ax.set_ylim(-0.7, len(units) - 0.3)
    ax.set_title("\n".join(_wrap(name, 42)), fontsize=8)


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


def _curves(ax: Axes, frame: pd.DataFrame) -> None:
    for i, (unit, f) in enumerate(frame.groupby("unit", sort=False)):
        f = f.sort_values("beta")
        color = f"C{i % 10}"
        ax.plot(f.beta, f.ld_after, "o-", ms=3, color=color, label=unit)
        ax.fill_between(f.beta, f.ld_lo, f.ld_hi, color=color, alpha=0.15, lw=0)
    ax.axvspan(1.0, max(1.0, float(frame.beta.max())) + 0.05, color="0.9", zorder=0, label="extrapolation (not judged)")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xlabel("beta")
    ax.set_ylabel("mean test LD' (band: 95% over seeds)")
    ax.set_title("strength sweep: judged on [-1, 1]", fontsize=8)
    ax.legend(fontsize=6)


def _fronts(ax: Axes, frame: pd.DataFrame) -> None:
    markers = "os^vDP*X"
    methods = list(dict.fromkeys(frame.method))
    for i, (task, f) in enumerate(frame.groupby("task", sort=False)):
        for method, g in f.groupby("method", sort=False):
            ax.scatter(g.test_kl_other, g.test_flip_rate, s=14, color=f"C{i % 10}",
                       marker=markers[methods.index(method) % len(markers)], label=f"{task}, {method}")
        for _, u in f.groupby("unit", sort=False):
            u = u.sort_values("test_kl_other")
            ax.plot(u.test_kl_other, u.test_flip_rate, color=f"C{i % 10}", lw=0.5, alpha=0.5)
    ax.set_xlabel("test kl_other (nats)")
    ax.set_ylabel("test flip_rate")
    ax.set_title("fronts: the complete search trials of each unit", fontsize=8)
    ax.legend(fontsize=6)


def _controls(ax: Axes, frame: pd.DataFrame) -> None:
    for i, (unit, f) in enumerate(frame.groupby("unit", sort=False)):
        color = f"C{i % 10}"
        rand, top = f[f.family == "random"], f[f.family == "top"]
        ax.scatter(rand.k, rand.test_flip_rate, s=10, color=color, alpha=0.4, marker="x")
        ax.scatter(top.k, top.test_flip_rate, s=28, color=color, marker="o", label=f"{unit}: top-k (x: random-k)")
        for name, g in f[~f.family.isin(["top", "random"])].groupby("family"):
            ax.scatter(g.k, g.test_flip_rate, s=28, color=color, marker="s")
            for r in g.itertuples(index=False):
                ax.annotate(str(name), (r.k, r.test_flip_rate), fontsize=5)
    ax.set_xscale("log")
    ax.set_xlabel("cells free in the retrained control (k)")
    ax.set_ylabel("test flip_rate")
    ax.set_title("retrained mask controls: top-k against random-k", fontsize=8)
    ax.legend(fontsize=6)


def draw_maps(frame: pd.DataFrame, path: Path) -> None:
    """Per unit, the selected trial's |alpha - 1| beside the unintervened model's activation-patching effect,
    layer x cell column, each map on its own colour scale (they are compared by rank: C3 (c))."""
    units = list(dict.fromkeys(frame.unit))
    fig, axes = plt.subplots(len(units), 2, figsize=(9.0, 2.6 * len(units) + 0.6), squeeze=False)
    for axs, unit in zip(axes, units):
        f = frame[frame.unit == unit]
        columns = list(dict.fromkeys(f.sort_values("column", key=_column_order).column))
        layers = sorted(set(f.layer))
        for ax, (kind, label) in zip(axs, (("scalars", "|alpha - 1| (selected trial)"),
                                           ("patching", "|activation patching effect| (no intervention)"))):
            grid = f[f.kind == kind].pivot_table(index="layer", columns="column", values="value", aggfunc="mean")
            grid = grid.reindex(index=layers, columns=columns)
            image = ax.imshow(grid.to_numpy(dtype=float), aspect="auto", origin="lower", cmap="viridis")
            fig.colorbar(image, ax=ax, fraction=0.04)
            ax.set_xticks(range(len(columns)), columns, fontsize=5, rotation=90)
            ax.set_yticks(range(len(layers)), [str(x) for x in layers], fontsize=5)
            ax.set_ylabel("layer", fontsize=7)
            ax.set_title(f"{unit}: {label}", fontsize=7)
    _save(fig, path)


def _column_order(columns: pd.Series) -> pd.Series:
    """Positions in numeric order, roles after them in their names' order."""
    return columns.map(lambda c: (0, int(c.split("/")[0]), c) if c.split("/")[0].isdigit() else (1, 0, c))


def draw(result: ClaimResult, path: Path) -> None:
    """The claim's figure at `path` (PNG)."""
    forest = forest_frame(result)
    names = list(dict.fromkeys(forest.condition))[:MAX_PANELS]
    extra: list[tuple[Any, pd.DataFrame]] = [(f, result.figure[k]) for k, f in (("curves", _curves), ("fronts", _fronts),
                                                                                   ("controls", _controls))
                                             if k in result.figure and len(result.figure[k])]
    panels = max(1, len(names) + len(extra))
    height = max(3.0, 0.35 * max((forest.unit.nunique() if len(forest) else 1), 1) + 1.8)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, height), squeeze=False)
    if not names and not extra:
        axes[0][0].text(0.5, 0.5, "no interval to draw: every condition waits for data", ha="center", va="center",
                        transform=axes[0][0].transAxes)
        axes[0][0].set_axis_off()
    for ax, name in zip(axes[0], names):
        _forest(ax, forest[forest.condition == name], name)
    for ax, (drawer, frame) in zip(axes[0][len(names):], extra):
        drawer(ax, frame)
    if names:
        fig.suptitle(f"{result.key}: intervals and brackets against their thresholds (dashed)\ngreen supported, red "
                     "not supported, grey inconclusive, hollow measured but not judged", fontsize=8)
    _save(fig, path)
    if "maps" in result.figure and len(result.figure["maps"]):
        draw_maps(result.figure["maps"], maps_path(path))


def maps_path(path: Path) -> Path:
    """Where a claim's maps figure goes, beside its figure: c3.png -> c3-maps.png."""
    return path.with_name(f"{path.stem}-maps{path.suffix}")
