"""A patching baseline on the unintervened model (table `patching`, storage/schema.py PATCHING).

Why: the cells a trained scaling moves (table scalars) are compared with where the task lives by the
standard causal measure, activation patching, and its cheap first-order estimate, attribution patching
(Nanda; Syed et al. 2023). Both run on the model as it is, with the counterfactual prompts of the task
(`Example.counterfactual`: the same template and token length, expected answer b), so position i of a
prompt is position i of its counterfactual and a cell's tokens are the same positions in both.

A cell is a scalars cell of the unit: (layer, column[, head]), its columns those of the val split
(`PreparedUnit.cell_columns("val")`: positions for fixed-length methods, roles otherwise), so that the rows
join the scalars rows of the unit's trials on (layer, position, role, head). A cell's tokens are the prompt's
tokens whose column is the cell's.

Per prompt, with LD = z_a - z_b of the clean prompt and LD_cf that of its counterfactual:
- kind 'activation': the cell's activation (every token of its column; for the head site only that head's
  channels) is replaced by the counterfactual's at the same positions, the model runs on, and
  effect = (LD - LD_patched) / (LD - LD_cf): 0 = no change, 1 = the whole swap to the counterfactual's LD.
- kind 'attribution': one clean forward and backward of LD; LD_patched is estimated to first order,
  LD_patched ~ LD + sum over the cell's tokens of (h_cf - h) . dLD/dh, so the estimated effect is
  (h_cf - h) . dLD/dh / (LD_cf - LD), the same quantity as 'activation' (not its negative).
Each row holds the mean over prompts with a 95% bootstrap interval over prompts (effect_lo, effect_hi).
Only prompts with a counterfactual are used, and of those only prompts whose swap is not degenerate:
a prompt with |LD - LD_cf| < MIN_SWAP is dropped (its effect would divide by ~0); n_prompts counts the rest.

Exact patching batches cells along the batch dimension: one forward holds K cells x B prompts
(K * B <= rows_per_forward), so a split costs about n_cells * n_prompts / rows_per_forward forwards, each
starting at its cells' first layer from the clean states entering it (nothing before it changes).
Attribution costs one forward and backward per chunk of prompts, whatever the number of cells.
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from workers.analysis import _bootstrap, _token_columns
from workers.errors import UsageError
from workers.forward import last_token_logits, start_at_layer
from workers.head_roles import HEAD_KINDS, head_values
from workers.models import LoadedModel
from workers.objective import logit_diff
from workers.precision import evaluation_model
from workers.prepare import PreparedUnit
from workers.sites import SiteRef, hooked, layer_input, resolve_site

EFFECT_KINDS = ("activation", "attribution")  # the patching effects, on any site
PATCH_KINDS = EFFECT_KINDS + HEAD_KINDS  # head kinds: head-site units only (workers/head_roles.py)
MIN_SWAP = 1e-3  # prompts with |LD - LD_cf| below this are dropped: the effect's denominator


@dataclass(frozen=True)
class Patch:
    """What one patched run replaces: at refs[ref], the tokens whose column is in `columns`, all channels
    or (head site) only head `head`'s."""

    ref: int
    columns: tuple[int, ...]
    head: int | None = None


