"""A sweep on a Ray cluster by the book (docs/cluster.md): `ray start --head` on the loopback with
its job server, `actscale run` submitted as a Ray job, stopped mid-sweep and submitted again, and
the run resumes with every trial exactly once. Its Optuna journal opens with Optuna's own API."""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from orchestrator.sweep_cmds import unit_status
from tests.sweeps import check_run, tiny_config, write_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]
RAY = str(Path(sys.executable).with_name("ray"))
ACTSCALE = str(Path(sys.executable).with_name("actscale"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def cluster(monkeypatch):
    """A one-node Ray cluster of its own (own ports and temp dir), removed afterwards without
    touching any other Ray on the machine (no `ray stop`, which stops them all)."""
    temp = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths have a length limit
    dashboard = _free_port()
    args = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={_free_port()}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
            f"--dashboard-agent-listen-port={_free_port()}", f"--ray-client-server-port={_free_port()}",
            "--include-dashboard=true", "--num-cpus=2", f"--temp-dir={temp}"]
    started = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # the job client presents the cluster's token (~/.ray/auth_token)
    from ray.job_submission import JobSubmissionClient

    client = None
    for _ in range(60):  # the job server needs its agent up
        try:
            client = JobSubmissionClient(f"http://127.0.0.1:{dashboard}")
            break
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(1)
    assert client is not None
    yield client
    for sig in (signal.SIGTERM, signal.SIGKILL):
        subprocess.run(["pkill", f"-{sig.name[3:]}", "-f", temp], check=False)
        time.sleep(2)
    shutil.rmtree(temp, ignore_errors=True)


def _wait(client, job_id: str, states: set[str], timeout: float = 900) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job_id).value)
        if status in states:
            return status
        time.sleep(1)
    raise AssertionError(f"job {job_id} still {status} after {timeout}s:\n{client.get_job_logs(job_id)[-3000:]}")


def test_a_sweep_submitted_as_a_ray_job_resumes_after_the_job_is_stopped(cluster, tmp_path):
    sweep = write_config(tmp_path / "sweep.yaml", tiny_config(
        methods=["activscalar", "dynscalar"], search={"n_trials": 10, "batch": 2}, train={"steps": 80}))
    run = tmp_path / "run"
    entrypoint = f"{ACTSCALE} run {sweep} --out {run} --address auto"
    first = cluster.submit_job(entrypoint=entrypoint, submission_id="sweep-1")
    deadline = time.monotonic() + 900
    while not list((run / "tables" / "trials").glob("part-*.parquet")) and time.monotonic() < deadline:
        assert str(cluster.get_job_status(first).value) in ("PENDING", "RUNNING"), cluster.get_job_logs(first)
        time.sleep(0.5)
    cluster.stop_job(first)  # the driver is stopped mid-sweep, as a preempted head node would be
    assert _wait(cluster, first, {"STOPPED", "FAILED", "SUCCEEDED"}) == "STOPPED", cluster.get_job_logs(first)
    assert sum(r["pending"] for r in unit_status(run)) > 0, "the job finished before it was stopped"

    second = cluster.submit_job(entrypoint=entrypoint, submission_id="sweep-2")
    assert _wait(cluster, second, {"STOPPED", "FAILED", "SUCCEEDED"}) == "SUCCEEDED", cluster.get_job_logs(second)
    logs = cluster.get_job_logs(second)
    assert "results:" in logs, logs[-2000:]
    check_run(run, n_trials=10, n_units=2)  # every trial exactly once, Parquet == Optuna journal
    assert sum(r["pending"] for r in unit_status(run)) == 0
