"""Where each site lives in each architecture: plain data keyed by config.model_type.

`attn_out` and `mlp_out` are the outputs of the attention and MLP blocks, i.e. exactly what
each adds to the residual stream (dropouts are identities in eval mode); `resid_post` is
the layer's output; `head` is the input of the attention output projection, split into
heads. The intervention code (interventions.py) only sees `SiteRef`s.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from workers.errors import UsageError

SITES = ("attn_out", "mlp_out", "resid_post", "head")

_LLAMA = {"layers": "model.layers", "attn_out": "self_attn", "mlp_out": "mlp", "head": "self_attn.o_proj"}
ARCHITECTURES: dict[str, dict[str, str]] = {
    "gpt2": {"layers": "transformer.h", "attn_out": "attn", "mlp_out": "mlp", "head": "attn.c_proj"},
    "gpt_neox": {"layers": "gpt_neox.layers", "attn_out": "attention", "mlp_out": "mlp", "head": "attention.dense"},
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
}
FAMILIES = "GPT-2 (gpt2), GPT-NeoX/Pythia (gpt_neox), Llama family (llama, mistral, qwen2, qwen3; SmolLM is llama)"


@dataclass(frozen=True)
class SiteRef:
    """One hook point: the module, whether its input or output is the activation, and its shape."""

    layer: int
    module: nn.Module
    hook_on_input: bool  # head: the input of the output projection
    n_heads: int | None  # set for the head site
    width: int  # the activation's last dimension


def _get(root: nn.Module, dotted: str) -> nn.Module:
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


def architecture(model: nn.Module) -> dict[str, str]:
    model_type = model.config.model_type
    if model_type not in ARCHITECTURES:
        raise UsageError(f"architecture {model_type!r} is not supported; supported families: {FAMILIES}")
    return ARCHITECTURES[model_type]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return _get(model, architecture(model)["layers"])


def check_site(site: str) -> None:
    if site not in SITES:
        raise UsageError(f"unknown site {site!r}; accepted: {', '.join(SITES)}")


def resolve_layers(model: nn.Module, layers: str | list[int]) -> list[int]:
    """'all' or a list of layer indices (negative counts from the end) -> sorted indices."""
    n = len(decoder_layers(model))
    if layers == "all":
        return list(range(n))
    if isinstance(layers, str):
        try:
            layers = [int(x) for x in layers.split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"layers={layers!r}: give 'all' or a comma-separated list of integers") from None
    out = []
    for layer in layers:
        if not isinstance(layer, int) or isinstance(layer, bool) or not -n <= layer < n:
            raise UsageError(f"layer {layer!r} is out of range: this model has {n} layers (0..{n - 1}, or -1..-{n})")
        out.append(layer % n)
    if not out:
        raise UsageError("layers is empty: give 'all' or at least one layer index")
    return sorted(set(out))


def resolve_site(model: nn.Module, site: str, layers: list[int]) -> list[SiteRef]:
    check_site(site)
    arch = architecture(model)
    config = model.config
    blocks = decoder_layers(model)
    d_model = int(config.hidden_size)
    refs = []
    for layer in layers:
        block = blocks[layer]
        if site == "resid_post":
            refs.append(SiteRef(layer, block, False, None, d_model))
        elif site == "head":
            n_heads = int(config.num_attention_heads)
            proj = _get(block, arch["head"])
            width = proj.in_features if hasattr(proj, "in_features") else proj.weight.shape[0]  # GPT-2 Conv1D
            refs.append(SiteRef(layer, proj, True, n_heads, int(width)))
        else:
            refs.append(SiteRef(layer, _get(block, arch[site]), False, None, d_model))
    return refs
