"""SweepConfig: the validated form of a sweep YAML file.

An unknown key or a bad value fails with the key's path and what is accepted.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from search_spaces.duration import parse_duration
from storage.selection import DEFAULT_MIN_FLIP
from workers.asha import Rank
from workers.errors import UsageError
from workers.names import (
    ANALYSIS_PRECISIONS,
    DEFAULT_CONTROL_METHODS,
    MASKABLE_METHODS,
    SITES,
    STRENGTHS,
    STRUCTURED_MASKS,
    import_plugins,
    method_names,
)
from workers.tasks.builtin import IOI_DEFAULT_N as IOI_DEFAULT_N  # re-exported: reports import no workers
from workers.unit import Convergence, TrainSettings

V = TypeVar("V", bound=Iterable[str])


def _all_in(values: V, accepted: tuple[str, ...], what: str) -> V:
    """Each value must be one of `accepted` (error names the value and the accepted ones)."""
    for value in values:
        if value not in accepted:
            raise ValueError(f"unknown {what} {value!r}; accepted: {', '.join(accepted)}")
    return values


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskEntry(_Strict):
    name: str = Field(description="a built-in task (`actscale tasks`) or a path to a .jsonl file")
    options: dict[str, Any] = Field(default_factory=dict, description="task options, e.g. `{n: 60}`; each task "
                                    "names the ones it accepts (ioi: n, templates, heldout_templates; ccc: n, "
                                    "answer; city_country: n, templates)")
    sites: list[str] | None = Field(None, description="only these of the sweep's `sites` run on this task (absent: all)")
    methods: list[str] | None = Field(None, description="only these of the sweep's `methods` run on this task (absent: "
                                      "all), e.g. the methods for any length on a task with held-out templates")


class Range(_Strict):
    low: float = Field(description="lowest value")
    high: float = Field(description="highest value (above low)")
    log: bool = Field(False, description="sample on a log scale (needs low > 0)")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got {self.low})")
        return self


class IntRange(_Strict):
    low: int = Field(description="lowest value (> 0)")
    high: int = Field(description="highest value (>= low)")
    log: bool = Field(False, description="sample on a log scale")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not 0 < self.low <= self.high:
            raise ValueError(f"need 0 < low <= high (got {self.low}, {self.high})")
        return self


class Space(_Strict):
    lambda_faith: Range = Field(Range(low=0.1, high=10.0, log=True), description="weight of faithfulness F")
    lambda_min: Range = Field(Range(low=1e-3, high=0.1, log=True), description="weight of minimality M")
    lr: Range = Field(Range(low=0.01, high=0.1, log=True), description="Adam learning rate")
    steps: IntRange | None = Field(None, description="training steps per trial (absent: train.steps)")
    batch_size: list[int] | None = Field(None, description="batch sizes to choose from (absent: train.batch_size)")


class SpaceOverride(_Strict):
    lambda_faith: Range | None = Field(None, description="replaces search.space.lambda_faith for this method")
    lambda_min: Range | None = Field(None, description="replaces search.space.lambda_min for this method")
    lr: Range | None = Field(None, description="replaces search.space.lr for this method")
    steps: IntRange | None = Field(None, description="replaces search.space.steps for this method")
    batch_size: list[int] | None = Field(None, description="replaces search.space.batch_size for this method")


class Pruner(_Strict):
    """ASHA over training steps inside each unit's search (workers/asha.py: the rule)."""

    kind: Literal["asha"] = Field(description="asha: asynchronous successive halving; at rungs min_steps, "
                                  "min_steps*eta, min_steps*eta^2, ... steps a search trial goes on only if its "
                                  "val-slice score (in the order search.pruner.rank) is among the best "
                                  "1/eta of the unit's search trials at that rung so far; else it is pruned there "
                                  "(stored as pruned, counted in n_trials, never selected). Replicates are never "
                                  "pruned; the slice is train.check_prompts val prompts")
    min_steps: int = Field(gt=0, description="the first rung, in training steps (below the trials' steps)")
    eta: int = Field(3, ge=2, description="the reduction factor: about 1/eta of the trials at a rung go on to the "
                     "next, eta times as many steps on")
    min_kept: int = Field(1, ge=1, description="at least this many of a unit's search trials go on at every rung "
                          "(the best max(min_kept, n // eta) of the n there so far), so that at least min_kept "
                          "search trials complete: a front for C1 and C5 needs several (5 in paper.yaml); at most "
                          "search.n_trials")
    rank: Rank = Field(
        "front", description="how the trials at a rung are ordered (workers/asha.py): front: Pareto fronts on val-slice "
        "flip_rate capped at selection.min_flip and sites moved, each front in the selection rule's order (keeps a "
        "sparse trial whose flip dips below min_flip while L1 settles it); selection: the selection rule's order "
        "itself (above min_flip the fewest sites moved, below it the highest flip_rate)")


