"""Bad input, one test each: a non-zero exit, one clear message, nothing written changes."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from tests.faults.cases import BAD_INPUTS
from tests.sweeps import tiny_config

pytestmark = pytest.mark.usefixtures("ray_session")
EXPECTED = {case: message for case, _, message in BAD_INPUTS}
GOOD_ROW = {"prompt": "When Mary and John went to the store, John gave a drink to", "answer_a": " Mary",
            "answer_b": " John", "template": "When {IO} and {S1} went to the store, {S2} gave a drink to"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A run directory holding results, to check that bad input changes none of them."""
    root = tmp_path_factory.mktemp("bad-input")
    sweep = root / "good.yaml"
    sweep.write_text(yaml.safe_dump(tiny_config(search={"n_trials": 1, "batch": 1})))
    assert main(["run", str(sweep), "--out", str(root / "run"), "--quiet"]) == 0
    return root / "run"


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.suffix != ".log"}


def _unchanged(before: dict[str, bytes], after: dict[str, bytes]) -> bool:
    """Every stored file is byte-identical; the append-only Optuna journal may only have grown."""
    for name, data in before.items():
        if name == "optuna.journal":
            if not after[name].startswith(data):
                return False
        elif after.get(name) != data:
            return False
    return True


def _task_file(tmp_path: Path, lines: list[str] | bytes) -> str:
    path = tmp_path / "task.jsonl"
    if isinstance(lines, bytes):
        path.write_bytes(lines)
    else:
        path.write_text("\n".join(lines) + "\n")
    return str(path)


def _sweep_for(case: str, tmp_path: Path) -> str:
    """The sweep file (text) for a case."""
    good = json.dumps(GOOD_ROW)
    if case == "malformed-yaml":
        return "models: [tiny-gpt2\ntasks: {{"
    overrides: dict = {
        "unknown-key": lambda: {"search": {"colour": "red"}},
        "wrong-type": lambda: {"search": {"n_trials": "many"}},
        "empty-list": lambda: {"models": []},
        "n-trials-zero": lambda: {"search": {"n_trials": 0}},
        "bad-duration": lambda: {"stop_after": "5 minutes"},
        "layers-out-of-range": lambda: {"layers": [[0, 9]]},
        "same-model-twice": lambda: {"models": ["tiny-gpt2", "tiny-gpt2"]},
        "task-bad-json": lambda: {"tasks": [_task_file(tmp_path, [good, '{"prompt": "x",'])]},
        "task-missing-field": lambda: {"tasks": [_task_file(tmp_path, [json.dumps({k: v for k, v in GOOD_ROW.items() if k != "answer_b"})])]},
        "task-not-utf8": lambda: {"tasks": [_task_file(tmp_path, b'{"prompt": "caf\xe9"}\n')]},
        "multi-token-answer": lambda: {"tasks": [_task_file(tmp_path, [json.dumps(dict(GOOD_ROW, answer_a=" Qwxzyplorkington"))] * 8)]},
        "prompt-too-long": lambda: {"tasks": [_task_file(tmp_path, [json.dumps(dict(GOOD_ROW, prompt=" and".join(["Mary"] * 300)))] * 8)]},
        "hub-offline": lambda: {"models": ["someone/not-cached-model"]},
    }
    if case == "pickle-weights":
        model_dir = tmp_path / "pickle-model"
        model_dir.mkdir()
        (model_dir / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
        (model_dir / "pytorch_model.bin").write_bytes(b"\x80\x04 not really a pickle")
        overrides[case] = lambda: {"models": [str(model_dir)]}
    return yaml.safe_dump(tiny_config(**overrides[case]()))


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_bad_input(case, finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = _snapshot(run)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(_sweep_for(case, tmp_path))
    capsys.readouterr()
    rc = main(["run", str(sweep), "--out", str(run), "--quiet"])
    err = capsys.readouterr().err
    assert rc != 0
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("actscale: error:")]
    assert len(errors) == 1, err
    assert EXPECTED[case] in err, err
    after = _snapshot(run)
    assert _unchanged(before, after), "a stored file changed"


def test_pickle_weights_load_with_allow_pickle(tmp_path):
    """--allow-pickle (allow_pickle: true in a sweep) lets a trusted pickle checkpoint through."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from workers.models import layer_count
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    config = GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50)
    config.save_pretrained(model_dir)
    torch.save(GPT2LMHeadModel(config).state_dict(), model_dir / "pytorch_model.bin")
    with pytest.raises(Exception, match="only pickle weights"):
        layer_count(str(model_dir))
    assert layer_count(str(model_dir), allow_pickle=True) == 2
