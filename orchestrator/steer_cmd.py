"""`actscale steer`: a stored trial applied to its model, the continuation without and with it."""
from __future__ import annotations

import argparse

from orchestrator.steering import load_trial
from workers.errors import UsageError


def register(sub) -> None:
    p = sub.add_parser("steer", help="apply a stored trial to its model at strength beta and generate")
    p.add_argument("run_dir")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--trial", help="a complete trial's id")
    which.add_argument("--unit", help="a unit's id: its selected trial (default: the run's only unit)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--beta", type=float, default=1.0,
                   help="strength: 0 = the model itself, 1 = the trial, 2 = twice its change, -1 = reversed")
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pickle (.bin) weights")
    p.set_defaults(func=run)


def _generate(loaded, ids, max_new_tokens: int) -> tuple[str, object]:
    """Greedy continuation of one prompt and the last-position probabilities."""
    import torch

    with torch.no_grad():
        probs = loaded.model(ids.to(loaded.device)).logits[0, -1].float().softmax(-1).cpu()
        out = loaded.model.generate(ids.to(loaded.device), attention_mask=torch.ones_like(ids).to(loaded.device),
                                    max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=loaded.tokenizer.pad_token_id or loaded.tokenizer.eos_token_id)
    return loaded.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True), probs


def steer_prompt(run_dir: str, prompt: str, beta: float = 1.0, trial_id: str | None = None,
                 unit_id: str | None = None, max_new_tokens: int = 12, allow_pickle: bool = False) -> dict:
    """Without and with the trial: the continuation, and the answers' probabilities for a task prompt."""
    from workers.models import load_model
    from workers.steer import apply_trial, prompt_roles

    if max_new_tokens <= 0:
        raise UsageError(f"--max-new-tokens must be positive (got {max_new_tokens})")
    trial = load_trial(run_dir, trial_id, unit_id)
    loaded = load_model(str(trial.unit["model"]), allow_pickle=allow_pickle)
    roles = prompt_roles(trial, loaded.tokenizer, prompt)
    ids = loaded.tokenizer(prompt, return_tensors="pt")["input_ids"]  # [1, T]
    without, p_without = _generate(loaded, ids, max_new_tokens)
    with apply_trial(loaded.model, trial, beta, roles):
        with_, p_with = _generate(loaded, ids, max_new_tokens)
    report = dict(trial=trial.describe(), beta=beta, prompt=prompt, without=without, steered=with_, answers=None)
    example = trial.examples.get(prompt)
    if example is not None:
        answers = {}
        for key in ("answer_a", "answer_b"):
            token = loaded.tokenizer(example[key], add_special_tokens=False)["input_ids"][0]
            answers[example[key]] = (float(p_without[token]), float(p_with[token]))
        report["answers"] = answers
    return report


def run(args: argparse.Namespace) -> int:
    r = steer_prompt(args.run_dir, args.prompt, args.beta, args.trial, args.unit, args.max_new_tokens,
                     args.allow_pickle)
    print(f"trial   {r['trial']}, beta {r['beta']:g}")
    print(f"prompt  {r['prompt']!r}")
    labels = ["continues"] + [f"p({answer!r})" for answer in r["answers"] or {}]
    first = max(len(label) for label in labels) + 2
    width = max(len(repr(r["without"])), len("without")) + 2
    print(f"{'':<{first}}{'without':<{width}}with (beta {r['beta']:g})")
    print(f"{'continues':<{first}}{r['without']!r:<{width}}{r['steered']!r}")
    for label, (before, after) in zip(labels[1:], (r["answers"] or {}).values()):
        print(f"{label:<{first}}{before:<{width}.3f}{after:.3f}")
    if r["answers"] is None:
        print("(the prompt is not one of the task's: no answer probabilities)")
    return 0
