"""Process helpers for fault tests: start a coordinator in its own session, find and kill its processes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start_coordinator(args: list[str], log: Path) -> subprocess.Popen:
    """`actscale run ...` in a new session, so that the whole tree can be killed as a crash would."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli"] + args, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)


def session_processes(sid: int) -> dict[int, str]:
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid:  # field 6 of /proc/PID/stat: session id
            out[int(entry.name)] = comm
    return out


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the coordinator and every process of its session (Ray's agents included)."""
    for pid in session_processes(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)


def wait_for(predicate, timeout: float, every: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False
