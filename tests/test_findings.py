"""docs/findings.md (reports/findings.py): generated from a tiny run made here and from runs built by hand, numbers
that cannot drift from the tables, and the committed page against the committed paper run (docs/data/paper-run)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from reports import findings
from reports.engine import Outcome
from reports.text import fmt
from storage.query import load, run_sql
from tests.findings_truth import Tables, prompts, seeds
from tests.generated_pages import DOCS, check_generated_page
from tests.sweeps import parsed, tiny_config

PAPER_RUN = DOCS / "data" / "paper-run"
PNG = b"\x89PNG\r\n\x1a\n"
INDIST = ["activscalar", "steervec", "dynscalar"]
VERDICT = re.compile(r"^\*\*Verdict (C\d): (.+?)\*\* \(", re.M)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, ray_session) -> Path:
    """search_spaces/paper.yaml's structure on tiny-gpt2: ioi and ccc with three methods, the held-out ioi
    task with DynScalar, its bias-only control and the role-aligned ActivScalar; 3 search trials, 3 seeds, a short
    strength sweep."""
    from orchestrator.coordinator import Coordinator

    config = parsed(tiny_config(
        tasks=[{"name": "ioi", "options": {"n": 24}, "methods": INDIST},
               {"name": "ccc", "options": {"n": 200}, "methods": INDIST},
               {"name": "ioi", "options": {"n": 24, "heldout_templates": ["longer"]},
                "methods": ["dynscalar", "dynscalar_bias", "activscalar_role"]}],
        sites=["mlp_out"], methods=INDIST + ["dynscalar_bias", "activscalar_role"],
        search={"n_trials": 3, "batch": 3, "replicates": 3}, train={"steps": 3, "batch_size": 8},
        analysis={"betas": [-1.0, 0.0, 0.5, 1.0, 2.0]}))
    run = tmp_path_factory.mktemp("paper-tiny")
    Coordinator(config, run, quiet=True).run()
    return run


def _page(run: Path, out: Path) -> str:
    assert findings.main([str(run), "--out", str(out / "findings.md")]) == 0
    return (out / "findings.md").read_text()


def _figures(page: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)


def _tables_are_rectangular(page: str) -> None:
    widths, block = [], []  # every row of a table has as many cells as its header
    for line in page.splitlines() + [""]:
        if line.startswith("|"):
            block.append(len(re.findall(r"(?<!\\)\|", line)))
        elif block:
            widths.append(block)
            block = []
    assert widths and all(len(set(b)) == 1 for b in widths), widths


@pytest.mark.slow
def test_page_has_every_claim_a_verdict_and_its_figures(tiny_run, tmp_path):
    page = _page(tiny_run, tmp_path)
    assert "do not edit by hand" in page and f"from run `{load(tiny_run, 'runs').run_id.iloc[0]}`" in page
    assert f"git revision `{load(tiny_run, 'runs').git_revision.iloc[0]}`" in page
    verdicts = dict(VERDICT.findall(page))
    assert sorted(verdicts) == ["C1", "C2", "C3", "C4", "C5", "C6"], verdicts
    for key, verdict in verdicts.items():
        assert verdict in findings.VERDICTS, (key, verdict)
        assert re.search(rf"^\| {key} \| .* \| \*\*{verdict}\*\* \|", page, re.M), key  # the summary agrees
    linked = _figures(page)
    assert len(linked) == 6 and all(not Path(f).is_absolute() for f in linked)
    for link in linked:
        path = tmp_path / link
        assert path.is_file() and path.read_bytes()[:8] == PNG, link
    run = findings.load_run(tiny_run, fmt)
    for claim in findings.evaluate(run):  # every threshold is printed with its value, every claim's and the shared
        for t in claim.thresholds:
            assert f"| `{t.name}` | {fmt(t.value)} |" in page
    for t in findings.general_thresholds(run):
        assert f"| `{t.name}` | {fmt(t.value)} |" in page
    _tables_are_rectangular(page)


@pytest.mark.slow
def test_c6_shows_the_role_aligned_activscalar_beside_dynscalar(tiny_run, tmp_path):
    """The held-out unit of method activscalar_role: one scalar per (layer, token role), shown in C6's rows with its
    test flip_rate and kl_other (not in the rule)."""
    units, scalars = load(tiny_run, "units"), load(tiny_run, "scalars")
    (unit_id,) = units[units.method == "activscalar_role"].unit_id.unique()
    cells = scalars[scalars.unit_id == unit_id]
    assert len(cells) and cells.position.isna().all() and {"IO", "S1", "S2", "END"} <= set(cells.role)
    c6 = _page(tiny_run, tmp_path).split("\n## C6", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"role-aligned ActivScalar \(ActivScalar_role\): test flip_rate [0-9.]+ \[[0-9.]+, [0-9.]+\], "
                     r"test kl_other [0-9.]+", c6), c6


@pytest.mark.slow
def test_the_page_lists_every_units_search_and_no_two_units_share_their_draws(tiny_run, tmp_path):
    from reports.searches import search_rows

    run = findings.load_run(tiny_run, fmt)
    rows = search_rows(run)
    units = {r.unit: [x for x in rows if x.unit == r.unit] for r in rows}
    assert len(units) == len(run.selected) and all(len(trials) == 3 for trials in units.values())
    for trials in units.values():
        assert sum(t.selected for t in trials) == 1 and any(t.on_front for t in trials)
        assert all(t.status == "complete" for t in trials if t.on_front or t.selected)
    draws = [{(t.lambda_faith, t.lambda_min, t.lr) for t in trials} for trials in units.values()]
    assert all(not (a & b) for i, a in enumerate(draws) for b in draws[i + 1:]), "two units drew the same trial"
    page = _page(tiny_run, tmp_path)
    assert "## Each unit's search" in page
    assert len(re.findall(r"^\| .* \| t0000\d \| complete \|", page, re.M)) == len(rows)


@pytest.mark.slow
def test_numbers_cannot_drift(tiny_run, tmp_path):
    """The page and its figures are the same bytes when made again, and its numbers are the tables'."""
    page_at, figures_at = tmp_path / "docs" / "findings.md", tmp_path / "docs" / "figures" / "findings"
    first = findings.render(tiny_run, page_at, figures_at)
    again = findings.render(tiny_run, page_at, figures_at, write_figures=tmp_path / "again")
    assert first == again
    for name in _figures(first):
        assert (figures_at / Path(name).name).read_bytes() == (tmp_path / "again" / Path(name).name).read_bytes()

    chosen, _ = run_sql([tiny_run], """SELECT u.task, u.site, u.method, u.task_options, s.trial_id, s.n_params
        FROM selected s JOIN units u USING (unit_id)""")
    chosen = chosen[~chosen.task_options.str.contains("heldout")].set_index(["task", "site", "method"])
    for task in ("ioi", "ccc"):  # C2: the design ratio, from trials.n_params
        a, s = (int(chosen.loc[(task, "mlp_out", m)].n_params) for m in INDIST[:2])
        assert f"| {task} / mlp_out | SteerVec / ActivScalar n_params (design) | {fmt(s / a)} ({fmt(s)} / {fmt(a)}) |" \
            in first

    trials, predictions = load(tiny_run, "trials"), load(tiny_run, "predictions")
    units = first.split("## Every unit")[1].split("## Thresholds")[0]
    for task in ("ioi", "ccc"):  # every unit: the test flip_rate, the mean over the selected trial and its seeds
        trial_id = chosen.loc[(task, "mlp_out", "activscalar")].trial_id
        group = trials[((trials.trial_id == trial_id) | (trials.replicate_of == trial_id)) & (trials.status == "complete")]
        flips = [predictions[predictions.trial_id == t].flipped.mean() for t in group.trial_id]
        assert np.isclose(np.mean(flips), group.test_flip_rate.mean())
        line = next(x for x in units.splitlines() if x.startswith(f"| {task} / mlp_out | ActivScalar |"))
        assert f"| {fmt(float(np.mean(flips)))} [" in line, line
        assert f"| {fmt(len(group))} |" in line  # replicates

    timed = trials.dropna(subset=["started_at", "ended_at"])  # the wall time, and where it comes from
    span = (timed.ended_at.max() - timed.started_at.min()).total_seconds()
    assert f"wall time {fmt(span)} s, from the trials table" in first


