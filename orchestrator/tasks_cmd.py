"""`actscale tasks`: the built-in tasks; with a task and `--model`, a dry run of that task's data
accounting: the task prepared for the model as a unit would prepare it (tokenized, filtered,
split), printing the prompts kept per split and template, those dropped per reason and the
unit's warnings, without Ray and without writing anything."""
from __future__ import annotations

import argparse
import textwrap
from collections import Counter

from workers.errors import UsageError

WRAP = 100  # hints and warnings are wrapped at this width (a terminal or a log alike)
TEMPLATE_WIDTH = 72  # a longer template is cut with an ellipsis in its table row


def register(sub) -> None:
    p = sub.add_parser("tasks", help="list built-in tasks; with TASK --model M: how many of the task's prompts a "
                                     "unit keeps per split, and why the others are dropped (no sweep is started)")
    p.add_argument("task", nargs="?", help="a built-in task or a .jsonl file (needs --model)")
    p.add_argument("--model", help="built-in name (see `actscale models`), local dir or cached hub id")
    p.add_argument("--method", help="the unit's method (a position-tied one keeps one token length; default: the "
                                    "first built-in method, ActivScalar)")
    p.add_argument("--site", default="mlp_out", help="the unit's site (default mlp_out)")
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                   help="task option, value parsed as YAML (e.g. n=40)")
    p.add_argument("--filter", default="model_prefers_a", choices=["model_prefers_a", "none"])
    p.add_argument("--seed", type=int, default=0, help="data seed: task generation and splits")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import this module first: it registers methods of its own (repeatable)")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pickle (.bin) weights")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.task is None:
        if args.model is not None:
            raise UsageError("--model needs a task: actscale tasks TASK --model MODEL (a built-in task or a .jsonl file)")
        return list_tasks()
    if args.model is None:
        raise UsageError(f"actscale tasks {args.task}: give --model MODEL, the model whose tokenizer and "
                         "preferences decide which prompts a unit keeps")
    print(accounting_text(prepare_task(args)))
    return 0


def list_tasks() -> int:
    from workers.tasks.base import task_names

    for name, doc in task_names().items():
        print(f"{name:<14} {doc}")
    print("\nOr a .jsonl file: one {\"prompt\", \"answer_a\", \"answer_b\", \"template\"} object per line.\n"
          "actscale tasks TASK --model MODEL [--method M] [--site S]: what a unit keeps of it, per split and template.")
    return 0


def prepare_task(args: argparse.Namespace):
    """The task prepared for the model exactly as a unit of a sweep would prepare it."""
    from orchestrator.train_cmd import parse_task_options
    from workers.models import load_model
    from workers.names import check_method, check_site, import_plugins, method_names
    from workers.prepare import prepare_unit
    from workers.tasks.base import TaskSpec
    from workers.unit import TrainSettings, UnitSpec

    import_plugins(args.plugin)
    check_site(args.site)
    method = args.method or method_names()[0]
    check_method(method)
    spec = UnitSpec(args.model, TaskSpec.make(args.task, parse_task_options(args.task_option)), args.site, "all",
                    method, TrainSettings(seed=args.seed, filter=args.filter))
    return prepare_unit(load_model(args.model, allow_pickle=args.allow_pickle), spec)


def _wrapped(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, WRAP, initial_indent=indent, subsequent_indent=" " * len(indent) + "  ")


def _template_rows(unit) -> list[str]:
    """Per template: the prompts kept in each split (a template a unit drops entirely shows 0 0 0)."""
    from workers.prepare import SPLITS
    from workers.tasks.base import load_examples

    kept = {name: Counter(e.example.template for e in unit.splits[name].examples) for name in SPLITS}
    given = Counter(e.template for e in load_examples(unit.spec.task, unit.spec.settings.seed))
    shown = {t: t if len(t) <= TEMPLATE_WIDTH else t[: TEMPLATE_WIDTH - 1] + "…" for t in given}
    width = max(len("template"), *(len(s) for s in shown.values()))
    rows = [f"  {'template':<{width}}  {'given':>6}" + "".join(f"{name:>7}" for name in SPLITS)]
    rows += [f"  {shown[t]:<{width}}  {n:>6}" + "".join(f"{kept[name][t]:>7}" for name in SPLITS)
             for t, n in given.items()]
    return rows


def accounting_text(unit) -> str:
    """Kept per split and template, dropped per reason (with what would keep them), and the warnings."""
    spec, counts = unit.spec, unit.counts
    length = f"one token length, {unit.n_positions}" if unit.n_positions is not None else "any token length"
    lines = [f"task {spec.task.name} for {spec.model} / {spec.site} / {spec.method} ({length}; filter "
             f"{spec.settings.filter}, seed {spec.settings.seed})",
             f"prompts: {counts['total']}, kept " + ", ".join(f"{name} {len(d)}" for name, d in unit.splits.items())
             + f"; base accuracy {unit.base_accuracy:.0%} (the model ranks answer a above b)", "", "dropped:"]
    warnings = unit.warnings
    warned = any(w.startswith("dropped ") for w in warnings)  # the drop warning below gives the hints
    for key, value in counts.items():
        if key.startswith("dropped_"):
            reason = key.removeprefix("dropped_")
            lines.append(f"  {reason.replace('_', ' '):<25}{value:>6}")
            if value and reason in unit.drop_hints and not warned:
                lines += _wrapped(unit.drop_hints[reason], "      ")
    lines += ["", "kept per template:", *_template_rows(unit)]
    lines += ["", "warnings a sweep would log for this unit (units.warnings):" if warnings else "warnings: none"]
    for warning in warnings:
        lines += _wrapped(warning, "  - ")
    return "\n".join(lines)
