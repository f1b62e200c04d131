"""Retrained mask controls (`controls:` in a sweep): which masks a unit's selected trial gets, and their cells.

After its replicates, a unit whose method can be masked (workers.names.MASKABLE_METHODS) trains its selected
trial's hyper-parameters, steps and seed again with only a mask's cells free (workers/masks.py), once per mask:
- `top-K`: the K cells of largest effect of the selected trial, ranked as the analysis ranks them
  (workers/analysis.py `_keep_masks`: by effect, descending, ties in the cell grid's order);
- `random-K-sI`: K cells drawn at random, draw I = 0..random_masks-1, each seeded by the controlled trial, K and I,
  so a control re-run after a crash trains the same mask;
- a structured mask by name: `final_position` (every layer at the last position), `names_and_final` (the positions
  holding IOI's names, IO, S1, S2, and the last position).
With `replicates: true` each complete replicate of the selected trial is controlled the same way, with its own
top cells, random draws, seed and (fold replicates) fold or (bootstrap) resample.
With `at_k90` a top-k and the random-k masks are added at k = the selected trial's own k90 (`workers.k90.k90_of`, from
its val sufficiency curve, as the findings page reads it; its replicates' controls at the same k, so that the page pools
the seeds at one k), so the analysis runs before the controls.
The masks are named from the config, the controlled trial's cell count and its k90 (`mask_names`: how many are
left is known from the trials and curves rows), and resolved to cells from its scalars rows (`mask_cells`). Pure:
no torch.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workers.names import NAME_ROLES

if TYPE_CHECKING:
    from search_spaces.config import SweepConfig

Cell = tuple[int, int, int]  # (layer, position, head; -1 off the head site)


@dataclass(frozen=True)
class ControlPlan:
    """What the sweep's `controls:` asks of each unit (empty: no controls)."""

    ks: tuple[int, ...] = ()
    k_fractions: tuple[float, ...] = ()
    random_masks: int = 5
    structured: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    replicates: bool = False  # each complete replicate of the selected trial is controlled too, with its own masks
    at_k90: bool = False  # a top-k and random-k masks at the selected trial's own k90 too

    def applies_to(self, method: str) -> bool:
        return method in self.methods


def plan_of(config: SweepConfig) -> ControlPlan:
    c = config.controls
    if not c.enabled:
        return ControlPlan()
    return ControlPlan(tuple(c.ks or ()), tuple(c.k_fractions or ()), c.random_masks, tuple(c.structured),
                       tuple(c.methods), c.replicates, c.at_k90)


def k_values(plan: ControlPlan, n_cells: int, k90: int | None = None) -> list[int]:
    """The k of the controls for a trial of n_cells cells: the ks, the rounded fractions (at least 1) and with
    `at_k90` the trial's k90, below n_cells (k = all cells: every random draw would be the top-k mask, the trial's
    whole grid), each once, ascending."""
    ks = set(plan.ks) | {max(1, round(f * n_cells)) for f in plan.k_fractions}
    if plan.at_k90 and k90 is not None:
        ks.add(k90)
    return sorted(k for k in ks if 1 <= k < n_cells)


def mask_count(plan: ControlPlan, n_cells: int) -> int:
    """How many masks a controlled trial of n_cells cells gets, before its k90 is known: at most (its k90 can be
    another control's k, or missing where the trial flips nothing)."""
    return len(mask_names(plan, n_cells)) + ((1 + plan.random_masks) if plan.at_k90 else 0)


def mask_names(plan: ControlPlan, n_cells: int, k90: int | None = None) -> list[str]:
    """Every mask a controlled trial of n_cells cells (with `at_k90`: and this k90) is controlled with, in the
    order they are trained."""
    names = []
    for k in k_values(plan, n_cells, k90):
        names.append(f"top-{k}")
        names += [f"random-{k}-s{i}" for i in range(plan.random_masks)]
    return names + list(plan.structured)


def _cell(row: dict[str, Any]) -> Cell:
    head = row.get("head")
    return int(row["layer"]), int(row["position"]), -1 if head is None or head != head else int(head)


def _roles(label: str) -> set[str]:
    """The roles a position's label names ("IO|S1" -> {IO, S1}; repeats "S1#2" count as S1)."""
    return {part.split("#")[0].split("+")[0] for part in label.split("|")}


def mask_cells(name: str, cells: Sequence[dict[str, Any]], control_of: str) -> list[Cell]:
    """The cells of mask `name` for the trial `control_of`, from its scalars rows (layer, position, head, role,
    effect) in the cell grid's order."""
    if name.startswith("top-"):
        k = int(name.split("-")[1])
        ranked = sorted(range(len(cells)), key=lambda i: -float(cells[i]["effect"]))  # stable: ties in grid order
        return sorted(_cell(cells[i]) for i in ranked[:k])
    if name.startswith("random-"):
        _, k, draw = name.split("-")
        rng = random.Random(f"{control_of}:{k}:{draw}")  # a str seed: the same draw in every process
        return sorted(_cell(cells[i]) for i in rng.sample(range(len(cells)), int(k)))
    last = max(int(c["position"]) for c in cells)
    if name == "final_position":
        return [_cell(c) for c in cells if int(c["position"]) == last]
    if name == "names_and_final":
        return [_cell(c) for c in cells if int(c["position"]) == last or _roles(str(c["role"])) & set(NAME_ROLES)]
    raise ValueError(f"unknown mask {name!r}")
