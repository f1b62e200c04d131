"""Gemma 3's sites mean what they mean in the Llama family (workers/names.py, _GEMMA3).

Gemma 3 normalises each block's output before adding it to the residual stream (sandwich norms), so
what a block adds is the output of its post-norm, not of self_attn or mlp. Proven here against a
hand-written forward without the block, on the tiny random Gemma 3 and (slow) on the real model.
"""
from __future__ import annotations

import types

import pytest
import torch

from workers.forward import last_token_logits
from workers.interventions import build_intervention, installed
from workers.sites import decoder_layers, hooked, resolve_site

IDS = torch.tensor([[5, 17, 42, 9, 33, 81, 7, 12], [6, 18, 40, 11, 3, 80, 71, 14]])  # longer than tiny's window 4
LENGTHS = torch.tensor([8, 6])


def _layer_without(block: str):
    """Gemma3DecoderLayer.forward written out by hand, without the attention or the MLP block."""
    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, position_ids=None, cache=None,
                **kwargs):
        if block != "attn":
            attended, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states),
                                         position_embeddings=position_embeddings, attention_mask=attention_mask,
                                         position_ids=position_ids, cache=cache, **kwargs)
            hidden_states = hidden_states + self.post_attention_layernorm(attended)
        if block != "mlp":
            fed = self.mlp(self.pre_feedforward_layernorm(hidden_states))
            hidden_states = hidden_states + self.post_feedforward_layernorm(fed)
        return hidden_states
    return forward


def _hand_forward_without(loaded, block: str, ids=IDS, lengths=LENGTHS) -> torch.Tensor:
    layers = decoder_layers(loaded.model)
    try:
        for layer in layers:
            layer.forward = types.MethodType(_layer_without(block), layer)
        return last_token_logits(loaded, ids, lengths)
    finally:
        for layer in layers:
            del layer.forward  # back to the class's forward


def _scaled(loaded, site: str, alpha: float, layers: list[int], ids=IDS, lengths=LENGTHS,
            heads: list[int] | None = None) -> torch.Tensor:
    """Logits with the project's own ActivScalar at `site` set to alpha (on `heads` only, if given)."""
    refs = resolve_site(loaded.model, site, layers)
    intervention = build_intervention("activscalar", refs, 1, ids.shape[1])
    with torch.no_grad():
        if heads is None:
            intervention.alphas[0].fill_(alpha)
        else:
            intervention.alphas[0][..., heads] = alpha
        with installed(intervention):
            return last_token_logits(loaded, ids, lengths)


def _check_zero_site_equals_no_block(loaded, ids, lengths, atol: float) -> None:
    every = list(range(loaded.n_layers))
    with torch.no_grad():
        base = last_token_logits(loaded, ids, lengths)
        for site, block in (("attn_out", "attn"), ("mlp_out", "mlp")):
            hooked_zero = _scaled(loaded, site, 0.0, every, ids, lengths)
            by_hand = _hand_forward_without(loaded, block, ids, lengths)
            assert (hooked_zero - by_hand).abs().max().item() <= atol, site
            assert (hooked_zero - base).abs().max().item() > 1e-3, site  # the block mattered


@pytest.fixture(scope="module")
def gemma(tiny_models):
    loaded = tiny_models["tiny-gemma3"]
    assert loaded.model_type == "gemma3_text"
    assert set(loaded.model.config.layer_types) == {"sliding_attention", "full_attention"}
    return loaded


def test_zeroing_a_block_output_site_equals_a_forward_without_that_block(gemma):
    _check_zero_site_equals_no_block(gemma, IDS, LENGTHS, atol=1e-6)


def test_the_llama_paths_would_miss_the_post_norm(gemma):
    """Why Gemma needs its own paths: scaling self_attn's output by c is undone by the post-norm
    (the residual contribution is unchanged), while the site attn_out scales what is added."""
    every = list(range(gemma.n_layers))
    refs = [ref for ref in resolve_site(gemma.model, "head", every)]  # o_proj: its output feeds the post-norm
    with torch.no_grad():
        base = last_token_logits(gemma, IDS, LENGTHS)
        attn_modules = [decoder_layers(gemma.model)[layer].self_attn for layer in every]
        handles = [m.register_forward_hook(lambda m, a, out: (out[0] * 3.0,) + tuple(out[1:])) for m in attn_modules]
        try:
            llama_path = last_token_logits(gemma, IDS, LENGTHS)
        finally:
            for handle in handles:
                handle.remove()
        site = _scaled(gemma, "attn_out", 3.0, every)
    assert (llama_path - base).abs().max().item() <= 1e-4  # only RMSNorm's eps tells them apart
    assert (site - base).abs().max().item() > 1e-2
    assert refs[0].width == 128 and refs[0].n_heads == 4  # o_proj's input (4 heads x 32) is wider than d = 64


def test_what_a_head_scalar_can_and_cannot_do(gemma):
    """The post-attention norm rescales the sum of the heads: the same factor on every head of a layer
    is undone, while a head scaled alone (or to 0) changes the mix that the norm then rescales."""
    with torch.no_grad():
        base = last_token_logits(gemma, IDS, LENGTHS)
        every_head = _scaled(gemma, "head", 2.5, [1])
        one_head = _scaled(gemma, "head", 0.0, [1], heads=[2])
    assert (every_head - base).abs().max().item() <= 1e-4
    assert (one_head - base).abs().max().item() > 1e-3


def test_a_site_hook_sees_what_the_block_adds(gemma):
    """resid_post(l) = resid_post(l-1) + attn_out(l) + mlp_out(l) with the post-norm paths."""
    seen: dict[tuple[str, int], torch.Tensor] = {}

    def keep(site):
        def record(index, h):
            seen[(site, index)] = h.detach().clone()
        return record

    every = list(range(gemma.n_layers))
    refs = {site: resolve_site(gemma.model, site, every) for site in ("attn_out", "mlp_out", "resid_post")}
    with torch.no_grad(), hooked(refs["attn_out"], keep("attn_out")), hooked(refs["mlp_out"], keep("mlp_out")), \
            hooked(refs["resid_post"], keep("resid_post")):
        last_token_logits(gemma, IDS, LENGTHS)
    for layer in every[1:]:
        expected = seen[("resid_post", layer - 1)] + seen[("attn_out", layer)] + seen[("mlp_out", layer)]
        assert torch.allclose(seen[("resid_post", layer)], expected, atol=1e-5)


@pytest.mark.slow
def test_real_gemma3_sites_and_tokenizer():
    """The real Gemma 3 270M: its tokenizer keeps BOS, and zeroing attn_out / mlp_out at every layer
    through the project's hooks equals the hand-written forward without that block."""
    from workers.models import load_model

    loaded = load_model("gemma3-270m")
    tokenizer = loaded.tokenizer
    encoded = tokenizer("When Mary and John went to the store")["input_ids"]
    assert encoded[0] == tokenizer.bos_token_id == 2
    assert loaded.model.config.final_logit_softcapping is None  # last_token_logits applies no softcap
    ids = torch.tensor([encoded, encoded[:6] + [0] * (len(encoded) - 6)])
    lengths = torch.tensor([len(encoded), 6])
    _check_zero_site_equals_no_block(loaded, ids, lengths, atol=1e-4)
    assert loaded.identity["model_checkpoint"] == "base" and loaded.identity["model_type"] == "gemma3_text"