class Search(_Strict):
    sampler: Literal["nsga2", "tpe", "random", "grid"] = Field("nsga2", description="Optuna sampler of each unit's study")
    objective: Literal["pareto", "scalar"] = Field(
        "pareto", description="pareto: maximise val flip_rate, minimise val kl_other and val l1; scalar: maximise "
        "val flip_rate - val kl_other - sites_moved / sites_total")
    n_trials: int = Field(8, gt=0, description="search trials per unit")
    batch: int = Field(4, gt=0, description="trials of a unit trained together in one batched forward")
    seed: int = Field(0, description="the sampler's seed")
    space: Space = Field(Space(), description="the hyper-parameters searched, for every method")
    method_space: dict[str, SpaceOverride] = Field(default_factory=dict, description="per method name, ranges that "
                                                   "replace those of search.space")
    grid_points: int = Field(3, ge=2, description="points per range with sampler: grid")
    replicates: int = Field(1, ge=1, le=100, description="after a unit's search, its selected trial's "
                            "hyper-parameters are trained again replicates - 1 times with other trial seeds")
    replicate_data: Literal["none", "bootstrap", "folds"] = Field(
        "none", description="what replicates vary besides the trial seed (batch order): none (labelled 'seed'); "
        "bootstrap: each trains on a bootstrap resample of the train split; folds (needs train.folds K >= 2): "
        "replicate r trains and is tested on fold r mod K, so with replicates = K every entity is tested once by "
        "the selected configuration. The old booleans are read as true: bootstrap, false: none")
    pruner: Pruner | None = Field(None, description="prune search trials at rungs of training steps (absent: none; "
                                  "train.prune is the other, batch-local rule)")
    matched: list[tuple[str, str]] = Field(
        default_factory=list, description="pairs of methods, e.g. [[activscalar, steervec]]: once both units of a pair "
        "(same model, task and site) have finished their searches, each also replicates, like its selected trial "
        "(replicates - 1 times, the same folds), its search trial at the pair's matched val kl_other (the larger of "
        "the two units' lowest val kl_other; the trial with the highest val flip_rate within it: storage/matched.py), "
        "where that is not its selected trial: the findings page's C1 compares the pair there")

    @field_validator("replicate_data", mode="before")
    @classmethod
    def _replicate_data(cls, v: Any) -> Any:
        return {True: "bootstrap", False: "none"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("method_space")
    @classmethod
    def _methods(cls, v: Any) -> Any:
        return _all_in(v, method_names(), "method")


_TRAIN = TrainSettings()  # the defaults, written once in workers/unit.py
_CONVERGE = Convergence()


class Converge(_Strict):
    """The convergence pilot (workers/convergence.py)."""

    window: int = Field(_CONVERGE.window, gt=0, description="steps over which the val objective's relative change "
                        "is measured (a multiple of every)")
    tol: float = Field(_CONVERGE.tol, gt=0, lt=1, description="converged when the val objective changed by less than "
                       "this share over the last window steps")
    every: int = Field(_CONVERGE.every, gt=0, description="steps between the pilot's checks on the val slice")
    max_steps: int = Field(_CONVERGE.max_steps, gt=0, description="the pilot stops here if it has not converged "
                           "(its unit's trials then train this long, and the pilot says 'not converged')")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.window % self.every:
            raise ValueError(f"window ({self.window}) must be a multiple of every ({self.every})")
        if self.max_steps < self.window:
            raise ValueError(f"max_steps ({self.max_steps}) must be at least window ({self.window})")
        return self


class Train(_Strict):
    steps: int = Field(_TRAIN.steps, gt=0, description="training steps per trial")
    batch_size: int = Field(_TRAIN.batch_size, gt=0, description="prompts per training step")
    split: tuple[float, float, float] = Field(_TRAIN.split, description="train, val, test fractions of the "
                                              "entities (no prompt or entity is in two splits)")
    seed: int = Field(_TRAIN.seed, description="data seed: task generation and splits")
    filter: Literal["model_prefers_a", "none"] = Field(
        _TRAIN.filter, description="keep only prompts where the model ranks answer a above b, or all")
    active_threshold: float = Field(_TRAIN.active_threshold, gt=0, description="ActivScalar and DynScalar: a cell "
                                    "is moved when its |alpha - 1| is above this")
    steer_threshold: float = Field(_TRAIN.steer_threshold, gt=0, description="SteerVec: a cell is moved when its "
                                   "|v| / mean |h| is above this")
    min_split: int = Field(_TRAIN.min_split, ge=1, description="a unit whose train, val or test split holds fewer "
                           "prompts is warned about; val and test rates over fewer prompts are marked, and a test "
                           "split that small gets no interval")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        _TRAIN.precision, description="training forwards: auto takes bf16 on CUDA, and on CPUs with native bf16 "
        "(AVX-512 BF16 or AMX) for models at least 256 wide, else fp32; the intervention, the objective and every "
        "val/test metric stay fp32; each trial records the precision it trained in")
    patience: int = Field(_TRAIN.patience, ge=0, description="early stopping: a trial stops when its objective on "
                          "the val slice has not improved for this many checks (0: off); it stays complete")
    check_every: int = Field(_TRAIN.check_every, gt=0, description="steps between early-stopping/pruning checks")
    check_prompts: int = Field(_TRAIN.check_prompts, gt=0, description="val prompts scored at each check (the "
                               "first ones of the val split)")
    prune: bool = Field(_TRAIN.prune, description="at each check, prune search trials clearly dominated by another "
                        "trial of their batch (val-slice flip_rate prune_margin below the best, or no flip at all "
                        "from half their steps on); pruned trials are stored as pruned, count in n_trials and are "
                        "never selected; replicates are never pruned")
    prune_margin: float = Field(_TRAIN.prune_margin, gt=0, le=1, description="how far below the batch's best "
                                "val-slice flip_rate a trial is pruned")
    folds: int = Field(_TRAIN.folds, ge=1, le=50, description="cross-fitted folds: 1 is one train/val/test split; "
                       "K >= 2 cuts the task's entities into K groups with the data seed, and fold f tests on the "
                       "examples all of whose entities are in group f and trains/validates on those with none there "
                       "(train vs val by split's first two fractions; an example straddling is dropped for that fold "
                       "only). The search runs on fold 0; search.replicate_data: folds trains replicates on the "
                       "others. Part of the unit's id only when not 1")
    l1: Literal["subgradient", "proximal"] = Field(
        _TRAIN.l1, description="the minimality term: its subgradient in the loss, or proximal: a soft-thresholding "
        "step toward identity after each optimizer step, so that cells the objective does not need stay exactly at "
        "identity (ActivScalar, SteerVec, diffmeans; DynScalar keeps the subgradient, and its units say so)")
    converge: Converge | None = Field(None, description="training length from a convergence pilot: each unit first "
                                      "trains one trial at the middle of the searched ranges until its val objective "
                                      "converges; its search trials and replicates then train that many steps "
                                      "(absent: train.steps)")

    @field_validator("split")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if any(x <= 0 for x in v):
            raise ValueError(f"every split fraction must be > 0 (got {list(v)})")
        return v