@pytest.mark.slow
def test_a_page_of_two_models_judges_each_and_says_whether_they_agree(tmp_path):
    """Built by hand: on m1 ActivScalar is as faithful as SteerVec, on m2 it doubles kl_other."""
    t, rng = Tables(), np.random.default_rng(0)
    test = prompts("ioi", 120)
    for model, ratio in (("m1", 1.0), ("m2", 2.0)):
        for method, kl in (("activscalar", 0.2 * ratio), ("steervec", 0.2)):
            seeds(t, t.unit(method, test, model=model), test, rng, 1.0, kl)
    page = findings.render_run(t.run(), tmp_path / "findings.md", tmp_path / "figures", source="Built by hand.")
    assert "# Findings: the claims of Stoehr et al. (2024) on `m1`, `m2`" in page
    assert "| claim | what | verdict on `m1` | verdict on `m2` | models agree | why |" in page
    assert "| C1 | As effective and as faithful as steering vectors | **supported** | **not supported** | no: `m1` " \
           "supported; `m2` not supported |" in page
    assert "**Verdict C1: `m1` supported; `m2` not supported** (the models disagree: " in page
    assert "the model " not in page.replace("the models", "")  # never "the model" where two exist
    _tables_are_rectangular(page)
    assert all((tmp_path / "figures" / f"c{i}.png").read_bytes()[:8] == PNG for i in range(1, 7))
    assert Outcome.MIXED.value in findings.VERDICTS


