"""Where each site lives in each architecture: plain data keyed by config.model_type.

`attn_out` and `mlp_out` are the outputs of the attention and MLP blocks, i.e. exactly what
each adds to the residual stream (dropouts are identities in eval mode); `resid_post` is
the layer's output; `head` is the input of the attention output projection, split into
heads. The intervention code (interventions.py) only sees `SiteRef`s, and every hook in the
project goes through `hooked` (interventions, norms, the prefix cache).

The names themselves (SITE_KINDS, ARCHITECTURES) are plain data in workers/names.py, so that
validating a sweep needs no torch.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from workers.errors import UsageError
from workers.names import ARCHITECTURES, FAMILIES, SITE_KINDS, SiteKind, check_site  # noqa: F401 - re-exported
from workers.names import SITES as SITES  # re-exported explicitly (mypy --strict)


@dataclass(frozen=True)
class SiteRef:
    """One hook point: the module, whether its input or output is the activation, and its shape."""

    layer: int
    module: nn.Module
    hook_on_input: bool  # head: the input of the output projection
    n_heads: int | None  # set for the head site
    width: int  # the activation's last dimension


def _get(root: nn.Module, dotted: str) -> nn.Module:
    for part in filter(None, dotted.split(".")):
        root = getattr(root, part)
    return root


def architecture(model: nn.Module) -> dict[str, str]:
    model_type = model.config.model_type
    if model_type not in ARCHITECTURES:
        raise UsageError(f"architecture {model_type!r} is not supported; supported families: {FAMILIES}")
    return ARCHITECTURES[model_type]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return _get(model, architecture(model)["layers"])


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
    kind, path = SITE_KINDS[site], architecture(model)[site]
    config = model.config
    blocks = decoder_layers(model)
    refs = []
    for layer in layers:
        module = _get(blocks[layer], path)
        width = int(config.hidden_size)
        if kind.hook == "input" and isinstance(getattr(module, "weight", None), torch.Tensor):
            # nn.Linear's in_features; GPT-2's Conv1D keeps its weight as [in, out]
            width = int(module.in_features if hasattr(module, "in_features") else module.weight.shape[0])
        n_heads = int(config.num_attention_heads) if kind.per_head else None
        refs.append(SiteRef(layer, module, kind.hook == "input", n_heads, width))
    return refs


def layer_input(model: nn.Module, layer: int) -> SiteRef:
    """The hidden states entering decoder layer `layer` ([B, T, d]): where the prefix cache cuts."""
    return SiteRef(layer, decoder_layers(model)[layer], True, None, int(model.config.hidden_size))


# fn(index of the ref, activation [B, T, W]) -> a replacement of the same shape, or None to leave it
SiteFn = Callable[[int, torch.Tensor], "torch.Tensor | None"]


@contextmanager
def hooked(refs: list[SiteRef], fn: SiteFn) -> Iterator[None]:
    """Call `fn` on each ref's activation in every forward inside the block; a tensor it returns
    replaces the activation. The hooks are always removed, whatever happens in the block."""
    handles = []
    try:
        for index, ref in enumerate(refs):
            if ref.hook_on_input:
                handles.append(ref.module.register_forward_pre_hook(_input_hook(fn, index), with_kwargs=True))
            else:
                handles.append(ref.module.register_forward_hook(_output_hook(fn, index)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _input_hook(fn: SiteFn, index: int):
    def hook(module, args, kwargs):
        new = fn(index, args[0] if args else kwargs["hidden_states"])
        if new is None:
            return None
        if args:
            return (new,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": new}
    return hook


def _output_hook(fn: SiteFn, index: int):
    def hook(module, args, output):
        new = fn(index, output[0] if isinstance(output, tuple) else output)
        if new is None:
            return None
        return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new
    return hook