class Selection(_Strict):
    """The one selection rule (storage/selection.py): among complete search trials with val
    flip_rate >= min_flip, the fewest sites_moved, then the lowest val kl_other; if none
    qualifies, the highest val flip_rate (flagged as a fallback)."""

    min_flip: float = Field(DEFAULT_MIN_FLIP, gt=0, le=1, description="val flip_rate a trial must reach to be "
                            "selected by fewest sites moved; below it for every trial, the highest val flip_rate "
                            "is selected and marked fallback")


class Analysis(_Strict):
    curves: bool = Field(True, description="sufficiency and necessity curves (flip_rate etc. keeping / removing the "
                         "k cells of largest effect) for each unit's selected trial and its replicates (table curves)")
    betas: list[float] = Field(list(STRENGTHS), description="strengths beta of the "
                               "strength sweep of the same trials (alpha' = 1 + beta (alpha - 1); v' = beta v); [] "
                               "for none")
    k_step: int = Field(2, ge=2, description="the curves' k grid: 0, 1, k_step, k_step^2, ..., all cells (4 halves "
                        "the points of 2, at a coarser 'smallest k reaching 90%')")
    k90_within: float | None = Field(0.1, gt=0, le=1, description="find k90 (the fewest top cells whose val "
                                     "flip_rate alone reaches 90% of the trial's) to within this ratio: the k "
                                     "grid's bracket around it is narrowed on val by batched rounds of 8 points, "
                                     "then k90 is scored on test too; null: the grid's points only")
    val_all: bool = Field(False, description="score val necessity and strength rows too; by default val gets only "
                          "what a decision reads (the sufficiency curve, on which k90 is found) and test every point")
    precision: str = Field("train", description="the analysis' forwards: train (the unit's training precision, bf16 "
                           "where it trains in bf16, against that model's own unintervened logits) or fp32")
    enabled: bool = Field(True, description="run the analyses as part of the sweep (`actscale analyze RUN_DIR` "
                          "runs them later)")

    @field_validator("precision")
    @classmethod
    def _precision(cls, v: str) -> str:
        if v not in ANALYSIS_PRECISIONS:
            raise ValueError(f"analysis.precision={v!r}; accepted: {', '.join(ANALYSIS_PRECISIONS)}")
        return v

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: list[float]) -> list[float]:
        if len(set(v)) != len(v):
            raise ValueError(f"betas {v} list a strength more than once")
        return v