def test_fmt_writes_every_number_one_way():
    assert [fmt(x) for x in (0, 3584, np.int64(7), 0.125, 1 / 3, -0.0, 64.0, 1234.5, float("nan"), None)] == [
        "0", "3584", "7", "0.125", "0.333", "0", "64", "1234", "n/a", "n/a"]
    with pytest.raises(TypeError):
        fmt(True)


@pytest.mark.slow
@pytest.mark.skipif(not (PAPER_RUN / "tables").is_dir(),
                    reason="docs/data/paper-run is not committed yet: docs/findings.md has no run to be checked against")
def test_committed_findings_match_the_paper_run(tmp_path):
    """docs/findings.md is what reports/findings.py writes from docs/data/paper-run (ACTSCALE_WRITE_DOCS=1 rewrites
    the page and its figures), and its intervals are the ones the claims measure."""
    figures = DOCS / "figures" / "findings"
    write = figures if os.environ.get("ACTSCALE_WRITE_DOCS") == "1" else tmp_path
    page = findings.render(PAPER_RUN, DOCS / "findings.md", figures, write_figures=write)
    check_generated_page("findings.md", page, "rerun with ACTSCALE_WRITE_DOCS=1 pytest tests/test_findings.py")
    for link in _figures(page):
        assert (DOCS / link).is_file() and (DOCS / link).read_bytes()[:8] == PNG, f"docs/{link} is missing"
    # cross-fitted folds: every ccc unit's selected configuration tests every country its examples hold, each test
    # prompt once over its fold replicates, on both models (the design of search_spaces/paper.yaml)
    run = findings.load_run(PAPER_RUN, fmt)
    ccc = run.selected[run.selected.task == "ccc"]
    assert set(ccc.model) == {"smollm2-135m", "gemma3-270m"}
    for row in ccc.itertuples():
        trial_ids = run.replicates(str(row.trial_id))
        frames = [run.prompts(t) for t in trial_ids]
        assert len(frames) == 5 and sum(len(f) for f in frames) == len(set().union(*(f.index for f in frames)))
        e = run.examples[(run.examples.unit_id == row.unit_id) & run.examples.test_fold.notna()]
        countries = {str(list(ents)[0]) for ents in e.entities}
        assert set().union(*(set(f.cluster) for f in frames)) == countries and len(countries) >= 30, row.unit_id


@pytest.mark.skipif(not (PAPER_RUN / "tables").is_dir(), reason="docs/data/paper-run is not committed yet")
def test_the_readme_states_the_pages_verdicts():
    """README.md's table of verdicts is the committed page's, model by model (the page is checked against the run)."""
    page = (DOCS / "findings.md").read_text()
    readme = (DOCS.parent / "README.md").read_text()
    rows = re.findall(r"^\| (C\d) \| ([^|]+) \| ((?:\*\*[a-z ]+\*\* \| )+)", page, re.M)
    assert len(rows) == 6, rows
    for key, title, verdicts in rows:
        shown = " | ".join(v.strip("* ") for v in verdicts.split(" | ") if v.strip())
        assert f"| {key} {title.strip()} | {shown} |" in readme, (key, shown)


def test_the_paper_run_keeps_the_tensors_of_every_analysed_trial():
    """docs/data/paper-run keeps the learned tensors of every trial its analyses read (storage/publish.py), so that a
    curve, strength or control can be recomputed without training: each selected ActivScalar trial's stored alpha
    is the scalars its table holds, within float16's rounding."""
    from storage.publish import FP16_TOLERANCE, analysed_trials
    from storage.run_dir import RunDir

    run = RunDir(PAPER_RUN)
    kept = {p.name.removesuffix(".safetensors") for p in run.artifacts.glob("*.safetensors")}
    analysed = analysed_trials(PAPER_RUN)
    assert analysed and analysed <= kept, sorted(analysed - kept)[:5]
    selected = run_sql([PAPER_RUN], "SELECT s.trial_id, u.layers FROM selected s JOIN units u USING (unit_id) "
                                    "WHERE u.method = 'activscalar'")[0]
    assert len(selected) >= 4
    for trial_id, layers in zip(selected.trial_id, selected.layers):
        alpha = run.read_artifact(trial_id)["alpha"]  # [L, T]: L the unit's layers, in order
        cells = run_sql([PAPER_RUN], f"SELECT layer, position, value FROM scalars WHERE trial_id = '{trial_id}'")[0]
        assert len(cells) == alpha.size
        row = {int(layer): i for i, layer in enumerate(layers)}
        stored = alpha[[row[int(x)] for x in cells.layer], cells.position.to_numpy(dtype=int)]
        assert np.max(np.abs(stored - cells.value.to_numpy())) <= FP16_TOLERANCE * np.max(np.abs(alpha)), trial_id
