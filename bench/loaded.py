"""Workers on a shared machine: one training-shaped step of the embedded model (forward and
backward, 64 prompts x 16 tokens, 2 torch threads) in a process with Ray's worker niceness
(15), with and without OMP_WAIT_POLICY=PASSIVE, on an idle machine and with a CPU burner
pinned to core 0. Each variant is a fresh process: OpenMP reads the policy when it starts.

Prints `TARGET passive_wait_loaded_speedup` (passive vs spinning, burner running; target 2x)
and `TARGET passive_wait_idle_cost` (passive / spinning, idle; target <= 1.15).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEP = r"""
import sys, time
import torch
from workers.models import load_model
torch.set_num_threads(2)
loaded = load_model("smollm2-135m")
ids = torch.randint(100, 1000, (64, 16), generator=torch.Generator().manual_seed(0))  # [B, T]
scale = torch.nn.Parameter(torch.ones(1))
def step():
    hidden = loaded.model.base_model(input_ids=ids, use_cache=False).last_hidden_state  # [B, T, d]
    (hidden[:, -1].sum() * scale).backward()
step()
start = time.perf_counter()
for _ in range(int(sys.argv[1])):
    step()
print((time.perf_counter() - start) / int(sys.argv[1]))
"""


def step_seconds(passive: bool, steps: int) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    out = subprocess.run(["nice", "-n", "15", sys.executable, "-c", STEP, str(steps)], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    if (os.cpu_count() or 1) < 2:
        print("TARGET passive_wait_loaded_speedup: skipped (needs 2 cores)")
        return 0
    idle = {p: step_seconds(p, args.steps) for p in (False, True)}
    burner = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        loaded = {p: step_seconds(p, args.steps) for p in (False, True)}
    finally:
        burner.kill()
    figures = {"idle_spin_s": idle[False], "idle_passive_s": idle[True],
               "loaded_spin_s": loaded[False], "loaded_passive_s": loaded[True]}
    print(json.dumps({k: round(v, 3) for k, v in figures.items()}))
    speedup = loaded[False] / loaded[True]
    cost = idle[True] / idle[False]
    print(f"TARGET passive_wait_loaded_speedup: {speedup:.2f}x (target 2x) {'ok' if speedup >= 2 else 'short'}")
    print(f"TARGET passive_wait_idle_cost: {cost:.2f}x (target 1.15x) {'ok' if cost <= 1.15 else 'short'}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
