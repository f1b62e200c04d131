"""A unit's state machine: its phase, the work it needs next, and how much is left.

A unit is in the first phase, in this order, that has anything left:

    DESCRIBE ──► PILOT ──► SEARCH ──► REPLICATES ──► CONTROLS ──► ANALYSE ──► DONE
        └──────────┴──────────┴────────────┴─────────────┴────────────┴──────► GAVE_UP  (too many failed trials)

- DESCRIBE: the unit prepared on a worker (its units and examples rows);
- PILOT (with `train.converge`): one convergence pilot trained until its val objective converges; its steps
  become the training length of the unit's search trials and replicates (workers/convergence.py);
- SEARCH: `search.n_trials` search trials from its Optuna study (complete and pruned ones count);
- REPLICATES: the selected trial's hyper-parameters trained `search.replicates - 1` more times (with
  `search.replicate_data: folds`, replicate r on fold r mod K: `replicate_folds`); with `search.matched`, once
  the unit's partner (the pair's other method at the same model, task and site) has finished its search too,
  the unit's search trial at the pair's matched val kl_other (storage/matched.py) the same way, where that is
  not its selected trial (`matched_of`: a unit may come back to this phase when its partner finishes);
- CONTROLS (`controls:`): the selected trial's hyper-parameters, steps and seed trained again restricted to each
  of its masks (top-k, random-k, structured: orchestrator/controls.py), with `controls.replicates` each complete
  replicate's too; a (trial, mask) with a complete control is done;
- ANALYSE: the curves and strength of the selected trial and its replicates (`analysis:`).

What a unit has is counted from its stored rows (`UnitState.count`) plus the work in flight, and
`unit_left(targets, tally)` turns that into the one answer to "how much is left": the phase, and
per phase what is unfinished and what is still to hand out. The scheduler (`next_work`), the
progress display and `actscale status` (from the stored rows alone) all use it. It is pure: no
Ray, no Optuna, no torch. A new phase (masked retraining controls after the replicates, a per-unit
activation-patching phase) is one Phase member, one step function in STEPS, and the code that
runs its work in orchestrator/controller.py.
"""
from __future__ import annotations

import enum
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from orchestrator.controls import ControlPlan, mask_names, plan_of
from storage.matched import matched_trials
from storage.schema import Status
from workers.asha import RungEntry
from workers.k90 import k90_of

if TYPE_CHECKING:
    from orchestrator.plan import PlannedUnit
    from search_spaces.config import SweepConfig

log = logging.getLogger("actscale")
ANALYSIS_TRIES = 2  # a unit's analysis that failed this often is given up (logged; its trials stay)


class Phase(enum.Enum):
    DESCRIBE = "describe"
    PILOT = "pilot"
    SEARCH = "search"
    REPLICATES = "replicates"
    CONTROLS = "controls"
    ANALYSE = "analyse"
    DONE = "done"
    GAVE_UP = "gave up"


TRIAL_PHASES = (Phase.PILOT, Phase.SEARCH, Phase.REPLICATES, Phase.CONTROLS)  # phases whose work is a batch of trials


class Asked(NamedTuple):
    """One trial handed to a worker: its Optuna number, parameters, and the trial it replicates."""

    number: int
    params: dict
    replicate_of: str | None = None


@dataclass(frozen=True)
class Targets:
    """What every unit of a sweep must reach (from the sweep's config)."""

    n_trials: int
    replicates: int = 1  # the selected trial and replicates - 1 retrainings of it
    analysis: bool = False
    give_up_after: int = 3  # failed trials after which a unit is given up, in one run
    min_flip: float = 0.9  # the selection rule's threshold
    replicate_folds: int = 0  # K: replicate r trains on fold r mod K (search.replicate_data: folds); 0: no folds
    pilot: bool = False  # a convergence pilot before the search (train.converge)
    controls: ControlPlan = ControlPlan()  # retrained mask controls of the selected trial (controls:)


def targets_of(config: SweepConfig) -> Targets:
    analysis = config.analysis
    return Targets(config.search.n_trials, config.search.replicates,
                   analysis.enabled and bool(analysis.curves or analysis.betas),
                   max(3, 2 * config.search.n_trials), config.selection.min_flip,
                   config.train.folds if config.search.replicate_data == "folds" else 0,
                   config.train.converge is not None, plan_of(config))


