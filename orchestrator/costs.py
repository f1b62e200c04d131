"""What a sweep will cost, unit by unit and phase by phase, before it runs (`actscale plan`). No torch.

Each phase of a unit (orchestrator/units.py) contributes its own work through ONE function of
`PHASE_WORK`: given the unit, what its prepared data holds (`UnitFacts`: prompts per split, cells)
and the model's speed (`Speed`, from a calibration: orchestrator/calibration.py), it returns the
phase's pieces as the controller hands them out (a describe; a batch of K trials; an analysis),
each with its counts and its predicted seconds on one worker. A new phase (a convergence pilot,
retraining controls, patching) adds one function here, keyed by its Phase, in the order it runs.

Trial-steps with ASHA (`search.pruner`) are expected values: the rule (workers/asha.py) is played on
the unit's batches in order, with trial qualities drawn at random and kept from rung to rung (a
trial's rank holds through training, the ideal ASHA is built for), averaged over `ASHA_DRAWS` draws.
Patience and `train.prune` cannot be foreseen: the plan counts their checks but no early stop, so
it is an upper bound there; so is `search.matched`: each pair may replicate one more trial per unit.
"""
from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from orchestrator.controls import mask_count
from orchestrator.plan import PlannedUnit
from orchestrator.units import Phase, targets_of
from search_spaces.config import IntRange, SweepConfig
from workers.asha import RungEntry, Rungs, rung_steps
from workers.tasks.base import TaskSpec

ASHA_DRAWS = 200  # random draws of the trials' qualities behind ASHA's expected schedule
BATCH_OVERHEAD_S = 0.3  # per piece of work: Optuna's ask and tell, rows to Parquet, Ray's call (performance.md, c)
POINTS_PER_FORWARD = 8  # workers/analysis.py: curve points scored in one batched forward


@dataclass(frozen=True)
class Speed:
    """One model's speed on one worker (from its calibration): seconds of a training step of K live trials
    at batch size B (measured at K = 1 and one K > 1, linear in between and beyond), of a forward per
    prompt row in evaluation, of preparing a unit per task prompt, of a worker's start and model load, of
    the coordinator's own imports.
    Measured with the intervention from layer `first_layer` on; a unit starting deeper runs fewer layers
    (the prefix cache), so its times scale by the share of layers it runs."""

    steps: dict[tuple[int, int], float]  # (batch size, K) -> seconds per training step
    eval_row_s: float
    prepare_prompt_s: float
    start_s: float
    load_s: float
    n_layers: int
    first_layer: int = 0
    command_s: float = 0.0  # the coordinator's imports, once per command
    analysis_row_s: float = 0.0  # a forward per prompt row in the training precision (0: not measured, eval_row_s)
    trains_fp32: bool = False  # the unit trains on the evaluation model itself: no own logits to compute

    def share(self, first_layer: int) -> float:
        return (self.n_layers - first_layer + 1) / (self.n_layers - self.first_layer + 1)

    def step(self, batch: int, live: float, first_layer: int = 0) -> float:
        """Seconds of one training step of `live` trials at this batch size (0 with none live)."""
        if live <= 0:
            return 0.0
        known = sorted((k, s) for (b, k), s in self.steps.items() if b == batch)
        if not known:  # another batch size: from the nearest measured one, in proportion
            near = min({b for b, _ in self.steps}, key=lambda b: abs(b - batch))
            return self.step(near, live * batch / near, first_layer)
        (k0, s0), (k1, s1) = known[0], known[-1]
        per_trial = (s1 - s0) / (k1 - k0) if k1 > k0 else s0 / max(k0, 1)
        return max(0.0, s0 + (live - k0) * per_trial) * self.share(first_layer)

    def rows(self, n: float, first_layer: int = 0) -> float:
        """Seconds of evaluation forwards over n prompt rows (trials x prompts)."""
        return n * self.eval_row_s * self.share(first_layer)

    def analysis_rows(self, n: float, first_layer: int = 0) -> float:
        """Seconds of the analysis' forwards over n prompt rows, in the unit's training precision
        (analysis.precision: train)."""
        return n * (self.analysis_row_s or self.eval_row_s) * self.share(first_layer)


@dataclass(frozen=True)
class UnitFacts:
    """What a unit's prepared data holds (the same on every machine): prompts per split and in its task,
    its cells, and the first layer it runs from (the prefix cache)."""

    total: int
    n_train: int
    n_val: int
    n_test: int
    n_cells: int
    first_layer: int = 0


