"""`actscale train`: one trial in-process, no Ray, printed for a person or as JSON."""
from __future__ import annotations

import argparse
import json

import yaml

from orchestrator.records import status_of
from workers.errors import UsageError
from workers.names import SITES, check_method, check_site, import_plugins, method_names
from workers.tasks.base import TaskSpec
from workers.unit import Hyper, TrainSettings, UnitSpec


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="built-in name (see `actscale models`), local dir or cached hub id")
    p.add_argument("--task", required=True, help="built-in task (see `actscale tasks`) or a .jsonl file")
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                   help="task option, value parsed as YAML (e.g. heldout_templates=[long])")
    p.add_argument("--site", required=True, help=f"one of {', '.join(SITES)}")
    p.add_argument("--layers", default="all", help="'all' or a comma-separated list such as 0,3,-1")
    p.add_argument("--method", required=True, help=f"one of {', '.join(method_names())}, or a plugin's")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import this module first: it registers methods of its own (repeatable)")
    hyper, settings = Hyper(), TrainSettings()  # the defaults, written once there
    p.add_argument("--lambda-faith", type=float, default=hyper.lambda_faith)
    p.add_argument("--lambda-min", type=float, default=hyper.lambda_min)
    p.add_argument("--lr", type=float, default=hyper.lr)
    p.add_argument("--steps", type=int, default=settings.steps)
    p.add_argument("--batch-size", type=int, default=settings.batch_size)
    p.add_argument("--seed", type=int, default=settings.seed, help="data and batch-order seed")
    p.add_argument("--filter", default=settings.filter, choices=["model_prefers_a", "none"])
    p.add_argument("--min-split", type=int, default=settings.min_split,
                   help="warn when a split holds fewer prompts (its rates are marked)")
    p.add_argument("--precision", default=settings.precision, choices=["auto", "fp32", "bf16"],
                   help="training forwards: auto takes bf16 on CUDA, and on CPUs with native bf16 for models at "
                   "least 256 wide")
    p.add_argument("--l1", default=settings.l1, choices=["subgradient", "proximal"],
                   help="the L1 term: its subgradient in the loss, or a proximal step toward identity after each "
                   "optimizer step (unmoved cells stay exactly at identity)")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pickle (.bin) weights")
    p.add_argument("--top", type=int, default=10, help="how many most-moved scalars to print")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def parse_task_options(items: list[str]) -> dict:
    options = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--task-option {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        options[key.strip()] = yaml.safe_load(value)
    return options


def _moved(outcome, top: int) -> list[dict]:
    """The cells with the largest effect (the measure that decides sites_moved, for every method)."""
    return sorted(outcome.scalars, key=lambda row: row["effect"], reverse=True)[:top]


def run(args: argparse.Namespace) -> int:
    from workers.models import load_model
    from workers.prepare import prepare_unit
    from workers.trainer import train_trials

    import_plugins(args.plugin)
    if args.steps <= 0 or args.batch_size <= 0 or args.lr <= 0:
        raise UsageError(f"--steps, --batch-size and --lr must be positive (got {args.steps}, {args.batch_size}, {args.lr})")
    layers = args.layers if args.layers == "all" else tuple(int(x) for x in _split_layers(args.layers))
    if args.min_split <= 0:
        raise UsageError(f"--min-split must be positive (got {args.min_split})")
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, seed=args.seed, filter=args.filter,
                             min_split=args.min_split, precision=args.precision, l1=args.l1)
    spec = UnitSpec(args.model, TaskSpec.make(args.task, parse_task_options(args.task_option)), args.site,
                    layers, args.method, settings)
    check_site(spec.site)  # names first, before paying for a model load
    check_method(spec.method)
    loaded = load_model(args.model, allow_pickle=args.allow_pickle)
    unit = prepare_unit(loaded, spec)
    hyper = Hyper(lambda_faith=args.lambda_faith, lambda_min=args.lambda_min, lr=args.lr, seed=args.seed)
    outcome = train_trials(loaded, unit, [hyper])[0]
    report = {
        "unit": spec.describe(), "status": status_of(outcome), "error": outcome.error,
        "examples": unit.counts, "base_accuracy": unit.base_accuracy,
        "n": {split: len(data) for split, data in unit.splits.items()}, "min_split": args.min_split,
        "warnings": unit.warnings,
        "val": outcome.metrics.get("val"), "test": outcome.metrics.get("test"),
        "n_params": outcome.n_params, "sites_moved": outcome.sites_moved, "sites_total": outcome.sites_total,
        "steps": outcome.steps, "precision": outcome.precision,
        "wall_s": round(outcome.wall_s, 2), "hyper": hyper.to_dict(),
        "most_moved": _moved(outcome, args.top),
    }
    if args.json:
        print(json.dumps(report))
    else:
        _print_text(report)
    return 0 if outcome.ok else 1


def _split_layers(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--layers {text!r}: give 'all' or a comma-separated list of integers such as 0,3,-1") from None


def _print_text(report: dict) -> None:
    print(f"unit      {report['unit']}")
    print(f"status    {report['status']}" + (f" ({report['error']})" if report["error"] else ""))
    print(f"examples  {report['examples']}  (base accuracy {report['base_accuracy']:.3f})")
    for warning in report["warnings"]:
        print(f"warning   {warning}")
    print(f"sites     moved {report['sites_moved']} of {report['sites_total']} cells (layer, column[, head])  "
          f"n_params={report['n_params']}  steps={report['steps']}  wall={report['wall_s']}s")
    if report["val"]:
        small = {split: n < report["min_split"] for split, n in report["n"].items()}
        heads = {split: f"{split} n={report['n'][split]}" + ("*" if small[split] else "") for split in ("val", "test")}
        print(f"{'metric':<12}{heads['val']:>14}{heads['test']:>14}")
        for name in report["val"]:
            print(f"{name:<12}{report['val'][name]:>14.4f}{report['test'][name]:>14.4f}")
        if any(small.values()):
            print(f"* fewer than min_split={report['min_split']} prompts: these rates are noise-prone")
    print("most moved (column: position and role, or role alone where prompts differ in shape):")
    for row in report["most_moved"]:
        head = "" if row["head"] is None else f" head {row['head']}"
        where = f"pos {row['position']:>3} {row['role']:<10}" if row["position"] is not None else \
            f"role {row['role']:<10} ({row['n_prompts']} prompts)"
        print(f"  layer {row['layer']:>3} {where}{head} value {row['value']:.4f}"
              f"  effect {row['effect']:.4f}" + ("  moved" if row["moved"] else ""))


def register(sub) -> None:
    p = sub.add_parser("train", help="run one trial in-process (no Ray) and print its metrics")
    add_arguments(p)
    p.set_defaults(func=run)
