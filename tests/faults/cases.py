"""Every fault and bad input that the suite tries, with its expected outcome.

docs/reliability.md is rendered from this list (and checked by a test), and each case
is exercised by the test named in it, so the page cannot drift from what is tested.
"""
from __future__ import annotations

# (case id, what is tried, outcome that the test checks, test that checks it)
FAULTS = [
    ("coordinator-sigkill", "coordinator SIGKILLed at random moments (5 times), then resumed",
     "every unit ends with exactly n_trials completed search trials and replicates - 1 completed replicates of its "
     "selected trial, no trial id twice, Parquet equals Optuna; the cut-off trials are counted as interrupted, "
     "none as failed",
     "tests/test_sweep_faults.py::test_coordinator_sigkilled_and_resumed_five_times"),
    ("pilot-sigkill", "coordinator SIGKILLed 3 times while the units' convergence pilots (train.converge) and then "
     "their trials train, then resumed",
     "each unit has exactly one complete pilot, told to Optuna as failed (never a search draw), with one checks row "
     "per check; its search trials and replicates trained for the pilot's steps; every unit's trials exactly once",
     "tests/test_sweep_faults.py::test_coordinator_sigkilled_during_convergence_pilots_leaves_each_pilot_and_check_once"),
    ("writer-sigkill", "a process writing part files SIGKILLed at random moments (22 times)",
     "every visible part reads whole, no row twice, every acknowledged row present",
     "tests/test_storage.py::test_sigkill_at_random_moments_loses_nothing_acknowledged"),
    ("compaction-sigkill", "a process compacting a table's parts while it writes them, SIGKILLed at random moments "
     "(15 times), with a query run just before each kill",
     "no row twice and every acknowledged row present, for read_table and for DuckDB queries, at every moment",
     "tests/test_compaction.py::test_sigkill_at_random_moments_during_compaction_loses_and_doubles_nothing"),
    ("disk-full", "the disk fills up (ENOSPC) while a part file is written during a sweep",
     "the sweep stops with a message naming the table and the fix; no torn file; resuming finishes the sweep",
     "tests/faults/test_faults.py::test_disk_full_stops_cleanly_and_resumes"),
    ("nan-trial", "a trial whose loss becomes NaN (a NaN regularization weight)",
     "recorded as failed with its reason; the other trials of the batch complete",
     "tests/faults/test_faults.py::test_nan_trial_is_recorded_and_others_go_on"),
    ("oom-trial", "a trial batch that runs out of memory",
     "its trials are recorded as failed with 'out of memory'; the sweep goes on",
     "tests/faults/test_faults.py::test_out_of_memory_is_recorded"),
    ("worker-killed", "a worker process SIGKILLed mid-trial",
     "its in-flight trials are recorded as interrupted (not failed) and run again on a new worker; the death is "
     "in the run's log",
     "tests/test_sweep_faults.py::test_worker_process_killed_mid_trial"),
    ("node-removed", "a worker node removed from a 3-node local Ray cluster mid-sweep",
     "the sweep completes on the remaining node with every trial",
     "tests/test_sweep_faults.py::test_multi_node_cluster_survives_losing_a_worker_node"),
    ("worker-error", "every trial batch raises in the worker (a bug)",
     "each trial gets a failed row with the error in the trials table, which status counts; the unit is given up "
     "after 2 x n_trials failures",
     "tests/test_coordinator.py::test_a_worker_error_writes_failed_rows_that_status_sees"),
    ("torn-journal", "the Optuna journal's last line torn by a crash",
     "the fragment is cut off with a warning and the run resumes to exactly n_trials per unit",
     "tests/faults/test_faults.py::test_torn_journal_line_is_repaired"),
    ("stop-after", "the --stop-after limit reached with trials in flight that would not end in time",
     "the run stops with them recorded as interrupted (the limit named), re-queued and failed in Optuna as after a "
     "crash; the next run trains their parameters again and ends with exactly n_trials per unit",
     "tests/test_stop_after.py::test_trials_in_flight_that_would_overrun_the_limit_are_interrupted_and_run_again"),
    ("stale-lock", "a lock file left by a dead coordinator",
     "taken over with a message; a live coordinator's lock is refused",
     "tests/faults/test_faults.py::test_stale_lock_is_taken_over_and_live_lock_refused"),
]

# (case id, bad input, expected message fragment)
BAD_INPUTS = [
    ("malformed-yaml", "sweep file that is not valid YAML", "not valid YAML"),
    ("unknown-key", "an unknown key (search.colour)", "search.colour: unknown key"),
    ("wrong-type", "a wrong type (search.n_trials: many)", "search.n_trials: Input should be a valid integer"),
    ("empty-list", "an empty list (models: [])", "models: List should have at least 1 item"),
    ("n-trials-zero", "search.n_trials: 0", "search.n_trials: Input should be greater than 0"),
    ("bad-duration", "stop_after: 5 minutes", "stop_after: stop_after '5 minutes' is not a duration; accepted"),
    ("layers-out-of-range", "layers: [[0, 9]] for a 4-layer model", "layer(s) [9] out of range for model 'tiny-gpt2'"),
    ("same-model-twice", "models: [tiny-gpt2, tiny-gpt2]", "['tiny-gpt2'] listed more than once"),
    ("task-bad-json", "a task file line that is not JSON", "line 2: not valid JSON"),
    ("task-missing-field", "a task file line without answer_b", "line 1: missing field(s) ['answer_b']"),
    ("task-not-utf8", "a task file with bytes that are not UTF-8", "not valid UTF-8"),
    ("multi-token-answer", "answers that are not single tokens", "answers must be one token each"),
    ("prompt-too-long", "a prompt longer than the model's context", "more than model 'tiny-gpt2' accepts (256)"),
    ("pickle-weights", "a model directory holding only pickle weights", "holds only pickle weights"),
    ("hub-offline", "a hub id that is not cached, while offline", "unknown model 'someone/not-cached-model'"),
]
