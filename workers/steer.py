"""Apply a stored trial to a loaded model at strength beta (`apply_trial`; from a run directory:
orchestrator.steering.steer and `actscale steer`).

The trial is rebuilt from RUN_DIR/artifacts/<trial id>.safetensors by its method's
`from_artifact` (alpha' = 1 + beta(alpha - 1); v' = beta v; DynScalar's w and b times beta),
on any model of the trial's architecture and size, loaded by the user or by name.

A position-tied method (ActivScalar, SteerVec: one parameter per position) applies only to
a prompt of the trained length whose tokens hold the trained roles, position by position
(`check_roles`); its hooks change the prompt's positions only, never generated tokens. A
method for any length (DynScalar) applies to every token, generated ones included.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from workers.errors import UsageError
from workers.interventions import ForwardContext, Intervention, method_class
from workers.names import any_length_methods
from workers.sites import SiteFn, hooked, resolve_site
from workers.stored_trial import StoredTrial
from workers.tasks.roles import placeholder_spans, token_roles


def check_model(model: nn.Module, trial: StoredTrial) -> None:
    """Refuse a model of another depth or width than the trial's, naming what differs."""
    config = model.config
    have = {"layers": int(config.num_hidden_layers), "hidden size": int(config.hidden_size)}
    want = {"layers": int(trial.unit["n_layers"]), "hidden size": int(trial.unit["d_model"])}
    differs = [f"{k} {have[k]} (the trial's model {trial.unit['model']!r} has {want[k]})"
               for k in have if have[k] != want[k]]
    if differs:
        raise UsageError(f"trial {trial.trial_id} cannot be applied to this model: {'; '.join(differs)}")


def prompt_roles(trial: StoredTrial, tokenizer, prompt: str) -> list[str]:
    """The roles of a prompt's tokens: stored ones for a prompt of the task; otherwise by the first of
    the unit's templates that the prompt fills (else the prompt's own words)."""
    if prompt in trial.examples:
        return list(trial.examples[prompt]["roles"])
    offsets = [tuple(o) for o in tokenizer(prompt, return_offsets_mapping=True)["offset_mapping"]]
    template = next((t for t in trial.templates if placeholder_spans(t, prompt)), prompt)
    return token_roles(prompt, template, offsets)


def check_roles(trial: StoredTrial, roles: list[str]) -> None:
    """A position-tied trial applies only where every position holds a role it was trained on."""
    if not trial.fixed_length:
        return
    trained = trial.position_roles
    wrong = [f"{pos}: {have!r} (trained: {want!r})" for pos, (have, want) in enumerate(zip(roles, trained))
             if not want.endswith("|...") and have not in want.split("|")]
    if len(roles) != len(trained) or wrong:
        what = (f"the prompt has {len(roles)} tokens, the trial {len(trained)}" if len(roles) != len(trained)
                else f"positions differ: {'; '.join(wrong[:4])}")
        raise UsageError(f"trial {trial.trial_id} ({trial.method}) is tied to positions and was trained on prompts "
                         f"with roles {trained}; {what}. Use a prompt of the trained template, or a trial of a method "
                         f"for any length ({', '.join(any_length_methods())}), which applies to any prompt")


def _position_tied_fn(intervention: Intervention, n: int, trial_id: str) -> SiteFn:
    """Change the n positions of a prompt pass; leave generated tokens alone: one token at a time
    after a cached prompt pass, or the tokens past n when generation re-runs the whole sequence.
    (A new prompt longer than n after a first one cannot be told from the latter: one prompt
    per block.)"""
    seen = {"prompt": False}

    def fn(index: int, h: torch.Tensor) -> torch.Tensor | None:  # h: [B, T, W]
        t = h.shape[1]
        if t == n or (t > n and seen["prompt"]):
            seen["prompt"] = True
            prompt = h[:, :n].contiguous()
            changed = intervention.transform(index, prompt, ForwardContext.every_token(prompt))
            return changed if t == n else torch.cat([changed, h[:, n:]], dim=1)
        if seen["prompt"] and t == 1:
            return None  # a generated token after a cached prompt pass
        raise UsageError(f"trial {trial_id} is tied to {n} positions; a forward of {t} tokens is not its prompt. "
                         "Pass a prompt of the trained template, or use a trial of a method for any length")
    return fn


def _any_length_fn(intervention: Intervention) -> SiteFn:
    def fn(index: int, h: torch.Tensor) -> torch.Tensor:
        return intervention.transform(index, h, ForwardContext.every_token(h))  # every token real, nothing kept
    return fn


@contextmanager
def apply_trial(model: nn.Module, trial: StoredTrial, beta: float = 1.0,
                roles: list[str] | None = None) -> Iterator[StoredTrial]:
    """Apply a stored trial to `model` at strength `beta` inside the block; the hooks are always
    removed. `roles`: the prompt's token roles, checked against a position-tied trial's
    (`prompt_roles` gives them). orchestrator.steering.steer loads the trial from a run."""
    check_model(model, trial)
    if roles is not None:
        check_roles(trial, roles)
    refs = resolve_site(model, str(trial.unit["site"]), [int(x) for x in trial.unit["layers"]])
    device = next(model.parameters()).device
    intervention = method_class(trial.method).from_artifact(refs, trial.tensors, beta).to(device)
    intervention.requires_grad_(False)
    n = intervention.n_positions
    if trial.fixed_length and n is None:
        raise UsageError(f"method {trial.method!r} is tied to positions but its class does not say how many "
                         "(define the n_positions property)")
    fn = _position_tied_fn(intervention, n, trial.trial_id) if n is not None else _any_length_fn(intervention)
    with hooked(refs, fn):
        yield trial
