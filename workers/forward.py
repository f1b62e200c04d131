"""Forward passes that return next-token logits at each prompt's last real token only.

The objective needs nothing else, so the LM head runs on one position per prompt instead
of all of them. Prompts are right-padded; `lengths` says where each one ends.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch

from workers.models import LoadedModel
from workers.sites import architecture, decoder_layers, hooked, layer_input


def pad_batch(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists -> (ids [N, T], lengths [N])."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return ids, torch.tensor([len(s) for s in sequences], dtype=torch.long)


def attention_mask(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return (torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None].to(ids.device)).long()


def autocast_for(loaded: LoadedModel):
    """bf16 autocast where the model runs under it (CUDA, unless fp32 was asked), else its own dtype."""
    if loaded.autocast_bf16:
        return torch.autocast(loaded.device.type, dtype=torch.bfloat16)
    return nullcontext()


def last_token_logits(loaded: LoadedModel, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Logits [N, V] (fp32) at each prompt's last real token."""
    device = loaded.device
    ids = ids.to(device)
    lengths = lengths.to(device)
    mask = attention_mask(ids, lengths)
    with autocast_for(loaded):
        hidden = loaded.model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        last = hidden[torch.arange(ids.shape[0], device=device), lengths - 1]
        logits = loaded.model.get_output_embeddings()(last)
    return logits.float()


@contextmanager
def start_at_layer(loaded: LoadedModel, first_layer: int, hidden: torch.Tensor):
    """Run the decoder from `first_layer` on, with `hidden` as the states entering it.

    The layers before it are taken out of the layer list for the duration (their output
    is already in `hidden`), and a pre-hook hands `hidden` to the first remaining layer.
    Embeddings, masks and rotary tables are still made by the model, so every
    architecture keeps its own forward logic.
    """
    if first_layer <= 0:
        yield
        return
    layers = decoder_layers(loaded.model)
    parent_path, _, attr = architecture(loaded.model)["layers"].rpartition(".")
    parent = loaded.model
    for part in parent_path.split("."):
        parent = getattr(parent, part)
    entry = layer_input(loaded.model, first_layer)

    def cached(index: int, h: torch.Tensor) -> torch.Tensor:
        return hidden.to(device=loaded.device, dtype=h.dtype)

    # a model that picks each layer's attention kind by its index in the list (Gemma 3: sliding-window or
    # global layers, each with its own mask and rotary table) sees the kinds of the layers that remain
    config = loaded.model.config
    layer_types = getattr(config, "layer_types", None)
    with hooked([entry], cached):
        setattr(parent, attr, torch.nn.ModuleList(list(layers)[first_layer:]))
        if layer_types is not None:
            config.layer_types = list(layer_types)[first_layer:]
        try:
            yield
        finally:
            setattr(parent, attr, layers)
            if layer_types is not None:
                config.layer_types = layer_types


def logits_and_states(loaded: LoadedModel, ids: torch.Tensor, lengths: torch.Tensor, chunk: int,
                      layer: int | None = None, stop: bool = False) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Unintervened last-position logits [N, V] and, if `layer` is given, the hidden states
    [N, T, d] entering that layer (the prefix cache), both on the CPU, in one pass.
    With `stop`, the forward ends at `layer` and no logits are returned."""
    captured: list[torch.Tensor] = []

    def grab(index: int, h: torch.Tensor) -> None:
        captured.append(h.detach().float().cpu())
        if stop:
            raise _StopForward

    points = [layer_input(loaded.model, layer)] if layer is not None else []
    logits = []
    with torch.no_grad(), hooked(points, grab):
        for i in range(0, ids.shape[0], chunk):
            try:
                logits.append(last_token_logits(loaded, ids[i:i + chunk], lengths[i:i + chunk]).cpu())
            except _StopForward:
                pass
    return (torch.cat(logits) if logits else None), (torch.cat(captured) if captured else None)


class _StopForward(Exception):
    """Raised by the capture hook: nothing after the cached layer needs to run."""