def replicate_folds(replicates: int, n_folds: int, done: Iterable[int | None],
                    in_flight: Iterable[int | None] = ()) -> list[int]:
    """The folds of the replicates still to hand out (pure): replicate r = 1..replicates-1 trains on fold
    r mod n_folds, and each complete replicate on a fold, or one in flight there, counts one of them off."""
    taken = Counter(done) + Counter(in_flight)
    left = []
    for r in range(1, replicates):
        fold = r % n_folds
        if taken[fold] > 0:
            taken[fold] -= 1
        else:
            left.append(fold)
    return left


@dataclass(frozen=True)
class Tally:
    """What a unit has: counted from its stored rows, plus the work in flight."""

    described: bool = True
    search_finished: int = 0  # complete and pruned search trials
    selected: str | None = None  # the selected trial's id (storage/selection.py)
    replicates_done: int = 0  # complete replicates of the selected trial
    matched_left: int = 0  # replicates still wanted of the unit's matched trials (search.matched), in flight included
    to_analyse: tuple[str, ...] = ()  # the selected trial and those replicates, without curves rows yet
    analysis_stopped: bool = False  # failed ANALYSIS_TRIES times, or a trial has no stored tensors
    gave_up: bool = False
    in_flight: Mapping[Phase, int] = field(default_factory=dict)  # trials handed out; 1 for a describe or analysis
    pilot_done: bool = False  # a complete convergence pilot is stored
    controls_wanted: int = 0  # the controls of the selected trial (controls.replicates: and its replicates), a mask each
    controls_done: int = 0  # ... with a complete control


@dataclass(frozen=True)
class Step:
    left: int  # unfinished, in flight included
    hand_out: int  # not handed out yet


def _describe(targets: Targets, tally: Tally) -> Step:
    left = 0 if tally.described else 1
    return Step(left, left - tally.in_flight.get(Phase.DESCRIBE, 0))


def _pilot(targets: Targets, tally: Tally) -> Step:
    """One convergence pilot, where the sweep asks for one (its steps are the search's training length)."""
    left = 1 if targets.pilot and not tally.pilot_done else 0
    return Step(left, max(0, left - tally.in_flight.get(Phase.PILOT, 0)))


def _search(targets: Targets, tally: Tally) -> Step:
    left = max(0, targets.n_trials - tally.search_finished)
    return Step(left, max(0, left - tally.in_flight.get(Phase.SEARCH, 0)))


def _replicates(targets: Targets, tally: Tally) -> Step:
    """Replicates of the selected trial (none for a unit whose finished search selected nothing) and of its matched
    trials."""
    search_over = tally.search_finished >= targets.n_trials
    left = 0 if tally.selected is None and search_over else max(0, targets.replicates - 1 - tally.replicates_done)
    left += tally.matched_left
    return Step(left, max(0, left - tally.in_flight.get(Phase.REPLICATES, 0)))


def _controls(targets: Targets, tally: Tally) -> Step:
    """A control per mask of the selected trial that has no complete one yet."""
    left = max(0, tally.controls_wanted - tally.controls_done)
    return Step(left, max(0, left - tally.in_flight.get(Phase.CONTROLS, 0)))


def _analyse(targets: Targets, tally: Tally) -> Step:
    """One analysis of every trial still to analyse; never two at once."""
    wanted = targets.analysis and tally.selected is not None and not tally.analysis_stopped
    left = len(tally.to_analyse) if wanted else 0
    return Step(left, 0 if tally.in_flight.get(Phase.ANALYSE, 0) else left)


STEPS: dict[Phase, Callable[[Targets, Tally], Step]] = {
    Phase.DESCRIBE: _describe, Phase.PILOT: _pilot, Phase.SEARCH: _search, Phase.REPLICATES: _replicates,
    Phase.ANALYSE: _analyse, Phase.CONTROLS: _controls}  # analysed first: controls at k90 read the curves


@dataclass(frozen=True)
class Left:
    """How much is left of a unit: its phase, and per phase what is unfinished and what to hand out."""

    phase: Phase
    steps: dict[Phase, Step]

    @property
    def trials(self) -> int:
        """Trials not finished yet (pilot, search trials, replicates, controls; in flight included)."""
        return sum(self.steps[p].left for p in TRIAL_PHASES)

    @property
    def hand_out(self) -> int:
        """What the current phase can hand out now (trials; 1 for a describe or an analysis)."""
        step = self.steps.get(self.phase)
        return step.hand_out if step is not None else 0


