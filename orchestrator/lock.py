"""A lock file that keeps a second coordinator off a run directory.

A stale lock left by a dead process (same host, pid gone) is taken over with a message.
"""
from __future__ import annotations

import json
import os
import socket
import time

from storage.run_dir import RunDir
from workers.errors import UsageError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    def __init__(self, run_dir: RunDir):
        self.path = RunDir(run_dir).lock_file
        self.held = False

    def acquire(self, say=print) -> None:
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    other = json.loads(self.path.read_text() or "{}")
                except (OSError, json.JSONDecodeError):
                    other = {}
                pid, host = other.get("pid"), other.get("host")
                if pid and host == socket.gethostname() and _alive(int(pid)) and int(pid) != os.getpid():
                    raise UsageError(f"another coordinator (pid {pid}) is running on {self.path.parent}; "
                                     "wait for it, or stop it first") from None
                if host and host != socket.gethostname():
                    raise UsageError(f"{self.path} is held by a coordinator on host {host!r} (pid {pid}); "
                                     "if that host is gone, delete the lock file") from None
                say(f"taking over the stale lock of a coordinator that is gone (pid {pid})")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(record)
            self.held = True
            return
        raise UsageError(f"could not take the lock {self.path}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def held_by_a_live_coordinator(run_dir: RunDir) -> bool:
    """Whether a coordinator holds the run directory: a lock file whose process is alive (a lock of a
    dead process on this host is stale; one from another host is taken at its word)."""
    path = RunDir(run_dir).lock_file
    try:
        other = json.loads(path.read_text() or "{}")
    except FileNotFoundError:
        return False
    except (OSError, json.JSONDecodeError):
        return True  # being written
    pid, host = other.get("pid"), other.get("host")
    if pid and host == socket.gethostname():
        return _alive(int(pid))
    return True