class Controls(_Strict):
    """Retrained mask controls (orchestrator/controls.py): after a unit's replicates, its selected trial's
    hyper-parameters, steps and seed trained again with only the cells of a mask free (every other cell stays
    exactly identity): its top-k cells, k random cells, and named structured masks. Rows: trials.mask,
    mask_cells, control_of; never selected."""

    enabled: bool = Field(False, description="train the controls as part of the sweep (not part of any unit's id)")
    ks: list[int] | None = Field(None, description="k values (cells): a top-k and `random_masks` random-k controls "
                                 "at each (a k not below the unit's cells is left out)")
    k_fractions: list[float] | None = Field(None, description="k as shares of the unit's cells (sites_total), e.g. "
                                            "[0.02, 0.05, 0.1], rounded, at least 1; with `ks`, both")
    random_masks: int = Field(5, ge=1, description="random-k controls per k, each a different seeded draw of k cells "
                              "(the page's top-vs-random comparison needs 5)")
    structured: list[str] = Field(default_factory=list, description=f"named structured masks: any of "
                                  f"{', '.join(STRUCTURED_MASKS)} (final_position: every layer at the last position; "
                                  "names_and_final: the positions of IOI's names and the last one)")
    methods: list[str] = Field(list(DEFAULT_CONTROL_METHODS), min_length=1,
                               description="the methods whose units get controls: any of "
                               f"{', '.join(MASKABLE_METHODS)} (their parameters span the cell grid)")

    replicates: bool = Field(False, description="also control each complete replicate of the selected trial (its "
                             "own top cells and random draws, its seed, fold and resample): the findings page pools "
                             "the controls of a trial's seeds")
    at_k90: bool = Field(False, description="also a top-k and `random_masks` random-k controls at k = the selected "
                         "trial's own k90 (the fewest top cells keeping 90% of its val flip_rate, from its analysis: "
                         "the analysis runs before the controls; its replicates' controls at the same k); needs "
                         "analysis.enabled and analysis.curves")

    @field_validator("ks")
    @classmethod
    def _ks(cls, v: list[int] | None) -> list[int] | None:
        bad = [k for k in v or [] if k < 1]
        if bad:
            raise ValueError(f"ks {bad}: each k must be at least 1")
        return v

    @field_validator("k_fractions")
    @classmethod
    def _fractions(cls, v: list[float] | None) -> list[float] | None:
        bad = [f for f in v or [] if not 0 < f < 1]
        if bad:
            raise ValueError(f"k_fractions {bad}: each must be in (0, 1)")
        return v

    @field_validator("structured")
    @classmethod
    def _structured(cls, v: list[str]) -> list[str]:
        return _all_in(v, STRUCTURED_MASKS, "structured mask")

    @field_validator("methods")
    @classmethod
    def _maskable(cls, v: list[str]) -> list[str]:
        for m in v:
            if m not in MASKABLE_METHODS:
                raise ValueError(f"method {m!r} cannot be masked (its parameters do not span the cell grid); "
                                 f"accepted: {', '.join(MASKABLE_METHODS)}")
        return v

    @model_validator(mode="after")
    def _something(self) -> Self:
        if self.enabled and not (self.ks or self.k_fractions or self.structured or self.at_k90):
            raise ValueError("controls.enabled needs ks, k_fractions, at_k90 or structured masks")
        return self


