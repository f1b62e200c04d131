"""What the page says its run could not measure (reports/budget.py): the full design's features the run's sweep
lacks, each with the claims it would measure, read from the committed studies and from sweeps built here."""
from __future__ import annotations

from pathlib import Path

from reports.budget import DESIGN, missing, missing_for
from search_spaces.config import load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "search_spaces" / "paper.yaml"


def _claims(found) -> dict[str, tuple[str, ...]]:
    return {m.feature.split(":")[0].split(" (")[0]: m.claims for m in found}


def test_the_paper_run_lacks_what_c6_and_c1s_baseline_need_and_says_so():
    found = _claims(missing(load_config(PAPER), load_config(DESIGN)))
    assert found["method `dynscalar`"] == found["method `dynscalar_bias`"] == ("C6",)
    assert found["method `diffmeans`"] == ("C1",)
    assert found["held-out templates"] == ("C6",)
    assert "training length from a convergence pilot" in found and "sites" in found


def test_a_run_with_the_whole_design_lacks_nothing():
    assert missing(load_config(DESIGN), load_config(DESIGN)) == []


def test_a_run_with_the_designs_methods_but_no_held_out_templates_lacks_only_those_for_c6():
    design = load_config(DESIGN).model_dump(mode="json")
    design["tasks"] = [t for t in design["tasks"] if not (t.get("options") or {}).get("heldout_templates")]
    design["methods"] = [m for m in design["methods"] if m != "dynscalar_bias"]  # only the held-out task ran it
    found = _claims(missing(parse_config(design), load_config(DESIGN)))
    assert [k for k, claims in found.items() if "C6" in claims] == ["method `dynscalar_bias`", "held-out templates"]


def test_without_the_design_file_nothing_is_claimed(tmp_path):
    assert missing_for(load_config(PAPER).model_dump(mode="json"), tmp_path / "absent.yaml") == []
