"""Throughput benchmark on the embedded model; prints ratios measured in one run.

  a. per-layer sweep (6 evenly spaced layers, 2 trials per unit, 10 steps): the naive way
     (a model load per trial, full forward, logits at every position, one trial at a time)
     against actscale, with each saving added one at a time;
  b. the trainer's achieved FLOP/s against this machine's matmul rate at the same shapes;
  c. orchestration overhead of a 200-trial sweep on a tiny model (Ray + Optuna + Parquet);
  d. trials per second for K = 1, 4, 16 trials batched in one forward.

Usage: python bench/throughput.py [--quick] [--device cuda] [--dtype bf16] [--out DIR]
Ends with one line per target: `TARGET <name>: <measured> (target <target>) ok|short`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers import forward, prepare, scoring, trainer  # noqa: E402
from workers.interventions import ActivScalar  # noqa: E402
from workers.models import load_model  # noqa: E402
from workers.tasks.base import TaskSpec  # noqa: E402
from workers.unit import Hyper, TrainSettings, UnitSpec  # noqa: E402

MODEL = "smollm2-135m"
METHOD = ActivScalar.method  # the benchmark times ActivScalar


def naive_logits(loaded, ids, lengths):
    """The plain way: the whole model, logits at every position, then pick the last real one."""
    ids, lengths = ids.to(loaded.device), lengths.to(loaded.device)
    mask = forward.attention_mask(ids, lengths)
    with forward.autocast_for(loaded):
        logits = loaded.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    return logits[torch.arange(ids.shape[0], device=ids.device), lengths - 1].float()


@contextlib.contextmanager
def full_logits():
    saved = (scoring.last_token_logits, forward.last_token_logits)
    scoring.last_token_logits = forward.last_token_logits = naive_logits
    try:
        yield
    finally:
        scoring.last_token_logits, forward.last_token_logits = saved


def per_layer_sweep(layers, trials, steps, device, variant: str, shared=None, n_examples: int = 80) -> float:
    """Seconds for the whole per-layer sweep in one of the variants."""
    reload_each = variant == "naive"
    naive_logit = variant in ("naive", "one_load")
    cache = variant in ("prefix_cache", "actscale")
    batched = variant == "actscale"
    start = time.perf_counter()
    loaded = None if reload_each else (shared or load_model(MODEL, device=device))
    ctx = full_logits() if naive_logit else contextlib.nullcontext()
    with ctx:
        for layer in layers:
            spec = UnitSpec(MODEL, TaskSpec.make("ioi", {"n": n_examples}), "mlp_out", (layer,), METHOD,
                            TrainSettings(steps=steps, batch_size=32, prefix_cache=cache))
            hypers = [Hyper(lr=0.05, lambda_min=0.01, seed=s) for s in range(trials)]
            if batched:
                trainer.train_trials(loaded, prepare.prepare_unit(loaded, spec), hypers)
                continue
            unit = None
            for hyper in hypers:
                if reload_each:
                    loaded = load_model(MODEL, device=device)
                    unit = None
                unit = unit or prepare.prepare_unit(loaded, spec)
                trainer.train_trials(loaded, unit, [hyper])
    return time.perf_counter() - start


def matmul_rate(m: int, k: int, n: int, device, dtype, seconds: float = 1.0) -> float:
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * m * k * n * count / (time.perf_counter() - start)


def trainer_flops(loaded, steps: int, batch: int) -> tuple[float, float, int]:
    """(achieved FLOP/s of training steps, FLOPs per step, tokens per step) at all layers."""
    cfg = loaded.model.config
    spec = UnitSpec(MODEL, TaskSpec.make("ioi", {"n": 40}), "mlp_out", "all", METHOD,
                    TrainSettings(steps=steps, batch_size=batch))
    unit = prepare.prepare_unit(loaded, spec)
    tokens = batch * unit.n_positions
    d, ff, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * (d // cfg.num_attention_heads)
    per_token_layer = 2 * (2 * d * d + 2 * d * kv + 3 * d * ff)
    forward_flops = tokens * layers * per_token_layer + 2 * batch * d * cfg.vocab_size
    step_flops = 2 * forward_flops  # backward to the activations (weights are frozen) ~ one forward
    refs = trainer.resolve_site(loaded.model, "mlp_out", unit.layers)
    outcomes = [trainer.TrialResult(Hyper())]
    trainer.train_group(loaded, unit, [Hyper(steps=2)], refs, outcomes)  # warm-up
    start = time.perf_counter()
    trainer.train_group(loaded, unit, [Hyper(steps=steps)], refs, outcomes)
    if loaded.device.type == "cuda":
        torch.cuda.synchronize()
    return step_flops * steps / (time.perf_counter() - start), step_flops, tokens


def bf16_step_ratio(loaded, steps: int, batch: int = 32) -> dict | None:
    """Seconds per training step of one ActivScalar trial at all layers, fp32 against bf16 (the
    copy `train.precision: bf16` trains on); None where bf16 is not native (reported as skipped)."""
    from workers.precision import cpu_has_native_bf16, training_model

    if loaded.device.type == "cpu" and not cpu_has_native_bf16():
        return None  # on CUDA: bf16 autocast against fp32, for the record
    seconds = {}
    for precision in ("fp32", "bf16", "fp32", "bf16"):  # interleaved: a noisy machine hits both alike
        spec = UnitSpec(MODEL, TaskSpec.make("ioi", {"n": 40}), "mlp_out", "all", METHOD,
                        TrainSettings(steps=steps, batch_size=batch, precision=precision))
        unit = prepare.prepare_unit(loaded, spec)
        trains_on = training_model(loaded, unit.precision)
        refs = trainer.resolve_site(trains_on.model, "mlp_out", unit.layers)
        outcomes = [trainer.TrialResult(Hyper())]
        trainer.train_group(trains_on, unit, [Hyper(steps=1)], refs, outcomes)  # warm-up
        start = time.perf_counter()
        trainer.train_group(trains_on, unit, [Hyper(steps=steps)], refs, outcomes)
        seconds.setdefault(precision, []).append((time.perf_counter() - start) / steps)
    fp32, bf16 = min(seconds["fp32"]), min(seconds["bf16"])
    return dict(fp32_s=fp32, bf16_s=bf16, ratio=fp32 / bf16)


def trials_per_second(loaded, ks, steps: int) -> dict[int, float]:
    layers = tuple(range(loaded.n_layers - 6, loaded.n_layers))
    spec = UnitSpec(MODEL, TaskSpec.make("ioi", {"n": 40}), "mlp_out", layers, METHOD,
                    TrainSettings(steps=steps, batch_size=16))
    unit = prepare.prepare_unit(loaded, spec)
    trainer.train_trials(loaded, unit, [Hyper(steps=1)])  # warm-up
    out = {}
    for k in ks:
        start = time.perf_counter()
        trainer.train_trials(loaded, unit, [Hyper(lr=0.05, seed=s) for s in range(k)])
        out[k] = k / (time.perf_counter() - start)
    return out


def orchestration_overhead(n_trials: int, steps: int) -> dict:
    from orchestrator.coordinator import Coordinator
    from search_spaces.config import parse_config
    from storage.query import load

    config = parse_config({"name": "overhead", "models": ["tiny-llama"], "tasks": [{"name": "ioi", "options": {"n": 40}}],
                           "sites": ["mlp_out"], "methods": [METHOD],
                           "search": {"sampler": "random", "n_trials": n_trials, "batch": 4},
                           "train": {"steps": steps, "batch_size": 16}, "resources": {"cpus_per_worker": 1},
                           "analysis": {"enabled": False}})
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        Coordinator(config, Path(tmp), quiet=True).run()
        wall = time.perf_counter() - start
        trials = load(Path(tmp), "trials")
    trainer_s = float(trials.wall_s.sum())
    steady = (trials.ended_at.max() - trials.started_at.min()).total_seconds()
    return dict(wall_s=wall, steady_s=steady, trainer_s=trainer_s,
                overhead_steady=1 - trainer_s / steady, overhead_total=1 - trainer_s / wall)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="reduced version for CI smoke use (< 3 minutes)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--skip-overhead", action="store_true", help="skip part c (needs Ray)")
    p.add_argument("--out", help="directory for results.json")
    args = p.parse_args()
    device = torch.device(args.device)
    quick = args.quick
    figures: dict = {"device": str(device), "quick": quick, "torch_threads": torch.get_num_threads()}
    loaded = load_model(MODEL, device=device)
    n_layers = loaded.n_layers

    # a. per-layer sweep, savings added one at a time
    count = 2 if quick else 6
    layers = [round(i * (n_layers - 1) / (count - 1)) for i in range(count)]
    steps = 3 if quick else 10
    variants = ["naive", "one_load", "last_position", "prefix_cache", "actscale"]
    times = {}
    for v in variants:
        times[v] = per_layer_sweep(layers, 2, steps, device, v, shared=None if v == "naive" else loaded,
                                   n_examples=30 if quick else 80)
        print(f"a. per-layer sweep {v:<14} {times[v]:7.1f}s  ({times['naive'] / times[v]:.2f}x vs naive)", flush=True)
    figures["per_layer"] = dict(layers=layers, steps=steps, trials_per_unit=2, seconds=times)

    # b. trainer FLOP/s against the matmul rate at the same shapes
    rate, step_flops, tokens = trainer_flops(loaded, 3 if quick else 10, 32)
    cfg = loaded.model.config
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    mm = matmul_rate(tokens, cfg.hidden_size, cfg.intermediate_size, device, dtype)
    figures["flops"] = dict(trainer=rate, matmul=mm, fraction=rate / mm, tokens_per_step=tokens)
    print(f"b. trainer {rate / 1e9:.1f} GFLOP/s, matmul [{tokens}x{cfg.hidden_size}]@[{cfg.hidden_size}x"
          f"{cfg.intermediate_size}] {mm / 1e9:.1f} GFLOP/s: {100 * rate / mm:.0f}%", flush=True)

    # b2. bf16 against fp32 training steps (CPUs with native bf16)
    bf16 = bf16_step_ratio(loaded, 3 if quick else 10)
    figures["bf16_step"] = bf16
    if bf16:
        print(f"b2. training step fp32 {bf16['fp32_s']:.3f}s, bf16 {bf16['bf16_s']:.3f}s: {bf16['ratio']:.2f}x",
              flush=True)

    # c. orchestration overhead
    if not args.skip_overhead:
        over = orchestration_overhead(40 if quick else 200, 30)
        figures["overhead"] = over
        print(f"c. {40 if quick else 200} trials: wall {over['wall_s']:.1f}s (steady {over['steady_s']:.1f}s), "
              f"trainer {over['trainer_s']:.1f}s: overhead {100 * over['overhead_steady']:.1f}% steady, "
              f"{100 * over['overhead_total']:.1f}% with Ray start-up", flush=True)

    # d. trials per second against K
    ks = (1, 4) if quick else (1, 4, 16)
    tps = trials_per_second(loaded, ks, 2 if quick else 5)
    figures["trials_per_s"] = tps
    print("d. trials/s " + ", ".join(f"K={k}: {v:.2f}" for k, v in tps.items()), flush=True)

    speedup = times["naive"] / times["actscale"]
    print(f"TARGET per_layer_speedup: {speedup:.2f}x (target 2x) {'ok' if speedup >= 2 else 'short'}")
    frac = figures["flops"]["fraction"]
    print(f"TARGET trainer_matmul_fraction: {100 * frac:.0f}% (target 60%) {'ok' if frac >= 0.6 else 'short'}")
    if bf16 and device.type == "cpu":
        r = bf16["ratio"]
        print(f"TARGET cpu_bf16_step: {r:.2f}x (target >= 1.6x) {'ok' if r >= 1.6 else 'short'}")
    else:
        print("TARGET cpu_bf16_step: skipped (no native bf16 on this CPU, or not a CPU run)")
    if "overhead" in figures:
        o = figures["overhead"]["overhead_steady"]
        print(f"TARGET orchestration_overhead: {100 * o:.1f}% (target 5%) {'ok' if o <= 0.05 else 'short'}")
    if device.type == "cuda" and 16 in tps:
        r = tps[16] / tps[1]
        print(f"TARGET k16_vs_k1_trials_per_s: {r:.2f}x (target 5x) {'ok' if r >= 5 else 'short'}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "results.json").write_text(json.dumps(figures, indent=1, default=str))


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