class Resources(_Strict):
    cpus_per_worker: float = Field(1.0, gt=0, description="Ray CPUs per worker (also its torch threads)")
    gpus_per_worker: float = Field(0.0, ge=0, description="Ray GPUs per worker")
    workers_per_model: int = Field(1, gt=0, description="workers (each loads the model once) per model")
    models_at_once: int = Field(1, gt=0, description="models whose workers run at the same time")


class SweepConfig(_Strict):
    name: str = Field("sweep", description="the sweep's name (default run directory: runs/NAME)")
    stop_after: str | None = Field(None, description="stop cleanly before this much wall-clock time has passed "
                                   "(40s, 90m, 2h; `actscale run --stop-after` overrides it), with exit status 3; "
                                   "running the same command again resumes. Not part of any unit's id")
    # before every field that names a method: the plugins register theirs when imported
    plugins: list[str] | None = Field(None, description="Python modules to import on the coordinator and every "
                                      "worker before anything else: each registers methods of its own "
                                      "(docs/architecture.md, Where a new thing goes)")
    models: list[str] = Field(min_length=1, description="built-in names (`actscale models`), local directories or "
                              "cached Hugging Face hub ids")
    tasks: list[str | TaskEntry] = Field(min_length=1, description="task names or .jsonl paths, or `{name, options}`")
    sites: list[str] = Field(min_length=1, description=f"any of {', '.join(SITES)}")
    layers: Literal["all", "each"] | list[list[int]] = Field(
        "all", description="all (one unit over every layer), each (a unit per layer) or a list of layer lists "
        "(negative counts from the end)")
    methods: list[str] = Field(min_length=1, description=f"any of {', '.join(method_names())}, or a method "
                               "registered by a module under plugins")
    search: Search = Field(Search(), description="the hyper-parameter search of each unit")
    train: Train = Field(Train(), description="settings shared by every trial of a unit (part of the unit's id)")
    selection: Selection = Field(Selection(), description="the one rule that picks each unit's selected trial")
    analysis: Analysis = Field(Analysis(), description="what each unit's selected trial and replicates do, "
                               "measured after its search (not part of the unit's id)")
    controls: Controls = Field(Controls(), description="retrained mask controls of each unit's selected trial, "
                               "after its replicates and their analysis (not part of the unit's id)")
    resources: Resources = Field(Resources(), description="Ray resources")
    allow_pickle: bool = Field(False, description="allow pickle (.bin) checkpoints; safetensors only by default")

    @field_validator("models", "sites", "methods")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        duplicates = sorted({x for x in v if v.count(x) > 1})
        if duplicates:
            raise ValueError(f"{duplicates} listed more than once")
        return v

    @field_validator("stop_after", mode="before")
    @classmethod
    def _stop_after(cls, v: Any) -> Any:
        if v is not None:
            parse_duration(str(v), "stop_after")
            return str(v)
        return v

    @field_validator("plugins")
    @classmethod
    def _plugins(cls, v: Any) -> Any:
        try:
            import_plugins(v or [])
        except UsageError as exc:
            raise ValueError(str(exc)) from None
        return v

    @field_validator("sites")
    @classmethod
    def _sites(cls, v: Any) -> Any:
        return _all_in(v, SITES, "site")

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: Any) -> Any:
        return _all_in(v, method_names(), "method")

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: Any) -> Any:
        if isinstance(v, list) and (not v or any(not group for group in v)):
            raise ValueError("layers must be 'all', 'each', or a non-empty list of non-empty layer lists")
        return v

    @model_validator(mode="after")
    def _steps_once(self) -> Self:
        """With a convergence pilot the pilot decides the training length: steps are not searched too."""
        if self.train.converge is None:
            return self
        searched = ["search.space.steps"] if self.search.space.steps is not None else []
        searched += [f"search.method_space.{m}.steps" for m, o in self.search.method_space.items() if o.steps]
        if searched:
            raise ValueError(f"train.converge sets the training length from a pilot; remove {', '.join(searched)}")
        return self

    @model_validator(mode="after")
    def _task_restrictions(self) -> Self:
        for i, task in enumerate(self.task_entries()):
            for key, allowed in (("sites", self.sites), ("methods", self.methods)):
                chosen = getattr(task, key)
                if chosen is not None:
                    extra = [x for x in chosen if x not in allowed]
                    if extra or not chosen:
                        raise ValueError(f"tasks[{i}].{key} = {chosen}: each must be one of the sweep's {key} "
                                         f"({', '.join(allowed)}), and at least one")
        return self

    @model_validator(mode="after")
    def _pruner_rungs(self) -> Self:
        pruner = self.search.pruner
        if pruner is None:
            return self
        ranges = [self.search.space.steps] + [o.steps for o in self.search.method_space.values()]
        most = max([self.train.steps] + [r.high for r in ranges if r is not None])
        if pruner.min_steps >= most:
            raise ValueError(f"search.pruner.min_steps = {pruner.min_steps} is not below the trials' steps ({most}): "
                             "no rung would come before a trial ends; lower min_steps")
        if pruner.min_kept > self.search.n_trials:
            raise ValueError(f"search.pruner.min_kept = {pruner.min_kept} is above search.n_trials = "
                             f"{self.search.n_trials}: accepted 1 to n_trials (with n_trials or more, ASHA prunes nothing)")
        return self

    @model_validator(mode="after")
    def _k90_analysed(self) -> Self:
        """Controls at k90 read k90 from the controlled trial's curves."""
        if self.controls.enabled and self.controls.at_k90 and not (self.analysis.enabled and self.analysis.curves):
            raise ValueError(f"controls.at_k90 needs the analysis' curves (analysis.enabled: {self.analysis.enabled}, "
                             f"analysis.curves: {self.analysis.curves}); enable both, or drop at_k90")
        return self

    @model_validator(mode="after")
    def _matched_pairs(self) -> Self:
        seen: set[frozenset[str]] = set()
        for i, (first, second) in enumerate(self.search.matched):
            unknown = [m for m in (first, second) if m not in self.methods]
            if unknown or first == second:
                raise ValueError(f"search.matched[{i}] = [{first}, {second}]: two different methods of the sweep's "
                                 f"methods ({', '.join(self.methods)})")
            if frozenset((first, second)) in seen:
                raise ValueError(f"search.matched[{i}] = [{first}, {second}]: that pair is listed already")
            seen.add(frozenset((first, second)))
        if self.search.matched and self.search.replicates < 2:
            raise ValueError(f"search.matched replicates each pair's matched trials search.replicates - 1 times, and "
                             f"search.replicates is {self.search.replicates}: set it to 2 or more, or drop matched")
        return self

    @model_validator(mode="after")
    def _replicate_folds(self) -> Self:
        if self.search.replicate_data == "folds" and self.train.folds < 2:
            raise ValueError(f"search.replicate_data: folds needs train.folds >= 2 (got train.folds: {self.train.folds}); "
                             "set train.folds: K (replicates: K tests every entity once), or replicate_data: none or "
                             "bootstrap")
        return self

    def task_entries(self) -> list[TaskEntry]:
        return [TaskEntry(name=t) if isinstance(t, str) else t for t in self.tasks]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=True), sort_keys=False)


