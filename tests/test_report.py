"""`actscale report`: figures, HTML and Markdown from a run of two tiny models."""
from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from orchestrator.cli import main
from reports.report import heatmap_matrix, pareto_front, render, select_trials, task_variants
from storage.query import load
from storage.selection import select_rows
from tests.sample_run import make_sample_run


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    run = make_sample_run(root / "run")
    assert main(["report", str(run), "--out", str(root / "out")]) == 0
    return run, root / "out"


def test_every_figure_is_a_sensible_png_referenced_by_the_page(report):
    run, out = report
    page = (out / "index.html").read_text()
    figures = sorted((out / "figures").glob("*.png"))
    kinds = {f.name.split("-")[0] for f in figures}
    assert kinds == {"heatmap", "seeds", "across", "depth", "tradeoff", "curves", "strength", "relk"}
    assert len([f for f in figures if f.name.startswith("heatmap")]) == 4  # 2 models x 2 methods
    for f in figures:
        with Image.open(f) as image:
            image.verify()
        with Image.open(f) as image:
            w, h = image.size
            assert 300 <= w <= 4000 and 200 <= h <= 3000, (f.name, image.size)
            assert len(np.unique(np.asarray(image.convert("L")))) > 20  # not blank
        assert f'src="figures/{f.name}"' in page
    assert 'id="table-methods"' in page and "tiny-llama" in page and "models: [tiny-gpt2, tiny-llama]" in page
    summary = (out / "summary.md").read_text()
    methods = summary.split("## What the cells do")[0]  # the methods table: a row per selected trial
    assert methods.count("| tiny-") == 4 and re.search(r"\[\d\.\d{3}, \d\.\d{3}\]", summary)
    assert "sites moved / total" in summary and "| 12 / 56 | 56 |" in summary and "(fallback)" in summary
    assert "n_active" not in page + summary


def test_heatmap_values_equal_the_scalars_table(report):
    run, _ = report
    trials, scalars = load(run, "trials"), load(run, "scalars")
    for trial_id in select_trials([run], trials).trial_id:
        s = scalars[scalars.trial_id == trial_id]
        matrix, layers, labels, _ = heatmap_matrix(s)
        for row in s.itertuples():
            assert matrix[layers.index(row.layer), row.position] == row.value
        assert labels[:4] == ["When", "IO", "and", "S1"]


def test_report_selects_by_the_one_rule_and_pareto_front(report):
    run, _ = report
    trials = load(run, "trials")
    chosen = select_trials([run], trials)
    for row in chosen.itertuples():
        unit = trials[(trials.unit_id == row.unit_id) & (trials.status == "complete") & trials.replicate_of.isna()]
        records = unit.astype(object).where(unit.notna(), None).to_dict("records")
        assert row.trial_id == select_rows(records, 0.9)["trial_id"]
    front = pareto_front(np.array([[1.0, 0.5], [2.0, 0.9], [3.0, 0.7], [0.5, 0.1]]))
    assert front.tolist() == [[0.5, 0.1], [1.0, 0.5], [2.0, 0.9]]


