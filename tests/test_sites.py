"""Sites and interventions on tiny GPT-2, GPT-NeoX and Llama models."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY
from workers.forward import last_token_logits
from workers.interventions import ForwardContext, build_intervention, installed, method_class
from workers.names import method_names
from workers.sites import SITES, decoder_layers, resolve_site

METHODS = method_names()

IDS = torch.tensor([[5, 17, 42, 9, 33, 81, 7, 12], [6, 18, 40, 11, 3, 80, 71, 14]])
LENGTHS = torch.tensor([8, 8])
ROLES = ("S1", "IO", "S2", "END")  # a role vocabulary for a method with needs_roles
TOKEN_ROLES = torch.tensor([[4, 0, 4, 1, 4, 2, 4, 3], [4, 1, 4, 0, 4, 2, 4, 3]])  # [B, T] 4: a role outside it


def _build(method: str, refs, n_trials: int):
    """A fresh intervention; a method needing a direction (diffmeans) gets a random one, one needing roles
    (activscalar_role) the vocabulary ROLES."""
    direction = torch.randn(len(refs), IDS.shape[1], refs[0].width, generator=torch.Generator().manual_seed(0))
    roles = ROLES if method_class(method).needs_roles else None
    return build_intervention(method, refs, n_trials, IDS.shape[1], direction, roles)


def _context(ids: torch.Tensor, repeats: int = 1) -> ForwardContext:
    """The forward's context for prompts `ids` (each row of IDS `repeats` times): every token real, with roles."""
    return ForwardContext(torch.ones_like(ids), token_roles=TOKEN_ROLES.repeat(repeats, 1))


def _all_hooks(model) -> set[tuple[str, str, int]]:
    """Every forward hook on the model as (module, kind, handle id). transformers 5 keeps hooks of its own
    once a forward asked for hidden states (its output recorder), so a test compares before and after."""
    return {(name, kind, key) for name, m in model.named_modules()
            for kind, hooks in (("post", m._forward_hooks), ("pre", m._forward_pre_hooks)) for key in hooks}


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("method", METHODS)
def test_identity_at_initialisation(tiny_models, name, site, method):
    loaded = tiny_models[name]
    before = _all_hooks(loaded.model)
    with torch.no_grad():
        base = last_token_logits(loaded, IDS, LENGTHS)
        refs = resolve_site(loaded.model, site, list(range(loaded.n_layers)))
        intervention = _build(method, refs, 1)
        with installed(intervention) as hooks, hooks.forward(_context(IDS)):
            after = last_token_logits(loaded, IDS, LENGTHS)
    assert (after - base).abs().max().item() <= 1e-6
    assert _all_hooks(loaded.model) == before


@pytest.mark.parametrize("name", TINY)
def test_alpha_zero_at_mlp_out_equals_zeroing_the_mlp(tiny_models, name):
    loaded = tiny_models[name]
    layer = 1
    refs = resolve_site(loaded.model, "mlp_out", [layer])
    intervention = build_intervention("activscalar", refs, 1, IDS.shape[1])
    with torch.no_grad():
        intervention.alphas[0].zero_()
        with installed(intervention):
            scaled = last_token_logits(loaded, IDS, LENGTHS)
        handle = refs[0].module.register_forward_hook(lambda m, a, out: torch.zeros_like(out))
        try:
            zeroed = last_token_logits(loaded, IDS, LENGTHS)
        finally:
            handle.remove()
        base = last_token_logits(loaded, IDS, LENGTHS)
    assert (scaled - zeroed).abs().max().item() <= 1e-6
    assert (scaled - base).abs().max().item() > 1e-4  # the intervention did something


@pytest.mark.parametrize("name", TINY)
def test_residual_identity(tiny_models, name):
    """resid_post(l) = resid_post(l-1) + attn_out(l) + mlp_out(l) (parallel or sequential)."""
    loaded = tiny_models[name]
    n = loaded.n_layers
    seen: dict[tuple[str, int], torch.Tensor] = {}
    handles = []
    for site in ("attn_out", "mlp_out", "resid_post"):
        for ref in resolve_site(loaded.model, site, list(range(n))):
            def hook(m, a, out, key=(site, ref.layer)):
                seen[key] = (out[0] if isinstance(out, tuple) else out).detach().clone()
            handles.append(ref.module.register_forward_hook(hook))

    def pre(m, args, kwargs):
        seen[("resid_post", -1)] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
    handles.append(decoder_layers(loaded.model)[0].register_forward_pre_hook(pre, with_kwargs=True))
    try:
        with torch.no_grad():
            last_token_logits(loaded, IDS, LENGTHS)
    finally:
        for h in handles:
            h.remove()
    for layer in range(n):
        expected = seen[("resid_post", layer - 1)] + seen[("attn_out", layer)] + seen[("mlp_out", layer)]
        assert torch.allclose(seen[("resid_post", layer)], expected, atol=1e-5)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("method", METHODS)
def test_gradients_reach_only_the_intervention(tiny_models, name, method):
    loaded = tiny_models[name]
    refs = resolve_site(loaded.model, "head", [0, 2])
    intervention = _build(method, refs, 2)
    with torch.no_grad():
        for p in intervention.parameters():
            p.add_(0.01 * torch.randn_like(p))
    with installed(intervention) as hooks, hooks.forward(_context(IDS.repeat(2, 1), 2)):
        logits = last_token_logits(loaded, IDS.repeat(2, 1), LENGTHS.repeat(2))
    logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in intervention.parameters())
    assert all(p.grad is None for p in loaded.model.parameters())


def test_hooks_removed_after_an_exception(tiny_models):
    loaded = tiny_models["tiny-llama"]
    refs = resolve_site(loaded.model, "resid_post", [0, 1])
    intervention = build_intervention("steervec", refs, 1, IDS.shape[1])
    before = _all_hooks(loaded.model)
    with pytest.raises(RuntimeError):
        with installed(intervention):
            assert len(_all_hooks(loaded.model) - before) == 2, "one hook per site while installed"
            raise RuntimeError("boom")
    assert _all_hooks(loaded.model) == before


def test_hook_does_not_mutate_in_place(tiny_models):
    loaded = tiny_models["tiny-gpt2"]
    refs = resolve_site(loaded.model, "mlp_out", [0])
    intervention = build_intervention("activscalar", refs, 1, IDS.shape[1])
    with torch.no_grad():
        intervention.alphas[0].fill_(2.0)
    h = torch.randn(2, IDS.shape[1], loaded.d_model)
    original = h.clone()
    out = intervention.transform(0, h, ForwardContext.every_token(h))
    assert torch.equal(h, original)
    assert torch.allclose(out, 2 * original)


def test_unsupported_architecture_is_named():
    from transformers import BloomConfig, BloomForCausalLM

    from workers.errors import UsageError
    model = BloomForCausalLM(BloomConfig(n_layer=1, hidden_size=8, n_head=2, vocab_size=10))
    with pytest.raises(UsageError, match="'bloom' is not supported; supported families: GPT-2"):
        resolve_site(model, "mlp_out", [0])
