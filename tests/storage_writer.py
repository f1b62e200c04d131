"""Child process for the crash tests: appends parts of sequential ids and acknowledges each.

Usage: python -m tests.storage_writer RUN_DIR START COUNT ROWS_PER_PART PAUSE_S
Prints "ACK <last id>" after each part is durable (renamed and fsynced).
"""
from __future__ import annotations

import sys
import time

from storage.store import RunStore


def main() -> None:
    run_dir, start, count, per_part = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    pause = float(sys.argv[5])
    store = RunStore(run_dir, flush_rows=per_part, flush_seconds=3600)
    next_id = start
    for _ in range(count):
        rows = [dict(trial_id=f"t{next_id + i:08d}", unit_id="u", run_id="r", trial_number=next_id + i,
                     status="complete") for i in range(per_part)]
        flushed = store.append("trials", rows)
        assert flushed
        next_id += per_part
        print(f"ACK {next_id - 1}", flush=True)
        time.sleep(pause)


if __name__ == "__main__":
    main()
