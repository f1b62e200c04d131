"""What a coordinator does before any work: its log, the run's record, the task data check."""
from __future__ import annotations

import datetime as dt
import logging
import platform
import subprocess
from pathlib import Path

from orchestrator.plan import PlannedUnit
from search_spaces.config import SweepConfig
from storage.run_dir import RunDir
from storage.store import RunStore
from workers.errors import UsageError
from workers.tasks.base import task_hash

log = logging.getLogger("actscale")


def setup_logging(run_dir: RunDir, quiet: bool) -> None:
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
    fh = logging.FileHandler(run_dir.log_file)
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(fh)
    if not quiet:
        sh = logging.StreamHandler()
        sh.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(sh)
    log.propagate = False


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def record_config(run_dir: RunDir, config: SweepConfig, store: RunStore, run_id: str) -> None:
    """The sweep as validated becomes the stored one (and a `runs` row) when it differs from it."""
    text = config.to_yaml()
    if run_dir.stored_sweep_text() == text:
        return
    run_dir.store_sweep(text)
    from importlib.metadata import PackageNotFoundError, version
    try:
        package_version = version("actscale")
    except PackageNotFoundError:
        package_version = "unknown"
    store.write_now("runs", [dict(run_id=run_id, created_at=dt.datetime.now(dt.UTC), config_yaml=text,
                                  package_version=package_version, git_revision=git_revision(),
                                  host=platform.node())])


def check_task_data(planned: list[PlannedUnit], store: RunStore) -> set[str]:
    """Read every task once (bad task files fail here, before anything is written) and refuse a unit
    whose task data changed under the same name since results were stored; returns the described units."""
    stored = store.read("units").table.to_pylist()
    stored_hash = {r["unit_id"]: r["task_hash"] for r in stored}
    hashes: dict = {}
    for p in planned:
        key = (p.spec.task, p.spec.settings.seed)
        if key not in hashes:
            hashes[key] = task_hash(*key)
        current = hashes[key]
        if p.unit_id in stored_hash and current != stored_hash[p.unit_id]:
            raise UsageError(
                f"task {p.spec.task.name!r} changed since unit {p.unit_id} stored its results (data hash "
                f"{stored_hash[p.unit_id]} -> {current}); stored results would be wrong for it. Restore "
                "the file, or save the new one under another name or run into another --out RUN_DIR")
    return set(stored_hash)
