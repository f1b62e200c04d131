"""RunStore and queries: round trips, crash safety, reading while writing, bad files."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.cli import main
from storage.errors import StorageError
from storage.query import load, run_sql
from storage.schema import SCHEMAS
from storage.store import RunStore, part_files, read_table
from tests.sample_run import make_sample_run

ROOT = Path(__file__).resolve().parents[1]


def test_round_trip_every_table(tmp_path):
    run = make_sample_run(tmp_path / "run")
    for table in SCHEMAS:
        frame = load(run, table)
        assert len(frame) > 0, table
        assert list(frame.columns) == SCHEMAS[table].names
    units = load(run, "units")
    assert sorted(units.loc[units.model == "tiny-llama", "layers"].iloc[0].tolist()) == list(range(6))
    examples = load(run, "examples")
    assert examples["roles"].iloc[0].tolist()[1] == "IO"
    scalars = load(run, "scalars")
    assert scalars["head"].isna().all()  # nullable
    trials = load(run, "trials")
    failed = trials[trials.status == "failed"]
    assert len(failed) == 2 and failed["val_flip_rate"].isna().all() and failed["error"].str.contains("not finite").all()
    interrupted = trials[trials.status == "interrupted"]
    assert len(interrupted) == 4 and interrupted["error"].str.contains("interrupted").all()
    assert trials.replicate_of.notna().sum() == 4 and scalars["moved"].any() and (scalars["effect"] >= 0).all()


def test_several_runs_queried_together(tmp_path):
    one = make_sample_run(tmp_path / "one", run_id="r1", seed=1)
    two = make_sample_run(tmp_path / "two", run_id="r2", seed=2)
    frame, problems = run_sql([one, two], "SELECT run_id, count(*) AS n FROM trials GROUP BY run_id ORDER BY run_id")
    assert not problems
    assert frame.to_dict("list") == {"run_id": ["r1", "r2"], "n": [24, 24]}


def test_batching_makes_few_parts_and_leftovers_are_cleaned(tmp_path):
    store = RunStore(tmp_path, flush_rows=50, flush_seconds=3600)
    for i in range(120):
        store.append("predictions", [dict(trial_id="t", unit_id="u", index=i, ld_before=1.0, ld_after=0.0, kl_other=0.0, flipped=False)])
    assert len(part_files(tmp_path, "predictions")) == 2 and store.pending_rows() == 20
    store.flush()
    assert len(part_files(tmp_path, "predictions")) == 3
    leftover = tmp_path / "tables" / "predictions" / ".tmp-part-x.parquet"
    leftover.write_bytes(b"torn")
    RunStore(tmp_path)
    assert not leftover.exists()
    assert read_table(tmp_path, "predictions").table.num_rows == 120


def test_rows_are_flushed_after_flush_seconds(tmp_path):
    store = RunStore(tmp_path, flush_rows=1000, flush_seconds=0.2)
    assert not store.append("runs", [dict(run_id="r")])
    time.sleep(0.3)
    assert store.flush_if_due() and len(part_files(tmp_path, "runs")) == 1


def _acked(lines: list[str]) -> int:
    acks = [int(line.split()[1]) for line in lines if line.startswith("ACK ")]
    return acks[-1] if acks else -1


PER_PART = 400


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path):
    rng = random.Random(0)
    acked, next_start = -1, 0
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for _ in range(22):
        proc = subprocess.Popen([sys.executable, "-m", "tests.storage_writer", str(tmp_path), str(next_start), "100000", str(PER_PART), "0.02"],
                                stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # noqa: B023
        reader.start()
        time.sleep(rng.uniform(0.8, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader.join(timeout=10)
        acked = max(acked, _acked(lines))
        result = read_table(tmp_path, "trials")
        assert not result.problems, result.problems
        ids = result.table.column("trial_number").to_pylist()
        assert len(ids) == len(set(ids)), "a row appears twice"
        assert set(range(acked + 1)) <= set(ids), "an acknowledged row is missing"
        assert len(ids) % PER_PART == 0, "a part is torn"
        next_start = max(ids) + 1 if ids else 0
    assert acked > 50


READER = """
import sys, time, duckdb, json
run = sys.argv[1]
seen, last, errors = [], -1, []
con = duckdb.connect()
deadline = time.time() + 120
while time.time() < deadline:
    try:
        n = con.execute(f"SELECT count(*) FROM read_parquet('{run}/tables/predictions/part-*.parquet')").fetchone()[0]
    except duckdb.IOException as exc:
        if "No files found" in str(exc):
            n = 0
        else:
            errors.append(str(exc)); n = last
    except Exception as exc:
        errors.append(str(exc)); n = last
    seen.append(n)
    last = n
    if n >= 1000:
        break