@dataclass
class Piece:
    """One piece of a unit's work as the controller hands it out, and what it costs."""

    phase: Phase
    trials: int = 0
    trial_steps: float = 0.0  # expected (ASHA)
    points: int = 0  # analysis: curves rows
    prompt_forwards: float = 0.0  # evaluation forwards, in prompt rows (trials or points x prompts)
    seconds: float = 0.0


@dataclass(frozen=True)
class Costing:
    """What a phase function reads: the sweep, the unit, its facts and its model's speed."""

    config: SweepConfig
    unit: PlannedUnit
    facts: UnitFacts
    speed: Speed


@dataclass
class UnitCost:
    unit: PlannedUnit
    phases: dict[Phase, list[Piece]] = field(default_factory=dict)

    def total(self, name: str, phase: Phase | None = None) -> float:
        return sum(getattr(p, name) for ph, pieces in self.phases.items() if phase in (None, ph) for p in pieces)


def _mean(r: IntRange | None, fallback: int) -> float:
    return fallback if r is None else (r.low + r.high) / 2


def trial_shape(config: SweepConfig, method: str) -> tuple[float, int]:
    """A trial's steps (the mean of a searched range) and batch size (the first of a searched list)."""
    space = config.search.space
    override = config.search.method_space.get(method)
    steps_range = override.steps if override is not None and override.steps is not None else space.steps
    sizes = override.batch_size if override is not None and override.batch_size else space.batch_size
    return _mean(steps_range, config.train.steps), (sizes[0] if sizes else config.train.batch_size)


def batches(n: int, k: int) -> list[int]:
    """n trials in batches of at most k, as the controller hands them out."""
    return [min(k, n - i) for i in range(0, n, k)]


def describe_work(c: Costing) -> list[Piece]:
    return [Piece(Phase.DESCRIBE, seconds=c.facts.total * c.speed.prepare_prompt_s + BATCH_OVERHEAD_S)]


Segment = tuple[float, float, float]  # (steps, expected trials live, share of draws with any trial live)


def training_piece(c: Costing, phase: Phase, segments: list[Segment], trials: int) -> Piece:
    """A batch of trials trained together: `segments` in order (the last one ends at the trials' steps,
    each earlier one at an ASHA rung); each trial then scored on val and test; the checks of early
    stopping, pruning and ASHA's rungs on the val check slice."""
    _, batch = trial_shape(c.config, c.unit.spec.method)
    f, train = c.facts, c.config.train
    seconds = sum(n * alive * c.speed.step(batch, live / alive, f.first_layer) for n, live, alive in segments if alive)
    steps = sum(n * live for n, live, _ in segments)
    rows = trials * (f.n_val + f.n_test)
    slice_rows = min(train.check_prompts, f.n_val)
    check_rows = steps / train.check_every * slice_rows if train.patience or train.prune else 0.0
    check_rows += sum(live for _, live, _ in segments[:-1]) * slice_rows  # the trials arriving at each rung
    seconds += c.speed.rows(rows + check_rows, f.first_layer) + BATCH_OVERHEAD_S
    return Piece(phase, trials, steps, 0, rows, seconds)


def search_work(c: Costing) -> list[Piece]:
    search = c.config.search
    steps, _ = trial_shape(c.config, c.unit.spec.method)
    sizes = batches(search.n_trials, search.batch)
    if search.pruner is None:
        return [training_piece(c, Phase.SEARCH, [(steps, k, 1.0)], k) for k in sizes]
    schedule = asha_schedule(sizes, round(steps), search.pruner.min_steps, search.pruner.eta,
                             min_kept=search.pruner.min_kept)
    return [training_piece(c, Phase.SEARCH, segments, k) for k, segments in zip(sizes, schedule)]


def matched_partners(config: SweepConfig, unit: PlannedUnit) -> int:
    """The search.matched pairs the unit's method is in whose other method runs at the unit's task (name and
    options) and site: at most that many matched trials more to replicate (none where the matched trial is the
    selected one)."""
    spec = unit.spec
    entries = [e for e in config.task_entries()
               if TaskSpec.make(e.name, e.options) == spec.task and spec.site in (e.sites or config.sites)]
    runs = {m for e in entries for m in (e.methods or config.methods)}
    return sum(1 for pair in config.search.matched if spec.method in pair
               and next(m for m in pair if m != spec.method) in runs)