def unit_left(targets: Targets, tally: Tally) -> Left:
    """The one answer to "how much is left" (pure): a unit is in the first phase with anything left."""
    if tally.gave_up:
        return Left(Phase.GAVE_UP, {p: Step(0, 0) for p in STEPS})
    steps = {phase: step(targets, tally) for phase, step in STEPS.items()}
    phase = next((p for p, s in steps.items() if s.left > 0), Phase.DONE)
    return Left(phase, steps)


@dataclass
class Work:
    """A piece of a unit's work for one worker, decided by the unit (`UnitState.next_work`)."""

    phase: Phase
    unit: UnitState
    count: int = 1  # trials to ask (search trials, replicates)
    replicate_of: str | None = None  # REPLICATES: the trial replicated (the selected one, or a matched one)
    trial_ids: list[str] = field(default_factory=list)  # ANALYSE: the trials analysed
    asked: list[Asked] = field(default_factory=list)  # trial phases: the trials, once asked from Optuna

    @property
    def size(self) -> int:
        """What it holds of its phase while in flight (see Tally.in_flight)."""
        return self.count if self.phase in TRIAL_PHASES else 1

    def describe(self) -> str:
        if self.phase is Phase.DESCRIBE:
            return f"unit {self.unit.unit_id} to be prepared"
        if self.phase is Phase.ANALYSE:
            return f"analysis of {', '.join(self.trial_ids)}"
        kinds = {Phase.REPLICATES: "replicate", Phase.PILOT: "convergence pilot", Phase.CONTROLS: "mask control"}
        kind = kinds.get(self.phase, "trial")
        if not self.asked:  # decided, not asked yet
            return f"{self.count} {kind}(s) of unit {self.unit.unit_id}"
        return f"{kind}(s) {', '.join(str(a.number) for a in self.asked)} of unit {self.unit.unit_id}"


