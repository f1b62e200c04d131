"""Apply a stored trial to a loaded model at strength beta (`apply_trial`; from a run directory:
orchestrator.steering.steer and `actscale steer`).

The trial is rebuilt from RUN_DIR/artifacts/<trial id>.safetensors by its method's
`from_artifact` (alpha' = 1 + beta(alpha - 1); v' = beta v; DynScalar's w and b times beta),
on any model of the trial's architecture and size, loaded by the user or by name.

A position-tied method (ActivScalar, SteerVec: one parameter per position) applies only to
a prompt of the trained length whose tokens hold the trained roles, position by position
(`check_roles`); its hooks change the prompt's positions only, never generated tokens. A
method for any length (DynScalar) applies to every token, generated ones included. A method by role
(ActivScalar_role) applies to the prompt's tokens by their roles (`prompt_roles`) in the trial's role
vocabulary (stored with its tensors), never to generated tokens.

`next_token_effect` shows what a trial does to one prompt, any prompt: the top next tokens
without and with it, with their probabilities, and two answers' probabilities and logit
difference (`actscale steer` prints it).
"""
from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

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


def _role_fn(intervention: Intervention, roles: list[str]) -> SiteFn:
    """Scale the prompt's tokens by their roles (a method with needs_roles): its index in the trial's role vocabulary
    for each of the prompt's tokens; a role outside it, and every generated token, is left alone."""
    vocabulary = intervention.roles
    other = len(vocabulary)
    prompt = torch.tensor([vocabulary.index(r) if r in vocabulary else other for r in roles])  # [n]

    def fn(index: int, h: torch.Tensor) -> torch.Tensor:  # h: [B, T, W]
        t = h.shape[1]
        ids = torch.full((t,), other, dtype=torch.long)  # a pass of generated tokens only: none of the prompt's
        if t >= len(prompt):  # the prompt's pass (with any tokens generated after it when generation re-runs it)
            ids[: len(prompt)] = prompt
        ctx = ForwardContext(torch.ones(h.shape[:2], dtype=torch.long, device=h.device),
                             token_roles=ids.expand(h.shape[0], t).to(h.device))
        return intervention.transform(index, h, ctx)
    return fn


@contextmanager
def apply_trial(model: nn.Module, trial: StoredTrial, beta: float = 1.0,
                roles: list[str] | None = None) -> Iterator[StoredTrial]:
    """Apply a stored trial to `model` at strength `beta` inside the block; the hooks are always
    removed. `roles`: the prompt's token roles, checked against a position-tied trial's
    (`prompt_roles` gives them). orchestrator.steering.steer loads the trial from a run."""
    check_model(model, trial)
    by_role = method_class(trial.method).needs_roles
    if by_role and roles is None:
        raise UsageError(f"trial {trial.trial_id} ({trial.method}) scales each token by its role: apply it with the "
                         "prompt's token roles (`prompt_roles`; `next_token_effect` and `actscale steer` find them)")
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
    if by_role:
        assert roles is not None
        fn = _role_fn(intervention, roles)
    elif n is not None:
        fn = _position_tied_fn(intervention, n, trial.trial_id)
    else:
        fn = _any_length_fn(intervention)
    _STEERED[model] = _STEERED.get(model, 0) + 1
    try:
        with hooked(refs, fn):
            yield trial
    finally:
        _STEERED[model] -= 1


# models inside an `apply_trial` block (how many blocks deep): next_token_effect applies the trial itself
_STEERED: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()


@dataclass
class NextTokenEffect:
    """What a trial does to one prompt's next token: without it (the model itself) and with it at
    strength beta. Probabilities are the softmax of the last position's logits; LD = z_A - z_B."""

    trial: str  # the trial, described
    prompt: str
    beta: float
    top_without: list[tuple[str, float]]  # the most probable next tokens (decoded) and their probabilities
    top_with: list[tuple[str, float]]
    answers: tuple[str, str] | None = None  # (A, B): given, or the task's own answers for a prompt of the task
    p_without: tuple[float, float] | None = None  # (p(A), p(B))
    p_with: tuple[float, float] | None = None
    ld_without: float | None = None  # z_A - z_B
    ld_with: float | None = None
    continuation_without: str | None = None  # greedy continuations (max_new_tokens > 0)
    continuation_with: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        """A row per measure, a column without and one with the trial: what `actscale steer` prints."""
        rows = [("", "without", f"with (beta {self.beta:g})")]
        if self.continuation_without is not None:
            rows.append(("continues", repr(self.continuation_without), repr(self.continuation_with)))
        if self.answers is not None and self.p_without and self.p_with:
            rows += [(f"p({answer!r})", _p(self.p_without[n]), _p(self.p_with[n])) for n, answer in enumerate(self.answers)]
            rows.append(("LD = z_A - z_B", f"{self.ld_without:+.3f}", f"{self.ld_with:+.3f}"))
        rows += [(f"top {n}", f"{without!r} {_p(p)}", f"{with_!r} {_p(q)}")
                 for n, ((without, p), (with_, q)) in enumerate(zip(self.top_without, self.top_with), start=1)]
        widths = [max(len(row[i]) for row in rows) for i in range(2)]
        return [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}".rstrip() for a, b, c in rows]

    def __str__(self) -> str:
        return "\n".join([f"trial   {self.trial}, beta {self.beta:g}", f"prompt  {self.prompt!r}", *self.lines()])


