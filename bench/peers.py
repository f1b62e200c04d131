"""Peers side by side: one ActivScalar training step in actscale's trainer, nnsight and pyvene.

Equal work in every tool: the embedded model, the same IOI batch (32 prompts, drawn in the
trainer's order), site mlp_out at the same layers, one trial with alpha [layers, positions]
initialised to 1, the loss of workers.objective.objective on the last position's logits, and
one Adam step (lr 0.05). Each tool trains its own copy of the model, so the nnsight wrapper,
which stays on the modules it instruments, cannot slow the others. The peers use each tool's
documented way: the whole forward with logits at every position; `--peer-last-logits` passes
them transformers' `logits_to_keep` with each prompt's last position instead, as [B, 1] indices
(the int form, `logits_to_keep=1`, slices a non-contiguous [B, 1, d] view, and torch 2.13's CPU bf16
matmul on such a view is about 100x slower than on a contiguous one).

Checks: after one step from the same initial alpha, the three alphas agree (max |difference|).
Times: each tool's best of `--rounds` blocks of `--steps` steps, after that one-step warm-up.

Usage: python bench/peers.py [--steps N] [--quick] [--rounds R] [--layers all|i,j,..] [--batch B]
Needs the `bench` extra (pip install -e '.[bench]'); without it the target line says skipped.
Ends with `TARGET peer_step_ratio_<all|N>_layers: <actscale / fastest peer> (target <= 0.85x) ok|short`.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers import prepare, trainer  # noqa: E402
from workers.forward import attention_mask, autocast_for  # noqa: E402
from workers.interventions import ActivScalar  # noqa: E402
from workers.models import LoadedModel, load_model  # noqa: E402
from workers.objective import objective  # noqa: E402
from workers.precision import PRECISIONS, training_model  # noqa: E402
from workers.prepare import PreparedUnit  # noqa: E402
from workers.tasks.base import TaskSpec  # noqa: E402
from workers.unit import Hyper, TrainSettings, UnitSpec  # noqa: E402

MODEL = "smollm2-135m"
SITE = "mlp_out"
PEERS = ("nnsight", "pyvene")
TARGET = 0.85
HYPER = Hyper(lr=0.05, lambda_faith=1.0, lambda_min=0.01, seed=0)

Train = Callable[[int], torch.Tensor]  # steps -> the trained alpha [L, T], from a fresh alpha of ones


@dataclass
class Batch:
    """One training batch, as the trainer builds it for one trial (K = 1)."""

    ids: torch.Tensor  # [B, T]
    lengths: torch.Tensor  # [B]
    before: torch.Tensor  # [1, B, V] the training model's unintervened last-position logits
    a: torch.Tensor  # [1, B]
    b: torch.Tensor  # [1, B]


def build_unit(loaded: LoadedModel, layers: str | tuple[int, ...], batch: int, precision: str) -> PreparedUnit:
    """The prepared unit every tool trains on."""
    spec = UnitSpec(MODEL, TaskSpec.make("ioi", {"n": 40}), SITE, layers, ActivScalar.method,
                    TrainSettings(batch_size=batch, precision=precision))
    unit = prepare.prepare_unit(loaded, spec)
    if len(unit.splits["train"]) < batch:
        raise SystemExit(f"train split has {len(unit.splits['train'])} prompts, fewer than the batch of {batch}")
    return unit


def batches(loaded: LoadedModel, unit: PreparedUnit, batch: int) -> Callable[[], Batch]:
    """The trainer's batch sequence for trial seed HYPER.seed (workers/trainer.py, TrainBatches)."""
    train = unit.splits["train"]
    order = trainer.TrainBatches(len(train), batch, HYPER.seed, HYPER.resample_train)
    device = loaded.device

    def draw() -> Batch:
        idx = order.next()
        lengths = train.lengths[idx]
        ids = train.ids[idx][:, : int(lengths.max())]
        return Batch(ids.to(device), lengths.to(device), train.reference_logits[idx][None].to(device),
                     train.a_ids[idx][None].to(device), train.b_ids[idx][None].to(device))
    return draw