def test_report_is_deterministic(report, tmp_path):
    run, out = report
    assert main(["report", str(run), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "index.html").read_text() == (out / "index.html").read_text()
    assert (tmp_path / "summary.md").read_text() == (out / "summary.md").read_text()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_page_renders_in_headless_chromium(report, tmp_path):
    _, out = report

    def chromium(*args):
        result = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,3000", *args],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    shot = tmp_path / "page.png"
    chromium(f"--screenshot={shot}", (out / "index.html").as_uri())
    with Image.open(shot) as image:
        assert image.size == (1400, 3000) and len(np.unique(np.asarray(image.convert("L")))) > 50

    # Every figure must load and decode in the browser, not just be referenced. A copy of the page gets a
    # script that, on window load (all images loaded or failed), records how many <img> decoded, the total,
    # the failures and the rendered height; --dump-dom prints it. <base> keeps the figures' relative paths.
    probe_script = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0);
  const marker = document.createElement("div");
  marker.id = "loaded-images";
  marker.dataset.height = String(document.documentElement.scrollHeight);
  marker.dataset.broken = imgs.filter(i => !ok.includes(i)).map(i => i.getAttribute("src")).join(" ");
  marker.textContent = ok.length + "/" + imgs.length;
  document.body.appendChild(marker);
});
</script>"""
    page = (out / "index.html").read_text()
    n_img = len(re.findall(r"<img\b", page))
    assert n_img > 0 and page.count("<head>") == 1 and page.count("</body>") == 1
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("<head>", f'<head><base href="{out.as_uri()}/">')
                     .replace("</body>", probe_script + "</body>"))
    dom = chromium("--run-all-compositor-stages-before-draw", "--virtual-time-budget=10000", "--dump-dom",
                   probe.as_uri())
    found = re.search(r'<div id="loaded-images" data-height="(\d+)" data-broken="([^"]*)">(\d+)/(\d+)</div>', dom)
    assert found, dom[-2000:]
    height, broken, loaded, total = int(found[1]), found[2], int(found[3]), int(found[4])
    assert (loaded, total, broken) == (n_img, n_img, ""), f"{loaded}/{total} images loaded; broken: {broken}"
    assert height > 1000, height


@pytest.mark.slow
def test_two_runs_of_the_same_units_are_reported_apart(tmp_path):
    """Trial ids repeat across runs of the same unit: rows, seeds and figures must not mix."""
    one = make_sample_run(tmp_path / "one", run_id="r1", seed=1)
    two = make_sample_run(tmp_path / "two", run_id="r2", seed=2)
    made = render([one, two], tmp_path / "out")
    assert len(made["heatmaps"]) == len({m["file"] for m in made["heatmaps"]}) == 8
    summary = (tmp_path / "out" / "summary.md").read_text()
    methods = summary.split("## What the cells do")[0]
    assert methods.count("| tiny-") == 8 and "| 2 |" in methods  # each selected trial: itself and one replicate


@pytest.mark.slow
def test_units_that_differ_only_in_their_layers_get_figures_and_rows_of_their_own(tmp_path):
    """A `layers: each` sweep: one unit per layer of each model and method. Each unit's figures
    are its own files (none overwrites another's) and its rows say which layer it is."""
    run = make_sample_run(tmp_path / "run", per_layer=True)
    made = render([run], tmp_path / "out")
    n_units = 2 * (4 + 6)  # two methods x (4 + 6 layers)
    for key in ("heatmaps", "tradeoffs", "seeds"):
        files = [m["file"] for m in made[key]]
        assert len(files) == len(set(files)) == n_units, (key, files[:4])
    assert "layers-3" in " ".join(m["file"] for m in made["heatmaps"])
    curves = [m["file"] for m in made["curves"]]
    assert len(curves) == len(set(curves)) == 10, curves  # one per model and layer, both methods in it
    summary = (tmp_path / "out" / "summary.md").read_text()
    methods = summary.split("## What the cells do")[0]
    assert methods.count("| tiny-") == n_units and "(layers: 5)" in methods


def test_layer_labels_are_decided_across_models_and_sort_by_layer():
    """Model a has all layers and one unit per layer; model b has all layers only: b's unit is
    labelled too ("all", like a's), so a figure across models still pairs them; labels are
    zero-padded to the deepest model, so layer 2 sorts before layer 10."""
    import pandas as pd

    rows = [dict(unit_id="a-all", model="a", layers=list(range(12)), n_layers=12)]
    rows += [dict(unit_id=f"a-{i}", model="a", layers=[i], n_layers=12) for i in range(12)]
    rows += [dict(unit_id="b-all", model="b", layers=list(range(4)), n_layers=4),
             dict(unit_id="c-all", model="c", layers=list(range(4)), n_layers=4)]
    units = pd.DataFrame([dict(r, task="ioi", task_options="{}", site="mlp_out", method="m") for r in rows])
    units.loc[units.unit_id == "c-all", "site"] = "attn_out"  # another site: one layer set, no label
    variants = task_variants(units)
    assert variants["a-all"] == variants["b-all"] == "layers: all"
    assert variants["a-2"] == "layers: 02" and variants["a-10"] == "layers: 10"
    assert sorted(variants[f"a-{i}"] for i in range(12)) == [f"layers: {i:02d}" for i in range(12)]
    assert variants["c-all"] == ""
