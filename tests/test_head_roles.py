"""Head diagnostics (workers/head_roles.py, patching kinds attn_to_io, attn_to_s2, dla): a norm with its scale
frozen splits over the parts of its input; a layer's heads' direct logit attributions sum to the direct
attribution of what its attention block adds to the residual (Gemma 3: after its output norm), captured at
the attn_out site; the attention kinds are the model's own attention weights (output_attentions) at the
names' tokens; patch_unit writes head kinds for head units only."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.test_patching import _unit
from workers.head_roles import eager_attention, final_norm, frozen_norm, head_values
from workers.patching import patch_unit
from workers.precision import evaluation_model
from workers.sites import hooked, resolve_site


def _norms(tiny_models) -> list[nn.Module]:
    norms: list[nn.Module] = [nn.LayerNorm(16)]
    for name in ("tiny-llama", "tiny-gemma3"):
        norms.append(copy.deepcopy(final_norm(tiny_models[name].model)))  # a copy: the session's models stay as built
    with torch.no_grad():
        for norm in norms:
            for p in norm.parameters():
                p.normal_()  # not the identity weights of a fresh norm
    return norms


def test_a_frozen_norm_splits_over_the_parts_of_its_input(tiny_models):
    torch.manual_seed(0)
    for norm in _norms(tiny_models):
        d = norm.weight.shape[0]
        parts = torch.randn(5, 3, d)  # [K, B, d]
        x = parts.sum(0)  # [B, d]
        bias = getattr(norm, "bias", None)
        whole = norm(x) - (bias if bias is not None else 0)  # [B, d]
        torch.testing.assert_close(frozen_norm(norm, x, parts).sum(0), whole, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(norm(parts).sum(0), whole, atol=1e-2)  # unfrozen, the parts do not add up


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gemma3"])
def test_the_heads_of_a_layer_sum_to_its_attention_blocks_direct_attribution(tiny_models, model):
    """Both bias-free; Gemma 3 adds post_attention_layernorm(attention) to the residual, so its heads' sum
    checks the frozen output norm too."""
    loaded = evaluation_model(tiny_models[model])
    unit = _unit(loaded, model, "head")
    values = head_values(loaded, unit, "val", chunk=16)
    n_columns = len(unit.cell_columns("val")[0])
    n_heads = resolve_site(loaded.model, "head", unit.layers)[0].n_heads
    n = unit.splits["val"].ids.shape[0]
    dla = values["dla"].reshape(len(unit.layers), n_columns, n_heads, n)  # [L, C, H, N]
    assert dla[:, :-1].abs().max() == 0.0  # only the last token (the last position column) writes to the logits
    data = unit.splits["val"]
    blocks = resolve_site(loaded.model, "attn_out", unit.layers)
    added: list[torch.Tensor] = [torch.empty(0)] * len(blocks)
    final_in: list[torch.Tensor] = []

    def keep(index: int, h: torch.Tensor) -> None:
        added[index] = h.detach()

    norm = final_norm(loaded.model)
    hook = norm.register_forward_hook(lambda _m, a, _o: final_in.append(a[0].detach()))
    try:
        with torch.no_grad(), hooked(blocks, keep):
            loaded.model.base_model(input_ids=data.ids, attention_mask=torch.ones_like(data.ids), use_cache=False)
    finally:
        hook.remove()
    last = data.lengths - 1
    rows = torch.arange(n)
    unembed = loaded.model.get_output_embeddings().weight.detach()
    direction = unembed[data.a_ids] - unembed[data.b_ids]  # [N, d]
    x = final_in[0][rows, last]  # [N, d]
    for li in range(len(unit.layers)):
        block = frozen_norm(norm, x, added[li][rows, last])  # [N, d]
        expected = (block * direction).sum(-1)  # [N]
        torch.testing.assert_close(dla[li, -1].sum(0), expected, rtol=1e-3, atol=1e-4)
    assert dla[:, -1].abs().max() > 1e-4  # and they are not all 0


def test_attention_kinds_are_the_models_attention_to_the_names(tiny_models):
    loaded = evaluation_model(tiny_models["tiny-llama"])
    unit = _unit(loaded, "tiny-llama", "head", layers=(0, 2))
    values = head_values(loaded, unit, "val", chunk=7)  # a chunk that does not divide the split
    data = unit.splits["val"]
    n = data.ids.shape[0]
    n_columns = len(unit.cell_columns("val")[0])
    n_heads = resolve_site(loaded.model, "head", unit.layers)[0].n_heads
    before = loaded.model.config._attn_implementation
    with torch.no_grad(), eager_attention(loaded.model):
        out = loaded.model.base_model(input_ids=data.ids, attention_mask=torch.ones_like(data.ids),
                                      use_cache=False, output_attentions=True)
    assert loaded.model.config._attn_implementation == before  # restored
    for kind, role in (("attn_to_io", "IO"), ("attn_to_s2", "S2")):
        got = values[kind].reshape(len(unit.layers), n_columns, n_heads, n)  # [L, C, H, N]
        for li, layer in enumerate(unit.layers):
            weights = out.attentions[layer]  # [N, H, T, T]
            for p, e in enumerate(data.examples):
                keys = [t for t, r in enumerate(e.roles) if r == role or r.startswith(role + "+")]
                assert keys, f"an IOI prompt has the role {role}"
                expected = weights[p, :, :, keys].sum(-1)  # [H, T]: every query position (a column here)
                torch.testing.assert_close(got[li, :, :, p], expected.T[:n_columns], rtol=1e-4, atol=1e-5)
    total = values["attn_to_io"] + values["attn_to_s2"]
    assert total.max() <= 1 + 1e-5 and values["attn_to_io"].max() > 0


def test_patch_unit_writes_head_kinds_for_head_units_only(tiny_models):
    loaded = evaluation_model(tiny_models["tiny-gemma3"])
    head = patch_unit(loaded, _unit(loaded, "tiny-gemma3", "head", layers=(1,)))
    kinds = {r["kind"] for r in head}
    assert kinds == {"activation", "attribution", "attn_to_io", "attn_to_s2", "dla"}
    per_kind = {k: [r for r in head if r["kind"] == k] for k in kinds}
    assert len({len(v) for v in per_kind.values()}) == 1  # every kind has every cell
    assert all(r["n_prompts"] > 0 and r["head"] is not None for r in head)
    mlp = patch_unit(loaded, _unit(loaded, "tiny-gemma3", "mlp_out", layers=(1,)))
    assert {r["kind"] for r in mlp} == {"activation", "attribution"}
