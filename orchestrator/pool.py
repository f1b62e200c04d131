"""The coordinator's workers: one pool of Ray actors per model, and the work in flight on them.

A model's actors start together (`resources.workers_per_model`), at most
`resources.models_at_once` models at a time; an actor gets work only once it is up (its
`info()` answered). A model's actors are retired when it has no work left, and a dead
actor is replaced by a fresh one.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray

from orchestrator.units import Work

log = logging.getLogger("actscale")


@dataclass
class Pending:
    """One piece of work in flight on an actor; no work: the actor starting (its info())."""

    model: str
    actor: Any
    work: Work | None = None
    since: float = field(default_factory=time.monotonic)

    def describe(self) -> str:
        age = f"{time.monotonic() - self.since:.0f}s"
        if self.work is None:
            return f"a worker for {self.model} to start ({age})"
        return f"{self.work.describe()} on a {self.model} worker ({age})"


class ActorPool:
    """Actors by model, which of them are idle, and what is in flight (ObjectRef -> Pending)."""

    def __init__(self, new_actor: Callable[[str], Any], models: list[str], workers_per_model: int,
                 models_at_once: int):
        self.new_actor = new_actor
        self.waiting_models = list(models)  # not started yet, in order
        self.workers_per_model = workers_per_model
        self.models_at_once = models_at_once
        self.actors: dict[str, list[Any]] = {}
        self.idle: list[tuple[str, Any]] = []
        self.in_flight: dict[Any, Pending] = {}

    def launch(self, model: str) -> None:
        """Start an actor; it gets work only once it is up (its info() answered)."""
        actor = self.new_actor(model)
        self.actors[model].append(actor)
        self.in_flight[actor.info.remote()] = Pending(model, actor)
        log.info(f"starting a worker for {model}")

    def start_models(self, has_work: Callable[[str], bool]) -> None:
        """Start the next waiting models that have work, up to models_at_once."""
        while self.waiting_models and len(self.actors) < self.models_at_once:
            model = self.waiting_models.pop(0)
            if not has_work(model):
                continue
            self.actors[model] = []
            for _ in range(self.workers_per_model):
                self.launch(model)

    def busy(self, model: str) -> bool:
        """Whether any actor of the model is doing work (starting up does not count)."""
        return any(p.model == model and p.work is not None for p in self.in_flight.values())

    def working(self) -> bool:
        return any(p.work is not None for p in self.in_flight.values())

    def submit(self, ref: Any, pending: Pending) -> None:
        self.in_flight[ref] = pending
        self.idle.remove((pending.model, pending.actor))

    def free(self, pending: Pending) -> None:
        self.idle.append((pending.model, pending.actor))

    def retire(self, model: str) -> None:
        """Kill the model's actors, including ones still starting."""
        for actor in self.actors.pop(model, []):
            ray.kill(actor)
        self.idle[:] = [(m, a) for m, a in self.idle if m != model]
        for ref in [r for r, p in self.in_flight.items() if p.work is None and p.model == model]:
            self.in_flight.pop(ref)

    def replace(self, pending: Pending) -> None:
        """The actor of `pending` died: start another for its model (if the model is still running)."""
        actors = self.actors.get(pending.model)
        if actors is not None and pending.actor in actors:
            actors.remove(pending.actor)
            self.launch(pending.model)

    def abandon(self, ref: Any) -> Pending:
        """Take a piece of work out of flight and stop its actor (it would go on computing)."""
        pending = self.in_flight.pop(ref)
        ray.kill(pending.actor)
        actors = self.actors.get(pending.model, [])
        if pending.actor in actors:
            actors.remove(pending.actor)
        self.idle[:] = [(m, a) for m, a in self.idle if a is not pending.actor]
        return pending

    def wait(self, timeout: float) -> list[tuple[Any, Pending]]:
        """At most one finished piece of work, taken out of the in-flight set."""
        ready, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=timeout)
        return [(ref, self.in_flight.pop(ref)) for ref in ready]

    def active(self) -> bool:
        return bool(self.in_flight or self.idle or self.waiting_models)

    def shutdown(self) -> None:
        for model in list(self.actors):
            self.retire(model)