def peer_loss(data: Batch, logits: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """actscale's objective for one trial, from a peer's logits [B, T, V], or [B, 1, V] at the last positions."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    last = logits[rows, data.lengths - 1] if logits.shape[1] > 1 else logits[:, 0]
    device = logits.device
    lam_f = torch.tensor([HYPER.lambda_faith], device=device)
    lam_m = torch.tensor([HYPER.lambda_min], device=device)
    minimality = (alpha - 1).abs().sum()[None]
    loss, _ = objective(data.before, last.float()[None], data.a, data.b, minimality, lam_f, lam_m)
    return loss.sum()


def _keep(data: Batch, last_only: bool) -> dict:
    """transformers' logits_to_keep for each prompt's last position ([B, 1] indices), or nothing."""
    return {"logits_to_keep": (data.lengths - 1)[:, None]} if last_only else {}


class Peer:
    """A peer tool's ActivScalar: its parameters, the [L, T] alpha they make, and intervened logits."""

    def reset(self) -> list[nn.Parameter]:
        """Set alpha back to ones; the parameters to optimize."""
        raise NotImplementedError

    def alpha(self) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, data: Batch) -> torch.Tensor:
        """Intervened logits [B, T, V], or [B, 1, V] at each prompt's last position (`--peer-last-logits`)."""
        raise NotImplementedError


def peer_trainer(loaded: LoadedModel, unit: PreparedUnit, batch: int, peer: Peer) -> Train:
    """The training loop around a peer: forward, actscale's objective, backward, Adam."""
    def train(steps: int) -> torch.Tensor:
        opt = torch.optim.Adam(peer.reset(), lr=HYPER.lr)
        draw = batches(loaded, unit, batch)
        for _ in range(steps):
            data = draw()
            with autocast_for(loaded):
                logits = peer.logits(data)
            loss = peer_loss(data, logits, peer.alpha())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return peer.alpha().detach().cpu()
    return train


def actscale_trainer(loaded: LoadedModel, unit: PreparedUnit, batch: int) -> Train:
    """actscale's own trainer: `train_group` for one trial."""
    refs = trainer.resolve_site(loaded.model, SITE, unit.layers)

    def train(steps: int) -> torch.Tensor:
        hyper = Hyper(lr=HYPER.lr, lambda_faith=HYPER.lambda_faith, lambda_min=HYPER.lambda_min, steps=steps,
                      batch_size=batch, seed=HYPER.seed)
        intervention, _ = trainer.train_group(loaded, unit, [hyper], refs, [trainer.TrialResult(hyper)])
        return intervention.artifact_tensors(0)["alpha"]
    return train


class NnsightPeer(Peer):
    """nnsight: a traced forward in which each layer's mlp output is multiplied by alpha[layer, :, None]."""

    def __init__(self, loaded: LoadedModel, unit: PreparedUnit, last_only: bool):
        from nnsight import TransformersModel  # LanguageModel is its deprecated alias in nnsight 0.8

        # its own copies: nnsight instruments every module it wraps, and sets the tokenizer to pad left
        self.model = TransformersModel(copy.deepcopy(loaded.model), tokenizer=copy.deepcopy(loaded.tokenizer),
                                       task="text-generation")
        self.layers = unit.layers
        self.param = nn.Parameter(torch.ones(len(unit.layers), unit.n_positions, device=loaded.device))
        self.last_only = last_only

    def reset(self) -> list[nn.Parameter]:
        with torch.no_grad():
            self.param.fill_(1.0)
        return [self.param]

    def alpha(self) -> torch.Tensor:
        return self.param

    def logits(self, data: Batch) -> torch.Tensor:
        model, alpha = self.model, self.param
        mask = attention_mask(data.ids, data.lengths)
        with model.trace(data.ids, attention_mask=mask, use_cache=False, **_keep(data, self.last_only)):
            for j, layer in enumerate(self.layers):
                mlp = model.model.layers[layer].mlp
                mlp.output = (mlp.output.float() * alpha[j, None, :, None]).to(mlp.output.dtype)
            out = model.output.logits.save()
        return out


def _pyvene_scale() -> type:
    """pyvene's trainable, sourceless intervention h <- alpha * h, one alpha per position."""
    import pyvene

    class AlphaScale(pyvene.SourcelessIntervention, pyvene.TrainableIntervention,
                     pyvene.DistributedRepresentationIntervention):
        def __init__(self, n_positions: int, **kwargs):
            super().__init__(**kwargs, keep_last_dim=True)  # base stays [B, T, d]
            self.alpha = nn.Parameter(torch.ones(n_positions))

        def forward(self, base, source=None, subspaces=None, **kwargs):
            return (base.float() * self.alpha[None, :, None]).to(base.dtype)
    return AlphaScale


