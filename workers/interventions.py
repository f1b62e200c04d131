"""The method contract (`Intervention`) and the built-in methods: ActivScalar, ActivScalarRole, SteerVec,
DiffMeans, DynScalar and DynScalarBias, torch modules with a leading trial dimension.

A method is a subclass of `Intervention` registered by name with `@register_method`. It owns
everything method-specific (its parameters, transform, minimality, the measure of a cell's
effect, its artifact tensors, the value meaning "no change"), so the trainer, the actor, the CLI
and the report never compare method names. What validation and the report need without torch
(the name, fixed_length, identity, moved_measure, the threshold's setting) is also plain data in
workers/names.py (`METHODS`); registering a class adds or checks its entry there. A user's method
is a subclass in the user's own module, named in the sweep's `plugins:` list
(docs/architecture.md, "Where a new thing goes"; tests/test_method_plugin.py is a whole example).

What a forward acts on (which tokens are real, each token's cell column, a recorder of per-cell
statistics, and what the method gathers during the forward) reaches a method as an argument,
`transform(index, h, ctx)` with a `ForwardContext`, never as state set on it from outside: the hooks
of `installed` hand every transform call of one forward the same context.
"""
from __future__ import annotations

import abc
import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from typing import ClassVar, Protocol

import torch
from torch import nn

from workers.errors import UsageError
from workers.names import METHODS, MethodInfo, any_length_methods, method_info  # noqa: F401 - re-exported
from workers.proximal import soft_threshold
from workers.sites import SiteRef, hooked
from workers.unit import TrainSettings

METHOD_CLASSES: dict[str, type[Intervention]] = {}  # the registry's torch half: method name -> class


@dataclass(frozen=True)
class Setup:
    """What a method is built for, handed to its constructor: the sites (one `SiteRef` per layer, with
    the activation's width and, for the head site, its number of heads), K trials, and the one prompt
    length of a fixed-length method (None: prompts of any length). Later needs arrive as new fields
    with defaults, so a method's constructor keeps its signature."""

    refs: list[SiteRef]
    n_trials: int
    n_positions: int | None = None
    # [L, T, W] the train split's mean difference at each cell, counterfactual prompt minus prompt, unintervened
    # (workers/directions.py), for a method with `needs_direction` (DiffMeans)
    direction: torch.Tensor | None = None
    # the unit's role vocabulary, in order (workers/columns.py RoleVocabulary), for a method with `needs_roles`
    roles: tuple[str, ...] | None = None


class CellRecorder:
    """Per-cell sums of per-token statistics over the forwards of one evaluation: for a method whose
    cells depend on the activation (DynScalar records alpha, |alpha - 1| and token counts on val).
    Each token counts towards its cell column (`ForwardContext.token_columns`)."""

    def __init__(self, n_columns: int):
        self.n_columns = n_columns
        self._sums: dict[tuple[int, str], torch.Tensor] = {}  # (site index, name) -> [K, C(, H)]

    def add(self, index: int, name: str, per_token: torch.Tensor, columns: torch.Tensor) -> None:
        """Add `per_token` ([K, B, T(, H)]) to the sums of each token's column (`columns`: [K, B*T])."""
        k, bsz, t = per_token.shape[:3]
        flat = per_token.reshape((k, bsz * t) + per_token.shape[3:])
        where = columns[..., None].expand_as(flat) if flat.dim() == 3 else columns
        new = flat.new_zeros((k, self.n_columns) + per_token.shape[3:]).scatter_add_(1, where, flat)
        old = self._sums.get((index, name))
        self._sums[(index, name)] = new if old is None else old + new

    def sums(self, index: int, name: str) -> torch.Tensor:
        """[K, C(, H)] the recorded sums of statistic `name` at site `index`."""
        if (index, name) not in self._sums:
            raise KeyError(f"nothing recorded for {name!r} at site {index}: cells need a recorded evaluation")
        return self._sums[(index, name)]


