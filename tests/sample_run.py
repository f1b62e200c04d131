"""A small, deterministic run directory made of generated rows (two tiny models, two methods).

Used by the storage and report tests; values come from a seeded RNG so that pages generated
from it do not drift. Each unit has `trials_per_unit` search trials (SteerVec's last one
failed), one interrupted trial, and one replicate of its selected trial, so every status and
the seed statistics appear. (docs/querying.md is rendered from a real run instead.)
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
from pathlib import Path

from storage.schema import HYPER_PARAMS, METRICS, SPLITS_REPORTED
from storage.selection import select_rows
from storage.store import RunStore

MODELS = {"tiny-gpt2": 4, "tiny-llama": 6}
METHODS = ("activscalar", "steervec")
ROLES = ["When", "IO", "and", "S1", "went", "to", "the", "PLACE", ",", "S2", "gave", "a", "OBJECT", "END"]
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


ERRORS = {"failed": "loss is not finite (nan) at step 3",
          "interrupted": "interrupted: the worker died (ActorDiedError); re-run"}


def trial_row(rng: random.Random, unit_id: str, run_id: str, number: int, status: str = "complete",
              replicate_of: str | None = None) -> dict:
    row = dict(trial_id=f"{unit_id}-t{number:05d}", unit_id=unit_id, run_id=run_id, trial_number=number,
               status=status, error=ERRORS.get(status), resample_train=False, replicate_of=replicate_of,
               lambda_faith=round(rng.uniform(0.1, 3), 4), lambda_min=round(10 ** rng.uniform(-4, -1), 6),
               lr=round(10 ** rng.uniform(-3, -1), 5), steps=60, batch_size=32, seed=number,
               n_params=56, sites_moved=rng.randint(1, 20), sites_total=56, steps_done=60,
               wall_s=round(rng.uniform(1, 3), 3),
               tokens_per_s=round(rng.uniform(1e3, 5e3), 1), worker_node="127.0.0.1",
               started_at=T0 + dt.timedelta(seconds=10 * number), ended_at=T0 + dt.timedelta(seconds=10 * number + 3))
    for split in SPLITS_REPORTED:
        for metric in METRICS[:6]:  # the metrics of the first schema: the random draws (and every number) stay
            row[f"{split}_{metric}"] = None if status != "complete" else round(rng.uniform(0, 1), 4)
    assert set(HYPER_PARAMS) <= set(row)
    return row


def make_sample_run(run_dir: Path, run_id: str = "run-sample", trials_per_unit: int = 4, seed: int = 0,
                    per_layer: bool = False) -> Path:
    """per_layer: one unit per layer of each model and method (a `layers: each` sweep)."""
    rng = random.Random(seed)
    store = RunStore(run_dir, flush_rows=10_000, flush_seconds=3600)
    store.write_now("runs", [dict(run_id=run_id, created_at=T0, config_yaml="models: [tiny-gpt2, tiny-llama]\n",
                                  package_version="0.1.0", git_revision="sample", host="localhost")])
    for model, n_layers in MODELS.items():
        for method in METHODS:
            for layers in ([[layer] for layer in range(n_layers)] if per_layer else [list(range(n_layers))]):
                key = f"{model}/{method}" + (f"/{layers}" if per_layer else "")
                unit_id = "u-" + hashlib.sha256(key.encode()).hexdigest()[:12]
                store.append("units", [dict(unit_id=unit_id, run_id=run_id, model=model, model_revision="tiny-seed0",
                                            n_layers=n_layers, d_model=64, task="ioi", task_options="{}", task_hash="abc123",
                                            site="mlp_out", layers=layers, method=method,
                                            settings=json.dumps({"steps": 60}), n_train=90, n_val=45, n_test=45,
                                            counts=json.dumps({"total": 360}), base_accuracy=0.5, mean_ld=0.1,
                                            moved_measure="|alpha-1|" if method == "activscalar" else "|v|/mean|h|",
                                            moved_threshold=0.1, min_split=3, warnings=[],
                                            value_identity=1.0 if method == "activscalar" else 0.0)])
                for split, n in (("train", 3), ("test", 3)):
                    store.append("examples", [dict(unit_id=unit_id, run_id=run_id, split=split, index=i, prompt=f"prompt {i}",
                                                   answer_a=" Mary", answer_b=" John", template="t", roles=ROLES,
                                                   ld_before=round(rng.uniform(0, 2), 4),
                                                   entities=[f"pair{split}{i}"]) for i in range(n)])
                numbers = [(n, "failed" if n == trials_per_unit - 1 and method == "steervec" else "complete")
                           for n in range(trials_per_unit)] + [(trials_per_unit, "interrupted"), (trials_per_unit + 1, None)]
                search_rows = []
                for number, status in numbers:
                    replicate_of = None
                    if status is None:  # the replicate of the selected trial, by the project's one rule
                        status, replicate_of = "complete", select_rows(search_rows, 0.9)["trial_id"]
                    trial = trial_row(rng, unit_id, run_id, number, status, replicate_of)
                    store.append("trials", [trial])
                    if status != "complete":
                        continue
                    if replicate_of is None:
                        search_rows.append(trial)
                    scalars = []
                    for layer in layers:
                        for pos, role in enumerate(ROLES):
                            value = 1 + rng.gauss(0, 0.05) + (0.8 if (role == "S2" and layer == n_layers // 2) else 0)
                            effect = abs(value - 1)
                            if method == "steervec":
                                value = effect
                            scalars.append(dict(trial_id=trial["trial_id"], unit_id=unit_id, run_id=run_id, model=model, task="ioi",
                                                site="mlp_out", method=method, layer=layer,
                                                rel_depth=layer / (n_layers - 1), position=pos, role=role, head=None,
                                                n_prompts=45, mean_position=float(pos),
                                                value=round(value, 5), effect=round(effect, 5), moved=effect > 0.1))
                    store.append("scalars", scalars)
                    lds = [round(rng.uniform(-2, 1), 4) for _ in range(3)]
                    store.append("predictions", [dict(trial_id=trial["trial_id"], unit_id=unit_id, run_id=run_id, index=i,
                                                      ld_before=1.0, ld_after=ld, kl_other=round(rng.uniform(0, 0.5), 4),
                                                      flipped=ld < 0)
                                                 for i, ld in enumerate(lds)])
                    if replicate_of is not None:  # an analyzed trial: the ends of its curves and strength sweep
                        n_cells = len(layers) * len(ROLES)
                        points = [("sufficiency", 0, None), ("sufficiency", n_cells, None), ("strength", None, 0.0),
                                  ("strength", None, 1.0)]
                        store.append("curves", [dict(trial_id=trial["trial_id"], unit_id=unit_id, run_id=run_id, kind=kind,
                                                     split=split, k=k, n_cells=n_cells, beta=beta, n_prompts=3,
                                                     ld_before=1.0, flip_rate=flip, flip_rate_lo=flip, flip_rate_hi=flip,
                                                     ld_after=1.0 - 2 * flip, ld_after_lo=1.0 - 2 * flip,
                                                     ld_after_hi=1.0 - 2 * flip, kl_other=0.1 * flip,
                                                     kl_other_lo=0.1 * flip, kl_other_hi=0.1 * flip)
                                                for kind, k, beta in points for split in ("val", "test")
                                                for flip in [1.0 if k == n_cells or beta == 1.0 else 0.0]])
                        _checks_and_patching(store, run_id, unit_id, trial["trial_id"], model, layers, n_layers)
    store.flush()
    return Path(run_dir)


def _checks_and_patching(store: RunStore, run_id: str, unit_id: str, trial_id: str, model: str, layers: list[int],
                         n_layers: int) -> None:
    """A few rows of the tables added with schema 6 (training checks, patching), from their own generator so
    that every value drawn above stays as it was."""
    rng = random.Random(trial_id)
    store.append("checks", [dict(run_id=run_id, unit_id=unit_id, trial_id=trial_id, kind="pilot", step=step,
                                 loss=round(1 / step, 4), flip_rate=round(rng.uniform(0, 1), 4),
                                 kl_other=round(rng.uniform(0, 0.5), 4), l1=round(rng.uniform(0, 5), 4), sites_moved=3)
                            for step in (10, 20, 30)])
    store.append("patching", [dict(run_id=run_id, unit_id=unit_id, model=model, task="ioi", site="mlp_out", layer=layer,
                                   rel_depth=layer / (n_layers - 1), position=pos, role=role, head=None, kind="activation",
                                   split="test", effect=(e := round(rng.uniform(0, 1), 4)), effect_lo=e, effect_hi=e,
                                   n_prompts=3)
                              for layer in layers for pos, role in enumerate(ROLES)])
