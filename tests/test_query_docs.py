"""docs/querying.md is rendered from a generated run; the committed page must match."""
from __future__ import annotations

import os
from pathlib import Path

from storage.query_docs import QUERIES, render_page
from tests.sample_run import make_sample_run

PAGE = Path(__file__).resolve().parents[1] / "docs" / "querying.md"


def test_querying_page_matches_the_code(tmp_path):
    page = render_page(make_sample_run(tmp_path / "run"))
    assert len(QUERIES) >= 5
    if os.environ.get("ACTSCALE_WRITE_DOCS") == "1":
        PAGE.write_text(page)
    assert PAGE.read_text() == page, "docs/querying.md is stale: rerun with ACTSCALE_WRITE_DOCS=1"
    for _, _, sql in QUERIES:
        assert sql in page
