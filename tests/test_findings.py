"""docs/findings.md (storage/findings.py): generated from a tiny run made here, numbers that cannot drift
from the tables, and the committed page against the committed paper run (docs/data/paper-run)."""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

from orchestrator.coordinator import Coordinator
from storage import findings
from storage.query import load, run_sql
from tests.generated_pages import DOCS, check_generated_page
from tests.sweeps import parsed, tiny_config

pytestmark = pytest.mark.slow  # renders whole pages from a run: make test runs them


PAPER_RUN = DOCS / "data" / "paper-run"
PNG = b"\x89PNG\r\n\x1a\n"
INDIST = ["activscalar", "steervec", "dynscalar"]
T975 = {1: 12.706, 2: 4.303}  # two-sided 95% Student t quantiles, df 1 and 2


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, ray_session) -> Path:
    """search_spaces/paper.yaml's structure on tiny-gpt2: ioi and ccc with three methods, the held-out ioi
    task with DynScalar and its bias-only control; 3 search trials, 2 seeds, a short strength sweep."""
    config = parsed(tiny_config(
        tasks=[{"name": "ioi", "options": {"n": 24}, "methods": INDIST},
               {"name": "ccc", "options": {"n": 200}, "methods": INDIST},
               {"name": "ioi", "options": {"n": 24, "heldout_templates": ["longer"]},
                "methods": ["dynscalar", "dynscalar_bias"]}],
        sites=["mlp_out"], methods=INDIST + ["dynscalar_bias"],
        search={"n_trials": 3, "batch": 3, "replicates": 2}, train={"steps": 3, "batch_size": 8},
        analysis={"betas": [-1.0, 0.0, 0.5, 1.0, 2.0]}))
    run = tmp_path_factory.mktemp("paper-tiny")
    Coordinator(config, run, quiet=True).run()
    return run


def _page(run: Path, out: Path) -> str:
    assert findings.main([str(run), "--out", str(out / "findings.md")]) == 0
    return (out / "findings.md").read_text()


def _figures(page: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)


def test_page_has_every_claim_a_verdict_and_its_figures(tiny_run, tmp_path):
    page = _page(tiny_run, tmp_path)
    assert "do not edit by hand" in page and f"from run `{load(tiny_run, 'runs').run_id.iloc[0]}`" in page
    assert f"git revision `{load(tiny_run, 'runs').git_revision.iloc[0]}`" in page
    for key in ("C1", "C2", "C3", "C4", "C5", "C6"):
        verdicts = re.findall(rf"^\*\*Verdict {key}: ([a-z ]+)\*\*", page, re.M)
        assert len(verdicts) == 1 and verdicts[0] in findings.VERDICTS, (key, verdicts)
        assert re.search(rf"^\| {key} \| .* \| \*\*{verdicts[0]}\*\* \|", page, re.M), key  # the summary agrees
    linked = _figures(page)
    assert len(linked) == 6 and all(not Path(f).is_absolute() for f in linked)
    for link in linked:
        path = tmp_path / link
        assert path.is_file() and path.read_bytes()[:8] == PNG, link
    for name, value, _ in findings.THRESHOLDS:  # every threshold is printed with its value
        assert f"| `{name}` | {findings.fmt(value)} |" in page
    widths, block = [], []  # every row of a table has as many cells as its header
    for line in page.splitlines() + [""]:
        if line.startswith("|"):
            block.append(len(re.findall(r"(?<!\\)\|", line)))
        elif block:
            widths.append(block)
            block = []
    assert widths and all(len(set(b)) == 1 for b in widths), widths


