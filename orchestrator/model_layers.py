"""Each model's decoder depth, remembered in the run directory so that a resume need not load
transformers (and torch) just to re-plan units it already knows.

The first run asks `workers.models.layer_count`, which also checks that the model can be loaded
here. A remembered count is used again only while its stamp still matches: a local directory's
stamp is a hash of its config.json, so an edited model is asked again; a built-in or hub name's
stamp is the name itself (the embedded model comes from a pinned package).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from storage.durable import write_durably
from storage.run_dir import RunDir


def _stamp(name: str) -> str | None:
    """What must be unchanged for a remembered count to hold; None: always ask again."""
    local = Path(name).expanduser()
    if local.is_dir():
        config = local / "config.json"
        return "config:" + hashlib.sha256(config.read_bytes()).hexdigest()[:16] if config.is_file() else None
    return "name:" + name


def layer_counts(models: list[str], run_dir: RunDir, allow_pickle: bool) -> dict[str, int]:
    """{model: number of decoder layers}; only models not remembered (or changed) are loaded."""
    path = run_dir.model_layers
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}  # absent or unreadable: ask every model again
    counts, changed = {}, False
    for model in models:
        stamp = _stamp(model)
        entry = known.get(model)
        if stamp is not None and isinstance(entry, dict) and entry.get("stamp") == stamp:
            counts[model] = int(entry["n_layers"])
            continue
        from workers.models import layer_count  # imports torch and transformers

        counts[model] = layer_count(model, allow_pickle)  # fails early on a model that cannot be loaded
        if stamp is not None:
            known[model] = {"stamp": stamp, "n_layers": counts[model]}
            changed = True
    if changed:
        write_durably(path, json.dumps(known, indent=1, sort_keys=True))
    return counts
