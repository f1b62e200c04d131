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
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from workers.columns import CellColumn, RoleVocabulary, position_columns, role_columns
from workers.errors import UsageError
from workers.forward import logits_and_states, pad_batch
from workers.interventions import any_length_methods, method_class
from workers.models import LoadedModel
from workers.objective import logit_diff
from workers.precision import evaluation_model, resolve_precision, training_model
from workers.sites import check_site, resolve_layers
from workers.splits import assign_folds, assign_splits, drop_duplicates
from workers.tasks.base import Example, load_examples, task_hash
from workers.tasks.roles import TokenizedExample, tokenize_examples
from workers.unit import TrainSettings, UnitSpec

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
    roles: torch.Tensor | None = None  # [N, T] each token's index in the unit's role vocabulary (`needs_roles`)

    def head(self, n: int) -> SplitData:
        """The first n prompts (the early-stopping checks' val slice)."""
        own = self.own_logits[:n] if self.own_logits is not None else None
        prefix = self.prefix[:n] if self.prefix is not None else None
        roles = self.roles[:n] if self.roles is not None else None
        return SplitData(self.examples[:n], self.ids[:n], self.lengths[:n], self.a_ids[:n], self.b_ids[:n],
                         self.logits[:n], prefix, own, roles)

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
    splits: dict[str, SplitData]  # train, val, test: the single split's, or (folds) those of fold `fold`
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
    # Cross-fitted folds (settings.folds >= 2): `pool` holds every prompt of some fold once with its fp32 logits and
    # prefix cache (computed once), `trained_pool` the training model's own logits and prefix where it differs
    # (bf16); `folds` are each fold's splits as indices into the pool, `fold` the fold `splits` hold. With one
    # split `folds` is empty and the pools are None.
    folds: list[dict[str, list[int]]] = field(default_factory=list)
    fold: int | None = None
    pool: SplitData | None = None
    trained_pool: SplitData | None = None
    # a method with one parameter per role (`needs_roles`): the roles it has, fixed for the unit (workers/columns.py),
    # so that a role has one index in every split; each SplitData's `roles` holds its tokens' indices
    roles: RoleVocabulary | None = None

    @property
    def n_folds(self) -> int:
        return self.spec.settings.folds

    def for_fold(self, fold: int | None) -> PreparedUnit:
        """The unit as fold `fold` sees it: its splits and check slice, indexed out of the pool on each call (a
        worker keeps one pool per unit, not a copy per fold). None: the search's fold (0), or the single split."""
        wanted = 0 if fold is None else fold
        if self.pool is None:
            if wanted != 0:
                raise UsageError(f"unit {self.spec.describe()}: fold {fold} asked, but the unit has one split "
                                 "(train.folds: 1)")
            return self
        if not 0 <= wanted < len(self.folds):
            raise UsageError(f"unit {self.spec.describe()}: fold {fold} asked; it has folds 0..{len(self.folds) - 1}")
        if wanted == self.fold:
            return self
        splits, check = _fold_splits(self.pool, self.trained_pool, self.folds[wanted], self.spec.settings)
        return replace(self, splits=splits, check=check, fold=wanted)

    def row_index(self, split: str) -> list[int]:
        """Each prompt of a split by its index as the examples and predictions tables store it: its place in the
        split (one split), or in the unit's pool (folds)."""
        if self.pool is None or self.fold is None:
            return list(range(len(self.splits[split])))
        return list(self.folds[self.fold][split])

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
        if self.roles is not None:  # the vocabulary's roles on every split; a role outside it: column len(roles)
            assert data.roles is not None, "a unit with a role vocabulary gives every split its tokens' roles"
            return self.roles.columns(data.examples), data.roles
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


def give_own_logits(data: SplitData, trains_on: LoadedModel, chunk: int, cache_layer: int | None) -> None:
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
    tokens = SplitData(tokenized, all_ids, all_lengths, a_ids, b_ids, logits, states)  # every prompt tokenized
    vocabulary = None
    if method.needs_roles:  # fixed once, from every prompt tokenized (not the model's filter, which a machine's
        # numerics could tip for a borderline prompt), so that a role has one index in every split and every rebuild
        vocabulary = RoleVocabulary.of(tokenized)
        tokens.roles = vocabulary.ids(tokenized, all_ids.shape[1])  # [N, T]
    precision = resolve_precision(settings.precision, loaded)
    trains_on = training_model(loaded, precision)

    def as_trained(data: SplitData) -> None:  # the objective's reference logits and prefix from the model that trains
        if trains_on is not evaluates_on:
            give_own_logits(data, trains_on, settings.eval_batch, cache_layer)
    unit_hash = task_hash(spec.task, settings.seed)  # as the coordinator hashes it: no tokenizer
    unit = PreparedUnit(spec, layers, n_positions, {}, counts, unit_hash, precision, base_accuracy, mean_ld, None, hints,
                        roles=vocabulary)
    if settings.folds == 1:
        _single_split(unit, tokens, indices, as_trained)
    else:
        _cross_fitted(unit, tokens, indices, as_trained, trains_on is not evaluates_on)
    return unit


def _rows(source: SplitData, rows: list[int], trained: SplitData | None = None) -> SplitData:
    """The prompts `rows` of `source` (padded to their own longest); with `trained`, the training model's own
    logits and prefix from it (the train split and the check slice under bf16)."""
    idx = torch.tensor(rows, dtype=torch.long)
    width = int(source.lengths[idx].max())
    states = (trained if trained is not None else source).prefix
    return SplitData([source.examples[i] for i in rows], source.ids[idx][:, :width], source.lengths[idx],
                     source.a_ids[idx], source.b_ids[idx], source.logits[idx],
                     states[idx][:, :width] if states is not None else None,
                     trained.own_logits[idx] if trained is not None else None,
                     source.roles[idx][:, :width] if source.roles is not None else None)


