"""The built-in quickstart on the embedded model: within 10 minutes, ActivScalar flips IOI."""
from __future__ import annotations

import time

import pytest

from orchestrator.cli import main
from storage.query import run_sql

pytestmark = pytest.mark.slow

BEST = """
SELECT u.method, t.trial_id, t.val_flip_rate, t.test_flip_rate, t.test_kl_other, t.n_active, t.n_params
FROM trials t JOIN units u USING (unit_id)
WHERE t.status = 'complete'
QUALIFY row_number() OVER (PARTITION BY t.unit_id ORDER BY t.val_flip_rate DESC, t.val_kl_other, t.val_l1) = 1
ORDER BY u.method
"""


def test_quickstart_finishes_in_ten_minutes_and_flips_ioi(tmp_path, capsys):
    start = time.monotonic()
    assert main(["run", "--out", str(tmp_path / "qs"), "--quiet"]) == 0
    wall = time.monotonic() - start
    best, _ = run_sql([tmp_path / "qs"], BEST)
    print(f"quickstart wall {wall:.0f}s\n{best.to_string(index=False)}")
    activ = best[best.method == "activscalar"].iloc[0]
    assert wall <= 600
    assert activ.test_flip_rate >= 0.9
