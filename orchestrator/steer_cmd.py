"""`actscale steer`: a stored trial applied to its model, on any prompt: the continuation, the top
next tokens and two answers' probabilities and logit difference, without and with it."""
from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from orchestrator.steering import load_trial
from workers.errors import UsageError

if TYPE_CHECKING:
    from workers.steer import NextTokenEffect


def register(sub) -> None:
    p = sub.add_parser("steer", help="apply a stored trial to its model at strength beta: the continuation, the top "
                                     "next tokens and two answers' probabilities, without and with it")
    p.add_argument("run_dir")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--trial", help="a complete trial's id")
    which.add_argument("--unit", help="a unit's id: its selected trial (default: the run's only unit)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--beta", type=float, default=1.0,
                   help="strength: 0 = the model itself, 1 = the trial, 2 = twice its change, -1 = reversed")
    p.add_argument("--answers", nargs=2, metavar=("A", "B"),
                   help="two one-token answers: p(A), p(B) and LD = z_A - z_B without and with (default: the task's "
                        "own for a prompt of the task)")
    p.add_argument("--top", type=int, default=5, help="how many most probable next tokens to show (default 5)")
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pickle (.bin) weights")
    p.set_defaults(func=run)


def steer_prompt(run_dir: str, prompt: str, beta: float = 1.0, trial_id: str | None = None,
                 unit_id: str | None = None, max_new_tokens: int = 12, allow_pickle: bool = False,
                 answers: list[str] | None = None, top: int = 5) -> NextTokenEffect:
    """Without and with the trial: the continuation, the top next tokens and the answers'
    probabilities and LD (workers.steer.NextTokenEffect)."""
    from workers.models import load_model
    from workers.steer import next_token_effect

    if max_new_tokens <= 0:
        raise UsageError(f"--max-new-tokens must be positive (got {max_new_tokens})")
    trial = load_trial(run_dir, trial_id, unit_id)
    loaded = load_model(str(trial.unit["model"]), allow_pickle=allow_pickle)
    return next_token_effect(loaded.model, loaded.tokenizer, prompt, trial, beta, answers=answers, top=top,
                             max_new_tokens=max_new_tokens)


def run(args: argparse.Namespace) -> int:
    effect = steer_prompt(args.run_dir, args.prompt, args.beta, args.trial, args.unit, args.max_new_tokens,
                          args.allow_pickle, args.answers, args.top)
    if args.json:
        print(json.dumps(effect.to_dict()))
        return 0
    print(effect)
    if effect.answers is None:
        print("(the prompt is not one of the task's: --answers A B shows two answers' probabilities and their "
              "logit difference)")
    return 0
