"""`actscale status` as text: one row per unit, columns sized to their content.

A column is as wide as its widest value (or its header), at most its `limit`; a longer value
(a task given as a path, a hub model id) is cut in the middle with an ellipsis, keeping its end
(the file name). Columns are always two spaces apart, and nothing depends on a terminal's width,
so the table reads the same on a terminal, piped, and in a log.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

GAP = "  "
ELLIPSIS = "…"


@dataclass(frozen=True)
class Column:
    header: str
    key: str  # the row's value (after `_cells` made it text)
    right: bool = False  # numbers are right-aligned
    limit: int = 32  # the widest the column gets; longer values are cut


# the unit's identity, its trial counts, then the selected trial's values
COLUMNS = [Column("unit", "unit_id"), Column("model", "model"), Column("task", "task"), Column("site", "site"),
           Column("method", "method"), Column("done", "done", True), Column("pruned", "pruned", True),
           Column("reps", "replicates", True), Column("failed", "failed", True),
           Column("interr.", "interrupted", True), Column("pending", "pending", True),
           Column("selected", "selected"), Column("n_val", "n_val", True), Column("val_flip", "val_flip", True),
           Column("n_test", "n_test", True), Column("test_flip", "test_flip", True),
           Column("val_kl", "val_kl", True), Column("test_kl", "test_kl", True),
           Column("sites moved", "sites", True), Column("n_params", "n_params", True),
           Column("seed J", "seed_j", True)]


def cut(text: str, width: int) -> str:
    """`text`, or its start and end around an ellipsis, in at most `width` characters."""
    if len(text) <= width:
        return text
    head = (width - 1) // 3  # keep more of the end: a path's file name, a model's variant
    return text[:head] + ELLIPSIS + text[len(text) - (width - 1 - head):]


def table(columns: list[Column], rows: list[dict[str, str]]) -> list[str]:
    """Header and rows, each column as wide as its widest cell (at most its limit), GAP apart."""
    cells = [[cut(r[c.key], c.limit) for c in columns] for r in rows]
    widths = [max([len(c.header), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        return GAP.join(v.rjust(w) if c.right else v.ljust(w) for c, v, w in zip(columns, values, widths)).rstrip()
    return [line([c.header for c in columns])] + [line(row) for row in cells]


def _fmt(value, spec: str = ".3f") -> str:
    if value is None or value != value:
        return "-"
    return format(value, spec)


def _cells(r: dict) -> dict[str, str]:
    """One unit's status row as the table's text (`-` where no trial is selected yet; `*`: a small split)."""
    chosen = r["selected_trial"] is not None
    val_star, test_star = ("*" if r[f"n_{split}"] < r["min_split"] else "" for split in ("val", "test"))
    return {**{k: str(r[k]) for k in ("unit_id", "model", "task", "site", "method", "done", "pruned", "replicates",
                                      "failed", "interrupted", "pending", "n_val", "n_test")},
            "selected": r["selected_trial"][-6:] + (" (fallback)" if r["selected_by"] == "fallback" else "")
            if chosen else "-",
            "val_flip": _fmt(r["val_flip_rate"]) + val_star, "test_flip": _fmt(r["test_flip_rate"]) + test_star,
            "val_kl": _fmt(r["val_kl_other"]) + val_star, "test_kl": _fmt(r["test_kl_other"]) + test_star,
            "sites": f"{int(r['sites_moved'])}/{int(r['sites_total'])}" if chosen else "-",
            "n_params": _fmt(r["n_params"], ".0f"), "seed_j": _fmt(r["seed_jaccard"], ".2f")}


def status_text(run_dir: Path, rows: list[dict]) -> str:
    """The table of `unit_status` rows, the selection rule, a legend and every unit's warnings."""
    from storage.query import model_lines, run_min_flip
    from storage.selection import describe_rule

    lines = model_lines(run_dir)  # who each model is, and its base accuracy per task
    lines += [""] if lines else []
    lines += table(COLUMNS, [_cells(r) for r in rows])
    rule = describe_rule(run_min_flip(run_dir)[1])
    lines.append(f"\n{rule[0].upper() + rule[1:]}.\nsites moved: cells (layer, column[, head]) whose effect is above "
                 "the method's threshold (units.moved_measure, units.moved_threshold); seed J: mean pairwise Jaccard "
                 "overlap of the moved cells of the selected trial and its replicates; (fallback): no trial reached "
                 "min_flip; n_val, n_test: the prompts behind each rate; *: fewer than the unit's min_split prompts, "
                 "noise-prone.")
    warned = [(r, w) for r in rows for w in r["warnings"]]
    if warned:
        lines.append("\nwarnings:")
        lines += [f"  {r['unit_id']} ({r['model']}/{r['task']}/{r['site']}/{r['method']}): {w}" for r, w in warned]
    return "\n".join(lines)
