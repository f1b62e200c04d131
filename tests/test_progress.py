"""Progress that helps: a live table on a terminal, a log line only when something changed without
one, and `actscale status --watch` following a sweep that runs in another process."""
from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from orchestrator import progress
from orchestrator.coordinator import Coordinator
from search_spaces.config import parse_config
from tests.sweeps import tiny_config, write_config

SWEEP = tiny_config(methods=["activscalar", "dynscalar"], search={"n_trials": 6, "batch": 2},
                    train={"steps": 4, "batch_size": 8})


def _actscale(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", *args]


@pytest.mark.slow
def test_without_a_terminal_a_progress_line_only_when_counts_changed(ray_session, tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)  # as often as it may: the rule is "only when changed"
    run = tmp_path / "run"
    Coordinator(parse_config(SWEEP), run, quiet=True).run()
    lines = [line.split(" INFO ", 1)[1] for line in (run / "actscale.log").read_text().splitlines()
             if " trials, " in line and "ETA" in line]
    assert lines, "no progress line at all"
    counts = [re.sub(r", [\d.]+/s, ETA [^,]+", "", line) for line in lines]  # drop rate and ETA
    assert all(a != b for a, b in zip(counts, counts[1:])), counts
    assert "best selected:" in lines[-1] and "12/12 trials" in lines[-1]


@pytest.mark.slow
def test_on_a_terminal_a_live_table_updates_in_place(tmp_path):
    """`actscale run` on a pseudo-terminal: rich's table with every column, redrawn in place."""
    sweep = write_config(tmp_path / "sweep.yaml", SWEEP)
    leader, follower = pty.openpty()
    proc = subprocess.Popen(_actscale("run", str(sweep), "--out", str(tmp_path / "run")), stdin=follower,
                            stdout=follower, stderr=follower, env={**os.environ, "COLUMNS": "160"}, close_fds=True)
    os.close(follower)
    out = b""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=60)
    os.close(leader)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    for column in ("done / total", "failed", "interrupted", "trials/s", "ETA", "best selected so far"):
        assert column in text, column
    assert "\x1b[" in text and "12 / 12" in text  # ANSI redraws, and the final counts
    assert re.search(r"(activscalar|dynscalar) val flip [\d.]+", text)


@pytest.mark.slow
def test_status_watch_follows_a_sweep_in_another_process(tmp_path):
    """Watching starts before the sweep (a run not started yet is waited for) and ends with it."""
    sweep = write_config(tmp_path / "sweep.yaml", SWEEP)
    run = tmp_path / "run"
    watch = subprocess.Popen(_actscale("status", str(run), "--watch", "0.5"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    sweep_run = subprocess.run(_actscale("run", str(sweep), "--out", str(run), "--quiet"), capture_output=True,
                               text=True, timeout=600)
    out, err = watch.communicate(timeout=120)
    assert sweep_run.returncode == 0 and watch.returncode == 0, (sweep_run.stderr, err)
    blocks = re.split(r"^\[\d\d:\d\d:\d\d\] actscale status .*$", out, flags=re.M)[1:]
    assert len(blocks) >= 3 and "waiting for" in blocks[0], out  # it waited, then followed the sweep
    assert all(a != b for a, b in zip(blocks, blocks[1:]))  # printed again only when something changed
    assert "the sweep is done" in blocks[-1] and "pending" in blocks[-1]


def test_bad_watch_intervals_are_refused(tmp_path, capsys):
    from orchestrator.cli import main

    assert main(["status", str(tmp_path), "--watch", "-1"]) == 2
    assert "positive number of seconds" in capsys.readouterr().err
    assert main(["status", str(tmp_path), "--watch", "--json"]) == 2


def test_status_of_a_unit_with_no_trial_yet(tmp_path, capsys):
    """A described unit without a complete trial (a sweep just started) shows dashes, not an error."""
    from orchestrator.cli import main
    from storage.store import RunStore
    from tests.sample_run import make_sample_run

    run = make_sample_run(tmp_path / "run")
    write_config(run / "sweep.yaml", SWEEP)
    store = RunStore(run)
    store.write_now("units", [dict(unit_id="u-00000000fresh", run_id="run-sample", model="tiny-gpt2", task="ioi",
                                   site="mlp_out", method="dynscalar", layers=[0], n_train=40, n_val=20, n_test=20,
                                   min_split=20, warnings=[])])
    assert main(["status", str(run)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("u-00000000fresh"))
    assert line.split()[5:8] == ["0", "0", "0"] and " - " in line
    assert main(["status", str(run), "--json"]) == 0
    fresh = next(r for r in json.loads(capsys.readouterr().out) if r["unit_id"] == "u-00000000fresh")
    assert fresh["selected_trial"] is None and fresh["pending"] == 6


def test_watch_ends_when_the_coordinator_that_holds_the_lock_is_gone(tmp_path, capsys):
    """A lock left by a killed coordinator (same host, pid gone) does not keep `--watch` following."""
    import socket

    from orchestrator.cli import main
    from tests.sample_run import make_sample_run

    run = make_sample_run(tmp_path / "run")
    write_config(run / "sweep.yaml", SWEEP)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / "coordinator.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": 0}))
    assert main(["status", str(run), "--watch", "0.1"]) == 0
    assert "no coordinator is running" in capsys.readouterr().out
