"""The one selection rule (storage/selection.py): its edge cases, the same in SQL views and in memory."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from storage.query import run_sql
from storage.seeds import jaccard, seed_stats, t_interval
from storage.selection import select_rows
from storage.store import RunStore
from tests.sample_run import T0


def trial(number: int, flip: float, kl: float, moved: int, status: str = "complete", replicate_of=None,
          test_flip: float = 0.5, unit: str = "u-000000000001", run_id: str = "run-a") -> dict:
    return dict(trial_id=f"{unit}-t{number:05d}", unit_id=unit, run_id=run_id, trial_number=number, status=status,
                error=None, lambda_faith=1.0, lambda_min=0.01, lr=0.05, steps=10, batch_size=8, seed=number,
                val_flip_rate=flip, val_kl_other=kl, val_l1=1.0, test_flip_rate=test_flip, test_kl_other=kl,
                resample_train=False, replicate_of=replicate_of, n_params=100, sites_moved=moved, sites_total=100,
                started_at=T0, ended_at=T0)


def write_run(path, rows, min_flip=None, run_id="run-a"):
    store = RunStore(path)
    store.append("trials", rows)
    store.flush()
    (path / "run.json").write_text(json.dumps({"run_id": run_id}))
    if min_flip is not None:
        (path / "sweep.yaml").write_text(yaml.safe_dump({"selection": {"min_flip": min_flip}}))
    return path


def selected(path, **kwargs) -> dict:
    frame, problems = run_sql([path], "SELECT * FROM selected", **kwargs)
    assert not problems
    return frame.to_dict("records")


CASES = {
    # the sparsest of those reaching min_flip, not the most effective one
    "fewest_moved": ([trial(0, 1.0, 0.1, 90), trial(1, 0.92, 0.3, 12), trial(2, 0.95, 0.2, 30)], "t00001", "min_flip"),
    # equal moved sites: the lower val kl_other
    "tie_on_moved": ([trial(0, 0.95, 0.4, 10), trial(1, 0.91, 0.2, 10)], "t00001", "min_flip"),
    # min_flip is inclusive
    "exactly_min_flip": ([trial(0, 0.9, 0.1, 5), trial(1, 0.99, 0.1, 6)], "t00000", "min_flip"),
    # none qualifies: the highest val flip_rate, flagged
    "none_qualifies": ([trial(0, 0.5, 0.1, 1), trial(1, 0.8, 0.9, 50), trial(2, 0.8, 0.5, 60)], "t00002", "fallback"),
    # test metrics never decide, failed/interrupted trials and replicates are never candidates
    "val_only": ([trial(0, 0.95, 0.1, 20, test_flip=0.1), trial(1, 0.95, 0.1, 20, test_flip=1.0),
                  trial(2, 1.0, 0.0, 1, status="failed"), trial(3, 1.0, 0.0, 1, status="interrupted"),
                  trial(4, 1.0, 0.0, 0, replicate_of="u-000000000001-t00000")], "t00000", "min_flip"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_selection_rule_cases_in_sql_and_in_memory(tmp_path, case):
    rows, expected, by = CASES[case]
    chosen = selected(write_run(tmp_path, rows))
    assert len(chosen) == 1 and chosen[0]["trial_id"].endswith(expected) and chosen[0]["selected_by"] == by
    in_memory = select_rows([r for r in rows], 0.9)
    assert in_memory["trial_id"] == chosen[0]["trial_id"] and in_memory["selected_by"] == by


def test_min_flip_comes_from_each_runs_sweep_and_can_be_overridden(tmp_path):
    rows = [trial(0, 0.7, 0.1, 5), trial(1, 0.95, 0.1, 40)]
    strict = write_run(tmp_path / "strict", rows, min_flip=0.9)
    lax = write_run(tmp_path / "lax", [dict(r, run_id="run-b") for r in rows], min_flip=0.6, run_id="run-b")
    frame, _ = run_sql([strict, lax], "SELECT run_id, trial_id, min_flip FROM selected ORDER BY run_id")
    assert frame.trial_id.str[-6:].tolist() == ["t00001", "t00000"] and frame.min_flip.tolist() == [0.9, 0.6]
    assert selected(strict, min_flip=0.5)[0]["trial_id"].endswith("t00000")


def test_no_complete_trial_selects_nothing(tmp_path):
    assert selected(write_run(tmp_path, [trial(0, 0.0, 0.0, 0, status="failed")])) == []
    assert select_rows([], 0.9) is None


def test_seed_statistics_by_hand():
    cells = [(layer, pos) for layer in range(2) for pos in range(3)]
    moved = {"a": {(0, 0), (1, 2)}, "b": {(0, 0)}, "c": {(0, 0), (1, 2), (1, 1)}}
    rows = []
    for rank, tid in enumerate("abc"):
        for i, (layer, pos) in enumerate(cells):
            effect = 0.5 if (layer, pos) in moved[tid] else 0.01 * (i + rank)
            rows.append(dict(trial_id=tid, layer=layer, position=pos, head=None, role=f"r{pos}", effect=effect,
                             moved=(layer, pos) in moved[tid], n_prompts=10, mean_position=float(pos)))
    trials = pd.DataFrame([dict(trial_id="a", replicate_of=None, status="complete", test_flip_rate=0.9,
                                test_kl_other=0.1),
                           dict(trial_id="b", replicate_of="a", status="complete", test_flip_rate=0.8,
                                test_kl_other=0.2),
                           dict(trial_id="c", replicate_of="a", status="complete", test_flip_rate=1.0,
                                test_kl_other=0.3),
                           dict(trial_id="d", replicate_of="a", status="interrupted", test_flip_rate=None,
                                test_kl_other=None)])
    stats = seed_stats("a", trials, pd.DataFrame(rows))
    assert stats.trial_ids == ["a", "b", "c"]
    expected = np.mean([jaccard(moved["a"], moved["b"]), jaccard(moved["a"], moved["c"]),
                        jaccard(moved["b"], moved["c"])])
    assert stats.jaccard == pytest.approx(expected) and stats.moved_in_all == 1 and stats.moved_in_any == 3
    share = stats.cell_frequency.set_index(["layer", "position"]).moved_share
    assert share[(0, 0)] == 1.0 and share[(1, 2)] == pytest.approx(2 / 3) and share[(0, 1)] == 0.0
    mean, lo, hi = stats.test_flip
    assert mean == pytest.approx(0.9) and lo < 0.9 < hi <= 1.0
    assert t_interval(np.array([0.5])) == (0.5, 0.5, 0.5) and math.isnan(jaccard(set(), set()))
