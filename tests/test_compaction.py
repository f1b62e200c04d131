"""Compacting a table's parts into one: nothing lost, nothing doubled, for a reader at any moment,
even when a compaction is SIGKILLed half way; queries work during one; runs end compacted."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from storage.query import run_sql, with_connection
from storage.schema import META_SUPERSEDES
from storage.store import RunStore, part_files, read_table
from tests.sample_run import make_sample_run

ROOT = Path(__file__).resolve().parents[1]
PER_PART = 5


def _rows(start: int, n: int) -> list[dict]:
    return [dict(trial_id=f"t{i:08d}", unit_id="u", run_id="r", trial_number=i, status="complete")
            for i in range(start, start + n)]


def test_compaction_merges_parts_into_one_with_the_same_rows(tmp_path):
    store = RunStore(tmp_path, flush_rows=PER_PART, flush_seconds=3600, compact_over=0)
    for k in range(12):
        store.append("trials", _rows(k * PER_PART, PER_PART))
    before = sorted(read_table(tmp_path, "trials").table.column("trial_number").to_pylist())
    sources = {p.name for p in part_files(tmp_path, "trials")}
    merged = store.compact("trials")
    assert part_files(tmp_path, "trials") == [merged]
    assert set(json.loads(pq.read_schema(merged).metadata[META_SUPERSEDES])) == sources
    assert sorted(read_table(tmp_path, "trials").table.column("trial_number").to_pylist()) == before
    store.append("trials", _rows(1000, PER_PART))
    assert store.compact("trials") is not None and len(part_files(tmp_path, "trials")) == 1
    assert len(read_table(tmp_path, "trials").table) == len(before) + PER_PART
    assert store.compact("trials") is None  # one part: nothing to do


def test_a_crash_between_the_merged_part_and_the_deletes_doubles_nothing(tmp_path):
    """The window a SIGKILL can hit: the merged part is there and so are its sources."""
    store = RunStore(tmp_path, flush_rows=PER_PART, flush_seconds=3600, compact_over=0)
    for k in range(4):
        store.append("trials", _rows(k * PER_PART, PER_PART))
    sources = part_files(tmp_path, "trials")
    saved = [(p, p.read_bytes()) for p in sources]
    store.compact("trials")
    for path, data in saved[:3]:  # as if the process died after deleting only one source
        path.write_bytes(data)
    result = read_table(tmp_path, "trials")
    assert not result.problems and len(result.table) == 4 * PER_PART
    assert run_sql([tmp_path], "SELECT count(*) AS n, count(DISTINCT trial_number) AS d FROM trials")[0].iloc[0].tolist() \
        == [4 * PER_PART, 4 * PER_PART]
    store.append("trials", _rows(100, PER_PART))
    store.compact("trials")  # the leftovers go first: they never come back as rows of their own
    assert len(part_files(tmp_path, "trials")) == 1 and len(read_table(tmp_path, "trials").table) == 5 * PER_PART


def _acked(lines: list[str]) -> int:
    acks = [int(line.split()[1]) for line in lines if line.startswith("ACK ")]
    return max(acks) if acks else -1


@pytest.mark.slow
def test_sigkill_at_random_moments_during_compaction_loses_and_doubles_nothing(tmp_path):
    rng = random.Random(1)
    acked, next_start = -1, 0
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for _ in range(15):
        proc = subprocess.Popen([sys.executable, "-m", "tests.storage_writer", str(tmp_path), str(next_start), "100000",
                                 str(PER_PART), "0.005", "3"], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # noqa: B023
        reader.start()
        time.sleep(rng.uniform(0.8, 2.0))
        counts = run_sql([tmp_path], "SELECT count(*) AS n, count(DISTINCT trial_number) AS d FROM trials")[0]
        assert counts.n.iloc[0] == counts.d.iloc[0], "a query during compaction saw a row twice"
        n, d = with_connection([tmp_path], lambda con: con.execute(  # what `status` uses
            "SELECT count(*), count(DISTINCT trial_number) FROM trials").fetchone())
        assert n == d
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader.join(timeout=10)
        acked = max(acked, _acked(lines))
        result = read_table(tmp_path, "trials")
        assert not result.problems, result.problems
        ids = result.table.column("trial_number").to_pylist()
        assert len(ids) == len(set(ids)), "a row appears twice"
        assert set(range(acked + 1)) <= set(ids), "an acknowledged row is missing"
        next_start = max(ids) + 1 if ids else 0
    assert acked > 50


def test_a_table_with_many_parts_is_compacted_on_flush(tmp_path):
    store = RunStore(tmp_path, flush_rows=1, flush_seconds=3600, compact_over=10)
    for k in range(25):
        store.append("trials", _rows(k, 1))
    assert len(part_files(tmp_path, "trials")) <= 11 and len(read_table(tmp_path, "trials").table) == 25


def test_the_sample_run_compacts_and_reads_the_same(tmp_path):
    run = make_sample_run(tmp_path / "run")
    before = {t: len(read_table(run, t).table) for t in ("trials", "scalars", "predictions")}
    RunStore(run).compact_all()
    assert all(len(part_files(run, t)) <= 1 for t in before)
    assert {t: len(read_table(run, t).table) for t in before} == before
