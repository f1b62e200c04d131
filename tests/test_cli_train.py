"""`actscale train`, `models`, `tasks`, and one clear message per bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from orchestrator.cli import main

BASE = ["train", "--model", "tiny-gpt2", "--task", "ioi", "--site", "mlp_out", "--method", "activscalar", "--steps", "3"]


def _with(args, **changes):
    args = list(args)
    for key, value in changes.items():
        flag = "--" + key.replace("_", "-")
        args[args.index(flag) + 1] = value
    return args


def _error(capsys, argv) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("actscale: error:"), err
    assert "Traceback" not in err
    return lines[0]


def test_train_json(capsys):
    assert main(BASE + ["--json", "--layers", "0,-1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "complete"
    assert set(report["test"]) >= {"flip_rate", "kl_other", "l1", "mass_shift", "ld_before", "ld_after"}
    assert report["n_params"] == 2 * 14
    assert {row["layer"] for row in report["most_moved"]} <= {0, 3}


def test_models_and_tasks(capsys):
    assert main(["models"]) == 0 and "smollm2-135m" in capsys.readouterr().out
    assert main(["tasks"]) == 0 and "city_country" in capsys.readouterr().out


@pytest.mark.parametrize("change, expected", [
    ({"model": "no-such/model"}, "unknown model 'no-such/model'"),
    ({"site": "mlp"}, "unknown site 'mlp'; accepted: attn_out, mlp_out, resid_post, head"),
    ({"task": "ioii"}, "unknown task 'ioii'; accepted:"),
    ({"method": "scalar"}, "unknown method 'scalar'; accepted: activscalar, steervec, dynscalar"),
])
def test_unknown_names(capsys, change, expected):
    assert expected in _error(capsys, _with(BASE, **change))


def test_layers_out_of_range(capsys):
    assert "layer 7 is out of range: this model has 4 layers" in _error(capsys, BASE + ["--layers", "0,7"])


def test_jsonl_bad_lines(capsys, tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "Rome is in", "answer_a": " Italy", "template": "x"}\n')
    assert "line 1: missing field(s) ['answer_b']" in _error(capsys, _with(BASE, task=str(path)))
    path.write_text('{"prompt": "Rome is in",\n')
    assert "line 1: not valid JSON" in _error(capsys, _with(BASE, task=str(path)))


def test_multi_token_answer(capsys, tmp_path):
    path = tmp_path / "t.jsonl"
    row = {"prompt": "Rome is in", "answer_a": " Zanzibarxyzq", "answer_b": " France", "template": "{CITY} is in"}
    path.write_text(json.dumps(row) + "\n")
    msg = _error(capsys, _with(BASE, task=str(path)))
    assert "' Zanzibarxyzq'" in msg and "one token" in msg


def test_activscalar_on_mixed_lengths(capsys, tmp_path):
    path = tmp_path / "t.jsonl"
    rows = [{"prompt": p, "answer_a": " Italy", "answer_b": " France", "template": p}
            for p in ["Rome is in", "Rome is a city in", "The city of Rome is located in"] * 4]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    msg = _error(capsys, _with(BASE, task=str(path)) + ["--filter", "none"])
    assert "needs prompts of one token length" in msg and "dynscalar" in msg


@pytest.mark.slow
def test_console_script_has_no_traceback_unless_debug():
    cmd = [sys.executable, "-m", "orchestrator.cli"] + _with(BASE, site="bogus")
    plain = subprocess.run(cmd, capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and "unknown site 'bogus'" in plain.stderr
    debug = subprocess.run([sys.executable, "-m", "orchestrator.cli", "--debug"] + cmd[3:], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
