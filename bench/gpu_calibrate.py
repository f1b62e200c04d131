"""Calibrate `actscale plan` on a machine that cannot hold the embedded models' weights: each model is built
from its own config.json with random weights (a step costs the same whatever the weights hold) and its own
tokenizer, and actscale's own timing (orchestrator/calibration.py: prepare a unit, training steps at batch
32 with K = 1, 4, 8, 16 trials, an evaluation forward) writes one calibration file per model, which
`actscale plan SWEEP --calibration FILE` then prices a sweep with (e.g. search_spaces/study.yaml on GPU
workers).

    python bench/gpu_calibrate.py MODEL_DIR NAME --out FILE [--device cuda]

MODEL_DIR holds config.json and the tokenizer files of a model (the embedded models' converted caches,
~/.cache/actscale/models/<name>, have them); NAME is the built-in model's name the file is for. It needs
torch, transformers and the project, not Ray, Optuna, DuckDB or the weights (bench/gpu.sh carries the rest).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = [(32, 1), (32, 4), (32, 8), (32, 16)]  # (batch size, K trials in one forward)


def random_weight_model(model_dir: Path, name: str, device: str):
    """A LoadedModel of the model's shape with random weights (fp32, eval, frozen), and its own tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from workers.models import LoadedModel

    start = time.perf_counter()
    config = AutoConfig.from_pretrained(model_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(device)
    model.eval()
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(name=name, model=model, tokenizer=tokenizer, revision="random-weights",
                       device=torch.device(device), load_seconds=time.perf_counter() - start)


def calibrate(model_dir: Path, name: str, device: str, shapes: list[tuple[int, int]] = SHAPES) -> dict:
    from orchestrator.calibration import _timing
    from workers.names import method_names
    from workers.tasks.base import TaskSpec
    from workers.unit import TrainSettings, UnitSpec

    started = time.perf_counter()
    import torch  # noqa: F401 - timed: a worker's start

    start_s = time.perf_counter() - started
    loaded = random_weight_model(model_dir, name, device)
    # the base model prefers answer a on about half the prompts at random weights: keep every prompt
    spec = UnitSpec(name, TaskSpec.make("ioi", {"n": 40}), "mlp_out", "all", method_names()[0],
                    TrainSettings(batch_size=shapes[0][0], filter="none"))
    record = _timing(loaded, spec, shapes, start_s)
    record.host = f"{record.host} ({device}, random weights of {name})"
    return dataclasses.asdict(record)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("name")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shapes", default=",".join(f"{b}x{k}" for b, k in SHAPES),
                        help="batch x K trials to time, comma-separated (default %(default)s)")
    args = parser.parse_args()
    shapes = [tuple(int(x) for x in shape.split("x")) for shape in args.shapes.split(",")]
    record = calibrate(args.model_dir, args.name, args.device, shapes)  # type: ignore[arg-type]
    args.out.write_text(json.dumps(record, indent=1))
    steps = ", ".join(f"{shape} {seconds * 1e3:.1f} ms" for shape, seconds in record["steps"].items())
    print(f"{args.name} on {record['device']} ({record['precision']}): steps {steps}; eval "
          f"{record['eval_row_s'] * 1e3:.2f} ms/row; prepare {record['prepare_prompt_s'] * 1e3:.1f} ms/prompt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