class UnitState:
    """One unit's counts (from its stored rows, then its results) and its work in flight."""

    def __init__(self, planned: PlannedUnit, targets: Targets, described: bool = False,
                 has_artifact: Callable[[str], bool] = lambda trial_id: True):
        self.planned = planned
        self.targets = targets
        self.described = described
        self.has_artifact = has_artifact  # whether a trial's tensors are stored (it can be analysed)
        self.search_rows: list[dict[str, Any]] = []  # complete search trials (for the selection)
        self.replicate_ids: dict[str, list[str]] = {}  # selected trial id -> complete replicates' ids
        self.trial_folds: dict[str, int] = {}  # complete trials' folds (trials.fold), where set
        # replicated trial id -> the folds of its replicates handed out (None each: replicates vary no fold)
        self.replicates_in_flight: dict[str, list[int | None]] = {}
        self.partners: list[UnitState] = []  # search.matched: the pairs' other units at the same model, task and site
        self.analysed: set[str] = set()  # trial ids with rows in the curves table
        self.k90s: dict[str, int | None] = {}  # analysed trial id -> its val k90 (controls.at_k90), None: flips nothing
        self.pilot_steps: int | None = None  # the complete convergence pilot's steps: the search's training length
        self.replicate_rows: dict[str, dict[str, Any]] = {}  # complete replicates' rows (controls: replicates)
        self.control_masks: dict[str, set[str]] = {}  # controlled trial id -> the masks of its complete controls
        self.controls_in_flight: list[tuple[str, str]] = []  # (controlled trial, mask) of controls handed out
        self.failed = self.interrupted = self.pruned = 0  # trials (failed: also describes that failed)
        self.analysis_failures = 0
        self.gave_up = False
        self.in_flight: dict[Phase, int] = {}
        self.rungs: dict[int, list[RungEntry]] = {}  # ASHA: rung step -> the search trials judged there (finished ones)
        self._selection: tuple[int, dict[str, Any] | None] | None = None  # (search rows, selected row)

    @property
    def unit_id(self) -> str:
        return self.planned.unit_id

    @property
    def finished(self) -> int:
        """Trials that need no more work: completed search trials and replicates, the pilot, and pruned ones."""
        return self.completed + self.pruned

    @property
    def completed(self) -> int:
        """Complete trials: search trials, replicates, the convergence pilot and mask controls."""
        return (len(self.search_rows) + sum(map(len, self.replicate_ids.values())) + (self.pilot_steps is not None)
                + sum(map(len, self.control_masks.values())))

    # ------------------------------------------------------------ the selection
    def selection_stale(self) -> bool:
        return self._selection is None or self._selection[0] != len(self.search_rows)

    def set_selection(self, row: dict[str, Any] | None) -> None:
        self._selection = (len(self.search_rows), row)

    @property
    def selected(self) -> dict[str, Any] | None:
        """The selected search trial's row (cached until the search rows change)."""
        if self.selection_stale():
            refresh_selections([self])
        assert self._selection is not None
        return self._selection[1]

    # ------------------------------------------------------------ how much is left, and what next
    def tally(self) -> Tally:
        selected = self.selected
        chosen = selected["trial_id"] if selected is not None else None
        replicates = self.replicate_ids.get(chosen, []) if chosen is not None else []
        to_analyse = tuple(t for t in ([chosen] if chosen else []) + replicates if t not in self.analysed)
        done = len(replicates)
        if self.targets.replicate_folds and chosen is not None:  # with folds, a replicate counts where its fold is wanted
            done = self.targets.replicates - 1 - len(replicate_folds_left(self, chosen, in_flight=False))
        matched_left = sum(len(replicate_folds_left(self, t, in_flight=False)) for t in matched_of(self))
        wanted = wanted_controls(self)
        done_masks = {(t, m) for t, masks in self.control_masks.items() for m in masks}
        return Tally(self.described, len(self.search_rows) + self.pruned, chosen, done, matched_left, to_analyse,
                     self.analysis_failures >= ANALYSIS_TRIES, self.gave_up, dict(self.in_flight),
                     self.pilot_steps is not None, len(wanted), len(done_masks & set(wanted)))

    def take_controls(self, k: int) -> list[tuple[str, str]]:
        """The next k controls, (controlled trial, mask), neither complete nor in flight: marked in flight until
        released."""
        chosen = [(t, m) for t, m in wanted_controls(self)
                  if m not in self.control_masks.get(t, set()) and (t, m) not in self.controls_in_flight][:k]
        self.controls_in_flight += chosen
        return chosen

    def take_replicate_folds(self, k: int, trial_id: str | None = None) -> list[int | None]:
        """The folds of the next k replicates of `trial_id` (None: the selected trial), marked in flight until their
        work is released (None each: the replicates vary no fold)."""
        if trial_id is None:
            assert self.selected is not None, "replicates are handed out once a trial is selected"
            trial_id = str(self.selected["trial_id"])
        folds = replicate_folds_left(self, trial_id)[:k]
        self.replicates_in_flight.setdefault(trial_id, []).extend(folds)
        return folds

    def left(self) -> Left:
        return unit_left(self.targets, self.tally())

    @property
    def phase(self) -> Phase:
        return self.left().phase

    def next_work(self, batch: int) -> Work | None:
        """The next piece of work to hand out, or None (all of the phase is in flight, or done).
        Deciding starts nothing: `start` does, once the work is handed out."""
        left = self.left()
        if left.hand_out <= 0:
            return None
        if left.phase is Phase.ANALYSE:
            return self._analysis_work()
        if left.phase is Phase.REPLICATES:  # the first trial with some to hand out: the selected one, then matched ones
            selected = self.selected
            for trial_id in ([selected["trial_id"]] if selected is not None else []) + matched_of(self):
                n = len(replicate_folds_left(self, trial_id))
                if n:
                    return Work(Phase.REPLICATES, self, min(batch, n), trial_id)
            return None
        if left.phase in TRIAL_PHASES:
            return Work(left.phase, self, min(batch, left.hand_out))
        return Work(left.phase, self)

    def _analysis_work(self) -> Work | None:
        """The trials to analyse, from their stored tensors; a trial without them stops the unit's analysis."""
        todo = list(self.tally().to_analyse)
        missing = [tid for tid in todo if not self.has_artifact(tid)]
        if missing:  # e.g. a method without artifact_tensors: nothing to rebuild the trial from
            self.analysis_failures = ANALYSIS_TRIES
            log.warning(f"unit {self.unit_id}: not analyzed, trial(s) {', '.join(missing)} have no stored tensors "
                        f"(a method without artifact_tensors/from_artifact stores none)")
            return None
        return Work(Phase.ANALYSE, self, trial_ids=todo)

    def has_work(self) -> bool:
        """Whether there is work to hand out now (work in flight does not count)."""
        return self.next_work(1) is not None

    def start(self, work: Work) -> None:
        self.in_flight[work.phase] = self.in_flight.get(work.phase, 0) + work.size

    def release(self, work: Work) -> None:
        self.in_flight[work.phase] -= work.size
        for asked in work.asked:
            handed = self.replicates_in_flight.get(asked.replicate_of or "", [])
            if asked.replicate_of is not None and asked.params.get("fold") in handed:
                handed.remove(asked.params.get("fold"))
            control = (asked.params.get("control_of"), asked.params.get("mask"))
            if control in self.controls_in_flight:
                self.controls_in_flight.remove(control)

    # ------------------------------------------------------------ results
    def count(self, row: dict[str, Any]) -> None:
        """Count one stored trials row."""
        if row["status"] == Status.COMPLETE:
            if row.get("fold") is not None:
                self.trial_folds[row["trial_id"]] = row["fold"]
            if row.get("pilot"):
                self.pilot_steps = row["steps_done"]
            elif row.get("control_of") is not None:
                self.control_masks.setdefault(row["control_of"], set()).add(row["mask"])
            elif row["replicate_of"] is None:
                self.search_rows.append(row)
            else:
                self.replicate_ids.setdefault(row["replicate_of"], []).append(row["trial_id"])
                self.replicate_rows[row["trial_id"]] = row
        elif row["status"] == Status.FAILED:
            self.failed += 1
        elif row["status"] == Status.INTERRUPTED:
            self.interrupted += 1
        elif (row["status"] == Status.PRUNED and row["replicate_of"] is None and not row.get("pilot")
              and row.get("control_of") is None):
            self.pruned += 1

    def count_rungs(self, number: int, checks: Iterable[dict[str, Any]]) -> None:
        """A finished search trial's rung checks (ASHA's history of the unit, sent with its next search work)."""
        for c in checks:
            if c["kind"] == "rung":
                entry = RungEntry(number, c["flip_rate"], c["kl_other"], c["sites_moved"])
                self.rungs.setdefault(c["step"], []).append(entry)

    def failure(self) -> None:
        """A failed trial or describe: too many in this run, and the unit is given up (a resume tries again)."""
        if self.failed >= self.targets.give_up_after and not self.gave_up:
            self.gave_up = True
            log.error(f"unit {self.unit_id} ({self.planned.spec.describe()}): {self.failed} failed trials; "
                      "giving up on it")


