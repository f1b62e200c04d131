"""Explicit Arrow schemas of the result tables (docs/architecture.md, Tables).

Every part file carries `actscale.table` and `actscale.schema_version` in its Parquet
metadata; readers accept the versions in READABLE_VERSIONS (an older part's missing columns
read as NULL) and refuse anything else by name.
"""
from __future__ import annotations

from enum import StrEnum

import pyarrow as pa

SCHEMA_VERSION = 6  # 2: sites_moved/sites_total, replicates, interrupted rows, cell effects, entities;
# 3: cells by role for prompts of several shapes (scalars.n_prompts, mean_position), units.min_split, warnings,
# value_identity (what the report draws as a scale, without importing the method); 4: trials.precision,
# trials.stop_reason and status pruned (early stopping and pruning); 5: the model's identity in units (MODEL_IDENTITY)
# and units.near_chance; 6: cross-fitted folds (units.n_folds, trials.fold and replicate_kind, predictions.cluster,
# template and fold, examples.test_fold), the normalised shift and top-1 share (trials {split}_ld_shift,
# {split}_top1_b; curves.ld_shift), the convergence pilot (trials.pilot, table checks), masked retraining controls
# (trials.mask, mask_cells, control_of), the test's size (trials.n_test, n_test_clusters), table patching
READABLE_VERSIONS = (4, 5, 6)  # an older part reads as version 6 with the columns it lacks NULL
NEAR_CHANCE = 0.6  # units.near_chance: base accuracy below this (chance is 0.5); workers/prepare.py warns by it
META_TABLE = b"actscale.table"
META_VERSION = b"actscale.schema_version"
META_SUPERSEDES = b"actscale.supersedes"  # a compacted part: the names of the parts it holds
SPLITS_REPORTED = ("val", "test")
# ld_shift: mean over prompts of (LD - LD') / (2 LD), 1 = the full swap to -LD, 0 = no change; top1_b: the share of
# prompts whose top-1 token over the whole vocabulary is answer b after the intervention
METRICS = ("flip_rate", "ld_before", "ld_after", "kl_other", "mass_shift", "l1", "ld_shift", "top1_b")
HYPER_PARAMS = ("lambda_faith", "lambda_min", "lr", "steps", "batch_size", "seed")


class Status(StrEnum):
    """Values of trials.status. `interrupted`: cut off by a crash or a dead worker and re-run
    under a new trial number; `failed`: the trial's own computation failed (error says why);
    `pruned`: stopped by the unit's pruning rule, scored where it stopped (stop_reason says why),
    never selected, and counted in the search's n_trials."""

    COMPLETE = "complete"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    PRUNED = "pruned"


_ts = pa.timestamp("us", tz="UTC")

# Who the model of a unit is (workers/names.py holds the facts of the built-in models), beside units.model,
# model_revision, n_layers and d_model: the family, config.model_type, the checkpoint (base, instruct, random
# weights), the file its weights were read from and its sha256, the quantisation they were dequantised from
# (NULL: none), the precision the unit trained in (fp32 | bf16) and the one every metric is evaluated in, the
# licence and where its terms are. NULL where unknown (a Hugging Face model says less), and in version-4 parts.
MODEL_IDENTITY = ("model_family", "model_type", "model_checkpoint", "model_source", "model_source_sha256",
                  "model_quantisation", "train_dtype", "eval_dtype", "model_licence", "model_licence_url")

RUNS = pa.schema([
    ("run_id", pa.string()), ("created_at", _ts), ("config_yaml", pa.string()),
    ("package_version", pa.string()), ("git_revision", pa.string()), ("host", pa.string()),
])

UNITS = pa.schema([
    ("unit_id", pa.string()), ("run_id", pa.string()), ("model", pa.string()), ("model_revision", pa.string()),
    ("n_layers", pa.int32()), ("d_model", pa.int32()), ("task", pa.string()), ("task_options", pa.string()),
    ("task_hash", pa.string()), ("site", pa.string()), ("layers", pa.list_(pa.int32())), ("method", pa.string()),
    ("settings", pa.string()), ("n_train", pa.int32()), ("n_val", pa.int32()), ("n_test", pa.int32()),
    ("counts", pa.string()), ("base_accuracy", pa.float64()), ("mean_ld", pa.float64()),
    ("moved_measure", pa.string()), ("moved_threshold", pa.float64()),
    ("min_split", pa.int32()), ("warnings", pa.list_(pa.string())), ("value_identity", pa.float64()),
] + [(name, pa.string()) for name in MODEL_IDENTITY] + [("near_chance", pa.bool_()), ("n_folds", pa.int32())])

TRIALS = pa.schema(
    [("trial_id", pa.string()), ("unit_id", pa.string()), ("run_id", pa.string()), ("trial_number", pa.int32()),
     ("status", pa.string()), ("error", pa.string())]
    + [(name, pa.float64() if name in ("lambda_faith", "lambda_min", "lr") else pa.int32()) for name in HYPER_PARAMS]
    + [(f"{split}_{metric}", pa.float64()) for split in SPLITS_REPORTED for metric in METRICS]
    + [("resample_train", pa.bool_()), ("replicate_of", pa.string())]
    + [("n_params", pa.int64()), ("sites_moved", pa.int64()), ("sites_total", pa.int64()),
       ("steps_done", pa.int32()), ("stop_reason", pa.string()), ("precision", pa.string()), ("wall_s", pa.float64()),
       ("tokens_per_s", pa.float64()), ("worker_node", pa.string()), ("started_at", _ts), ("ended_at", _ts)]
    # fold: the cross-fitted fold the trial trained and was tested on (NULL: one split); replicate_kind: what a
    # replicate varies ('seed' | 'bootstrap' | 'fold'; NULL: not a replicate); pilot: the convergence pilot that
    # set the unit's steps (never selected); mask, mask_cells, control_of: a retraining control restricted to a
    # cell mask (its description, its number of cells) and the selected trial it controls (never selected);
    # n_test, n_test_clusters: the test prompts behind its test metrics and their distinct grouping keys
    + [("fold", pa.int32()), ("replicate_kind", pa.string()), ("pilot", pa.bool_()), ("mask", pa.string()),
       ("mask_cells", pa.int32()), ("control_of", pa.string()), ("n_test", pa.int32()), ("n_test_clusters", pa.int32())]
)