class PyvenePeer(Peer):
    """pyvene: an IntervenableModel with one AlphaScale per layer on component mlp_output."""

    def __init__(self, loaded: LoadedModel, unit: PreparedUnit, last_only: bool):
        import pyvene

        scale = _pyvene_scale()
        config = pyvene.IntervenableConfig([
            {"layer": layer, "component": "mlp_output", "unit": "pos",
             "intervention": scale(unit.n_positions, embed_dim=loaded.d_model)} for layer in unit.layers])
        self.model = pyvene.IntervenableModel(config, copy.deepcopy(loaded.model))
        self.model.set_device(loaded.device)
        keys = sorted(self.model.interventions, key=lambda key: self.model.representations[key].layer)
        self.scales = [self.model.interventions[key] for key in keys]  # in layer order
        self.last_only = last_only

    def reset(self) -> list[nn.Parameter]:
        with torch.no_grad():
            for scale in self.scales:
                scale.alpha.fill_(1.0)
        return [scale.alpha for scale in self.scales]

    def alpha(self) -> torch.Tensor:
        return torch.stack([scale.alpha for scale in self.scales])

    def logits(self, data: Batch) -> torch.Tensor:
        base = {"input_ids": data.ids, "attention_mask": attention_mask(data.ids, data.lengths),
                **_keep(data, self.last_only)}
        _, out = self.model(base, unit_locations=None, use_cache=False)
        return out.logits


def missing_peers() -> list[str]:
    """The peers that cannot be imported here."""
    missing = []
    for name in PEERS:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def best_ms(tools: dict[str, Train], steps: int, rounds: int) -> dict[str, float]:
    """Each tool's best of `rounds` timed blocks of `steps` steps, in ms per step; the tools take
    turns block by block, so that a change in the machine's load falls on all of them."""
    best = dict.fromkeys(tools, float("inf"))
    for _ in range(rounds):
        for name, train in tools.items():
            start = time.perf_counter()
            train(steps)
            best[name] = min(best[name], (time.perf_counter() - start) / steps * 1e3)
    return best


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="timed steps per block")
    p.add_argument("--quick", action="store_true", help="2 steps, one block")
    p.add_argument("--rounds", type=int, default=3, help="timed blocks per tool (the best one counts)")
    p.add_argument("--layers", default="all", help="'all' or comma-separated layer indices")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="the unit's train.precision")
    p.add_argument("--peer-last-logits", action="store_true", help="peers compute logits at the last position only")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args()


def build_tools(args: argparse.Namespace) -> dict[str, Train]:
    """The unit, prepared once, and each tool's trainer on it (peers on copies of the training model)."""
    loaded = load_model(MODEL, device=torch.device(args.device))
    layers = "all" if args.layers == "all" else tuple(int(x) for x in args.layers.split(","))
    unit = build_unit(loaded, layers, args.batch, args.precision)
    trains_on = training_model(loaded, unit.precision)  # as train_trials: a bf16 copy, or the model itself
    print(f"# {MODEL}, site {SITE}, {len(unit.layers)} layers, batch {args.batch} x {unit.n_positions} tokens, "
          f"{ActivScalar.__name__} K=1, Adam lr {HYPER.lr}, {args.device} {unit.precision}, "
          f"{torch.get_num_threads()} threads; peers' logits at "
          f"{'the last position' if args.peer_last_logits else 'every position'}", flush=True)
    return {
        "actscale": actscale_trainer(trains_on, unit, args.batch),
        "nnsight": peer_trainer(trains_on, unit, args.batch, NnsightPeer(trains_on, unit, args.peer_last_logits)),
        "pyvene": peer_trainer(trains_on, unit, args.batch, PyvenePeer(trains_on, unit, args.peer_last_logits)),
    }


def main() -> None:
    args = parse_args()
    steps, rounds = (2, 1) if args.quick else (args.steps, args.rounds)
    missing = missing_peers()
    if missing:
        print(f"TARGET peer_step_ratio: skipped ({'/'.join(missing)} not installed: pip install -e '.[bench]')")
        return
    tools = build_tools(args)
    alphas = {name: train(1) for name, train in tools.items()}  # one step: the check, and the warm-up
    for name in PEERS:
        diff = float((alphas[name] - alphas["actscale"]).abs().max())
        print(f"check {name:<8} max |alpha - alpha_actscale| after 1 step: {diff:.2e}", flush=True)
    ms = best_ms(tools, steps, rounds)
    for name in tools:
        print(f"{name:<8} {ms[name]:8.1f} ms/step ({steps} steps, best of {rounds})")
    for name in PEERS:
        print(f"ratio actscale/{name}: {ms['actscale'] / ms[name]:.2f}x")
    ratio = ms["actscale"] / min(ms[name] for name in PEERS)
    name = "peer_step_ratio_" + ("all_layers" if args.layers == "all" else f"{len(args.layers.split(','))}_layers")
    print(f"TARGET {name}: {ratio:.2f}x (target <= {TARGET}x) {'ok' if ratio <= TARGET else 'short'}")


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