def note_curves(state: UnitState, trial_id: str, rows: list[dict[str, Any]]) -> None:
    """A trial's curves rows are stored: it is analysed, and its val k90 is known (controls.at_k90)."""
    state.analysed.add(trial_id)
    flips = {int(r["k"]): float(r["flip_rate"]) for r in rows
             if r["kind"] == "sufficiency" and r["split"] == "val" and r["k"] is not None}
    n_cells = next((int(r["n_cells"]) for r in rows if r.get("n_cells") is not None), None)
    state.k90s[trial_id] = k90_of(flips, n_cells) if n_cells is not None else None


def controlled_trials(state: UnitState) -> list[dict[str, Any]]:
    """The rows of the trials a unit's controls control: its selected trial, and with `controls.replicates` its
    complete replicates (none: no controls for the unit's method, or nothing selected yet)."""
    plan, selected = state.targets.controls, state.selected
    if selected is None or not plan.applies_to(state.planned.spec.method):
        return []
    replicates = state.replicate_ids.get(selected["trial_id"], []) if plan.replicates else []
    return [selected] + [state.replicate_rows[t] for t in replicates]


def wanted_controls(state: UnitState) -> list[tuple[str, str]]:
    """Every control a unit wants: (controlled trial, mask), in the order they are trained. Controls at k90 are at
    the selected trial's k90 for its replicates too: the findings page pools the seeds' controls at one k."""
    plan, rows = state.targets.controls, controlled_trials(state)
    k90 = state.k90s.get(rows[0]["trial_id"]) if rows else None
    return [(row["trial_id"], name) for row in rows for name in mask_names(plan, int(row["sites_total"]), k90)]


def search_over(state: UnitState) -> bool:
    """Whether the unit's search has its n_trials finished (complete or pruned) trials."""
    return len(state.search_rows) + state.pruned >= state.targets.n_trials


def matched_of(state: UnitState) -> list[str]:
    """The unit's search trials at its pairs' matched val kl_other (search.matched, storage/matched.py) that are not
    its selected trial (each replicated like it), once its search and its partner's are over; from stored rows, so
    a resume finds the same."""
    if not state.partners or not search_over(state) or state.selected is None:
        return []
    return matched_ids(state.search_rows, state.selected["trial_id"],
                       [p.search_rows for p in state.partners if search_over(p)])


