"""The columns of a unit's cells: positions where every prompt has one shape, roles otherwise.

A cell is (layer, column[, head]). A fixed-length method (ActivScalar, SteerVec) has one
parameter per position, so its columns are positions, each labelled by the role its prompts
hold there, or by the roles joined with "|" (most frequent first) where templates differ.
A method for prompts of any length (DynScalar) is aggregated by role instead
(workers/tasks/roles.py): a role column holds exactly the tokens of that role, in the
prompts that have it, wherever it sits; its position is None, since a position means
different words in prompts of different shapes.

A method with one parameter per role (ActivScalar_role, `needs_roles`) needs a role to have one index
in every split and every forward, so its unit fixes a `RoleVocabulary` once, from all its prompts that
are not held out: its columns are the vocabulary's roles on every split (a role a split lacks is a
column with n_prompts 0), and a token of another role (a held-out template's own word) gets the index
len(roles), which such a method leaves alone.
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


def _end_last(positions: dict[str, list[int]]) -> list[str]:
    """Roles ordered by mean position, END last, ties by name."""
    return sorted(positions, key=lambda r: (r == "END", sum(positions[r]) / len(positions[r]), r))


def _positions(examples: Sequence[TokenizedExample]) -> dict[str, list[int]]:
    """Each role's token positions over the prompts."""
    positions: dict[str, list[int]] = {}
    for e in examples:
        for pos, role in enumerate(e.roles):
            positions.setdefault(role, []).append(pos)
    return positions


@dataclass(frozen=True)
class RoleVocabulary:
    """The roles a role-aligned method has a parameter for, in one fixed order, with their mean positions."""

    roles: tuple[str, ...]
    mean_positions: tuple[float, ...]

    @classmethod
    def of(cls, examples: Sequence[TokenizedExample]) -> RoleVocabulary:
        """The roles of the prompts that are not held out (all prompts where every one is), END last."""
        trained = [e for e in examples if not e.example.heldout] or list(examples)
        positions = _positions(trained)
        order = _end_last(positions)
        return cls(tuple(order), tuple(sum(positions[r]) / len(positions[r]) for r in order))

    @property
    def other(self) -> int:
        """The index of a token whose role is not in the vocabulary."""
        return len(self.roles)

    def ids(self, examples: Sequence[TokenizedExample], width: int) -> torch.Tensor:
        """[N, width] each token's index in the vocabulary (`other` for a role outside it; padding: 0)."""
        index = {role: i for i, role in enumerate(self.roles)}
        ids = torch.zeros(len(examples), width, dtype=torch.long)  # [N, width]
        for n, e in enumerate(examples):
            ids[n, : e.length] = torch.tensor([index.get(role, self.other) for role in e.roles])
        return ids

    def columns(self, examples: Sequence[TokenizedExample]) -> list[CellColumn]:
        """One column per vocabulary role, counted on these prompts (mean position: theirs, else the vocabulary's)."""
        positions = _positions(examples)
        return [CellColumn(None, role, len(positions.get(role, ())),
                           sum(positions[role]) / len(positions[role]) if role in positions else mean)
                for role, mean in zip(self.roles, self.mean_positions)]


def role_columns(examples: Sequence[TokenizedExample], width: int) -> tuple[list[CellColumn], torch.Tensor]:
    """One column per role of the prompts, ordered by mean position (END last), and each token's
    column index: [N, width] for prompts right-padded to `width` (padding: column 0, masked anyway)."""
    positions = _positions(examples)
    order = _end_last(positions)
    index = {role: i for i, role in enumerate(order)}
    ids = torch.zeros(len(examples), width, dtype=torch.long)  # [N, width]
    for n, e in enumerate(examples):
        ids[n, : e.length] = torch.tensor([index[role] for role in e.roles])
    columns = [CellColumn(None, role, len(positions[role]), sum(positions[role]) / len(positions[role]))
               for role in order]
    return columns, ids
