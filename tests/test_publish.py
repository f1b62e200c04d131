"""Publishing a finished run's tensors (storage/publish.py) on a tiny model's real sweep: the analysed trials and
the mask controls keep their tensors (float16 where lossless enough, read back as float32), every other trial's
are dropped, the kept trials still reproduce their stored predictions, and a run missing an analysed trial's
tensors is refused before anything changes."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from orchestrator.coordinator import Coordinator
from orchestrator.steering import load_trial
from search_spaces.config import parse_config
from storage import open_runs
from storage.errors import StorageError
from storage.publish import FP16_TOLERANCE, analysed_trials, compact, publish
from storage.run_dir import RunDir
from tests.sweeps import tiny_config
from workers.forward import last_token_logits, pad_batch
from workers.objective import logit_diff
from workers.steer import apply_trial

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("publish") / "run"
    config = parse_config(tiny_config(methods=["activscalar", "steervec"], search={"n_trials": 3, "batch": 3},
                                      train={"steps": 6, "batch_size": 8},
                                      controls={"enabled": True, "ks": [2], "random_masks": 2, "structured": []}))
    Coordinator(config, run_dir).run()
    return run_dir


def test_compact_halves_what_float16_holds_and_keeps_the_rest():
    rng = np.random.default_rng(0)
    plain = rng.normal(1.0, 0.3, size=(4, 7)).astype(np.float32)
    assert compact(plain).dtype == np.float16
    assert np.max(np.abs(compact(plain).astype(np.float32) - plain)) <= FP16_TOLERANCE * np.max(np.abs(plain))
    huge = np.array([1.0, 7e4], dtype=np.float32)  # beyond float16's range (65504)
    assert compact(huge).dtype == np.float32
    subnormal = np.array([1e-8, 3e-8], dtype=np.float32)  # float16 flushes these: the relative error is ~1
    assert compact(subnormal).dtype == np.float32
    ints = np.arange(3, dtype=np.int64)
    assert compact(ints) is ints


def test_publishing_keeps_the_analysed_trials_and_they_reproduce_their_predictions(finished, tmp_path, tiny_models):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    runs = open_runs(run)
    keep = analysed_trials(run)
    controls = set(runs.trials.query("control_of == control_of and status == 'complete'").trial_id)
    assert controls and controls <= keep and set(runs.selected().trial_id) <= keep
    stored = {p.name.removesuffix(".safetensors") for p in RunDir(run).artifacts.glob("*.safetensors")}
    assert keep < stored  # the search trials that no analysis reads

    done = publish(run)
    assert set(done.kept) == keep and set(done.dropped) == stored - keep
    assert done.fp16_tensors > 0 and done.bytes_after < done.bytes_before
    left = {p.name.removesuffix(".safetensors") for p in RunDir(run).artifacts.glob("*.safetensors")}
    assert left == keep
    assert all(v.dtype == np.float32 for tid in keep for v in RunDir(run).read_artifact(tid).values()
               if v.dtype.kind == "f")

    loaded = tiny_models["tiny-gpt2"]
    for chosen in runs.selected().itertuples():
        trial = load_trial(run, chosen.trial_id)
        assert all(t.dtype != torch.float16 for t in trial.tensors.values())
        examples = runs.examples.query(f"unit_id == '{chosen.unit_id}' and split == 'test'").sort_values("index")
        ids, lengths = pad_batch([loaded.tokenizer(p)["input_ids"] for p in examples.prompt],
                                 loaded.tokenizer.pad_token_id)
        a = torch.tensor([loaded.tokenizer(x, add_special_tokens=False)["input_ids"][0] for x in examples.answer_a])
        b = torch.tensor([loaded.tokenizer(x, add_special_tokens=False)["input_ids"][0] for x in examples.answer_b])
        with torch.no_grad(), apply_trial(loaded.model, trial, beta=1.0):
            ld = logit_diff(last_token_logits(loaded, ids, lengths), a, b)  # [N]
        before = runs.predictions.query(f"trial_id == '{chosen.trial_id}'").sort_values("index").ld_after
        torch.testing.assert_close(ld, torch.tensor(before.to_numpy(), dtype=torch.float32), rtol=1e-2, atol=1e-2)


def test_a_run_missing_an_analysed_trials_tensors_is_refused_and_left_as_it_was(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    selected = open_runs(run).selected().trial_id.iloc[0]
    RunDir(run).artifact(selected).unlink()
    before = {p.name: p.read_bytes() for p in RunDir(run).artifacts.iterdir()}
    with pytest.raises(StorageError, match=rf"1 analysed trial\(s\) have no stored tensors \(e.g. {selected}\)"):
        publish(run)
    assert {p.name: p.read_bytes() for p in RunDir(run).artifacts.iterdir()} == before
    with pytest.raises(StorageError, match="no artifacts folder"):
        publish(tmp_path / "nothing")
