"""docs/reliability.md is rendered from tests/faults/cases.py; every case names a test that exists."""
from __future__ import annotations

import re
from pathlib import Path

from tests.faults.cases import BAD_INPUTS, FAULTS
from tests.generated_pages import check_generated_page

ROOT = Path(__file__).resolve().parents[2]

HEADER = """# Reliability

## The contract
- A part file appears whole or not at all: it is written under a temporary name, fsynced,
  then renamed; readers (and DuckDB globs over `part-*.parquet`) never see a torn file, and
  leftovers are removed when a store is opened.
- Compaction (at the end of every run, and when a table passes 50 parts) merges a table's
  parts into one part that names the parts it holds in its metadata; actscale's readers
  (`query`, `status`, `report`, `open_runs`) skip those from the moment it appears, and the
  sources are deleted only then, so a crash at any moment loses and doubles no row. A raw
  DuckDB glob over `part-*.parquet` can see both for that moment: read through actscale.
- Parquet is the source of truth. A finished trial goes to Parquet first and is told to
  Optuna only once its part file is durable (the rule is kept in one module,
  `orchestrator/studies.py`). On start the coordinator reconciles: a trial
  recorded in Parquet but RUNNING in Optuna is told its stored values; a RUNNING trial with
  no result gets an `interrupted` row, is failed in Optuna and, for a search trial, its
  parameters are re-enqueued. After any sequence of crashes and resumes, each unit has
  exactly its n_trials completed search trials, replicates - 1 completed replicates of its
  selected trial, and no trial id twice.
- Interrupted is not failed: `interrupted` trials were cut off by a crash or a dead worker
  and re-run; `failed` trials failed in their own computation (NaN, out of memory, a worker
  error), each with its error in the trials table. Summary, `status` and log count both.
- Resume = run the same command again, or `actscale resume RUN_DIR`.
- `--stop-after DURATION` (or `stop_after:` in the sweep) ends a run cleanly before a wall-clock
  limit, with exit status 3: work that will not end in time is cut off and its trials are recorded
  as interrupted and re-queued, exactly as after a crash; running the same command again resumes.
- A worker that dies costs only its in-flight trials, which run again on a new worker. A
  trial that fails (NaN, out of memory, error) is recorded with its error; the sweep goes on.
- Safe by default: `trust_remote_code` off, safetensors weights only (`--allow-pickle` /
  `allow_pickle: true` to override), an embedded Ray without dashboard listening on the
  loopback only, no pickles in results (Parquet and safetensors).
- Bad input exits non-zero with one message naming the value and the fix (no traceback
  unless `--debug`), and changes nothing already written.

This page is generated from `tests/faults/cases.py` by a test (`ACTSCALE_WRITE_DOCS=1`
rewrites it), and each row names the test that checks it.
"""


def render() -> str:
    lines = [HEADER, "## Faults tried", "", "| fault | outcome (checked) | test |", "| --- | --- | --- |"]
    lines += [f"| {what} | {outcome} | `{test}` |" for _, what, outcome, test in FAULTS]
    lines += ["", "## Bad input tried", "",
              "Each: `actscale run` exits non-zero, prints one `actscale: error:` line containing the text below, "
              "no traceback, and every file already in the run directory is unchanged "
              "(`tests/faults/test_bad_input.py`).", "", "| bad input | message contains |", "| --- | --- |"]
    lines += [f"| {what} | `{message}` |" for _, what, message in BAD_INPUTS]
    return "\n".join(lines) + "\n"


def test_reliability_page_matches_the_cases():
    check_generated_page("reliability.md", render())


def test_every_case_names_an_existing_test():
    for _, _, _, test in FAULTS:
        path, name = test.split("::")
        assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M), test
