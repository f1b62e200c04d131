"""Leakage-free train/val/test splits: duplicates out first, then whole entities to one split.

A prompt's entities (`Example.split_keys`: the IOI name pair, the ccc countries, the
city_country country, or the prompt itself) are each assigned to one split, so no prompt
and no entity is ever in two splits. An example whose entities landed in different splits
is dropped and counted. With held-out examples (e.g. a held-out template) the test split
holds only them: an entity seen only in regular examples goes to train or val, one seen
only in held-out examples to test, and one seen in both is split three ways like any other.
"""
from __future__ import annotations

import random
from collections.abc import Sequence

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


def assign_splits(examples: Sequence[Example], indices: Sequence[int], fractions: Sequence[float],
                  seed: int) -> tuple[dict[str, list[int]], int]:
    """{split: indices} with no entity in two splits, and the count of examples dropped for straddling."""
    regular_keys = {k for i in indices if not examples[i].heldout for k in examples[i].split_keys}
    heldout_keys = {k for i in indices if examples[i].heldout for k in examples[i].split_keys}
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
    parts: dict[str, list[int]] = {name: [] for name in SPLITS}
    dropped = 0
    for i in indices:
        e = examples[i]
        homes = {assignment[k] for k in e.split_keys}
        home = homes.pop() if len(homes) == 1 else None
        if home is None or (e.heldout and home != "test") or (heldout_keys and not e.heldout and home == "test"):
            dropped += 1
            continue
        parts[home].append(i)
    return parts, dropped