@dataclass
class Prompts:
    """The prompts patched, on the model's device: clean and counterfactual ids and their LDs."""

    ids: torch.Tensor  # [N, T] right-padded
    cf_ids: torch.Tensor  # [N, T] the counterfactuals, padded like ids
    lengths: torch.Tensor  # [N]
    a_ids: torch.Tensor  # [N]
    b_ids: torch.Tensor  # [N]
    columns: torch.Tensor  # [N, T] each token's cell column; -1 at padding and at columns val lacks

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def run_clean(loaded: LoadedModel, refs: list[SiteRef], ids: torch.Tensor, lengths: torch.Tensor,
              a_ids: torch.Tensor, b_ids: torch.Tensor, chunk: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Unintervened forwards: each site's activation, L x [N, T, W] (fp32, on the device), and LD [N]."""
    found: list[list[torch.Tensor]] = [[] for _ in refs]

    def record(index: int, h: torch.Tensor) -> None:
        found[index].append(h.detach().float())  # [B, T, W]

    lds = []
    with torch.no_grad(), hooked(refs, record):
        for i in range(0, ids.shape[0], chunk):
            logits = last_token_logits(loaded, ids[i:i + chunk], lengths[i:i + chunk])  # [B, V]
            lds.append(logit_diff(logits, a_ids[i:i + chunk].to(logits.device), b_ids[i:i + chunk].to(logits.device)))
    return [torch.cat(parts) for parts in found], torch.cat(lds)  # L x [N, T, W], [N]


def _channel_mask(ref: SiteRef, head: int | None, device: torch.device) -> torch.Tensor:
    """[W] bool: every channel, or the channels of one head (the head site's [W] = [H * d_head])."""
    mask = torch.zeros(ref.width, dtype=torch.bool, device=device)  # [W]
    if head is None:
        mask[:] = True
    else:
        assert ref.n_heads, "a head patch needs the head site"
        d_head = ref.width // ref.n_heads
        mask[head * d_head:(head + 1) * d_head] = True
    return mask


def _token_mask(columns: torch.Tensor, patch: Patch) -> torch.Tensor:
    """[B, T] bool: the tokens of the patch's columns."""
    wanted = torch.tensor(patch.columns, device=columns.device)  # [c]
    return torch.isin(columns, wanted)  # [B, T]


def entering_states(loaded: LoadedModel, layers: Sequence[int], prompts: Prompts,
                    chunk: int) -> dict[int, torch.Tensor]:
    """The clean prompts' hidden states entering each of `layers` (layer -> [N, T, d], on the device): a patched
    forward whose first patched layer is l runs from l on, since nothing before it changes."""
    points = [layer_input(loaded.model, layer) for layer in layers]
    found: list[list[torch.Tensor]] = [[] for _ in points]

    def record(index: int, h: torch.Tensor) -> None:
        found[index].append(h.detach().float())  # [B, T, d]

    with torch.no_grad(), hooked(points, record):
        for i in range(0, len(prompts), chunk):
            last_token_logits(loaded, prompts.ids[i:i + chunk], prompts.lengths[i:i + chunk])
    return {layer: torch.cat(parts) for layer, parts in zip(layers, found)}  # layer -> [N, T, d]


def patched_ld(loaded: LoadedModel, refs: list[SiteRef], prompts: Prompts, h_cf: list[torch.Tensor],
               patches: Sequence[Patch], rows_per_forward: int,
               entering: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Exact activation patching: [P, N] LD of each prompt with patch p's activations replaced by `h_cf`
    (L x [N, T, W], what the counterfactual has there). K patches x B prompts share one forward; with
    `entering` (`entering_states`), that forward starts at its patches' first layer (patches in layer order
    share it)."""
    n = len(prompts)
    chunk = max(1, min(n, rows_per_forward))
    per_forward = max(1, rows_per_forward // chunk)
    out = torch.empty(len(patches), n)  # [P, N]
    with torch.no_grad():
        for start in range(0, n, chunk):
            part = slice(start, start + chunk)
            b = min(chunk, n - start)
            for first in range(0, len(patches), per_forward):
                group = patches[first:first + per_forward]
                k = len(group)
                masks: dict[int, torch.Tensor] = {}  # ref -> [K, B, T, W]
                for j, patch in enumerate(group):
                    ref = refs[patch.ref]
                    if patch.ref not in masks:
                        masks[patch.ref] = torch.zeros(k, b, prompts.ids.shape[1], ref.width, dtype=torch.bool,
                                                       device=loaded.device)  # [K, B, T, W]
                    tokens = _token_mask(prompts.columns[part], patch)  # [B, T]
                    channels = _channel_mask(ref, patch.head, loaded.device)  # [W]
                    masks[patch.ref][j] |= tokens[:, :, None] & channels[None, None, :]
                flat = {r: m.reshape(k * b, m.shape[2], m.shape[3]) for r, m in masks.items()}  # [K * B, T, W]

                def swap(index: int, h: torch.Tensor, flat: dict[int, torch.Tensor] = flat, part: slice = part,
                         k: int = k) -> torch.Tensor | None:
                    if index not in flat:
                        return None
                    source = h_cf[index][part].to(h.dtype).repeat(k, 1, 1)  # [K * B, T, W]
                    mask = flat[index][:, : h.shape[1]]  # [K * B, T, W]
                    return torch.where(mask, source[:, : h.shape[1]], h)

                first_layer = min(refs[patch.ref].layer for patch in group)
                cut: Any = nullcontext()
                if entering is not None and first_layer > 0 and first_layer in entering:
                    hidden = entering[first_layer][part].repeat(k, 1, 1)  # [K * B, T, d]
                    cut = start_at_layer(loaded, first_layer, hidden)
                with cut, hooked(refs, swap):
                    logits = last_token_logits(loaded, prompts.ids[part].repeat(k, 1),
                                               prompts.lengths[part].repeat(k))  # [K * B, V]
                ld = logit_diff(logits, prompts.a_ids[part].repeat(k), prompts.b_ids[part].repeat(k))  # [K * B]
                out[first:first + k, start:start + b] = ld.reshape(k, b).cpu()
    return out


def attributed_ld_change(loaded: LoadedModel, refs: list[SiteRef], prompts: Prompts, h_cf: list[torch.Tensor],
                         patches: Sequence[Patch], chunk: int) -> torch.Tensor:
    """Attribution patching: [P, N] the first-order estimate of LD_patched - LD for each patch,
    sum over its tokens (and channels) of (h_cf - h) . dLD/dh, from one clean forward and backward."""
    n = len(prompts)
    out = torch.empty(len(patches), n)  # [P, N]
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        ids = prompts.ids[part]  # [B, T]
        b, t = ids.shape
        deltas = [torch.zeros(b, t, ref.width, device=loaded.device, requires_grad=True) for ref in refs]  # [B, T, W]
        clean: list[torch.Tensor] = [torch.empty(0)] * len(refs)

        def add(index: int, h: torch.Tensor, clean: list[torch.Tensor] = clean,
                deltas: list[torch.Tensor] = deltas) -> torch.Tensor:
            clean[index] = h.detach().float()  # [B, T, W]
            return h + deltas[index].to(h.dtype)  # the same values; its gradient is dLD/dh

        with torch.enable_grad(), hooked(refs, add):
            logits = last_token_logits(loaded, ids, prompts.lengths[part])  # [B, V]
            ld = logit_diff(logits, prompts.a_ids[part], prompts.b_ids[part])  # [B]
            grads = torch.autograd.grad(ld.sum(), deltas, allow_unused=True)  # L x [B, T, W]
        products = []
        for index in range(len(refs)):
            g = grads[index] if grads[index] is not None else torch.zeros_like(deltas[index])
            products.append((h_cf[index][part] - clean[index]) * g.detach())  # [B, T, W]
        for p, patch in enumerate(patches):
            ref = refs[patch.ref]
            tokens = _token_mask(prompts.columns[part], patch)  # [B, T]
            channels = _channel_mask(ref, patch.head, loaded.device)  # [W]
            chosen = products[patch.ref] * (tokens[:, :, None] & channels[None, None, :])  # [B, T, W]
            out[p, start:start + b] = chosen.sum((1, 2)).cpu()
    return out


def unit_prompts(loaded: LoadedModel, unit: PreparedUnit, split: str) -> Prompts:
    """The split's prompts that have a counterfactual, on the device, with each token's cell column
    numbered as on val (the scalars' cells); a clear error when there are none."""
    data = unit.splits[split]
    has = data.has_counterfactual  # [N]
    if not bool(has.any()):
        raise UsageError(f"patching needs counterfactual prompts, and task {unit.spec.task.name!r} has none of the "
                         f"prompts' token length for model {unit.spec.model!r} in its {split} split (the field "
                         "'counterfactual' of each example: the same template, answer b)")
    n_columns = len(unit.cell_columns("val")[0])
    columns = _token_columns(unit, split, n_columns)[has]  # [N', T]
    lengths = data.lengths[has]  # [N']
    real = torch.arange(columns.shape[1])[None, :] < lengths[:, None]  # [N', T]
    columns = torch.where(real & (columns < n_columns), columns, torch.full_like(columns, -1))  # [N', T]
    device = loaded.device
    cf = data.counterfactual_ids(loaded.tokenizer.pad_token_id)[has]  # [N', T]
    return Prompts(data.ids[has].to(device), cf.to(device), lengths.to(device), data.a_ids[has].to(device),
                   data.b_ids[has].to(device), columns.to(device))


def _cells(unit: PreparedUnit, refs: list[SiteRef]) -> list[tuple[int, int, int | None]]:
    """Every cell (layer index, column, head), in the order of the scalars rows (workers/trainer.py)."""
    n_columns = len(unit.cell_columns("val")[0])
    heads: list[int | None] = list(range(refs[0].n_heads)) if refs[0].n_heads else [None]
    return [(li, c, h) for li in range(len(refs)) for c in range(n_columns) for h in heads]


def patch_unit(loaded: LoadedModel, unit: PreparedUnit, split: str = "val",
               kinds: Sequence[str] = PATCH_KINDS, rows_per_forward: int | None = None) -> list[dict[str, Any]]:
    """Patching rows (columns of the patching table without run_id and unit_id) of every cell of the unit,
    for each kind, on one split, in fp32 on the evaluation model."""
    unknown = [k for k in kinds if k not in PATCH_KINDS]
    if unknown:
        raise UsageError(f"patching kind(s) {unknown}: computed kinds are {', '.join(PATCH_KINDS)}")
    loaded = evaluation_model(loaded)
    rows_per_forward = rows_per_forward or unit.spec.settings.eval_batch
    refs = resolve_site(loaded.model, unit.spec.site, unit.layers)
    prompts = unit_prompts(loaded, unit, split)
    _, ld = run_clean(loaded, refs, prompts.ids, prompts.lengths, prompts.a_ids, prompts.b_ids, rows_per_forward)
    h_cf, ld_cf = run_clean(loaded, refs, prompts.cf_ids, prompts.lengths, prompts.a_ids, prompts.b_ids,
                            rows_per_forward)
    swap = ld - ld_cf  # [N']
    keep = swap.abs() >= MIN_SWAP  # [N']
    if not bool(keep.any()):
        raise UsageError(f"no prompt of the {split} split has a counterfactual whose LD differs from its own by "
                         f"{MIN_SWAP} or more: patching effects would divide by ~0")
    index = keep.nonzero().flatten()  # [N'']
    prompts = Prompts(*(x[index] for x in (prompts.ids, prompts.cf_ids, prompts.lengths, prompts.a_ids,
                                           prompts.b_ids, prompts.columns)))
    h_cf, ld, swap = [x[index] for x in h_cf], ld[index].cpu(), swap[index].cpu()  # L x [N'', T, W], [N''], [N'']
    cells = _cells(unit, refs)
    patches = [Patch(li, (c,), head) for li, c, head in cells]
    effects: dict[str, torch.Tensor] = {}  # kind -> [P, N'']
    if "activation" in kinds:
        entering = entering_states(loaded, unit.layers, prompts, rows_per_forward)  # layer -> [N'', T, d]
        exact = patched_ld(loaded, refs, prompts, h_cf, patches, rows_per_forward, entering)  # [P, N'']
        effects["activation"] = (ld[None] - exact) / swap[None]
    if "attribution" in kinds:
        change = attributed_ld_change(loaded, refs, prompts, h_cf, patches, max(1, rows_per_forward))  # [P, N'']
        effects["attribution"] = -change / swap[None]
    counts = dict.fromkeys(effects, len(prompts))
    if refs[0].n_heads and set(kinds) & set(HEAD_KINDS):  # where each head looks and what it writes, every prompt
        for kind, values in head_values(loaded, unit, split, rows_per_forward).items():
            if kind in kinds:
                effects[kind], counts[kind] = values, values.shape[1]
    columns = unit.cell_columns("val")[0]
    depth = max(1, loaded.n_layers - 1)
    rows = []
    for kind, values in effects.items():
        lo, hi = _bootstrap(values)  # [P], [P]
        mean = values.nanmean(1)  # [P] (a head cell's attention: prompts that have its column)
        for p, (li, c, head) in enumerate(cells):
            layer = unit.layers[li]
            rows.append(dict(model=unit.spec.model, task=unit.spec.task.name, site=unit.spec.site, layer=layer,
                             rel_depth=layer / depth, position=columns[c].position, role=columns[c].role, head=head,
                             kind=kind, split=split, effect=float(mean[p]), effect_lo=float(lo[p]),
                             effect_hi=float(hi[p]), n_prompts=counts[kind]))
    return rows
