"""`actscale query`, `status` and `report` start without importing torch (or the methods): a status
check or a query is a question about files, not a model."""
from __future__ import annotations

import subprocess
import sys

import pytest

from storage.query_docs import SAMPLE_RUN

PROBE = "import sys; from orchestrator.cli import main; code = main({argv!r}); print('torch' in sys.modules, code)"


@pytest.mark.parametrize("argv", [["query", str(SAMPLE_RUN), "SELECT count(*) FROM trials"], ["status", str(SAMPLE_RUN)],
                                  ["status", str(SAMPLE_RUN), "--json"], ["report", str(SAMPLE_RUN), "--out", "{out}"]])
def test_file_commands_never_import_torch(argv, tmp_path):
    argv = [a.replace("{out}", str(tmp_path / "report")) for a in argv]
    done = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False 0", done.stdout[-500:]


def test_the_full_help_still_lists_every_command():
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "--help"], capture_output=True, text=True,
                          timeout=300)
    for command in ("train", "run", "resume", "status", "query", "report", "steer", "models", "tasks"):
        assert command in done.stdout, command
