"""Property-based tests (hypothesis) of ids, the store and the objective."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.plan import plan_units
from search_spaces.config import parse_config
from storage.store import RunStore, read_table
from workers.objective import effectiveness_per_prompt, kl_other_per_prompt

MODELS = ["tiny-gpt2", "tiny-llama", "tiny-neox"]
SITES = ["attn_out", "mlp_out", "resid_post", "head"]
METHODS = ["activscalar", "steervec", "dynscalar"]


def _ids(models, sites, methods, tasks):
    config = parse_config({"models": models, "tasks": tasks, "sites": sites, "methods": methods})
    return {(u.spec.model, u.spec.task.name, u.spec.site, u.spec.method): u.unit_id for u in plan_units(config, lambda m: 4)}


@given(st.permutations(MODELS), st.permutations(SITES), st.permutations(METHODS), st.permutations(["ioi", "ccc"]))
@settings(max_examples=25, deadline=None)
def test_unit_ids_are_stable_under_reordering_and_unique(models, sites, methods, tasks):
    ids = _ids(models, sites, methods, tasks)
    assert ids == _ids(MODELS, SITES, METHODS, ["ioi", "ccc"])
    assert len(set(ids.values())) == len(ids)


@given(st.lists(st.tuples(st.integers(1, 30), st.booleans()), min_size=1, max_size=12), st.randoms())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_appends_and_crashes_leave_the_store_consistent(steps, rnd):
    """Each step appends rows; a 'crash' drops the unflushed buffer and leaves a torn temp file."""
    root = Path(tempfile.mkdtemp())
    try:
        store, durable, next_id = RunStore(root, flush_rows=10), set(), 0
        for count, crash in steps:
            rows = [dict(trial_id=f"t{next_id + i}", unit_id="u", index=0, ld_before=0.0, ld_after=0.0,
                         kl_other=0.0, flipped=False) for i in range(count)]
            next_id += count
            pending = {r["trial_id"] for r in store._buffers["predictions"]} | {r["trial_id"] for r in rows}
            if store.append("predictions", rows):
                durable |= pending
            if crash:
                (root / "tables" / "predictions" / f".tmp-part-{rnd.random()}.parquet").write_bytes(b"torn")
                store = RunStore(root, flush_rows=rnd.randint(1, 20))  # restart: buffer lost, temp files cleaned
        result = read_table(root, "predictions")
        ids = result.table.column("trial_id").to_pylist()
        assert not result.problems and len(ids) == len(set(ids)) and set(ids) == durable
        assert not list(root.rglob(".tmp-*"))
    finally:
        shutil.rmtree(root)


logits = st.lists(st.floats(-20, 20, allow_nan=False), min_size=5, max_size=12)


@given(logits, logits, st.randoms())
@settings(max_examples=60, deadline=None)
def test_faithfulness_is_nonnegative_and_zero_when_others_agree(before, after, rnd):
    n = min(len(before), len(after))
    p, q = torch.tensor([before[:n]]), torch.tensor([after[:n]])
    a, b = rnd.sample(range(n), 2)
    ai, bi = torch.tensor([a]), torch.tensor([b])
    assert kl_other_per_prompt(p, q, ai, bi).item() >= 0
    same = p.clone()
    same[0, a], same[0, b] = q[0, a], q[0, b]  # differ only at the answers, plus a constant shift
    assert kl_other_per_prompt(p, same + 3.0, ai, bi).item() < 1e-5


@given(st.floats(-8, 8, allow_nan=False).filter(lambda x: abs(x) > 0.05), st.floats(-0.5, 0.5))
@settings(max_examples=60, deadline=None)
def test_effectiveness_is_smallest_at_the_exact_swap(ld_before, offset):
    before = torch.tensor([ld_before], dtype=torch.float64)
    at_swap = effectiveness_per_prompt(-before, before)
    elsewhere = effectiveness_per_prompt(-before + offset, before)
    assert at_swap.item() <= elsewhere.item() + 1e-12