def test_numbers_cannot_drift(tiny_run, tmp_path):
    """The page and its figures are the same bytes when made again, and its numbers are the tables'."""
    page_at, figures_at = tmp_path / "docs" / "findings.md", tmp_path / "docs" / "figures" / "findings"
    first = findings.render(tiny_run, page_at, figures_at)
    again = findings.render(tiny_run, page_at, figures_at, write_figures=tmp_path / "again")
    assert first == again
    for name in _figures(first):
        assert (figures_at / Path(name).name).read_bytes() == (tmp_path / "again" / Path(name).name).read_bytes()

    fmt = findings.fmt
    chosen, _ = run_sql([tiny_run], """SELECT u.task, u.site, u.method, u.task_options, s.trial_id, s.n_params,
        s.test_flip_rate FROM selected s JOIN units u USING (unit_id)""")
    chosen = chosen[~chosen.task_options.str.contains("heldout")].set_index(["task", "site", "method"])
    ratios = []
    for task in ("ioi", "ccc"):  # C2: the n_params of each method and their ratio
        a, s, d = (int(chosen.loc[(task, "mlp_out", m)].n_params) for m in INDIST)
        ratios.append(s / a)
        assert f"| {task} / mlp_out | {fmt(a)} | {fmt(s)} | {fmt(s / a)} | {fmt(d)} |" in first
    c2 = "supported" if all(r >= findings.C2_MIN_RATIO for r in ratios) else "mixed" if any(
        r >= findings.C2_MIN_RATIO for r in ratios) else "not supported"
    assert f"**Verdict C2: {c2}**" in first

    trials = load(tiny_run, "trials")
    predictions = load(tiny_run, "predictions")
    for task in ("ioi", "ccc"):  # C1: the selected ActivScalar trial's test flip_rate, over prompts and over seeds
        row = chosen.loc[(task, "mlp_out", "activscalar")]
        seeds = trials[(trials.trial_id == row.trial_id) | (trials.replicate_of == row.trial_id)]
        seeds = seeds[seeds.status == "complete"].test_flip_rate.to_numpy()
        assert len(seeds) == 2
        mean = seeds.mean()
        half = T975[len(seeds) - 1] * seeds.std(ddof=1) / math.sqrt(len(seeds))
        n = int((predictions.trial_id == row.trial_id).sum())
        flips = predictions[predictions.trial_id == row.trial_id].flipped.to_numpy(dtype=float)
        assert np.isclose(flips.mean(), row.test_flip_rate)
        cell = (f"seeds {fmt(mean)} [{fmt(max(0.0, mean - half))}, {fmt(min(1.0, mean + half))}]; "
                f"prompts {fmt(row.test_flip_rate)}")
        line = next(x for x in first.splitlines() if x.startswith(f"| {task} / mlp_out | 2 / 2 | "))
        assert line.split(" | ")[2].startswith(cell) and f"(n={fmt(n)}" in line.split(" | ")[2], (cell, line)

    timed = trials.dropna(subset=["started_at", "ended_at"])  # the wall time, and where it comes from
    span = (timed.ended_at.max() - timed.started_at.min()).total_seconds()
    assert f"wall time {fmt(span)} s, from the trials table" in first


