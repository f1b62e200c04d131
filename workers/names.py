"""Names a sweep is validated against, as plain data: no torch, no transformers.

Validating a sweep, `plan`, `status`, `query` and `report` read these tables without loading a
model (the torch modules that act on them import from here): the sites and how each is hooked,
where each site lives in each architecture (keyed by `config.model_type`), and the splits.

Adding a site: an entry in SITE_KINDS and its module path in each architecture. Adding an
architecture: an entry in ARCHITECTURES (module paths relative to one decoder layer; "" is the
layer itself).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SiteKind:
    hook: str  # "output": the module's output is the activation; "input": its first input
    per_head: bool = False  # the activation is split into attention heads (one cell per head)


SITE_KINDS: dict[str, SiteKind] = {
    "attn_out": SiteKind("output"),
    "mlp_out": SiteKind("output"),
    "resid_post": SiteKind("output"),
    "head": SiteKind("input", per_head=True),  # the input of the attention output projection
}
SITES = tuple(SITE_KINDS)
SPLITS = ("train", "val", "test")

_LLAMA = {"layers": "model.layers", "attn_out": "self_attn", "mlp_out": "mlp", "resid_post": "",
          "head": "self_attn.o_proj"}
# Gemma 3 normalises each block's output before adding it to the residual stream (sandwich norms):
# what the attention block adds is the output of post_attention_layernorm, what the MLP adds the output
# of post_feedforward_layernorm. A head's slice is still the input of o_proj, before that norm.
_GEMMA3 = {"layers": "model.layers", "attn_out": "post_attention_layernorm",
           "mlp_out": "post_feedforward_layernorm", "resid_post": "", "head": "self_attn.o_proj"}
ARCHITECTURES: dict[str, dict[str, str]] = {
    "gpt2": {"layers": "transformer.h", "attn_out": "attn", "mlp_out": "mlp", "resid_post": "", "head": "attn.c_proj"},
    "gpt_neox": {"layers": "gpt_neox.layers", "attn_out": "attention", "mlp_out": "mlp", "resid_post": "",
                 "head": "attention.dense"},
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma3_text": _GEMMA3,
}
FAMILIES = ("GPT-2 (gpt2), GPT-NeoX/Pythia (gpt_neox), Llama family (llama, mistral, qwen2, qwen3; SmolLM is llama), "
            "Gemma 3 (gemma3_text, post-norm block outputs)")