SCALARS = pa.schema([
    ("trial_id", pa.string()), ("unit_id", pa.string()), ("run_id", pa.string()), ("model", pa.string()),
    ("task", pa.string()),
    ("site", pa.string()), ("method", pa.string()), ("layer", pa.int32()), ("rel_depth", pa.float64()),
    ("position", pa.int32()), ("role", pa.string()), ("head", pa.int32()), ("n_prompts", pa.int32()),
    ("mean_position", pa.float64()), ("value", pa.float64()), ("effect", pa.float64()), ("moved", pa.bool_()),
])

EXAMPLES = pa.schema([
    ("unit_id", pa.string()), ("run_id", pa.string()), ("split", pa.string()), ("index", pa.int32()),
    ("prompt", pa.string()),
    ("answer_a", pa.string()), ("answer_b", pa.string()), ("template", pa.string()),
    ("roles", pa.list_(pa.string())), ("ld_before", pa.float64()), ("entities", pa.list_(pa.string())),
    ("test_fold", pa.int32()),  # the cross-fitted fold whose test holds the example (NULL: one split, or dropped)
])

PREDICTIONS = pa.schema([
    ("trial_id", pa.string()), ("unit_id", pa.string()), ("run_id", pa.string()), ("index", pa.int32()),
    ("ld_before", pa.float64()), ("ld_after", pa.float64()), ("kl_other", pa.float64()), ("flipped", pa.bool_()),
    # the prompt's grouping key (its first entity: an IOI name pair, the asked country; else its template), for
    # intervals over prompt clusters; its template; the fold whose test it is in (NULL: one split)
    ("cluster", pa.string()), ("template", pa.string()), ("fold", pa.int32()),
])

# What a trial's cells do (workers/analysis.py), for a unit's selected trial and its replicates:
# kind `sufficiency` keeps only the k cells of largest effect (the others set to identity), `necessity`
# sets only those k to identity, `strength` applies every learned value at strength beta
# (alpha' = 1 + beta (alpha - 1); v' = beta v). k is null for strength, beta null for the curves.
# Each metric is the mean over the split's prompts with a 95% bootstrap interval over prompts.
CURVE_KINDS = ("sufficiency", "necessity", "strength")
CURVE_METRICS = ("flip_rate", "ld_after", "kl_other", "ld_shift")
CURVES = pa.schema(
    [("trial_id", pa.string()), ("unit_id", pa.string()), ("run_id", pa.string()), ("kind", pa.string()),
     ("split", pa.string()), ("k", pa.int32()), ("n_cells", pa.int32()), ("beta", pa.float64()),
     ("n_prompts", pa.int32()), ("ld_before", pa.float64())]
    + [(f"{metric}{end}", pa.float64()) for metric in CURVE_METRICS for end in ("", "_lo", "_hi")]
)

# The checks of a trial's training on the val check slice (workers/stopping.py, the convergence pilot, pruning
# rungs): one row per check, kind 'pilot' | 'patience' | 'rung'.
CHECKS = pa.schema([
    ("run_id", pa.string()), ("unit_id", pa.string()), ("trial_id", pa.string()), ("kind", pa.string()),
    ("step", pa.int32()), ("loss", pa.float64()), ("flip_rate", pa.float64()), ("kl_other", pa.float64()),
    ("l1", pa.float64()), ("sites_moved", pa.int64()),
])

# Per-cell patching of the unintervened model (workers/patching.py), keyed like the scalars table: kind
# 'activation' (the cell's activation replaced by the counterfactual prompt's; effect = the share of the
# swap LD -> LD_cf it causes, mean over prompts), 'attribution' (its first-order estimate from one forward and
# backward), and for head cells 'attn_to_io', 'attn_to_s2' (attention of the final position) and 'dla' (direct
# logit attribution of the head's output to LD). effect_lo/hi: 95% bootstrap over prompts.
PATCH_KINDS = ("activation", "attribution", "attn_to_io", "attn_to_s2", "dla")
PATCHING = pa.schema([
    ("run_id", pa.string()), ("unit_id", pa.string()), ("model", pa.string()), ("task", pa.string()),
    ("site", pa.string()), ("layer", pa.int32()), ("rel_depth", pa.float64()), ("position", pa.int32()),
    ("role", pa.string()), ("head", pa.int32()), ("kind", pa.string()), ("split", pa.string()),
    ("effect", pa.float64()), ("effect_lo", pa.float64()), ("effect_hi", pa.float64()), ("n_prompts", pa.int32()),
])

SCHEMAS: dict[str, pa.Schema] = {
    "runs": RUNS, "units": UNITS, "trials": TRIALS, "scalars": SCALARS,
    "examples": EXAMPLES, "predictions": PREDICTIONS, "curves": CURVES, "checks": CHECKS, "patching": PATCHING,
}


def schema_for(table: str) -> pa.Schema:
    """The table's schema with its version metadata attached."""
    if table not in SCHEMAS:
        raise KeyError(f"unknown table {table!r}; tables: {', '.join(SCHEMAS)}")
    return SCHEMAS[table].with_metadata({META_TABLE: table.encode(), META_VERSION: str(SCHEMA_VERSION).encode()})