def replicate_work(c: Costing) -> list[Piece]:
    """The selected trial's replicates, and at most one more trial's per search.matched pair (an upper bound)."""
    steps, _ = trial_shape(c.config, c.unit.spec.method)
    replicated = 1 + matched_partners(c.config, c.unit)  # each handed out in its own batches
    return [training_piece(c, Phase.REPLICATES, [(steps, k, 1.0)], k) for _ in range(replicated)
            for k in batches(c.config.search.replicates - 1, c.config.search.batch)]


def control_work(c: Costing) -> list[Piece]:
    """The selected trial's retrained mask controls (controls:, orchestrator/controls.py; with controls.replicates
    its replicates' too), trained like replicates."""
    plan = targets_of(c.config).controls
    if not plan.applies_to(c.unit.spec.method):
        return []
    steps, _ = trial_shape(c.config, c.unit.spec.method)
    n = mask_count(plan, c.facts.n_cells) * (c.config.search.replicates if plan.replicates else 1)
    return [training_piece(c, Phase.CONTROLS, [(steps, k, 1.0)], k) for k in batches(n, c.config.search.batch)]


def analysis_points(n_cells: int, curves: bool, betas: list[float], k_step: int,
                    k90_within: float | None = None, val_all: bool = False) -> tuple[int, int, int]:
    """Per analysed trial: (curves rows, distinct points scored on val, on test). workers/analysis.py scores the
    points that compute the same thing once: the model at sufficiency k = 0 and necessity k = all, the trial at
    sufficiency k = all, necessity k = 0 and beta = 1. Test gets every point; val the sufficiency curve only
    (what k90 is decided on), or every point with val_all. With k90_within, k90's bracket is bisected on val (a
    sufficiency point per round), then k90 is scored both ways on test (and as necessity on val with val_all):
    the expected count where the grid's bracket around k90 is k_step wide (it is data-dependent)."""
    n_k = len(k_grid(n_cells, k_step)) if curves else 0
    per_split = 2 * n_k + len(betas)
    distinct = (2 * n_k - 2 if curves else 0) + len(betas) - (1 if curves and 1.0 in betas else 0)
    val_rows, val_distinct = (per_split, distinct) if val_all else (n_k, n_k)
    refine_val, refine_test = 0, 0
    if curves and k90_within and n_cells > 2:
        refine_val = k90_rounds(float(k_step), k90_within) + (1 if val_all else 0)
        refine_test = 2
    return per_split + val_rows + refine_val + refine_test, val_distinct + refine_val, distinct + refine_test


def k90_rounds(ratio: float, within: float) -> int:
    """Bisection rounds (one point each: workers.analysis.split_point) until a bracket `ratio` wide is at most
    1 + within: each round takes the ratio r to about sqrt(r)."""
    rounds = 0
    while ratio > 1 + within:
        ratio = math.sqrt(ratio)
        rounds += 1
    return rounds


def k_grid(n_cells: int, step: int) -> list[int]:
    """workers.analysis.k_grid, without torch: 0, 1, step, step^2, ... (below n_cells), n_cells."""
    grid, k = [0], 1
    while k < n_cells:
        grid.append(k)
        k *= step
    return grid + [n_cells]


def analysis_work(c: Costing) -> list[Piece]:
    """The selected trial and its replicates, analyzed in one piece (val and test)."""
    if not targets_of(c.config).analysis:
        return []
    a, f = c.config.analysis, c.facts
    trials = c.config.search.replicates
    rows, on_val, on_test = analysis_points(f.n_cells, a.curves, list(a.betas), a.k_step, a.k90_within, a.val_all)
    forwards = trials * (on_val * f.n_val + on_test * f.n_test)
    effects = trials * (f.n_train + f.n_val)  # the cells' effects (fp32): train norms or a recorded val forward
    if a.precision == "train":  # the points in the training precision, after its own logits of val and test
        own = 0 if c.speed.trains_fp32 else trials * (f.n_val + f.n_test)  # fp32 training: the evaluation's logits
        seconds = c.speed.analysis_rows(forwards + own, f.first_layer)
    else:
        seconds = c.speed.rows(forwards, f.first_layer)
    seconds += c.speed.rows(effects, f.first_layer) + BATCH_OVERHEAD_S
    return [Piece(Phase.ANALYSE, trials, 0.0, trials * rows, forwards, seconds)]


