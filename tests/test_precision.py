"""bf16 training on the CPU (workers/precision.py): an untrained intervention is exact, the
objective's reference comes from the model that trains, every reported number stays fp32, and
a bf16 trial lands where the fp32 one does."""
from __future__ import annotations

import dataclasses

import torch

from workers.interventions import ActivScalar, build_intervention, installed
from workers.precision import resolve_precision, training_model
from workers.prepare import prepare_unit
from workers.scoring import intervened_logits
from workers.sites import resolve_site
from workers.tasks.base import TaskSpec
from workers.trainer import train_trials
from workers.unit import Hyper, TrainSettings, UnitSpec


def _spec(precision: str, steps: int = 40) -> UnitSpec:
    return UnitSpec("tiny-llama", TaskSpec.make("ioi", {"n": 80}), "mlp_out", (1, 2), ActivScalar.method,
                    TrainSettings(steps=steps, batch_size=16, filter="none", precision=precision))


def test_auto_keeps_small_models_in_fp32_and_fp32_is_the_model_itself(tiny_models):
    loaded = tiny_models["tiny-llama"]
    assert resolve_precision("auto", loaded) == "fp32"  # d_model 64: bf16 gains nothing there
    assert training_model(loaded, "fp32") is loaded
    copy = training_model(loaded, "bf16")
    assert copy is training_model(loaded, "bf16"), "the bf16 copy is made once per worker"
    assert copy.model.dtype == torch.bfloat16 and loaded.model.dtype == torch.float32


def test_an_untrained_intervention_leaves_the_bf16_forward_bit_equal(tiny_models):
    """alpha = 1 in bf16 training: the intervened logits equal the reference logits exactly, so the
    faithfulness term starts at 0; the reference is the bf16 model's, not the fp32 one's."""
    loaded = tiny_models["tiny-llama"]
    unit = prepare_unit(loaded, _spec("bf16"))
    assert unit.precision == "bf16"
    train = unit.splits["train"]
    assert train.own_logits is not None and not torch.equal(train.own_logits, train.logits)
    trains_on = training_model(loaded, "bf16")
    refs = resolve_site(trains_on.model, "mlp_out", unit.layers)
    intervention = build_intervention(ActivScalar.method, refs, 1, unit.n_positions)
    with torch.no_grad(), installed(intervention) as hooks:
        after, _ = intervened_logits(trains_on, hooks, train.ids, train.lengths, unit.first_layer, train.prefix)
    assert torch.equal(after, train.own_logits)


def test_bf16_trials_report_fp32_numbers_close_to_the_fp32_trial(tiny_models):
    loaded = tiny_models["tiny-llama"]
    hypers = [Hyper(lr=0.05, lambda_min=0.01, seed=s) for s in range(2)]
    fp32 = train_trials(loaded, prepare_unit(loaded, _spec("fp32")), hypers)
    bf16 = train_trials(loaded, prepare_unit(loaded, _spec("bf16")), hypers)
    for a, b in zip(fp32, bf16):
        assert (a.precision, b.precision) == ("fp32", "bf16") and a.ok and b.ok
        assert a.metrics["val"]["ld_before"] == b.metrics["val"]["ld_before"], "evaluation is fp32 in both"
        alpha_a, alpha_b = a.tensors["alpha"], b.tensors["alpha"]
        assert alpha_b.dtype == torch.float32
        gap, moved = (alpha_a - alpha_b).abs(), (alpha_a - 1).abs()
        # Adam moves a near-flat alpha by up to lr per step whatever the gradient's size, so bf16 may
        # shift a cell by a step or two; on the whole the precision moves alpha far less than training does
        assert gap.max() < 0.1 and gap.mean() < 0.25 * moved.mean(), (gap.max(), gap.mean(), moved.mean())
        assert abs(a.metrics["test"]["ld_after"] - b.metrics["test"]["ld_after"]) < 0.05 * (
            1 + abs(a.metrics["test"]["ld_after"]))
        assert abs(a.metrics["val"]["flip_rate"] - b.metrics["val"]["flip_rate"]) <= 0.1


def test_the_precision_setting_is_part_of_the_unit_and_checked(tiny_models):
    from orchestrator.plan import unit_id
    from workers.errors import UsageError

    assert unit_id(_spec("fp32")) != unit_id(_spec("bf16"))
    try:
        resolve_precision("fp16", tiny_models["tiny-llama"])
    except UsageError as exc:
        assert "fp16" in str(exc) and "auto, fp32, bf16" in str(exc)
    else:
        raise AssertionError("fp16 was accepted")
    assert dataclasses.asdict(_spec("auto").settings)["precision"] == "auto"


def test_the_bf16_copy_is_cast_tensor_by_tensor_and_equals_a_cast_deepcopy(tiny_models):
    """bf16_copy never holds a second fp32 model; what it makes is what deepcopy-then-cast made:
    the same bf16 tensors, tied weights still one Parameter, the fp32 model untouched."""
    import copy as copy_module

    from workers.precision import bf16_copy

    for name in ("tiny-llama", "tiny-gpt2"):
        model = tiny_models[name].model
        before = {k: v.clone() for k, v in model.state_dict().items()}
        made = bf16_copy(model)
        reference = copy_module.deepcopy(model).to(torch.bfloat16)
        made_state, reference_state = made.state_dict(), reference.state_dict()
        assert made_state.keys() == reference_state.keys()
        for key, value in made_state.items():
            assert value.dtype == reference_state[key].dtype and torch.equal(value, reference_state[key]), key
        for key, value in model.state_dict().items():
            assert value.dtype == torch.float32 or not value.is_floating_point()
            assert torch.equal(value, before[key]), key
        out_made, out_ref = made.get_output_embeddings(), reference.get_output_embeddings()
        tied = out_ref.weight is reference.get_input_embeddings().weight
        assert (out_made.weight is made.get_input_embeddings().weight) == tied, name
        assert all(p.data_ptr() != q.data_ptr() for p in made.parameters() for q in model.parameters())
