"""The method contract (workers/interventions.py, `Intervention`): what every built-in method
guarantees, what a forward hands it as an argument, and the plain-data table that agrees with it."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from workers.errors import UsageError
from workers.interventions import (
    ActivScalar,
    CellRecorder,
    CellStats,
    ForwardContext,
    Intervention,
    Setup,
    build_intervention,
    method_class,
    register_method,
)
from workers.names import METHODS, method_names, moved_rule
from workers.sites import SiteRef
from workers.unit import TrainSettings

K, B, T, W, H = 2, 3, 5, 8, 2
ROLES = ("IO", "S1", "END")  # a role vocabulary (a method with needs_roles)
R = len(ROLES)


def _refs(heads: int | None = None) -> list[SiteRef]:
    return [SiteRef(layer, nn.Identity(), heads is not None, heads, W) for layer in (0, 1)]


def _build(method: str, refs: list[SiteRef], k: int = K, t: int | None = T) -> Intervention:
    """A fresh intervention; a method needing a direction (DiffMeans) gets a random one, one needing roles R."""
    direction = torch.randn(len(refs), T, W, generator=torch.Generator().manual_seed(3))
    return build_intervention(method, refs, k, t, direction, ROLES)


def _ctx(h: torch.Tensor) -> ForwardContext:
    """Every token of h ([K*B, T, W]) real, each with a role index in 0..R (R: a role outside the vocabulary)."""
    roles = torch.randint(R + 1, h.shape[:2], generator=torch.Generator().manual_seed(5))  # [K*B, T]
    return ForwardContext(torch.ones(h.shape[:2], dtype=torch.long), token_roles=roles)


def _moved(made: Intervention) -> Intervention:
    """The same intervention away from its identity (every parameter nudged)."""
    with torch.no_grad():
        for p in made.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return made


@pytest.mark.parametrize("heads", [None, H])
@pytest.mark.parametrize("method", method_names())
def test_every_method_keeps_the_contract(method, heads):
    """A new tensor of h's shape, h untouched; the identity at initialisation; per token; per trial."""
    h = torch.randn(K * B, T, W)
    original = h.clone()
    fresh = _build(method, _refs(heads))
    assert torch.equal(fresh.transform(1, h, _ctx(h)), h), "identity at initialisation"
    made = _moved(_build(method, _refs(heads)))
    out = made.transform(1, h, _ctx(h))
    assert out.shape == h.shape and torch.equal(h, original) and not torch.equal(out, h)
    # per token: a token's output does not depend on the other tokens' h
    other = h.clone()
    other[:, 1:] = torch.randn(K * B, T - 1, W)
    again = made.transform(1, other, _ctx(other))
    assert torch.equal(again[:, 0], out[:, 0])
    # trial k's parameters act on the k-th block of rows only
    assert len(made.trial_parameters(0)) == len(made.trial_parameters(1)) and made.n_params > 0
    made.keep_trials([1])
    ctx_b = ForwardContext(torch.ones(B, T, dtype=torch.long), token_roles=_ctx(h).token_roles[B:])  # trial 1's rows
    alone = made.transform(1, h[B:], ctx_b)
    torch.testing.assert_close(alone, out[B:], rtol=0, atol=1e-6)


def test_what_a_method_gathers_lives_in_the_forwards_context():
    """Two forwards with their own contexts: each minimality reads its own, nothing is left on the method."""
    made = _moved(build_intervention("dynscalar", _refs(), K, None))
    h = torch.randn(K * B, T, W)
    short = ForwardContext(torch.ones(K * B, T, dtype=torch.long))
    short.token_mask[:, 2:] = 0  # only the first two tokens are real
    full = ForwardContext.every_token(h)
    for index in (0, 1):
        made.transform(index, h, short)
        made.transform(index, h, full)
    assert len(short.gathered["l1"]) == len(full.gathered["l1"]) == 2
    assert (made.minimality(short) < made.minimality(full)).all()
    assert torch.equal(made.minimality(ForwardContext.every_token(h)), torch.zeros(K)), "a new context: nothing"


def test_cells_recorded_by_a_context_are_per_column():
    made = _moved(build_intervention("dynscalar", _refs(), K, None))
    h = torch.randn(K * B, T, W)
    columns = torch.tensor([0, 1, 1, 2, 2]).repeat(K * B, 1)  # [K*B, T]: tokens 1-2 and 3-4 share a column
    recorder = CellRecorder(3)
    ctx = ForwardContext(torch.ones(K * B, T, dtype=torch.long), columns, recorder)
    for index in (0, 1):
        made.transform(index, h, ctx)
    values, effects = made.cells(1, CellStats(recorded=recorder))  # [L, C]
    assert values.shape == effects.shape == (2, 3)
    assert torch.equal(recorder.sums(0, "count")[1], torch.tensor([B, 2.0 * B, 2.0 * B]))
    with pytest.raises(AssertionError, match="recorded evaluation"):
        made.cells(0, CellStats())


def test_the_plain_table_agrees_with_the_classes_and_a_disagreement_is_refused(monkeypatch):
    settings = TrainSettings(active_threshold=0.2, steer_threshold=0.3)
    for name, info in METHODS.items():
        cls = method_class(name)
        assert info.path == f"{cls.__module__}:{cls.__qualname__}"
        assert (info.fixed_length, info.identity, info.moved_measure) == (cls.fixed_length, cls.identity,
                                                                          cls.moved_measure)
        assert moved_rule(name, settings) == (cls.moved_measure, cls.moved_threshold(settings))
    monkeypatch.setitem(METHODS, "activscalar", dataclasses.replace(METHODS["activscalar"], identity=0.0))
    with pytest.raises(UsageError, match="names.py METHODS says"):
        register_method(ActivScalar)


def test_the_base_is_abstract_and_a_fixed_length_method_needs_a_length():
    with pytest.raises(TypeError, match="abstract"):
        Intervention(Setup(_refs(), 1))  # type: ignore[abstract]
    with pytest.raises(UsageError, match="needs prompts of one token length"):
        ActivScalar.create(Setup(_refs(), 1))
    with pytest.raises(UsageError, match="threshold_setting 'nope'"):
        register_method(type("Bad", (ActivScalar,), {"method": "bad", "threshold_setting": "nope"}))
