"""Forward passes that return next-token logits at each prompt's last real token only.

The objective needs nothing else, so the LM head runs on one position per prompt instead
of all of them. Prompts are right-padded; `lengths` says where each one ends.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from workers.models import LoadedModel


def pad_batch(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists -> (ids [N, T], lengths [N])."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return ids, torch.tensor([len(s) for s in sequences], dtype=torch.long)


def attention_mask(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return (torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None].to(ids.device)).long()


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA (mixed precision), plain fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def last_token_logits(loaded: LoadedModel, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Logits [N, V] (fp32) at each prompt's last real token."""
    device = loaded.device
    ids = ids.to(device)
    lengths = lengths.to(device)
    mask = attention_mask(ids, lengths)
    with autocast_for(device):
        hidden = loaded.model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        last = hidden[torch.arange(ids.shape[0], device=device), lengths - 1]
        logits = loaded.model.get_output_embeddings()(last)
    return logits.float()
