"""How the pages write numbers and intervals (one place, so that a page made twice is the same bytes)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from storage.report import bootstrap_ci


def fmt(value: Any) -> str:
    """The one way the findings page writes a number: integers as they are, other numbers to three
    significant digits (whole numbers from 1000 up), a missing value as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        raise TypeError("fmt takes numbers, not booleans")
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    x = float(value)
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:.0f}"
    return f"{x:.3g}"


def interval_text(mean: float, lo: float, hi: float) -> str:
    """`actscale report`'s cell: mean [low, high] to three decimals, or - when there is no mean."""
    return "-" if mean != mean else f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def prompt_interval_text(values: np.ndarray, too_few: bool) -> str:
    """`actscale report`'s 95% bootstrap interval over prompts (storage.report.bootstrap_ci), or why there is none."""
    if too_few:
        return f"none (n={len(values)} < min_split)"
    lo, hi = bootstrap_ci(values)
    return f"[{lo:.3f}, {hi:.3f}]"
