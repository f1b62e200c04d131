"""Leakage-free train/val/test splits: duplicates out first, then whole entities to one split.

A prompt's entities (`Example.split_keys`: the IOI name pair, the ccc countries, the
city_country country, or the prompt itself) are each assigned to one split, so no prompt
and no entity is ever in two splits. An example whose entities landed in different splits
is dropped and counted. With held-out examples (e.g. a held-out template) the test split
holds only them: an entity seen only in regular examples goes to train or val, one seen
only in held-out examples to test, and one seen in both is split three ways like any other.

Cross-fitted folds (`assign_folds`, `train.folds: K >= 2`): the entities that can be tested (those
of held-out examples where there are any, else all) are shuffled with the data seed and cut into K
groups; fold f tests on the examples all of whose entities are in group f and trains/validates on
those with none in group f (train vs val by the first two split fractions, whole entities again);
an example straddling is dropped for that fold only. Every such entity is tested in exactly one fold.
Splits are index sets into the caller's list, so the folds of a unit share one pool of prompts.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from workers.errors import UsageError
from workers.tasks.base import Example

SPLITS = ("train", "val", "test")


def drop_duplicates(examples: Sequence[Example]) -> tuple[list[int], int]:
    """Indices of the first example of each distinct prompt, and how many repeats were dropped."""
    seen: set[str] = set()
    keep = []
    for i, e in enumerate(examples):
        if e.prompt not in seen:
            seen.add(e.prompt)
            keep.append(i)
    return keep, len(examples) - len(keep)


def _cut(items: list[str], fractions: Sequence[float], names: Sequence[str]) -> dict[str, str]:
    """Assign shuffled items to names by fractions (each name gets at least one item when there are enough)."""
    total = sum(fractions)
    counts = [round(len(items) * f / total) for f in fractions]
    for i in range(len(counts)):  # give an empty split one item from the largest when possible
        if counts[i] == 0 and len(items) >= len(counts):
            largest = max(range(len(counts)), key=counts.__getitem__)
            counts[largest] -= 1
            counts[i] = 1
    counts[0] += len(items) - sum(counts)
    out, start = {}, 0
    for name, count in zip(names, counts):
        out.update({item: name for item in items[start:start + count]})
        start += count
    return out


def _keys(examples: Sequence[Example], indices: Sequence[int]) -> tuple[set[str], set[str]]:
    """The entities of the regular examples and those of the held-out ones."""
    regular_keys = {k for i in indices if not examples[i].heldout for k in examples[i].split_keys}
    heldout_keys = {k for i in indices if examples[i].heldout for k in examples[i].split_keys}
    return regular_keys, heldout_keys


def _place(examples: Sequence[Example], indices: Sequence[int], assignment: dict[str, str],
           heldout_test: bool) -> tuple[dict[str, list[int]], int]:
    """Each example to the one split of all its entities, else dropped; with held-out examples
    (`heldout_test`) the test split takes only them and they go nowhere else."""
    parts: dict[str, list[int]] = {name: [] for name in SPLITS}
    dropped = 0
    for i in indices:
        e = examples[i]
        homes = {assignment[k] for k in e.split_keys}
        home = homes.pop() if len(homes) == 1 else None
        if home is None or (e.heldout and home != "test") or (heldout_test and not e.heldout and home == "test"):
            dropped += 1
            continue
        parts[home].append(i)
    return parts, dropped


def assign_splits(examples: Sequence[Example], indices: Sequence[int], fractions: Sequence[float],
                  seed: int) -> tuple[dict[str, list[int]], int]:
    """{split: indices} with no entity in two splits, and the count of examples dropped for straddling."""
    regular_keys, heldout_keys = _keys(examples, indices)
    rng = random.Random(seed)
    assignment: dict[str, str] = {}
    if heldout_keys:
        both = sorted(regular_keys & heldout_keys)
        only_regular = sorted(regular_keys - heldout_keys)
        rng.shuffle(both)
        rng.shuffle(only_regular)
        assignment.update(_cut(both, fractions, SPLITS))
        assignment.update(_cut(only_regular, fractions[:2], SPLITS[:2]))
        assignment.update({k: "test" for k in heldout_keys - regular_keys})
    else:
        keys = sorted(regular_keys)
        rng.shuffle(keys)
        assignment = _cut(keys, fractions, SPLITS)
    return _place(examples, indices, assignment, bool(heldout_keys))


@dataclass(frozen=True)
class FoldSplit:
    """One cross-fitted fold: its splits as indices into the caller's list, and what it dropped."""

    parts: dict[str, list[int]]  # train, val, test -> indices
    dropped: int  # examples whose entities landed in different splits of this fold


def assign_folds(examples: Sequence[Example], indices: Sequence[int], k: int, fractions: Sequence[float],
                 seed: int) -> list[FoldSplit]:
    """K folds whose test splits together hold every testable entity exactly once (module docstring).
    Entities only regular examples have, beside held-out ones, are never tested: train or val in every fold."""
    regular_keys, heldout_keys = _keys(examples, indices)
    testable = sorted(heldout_keys or regular_keys)
    never_tested = sorted(regular_keys - heldout_keys) if heldout_keys else []
    if len(testable) < k:
        raise UsageError(f"train.folds={k} but the task has only {len(testable)} entities to test (each fold tests on "
                         f"its own entities); lower train.folds or use a larger task")
    random.Random(seed).shuffle(testable)
    groups = [testable[g * len(testable) // k:(g + 1) * len(testable) // k] for g in range(k)]
    folds = []
    for f, group in enumerate(groups):
        rest = [key for g, keys in enumerate(groups) if g != f for key in keys] + never_tested
        random.Random(f"{seed}:fold {f}").shuffle(rest)  # each fold its own train/val cut
        assignment = _cut(rest, fractions[:2], SPLITS[:2])
        assignment.update({key: "test" for key in group})
        folds.append(FoldSplit(*_place(examples, indices, assignment, bool(heldout_keys))))
    return folds
