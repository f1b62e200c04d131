"""docs/sweep-config.md, generated from the pydantic models of the sweep YAML.

Every key with its type, default and meaning comes from `search_spaces/config.py` (the
fields' descriptions), so the page cannot drift from what is validated: a test regenerates
it and compares (`ACTSCALE_WRITE_DOCS=1` rewrites it).
"""
from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from search_spaces.config import SpaceOverride, SweepConfig, TaskEntry

HEADER = """# Sweep configuration

A sweep is one YAML file (`actscale run SWEEP.yaml`). Every key is below, with its type,
default and meaning; an unknown key or a bad value is refused with the key's path and what
is accepted. This page is generated from `search_spaces/config.py` by a test, so it is the
same as what is validated. Definitions (sites moved, the selection rule, splits) are in
`docs/architecture.md`; built-in sweeps are in `search_spaces/*.yaml`.

```yaml
name: my-sweep
models: [smollm2-135m]
tasks: [ioi, {name: ccc, options: {answer: memory}}]
sites: [mlp_out]
layers: all
methods: [activscalar, steervec]
search: {sampler: nsga2, n_trials: 8, batch: 4, replicates: 3}
train: {steps: 60, batch_size: 32}
selection: {min_flip: 0.9}
```
"""


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + (
            " (optional)" if type(None) in args else "")
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (list, tuple):
        inner = ", ".join(_type_name(a) for a in args if a is not Ellipsis)
        return f"list of {inner}" if origin is list else f"({inner})"
    if origin is dict:
        return f"mapping {_type_name(args[0])} → {_type_name(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping" if annotation.__name__ not in ("Range", "IntRange") else \
            "`{low, high, log}`"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    factory = field.default_factory
    value = factory() if field.default is PydanticUndefined and factory is not None else field.default  # type: ignore[call-arg]
    if isinstance(value, BaseModel):
        if type(value).__name__ in ("Range", "IntRange"):
            return f"`{value.model_dump()}`"
        return "(see below)"
    if value in ({}, None):
        return "-" if value is None else "`{}`"
    if isinstance(value, tuple):
        value = list(value)
    return f"`{value}`"


def _rows(model: type[BaseModel], prefix: str, out: list[str], sections: list[tuple[str, type[BaseModel]]]) -> None:
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        meaning = (field.description or "").replace("|", "\\|")
        out.append(f"| `{path}` | {_type_name(field.annotation)} | {_default(field)} | {meaning} |")
        annotation = field.annotation
        optional = [a for a in typing.get_args(annotation) if a is not type(None)]
        if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(optional) == 1:
            annotation = optional[0]  # an optional section (train.converge) has its own table too
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and \
                annotation.__name__ not in ("Range", "IntRange"):
            sections.append((path, annotation))


def render_page() -> str:
    parts = [HEADER]
    sections: list[tuple[str, type[BaseModel]]] = [("", SweepConfig)]
    while sections:
        path, model = sections.pop(0)
        title = f"`{path}`" if path else "Top level"
        lines = [f"## {title}", ""]
        if model.__doc__ and path:
            lines += [" ".join(model.__doc__.split()), ""]
        lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        _rows(model, f"{path}." if path else "", lines, sections)
        parts.append("\n".join(lines) + "\n")
    for path, model in (("tasks[] (mapping form)", TaskEntry), ("search.method_space.METHOD", SpaceOverride)):
        lines = [f"## `{path}`", "", "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        _rows(model, "", lines, [])
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)
