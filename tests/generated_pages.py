"""One rule for every page in docs/ that is generated from code or data: the committed page
must equal what the generator writes now. ACTSCALE_WRITE_DOCS=1 rewrites it instead."""
from __future__ import annotations

import os
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def check_generated_page(name: str, page: str, how: str = "rerun with ACTSCALE_WRITE_DOCS=1") -> None:
    path = DOCS / name
    if os.environ.get("ACTSCALE_WRITE_DOCS") == "1":
        path.write_text(page)
    assert path.read_text() == page, f"docs/{name} is stale: {how}"
