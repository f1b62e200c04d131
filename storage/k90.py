"""k90, the fewest top cells whose val flip_rate alone reaches 90% of the trial's own full flip_rate, for the
reports (reports may import storage, not workers): a copy of workers/k90.py, which the analysis and the controls read,
so that a control at k90 is at the k the page reads; tests/test_import_map.py holds the two equal. No torch.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

from storage.selection import RATE_SLACK

K90_FRACTION = 0.9  # the share of the full trial's val flip_rate that k90's cells must keep alone


def k90_target(full: float | None, fraction: float = K90_FRACTION) -> float | None:
    """The flip_rate a k must reach: `fraction` of the full trial's (k = all cells), less RATE_SLACK (rates are
    float32 means: 18/20 is 0.89999998); None where the trial flips nothing or its full point is missing (any k
    would then reach it)."""
    if full is None or math.isnan(full) or not full > 0:
        return None
    return fraction * full - RATE_SLACK


def k90_of(flips: Mapping[int, float], n_cells: int, fraction: float = K90_FRACTION) -> int | None:
    """The smallest scored k (k -> sufficiency flip_rate on val) reaching the target; None as k90_target, or where
    no scored k reaches it."""
    target = k90_target(flips.get(n_cells), fraction)
    if target is None:
        return None
    reached = [k for k, flip in flips.items() if flip >= target]
    return min(reached) if reached else None
