"""What a trained trial's cells do: sufficiency and necessity curves, and its strength sweep.

A cell is (layer, column[, head]) as in the scalars table (workers/columns.py), ranked by the
same effect that decides `moved` (`Intervention.cells`). For k on a log-spaced grid:
- sufficiency: only the k cells of largest effect act, every other cell is left as the model
  has it (k = 0: the model itself; k = all: the trial);
- necessity: only those k cells are set back to identity (k = all: the model itself).
k90, the fewest top cells keeping 90% of the val flip_rate, is then found to within 10% (`analyze_trial`'s
`k90_within`) by bisecting the grid's bracket around it on val.
The strength sweep applies every learned value at strength beta (`Intervention.from_artifact`):
beta = 0 is the model itself and beta = 1 the trial.

Cells are masked per token (`interventions.only_cells`: `torch.where`, so "all kept" is exactly
the trial and "none kept" exactly the model), which works for any method that keeps the contract
(`transform` acts per token; cells are (layer, column[, head])). The points of one split run as the
K "trials" of one batched forward (`PointBatch`, a composition of the points' interventions),
scored by `workers.scoring.score`, the function that scores trials.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from workers.errors import UsageError
from workers.interventions import CellRecorder, CellStats, ForwardContext, Intervention, method_class, only_cells
from workers.k90 import K90_FRACTION, k90_of
from workers.models import LoadedModel
from workers.names import ANALYSIS_PRECISIONS, STRENGTHS
from workers.objective import flipped, normalised_shift
from workers.precision import evaluation_model, training_model
from workers.prepare import PreparedUnit, SplitData, give_own_logits
from workers.scoring import score, site_norms
from workers.sites import SiteRef, resolve_site

BOOTSTRAP_SAMPLES = 1000
POINTS_PER_FORWARD = 8  # curve points scored in one batched forward


def k_grid(n_cells: int, step: int = 2) -> list[int]:
    """0, 1, step, step^2, ... (below n_cells), n_cells: log-spaced up to all cells."""
    grid = [0]
    k = 1
    while k < n_cells:
        grid.append(k)
        k *= step
    return grid + [n_cells]


@dataclass
class Point:
    kind: str  # sufficiency, necessity or strength
    k: int | None
    beta: float | None
    intervention: Intervention  # K = 1
    keep: torch.Tensor  # [L, C + 1(, H)] bool: cells where the intervention acts (column C: roles unseen on val)


class PointBatch:
    """K points as the K trials of one forward, by composition (an `interventions.Acting`): point j's
    intervention acts on the j-th block of the batch, only at the tokens of its kept cells. Each
    token's column comes in the forward's context (`ctx.token_columns`, [K*B, T])."""

    def __init__(self, points: list[Point]):
        self.points = points
        self.refs = points[0].intervention.refs
        self.n_trials = len(points)
        self.n_heads = self.refs[0].n_heads

    def transform(self, index: int, h: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        k = self.n_trials
        assert ctx.token_columns is not None, "the points' cells need each token's column"
        blocks = h.reshape((k, h.shape[0] // k) + h.shape[1:]).unbind(0)  # K x [B, T, W]
        columns = ctx.token_columns.reshape(k, -1, ctx.token_columns.shape[1])[:, :, : h.shape[1]]  # [K, B, T]
        masks = ctx.token_mask.reshape(k, -1, ctx.token_mask.shape[1])  # [K, B, T]
        roles = None if ctx.token_roles is None else ctx.token_roles.reshape(k, -1, ctx.token_roles.shape[1])  # [K, B, T]
        out = []
        for j, (point, x) in enumerate(zip(self.points, blocks)):
            inner = ForwardContext(masks[j], token_roles=roles[j] if roles is not None else None)
            changed = point.intervention.transform(index, x, inner)  # [B, T, W]
            out.append(only_cells(x, changed, point.keep[index], columns[j], self.n_heads))
        return torch.cat(out)

    def minimality(self, ctx: ForwardContext) -> torch.Tensor:
        return torch.zeros(self.n_trials)


def _token_columns(unit: PreparedUnit, split: str, n_columns: int) -> torch.Tensor:
    """Each token's cell column on a split, [N, T], numbered as on val (where the cells were
    measured); a role val does not have gets column n_columns."""
    if unit.n_positions is not None or unit.roles is not None:  # positions, or the vocabulary's fixed roles
        return unit.cell_columns(split)[1]
    val_columns = unit.cell_columns("val")[0]
    index = {c.role: i for i, c in enumerate(val_columns)}
    columns, ids = unit.cell_columns(split)
    lookup = torch.tensor([index.get(c.role, n_columns) for c in columns])
    return lookup[ids]


def _cell_effects(loaded: LoadedModel, unit: PreparedUnit, trial: Intervention, refs: list[SiteRef]) -> torch.Tensor:
    """The trial's effect per cell [L, C(, H)], measured as the trainer measures it."""
    settings = unit.spec.settings
    norms = site_norms(loaded, refs, unit.splits["train"], settings.eval_batch) if trial.needs_norms else None
    recorder = None
    if trial.records_cells:  # cells recorded on val
        columns, column_ids = unit.cell_columns("val")
        recorder = CellRecorder(len(columns))
        score(loaded, trial, refs, unit.splits["val"], first_layer=unit.first_layer, batch_rows=settings.eval_batch,
              token_columns=column_ids, recorder=recorder)
    return trial.cells(0, CellStats(norms, recorder))[1]


