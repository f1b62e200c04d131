"""What `status` needs of a stored sweep.yaml, read without validating it: validation imports
the methods (and torch), and a status query should start in well under a second."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

N_TRIALS = 8  # search.n_trials when a sweep leaves it out (the schema's default, search_spaces/config.py)
REPLICATES = 1  # search.replicates likewise


def search_sizes(path: Path) -> tuple[int, int]:
    """(search.n_trials, search.replicates) of a stored sweep, with the schema's defaults. The file was
    validated when the sweep started, so its values are trusted here."""
    stored: Any = yaml.safe_load(Path(path).read_text()) or {}
    search = stored.get("search") or {} if isinstance(stored, dict) else {}
    return int(search.get("n_trials", N_TRIALS)), int(search.get("replicates", REPLICATES))