def _format(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("str", "TaskEntry", "list[", "literal[")))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        got = err.get("input")
        shown = "" if err["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{path or '(top level)'}: {msg}{shown}")
    unique = list(dict.fromkeys(lines))
    return f"{source}: invalid sweep config:\n  " + "\n  ".join(unique)


def parse_config(data: Any, source: str = "sweep") -> SweepConfig:
    if not isinstance(data, dict):
        raise UsageError(f"{source}: a sweep config must be a YAML mapping (models:, tasks:, ...), "
                         f"got {type(data).__name__}")
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as exc:
        raise UsageError(_format(exc, source)) from None


def load_config(path: Path | str) -> SweepConfig:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"sweep file {path} does not exist; built-in sweeps: {', '.join(builtin_sweeps())}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise UsageError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}{where})") from None
    return parse_config(data, str(path))


def builtin_sweeps() -> dict[str, Path]:
    here = Path(__file__).parent
    return {p.stem: p for p in sorted(here.glob("*.yaml"))}


def resolve_sweep(name_or_path: str | None) -> Path:
    """A path, or the name of a built-in sweep (default: quickstart)."""
    if name_or_path is None:
        return builtin_sweeps()["quickstart"]
    if name_or_path in builtin_sweeps() and not Path(name_or_path).exists():
        return builtin_sweeps()[name_or_path]
    return Path(name_or_path)