def _keep_masks(effects: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sufficiency, necessity) masks [L, C + 1(, H)]: the k cells of largest effect act / are
    the only ones not acting. The extra column (roles val lacks) acts only in the full trial."""
    n = effects.numel()
    order = torch.argsort(effects.flatten(), descending=True, stable=True)
    top = torch.zeros(n, dtype=torch.bool)
    top[order[:k]] = True
    top = top.reshape(effects.shape)
    pad_shape = (effects.shape[0], 1) + tuple(effects.shape[2:])
    extra = torch.full(pad_shape, k == n)
    sufficiency = torch.cat([top, extra], dim=1)
    necessity = torch.cat([~top, ~extra], dim=1)
    return sufficiency, necessity


def _bootstrap(per_prompt: torch.Tensor, generator_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """95% percentile interval of the mean over prompts for each row: [P, N] -> (lo [P], hi [P]). NaN entries
    (the normalised shift of a prompt with LD = 0) are left out of each mean."""
    n = per_prompt.shape[1]
    gen = torch.Generator().manual_seed(generator_seed)
    idx = torch.randint(n, (BOOTSTRAP_SAMPLES, n), generator=gen)  # [S, N]
    means = per_prompt[:, idx].nanmean(-1)  # [P, S]
    return means.nanquantile(0.025, dim=1), means.nanquantile(0.975, dim=1)


def _distinct(points: list[Point]) -> tuple[list[Point], list[int]]:
    """Points that compute the same thing (the same intervention and cells: e.g. sufficiency at
    k = all, necessity at k = 0 and beta = 1 are all the trial) are scored once: the distinct
    points, and for each point the index of its distinct one."""
    distinct: list[Point] = []
    keys: dict[tuple, int] = {}
    index = []
    for point in points:
        key = (id(point.intervention), point.keep.numpy().tobytes())
        if key not in keys:
            keys[key] = len(distinct)
            distinct.append(point)
        index.append(keys[key])
    return distinct, index


@dataclass
class Scorer:
    """The model the analysis' points run on, with its sites and the splits as it sees them. Under
    `precision: train` on a unit that trains in bf16, that is the bf16 training model, scored against its own
    unintervened logits (`give_own_logits`), so that k = 0 and beta = 0 are exactly the model in either precision;
    else the fp32 evaluation model against the fp32 logits (the trial's reported metrics)."""

    loaded: LoadedModel
    refs: list[SiteRef]
    splits: dict[str, SplitData]
    own: bool  # score against the splits' own_logits (the bf16 model's) instead of the fp32 logits
    n_columns: int

    @classmethod
    def for_unit(cls, loaded: LoadedModel, unit: PreparedUnit, refs: list[SiteRef], n_columns: int,
                 precision: str) -> Scorer:
        if precision not in ANALYSIS_PRECISIONS:
            raise UsageError(f"analysis.precision={precision!r}; accepted: {', '.join(ANALYSIS_PRECISIONS)}")
        evaluates = evaluation_model(loaded)
        runs_on = evaluates if precision == "fp32" else training_model(loaded, unit.precision)
        if runs_on is evaluates:
            return cls(evaluates, refs, dict(unit.splits), False, n_columns)
        splits = {}
        for name in ("val", "test"):
            seen = dataclasses.replace(unit.splits[name])  # a shallow copy: its own logits and prefix set next
            give_own_logits(seen, runs_on, unit.spec.settings.eval_batch, unit.first_layer or None)
            splits[name] = seen
        return cls(runs_on, resolve_site(runs_on.model, unit.spec.site, unit.layers), splits, True, n_columns)


def _score(scorer: Scorer, unit: PreparedUnit, points: list[Point], split_name: str) -> list[dict]:
    """One row per point; each distinct point is evaluated once."""
    distinct, index = _distinct(points)
    scored = _score_distinct(scorer, unit, distinct, split_name)
    return [dict(scored[i], kind=point.kind, k=point.k, beta=point.beta) for point, i in zip(points, index)]


def _score_distinct(scorer: Scorer, unit: PreparedUnit, points: list[Point], split_name: str) -> list[dict]:
    split: SplitData = scorer.splits[split_name]
    columns = _token_columns(unit, split_name, scorer.n_columns)
    rows = []
    for start in range(0, len(points), POINTS_PER_FORWARD):
        chunk = points[start:start + POINTS_PER_FORWARD]
        scores = score(scorer.loaded, PointBatch(chunk), scorer.refs, split, first_layer=unit.first_layer,
                       batch_rows=unit.spec.settings.eval_batch, own=scorer.own, token_columns=columns)
        ld_after, kl = scores.ld_after, scores.kl_other  # [P, N]
        ld_before = scores.ld_before  # [N] the scoring model's own unintervened LD
        flips = flipped(ld_after, ld_before[None]).float()  # [P, N]
        shift = normalised_shift(ld_after, ld_before[None])  # [P, N], NaN where LD = 0
        stats = {}
        for name, values in (("flip_rate", flips), ("ld_after", ld_after), ("kl_other", kl), ("ld_shift", shift)):
            lo, hi = _bootstrap(values)
            stats[name] = (values.nanmean(1), lo, hi)
        for j, point in enumerate(chunk):
            row = dict(kind=point.kind, split=split_name, k=point.k, beta=point.beta, n_prompts=len(split),
                       ld_before=float(ld_before.mean()))
            for name, (mean, lo, hi) in stats.items():
                row.update({name: float(mean[j]), f"{name}_lo": float(lo[j]), f"{name}_hi": float(hi[j])})
            rows.append(row)
    return rows


def k90_bracket(rows: list[dict], n_cells: int, fraction: float = K90_FRACTION) -> tuple[int, int] | None:
    """(k_lo, k_hi) from val sufficiency rows: k_hi is k90 (workers.k90.k90_of: the smallest scored k reaching
    `fraction` of the full trial's flip_rate), k_lo the largest scored k below it; None where the trial flips
    nothing."""
    points = {r["k"]: r["flip_rate"] for r in rows if r["kind"] == "sufficiency" and r["split"] == "val"}
    k_hi = k90_of(points, n_cells, fraction)
    if k_hi is None:
        return None
    below = [k for k in points if k < k_hi]
    return (max(below) if below else k_hi), k_hi


def _narrow_enough(k_lo: int, k_hi: int, within: float) -> bool:
    """The bracket pins k90 down: neighbouring integers, or k_hi at most (1 + within) times k_lo."""
    return k_hi - k_lo <= 1 or k_hi <= (1 + within) * k_lo


def split_point(k_lo: int, k_hi: int) -> int | None:
    """The k that halves the bracket (k_lo, k_hi) in log space (from 1 where k_lo is 0); None when they are
    neighbours. One point per round: on a CPU a forward costs in proportion to its rows, so bisection (about
    log2(log(ratio) / log(1 + within)) rounds) scores the fewest points."""
    if k_hi - k_lo <= 1:
        return None
    middle = round(math.sqrt(max(k_lo, 1) * k_hi))
    return min(max(middle, k_lo + 1), k_hi - 1)


def analyze_trial(loaded: LoadedModel, unit: PreparedUnit, tensors: dict[str, torch.Tensor],
                  betas: tuple[float, ...] = STRENGTHS, curves: bool = True, k_step: int = 2,
                  k90_within: float | None = 0.1, val_all: bool = False, precision: str = "train") -> list[dict]:
    """Curves and strength rows (columns of the curves table, without the ids) for one stored trial.

    Test gets every point. Val gets what a decision reads, the sufficiency curve (k90 is decided on it), unless
    `val_all` asks for val necessity and strength rows too. With `k90_within`, k90 (the fewest top cells keeping
    K90_FRACTION of the val flip_rate) is found to within that ratio: the grid's bracket around it is bisected on
    val (one sufficiency point per round), then the found k90 is scored both ways on test (and as necessity on
    val with `val_all`). The cells are ranked on the fp32 model (as the scalars table's `moved` is); the points
    run in `precision` (`Scorer`)."""
    evaluates = evaluation_model(loaded)
    method = method_class(unit.spec.method)
    refs = resolve_site(evaluates.model, unit.spec.site, unit.layers)
    trial = method.from_artifact(refs, tensors).to(evaluates.device)
    effects = _cell_effects(evaluates, unit, trial, refs)  # [L, C(, H)]
    n_cells = effects.numel()
    scorer = Scorer.for_unit(loaded, unit, refs, effects.shape[1], precision)
    all_cells = torch.ones((effects.shape[0], effects.shape[1] + 1) + tuple(effects.shape[2:]), dtype=torch.bool)
    points = []
    if curves:
        for k in k_grid(n_cells, k_step):
            sufficiency, necessity = _keep_masks(effects, k)
            points += [Point("sufficiency", k, None, trial, sufficiency), Point("necessity", k, None, trial, necessity)]
    for beta in betas:
        at_beta = trial if beta == 1.0 else method.from_artifact(refs, tensors, beta).to(evaluates.device)
        points.append(Point("strength", None, beta, at_beta, all_cells))
    val_points = [p for p in points if val_all or p.kind == "sufficiency"]
    with torch.no_grad():
        rows = _score(scorer, unit, val_points, "val")
        test_points = list(points)
        if curves and k90_within:
            rows += _refine_k90(scorer, unit, trial, effects, rows, k90_within)
            k90 = k90_bracket(rows, n_cells)
            if k90 is not None and k90[1] not in set(k_grid(n_cells, k_step)):
                sufficiency, necessity = _keep_masks(effects, k90[1])
                if val_all:
                    rows += _score(scorer, unit, [Point("necessity", k90[1], None, trial, necessity)], "val")
                test_points += [Point("sufficiency", k90[1], None, trial, sufficiency),
                                Point("necessity", k90[1], None, trial, necessity)]
        rows += _score(scorer, unit, test_points, "test")
    return [dict(row, n_cells=n_cells) for row in rows]


def _refine_k90(scorer: Scorer, unit: PreparedUnit, trial: Intervention, effects: torch.Tensor,
                val_rows: list[dict], within: float) -> list[dict]:
    """Val sufficiency rows at the k that bisect k90's bracket down to `within` (none where the grid already
    does)."""
    n_cells = effects.numel()
    found: list[dict] = []
    bracket = k90_bracket(val_rows, n_cells)
    while bracket is not None and not _narrow_enough(*bracket, within):
        k = split_point(*bracket)
        if k is None:
            break
        point = Point("sufficiency", k, None, trial, _keep_masks(effects, k)[0])
        found += _score(scorer, unit, [point], "val")
        bracket = k90_bracket(val_rows + found, n_cells)
    return found