def matched_ids(search_rows: list[dict[str, Any]], selected: str, partners_rows: Iterable[list[dict[str, Any]]]
                ) -> list[str]:
    """A unit's trials at the matched val kl_other with each partner whose search is over (partners_rows: their
    complete search rows), its selected trial left out: the one rule of matched_of and stored_matched_left."""
    found: list[str] = []
    for rows in partners_rows:
        _, mine, _ = matched_trials(search_rows, rows)
        if mine is not None and mine != selected and mine not in found:
            found.append(mine)
    return found


class StoredUnit(NamedTuple):
    """What `actscale status` knows of a unit from its stored rows, for the matched rule (stored_matched_left)."""

    pair_key: str  # model, task and its options, site and layers (as pair_key)
    method: str
    search_over: bool  # n_trials finished search trials (complete or pruned)
    selected: str | None  # the selected trial's id
    search_rows: list[dict[str, Any]]  # complete search trials (trial_id, val_kl_other, val_flip_rate)


def stored_matched_left(units: Mapping[str, StoredUnit], pairs: Iterable[tuple[str, str]], replicates: int,
                        replicates_done: Mapping[str, int]) -> dict[str, int]:
    """Per unit id: the replicates of its matched trials (search.matched) still to run, by the coordinator's rule
    (link_partners, matched_of) on stored rows alone: `actscale status` has no UnitState. replicates_done: complete
    replicates per replicated trial id."""
    pairs = list(pairs)
    by_key = {(u.pair_key, u.method): unit_id for unit_id, u in units.items()}
    left: dict[str, int] = {}
    for unit_id, unit in units.items():
        partners = [units[by_key[(unit.pair_key, m)]] for m in partner_methods(unit.method, pairs)
                    if (unit.pair_key, m) in by_key]
        found = matched_ids(unit.search_rows, unit.selected, [p.search_rows for p in partners if p.search_over]) \
            if unit.search_over and unit.selected is not None else []
        left[unit_id] = sum(max(0, replicates - 1 - replicates_done.get(t, 0)) for t in found)
    return left


def replicated_row(state: UnitState, trial_id: str) -> dict[str, Any]:
    """The search row of a trial the unit replicates (its selected trial or a matched one)."""
    return next(r for r in state.search_rows if r["trial_id"] == trial_id)


def replicate_folds_left(state: UnitState, trial_id: str, in_flight: bool = True) -> list[int | None]:
    """The folds (None each: no fold) of the replicates of `trial_id` still wanted: not complete and, with
    in_flight, not handed out either."""
    targets = state.targets
    done = state.replicate_ids.get(trial_id, [])
    handed = state.replicates_in_flight.get(trial_id, []) if in_flight else []
    if targets.replicate_folds:
        return list(replicate_folds(targets.replicates, targets.replicate_folds,
                                    [state.trial_folds.get(t) for t in done], handed))
    return [None] * max(0, targets.replicates - 1 - len(done) - len(handed))


def pair_key(state: UnitState) -> str:
    """What two units of a search.matched pair share: model, task and its options, site and layers."""
    spec = state.planned.spec
    layers = spec.layers if isinstance(spec.layers, str) else list(spec.layers)
    return json.dumps([spec.model, spec.task.name, spec.task.options_dict, spec.site, layers], sort_keys=True)


def link_partners(states: Iterable[UnitState], pairs: Iterable[tuple[str, str]]) -> None:
    """Give each unit of a search.matched pair the pair's other unit at the same model, task and site (if any)."""
    states, pairs = list(states), list(pairs)
    by_key = {(pair_key(s), s.planned.spec.method): s for s in states}
    for s in states:
        for method in partner_methods(s.planned.spec.method, pairs):
            partner = by_key.get((pair_key(s), method))
            if partner is not None and partner not in s.partners:
                s.partners.append(partner)


def partner_methods(method: str, pairs: Iterable[tuple[str, str]]) -> list[str]:
    """The methods that search.matched pairs `method` with, in the pairs' order (link_partners, stored_matched_left)."""
    return [b for first, second in pairs for a, b in ((first, second), (second, first)) if a == method]


def refresh_selections(states: Iterable[UnitState]) -> None:
    """Refresh the cached selection of every unit whose search rows changed, in one query."""
    from storage.selection import select_per_unit

    stale = [s for s in states if s.selection_stale()]
    if not stale:
        return
    by_threshold: dict[float, list[UnitState]] = {}
    for s in stale:
        by_threshold.setdefault(s.targets.min_flip, []).append(s)
    for min_flip, group in by_threshold.items():
        chosen = select_per_unit([r for s in group for r in s.search_rows], min_flip)
        for s in group:
            s.set_selection(chosen.get(s.unit_id))