def _t(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% Student t interval, unclipped, written out here (not storage.seeds)."""
    v = np.asarray(values, dtype=float)
    if len(v) == 1:
        return float(v[0]), float(v[0]), float(v[0])
    half = T975[len(v) - 1] * float(v.std(ddof=1)) / math.sqrt(len(v))
    return float(v.mean()), float(v.mean()) - half, float(v.mean()) + half


def _strength_step(curves, trial_id: str):
    """C5 for one seed, straight from the curves table: its val flip_rate at beta 1, and (low, high, test gain,
    test kl_other cost), None without a val effect."""
    rows = curves[(curves.trial_id == trial_id) & (curves.kind == "strength") & curves.beta.between(0, 1)]
    val, test = (rows[rows.split == split].set_index("beta") for split in ("val", "test"))
    full = float(val.flip_rate.get(1.0, np.nan))
    if not full > 0:
        return full, None
    low, high = (float(val.index[val.flip_rate >= share * full - 1e-9].min())
                 for share in (findings.C5_LOW, findings.C5_HIGH))
    return full, (low, high, test.flip_rate[high] - test.flip_rate[low], test.kl_other[high] - test.kl_other[low])


def test_c5_numbers_are_the_curves(tiny_run, tmp_path):
    """C5's strength table: every in-distribution unit has a row, and the ActivScalar rows' numbers are recomputed
    here from the curves table (points on val, gain and cost on test, t intervals over seeds)."""
    fmt = findings.fmt
    page = findings.render(tiny_run, tmp_path / "findings.md", tmp_path / "figures")
    c5 = page.split("## C5:")[1].split("## C6:")[0]
    strength = c5.split("**Strength**")[1].split("**Cells**")[0]
    rows = [x for x in strength.splitlines() if x.startswith("| ") and not x.startswith("| unit |")]
    assert len(rows) == 2 * len(INDIST), rows  # ioi and ccc, every method: nothing dropped
    curves, trials = load(tiny_run, "curves"), load(tiny_run, "trials")
    chosen, _ = run_sql([tiny_run], """SELECT u.task, u.task_options, s.trial_id FROM selected s JOIN units u
        USING (unit_id) WHERE u.method = 'activscalar' AND u.site = 'mlp_out'""")
    for task, trial_id in zip(chosen.task, chosen.trial_id):
        reps = trials[(trials.replicate_of == trial_id) & (trials.status == "complete")].trial_id
        seeds = [trial_id] + sorted(reps)
        steps = [_strength_step(curves, t) for t in seeds]
        line = next(x for x in rows if x.startswith(f"| {task} / mlp_out / ActivScalar | "))
        full = steps[0][0]
        done = [s[1] for s in steps if s[1] is not None and s[1][0] != s[1][1]]  # two distinct points
        if not full >= findings.MIN_EFFECT:
            assert f"left out: val flip_rate {fmt(full)} < MIN_EFFECT" in line, line
            continue
        low, high = steps[0][1][:2]
        assert f"| {fmt(len(done))} of {fmt(len(seeds))} |" in line and f"| beta {fmt(low)} to {fmt(high)} |" in line
        if len(done) < findings.C5_MIN_SEEDS:  # the grid cannot tell the step: listed, not judged
            assert "| not judged: " in line, line
            continue
        gain, cost = _t([d[2] for d in done]), _t([d[3] for d in done])
        for text in (f"{fmt(gain[0])} [{fmt(gain[1])}, {fmt(gain[2])}]", f"{fmt(cost[0])} [{fmt(cost[1])}, {fmt(cost[2])}]"):
            assert f"| {text} |" in line or f"| {text} (" in line, (text, line)
        shown = cost[1] > 0 and gain[1] > 0
        assert line.endswith("| yes |" if shown else "| no |"), line


def _curve_rows(trial_id: str, kind: str, split: str, points: list[float], flips: list[float], kls: list[float],
                n_cells: int = 20) -> list[dict]:
    column = "beta" if kind == "strength" else "k"
    rows = []
    for x, flip, kl in zip(points, flips, kls):
        row = dict(trial_id=trial_id, unit_id="u", run_id="r", kind=kind, split=split, k=None, beta=None,
                   n_cells=n_cells, n_prompts=10, ld_before=1.0)
        row[column] = x
        for metric, value in (("flip_rate", flip), ("ld_after", 1.0 - flip), ("kl_other", kl)):
            row.update({metric: value, f"{metric}_lo": value, f"{metric}_hi": value})
        rows.append(row)
    return rows


def test_c5_step_by_hand():
    """Two seeds: the points are decided on val (seed 2 reaches half its effect only at 0.75 and 90% only at 1),
    the gain and cost read on test; k / cells for the cells path; a unit without a val effect is left out."""
    import pandas as pd

    betas, ks = [-1.0, 0.0, 0.25, 0.5, 0.75, 1.0, 2.0], [0, 1, 4, 16, 20]
    rows = (_curve_rows("t1", "strength", "val", betas, [0, 0, .2, .6, .95, 1, 1], [.3, 0, .01, .04, .09, .16, .5])
            + _curve_rows("t1", "strength", "test", betas, [0, 0, .1, .5, .9, 1, 1], [.3, 0, .01, .04, .09, .16, .5])
            + _curve_rows("t2", "strength", "val", betas, [0, 0, .1, .4, .8, 1, 1], [.3, 0, .01, .02, .05, .15, .5])
            + _curve_rows("t2", "strength", "test", betas, [0, 0, .1, .3, .7, .95, 1], [.3, 0, .01, .02, .05, .15, .5])
            + _curve_rows("t1", "sufficiency", "val", ks, [0, 0, .3, .7, 1], [0] * 5)
            + _curve_rows("t1", "sufficiency", "test", ks, [0, 0, .2, .5, .8], [0] * 5)
            + _curve_rows("t2", "sufficiency", "val", ks, [0, .5, .9, .95, 1], [0] * 5)
            + _curve_rows("t2", "sufficiency", "test", ks, [0, .4, .9, .9, .9], [0] * 5)
            + _curve_rows("t3", "strength", "val", betas, [0, 0, 0, 0, 0, .05, .1], [0] * 7))
    curves = pd.DataFrame(rows)
    t = findings.tradeoff(curves, ["t1", "t2"], findings.STRENGTH)
    assert [(s.low, s.high) for s in t.steps] == [(0.5, 0.75), (0.75, 1.0)]
    assert np.allclose([s.gain for s in t.steps], [.4, .25]) and np.allclose([s.cost for s in t.steps], [.05, .1])
    assert np.allclose(t.over_seeds("cost"), _t([.05, .1])) and np.allclose(t.over_seeds("price"), _t([.125, .4]))
    assert t.judged and not t.shown  # two seeds: the t interval of the cost reaches below 0
    cells = findings.tradeoff(curves, ["t1", "t2"], findings.CELLS)
    assert [(s.low, s.high) for s in cells.steps] == [(16, 20), (1, 4)]
    assert np.allclose([s.cost for s in cells.steps], [4 / 20, 3 / 20]) and np.allclose(
        [s.gain for s in cells.steps], [.3, .5])
    none = findings.tradeoff(curves, ["t3"], findings.STRENGTH)
    assert none.status.startswith("left out: val flip_rate 0.05") and not none.judged and not none.shown
    missing = findings.tradeoff(curves, ["t3"], findings.CELLS)
    assert missing.status == "left out: no such curve"


def test_fmt_writes_every_number_one_way():
    fmt = findings.fmt
    assert [fmt(x) for x in (0, 3584, np.int64(7), 0.125, 1 / 3, -0.0, 64.0, 1234.5, float("nan"), None)] == [
        "0", "3584", "7", "0.125", "0.333", "0", "64", "1234", "n/a", "n/a"]
    assert findings.verdict([True, True]) == "supported" and findings.verdict([True, False]) == "mixed"
    assert findings.verdict([]) == findings.verdict([False]) == "not supported"


@pytest.mark.skipif(not (PAPER_RUN / "tables").is_dir(),
                    reason="docs/data/paper-run is not committed yet: docs/findings.md has no run to be checked against")
def test_committed_findings_match_the_paper_run(tmp_path):
    """docs/findings.md is what storage/findings.py writes from docs/data/paper-run (ACTSCALE_WRITE_DOCS=1 rewrites
    the page and its figures)."""
    figures = DOCS / "figures" / "findings"
    write = figures if os.environ.get("ACTSCALE_WRITE_DOCS") == "1" else tmp_path
    page = findings.render(PAPER_RUN, DOCS / "findings.md", figures, write_figures=write)
    check_generated_page("findings.md", page, "rerun with ACTSCALE_WRITE_DOCS=1 pytest tests/test_findings.py")
    for link in _figures(page):
        assert (DOCS / link).is_file() and (DOCS / link).read_bytes()[:8] == PNG, f"docs/{link} is missing"
