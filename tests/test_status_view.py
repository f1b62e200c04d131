"""`actscale status` columns size to their content and never run together (issue #30): a task
given as a path and a hub model id are cut with an ellipsis, the same on a terminal and in a log."""
from __future__ import annotations

import re

from orchestrator.cli import main
from storage.store import RunStore
from tests.sample_run import make_sample_run
from tests.sweeps import tiny_config, write_config

TASK = "/home/someone/projects/agreement/data/subject_verb_agreement_long_templates/sva.jsonl"
MODEL = "some-organisation/a-rather-long-model-name-1.7B-instruct"
N_COLUMNS = 21


def _status_lines(run, capsys, monkeypatch, columns: str) -> list[str]:
    monkeypatch.setenv("COLUMNS", columns)  # a terminal's width: the table must not depend on it
    capsys.readouterr()
    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    # the table: a header and a line per unit (after the lines saying who each model is)
    return next(block for block in out.split("\n\n") if block.startswith("unit")).splitlines()


def test_a_long_task_path_and_model_name_keep_their_columns(tmp_path, capsys, monkeypatch):
    run = make_sample_run(tmp_path / "run")
    write_config(run / "sweep.yaml", tiny_config())
    RunStore(run).write_now("units", [dict(unit_id="u-0000000000aa", run_id="run-sample", model=MODEL, task=TASK,
                                           site="mlp_out", method="activscalar", layers=[0], n_train=40, n_val=20,
                                           n_test=20, min_split=20, warnings=[])])
    lines = _status_lines(run, capsys, monkeypatch, "80")
    assert lines == _status_lines(run, capsys, monkeypatch, "300")
    header, mine = lines[0], next(line for line in lines if line.startswith("u-0000000000aa"))
    for line in lines:  # every column two spaces or more from the next: none runs into another
        fields = re.split(r" {2,}", line)
        assert len(fields) == N_COLUMNS, (line, fields)
    fields = re.split(r" {2,}", mine)
    model, task, site = fields[1], fields[2], fields[3]
    assert site == "mlp_out" and "sva.jsonlmlp_out" not in mine
    assert "…" in task and task.endswith("sva.jsonl") and task.startswith("/home/") and len(task) <= 32
    assert "…" in model and model.endswith("1.7B-instruct") and len(model) <= 32
    # left-aligned columns start where their header does
    assert mine.index(task) == header.index("task") and mine.index(" mlp_out ") + 1 == header.index("site")
    # the sample run's own units: short values in the same columns
    assert {re.split(r" {2,}", line)[2] for line in lines[1:] if line is not mine} == {"ioi"}


def test_cut_keeps_both_ends():
    from orchestrator.status_view import Column, cut, table

    assert cut("short", 10) == "short"
    assert cut("abcdefghijklmnopqrstuvwxyz", 10) == "abc…uvwxyz"
    lines = table([Column("name", "name"), Column("n", "n", right=True)],
                  [{"name": "a", "n": "1"}, {"name": "x" * 50, "n": "1234"}])
    assert lines == ["name" + " " * 28 + "     n", "a" + " " * 31 + "     1", "x" * 10 + "…" + "x" * 21 + "  1234"]
