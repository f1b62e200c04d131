"""docs/querying.md is rendered from the committed real run docs/data/sample-run; the page must match."""
from __future__ import annotations

import json
import re

from storage.query import load, run_sql
from storage.query_docs import EXAMPLE_TRIAL, QUERIES, SAMPLE_RUN, render_page
from tests.generated_pages import check_generated_page


def test_querying_page_matches_the_code():
    page = render_page(SAMPLE_RUN)
    assert len(QUERIES) >= 5
    check_generated_page("querying.md", page, "rerun with ACTSCALE_WRITE_DOCS=1 (or make docs)")
    for _, _, sql in QUERIES:
        assert sql in page


def test_the_sample_run_is_a_real_run_and_its_example_trial_exists():
    run_id = json.loads((SAMPLE_RUN / "run.json").read_text())["run_id"]
    trials = load(SAMPLE_RUN, "trials")
    assert set(trials.run_id) == {run_id} and (SAMPLE_RUN / "optuna.journal").stat().st_size > 0
    assert all(re.fullmatch(r"u-[0-9a-f]{12}-t\d{5}", t) for t in trials.trial_id)
    assert EXAMPLE_TRIAL in set(trials.trial_id)
    selected, _ = run_sql([SAMPLE_RUN], "SELECT trial_id FROM selected")
    assert EXAMPLE_TRIAL in set(selected.trial_id)
    assert trials.replicate_of.notna().sum() == 4  # one replicate per unit
