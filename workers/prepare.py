"""Turn a unit's task into tokenized, filtered, split tensors with unintervened logits.

Filters, in order, each with its dropped count: repeated prompts; answers that are not single
tokens; prompts of another token length (methods with per-position parameters); prompts
where the unintervened model does not rank answer a above b (`filter: model_prefers_a`);
prompts whose entities landed in different splits (workers/splits.py).

A unit whose splits end up smaller than `min_split` prompts, or whose model prefers answer a
barely more often than chance, carries warnings (`PreparedUnit.warnings`, stored in the units
table and printed): rates over a handful of prompts are noise. So does a unit that drops more
than DROP_WARN_SHARE of its task's prompts, with the count per reason and what would keep them
(`PreparedUnit.drop_hints`): a user's task should never lose a template without a word.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from workers.columns import CellColumn, position_columns, role_columns
from workers.errors import UsageError
from workers.forward import logits_and_states, pad_batch
from workers.interventions import any_length_methods, method_class
from workers.models import LoadedModel
from workers.objective import logit_diff
from workers.precision import evaluation_model, resolve_precision, training_model
from workers.sites import check_site, resolve_layers
from workers.splits import assign_splits, drop_duplicates
from workers.tasks.base import Example, load_examples, task_hash
from workers.tasks.roles import TokenizedExample, tokenize_examples
from workers.unit import UnitSpec

SPLITS = ("train", "val", "test")
NEAR_CHANCE = 0.6  # a base accuracy below this (chance: 0.5) is warned about
DROP_WARN_SHARE = 0.1  # a unit dropping more than this share of its task's prompts warns, per reason
SHOWN = 6  # at most this many answers or templates are named in a warning


@dataclass
class SplitData:
    examples: list[TokenizedExample]
    ids: torch.Tensor  # [N, T] right-padded
    lengths: torch.Tensor  # [N]
    a_ids: torch.Tensor  # [N] token id of answer a
    b_ids: torch.Tensor  # [N] token id of answer b
    logits: torch.Tensor  # [N, V] unintervened, last position
    prefix: torch.Tensor | None = None  # [N, T, d] states entering the first intervened layer (prefix cache)
    own_logits: torch.Tensor | None = None  # [N, V] the training model's own, where it differs (bf16): train, check

    def head(self, n: int) -> SplitData:
        """The first n prompts (the early-stopping checks' val slice)."""
        own = self.own_logits[:n] if self.own_logits is not None else None
        prefix = self.prefix[:n] if self.prefix is not None else None
        return SplitData(self.examples[:n], self.ids[:n], self.lengths[:n], self.a_ids[:n], self.b_ids[:n],
                         self.logits[:n], prefix, own)

    @property
    def has_counterfactual(self) -> torch.Tensor:
        """[N] bool: the prompts whose counterfactual (same template, answer b) has their token length."""
        return torch.tensor([e.counterfactual_ids is not None for e in self.examples], dtype=torch.bool)

    def counterfactual_ids(self, pad_id: int) -> torch.Tensor:
        """[N, T] the counterfactual prompts' ids, padded like `ids`; a prompt without one keeps its own ids
        (select with `has_counterfactual`)."""
        rows = [e.counterfactual_ids if e.counterfactual_ids is not None else e.input_ids for e in self.examples]
        ids, _ = pad_batch(rows, pad_id)
        return ids[:, : self.ids.shape[1]]

    @property
    def reference_logits(self) -> torch.Tensor:
        """[N, V] what training compares against: the training model's unintervened logits."""
        return self.own_logits if self.own_logits is not None else self.logits

    @property
    def ld(self) -> torch.Tensor:
        return logit_diff(self.logits, self.a_ids, self.b_ids)

    def __len__(self) -> int:
        return len(self.examples)


@dataclass
class PreparedUnit:
    spec: UnitSpec
    layers: list[int]
    n_positions: int | None  # the one token length (fixed-length methods), else None
    splits: dict[str, SplitData]
    counts: dict[str, int] = field(default_factory=dict)
    task_hash: str = ""
    precision: str = "fp32"  # the training forwards' precision, resolved on this worker
    base_accuracy: float = 0.0  # share of prompts the model ranks a above b, before that filter
    mean_ld: float = 0.0
    # the early-stopping checks' val slice as the training model sees it (its own logits and prefix where it
    # differs from the fp32 model); None: no checks
    check: SplitData | None = None
    # per drop reason (the counts' key without "dropped_"): what was dropped and what would keep it
    drop_hints: dict[str, str] = field(default_factory=dict)

    @property
    def first_layer(self) -> int:
        """Layers before this one never change, so their output is cached (0: no cache)."""
        return self.layers[0] if self.splits["train"].prefix is not None else 0

    def cell_columns(self, split: str = "val") -> tuple[list[CellColumn], torch.Tensor]:
        """The columns of the cells on a split (positions for fixed-length methods, roles otherwise)
        and each token's column index, [N, T] like the split's ids (workers/columns.py)."""
        data = self.splits[split]
        if self.n_positions is not None:
            ids = torch.arange(data.ids.shape[1]).expand(len(data), -1)  # [N, T]
            return position_columns(data.examples, self.n_positions), ids
        return role_columns(data.examples, data.ids.shape[1])

    @property
    def warnings(self) -> list[str]:
        """Why this unit's rates may mean little: small splits, a base accuracy near chance."""
        minimum = self.spec.settings.min_split
        small = [f"{name} {len(data)}" for name, data in self.splits.items() if len(data) < minimum]
        out = []
        if small:
            out.append(f"split(s) smaller than min_split={minimum} prompts: {', '.join(small)} (of "
                       f"{self.counts.get('total', '?')} prompts; {self._dropped()}); rates on a small val or test split "
                       "are marked and get no interval; use a larger task (task option n, or more lines in the JSONL "
                       "file)")
        dropped = self._drop_warning()
        if dropped:
            out.append(dropped)
        if self.spec.settings.l1 == "proximal" and not method_class(self.spec.method).has_shrink():
            out.append(f"train.l1 is proximal, but method {self.spec.method!r} has no proximal step (its L1 term is "
                       "a function of the activation): its trials keep the L1 subgradient")
        if self.base_accuracy < NEAR_CHANCE:
            out.append(f"the model ranks answer a above b on {self.base_accuracy:.0%} of {self.counts.get('total', '?')} "
                       f"prompts, near chance (50%; warned below {NEAR_CHANCE:.0%}): it barely does this task, so what "
                       f"moves its answer says little about how it does it; check the task or use a larger model")
        return out

    def _drop_warning(self) -> str | None:
        """The counts per drop reason with what would keep those prompts, when more than DROP_WARN_SHARE dropped."""
        total = self.counts.get("total", 0)
        n_dropped = sum(v for k, v in self.counts.items() if k.startswith("dropped_"))
        if not total or n_dropped <= DROP_WARN_SHARE * total:
            return None
        kept = ", ".join(f"{name} {len(data)}" for name, data in self.splits.items())
        return (f"dropped {n_dropped} of {total} prompts ({n_dropped / total:.0%}; warned above {DROP_WARN_SHARE:.0%}), "
                f"kept {kept}: {drop_reasons(self.counts, self.drop_hints)}")

    def _dropped(self) -> str:
        drops = {k.removeprefix("dropped_"): v for k, v in self.counts.items() if k.startswith("dropped_") and v}
        return "dropped: " + (", ".join(f"{v} {k.replace('_', ' ')}" for k, v in drops.items()) or "none")


def drop_reasons(counts: dict[str, int], hints: dict[str, str]) -> str:
    """Each drop reason with its count and, where known, what was dropped and what would keep it."""
    drops = {k.removeprefix("dropped_"): v for k, v in counts.items() if k.startswith("dropped_") and v}
    return " ".join(f"({n}) {v} {k.replace('_', ' ')}" + (f": {hints[k]}." if k in hints else ".")
                    for n, (k, v) in enumerate(drops.items(), start=1)) or "none."


def _listed(items: list[str]) -> str:
    return ", ".join(items[:SHOWN]) + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def _short(text: str, width: int = 72) -> str:
    return repr(text if len(text) <= width else text[: width - 1] + "…")


def _answer_hint(multi: list[Example], tokenizer, model: str) -> str:
    """Which answers are not one token for this tokenizer (or are the same token as the other answer)."""
    found: dict[str, str] = {}
    for e in multi:
        a, b = (tokenizer(x, add_special_tokens=False)["input_ids"] for x in (e.answer_a, e.answer_b))
        for text, ids in ((e.answer_a, a), (e.answer_b, b)):
            if len(ids) != 1:
                found.setdefault(repr(text), f"{len(ids)} tokens")
        if a == b and len(a) == 1:
            found.setdefault(f"{e.answer_a!r} and {e.answer_b!r}", "the same token")
    return (f"{_listed([f'{k} ({v})' for k, v in found.items()])}; use answers that are one token for {model!r}'s "
            "tokenizer (often with a leading space)")


def _length_hint(tokenized: list[TokenizedExample], n_positions: int, method: str) -> str:
    """The token lengths per template, and the three ways to keep prompts of another length."""
    by_template: dict[str, Counter[int]] = {}
    for e in tokenized:
        by_template.setdefault(e.example.template, Counter())[e.length] += 1
    lengths = [f"{_short(t)}: " + ", ".join(f"{n} tokens ({c})" for n, c in sorted(counts.items()))
               for t, counts in by_template.items()]
    return (f"{method!r} has one parameter per position, so a unit keeps one token length, the most common: "
            f"{n_positions}; lengths by template: {_listed(lengths)}; to keep them: prompts of one length per unit "
            f"(reword the other templates), a method for any length ({', '.join(any_length_methods())}), or the file "
            "split by template into one task per length")


def _split_data(loaded: LoadedModel, examples: list[TokenizedExample], logits: torch.Tensor) -> SplitData:
    ids, lengths = pad_batch([e.input_ids for e in examples], loaded.tokenizer.pad_token_id)
    return SplitData(examples, ids, lengths, torch.tensor([e.answer_a_id for e in examples]),
                     torch.tensor([e.answer_b_id for e in examples]), logits)


def _as_trained(data: SplitData, trains_on: LoadedModel, chunk: int, cache_layer: int | None) -> None:
    """Give `data` the training model's own unintervened logits and prefix (it differs from the
    fp32 model: bf16), so that an untrained intervention is exact against them."""
    data.own_logits, states = logits_and_states(trains_on, data.ids, data.lengths, chunk, cache_layer)
    data.prefix = states[:, : data.ids.shape[1]] if states is not None else None


def prepare_unit(loaded: LoadedModel, spec: UnitSpec) -> PreparedUnit:
    check_site(spec.site)
    method = method_class(spec.method)
    layers = resolve_layers(loaded.model, list(spec.layers) if not isinstance(spec.layers, str) else spec.layers)
    settings = spec.settings
    raw = load_examples(spec.task, settings.seed, loaded.tokenizer)  # entities single tokens for this tokenizer
    counts: dict[str, int] = {"total": len(raw)}
    distinct, counts["dropped_duplicate_prompt"] = drop_duplicates(raw)
    tokenized, multi = tokenize_examples([raw[i] for i in distinct], loaded.tokenizer)
    counts["dropped_not_single_token_answer"] = len(multi)
    hints = {"duplicate_prompt": "a prompt repeated in the task is kept once, so that no prompt is in two splits; "
                                 "remove the repeats",
             "entity_across_splits": "prompts whose entities landed in different splits (no entity is in two "
                                     "splits); to keep them: fewer entities per prompt (a JSONL task's field "
                                     "'entities'; a built-in task's are fixed: ask for more prompts, option n)"}
    if multi:
        hints["not_single_token_answer"] = _answer_hint(multi, loaded.tokenizer, spec.model)
    if not tokenized:
        example = multi[0]
        raise UsageError(f"task {spec.task.name!r}: no example has single-token answers for model {spec.model!r} "
                         f"(e.g. {example.answer_a!r} / {example.answer_b!r}); answers must be one token each")
    config = loaded.model.config
    max_len = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    too_long = [e for e in tokenized if max_len and e.length > max_len]
    if too_long:
        raise UsageError(f"task {spec.task.name!r}: a prompt has {too_long[0].length} tokens, more than model "
                         f"{spec.model!r} accepts ({max_len}); shorten the prompts")
    n_positions = None
    if method.fixed_length:
        by_length = Counter(e.length for e in tokenized if not e.example.heldout)
        by_length = by_length or Counter(e.length for e in tokenized)
        n_positions, n_modal = by_length.most_common(1)[0]
        if n_modal * 2 <= sum(by_length.values()):
            raise UsageError(
                f"method {spec.method!r} needs prompts of one token length (one parameter per position), but "
                f"task {spec.task.name!r} has prompts of lengths {dict(sorted(by_length.items()))} (length: count) "
                f"for model {spec.model!r}; use a method for any length ({', '.join(any_length_methods())}), or a "
                f"task/template set of one length")
        kept = [e for e in tokenized if e.length == n_positions]
        counts["dropped_other_length"] = len(tokenized) - len(kept)
        hints["other_length"] = _length_hint(tokenized, n_positions, spec.method)
        tokenized = kept
    all_ids, all_lengths = pad_batch([e.input_ids for e in tokenized], loaded.tokenizer.pad_token_id)
    cache_layer = layers[0] if settings.prefix_cache and layers[0] > 0 else None
    # one pass gives the unintervened logits and the prefix cache (states entering the first layer), in fp32
    evaluates_on = evaluation_model(loaded)
    logits, states = logits_and_states(evaluates_on, all_ids, all_lengths, settings.eval_batch, cache_layer)
    a_ids = torch.tensor([e.answer_a_id for e in tokenized])  # [N]
    b_ids = torch.tensor([e.answer_b_id for e in tokenized])  # [N]
    ld = logit_diff(logits, a_ids, b_ids)
    base_accuracy = float((ld > 0).float().mean())
    mean_ld = float(ld.mean())
    if settings.filter == "model_prefers_a":
        keep = (ld > 0).tolist()
    elif settings.filter == "none":
        keep = [True] * len(tokenized)
    else:
        raise UsageError(f"filter={settings.filter!r}; accepted: 'model_prefers_a' or 'none'")
    counts["dropped_model_prefers_b"] = keep.count(False)
    hints["model_prefers_b"] = (f"the model ranks answer b above a on these before any training (base accuracy "
                                f"{base_accuracy:.0%}); to keep them: train: {{filter: none}} in the sweep "
                                "(actscale train --filter none), or a task the model does")
    indices = [i for i, k in enumerate(keep) if k]
    parts, counts["dropped_entity_across_splits"] = assign_splits([e.example for e in tokenized], indices,
                                                                  settings.split, settings.seed)
    for name, idx in parts.items():
        counts[f"kept_{name}"] = len(idx)
        if not idx:
            raise UsageError(f"unit {spec.describe()}: no {name} examples left after filtering ({counts}); "
                             f"dropped: {drop_reasons(counts, hints)} Use more examples (task option n), "
                             "filter: none, or another model")
    splits = {name: _split_data(loaded, [tokenized[i] for i in idx], logits[idx]) for name, idx in parts.items()}
    if states is not None:
        for name, data in splits.items():
            data.prefix = states[parts[name]][:, : data.ids.shape[1]]
    precision = resolve_precision(settings.precision, loaded)
    trains_on = training_model(loaded, precision)
    check = None
    if settings.patience > 0 or settings.prune or settings.converge is not None:
        check = splits["val"].head(min(settings.check_prompts, len(splits["val"])))
    if trains_on is not evaluates_on:  # the objective's reference logits and the prefix from the model that trains
        for data in (splits["train"], check):
            if data is not None:
                _as_trained(data, trains_on, settings.eval_batch, cache_layer)
    unit_hash = task_hash(spec.task, settings.seed)  # as the coordinator hashes it: no tokenizer
    return PreparedUnit(spec, layers, n_positions, splits, counts, unit_hash, precision, base_accuracy,
                        mean_ld, check, hints)
