"""docs/sweep-config.md is generated from the sweep schema; the committed page must match."""
from __future__ import annotations

import os
from pathlib import Path

from search_spaces.config import Search, SweepConfig, Train
from search_spaces.config_docs import render_page

PAGE = Path(__file__).resolve().parents[1] / "docs" / "sweep-config.md"


def test_sweep_config_page_matches_the_schema():
    page = render_page()
    if os.environ.get("ACTSCALE_WRITE_DOCS") == "1":
        PAGE.write_text(page)
    assert PAGE.read_text() == page, "docs/sweep-config.md is stale: rerun with ACTSCALE_WRITE_DOCS=1"


def test_every_key_is_documented_with_a_meaning():
    page = render_page()
    for prefix, model in (("", SweepConfig), ("search.", Search), ("train.", Train)):
        for name, field in model.model_fields.items():
            assert field.description, f"{prefix}{name} has no description"
            assert f"| `{prefix}{name}` |" in page
    for key in ("selection.min_flip", "search.replicates", "search.replicate_data", "search.space.lambda_faith",
                "search.method_space", "resources.models_at_once"):
        assert f"`{key}`" in page
