"""What a head cell does on the unintervened model (patching kinds 'attn_to_io', 'attn_to_s2', 'dla').

Why: a scaled head is easier to read, and to compare with the IOI circuit (Wang et al. 2022), when one
knows where it looks and what it writes. For every head cell (layer, column, head) of a head-site unit:
- 'attn_to_io' / 'attn_to_s2': the attention weight from the cell's query tokens (its column) to the
  tokens of the IO name / of the second subject mention S2 (every token of the name: roles "IO", "IO+1",
  ...; workers/tasks/roles.py). Name-mover heads attend from the final position to IO, S-inhibition heads
  to S2. Only for tasks whose prompts have these roles (IOI); a prompt without the cell's column is left
  out of that cell's mean.
- 'dla': direct logit attribution, the part of LD = z_a - z_b that the head's output at the last token
  writes straight to the logits: its slice of the output projection (bias left out), through the
  block's output norm where the architecture has one (Gemma 3's post_attention_layernorm) and the final
  norm, each with its scale frozen at the clean forward, so that the map is linear and the heads of a
  layer sum to what the attention block adds. Only the last token reaches the logits directly: a cell
  of another column has dla 0.
Each value is a mean over the split's prompts with a 95% bootstrap interval, like the patching rows.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from workers.analysis import _token_columns
from workers.errors import UsageError
from workers.forward import last_token_logits
from workers.models import LoadedModel
from workers.prepare import PreparedUnit
from workers.sites import SiteRef, architecture, decoder_layers, hooked, resolve_site

HEAD_KINDS = ("attn_to_io", "attn_to_s2", "dla")
ATTENDED_ROLE = {"attn_to_io": "IO", "attn_to_s2": "S2"}  # kind -> the placeholder whose tokens are attended
FINAL_NORMS = ("norm", "ln_f", "final_layer_norm")  # the final norm's name on the base model, by family


def final_norm(model: nn.Module) -> nn.Module:
    """The norm between the last layer and the unembedding (it makes `last_hidden_state`)."""
    base = model.base_model
    for name in FINAL_NORMS:
        found = getattr(base, name, None)
        if isinstance(found, nn.Module):
            return found
    raise UsageError(f"no final norm named {', '.join(FINAL_NORMS)} on {type(base).__name__}: head 'dla' needs it")


def frozen_norm(norm: nn.Module, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """`norm` applied to a part c of its input x with x's scale, [..., d]: linear in c (the parts of x
    sum to norm(x) less its bias). LayerNorm centres c; RMS norms (Llama's, Gemma's 1 + w) only scale it."""
    eps = float(getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", 1e-6))
    if isinstance(norm, nn.LayerNorm):
        def scale(t: torch.Tensor) -> torch.Tensor:
            return (t.var(-1, unbiased=False, keepdim=True) + eps).sqrt()  # [..., 1]
        bias = norm.bias if norm.bias is not None else torch.zeros(())
        return (norm(c) - bias) * scale(c) / scale(x)
    def rms(t: torch.Tensor) -> torch.Tensor:
        return (t.pow(2).mean(-1, keepdim=True) + eps).sqrt()  # [..., 1]
    return norm(c) * rms(c) / rms(x)


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Attention computed explicitly for the block, so that each attention module returns its weights
    (fused kernels return none); the model's own implementation is restored after."""
    before = getattr(model.config, "_attn_implementation", None)
    if before != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if before not in (None, "eager"):
            model.set_attn_implementation(before)


def _refs_at(model: nn.Module, layers: list[int], path: str, on_input: bool) -> list[SiteRef]:
    """Hook points at module `path` (relative to a decoder layer) of each layer."""
    found = []
    for layer in layers:
        module = decoder_layers(model)[layer]
        for part in filter(None, path.split(".")):
            module = getattr(module, part)
        found.append(SiteRef(layer, module, on_input, None, 0))
    return found


def _output_norms(model: nn.Module, layers: list[int]) -> list[nn.Module] | None:
    """The norm each attention block's output goes through before the residual add (Gemma 3), or None."""
    path = architecture(model)["attn_out"]
    refs = _refs_at(model, layers, path, on_input=False)
    if all("norm" in type(r.module).__name__.lower() for r in refs):
        return [r.module for r in refs]
    return None


def _role_keys(unit: PreparedUnit, split: str, role: str, width: int) -> torch.Tensor | None:
    """[N, T] bool: each prompt's tokens of placeholder `role` (all its pieces); None if no prompt has it."""
    examples = unit.splits[split].examples
    keys = torch.zeros(len(examples), width, dtype=torch.bool)  # [N, T]
    for n, e in enumerate(examples):
        for t, r in enumerate(e.roles):
            keys[n, t] = r == role or r.startswith(role + "+")
    return keys if bool(keys.any()) else None


