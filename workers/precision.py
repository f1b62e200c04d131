"""The precision a unit trains in, and the frozen model that runs its training forwards.

Training is most of a trial's compute, and on CPUs with native bf16 (AVX-512 BF16, AMX) a bf16
matmul runs at about 2.5x the fp32 rate. So on such a CPU `train.precision: auto` trains on a
bf16 copy of the frozen weights; everything a trial is judged by stays fp32: the intervention's
own parameters and its multiply (workers.interventions.installed upcasts the activation), the
objective, and every val/test metric (evaluated on the fp32 model against fp32 logits). The
train split's unintervened logits and prefix cache come from the training model itself, so an
untrained intervention gives a faithfulness term of exactly 0 in either precision.

The bf16 copy uses eager attention: torch's CPU flash-attention backward in bf16 is about 10x
slower than in fp32 (measured: 526 ms against 49 ms per 2 steps on the embedded model), which
would eat the gain. On CUDA, bf16 training runs the same weights under autocast, and
evaluation turns autocast off (`evaluation_model`), so metrics are fp32 on GPUs too.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
from pathlib import Path

import torch
from torch import nn

from workers.errors import UsageError
from workers.models import LoadedModel

PRECISIONS = ("auto", "fp32", "bf16")
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
BF16_MIN_WIDTH = 256  # d_model from which auto trains in bf16 on a CPU


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls natively (Linux: /proc/cpuinfo flags)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in _CPU_BF16_FLAGS)


def resolve_precision(setting: str, loaded: LoadedModel) -> str:
    """'fp32' or 'bf16' for a unit's training. auto: bf16 on CUDA, and on CPUs with native bf16
    for models at least BF16_MIN_WIDTH wide; below that a step is not matmul-bound and bf16 gains
    nothing (measured: d=64 1.00x, d=576 1.83x), so fp32 keeps the small models exact."""
    if setting not in PRECISIONS:
        raise UsageError(f"train.precision={setting!r}; accepted: {', '.join(PRECISIONS)}")
    if setting != "auto":
        return setting
    if loaded.device.type == "cuda":
        return "bf16"
    wide = loaded.d_model >= BF16_MIN_WIDTH
    return "bf16" if loaded.device.type == "cpu" and wide and cpu_has_native_bf16() else "fp32"


def evaluation_model(loaded: LoadedModel) -> LoadedModel:
    """The model every reported number comes from: fp32 on any device (on CUDA, autocast off)."""
    return training_model(loaded, "fp32")


def training_model(loaded: LoadedModel, precision: str) -> LoadedModel:
    """The model a unit's training forwards run on: `loaded` itself when it already runs in this
    precision, else a sibling made once per worker (CPU bf16: a bf16 copy of the weights)."""
    runs_in = "bf16" if loaded.autocast_bf16 or loaded.model.dtype == torch.bfloat16 else "fp32"
    if precision == runs_in:
        return loaded
    if precision not in loaded.variants:
        loaded.variants[precision] = _variant(loaded, precision)
    return loaded.variants[precision]


def bf16_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` with its floating-point parameters and buffers in bf16, cast tensor by
    tensor into deepcopy's memo: peak memory is the fp32 model plus the bf16 copy (1.5x), where
    deepcopy-then-cast held a second fp32 model first (2x). Tied weights stay tied (one memo entry)."""
    memo: dict[int, object] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point() and id(tensor) not in memo:
            cast = tensor.detach().to(torch.bfloat16)
            memo[id(tensor)] = nn.Parameter(cast, requires_grad=False) if isinstance(tensor, nn.Parameter) else cast
    return copy.deepcopy(model, memo)


def _variant(loaded: LoadedModel, precision: str) -> LoadedModel:
    if loaded.device.type == "cuda":  # same weights, autocast on or off
        return dataclasses.replace(loaded, autocast_bf16=precision == "bf16", variants={})
    if precision == "fp32":
        raise UsageError(f"model {loaded.name!r} was loaded in {loaded.model.dtype}; fp32 training needs it in fp32")
    model = bf16_copy(loaded.model)
    model.set_attn_implementation("eager")
    model.eval()
    model.requires_grad_(False)
    return dataclasses.replace(loaded, model=model, autocast_bf16=False, variants={})
