"""docs/sweep-config.md is generated from the sweep schema; the committed page must match."""
from __future__ import annotations

from search_spaces.config import Search, SweepConfig, Train
from search_spaces.config_docs import render_page
from tests.generated_pages import check_generated_page


def test_sweep_config_page_matches_the_schema():
    check_generated_page("sweep-config.md", render_page())


def test_every_key_is_documented_with_a_meaning():
    page = render_page()
    for prefix, model in (("", SweepConfig), ("search.", Search), ("train.", Train)):
        for name, field in model.model_fields.items():
            assert field.description, f"{prefix}{name} has no description"
            assert f"| `{prefix}{name}` |" in page
    for key in ("selection.min_flip", "search.replicates", "search.replicate_data", "search.space.lambda_faith",
                "search.method_space", "resources.models_at_once"):
        assert f"`{key}`" in page