def head_values(loaded: LoadedModel, unit: PreparedUnit, split: str, chunk: int) -> dict[str, torch.Tensor]:
    """Per kind, [P, N] the value of each head cell (in workers/patching.py's cell order: layer, column,
    head) on each prompt of the split; NaN where a prompt lacks the cell's column. `loaded` is the
    evaluation model (fp32)."""
    model = loaded.model
    refs = resolve_site(model, unit.spec.site, unit.layers)
    if not refs[0].n_heads:
        raise UsageError(f"head kinds {', '.join(HEAD_KINDS)} need the head site; unit site is {unit.spec.site!r}")
    data = unit.splits[split]
    n, width = data.ids.shape
    n_layers, n_heads = len(refs), refs[0].n_heads
    d_head = refs[0].width // n_heads
    n_columns = len(unit.cell_columns("val")[0])
    columns = _token_columns(unit, split, n_columns)  # [N, T]
    real = torch.arange(width)[None, :] < data.lengths[:, None]  # [N, T]
    one_hot = (columns[..., None] == torch.arange(n_columns)) & real[..., None]  # [N, T, C]
    keys = {kind: _role_keys(unit, split, role, width) for kind, role in ATTENDED_ROLE.items()}
    kinds = ["dla"] + [kind for kind, k in keys.items() if k is not None]
    values = {kind: torch.full((n_layers, n, n_columns, n_heads), float("nan")) for kind in kinds}  # [L, N, C, H]
    attention = [r.module for r in _refs_at(model, list(unit.layers),
                                            architecture(model)["head"].rpartition(".")[0], False)]
    post = _output_norms(model, list(unit.layers))
    final = final_norm(model)
    unembed = model.get_output_embeddings().weight.detach().float()  # [V, d]
    eye = torch.eye(n_heads, device=loaded.device)  # [H, H]
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        ids, lengths = data.ids[part], data.lengths[part]
        b = ids.shape[0]
        z: list[torch.Tensor] = [torch.empty(0)] * n_layers  # L x [B, T, H * d_head]
        weights: list[torch.Tensor] = [torch.empty(0)] * n_layers  # L x [B, H, T, T]
        post_in: list[torch.Tensor] = [torch.empty(0)] * n_layers  # L x [B, T, d]
        final_in: list[torch.Tensor] = []  # [B, T, d]

        def keep_z(index: int, h: torch.Tensor, z: list[torch.Tensor] = z) -> None:
            z[index] = h.detach().float()

        hooks = [m.register_forward_hook(lambda _m, _a, out, i=i, w=weights: w.__setitem__(i, out[1].detach().float()))
                 for i, m in enumerate(attention)]
        hooks += [m.register_forward_hook(lambda _m, a, _o, i=i, p=post_in: p.__setitem__(i, a[0].detach().float()))
                  for i, m in enumerate(post or [])]
        hooks.append(final.register_forward_hook(lambda _m, a, _o, f=final_in: f.append(a[0].detach().float())))
        try:
            with torch.no_grad(), eager_attention(model), hooked(refs, keep_z):
                last_token_logits(loaded, ids, lengths)
        finally:
            for hook in hooks:
                hook.remove()
        rows = torch.arange(b, device=loaded.device)
        last = (lengths - 1).to(loaded.device)  # [B]
        direction = unembed[data.a_ids[part]] - unembed[data.b_ids[part]]  # [B, d]
        x_final = final_in[0][rows, last][:, None, :]  # [B, 1, d]
        last_column = columns[part][torch.arange(b), lengths - 1]  # [B]
        cell_tokens = one_hot[part].to(loaded.device).float()  # [B, T, C]
        counts = cell_tokens.sum(1)  # [B, C]
        with torch.no_grad():
            for li, ref in enumerate(refs):
                z_last = z[li][rows, last].reshape(b, n_heads, d_head)  # [B, H, d_head]
                alone = (z_last[:, :, None, :] * eye[None, :, :, None]).reshape(b, n_heads, -1)  # [B, H, H * d_head]
                out = ref.module(alone) - ref.module(torch.zeros_like(alone[:, :1]))  # [B, H, d]
                if post is not None:
                    out = frozen_norm(post[li], post_in[li][rows, last][:, None, :], out)  # [B, H, d]
                dla = (frozen_norm(final, x_final, out) * direction[:, None, :]).sum(-1)  # [B, H]
                cell_dla = torch.zeros(b, n_columns, n_heads)  # [B, C, H]
                cell_dla[torch.arange(b), last_column.clamp(max=n_columns - 1)] = dla.cpu()
                cell_dla[last_column >= n_columns] = 0.0
                values["dla"][li, part] = cell_dla
                for kind, role_keys in keys.items():
                    if role_keys is None:
                        continue
                    attended = role_keys[part].to(loaded.device).float()  # [B, T]
                    to_role = (weights[li] * attended[:, None, None, :]).sum(-1)  # [B, H, T] per query token
                    summed = torch.einsum("bht,btc->bch", to_role, cell_tokens)  # [B, C, H]
                    values[kind][li, part] = (summed / counts[..., None]).cpu()  # NaN where the column is absent
    return {kind: v.permute(0, 2, 3, 1).reshape(-1, n) for kind, v in values.items()}  # [L * C * H, N]