def _require(unit: PreparedUnit, parts: dict[str, list[int]], fold: int | None) -> None:
    """Every split of a fold holds prompts, else a usage error with the counts and what would keep more."""
    for name, idx in parts.items():
        if not idx:
            where, folds = (f" in fold {fold} of {unit.n_folds}", " fewer train.folds,") if fold is not None else ("", "")
            raise UsageError(f"unit {unit.spec.describe()}: no {name} examples left after filtering{where} "
                             f"({unit.counts}); dropped: {drop_reasons(unit.counts, unit.drop_hints)} Use more examples "
                             f"(task option n), filter: none,{folds} or another model")


def _wants_check(settings: TrainSettings) -> bool:
    return settings.patience > 0 or settings.prune or settings.converge is not None


def _single_split(unit: PreparedUnit, tokens: SplitData, indices: list[int],
                  as_trained: Callable[[SplitData], None]) -> None:
    """The one train/val/test split (train.folds: 1), as the unit's splits."""
    settings = unit.spec.settings
    parts, unit.counts["dropped_entity_across_splits"] = assign_splits([e.example for e in tokens.examples], indices,
                                                                       settings.split, settings.seed)
    for name, idx in parts.items():
        unit.counts[f"kept_{name}"] = len(idx)
    _require(unit, parts, None)
    unit.splits = {name: _rows(tokens, idx) for name, idx in parts.items()}
    if _wants_check(settings):
        unit.check = unit.splits["val"].head(min(settings.check_prompts, len(unit.splits["val"])))
    for data in (unit.splits["train"], unit.check):
        if data is not None:
            as_trained(data)


def _cross_fitted(unit: PreparedUnit, tokens: SplitData, indices: list[int], as_trained: Callable[[SplitData], None],
                  differs: bool) -> None:
    """K folds (workers/splits.py assign_folds) over one pool of the prompts some fold uses; the unit's splits
    are fold 0's, where the search runs. Counts per fold: fold{f}_train, _val, _test, _dropped."""
    settings, counts = unit.spec.settings, unit.counts
    folds = assign_folds([e.example for e in tokens.examples], indices, settings.folds, settings.split, settings.seed)
    used = sorted({i for fold in folds for idx in fold.parts.values() for i in idx})
    at = {i: n for n, i in enumerate(used)}
    unit.folds = [{name: [at[i] for i in idx] for name, idx in fold.parts.items()} for fold in folds]
    counts["dropped_entity_across_splits"] = folds[0].dropped  # the search's fold; the others below
    counts.update({f"kept_{name}": len(idx) for name, idx in unit.folds[0].items()})
    for f, fold in enumerate(folds):
        counts.update({f"fold{f}_{name}": len(idx) for name, idx in fold.parts.items()})
        counts[f"fold{f}_dropped"] = fold.dropped
    counts["pooled_test"] = sum(len(parts["test"]) for parts in unit.folds)
    counts["in_no_fold"] = len(indices) - len(used)
    unit.drop_hints["entity_across_splits"] = (
        f"prompts whose entities landed in different splits of fold 0 (the search's fold; per fold: "
        f"{', '.join(str(fold.dropped) for fold in folds)}); each is dropped only in the folds it straddles, "
        f"{counts['in_no_fold']} in every fold; to keep more: fewer entities per prompt, or more prompts (option n)")
    for f, parts in enumerate(unit.folds):
        _require(unit, parts, f)
    unit.pool = _rows(tokens, used)
    if differs:
        pool = unit.pool
        unit.trained_pool = SplitData(pool.examples, pool.ids, pool.lengths, pool.a_ids, pool.b_ids, pool.logits,
                                      roles=pool.roles)
        as_trained(unit.trained_pool)
    unit.fold = 0
    unit.splits, unit.check = _fold_splits(unit.pool, unit.trained_pool, unit.folds[0], settings)


def _fold_splits(pool: SplitData, trained: SplitData | None, parts: dict[str, list[int]],
                 settings: TrainSettings) -> tuple[dict[str, SplitData], SplitData | None]:
    """A fold's splits and check slice (its val's first prompts), indexed out of the pool; the train split and the
    check slice as the training model sees them."""
    splits = {name: _rows(pool, idx, trained if name == "train" else None) for name, idx in parts.items()}
    check = None
    if _wants_check(settings):
        check = _rows(pool, parts["val"][: settings.check_prompts], trained)
    return splits, check


def check_slice(loaded: LoadedModel, unit: PreparedUnit) -> SplitData:
    """The val check slice as the training model sees it: the unit's own (built by prepare_unit when
    patience or pruning is on), else built now, the same way (ASHA's rungs, which the sweep's search
    asks for, not the unit's settings)."""
    if unit.check is not None:
        return unit.check
    settings = unit.spec.settings
    if unit.pool is not None and unit.fold is not None:
        return _rows(unit.pool, unit.folds[unit.fold]["val"][: settings.check_prompts], unit.trained_pool)
    data = unit.splits["val"].head(min(settings.check_prompts, len(unit.splits["val"])))
    trains_on = training_model(loaded, unit.precision)
    if trains_on is not evaluation_model(loaded):
        give_own_logits(data, trains_on, settings.eval_batch, unit.first_layer or None)
    return data
