"""The built-in quickstart on the embedded model: every unit completes, the selected ActivScalar
trial flips IOI on test, methods compare in one unit, replicates give a seed overlap, the
report renders. (How long it takes is a benchmark figure, not a test: bench/throughput.py.)"""
from __future__ import annotations

import re

import pytest

from orchestrator.cli import main
from orchestrator.sweep_cmds import unit_status
from storage.query import load, run_sql
from tests.sweeps import check_run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700), pytest.mark.usefixtures("ray_session")]


def test_quickstart_completes_and_its_selected_activscalar_trial_flips_ioi(tmp_path, capsys):
    run = tmp_path / "qs"
    assert main(["run", "--out", str(run), "--quiet"]) == 0
    check_run(run, n_trials=4, n_units=2, replicates=2)
    chosen, _ = run_sql([run], "SELECT u.method, s.* FROM selected s JOIN units u USING (unit_id) ORDER BY u.method")
    print(chosen[["method", "trial_id", "selected_by", "val_flip_rate", "test_flip_rate", "test_kl_other",
                  "sites_moved", "sites_total", "n_params"]].to_string(index=False))
    activ = chosen[chosen.method == "activscalar"].iloc[0]
    steer = chosen[chosen.method == "steervec"].iloc[0]
    assert activ.selected_by == "min_flip" and activ.val_flip_rate >= 0.9
    assert activ.test_flip_rate >= 0.9
    # the same cells for both methods; parameters differ by the width of a vector
    assert activ.sites_total == steer.sites_total == activ.n_params and steer.n_params == 576 * steer.sites_total
    assert 0 < activ.sites_moved < activ.sites_total
    units = load(run, "units")
    assert set(units.moved_measure) == {"|alpha-1|", "|v|/mean|h|"} and (units.moved_threshold > 0).all()
    rows = unit_status(run)
    print(rows)
    assert all(r["replicates"] == 1 and 0 <= r["seed_jaccard"] <= 1 for r in rows)
    assert main(["report", str(run)]) == 0
    summary = (run / "report" / "summary.md").read_text()
    assert "sites moved / total" in summary and "moved Jaccard" in summary
    assert len(list((run / "report" / "figures").glob("seeds-*.png"))) == 2
    # the analysis on the embedded model: removing the cells that carry the effect removes it
    assert (run / "report" / "figures" / "curves-smollm2-135m-ioi-mlp_out.png").exists()
    curves = load(run, "curves")
    for trial_id in chosen.trial_id:
        mine = curves[(curves.trial_id == trial_id) & (curves.split == "test")]
        full = mine[(mine.kind == "sufficiency") & (mine.k == mine.n_cells)].flip_rate.item()
        # the trial itself, up to a prompt at LD' ~ 0 that another batch layout rounds the other way
        assert abs(full - chosen[chosen.trial_id == trial_id].test_flip_rate.item()) <= 1.5 / mine.n_prompts.iloc[0]
        assert mine[(mine.kind == "necessity") & (mine.k == mine.n_cells)].flip_rate.item() == 0.0
        strength = mine[mine.kind == "strength"].sort_values("beta")
        assert strength[strength.beta == 0].flip_rate.item() == 0.0
        assert strength.ld_after.is_monotonic_decreasing or strength.ld_after.iloc[-1] < strength.ld_after.iloc[0]

    # its log (no terminal): a progress line only when a model's counts changed
    progress = [re.sub(r", [\d.]+/s, ETA [^,]+", "", line.split(" INFO ", 1)[1])
                for line in (run / "actscale.log").read_text().splitlines() if " trials, " in line and "ETA" in line]
    assert progress and all(a != b for a, b in zip(progress, progress[1:])), progress

    # steering with the selected ActivScalar trial: a test prompt it flipped swaps its answer at beta = 1
    # and keeps it at beta = 0
    from orchestrator.steer_cmd import steer_prompt

    flipped = run_sql([run], f"SELECT e.prompt FROM predictions p JOIN examples e ON e.unit_id = p.unit_id "
                             f"AND e.split = 'test' AND e.index = p.index WHERE p.trial_id = '{activ.trial_id}' "
                             "AND p.flipped ORDER BY p.ld_after LIMIT 1")[0].prompt.iloc[0]  # the clearest flip
    for beta in (1.0, 0.0):
        effect = steer_prompt(str(run), flipped, beta=beta, trial_id=activ.trial_id, max_new_tokens=3)
        print(beta, effect)
        (a_before, b_before), (a_after, b_after) = effect.p_without, effect.p_with
        assert a_before > b_before and effect.ld_without > 0  # the model's own answer is a
        assert len(effect.top_without) == len(effect.top_with) == 5
        if beta == 1.0:
            assert b_after > a_after and effect.ld_with < 0, effect  # swapped
        else:
            assert (effect.p_with, effect.ld_with, effect.top_with, effect.continuation_with) == \
                (effect.p_without, effect.ld_without, effect.top_without, effect.continuation_without)

    # ... and on a prompt of one's own (the trained template, other words), with two answers given
    own = "When Anna and Peter went to the store, Peter gave a drink to"
    capsys.readouterr()
    assert main(["steer", str(run), "--trial", activ.trial_id, "--prompt", own, "--answers", " Anna", " Peter"]) == 0
    out = capsys.readouterr().out
    print(out)
    lines = out.splitlines()
    for label in ("continues", "p(' Anna')", "p(' Peter')", "LD = z_A - z_B", "top 1", "top 5"):
        assert any(line.startswith(label + " ") for line in lines), (label, out)
    assert "no answer probabilities" not in out and "with (beta 1)" in out
