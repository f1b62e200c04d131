"""Steering with a stored trial (`orchestrator.steering.steer`, `workers.steer.apply_trial`, `actscale steer`) on a tiny model's real sweep:
beta = 1 reproduces the trial's stored test predictions, beta = 0 is the model itself, the hooks
always come off, and what cannot be applied is refused with a message naming why."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from orchestrator.cli import main
from orchestrator.coordinator import Coordinator
from orchestrator.steering import load_trial, steer
from search_spaces.config import parse_config
from storage import open_runs
from tests.sweeps import tiny_config
from workers.errors import UsageError
from workers.forward import last_token_logits, pad_batch
from workers.objective import logit_diff
from workers.steer import apply_trial, prompt_roles

pytestmark = pytest.mark.usefixtures("ray_session")
METHODS = ["activscalar", "steervec", "dynscalar"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("steer") / "run"
    config = parse_config(tiny_config(methods=METHODS, search={"n_trials": 2, "batch": 2},
                                      train={"steps": 8, "batch_size": 8}))
    Coordinator(config, run_dir).run()
    return run_dir


def _test_split(run_dir, unit_id: str):
    runs = open_runs(run_dir)
    examples = runs.examples.query(f"unit_id == '{unit_id}' and split == 'test'").sort_values("index")
    return examples


@pytest.mark.parametrize("method", METHODS)
def test_beta_one_is_the_trial_and_beta_zero_the_model(run, tiny_models, method):
    loaded = tiny_models["tiny-gpt2"]
    chosen = open_runs(run).selected().query(f"method == '{method}'").iloc[0]
    trial = load_trial(run, chosen.trial_id)
    examples = _test_split(run, chosen.unit_id)
    ids, lengths = pad_batch([loaded.tokenizer(p)["input_ids"] for p in examples.prompt], loaded.tokenizer.pad_token_id)
    a = torch.tensor([loaded.tokenizer(x, add_special_tokens=False)["input_ids"][0] for x in examples.answer_a])
    b = torch.tensor([loaded.tokenizer(x, add_special_tokens=False)["input_ids"][0] for x in examples.answer_b])
    with torch.no_grad():
        base = last_token_logits(loaded, ids, lengths)  # [N, V]
        with apply_trial(loaded.model, trial, beta=0.0):
            at_zero = last_token_logits(loaded, ids, lengths)
        with apply_trial(loaded.model, trial, beta=1.0):
            at_one = last_token_logits(loaded, ids, lengths)
        after = last_token_logits(loaded, ids, lengths)
    torch.testing.assert_close(at_zero, base)  # beta = 0: the unintervened model, exactly
    torch.testing.assert_close(after, base)  # the hooks came off
    stored = open_runs(run).predictions.query(f"trial_id == '{chosen.trial_id}'").sort_values("index")
    torch.testing.assert_close(logit_diff(at_one, a, b), torch.tensor(stored.ld_after.to_numpy(), dtype=torch.float32),
                               rtol=1e-4, atol=1e-4)


def test_hooks_come_off_after_an_error_and_other_models_are_refused(run, tiny_models):
    loaded = tiny_models["tiny-gpt2"]
    chosen = open_runs(run).selected().query("method == 'activscalar'").iloc[0]
    ids = torch.tensor([loaded.tokenizer(_test_split(run, chosen.unit_id).prompt.iloc[0])["input_ids"]])
    with torch.no_grad():
        base = loaded.model(ids).logits
        with pytest.raises(RuntimeError, match="inside"), steer(loaded.model, run, trial_id=chosen.trial_id, beta=2.0):
            raise RuntimeError("inside the block")
        torch.testing.assert_close(loaded.model(ids).logits, base)
    other = GPT2LMHeadModel(GPT2Config(vocab_size=len(loaded.tokenizer), n_embd=64, n_layer=3, n_head=4))
    with pytest.raises(UsageError, match=r"layers 3 \(the trial's model 'tiny-gpt2' has 4\)"):
        with steer(other, run, trial_id=chosen.trial_id):
            pass
    with pytest.raises(UsageError, match="not a complete trial"):
        load_trial(run, "u-000000000000-t00000")


def test_position_tied_trials_need_the_trained_template_and_dynscalar_takes_any_prompt(run, tiny_models):
    loaded = tiny_models["tiny-gpt2"]
    selected = open_runs(run).selected()
    activ = load_trial(run, selected.query("method == 'activscalar'").trial_id.iloc[0])
    dyn = load_trial(run, selected.query("method == 'dynscalar'").trial_id.iloc[0])
    task_prompt = next(iter(activ.examples))
    assert prompt_roles(activ, loaded.tokenizer, task_prompt) == list(activ.examples[task_prompt]["roles"])
    other = "Mary went to the park"
    with pytest.raises(UsageError, match="tied to positions.*dynscalar"):
        with apply_trial(loaded.model, activ, roles=prompt_roles(activ, loaded.tokenizer, other)):
            pass
    ids = torch.tensor([loaded.tokenizer(other)["input_ids"]])
    with pytest.raises(UsageError, match="tied to"), apply_trial(loaded.model, activ):
        loaded.model(ids)  # no roles given: the length is still checked in the forward
    task_ids = torch.tensor([loaded.tokenizer(task_prompt)["input_ids"]])
    with torch.no_grad(), apply_trial(loaded.model, activ):
        loaded.model(task_ids)  # the trained prompt
        with pytest.raises(UsageError, match="is not its prompt"):
            loaded.model(ids[:, :3])  # another, shorter prompt in the same block: refused, not left unsteered
    with torch.no_grad(), apply_trial(loaded.model, dyn, beta=3.0, roles=prompt_roles(dyn, loaded.tokenizer, other)):
        steered = loaded.model(ids).logits
        out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                                    pad_token_id=loaded.tokenizer.eos_token_id)
    assert out.shape[1] == ids.shape[1] + 4 and not torch.allclose(steered, loaded.model(ids).logits)


def test_steer_command_prints_both_continuations_and_the_answers(run, capsys):
    unit = open_runs(run).selected().query("method == 'activscalar'").iloc[0]
    prompt = _test_split(run, unit.unit_id).prompt.iloc[0]
    assert main(["steer", str(run), "--unit", unit.unit_id, "--prompt", prompt, "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert unit.trial_id in out and "continues" in out and "with (beta 1)" in out and "p(' " in out
    assert main(["steer", str(run), "--prompt", prompt]) == 2  # three units: which one?
    assert "3 units have a selected trial" in capsys.readouterr().err
    assert main(["steer", str(run), "--unit", unit.unit_id, "--prompt", "Mary went to the park"]) == 2
    assert "tied to positions" in capsys.readouterr().err


def test_next_token_effect_matches_the_stored_trial_and_the_model(run, tiny_models):
    """On a task prompt: the task's answers, LD without = the stored ld_before, LD with = the stored
    ld_after, the top tokens are the softmax's largest; at beta = 0 both sides are the model."""
    from workers.steer import next_token_effect

    loaded = tiny_models["tiny-gpt2"]
    chosen = open_runs(run).selected().query("method == 'activscalar'").iloc[0]
    trial = load_trial(run, chosen.trial_id)
    example = _test_split(run, chosen.unit_id).iloc[0]
    stored = open_runs(run).predictions.query(f"trial_id == '{chosen.trial_id}' and index == {example['index']}")
    effect = next_token_effect(loaded.model, loaded.tokenizer, example.prompt, trial, 1.0, top=4)
    assert effect.answers == (example.answer_a, example.answer_b)
    assert effect.ld_without == pytest.approx(example.ld_before, abs=1e-4)
    assert effect.ld_with == pytest.approx(stored.ld_after.item(), abs=1e-4)
    with torch.no_grad():
        probs = loaded.model(torch.tensor([loaded.tokenizer(example.prompt)["input_ids"]])).logits[0, -1].softmax(-1)
    best = probs.topk(4)
    assert [t for t, _ in effect.top_without] == [loaded.tokenizer.decode([i]) for i in best.indices.tolist()]
    assert [p for _, p in effect.top_without] == pytest.approx(best.values.tolist(), abs=1e-6)
    a, b = (loaded.tokenizer(x, add_special_tokens=False)["input_ids"][0] for x in effect.answers)
    assert effect.p_without == pytest.approx((probs[a].item(), probs[b].item()), abs=1e-6)
    still = next_token_effect(loaded.model, loaded.tokenizer, example.prompt, trial, 0.0, top=4)
    assert still.top_with == still.top_without and still.ld_with == pytest.approx(still.ld_without, abs=1e-5)