print(json.dumps({"seen": seen, "errors": errors}))
"""


def test_duckdb_readers_see_only_whole_files_while_writing(tmp_path):
    import json

    reader = subprocess.Popen([sys.executable, "-c", READER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    # compaction off: a raw glob over part-*.parquet is safe from torn files, not from a compaction's
    # moment with both the merged part and its sources (actscale's readers skip the superseded ones)
    store = RunStore(tmp_path, flush_rows=1, flush_seconds=3600, compact_over=0)
    for i in range(1000):
        store.append("predictions", [dict(trial_id="t", unit_id="u", index=i, ld_before=1.0, ld_after=0.0, kl_other=0.0, flipped=False)])
    out, _ = reader.communicate(timeout=180)
    report = json.loads(out)
    assert not report["errors"], report["errors"][:3]
    seen = report["seen"]
    assert seen[-1] == 1000 and len(seen) > 5
    assert all(b >= a for a, b in zip(seen, seen[1:])), "a count went down"


def _bad_files(run: Path) -> dict[str, Path]:
    directory = run / "tables" / "trials"
    corrupt = directory / "part-99999999999999999990-1-000001.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    foreign = directory / "part-99999999999999999991-1-000001.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), foreign)
    future = directory / "part-99999999999999999992-1-000001.parquet"
    schema = SCHEMAS["trials"].with_metadata({b"actscale.table": b"trials", b"actscale.schema_version": b"99"})
    pq.write_table(schema.empty_table(), future)
    return {"corrupt": corrupt, "foreign": foreign, "future": future}


def test_bad_files_are_refused_by_name_and_the_rest_still_reads(tmp_path, capsys):
    run = make_sample_run(tmp_path / "run")
    bad = _bad_files(run)
    result = read_table(run, "trials")
    assert result.table.num_rows == 24
    text = "\n".join(result.problems)
    assert str(bad["corrupt"]) in text and "not a readable Parquet file" in text
    assert str(bad["foreign"]) in text and "not an actscale part file" in text
    assert str(bad["future"]) in text and "schema version 99 is not supported" in text
    before = {p: p.read_bytes() for p in run.rglob("*.parquet")}
    rc = main(["query", str(run), "SELECT count(*) AS n FROM trials"])
    captured = capsys.readouterr()
    assert rc != 0 and "24" in captured.out
    assert captured.err.count("actscale: error: refused") == 3 and "Traceback" not in captured.err
    assert before == {p: p.read_bytes() for p in run.rglob("*.parquet")}


def test_bad_sql_is_a_clear_message(tmp_path, capsys):
    run = make_sample_run(tmp_path / "run")
    assert main(["query", str(run), "SELECT nope FROM trials"]) == 2
    err = capsys.readouterr().err
    assert "query failed" in err and "nope" in err and "Traceback" not in err
    with pytest.raises(StorageError, match="not an actscale run directory"):
        run_sql([tmp_path / "missing"], "SELECT 1")


def test_query_output_formats(tmp_path, capsys):
    run = make_sample_run(tmp_path / "run")
    sql = "SELECT model, count(*) AS n FROM units GROUP BY model ORDER BY model"
    assert main(["query", str(run), sql, "--csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["model,n", "tiny-gpt2,2", "tiny-llama,2"]
    assert main(["query", str(run), sql, "--json"]) == 0
    assert '"model":"tiny-gpt2","n":2' in capsys.readouterr().out
    out = tmp_path / "a.parquet"
    assert main(["query", str(run), sql, "--parquet", str(out)]) == 0
    assert pq.read_table(out).num_rows == 2


def test_a_query_naming_a_missing_file_says_so_with_the_query(tmp_path):
    """DuckDB's 'No files found' looks like a part lost to a compaction: after the re-listings it
    is still the query's own error, with DuckDB's words and the query."""
    run = make_sample_run(tmp_path / "run")
    with pytest.raises(StorageError, match=r"query failed: .*No files found.*\n  query: SELECT \* FROM 'nope.parquet'"):
        run_sql([run], "SELECT * FROM 'nope.parquet'")
    with pytest.raises(StorageError, match="query failed: .*no_such_column"):
        run_sql([run], "SELECT no_such_column FROM trials")
