"""`actscale query`, `status` and `report` start without importing torch (or the methods): a status
check or a query is a question about files, not a model."""
from __future__ import annotations

import subprocess
import sys

import pytest

from storage.query_docs import SAMPLE_RUN

PROBE = "import sys; from orchestrator.cli import main; code = main({argv!r}); print('torch' in sys.modules, code)"


@pytest.mark.parametrize("argv", [["query", str(SAMPLE_RUN), "SELECT count(*) FROM trials"], ["status", str(SAMPLE_RUN)],
                                  ["status", str(SAMPLE_RUN), "--json"], ["report", str(SAMPLE_RUN), "--out", "{out}"],
                                  ["tasks"]])
def test_file_commands_never_import_torch(argv, tmp_path):
    argv = [a.replace("{out}", str(tmp_path / "report")) for a in argv]
    done = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False 0", done.stdout[-500:]


def test_the_full_help_still_lists_every_command():
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "--help"], capture_output=True, text=True,
                          timeout=300)
    for command in ("train", "run", "resume", "status", "query", "report", "steer", "models", "tasks", "patch"):
        assert command in done.stdout, command


RESUME_PROBE = ("import sys; from orchestrator.cli import main; code = main({argv!r}); "
                "print('transformers' in sys.modules, 'workers.actor' in sys.modules, code)")


@pytest.mark.slow
def test_resuming_a_finished_run_loads_no_model_code(tmp_path):
    """A finished sweep resumed: the model depths come from model_layers.json, the worker code is
    never imported (only torch, for the method registry), and nothing is added."""
    import shutil

    from storage.store import read_table

    run = tmp_path / "run"
    shutil.copytree(SAMPLE_RUN, run)
    before = read_table(run, "trials").table.num_rows
    argv = ["resume", str(run), "--quiet"]
    first = subprocess.run([sys.executable, "-c", RESUME_PROBE.format(argv=argv)], capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert (run / "model_layers.json").exists()
    second = subprocess.run([sys.executable, "-c", RESUME_PROBE.format(argv=argv)], capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.strip().splitlines()[-1] == "False False 0", second.stdout[-500:]
    assert read_table(run, "trials").table.num_rows == before