def test_a_prompt_of_ones_own_shows_top_tokens_and_the_given_answers(run, tiny_models):
    from workers.steer import next_token_effect

    loaded = tiny_models["tiny-gpt2"]
    dyn = load_trial(run, open_runs(run).selected().query("method == 'dynscalar'").trial_id.iloc[0])
    prompt = "Mary went to the park with John, and John gave a ball to"
    assert prompt not in dyn.examples
    effect = next_token_effect(loaded.model, loaded.tokenizer, prompt, dyn, 3.0, answers=[" Mary", " John"], top=3,
                               max_new_tokens=2)
    assert effect.answers == (" Mary", " John") and len(effect.top_with) == len(effect.top_without) == 3
    assert effect.ld_without != pytest.approx(effect.ld_with)  # a strong DynScalar moves it
    assert effect.continuation_with is not None and 0 < sum(p for _, p in effect.top_with) <= 1
    bare = next_token_effect(loaded.model, loaded.tokenizer, prompt, dyn, 3.0, top=2)
    assert bare.answers is None and bare.p_with is None and bare.ld_with is None and len(bare.top_with) == 2
    with pytest.raises(UsageError, match=r"answer ' Zebedee' is 7 tokens"):
        next_token_effect(loaded.model, loaded.tokenizer, prompt, dyn, answers=[" Zebedee", " John"])
    with pytest.raises(UsageError, match="outside a `with steer"), steer(loaded.model, run, trial_id=dyn.trial_id):
        next_token_effect(loaded.model, loaded.tokenizer, prompt, dyn)