# One function per phase, in the order a unit goes through them (orchestrator/units.py STEPS).
PHASE_WORK: dict[Phase, Callable[[Costing], list[Piece]]] = {
    Phase.DESCRIBE: describe_work, Phase.SEARCH: search_work, Phase.REPLICATES: replicate_work,
    Phase.ANALYSE: analysis_work, Phase.CONTROLS: control_work}


def unit_cost(c: Costing) -> UnitCost:
    return UnitCost(c.unit, {phase: work(c) for phase, work in PHASE_WORK.items()})


def asha_schedule(sizes: list[int], steps: int, min_steps: int, eta: int, draws: int = ASHA_DRAWS,
                  seed: int = 0, min_kept: int = 1) -> list[list[Segment]]:
    """Per batch: its expected segments of training under ASHA (between rungs: steps, trials live, share of
    draws with any live), the batches run in order, each trial's quality drawn at random once (its rank
    held at every rung), over `draws` draws."""
    rungs = rung_steps(min_steps, eta, steps)
    bounds = [0] + rungs + [steps]
    live_sum = [[0.0] * (len(bounds) - 1) for _ in sizes]
    alive_sum = [[0] * (len(bounds) - 1) for _ in sizes]
    rng = random.Random(seed)
    for _ in range(draws):
        history: dict[int, tuple[RungEntry, ...]] = {}
        number = 0
        for b, k in enumerate(sizes):
            live = [RungEntry(number + j, rng.random() * 0.5, 0.0, 0) for j in range(k)]  # below min_flip: by flip
            number += k
            for s, rung in enumerate([0] + rungs):
                if rung and live:
                    kept = Rungs(min_steps, eta, 1.0, history, min_kept).kept(rung, live)
                    history[rung] = history.get(rung, ()) + tuple(live)
                    live = [e for e, keep in zip(live, kept) if keep]
                live_sum[b][s] += len(live)
                alive_sum[b][s] += bool(live)
    return [[(bounds[s + 1] - bounds[s], live_sum[b][s] / draws, alive_sum[b][s] / draws) for s in range(len(bounds) - 1)]
            for b in range(len(sizes))]


RAY_START_S = 8.0  # an embedded Ray's start, once per command (docs/performance.md, c)


def model_wall(units: list[UnitCost], workers: int) -> float:
    """Seconds from a model's workers being up to the end of its last piece of work, handed out as the
    controller does (orchestrator/controller.py): a unit to describe first, then the first unit, in
    order, whose current phase has work; a phase starts once the one before it has ended."""
    phases = [[(phase, list(pieces)) for phase, pieces in u.phases.items() if pieces] for u in units]
    in_flight = [0] * len(units)
    running: list[tuple[float, int, int]] = []  # (end, sequence, unit)
    now, idle, sequence = 0.0, workers, 0
    while True:
        while idle and (u := _next_unit(phases)) is not None:
            piece = phases[u][0][1].pop(0)
            in_flight[u] += 1
            heapq.heappush(running, (now + piece.seconds, sequence, u))
            sequence, idle = sequence + 1, idle - 1
        if not running:
            return now
        now, _, u = heapq.heappop(running)
        idle, in_flight[u] = idle + 1, in_flight[u] - 1
        if not in_flight[u] and not phases[u][0][1]:
            phases[u].pop(0)  # the phase has ended: the next one may start


def _next_unit(phases: list[list[tuple[Phase, list[Piece]]]]) -> int | None:
    ready = [u for u, left in enumerate(phases) if left and left[0][1]]
    describe = [u for u in ready if phases[u][0][0] is Phase.DESCRIBE]
    return (describe or ready or [None])[0]


def sweep_wall(per_model: dict[str, tuple[Speed, list[UnitCost]]], workers_per_model: int,
               models_at_once: int) -> float:
    """A sweep's predicted wall time: the coordinator's imports and Ray's start, then the models in order,
    `models_at_once` at a time, each its workers' start and model load and then its units' work on
    `workers_per_model` workers."""
    slots = [0.0] * max(1, models_at_once)
    for speed, units in per_model.values():
        first_free = min(range(len(slots)), key=slots.__getitem__)
        slots[first_free] += speed.start_s + speed.load_s + model_wall(units, workers_per_model)
    command = max((speed.command_s for speed, _ in per_model.values()), default=0.0)
    return command + RAY_START_S + max(slots)
