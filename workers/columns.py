"""The columns of a unit's cells: positions where every prompt has one shape, roles otherwise.

A cell is (layer, column[, head]). A fixed-length method (ActivScalar, SteerVec) has one
parameter per position, so its columns are positions, each labelled by the role its prompts
hold there, or by the roles joined with "|" (most frequent first) where templates differ.
A method for prompts of any length (DynScalar) is aggregated by role instead
(workers/tasks/roles.py): a role column holds exactly the tokens of that role, in the
prompts that have it, wherever it sits; its position is None, since a position means
different words in prompts of different shapes.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from workers.tasks.roles import TokenizedExample

MAX_ROLES_IN_LABEL = 3  # a position whose prompts hold more roles is labelled "a|b|c|..."


@dataclass(frozen=True)
class CellColumn:
    position: int | None  # None: a role column (its tokens sit at different positions)
    role: str  # the role, or "a|b" for a position holding different roles in different prompts
    n_prompts: int  # prompts of the split that contributed to the column
    mean_position: float  # where the column's tokens sit, on average (orders role columns)


def position_columns(examples: Sequence[TokenizedExample], n_positions: int) -> list[CellColumn]:
    """One column per position of prompts that all have `n_positions` tokens."""
    columns = []
    for pos in range(n_positions):
        held = Counter(e.roles[pos] for e in examples if pos < e.length)
        names = [role for role, _ in held.most_common()]
        label = "|".join(names[:MAX_ROLES_IN_LABEL]) + ("|..." if len(names) > MAX_ROLES_IN_LABEL else "")
        columns.append(CellColumn(pos, label, sum(held.values()), float(pos)))
    return columns


def role_columns(examples: Sequence[TokenizedExample], width: int) -> tuple[list[CellColumn], torch.Tensor]:
    """One column per role of the prompts, ordered by mean position (END last), and each token's
    column index: [N, width] for prompts right-padded to `width` (padding: column 0, masked anyway)."""
    positions: dict[str, list[int]] = {}
    for e in examples:
        for pos, role in enumerate(e.roles):
            positions.setdefault(role, []).append(pos)
    order = sorted(positions, key=lambda r: (r == "END", sum(positions[r]) / len(positions[r]), r))
    index = {role: i for i, role in enumerate(order)}
    ids = torch.zeros(len(examples), width, dtype=torch.long)  # [N, width]
    for n, e in enumerate(examples):
        ids[n, : e.length] = torch.tensor([index[role] for role in e.roles])
    columns = [CellColumn(None, role, len(positions[role]), sum(positions[role]) / len(positions[role]))
               for role in order]
    return columns, ids
