"""Methods as plugins: ActivScalar, SteerVec and DynScalar as torch modules, with a leading trial dimension.

Each method is a subclass of `Intervention`, registered by name with `@register_method`; the
subclass owns everything method-specific (its parameters, transform, minimality, the moved
measure of a cell, its artifact tensors, the value meaning "no change"), so the trainer, the
actor, the CLI and the report never compare method names. A user's method is a subclass in
the user's own module, named in the sweep's `plugins:` list (docs/architecture.md).

Parameters are stacked over K trials so that K trials of one unit train in one batched
forward (batch K x B); each trial has its own nn.Parameter so that optimizers keep
per-trial state and learning rates. Hooks return new tensors, never mutate outputs in
place, and `installed` always removes them.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from workers.errors import UsageError
from workers.sites import SiteRef, hooked

METHOD_CLASSES: dict[str, type[Intervention]] = {}  # the registry: method name -> class
# the strengths beta of the strength sweep (workers/analysis.py; `Intervention.from_artifact`)
STRENGTHS = (-1.0, -0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


def register_method(cls: type[Intervention]) -> type[Intervention]:
    """Class decorator: make a method available by its `method` name (sweeps, CLI, report)."""
    if not cls.method or not cls.method.isidentifier():
        raise UsageError(f"method class {cls.__name__} needs a `method` name that is an identifier (got {cls.method!r})")
    known = METHOD_CLASSES.get(cls.method)
    if known is not None and known.__qualname__ != cls.__qualname__:
        raise UsageError(f"method {cls.method!r} is registered twice ({known.__qualname__} and {cls.__qualname__})")
    METHOD_CLASSES[cls.method] = cls
    return cls


def method_names() -> tuple[str, ...]:
    return tuple(METHOD_CLASSES)


def method_class(method: str) -> type[Intervention]:
    """The registered class of a method; a clear error naming the accepted ones otherwise."""
    if method not in METHOD_CLASSES:
        raise UsageError(f"unknown method {method!r}; accepted: {', '.join(METHOD_CLASSES)} (a method of your own: "
                         "a registered Intervention subclass in a module named under `plugins:`)")
    return METHOD_CLASSES[method]


def any_length_methods() -> list[str]:
    """Methods that work on prompts of several token lengths."""
    return [name for name, cls in METHOD_CLASSES.items() if not cls.fixed_length]


def check_method(method: str) -> None:
    method_class(method)


class Intervention(nn.Module):
    """Base: K trials x (sites at several layers). Subclasses define the class attributes and
    methods marked "subclass" below, and are registered with `@register_method`."""

    method = ""  # subclass: the name used in sweeps and tables
    fixed_length = True  # one parameter per position: the unit keeps prompts of one token length
    needs_norms = False  # `cells` needs the mean |h| per cell on train
    identity = 1.0  # the stored `value` of a cell that does not change h (1: a scale; 0: an offset)
    moved_measure = ""  # subclass: how a cell's effect is measured (stored in the units table)

    def __init__(self, refs: list[SiteRef], n_trials: int):
        super().__init__()
        self.refs = refs
        self.n_trials = n_trials
        self.n_heads = refs[0].n_heads
        self.width = refs[0].width
        self.token_mask: torch.Tensor | None = None  # [K*B, T], 1 for real tokens (set by the trainer)
        # [K*B, T]: each token's cell column (its position, or its role for prompts of several shapes;
        # workers/columns.py), set by the trainer while cells are recorded
        self.token_columns: torch.Tensor | None = None

    def _split(self, h: torch.Tensor) -> torch.Tensor:
        """[K*B, T, W] -> [K, B, T, W] or [K, B, T, H, W/H] for the head site."""
        k = self.n_trials
        shape = (k, h.shape[0] // k, h.shape[1])
        shape += (self.n_heads, self.width // self.n_heads) if self.n_heads else (self.width,)
        return h.reshape(shape)

    @classmethod
    def create(cls, refs: list[SiteRef], n_trials: int, n_positions: int | None) -> Intervention:
        """A fresh intervention for K trials; `n_positions` is None for prompts of several lengths."""
        if cls.fixed_length:
            if n_positions is None:
                raise UsageError(f"method {cls.method!r} needs prompts of one token length")
            return cls(refs, n_trials, n_positions)  # type: ignore[call-arg]
        return cls(refs, n_trials)

    def transform(self, index: int, h: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Subclass: the activation at site `index` ([K*B, T, W]) after the intervention, same shape."""
        raise NotImplementedError

    def begin_forward(self) -> None:
        """Called before every forward: a method that gathers terms during the forward resets them."""

    def minimality(self) -> torch.Tensor:  # [K]
        """Subclass: the L1 term of each trial for the last forward (does not change any state)."""
        raise NotImplementedError

    def trial_parameters(self, k: int) -> list[nn.Parameter]:
        """Subclass: trial k's parameters (its optimizer's)."""
        raise NotImplementedError

    def record_cells(self, n_columns: int | None) -> None:
        """Start (n_columns) or stop (None) recording per-cell statistics during evaluation, for
        methods whose cells depend on the activation (DynScalar); a no-op for the others. Each
        token counts towards its column in `token_columns`."""

    # What a "site" is, the same for every method: one (layer, column[, head]) cell (workers/columns.py).
    @classmethod
    def moved_threshold(cls, settings) -> float:
        """A cell is moved when its effect is above this (TrainSettings holds both thresholds)."""
        return settings.active_threshold

    def cells(self, k: int, norms: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Subclass: trial k's (value, effect) per cell, each [L, C(, H)] on the CPU, C the unit's cell columns
        (positions for fixed-length methods; the recorded columns otherwise). `norms`: mean |h| per cell."""
        raise NotImplementedError

    def artifact_tensors(self, k: int) -> dict[str, torch.Tensor]:
        """Subclass: trial k's learned tensors, enough to rebuild it with `from_artifact`
        (stored as RUN_DIR/artifacts/<trial id>.safetensors; none by default)."""
        return {}

    @classmethod
    def from_artifact(cls, refs: list[SiteRef], tensors: dict[str, torch.Tensor], beta: float = 1.0) -> Intervention:
        """Subclass: one stored trial (K = 1) at strength beta: every learned value moved from the
        identity by beta times its trained change (alpha' = 1 + beta(alpha - 1); v' = beta v), so beta = 0
        is the model itself and beta = 1 the trial."""
        raise UsageError(f"method {cls.method!r} cannot be applied from a stored trial: its class defines no "
                         "artifact_tensors/from_artifact")

    @property
    def n_positions(self) -> int | None:
        """The prompt length a fixed-length method was built for (None: any length)."""
        return None

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


def _stacked(params: nn.ParameterList) -> torch.Tensor:
    return torch.stack(list(params))


@register_method
class ActivScalar(Intervention):
    """h <- alpha * h, one alpha per (layer, position[, head]), initialised to 1."""

    method = "activscalar"

    def __init__(self, refs: list[SiteRef], n_trials: int, n_positions: int):
        super().__init__(refs, n_trials)
        shape = (len(refs), n_positions) + ((self.n_heads,) if self.n_heads else ())
        self.alphas = nn.ParameterList([nn.Parameter(torch.ones(shape)) for _ in range(n_trials)])

    def transform(self, index: int, h: torch.Tensor) -> torch.Tensor:
        x = self._split(h)
        alpha = _stacked(self.alphas)[:, index].to(x.dtype)  # [K, T(, H)]
        alpha = alpha[:, None, :, None] if not self.n_heads else alpha[:, None, :, :, None]
        return (x * alpha).reshape(h.shape)

    def minimality(self) -> torch.Tensor:
        return (_stacked(self.alphas) - 1).abs().flatten(1).sum(1)

    def trial_parameters(self, k: int) -> list[nn.Parameter]:
        return [self.alphas[k]]

    moved_measure = "|alpha-1|"

    def cells(self, k: int, norms: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = self.alphas[k].detach().cpu()  # [L, T(, H)]
        return alpha, (alpha - 1).abs()

    def artifact_tensors(self, k: int) -> dict[str, torch.Tensor]:
        return {"alpha": self.alphas[k].detach().cpu().clone()}  # [L, T(, H)]

    @classmethod
    def from_artifact(cls, refs: list[SiteRef], tensors: dict[str, torch.Tensor], beta: float = 1.0) -> Intervention:
        alpha = tensors["alpha"].float()  # [L, T(, H)]
        made = cls(refs, 1, alpha.shape[1])
        with torch.no_grad():
            made.alphas[0].copy_(torch.lerp(torch.ones_like(alpha), alpha, beta))  # exact at beta 0 and 1
        return made

    @property
    def n_positions(self) -> int | None:
        return int(self.alphas[0].shape[1])


@register_method
class SteerVec(Intervention):
    """h <- h + v, one vector per (layer, position), initialised to 0."""

    method = "steervec"
    needs_norms = True
    identity = 0.0  # the stored value is |v|

    def __init__(self, refs: list[SiteRef], n_trials: int, n_positions: int):
        super().__init__(refs, n_trials)
        shape = (len(refs), n_positions, self.width)
        self.vectors = nn.ParameterList([nn.Parameter(torch.zeros(shape)) for _ in range(n_trials)])

    def transform(self, index: int, h: torch.Tensor) -> torch.Tensor:
        k = self.n_trials
        x = h.reshape(k, h.shape[0] // k, h.shape[1], h.shape[2])
        v = _stacked(self.vectors)[:, index].to(x.dtype)  # [K, T, W]
        return (x + v[:, None]).reshape(h.shape)

    def minimality(self) -> torch.Tensor:
        return _stacked(self.vectors).abs().flatten(1).sum(1)

    def trial_parameters(self, k: int) -> list[nn.Parameter]:
        return [self.vectors[k]]

    moved_measure = "|v|/mean|h|"

    @classmethod
    def moved_threshold(cls, settings) -> float:
        return settings.steer_threshold

    def cells(self, k: int, norms: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Value: |v| per cell (per head's slice for the head site); effect: |v| / mean |h| there."""
        v = self.vectors[k].detach().cpu()  # [L, T, W]
        if self.n_heads:
            v = v.reshape(v.shape[0], v.shape[1], self.n_heads, -1)  # [L, T, H, W/H]
        value = v.norm(dim=-1)  # [L, T(, H)]
        assert norms is not None, "SteerVec needs the mean |h| per cell"
        return value, value / norms.clamp_min(1e-6)

    def artifact_tensors(self, k: int) -> dict[str, torch.Tensor]:
        """The vectors themselves: the scalars table holds only their norms."""
        return {"param": self.vectors[k].detach().cpu().clone()}  # [L, T, W]

    @classmethod
    def from_artifact(cls, refs: list[SiteRef], tensors: dict[str, torch.Tensor], beta: float = 1.0) -> Intervention:
        v = tensors["param"].float()  # [L, T, W]
        made = cls(refs, 1, v.shape[1])
        with torch.no_grad():
            made.vectors[0].copy_(beta * v)
        return made

    @property
    def n_positions(self) -> int | None:
        return int(self.vectors[0].shape[1])


@register_method
class DynScalar(Intervention):
    """h <- alpha_l(h) * h, alpha_l(h) = 1 + w_l . h/|h| + b_l: works for prompts of any length.

    Minimality is the mean over prompts of the sum of |alpha - 1| over layers and real
    tokens, gathered during the forward (`begin_forward` resets it, `minimality` reads it).
    """

    method = "dynscalar"
    fixed_length = False
    reads_activation = True  # False: alpha = 1 + b only, no `w` parameters (DynScalarBias, the control)

    def __init__(self, refs: list[SiteRef], n_trials: int):
        super().__init__(refs, n_trials)
        head = (self.n_heads,) if self.n_heads else ()
        if self.reads_activation:
            w_shape = (len(refs),) + head + ((self.width // self.n_heads,) if self.n_heads else (self.width,))
            self.weights = nn.ParameterList([nn.Parameter(torch.zeros(w_shape)) for _ in range(n_trials)])
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros((len(refs),) + head)) for _ in range(n_trials)])
        self._l1_terms: list[torch.Tensor] = []
        # While set (evaluation on val): layer index -> (sum alpha, sum |alpha-1|) [K, C(, H)] and
        # real-token count [K, C] per cell column (`token_columns`), over `n_columns` columns.
        self.record: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
        self.n_columns = 0

    def alpha(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """x: [K, B, T(, H), W] -> alpha [K, B, T(, H)]."""
        w = _stacked(self.weights)[:, index].to(x.dtype)
        b = _stacked(self.biases)[:, index].to(x.dtype)
        unit = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        if self.n_heads:
            dot = torch.einsum("kbthd,khd->kbth", unit, w)
            return 1 + dot + b[:, None, None, :]
        return 1 + torch.einsum("kbtd,kd->kbt", unit, w) + b[:, None, None]

    def transform(self, index: int, h: torch.Tensor) -> torch.Tensor:
        x = self._split(h)
        alpha = self.alpha(index, x)
        k, bsz, t = x.shape[:3]
        mask = self.token_mask.reshape(k, bsz, -1)[:, :, :t].to(x.dtype) if self.token_mask is not None \
            else torch.ones(k, bsz, t, dtype=x.dtype, device=x.device)
        dev = (alpha - 1).abs()
        m = mask[..., None] if self.n_heads else mask  # [K, B, T(, 1)]
        dev_real = dev * m
        self._l1_terms.append(dev_real.flatten(2).sum(2).mean(1))  # [K]: mean over prompts
        if self.record is not None:
            self._record(index, (alpha * m).detach().float(), dev_real.detach().float(), mask.detach().float())
        scale = alpha[..., None]
        return (x * scale).reshape(h.shape)

    def _record(self, index: int, alpha: torch.Tensor, dev: torch.Tensor, mask: torch.Tensor) -> None:
        """Add this forward's masked alpha and |alpha-1| ([K, B, T(, H)]) and token counts ([K, B, T])
        to the sums of each token's cell column."""
        assert self.token_columns is not None, "recording cells needs token_columns"
        k, bsz, t = mask.shape
        columns = self.token_columns.reshape(k, bsz, -1)[:, :, :t].reshape(k, bsz * t).to(mask.device)  # [K, B*T]

        def by_column(x: torch.Tensor) -> torch.Tensor:  # [K, B, T(, H)] -> [K, C(, H)]
            flat = x.reshape((k, bsz * t) + x.shape[3:])
            index = columns[..., None].expand_as(flat) if flat.dim() == 3 else columns
            return flat.new_zeros((k, self.n_columns) + x.shape[3:]).scatter_add_(1, index, flat)

        new = (by_column(alpha), by_column(dev), by_column(mask))
        old = self.record.get(index)
        self.record[index] = new if old is None else tuple(a + b for a, b in zip(old, new))

    moved_measure = "mean |alpha-1| over val tokens"

    def record_cells(self, n_columns: int | None) -> None:
        self.record, self.n_columns = ({}, n_columns) if n_columns is not None else (None, 0)

    def cells(self, k: int, norms: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean alpha and mean |alpha-1| over the recorded (val) tokens of each cell (layer, column[, head])."""
        assert self.record, "DynScalar cells need a recorded evaluation"
        values, effects = [], []
        for j in range(len(self.refs)):
            alpha_sum, dev_sum, count = (x[k].cpu() for x in self.record[j])
            c = count.clamp_min(1)[:, None] if self.n_heads else count.clamp_min(1)
            values.append(alpha_sum / c)
            effects.append(dev_sum / c)
        return torch.stack(values), torch.stack(effects)  # [L, C(, H)]

    def begin_forward(self) -> None:
        self._l1_terms = []

    def minimality(self) -> torch.Tensor:
        """Sum over layers of the terms gathered during the last forward: [K]."""
        if not self._l1_terms:
            return torch.zeros(self.n_trials)
        return torch.stack(self._l1_terms).sum(0)

    def trial_parameters(self, k: int) -> list[nn.Parameter]:
        return [self.weights[k], self.biases[k]]

    def artifact_tensors(self, k: int) -> dict[str, torch.Tensor]:
        """w and b: the scalars table holds alpha averaged over val, not the function that makes it."""
        return {"weight": self.weights[k].detach().cpu().clone(),  # [L(, H), W(/H)]
                "bias": self.biases[k].detach().cpu().clone()}  # [L(, H)]

    @classmethod
    def from_artifact(cls, refs: list[SiteRef], tensors: dict[str, torch.Tensor], beta: float = 1.0) -> Intervention:
        """alpha'(h) = 1 + beta (w . h/|h| + b): w and b scaled by beta."""
        made = cls(refs, 1)
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
        made = cls(refs, 1)
        with torch.no_grad():
            made.biases[0].copy_(beta * tensors["bias"].float())
        return made


def moved_rule(method: str, settings) -> tuple[str, float]:
    """(how a cell's effect is measured, the threshold above which it counts as moved) for a method."""
    cls = method_class(method)
    return cls.moved_measure, cls.moved_threshold(settings)


def build_intervention(method: str, refs: list[SiteRef], n_trials: int, n_positions: int | None) -> Intervention:
    return method_class(method).create(refs, n_trials, n_positions)


def import_plugins(modules: list[str] | tuple[str, ...]) -> None:
    """Import the modules that register a user's methods (the sweep's `plugins:`), on the
    coordinator and on every worker; a clear error if one cannot be imported."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise UsageError(f"plugin module {name!r} cannot be imported ({exc}); it must be importable on the "
                             "coordinator and on every worker node (on the PYTHONPATH or installed)") from None


@contextmanager
def installed(intervention: Intervention, refs: list[SiteRef] | None = None) -> Iterator[Intervention]:
    """Install the intervention's hooks (on `refs`: the same sites of another copy of the model)
    for the duration of the block; always remove them.

    The transform runs in fp32 whatever the model's dtype (a bf16 training copy): alpha near 1
    would move in bf16 steps of 0.008, and alpha = 1 leaves the activation bit-equal either way."""
    def precise(index: int, h: torch.Tensor) -> torch.Tensor:
        if h.dtype == torch.float32:
            return intervention.transform(index, h)
        return intervention.transform(index, h.float()).to(h.dtype)

    with hooked(refs or intervention.refs, precise):
        yield intervention
