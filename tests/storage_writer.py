"""Child process for the crash tests: appends parts of sequential ids and acknowledges each.

Usage: python -m tests.storage_writer RUN_DIR START COUNT ROWS_PER_PART PAUSE_S [COMPACT_EVERY]
Prints "ACK <last id>" after each part is durable (renamed and fsynced). With COMPACT_EVERY,
the table is compacted after every that many parts (the compaction crash test).
"""
from __future__ import annotations

import sys
import time

from storage.store import RunStore


def main() -> None:
    run_dir, start, count, per_part = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    pause = float(sys.argv[5])
    compact_every = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    store = RunStore(run_dir, flush_rows=per_part, flush_seconds=3600, compact_over=0)
    next_id = start
    for n in range(count):
        rows = [dict(trial_id=f"t{next_id + i:08d}", unit_id="u", run_id="r", trial_number=next_id + i,
                     status="complete") for i in range(per_part)]
        flushed = store.append("trials", rows)
        assert flushed
        next_id += per_part
        print(f"ACK {next_id - 1}", flush=True)
        if compact_every and (n + 1) % compact_every == 0:
            store.compact("trials")
        time.sleep(pause)


if __name__ == "__main__":
    main()
