"""What the page says its run could not measure (reports/budget.py): the full design's main features the run's
sweep lacks, each with the claims it would add units to, read from the committed studies and from sweeps built
here."""
from __future__ import annotations

from pathlib import Path

from reports.budget import DESIGN, Missing, missing, missing_for
from search_spaces.config import load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "search_spaces" / "paper.yaml"


def _by_name(found: list[Missing]) -> dict[str, Missing]:
    return {m.name: m for m in found}


def test_the_paper_run_lacks_what_c6_needs_and_says_what_only_stands_beside_a_verdict():
    found = _by_name(missing(load_config(PAPER), load_config(DESIGN)))
    for name in ("method `dynscalar`", "method `dynscalar_bias`", "held-out templates", "ioi prompts per template"):
        assert found[name].makes_units and "C6" in found[name].judged, found[name]
    assert found["ioi prompts per template"].design == "150" and found["ioi prompts per template"].run == "20"
    diffmeans = found["method `diffmeans`"]
    assert diffmeans.judged == () and diffmeans.beside == ("C1",)
    assert diffmeans.claims_text() == "beside C1 (not judged)"
    aligned = found["method `activscalar_role`"]  # a row beside C6's verdict, not in its rule
    assert aligned.judged == () and aligned.beside == ("C6",)
    assert found["strengths beyond 1"].judged == () and found["strengths beyond 1"].beside == ("C4",)
    assert "training length from a convergence pilot" in found and "sites" in found
    assert found["retrained mask controls"].run.startswith("at k90; 5 random-k")
    matched = found["replicates of C1's matched trials"]  # C1's flip at matched kl_other needs their replicates
    assert matched.judged == ("C1",) and not matched.makes_units and matched.run == "none"


def test_a_run_with_the_whole_design_lacks_nothing():
    assert missing(load_config(DESIGN), load_config(DESIGN)) == []


def test_a_run_with_the_designs_methods_but_no_held_out_templates_lacks_only_those_for_c6():
    design = load_config(DESIGN).model_dump(mode="json")
    design["tasks"] = [t for t in design["tasks"] if not (t.get("options") or {}).get("heldout_templates")]
    # only the held-out task ran them
    design["methods"] = [m for m in design["methods"] if m not in ("dynscalar_bias", "activscalar_role")]
    found = _by_name(missing(parse_config(design), load_config(DESIGN)))
    assert [k for k, m in found.items() if m.makes_units and "C6" in m.judged] == [
        "method `dynscalar_bias`", "held-out templates"]


def test_a_run_without_controls_says_so():
    paper = load_config(PAPER).model_dump(mode="json")
    paper["controls"]["enabled"] = False
    found = _by_name(missing(parse_config(paper), load_config(DESIGN)))
    assert found["retrained mask controls"].run == "none"


def test_a_sweep_that_cannot_be_read_or_no_design_gives_no_comparison(tmp_path):
    assert missing_for(load_config(PAPER).model_dump(mode="json"), tmp_path / "absent.yaml") is None
    assert missing_for({"selection": {"min_flip": 0.9}}) is None  # a stored sweep the schema does not accept
