"""The embedded models side by side: a trainer step of Gemma 3 270M against SmolLM2-135M, in fp32 and bf16.

Equal work for both: the same IOI unit (40 prompts per template, three templates), site mlp_out at every
layer, ActivScalar with K = 1 trial, a batch of 32, actscale's own trainer (`train_group`), logits at
the last position only. Also measured, in the training precision: the unembedding alone (the LM head's
forward and backward at the last position, [B, d] x [d, V]; Gemma's vocabulary is 262,144 words to
SmolLM2's 49,152), and what it would cost at every position instead ([B x T, d] x [d, V]).

Times: the best of `--rounds` blocks of `--steps` steps, the models taking turns block by block, after a
one-step warm-up.

Usage: python bench/models.py [--steps N] [--rounds R] [--quick] [--precisions fp32,bf16]
Ends with one line per precision: `TARGET gemma_step_ratio_<precision>: <gemma / smollm2> (target <= 1.5x) ok|short`.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers import prepare, trainer  # noqa: E402
from workers.interventions import ActivScalar  # noqa: E402
from workers.models import LoadedModel, load_model  # noqa: E402
from workers.precision import training_model  # noqa: E402
from workers.tasks.base import TaskSpec  # noqa: E402
from workers.unit import Hyper, TrainSettings, UnitSpec  # noqa: E402

MODELS = ("smollm2-135m", "gemma3-270m")
SITE = "mlp_out"
BATCH = 32
TARGET = 1.5


def _best_ms(work: Callable[[], None], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, (time.perf_counter() - start) * 1e3)
    return best


def step_timer(loaded: LoadedModel, precision: str) -> tuple[Callable[[int], None], dict]:
    """A function running `steps` trainer steps of the unit, and the unit's shape."""
    spec = UnitSpec(loaded.name, TaskSpec.make("ioi", {"n": 40}), SITE, "all", ActivScalar.method,
                    TrainSettings(batch_size=BATCH, precision=precision))
    unit = prepare.prepare_unit(loaded, spec)
    trains_on = training_model(loaded, unit.precision)
    refs = trainer.resolve_site(trains_on.model, SITE, unit.layers)

    def run(steps: int) -> None:
        hyper = Hyper(lr=0.05, lambda_faith=1.0, lambda_min=0.01, steps=steps, batch_size=BATCH, seed=0)
        trainer.train_group(trains_on, unit, [hyper], refs, [trainer.TrialResult(hyper)])
    return run, dict(tokens=unit.n_positions, precision=unit.precision, trains_on=trains_on)


def unembedding_ms(trains_on: LoadedModel, rows: int, repeats: int) -> float:
    """The LM head's forward and backward on [rows, d] hidden states, in the training model's dtype."""
    head = trains_on.model.get_output_embeddings()
    dtype = head.weight.dtype
    hidden = torch.randn(rows, trains_on.d_model, dtype=dtype, device=trains_on.device, requires_grad=True)

    def work() -> None:
        hidden.grad = None
        head(hidden).float().logsumexp(-1).sum().backward()
    work()
    return _best_ms(work, repeats)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5, help="timed steps per block")
    p.add_argument("--rounds", type=int, default=3, help="timed blocks per model (the best one counts)")
    p.add_argument("--quick", action="store_true", help="2 steps, one block")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated train.precision values")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    steps, rounds = (2, 1) if args.quick else (args.steps, args.rounds)
    loaded = {name: load_model(name) for name in MODELS}
    for name, model in loaded.items():
        print(f"# {name}: {model.n_layers} layers, d_model {model.d_model}, vocabulary "
              f"{model.model.config.vocab_size:,}, {torch.get_num_threads()} threads", flush=True)
    for precision in args.precisions.split(","):
        timers = {name: step_timer(model, precision) for name, model in loaded.items()}
        for run, _ in timers.values():
            run(1)  # warm-up
        best = dict.fromkeys(timers, float("inf"))
        for _ in range(rounds):  # the models take turns, so a change in the machine's load falls on both
            for name, (run, _) in timers.items():
                start = time.perf_counter()
                run(steps)
                best[name] = min(best[name], (time.perf_counter() - start) / steps * 1e3)
        for name, (_, shape) in timers.items():
            head_last = unembedding_ms(shape["trains_on"], BATCH, max(3, rounds))
            head_all = unembedding_ms(shape["trains_on"], BATCH * shape["tokens"], max(1, rounds))
            print(f"{name:<13} {shape['precision']:<5} {best[name]:8.1f} ms/step (batch {BATCH} x {shape['tokens']} "
                  f"tokens); unembedding at the last position {head_last:6.1f} ms ({head_last / best[name]:.0%} of a "
                  f"step), at every position {head_all:7.1f} ms ({head_all / best[name]:.2f} steps)", flush=True)
        ratio = best["gemma3-270m"] / best["smollm2-135m"]
        print(f"TARGET gemma_step_ratio_{precision}: {ratio:.2f}x (target <= {TARGET}x) "
              f"{'ok' if ratio <= TARGET else 'short'}", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