@dataclass
class ForwardContext:
    """What one forward acts on, handed to every `transform` call of that forward (and to `minimality`
    after it). Made by whoever runs the forward (workers/scoring.py); new needs are new fields with
    defaults (e.g. a counterfactual prompt's activations for activation patching), so the methods'
    signatures stay."""

    token_mask: torch.Tensor  # [K*B, T] 1 for real tokens, 0 for padding
    token_columns: torch.Tensor | None = None  # [K*B, T] each token's cell column (workers/columns.py)
    recorder: CellRecorder | None = None  # set while a method's cells are recorded (evaluation on val)
    gathered: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # terms a method gathers in the forward
    # [K*B, T] each token's index in the unit's role vocabulary (workers/columns.py RoleVocabulary; a role outside
    # it: the vocabulary's size), for a method with `needs_roles`; None where the prompts have no roles (free text)
    token_roles: torch.Tensor | None = None

    @classmethod
    def every_token(cls, h: torch.Tensor) -> ForwardContext:
        """A context where every token of h ([B, T, W]) is real: a forward run without one (steering)."""
        return cls(torch.ones(h.shape[:2], dtype=torch.long, device=h.device))

    def gather(self, name: str, term: torch.Tensor) -> None:
        self.gathered.setdefault(name, []).append(term)

    @property
    def recording(self) -> bool:
        return self.recorder is not None

    def record(self, index: int, name: str, per_token: torch.Tensor) -> None:
        """Add a per-token statistic ([K, B, T(, H)]) to its tokens' cells (a no-op when not recording)."""
        if self.recorder is None:
            return
        assert self.token_columns is not None, "recording cells needs token_columns"
        k, bsz, t = per_token.shape[:3]
        columns = self.token_columns.reshape(k, bsz, -1)[:, :, :t].reshape(k, bsz * t).to(per_token.device)
        self.recorder.add(index, name, per_token, columns)


@dataclass(frozen=True)
class CellStats:
    """What `Intervention.cells` measures a trial's cells against: the mean |h| per cell on train
    ([L, C(, H)], for a method with `needs_norms`) and the recorded val evaluation (`records_cells`)."""

    norms: torch.Tensor | None = None
    recorded: CellRecorder | None = None


class Acting(Protocol):
    """What the hooks of `installed` apply: an Intervention, or a composition of several (the
    analysis' curve points)."""

    refs: list[SiteRef]
    n_trials: int

    def transform(self, index: int, h: torch.Tensor, ctx: ForwardContext) -> torch.Tensor: ...

    def minimality(self, ctx: ForwardContext) -> torch.Tensor: ...