def _p(q: float) -> str:
    """A probability to 3 decimals, or 2 significant digits below 0.001 (not a bare 0.000)."""
    return f"{q:.3f}" if q >= 0.001 else f"{q:.1e}"


def answer_ids(tokenizer, answers: Sequence[str]) -> tuple[int, int]:
    """The token ids of two answers, each one token for this tokenizer (else a clear refusal)."""
    if len(answers) != 2 or not all(isinstance(a, str) and a for a in answers):
        raise UsageError(f"answers={answers!r}: give two answers, A and B, each a non-empty string")
    ids = []
    for answer in answers:
        tokens = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if len(tokens) != 1:
            pieces = [tokenizer.decode([t]) for t in tokens]
            raise UsageError(f"answer {answer!r} is {len(tokens)} tokens for this tokenizer ({pieces}); give answers "
                             "that are one token each (often with a leading space, e.g. ' Paris')")
        ids.append(tokens[0])
    return ids[0], ids[1]


def _next_logits(model: nn.Module, tokenizer, ids: torch.Tensor, max_new_tokens: int) -> tuple[torch.Tensor, str | None]:
    """The last position's logits ([V], fp32) and, with max_new_tokens, the greedy continuation: one
    generate call, whose first step's logits are the prompt's (no extra forward)."""
    device = next(model.parameters()).device
    ids = ids.to(device)  # [1, T]
    with torch.no_grad():
        if max_new_tokens <= 0:
            return model(ids).logits[0, -1].float().cpu(), None
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=pad, return_dict_in_generate=True, output_logits=True)
    text = tokenizer.decode(out.sequences[0, ids.shape[1]:], skip_special_tokens=True)
    return out.logits[0][0].float().cpu(), text


def next_token_effect(model: nn.Module, tokenizer, prompt: str, trial: StoredTrial, beta: float = 1.0, *,
                      answers: Sequence[str] | None = None, top: int = 5, max_new_tokens: int = 0) -> NextTokenEffect:
    """The top `top` next tokens of `prompt` without and with `trial` at strength `beta`, with their
    probabilities; for two answers (given, or the task's own for a prompt of the task) p(A), p(B) and
    LD = z_A - z_B on each side; with `max_new_tokens`, the greedy continuations too. It applies the
    trial itself: call it outside a `steer`/`apply_trial` block. One forward (or generate) per side."""
    if _STEERED.get(model, 0):
        raise UsageError("next_token_effect applies the trial itself and needs the model unsteered: call it outside "
                         "a `with steer(...)` or `with apply_trial(...)` block")
    if top < 0:
        raise UsageError(f"top={top}: the number of most probable tokens to show must be 0 or more")
    example = trial.examples.get(prompt)
    if answers is None and example is not None:
        answers = (str(example["answer_a"]), str(example["answer_b"]))
    a_b = answer_ids(tokenizer, answers) if answers is not None else None
    roles = prompt_roles(trial, tokenizer, prompt)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]  # [1, T]
    z_without, continuation_without = _next_logits(model, tokenizer, ids, max_new_tokens)  # [V]
    with apply_trial(model, trial, beta, roles):
        z_with, continuation_with = _next_logits(model, tokenizer, ids, max_new_tokens)  # [V]
    sides = []
    for z in (z_without, z_with):
        p = z.softmax(-1)  # [V]
        best = p.topk(min(top, p.numel()))
        top_tokens = [(tokenizer.decode([i]), float(q)) for q, i in zip(best.values.tolist(), best.indices.tolist())]
        pair = (float(p[a_b[0]]), float(p[a_b[1]])) if a_b else None
        sides.append((top_tokens, pair, float(z[a_b[0]] - z[a_b[1]]) if a_b else None))
    (top_without, p_without, ld_without), (top_with, p_with, ld_with) = sides
    return NextTokenEffect(trial.describe(), prompt, beta, top_without, top_with,
                           (answers[0], answers[1]) if answers is not None else None,
                           p_without, p_with, ld_without, ld_with, continuation_without, continuation_with)