def test_one_forward_or_generate_per_side(run, tiny_models):
    """The probabilities come from the continuation's own first step: no extra forward."""
    from workers.steer import next_token_effect

    loaded = tiny_models["tiny-gpt2"]
    dyn = load_trial(run, open_runs(run).selected().query("method == 'dynscalar'").trial_id.iloc[0])
    calls = []
    handle = loaded.model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        next_token_effect(loaded.model, loaded.tokenizer, "Mary went to the park", dyn, max_new_tokens=3)
        assert len(calls) == 2 * 3  # three generated tokens a side
        calls.clear()
        next_token_effect(loaded.model, loaded.tokenizer, "Mary went to the park", dyn)
        assert len(calls) == 2
    finally:
        handle.remove()


def test_steer_command_on_a_prompt_of_ones_own_prints_probabilities(run, capsys):
    unit = open_runs(run).selected().query("method == 'dynscalar'").iloc[0]
    prompt = "Mary went to the park with John, and John gave a ball to"
    argv = ["steer", str(run), "--unit", unit.unit_id, "--prompt", prompt, "--max-new-tokens", "2"]
    assert main([*argv, "--answers", " Mary", " John", "--top", "3", "--beta", "2"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "with (beta 2)" in out and "no answer probabilities" not in out
    for label in ("continues", "p(' Mary')", "p(' John')", "LD = z_A - z_B", "top 1", "top 3"):
        assert any(line.startswith(label + " ") for line in lines), (label, out)
    assert not any(line.startswith("top 4") for line in lines)
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["answers"] is None and len(report["top_without"]) == 5 and report["continuation_with"] is not None
    assert main([*argv, "--answers", " Mary", " Zebedee"]) == 2
    assert "answer ' Zebedee' is 7 tokens" in capsys.readouterr().err


def test_the_python_api_pages_steering_example_prints_what_the_page_shows(capsys, monkeypatch):
    """docs/python-api.md's steering example (storage/api_docs.py) run on the committed sample run."""
    from pathlib import Path

    from storage.api_docs import STEERING_CODE, STEERING_OUTPUT

    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the example names docs/data/sample-run
    exec(STEERING_CODE, {})  # noqa: S102 - the page's own example
    assert capsys.readouterr().out.rstrip("\n") == STEERING_OUTPUT