class Intervention(nn.Module, abc.ABC):
    """A method: K trials of it at the sites of several layers, trained together in one batched forward.

    A subclass sets the class attributes below and defines the abstract methods; `@register_method`
    makes it available by name. Guarantees a subclass gives, which the trainer and the analysis rely on:

    - `transform(index, h, ctx)` returns a new tensor of h's shape and never changes h in place;
      h is [K*B, T, W], trial k's prompts in the k-th block of B rows.
    - It acts per token: a token's output depends only on that token's h (and the parameters), so
      replacing h by the output only at some tokens (`torch.where`) applies the method exactly at
      those tokens' cells and nowhere else. The analysis' curves and a future cell mask rely on it.
    - At initialisation it is the identity: the output equals h bit for bit.
    - Parameters are per trial: one nn.Parameter per trial in `nn.ParameterList`s of length K (so that
      each trial has its own optimizer), stacked for the forward; `keep_trials` rebuilds those lists
      when trials leave the batch. A method keeping other per-trial state overrides `keep_trials`.
    - `minimality(ctx)` does not change any state; what it needs from the forward it gathered in `ctx`.

    What plugs in later without changing this contract:
    - a cell mask (retrained "masked controls"): the trainer wraps the intervention in the same
      per-token `torch.where` the analysis uses (`only_cells`), with the train tokens' columns in the
      ctx, so cells outside a boolean [L, C(, H)] mask stay identity; their parameters get no gradient
      from the effectiveness or faithfulness terms and, at identity, none from an L1 term either;
    - `shrink(k, amounts)` (optional): the proximal L1 step (`train.l1: proximal`, workers/proximal.py),
      soft-thresholding trial k's values toward identity after each optimizer step, so that unmoved cells
      are exactly identity. The default refuses with a UsageError naming the method; a method without it
      (DynScalar: its L1 is a function of the activation) keeps the subgradient (`has_shrink`);
    - `needs_direction`: the constructor gets the train split's difference-in-means direction per cell
      (`Setup.direction`, computed by the trainer like `needs_norms`' norms): DiffMeans;
    - `needs_roles`: the constructor gets the unit's role vocabulary (`Setup.roles`) and every
      forward each token's index in it (`ctx.token_roles`, filled from `SplitData.roles` by whoever runs the
      forward: training, scoring, the analysis' points): ActivScalarRole;
    - per-cell activation patching: a method reading a counterfactual prompt's h at the same cell from a
      new `ForwardContext` field, filled by the forward that runs it.
    """

    method: ClassVar[str] = ""  # the name used in sweeps and tables (an identifier)
    fixed_length: ClassVar[bool] = True  # one parameter per position: the unit keeps prompts of one token length
    identity: ClassVar[float] = 1.0  # the stored `value` of a cell that does not change h (1: a scale; 0: an offset)
    moved_measure: ClassVar[str] = ""  # how a cell's effect is measured (stored in the units table)
    threshold_setting: ClassVar[str] = "active_threshold"  # the TrainSettings field: a cell moved above it
    needs_norms: ClassVar[bool] = False  # `cells` needs the mean |h| per cell on train (CellStats.norms)
    records_cells: ClassVar[bool] = False  # `cells` needs a recorded val evaluation (CellStats.recorded)
    needs_direction: ClassVar[bool] = False  # the constructor needs Setup.direction (the train mean difference)
    needs_roles: ClassVar[bool] = False  # one parameter per role: Setup.roles and every forward's ctx.token_roles

    def __init__(self, setup: Setup):
        super().__init__()
        self.refs = setup.refs
        self.n_trials = setup.n_trials  # the trials in the forward now (keep_trials changes it)
        self.n_heads = setup.refs[0].n_heads
        self.width = setup.refs[0].width
        self._n_positions = setup.n_positions
        self.roles: tuple[str, ...] = tuple(setup.roles or ())  # a method with needs_roles: its role vocabulary

    @classmethod
    def create(cls, setup: Setup) -> Intervention:
        """A fresh intervention for K trials (the identity)."""
        if not cls.fixed_length:
            return cls(replace(setup, n_positions=None))  # any length: not tied to the unit's prompts
        if setup.n_positions is None:
            raise UsageError(f"method {cls.method!r} needs prompts of one token length")
        return cls(setup)

    @abc.abstractmethod
    def transform(self, index: int, h: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """The activation at site `index` ([K*B, T, W]) after the intervention: a new tensor, same shape."""

    @abc.abstractmethod
    def minimality(self, ctx: ForwardContext) -> torch.Tensor:
        """The L1 term of each trial for the forward of `ctx`: [K]."""

    @abc.abstractmethod
    def trial_parameters(self, k: int) -> list[nn.Parameter]:
        """Trial k's parameters (its optimizer's)."""

    @abc.abstractmethod
    def cells(self, k: int, stats: CellStats) -> tuple[torch.Tensor, torch.Tensor]:
        """Trial k's (value, effect) per cell, each [L, C(, H)] on the CPU, C the unit's cell columns
        (positions for fixed-length methods; the recorded columns otherwise). A cell is (layer, column[,
        head]), the same for every method (workers/columns.py)."""

    def shrink(self, k: int, amounts: list[torch.Tensor]) -> None:
        """The proximal step of the L1 term for trial k (the k-th of the trials in the forward now): soft-threshold
        its values toward identity, in place, without gradient. `amounts` holds one tensor per
        `trial_parameters(k)`, broadcastable to it: lambda_min times the step size each element just took
        (workers/proximal.py); the method scales it by its L1 term's weight on that element."""
        raise UsageError(f"method {self.method!r} has no proximal L1 step (`shrink`): train it with train.l1: "
                         "subgradient")

    @classmethod
    def has_shrink(cls) -> bool:
        """Whether the method defines the proximal step (`shrink`)."""
        return cls.shrink is not Intervention.shrink

    @classmethod
    def moved_threshold(cls, settings: TrainSettings) -> float:
        """A cell is moved when its effect is above this."""
        return float(getattr(settings, cls.threshold_setting))

    def artifact_tensors(self, k: int) -> dict[str, torch.Tensor]:
        """Trial k's learned tensors, enough to rebuild it with `from_artifact` (stored as
        RUN_DIR/artifacts/<trial id>.safetensors; none by default)."""
        return {}

    @classmethod
    def from_artifact(cls, refs: list[SiteRef], tensors: dict[str, torch.Tensor], beta: float = 1.0) -> Intervention:
        """One stored trial (K = 1) at strength beta: every learned value moved from the identity by beta
        times its trained change (alpha' = 1 + beta(alpha - 1); v' = beta v), so beta = 0 is the model
        itself and beta = 1 the trial."""
        raise UsageError(f"method {cls.method!r} cannot be applied from a stored trial: its class defines no "
                         "artifact_tensors/from_artifact")

    @property
    def n_positions(self) -> int | None:
        """The prompt length a fixed-length method was built for (None: any length)."""
        return self._n_positions

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.trial_parameters(0))

    def keep_trials(self, live: list[int] | None) -> None:
        """Run only these trials (indices among all K) in the next forwards, None: all K again.

        A trial that stopped early leaves the batched forward, so its compute is saved, not masked.
        Every per-trial nn.ParameterList is rebuilt from the same Parameter objects, so each trial's
        optimizer keeps its state and `trial_parameters(k)` still means trial k once all are back."""
        if not hasattr(self, "_all_trials"):
            total = self.n_trials
            self._all_trials = (total, {name: list(module) for name, module in self._modules.items()
                                        if isinstance(module, nn.ParameterList) and len(module) == total})
        total, lists = self._all_trials
        chosen = list(range(total)) if live is None else list(live)
        for name, params in lists.items():
            setattr(self, name, nn.ParameterList([params[i] for i in chosen]))
        self.n_trials = len(chosen)

    def _split(self, h: torch.Tensor) -> torch.Tensor:
        """[K*B, T, W] -> [K, B, T, W] or [K, B, T, H, W/H] for the head site."""
        k = self.n_trials
        shape = (k, h.shape[0] // k, h.shape[1])
        shape += (self.n_heads, self.width // self.n_heads) if self.n_heads else (self.width,)
        return h.reshape(shape)


def _info(cls: type[Intervention]) -> MethodInfo:
    return MethodInfo(f"{cls.__module__}:{cls.__qualname__}", cls.fixed_length, cls.identity, cls.moved_measure,
                      cls.threshold_setting)


def register_method(cls: type[Intervention]) -> type[Intervention]:
    """Class decorator: make a method available by its `method` name (sweeps, CLI, report), and its
    facts known without torch (workers/names.py METHODS: a built-in's entry must agree with its class)."""
    name = cls.method
    if not name or not name.isidentifier():
        raise UsageError(f"method class {cls.__name__} needs a `method` name that is an identifier (got {name!r})")
    known = METHODS.get(name)
    if known is not None and known.path.partition(":")[2] != cls.__qualname__:
        raise UsageError(f"method {name!r} is registered twice ({known.path} and {cls.__module__}:{cls.__qualname__})")
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise UsageError(f"method class {cls.__qualname__} does not define {', '.join(missing)} (the Intervention "
                         "contract, workers/interventions.py)")
    if not cls.moved_measure:
        raise UsageError(f"method class {cls.__qualname__} needs a `moved_measure` (how a cell's effect is measured)")
    settings = [f.name for f in fields(TrainSettings) if f.name.endswith("_threshold")]
    if cls.threshold_setting not in settings:
        raise UsageError(f"method class {cls.__qualname__}: threshold_setting {cls.threshold_setting!r}; accepted: "
                         f"{', '.join(settings)}")
    info = _info(cls)
    if known is not None and known.path == info.path and known != info:
        raise UsageError(f"method {name!r}: its class says {info}, workers/names.py METHODS says {known}")
    METHODS[name] = info
    METHOD_CLASSES[name] = cls
    return cls


def method_class(method: str) -> type[Intervention]:
    """The registered class of a method (imported from its "module:Class" where not yet registered);
    a clear error naming the accepted ones otherwise."""
    if method not in METHOD_CLASSES:
        module, _, _ = method_info(method).path.partition(":")
        importlib.import_module(module)  # registers it
    return METHOD_CLASSES[method]


def build_intervention(method: str, refs: list[SiteRef], n_trials: int, n_positions: int | None,
                       direction: torch.Tensor | None = None, roles: tuple[str, ...] | None = None) -> Intervention:
    return method_class(method).create(Setup(refs, n_trials, n_positions, direction, roles))


def only_cells(x: torch.Tensor, changed: torch.Tensor, keep: torch.Tensor, columns: torch.Tensor,
               n_heads: int | None) -> torch.Tensor:
    """`changed` at the tokens (and heads) whose cell is kept, `x` elsewhere: exact per token.
    x, changed: [B, T, W]; keep: [C(, H)] bool for this site; columns: [B, T] each token's column."""
    kept = keep.to(x.device)[columns]  # [B, T(, H)]
    if n_heads:
        shape = x.shape[:2] + (n_heads, x.shape[2] // n_heads)
        return torch.where(kept[..., None], changed.reshape(shape), x.reshape(shape)).reshape(x.shape)
    return torch.where(kept[..., None], changed, x)


def _stacked(params: nn.ParameterList) -> torch.Tensor:
    return torch.stack(list(params))


@register_method
class ActivScalar(Intervention):
    """h <- alpha * h, one alpha per (layer, position[, head]), initialised to 1."""

    method = "activscalar"
    moved_measure = "|alpha-1|"

    def __init__(self, setup: Setup):
        super().__init__(setup)
        assert setup.n_positions is not None
        shape = (len(setup.refs), setup.n_positions) + ((self.n_heads,) if self.n_heads else ())
        self.alphas = nn.ParameterList([nn.Parameter(torch.ones(shape)) for _ in range(setup.n_trials)])

    def transform(self, index: int, h: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        x = self._split(h)
        alpha = _stacked(self.alphas)[:, index].to(x.dtype)  # [K, T(, H)]
        alpha = alpha[:, None, :, None] if not self.n_heads else alpha[:, None, :, :, None]
        return (x * alpha).reshape(h.shape)

    def minimality(self, ctx: ForwardContext) -> torch.Tensor:
        return (_stacked(self.alphas) - 1).abs().flatten(1).sum(1)

    def trial_parameters(self, k: int) -> list[nn.Parameter]:
        return [self.alphas[k]]

    def shrink(self, k: int, amounts: list[torch.Tensor]) -> None:
        """alpha <- 1 + sign(alpha - 1) max(|alpha - 1| - amount, 0)."""
        with torch.no_grad():
            self.alphas[k].copy_(soft_threshold(self.alphas[k], 1.0, amounts[0]))

    def cells(self, k: int, stats: CellStats) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.alphas[k].detach().cpu()  # [L, T(, H)]
        return alpha, (alpha - 1).abs()

    def artifact_tensors(self, k: int) -> dict[str, torch.Tensor]:
        return {"alpha": self.alphas[k].detach().cpu().clone()}  # [L, T(, H)]

    @classmethod
    def from_artifact(cls, refs: list[SiteRef], tensors: dict[str, torch.Tensor], beta: float = 1.0) -> Intervention:
        alpha = tensors["alpha"].float()  # [L, T(, H)]
        made = cls(Setup(refs, 1, alpha.shape[1]))
        with torch.no_grad():
            made.alphas[0].copy_(torch.lerp(torch.ones_like(alpha), alpha, beta))  # exact at beta 0 and 1
        return made


@register_method
class ActivScalarRole(Intervention):
    """h <- alpha * h, one alpha per (layer, role[, head]), initialised to 1: ActivScalar with its scalars tied to
    token roles (IO, S1, S2, END, a template's words; workers/tasks/roles.py) instead of positions, so that it runs
    on prompts of any length and applies its per-role scalars by role to a held-out template: the role-aligned
    baseline beside DynScalar (C6). The roles are the unit's role vocabulary (workers/columns.py RoleVocabulary,
    from the prompts that are not held out); a token of a role outside it (a held-out template's own word) is left
    alone. Each forward hands each token's role index in `ctx.token_roles`; a forward without one (free text) is
    refused, since the scalars mean nothing without roles."""

    method = "activscalar_role"
    fixed_length = False
    needs_roles = True
    moved_measure = "|alpha-1|"

    def __init__(self, setup: Setup):
        super().__init__(setup)
        if not setup.roles:
            raise UsageError(f"method {self.method!r} needs the unit's role vocabulary (Setup.roles, at least 1 role; "
                             f"got {setup.roles!r})")
        shape = (len(setup.refs), len(self.roles)) + ((self.n_heads,) if self.n_heads else ())
        self.alphas = nn.ParameterList([nn.Parameter(torch.ones(shape)) for _ in range(setup.n_trials)])

    def transform(self, index: int, h: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        if ctx.token_roles is None:
            raise UsageError(f"method {self.method!r} scales each token by its role, and this forward gives no "
                             "token roles (a prompt of free text has none): apply it to a task's prompts")
        x = self._split(h)  # [K, B, T, W] or [K, B, T, H, W/H]
        k, bsz, t = x.shape[:3]
        alpha = _stacked(self.alphas)[:, index].to(x.dtype)  # [K, R(, H)]
        alpha = torch.cat([alpha, torch.ones_like(alpha[:, :1])], dim=1)  # [K, R + 1(, H)]: R, a role outside
        roles = ctx.token_roles.reshape(k, bsz, -1)[:, :, :t].reshape(k, bsz * t).to(x.device)  # [K, B*T]
        if self.n_heads:
            per_token = alpha.gather(1, roles[..., None].expand(-1, -1, self.n_heads))  # [K, B*T, H]
            return (x * per_token.reshape(k, bsz, t, self.n_heads, 1)).reshape(h.shape)
        return (x * alpha.gather(1, roles).reshape(k, bsz, t, 1)).reshape(h.shape)

    def minimality(self, ctx: ForwardContext) -> torch.Tensor:
        return (_stacked(self.alphas) - 1).abs().flatten(1).sum(1)

    def trial_parameters(self, k: int) -> list[nn.Parameter]:
        return [self.alphas[k]]

    def shrink(self, k: int, amounts: list[torch.Tensor]) -> None:
        """alpha <- 1 + sign(alpha - 1) max(|alpha - 1| - amount, 0)."""
        with torch.no_grad():
            self.alphas[k].copy_(soft_threshold(self.alphas[k], 1.0, amounts[0]))

    def cells(self, k: int, stats: CellStats) -> tuple[torch.Tensor, torch.Tensor]:
        """Per (layer, vocabulary role[, head]): the columns of its unit (RoleVocabulary.columns)."""
        alpha = self.alphas[k].detach().cpu()  # [L, R(, H)]
        return alpha, (alpha - 1).abs()

    def artifact_tensors(self, k: int) -> dict[str, torch.Tensor]:
        """alpha, and the role vocabulary's names (UTF-8 bytes, one role per line), so a stored trial can be applied
        by role to a new prompt (workers/steer.py)."""
        return {"alpha": self.alphas[k].detach().cpu().clone(),  # [L, R(, H)]
                "roles": torch.tensor(list("\n".join(self.roles).encode()), dtype=torch.uint8)}  # [bytes]

    @staticmethod
    def stored_roles(tensors: dict[str, torch.Tensor]) -> tuple[str, ...]:
        """The role vocabulary a stored trial was trained with (its "roles" tensor)."""
        return tuple(bytes(torch.as_tensor(tensors["roles"]).tolist()).decode().split("\n"))

    @classmethod
    def from_artifact(cls, refs: list[SiteRef], tensors: dict[str, torch.Tensor], beta: float = 1.0) -> Intervention:
        alpha = tensors["alpha"].float()  # [L, R(, H)]
        made = cls(Setup(refs, 1, None, roles=cls.stored_roles(tensors)))
        if len(made.roles) != alpha.shape[1]:
            raise UsageError(f"a stored {cls.method!r} trial has {alpha.shape[1]} roles' scalars and {len(made.roles)} "
                             "role names: its tensors do not belong together")
        with torch.no_grad():
            made.alphas[0].copy_(torch.lerp(torch.ones_like(alpha), alpha, beta))  # exact at beta 0 and 1
        return made


@register_method
class SteerVec(Intervention):
    """h <- h + v, one vector per (layer, position), initialised to 0."""

    method = "steervec"
    needs_norms = True
    identity = 0.0  # the stored value is |v|
    moved_measure = "|v|/mean|h|"
    threshold_setting = "steer_threshold"

    def __init__(self, setup: Setup):
        super().__init__(setup)
        assert setup.n_positions is not None
        shape = (len(setup.refs), setup.n_positions, self.width)
        self.vectors = nn.ParameterList([nn.Parameter(torch.zeros(shape)) for _ in range(setup.n_trials)])

    def transform(self, index: int, h: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        k = self.n_trials
        x = h.reshape(k, h.shape[0] // k, h.shape[1], h.shape[2])
        v = _stacked(self.vectors)[:, index].to(x.dtype)  # [K, T, W]
        return (x + v[:, None]).reshape(h.shape)

    def minimality(self, ctx: ForwardContext) -> torch.Tensor:
        return _stacked(self.vectors).abs().flatten(1).sum(1)

    def trial_parameters(self, k: int) -> list[nn.Parameter]:
        return [self.vectors[k]]

    def shrink(self, k: int, amounts: list[torch.Tensor]) -> None:
        """Elementwise on v: v <- sign(v) max(|v| - amount, 0)."""
        with torch.no_grad():
            self.vectors[k].copy_(soft_threshold(self.vectors[k], 0.0, amounts[0]))

    def cells(self, k: int, stats: CellStats) -> tuple[torch.Tensor, torch.Tensor]:
        """Value: |v| per cell (per head's slice for the head site); effect: |v| / mean |h| there."""
        v = self.vectors[k].detach().cpu()  # [L, T, W]
        if self.n_heads:
            v = v.reshape(v.shape[0], v.shape[1], self.n_heads, -1)  # [L, T, H, W/H]
        value = v.norm(dim=-1)  # [L, T(, H)]
        assert stats.norms is not None, "SteerVec needs the mean |h| per cell"
        return value, value / stats.norms.clamp_min(1e-6)

    def artifact_tensors(self, k: int) -> dict[str, torch.Tensor]:
        """The vectors themselves: the scalars table holds only their norms."""
        return {"param": self.vectors[k].detach().cpu().clone()}  # [L, T, W]

    @classmethod
    def from_artifact(cls, refs: list[SiteRef], tensors: dict[str, torch.Tensor], beta: float = 1.0) -> Intervention:
        v = tensors["param"].float()  # [L, T, W]
        made = cls(Setup(refs, 1, v.shape[1]))
        with torch.no_grad():
            made.vectors[0].copy_(beta * v)
        return made


@register_method
class DiffMeans(Intervention):
    """The training-free baseline: h <- h + c v, v per (layer, position) the train split's mean difference
    h(counterfactual) - h(prompt) at the site, unintervened (workers/directions.py), and ONE learned scalar c
    per trial, initialised to 0, trained by the same objective (minimality |c| sum |v|: SteerVec's L1 of the
    vector it adds). What SteerVec gains over it is what learning the vectors buys. The direction is
    estimated, not learned: n_params is 1."""

    method = "diffmeans"
    needs_norms = True
    needs_direction = True
    identity = 0.0  # the stored value is |c| |v|
    moved_measure = "|c||v|/mean|h| (v estimated, not learned)"
    threshold_setting = "steer_threshold"

    def __init__(self, setup: Setup):
        super().__init__(setup)
        assert setup.n_positions is not None
        shape = (len(setup.refs), setup.n_positions, self.width)
        if setup.direction is None:
            raise UsageError(f"method {self.method!r} needs the train split's difference-in-means direction "
                             "(Setup.direction, computed by the trainer)")
        if tuple(setup.direction.shape) != shape:
            raise UsageError(f"method {self.method!r}: a direction of shape {tuple(setup.direction.shape)}; "
                             f"accepted: {shape} (layers, positions, width)")
        self.register_buffer("direction", setup.direction.detach().float().clone())  # [L, T, W], shared
        self.scales = nn.ParameterList([nn.Parameter(torch.zeros(())) for _ in range(setup.n_trials)])

    def transform(self, index: int, h: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        k = self.n_trials
        x = h.reshape(k, h.shape[0] // k, h.shape[1], h.shape[2])  # [K, B, T, W]
        c = _stacked(self.scales).to(x.dtype)  # [K]
        v = self.direction[index].to(x.dtype)  # [T, W]
        return (x + c[:, None, None, None] * v).reshape(h.shape)

    def minimality(self, ctx: ForwardContext) -> torch.Tensor:
        return _stacked(self.scales).abs() * self.direction.abs().sum()  # [K]

    def trial_parameters(self, k: int) -> list[nn.Parameter]:
        return [self.scales[k]]

    def shrink(self, k: int, amounts: list[torch.Tensor]) -> None:
        """c <- sign(c) max(|c| - amount sum|v|, 0): the L1 term's weight on c is sum |v|."""
        with torch.no_grad():
            self.scales[k].copy_(soft_threshold(self.scales[k], 0.0, amounts[0] * self.direction.abs().sum()))

    def cells(self, k: int, stats: CellStats) -> tuple[torch.Tensor, torch.Tensor]:
        """Value: |c| |v| per cell (per head's slice for the head site); effect: that / mean |h| there."""
        v = self.direction.detach().cpu()  # [L, T, W]
        if self.n_heads:
            v = v.reshape(v.shape[0], v.shape[1], self.n_heads, -1)  # [L, T, H, W/H]
        value = self.scales[k].detach().cpu().abs() * v.norm(dim=-1)  # [L, T(, H)]
        assert stats.norms is not None, "DiffMeans needs the mean |h| per cell"
        return value, value / stats.norms.clamp_min(1e-6)

    def artifact_tensors(self, k: int) -> dict[str, torch.Tensor]:
        """c and the direction v: the scalars table holds only |c| |v| per cell."""
        return {"scale": self.scales[k].detach().cpu().reshape(1).clone(),  # [1]
                "direction": self.direction.detach().cpu().clone()}  # [L, T, W]

    @classmethod
    def from_artifact(cls, refs: list[SiteRef], tensors: dict[str, torch.Tensor], beta: float = 1.0) -> Intervention:
        """c' = beta c, v as estimated."""
        v = tensors["direction"].float()  # [L, T, W]
        made = cls(Setup(refs, 1, v.shape[1], v))
        with torch.no_grad():
            made.scales[0].copy_(beta * tensors["scale"].float().reshape(()))
        return made


@register_method
class DynScalar(Intervention):
    """h <- alpha_l(h) * h, alpha_l(h) = 1 + w_l . h/|h| + b_l: works for prompts of any length.

    Minimality is the mean over prompts of the sum of |alpha - 1| over layers and real tokens,
    gathered in the forward's context (`ctx.gather`) and summed by `minimality(ctx)`. Its cells are
    recorded on val (`records_cells`): mean alpha and mean |alpha - 1| over each column's tokens.
    """

    method = "dynscalar"
    fixed_length = False
    records_cells = True
    moved_measure = "mean |alpha-1| over val tokens"
    reads_activation = True  # False: alpha = 1 + b only, no `w` parameters (DynScalarBias, the control)

    def __init__(self, setup: Setup):
        super().__init__(setup)
        refs, n_trials = setup.refs, setup.n_trials
        head = (self.n_heads,) if self.n_heads else ()
        if self.reads_activation:
            w_shape = (len(refs),) + head + ((self.width // self.n_heads,) if self.n_heads else (self.width,))
            self.weights = nn.ParameterList([nn.Parameter(torch.zeros(w_shape)) for _ in range(n_trials)])
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros((len(refs),) + head)) for _ in range(n_trials)])

    def alpha(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """x: [K, B, T(, H), W] -> alpha [K, B, T(, H)]."""
        w = _stacked(self.weights)[:, index].to(x.dtype)
        b = _stacked(self.biases)[:, index].to(x.dtype)
        unit = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        if self.n_heads:
            dot = torch.einsum("kbthd,khd->kbth", unit, w)
            return 1 + dot + b[:, None, None, :]
        return 1 + torch.einsum("kbtd,kd->kbt", unit, w) + b[:, None, None]

    def transform(self, index: int, h: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        x = self._split(h)
        alpha = self.alpha(index, x)
        k, bsz, t = x.shape[:3]
        mask = ctx.token_mask.reshape(k, bsz, -1)[:, :, :t].to(x.dtype)  # [K, B, T]
        dev = (alpha - 1).abs()
        m = mask[..., None] if self.n_heads else mask  # [K, B, T(, 1)]
        dev_real = dev * m
        ctx.gather("l1", dev_real.flatten(2).sum(2).mean(1))  # [K]: mean over prompts
        if ctx.recording:
            ctx.record(index, "alpha", (alpha * m).detach().float())
            ctx.record(index, "dev", dev_real.detach().float())
            ctx.record(index, "count", mask.detach().float())
        scale = alpha[..., None]
        return (x * scale).reshape(h.shape)

    def cells(self, k: int, stats: CellStats) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean alpha and mean |alpha-1| over the recorded (val) tokens of each cell (layer, column[, head])."""
        assert stats.recorded is not None, "DynScalar cells need a recorded evaluation"
        values, effects = [], []
        for j in range(len(self.refs)):
            alpha_sum, dev_sum, count = (stats.recorded.sums(j, name)[k].cpu() for name in ("alpha", "dev", "count"))
            c = count.clamp_min(1)[:, None] if self.n_heads else count.clamp_min(1)
            values.append(alpha_sum / c)
            effects.append(dev_sum / c)
        return torch.stack(values), torch.stack(effects)  # [L, C(, H)]

    def minimality(self, ctx: ForwardContext) -> torch.Tensor:
        """Sum over layers of the terms gathered during the forward of `ctx`: [K]."""
        terms = ctx.gathered.get("l1")
        if not terms:
            return torch.zeros(self.n_trials)
        return torch.stack(terms).sum(0)

    def trial_parameters(self, k: int) -> list[nn.Parameter]:
        return [self.weights[k], self.biases[k]]

    def artifact_tensors(self, k: int) -> dict[str, torch.Tensor]:
        """w and b: the scalars table holds alpha averaged over val, not the function that makes it."""
        return {"weight": self.weights[k].detach().cpu().clone(),  # [L(, H), W(/H)]
                "bias": self.biases[k].detach().cpu().clone()}  # [L(, H)]

    @classmethod
    def from_artifact(cls, refs: list[SiteRef], tensors: dict[str, torch.Tensor], beta: float = 1.0) -> Intervention:
        """alpha'(h) = 1 + beta (w . h/|h| + b): w and b scaled by beta."""
        made = cls(Setup(refs, 1))
        with torch.no_grad():
            made.weights[0].copy_(beta * tensors["weight"].float())
            made.biases[0].copy_(beta * tensors["bias"].float())
        return made


@register_method
class DynScalarBias(DynScalar):
    """DynScalar's control without the activation: alpha_l = 1 + b_l (w = 0, no `w` parameters),
    one scale per layer (and head) for every token. What DynScalar gains over it on held-out
    prompts is what reading the activation buys."""

    method = "dynscalar_bias"
    reads_activation = False

    def alpha(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """x: [K, B, T(, H), W] -> alpha [K, B, T(, H)], the same for every token."""
        b = _stacked(self.biases)[:, index].to(x.dtype)  # [K(, H)]
        shape = x.shape[:-1]
        b = b[:, None, None, :] if self.n_heads else b[:, None, None]
        return (1 + b).expand(shape)

    def trial_parameters(self, k: int) -> list[nn.Parameter]:
        return [self.biases[k]]

    def artifact_tensors(self, k: int) -> dict[str, torch.Tensor]:
        return {"bias": self.biases[k].detach().cpu().clone()}  # [L(, H)]

    @classmethod
    def from_artifact(cls, refs: list[SiteRef], tensors: dict[str, torch.Tensor], beta: float = 1.0) -> Intervention:
        made = cls(Setup(refs, 1))
        with torch.no_grad():
            made.biases[0].copy_(beta * tensors["bias"].float())
        return made


class Installed:
    """The hooks of one `Acting` on a model (yielded by `installed`). A forward run inside
    `forward(ctx)` hands `ctx` to every transform call; a forward outside one gets a fresh context in
    which every token is real (nothing gathered in it is read).

    The transform runs in fp32 whatever the model's dtype (a bf16 training copy): alpha near 1 would
    move in bf16 steps of 0.008, and alpha = 1 leaves the activation bit-equal either way."""

    def __init__(self, acting: Acting):
        self.acting = acting
        self._ctx: ForwardContext | None = None

    @contextmanager
    def forward(self, ctx: ForwardContext) -> Iterator[ForwardContext]:
        self._ctx = ctx
        try:
            yield ctx
        finally:
            self._ctx = None

    def __call__(self, index: int, h: torch.Tensor) -> torch.Tensor:
        ctx = self._ctx if self._ctx is not None else ForwardContext.every_token(h)
        if h.dtype == torch.float32:
            return self.acting.transform(index, h, ctx)
        return self.acting.transform(index, h.float(), ctx).to(h.dtype)


@contextmanager
def installed(acting: Acting, refs: list[SiteRef] | None = None) -> Iterator[Installed]:
    """Install the hooks of `acting` (on `refs`: the same sites of another copy of the model) for the
    duration of the block; always remove them."""
    hooks = Installed(acting)
    with hooked(refs or acting.refs, hooks):
        yield hooks
