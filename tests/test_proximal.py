"""The proximal L1 step (`train.l1: proximal`, workers/proximal.py): cells the objective does not push
past the threshold stay exactly at identity, a large lambda_min keeps every cell there, the subgradient
is what it was, and a method without the step keeps the subgradient and says so."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from orchestrator.plan import plan_units
from search_spaces.config import parse_config
from tests.sweeps import tiny_config
from workers.errors import UsageError
from workers.interventions import DynScalar, build_intervention
from workers.prepare import prepare_unit
from workers.proximal import soft_threshold, step_sizes
from workers.sites import SiteRef
from workers.tasks.base import TaskSpec
from workers.trainer import train_trials
from workers.unit import Hyper, TrainSettings, UnitSpec

L, T, W = 2, 4, 6


def _refs() -> list[SiteRef]:
    return [SiteRef(layer, nn.Identity(), False, None, W) for layer in range(L)]


def test_soft_threshold_is_exact_at_identity():
    x = torch.tensor([1.05, 0.97, 1.3, 0.5, 1.0])
    out = soft_threshold(x, 1.0, 0.1)
    assert out[:2].eq(1.0).all() and out[4] == 1.0  # bit-equal 1.0, not 1 + rounding
    torch.testing.assert_close(out[2:4], torch.tensor([1.2, 0.6]))


@pytest.mark.parametrize("method, param, identity", [("activscalar", "alphas", 1.0), ("steervec", "vectors", 0.0)])
def test_cells_whose_gradient_stays_below_lambda_stay_exactly_at_identity(method, param, identity):
    """A linear loss with a fixed gradient per element, Adam then the proximal step: an element whose
    gradient is at most lambda_min never leaves identity (bit for bit); one above it moves."""
    made = build_intervention(method, _refs(), 1, T)
    (p,) = made.trial_parameters(0)
    lam = 0.05
    grad = torch.linspace(-0.1, 0.1, p.numel()).reshape(p.shape)  # [L, T(, W)]
    below = grad.abs() <= lam
    assert below.any() and (~below).any()
    optimizer = torch.optim.Adam([p], lr=0.05)
    for _ in range(20):
        optimizer.zero_grad()
        (grad * p).sum().backward()
        optimizer.step()
        made.shrink(0, [lam * size for size in step_sizes(optimizer, [p])])
    values = getattr(made, param)[0].detach()
    assert values[below].eq(identity).all(), "an element the loss barely pushes stayed exactly at identity"
    assert values[~below].ne(identity).all()


def test_step_sizes_are_adams_and_plain_lr_without_a_second_moment():
    p = nn.Parameter(torch.zeros(3))
    sgd = torch.optim.SGD([p], lr=0.3)
    assert step_sizes(sgd, [p])[0].eq(0.3).all()
    adam = torch.optim.Adam([p], lr=0.1)
    p.grad = torch.tensor([1.0, -2.0, 0.5])
    before = p.detach().clone()
    adam.step()
    moved = (p.detach() - before).abs()  # Adam's first step: lr * |m_hat| / (sqrt(v_hat) + eps) = lr per element
    torch.testing.assert_close(moved, step_sizes(adam, [p])[0] * p.grad.abs())


def test_dynscalar_has_no_proximal_step():
    made = build_intervention("dynscalar", _refs(), 1, None)
    assert not DynScalar.has_shrink()
    with pytest.raises(UsageError, match="'dynscalar' has no proximal L1 step"):
        made.shrink(0, [torch.zeros(())])


def _unit(tiny_models, method: str, l1: str):
    spec = UnitSpec("tiny-llama", TaskSpec.make("ioi", {"n": 120}), "mlp_out", (1, 2, 3), method,
                    TrainSettings(steps=30, batch_size=16, filter="none", precision="fp32", l1=l1))
    return prepare_unit(tiny_models["tiny-llama"], spec)


def _at_identity(result, identity: float) -> float:
    values = torch.tensor([c["value"] for c in result.scalars])
    return float(values.eq(identity).float().mean())


@pytest.mark.parametrize("method, identity", [("activscalar", 1.0), ("steervec", 0.0)])
def test_proximal_training_keeps_more_cells_exactly_at_identity(tiny_models, method, identity):
    loaded = tiny_models["tiny-llama"]
    hyper = Hyper(lr=0.1, lambda_min=0.01, seed=0)
    (sub,) = train_trials(loaded, _unit(tiny_models, method, "subgradient"), [hyper])
    (prox,) = train_trials(loaded, _unit(tiny_models, method, "proximal"), [hyper])
    assert sub.ok and prox.ok
    assert _at_identity(prox, identity) > _at_identity(sub, identity)
    assert prox.metrics["val"]["l1"] < sub.metrics["val"]["l1"]  # the same quantity, reported either way
    (heavy,) = train_trials(loaded, _unit(tiny_models, method, "proximal"), [Hyper(lr=0.1, lambda_min=1e4, seed=0)])
    assert _at_identity(heavy, identity) == 1.0 and heavy.sites_moved == 0 and heavy.metrics["val"]["l1"] == 0


def test_the_subgradient_is_unchanged_and_a_method_without_the_step_keeps_it(tiny_models):
    loaded = tiny_models["tiny-llama"]
    hyper = Hyper(lr=0.1, lambda_min=0.01, seed=0)
    sub_unit, prox_unit = _unit(tiny_models, "dynscalar", "subgradient"), _unit(tiny_models, "dynscalar", "proximal")
    assert any("has no proximal step" in w for w in prox_unit.warnings)
    assert not any("proximal" in w for w in sub_unit.warnings)
    (sub,), (prox,) = train_trials(loaded, sub_unit, [hyper]), train_trials(loaded, prox_unit, [hyper])
    assert torch.equal(sub.tensors["weight"], prox.tensors["weight"]) and sub.metrics == prox.metrics


def test_new_settings_at_their_default_keep_every_unit_id():
    """Unit ids of a sweep without train.l1 or train.converge are those stored before they existed."""
    ids = [p.unit_id for p in plan_units(parse_config(tiny_config(methods=["activscalar", "steervec"])), lambda m: 4)]
    assert ids == ["u-af9660bbd94e", "u-09ba5e7271ce"]  # computed by the code of 55d332b
    assert "l1" not in TrainSettings().to_dict() and "converge" not in TrainSettings().to_dict()
    prox = plan_units(parse_config(tiny_config(train={"l1": "proximal"})), lambda m: 4)[0].unit_id
    assert prox != ids[0]
