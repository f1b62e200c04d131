"""Durations as a user writes them (`--stop-after 90m`, `stop_after: 2h`): a number and a unit."""
from __future__ import annotations

import re

UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
_FORM = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")
ACCEPTED = "a number with a unit s, m or h (e.g. 40s, 90m, 2h, 1h30m)"


def parse_duration(text: str, what: str = "duration") -> float:
    """Seconds in `text` (40s, 90m, 2h, 1h30m, 1.5h); a ValueError naming `what`, the value and the
    accepted forms otherwise."""
    match = _FORM.fullmatch(str(text).strip().lower())
    if match is None or not any(match.groups()):
        raise ValueError(f"{what} {text!r} is not a duration; accepted: {ACCEPTED}")
    seconds = sum(float(value) * UNITS[unit] for value, unit in zip(match.groups(), UNITS) if value)
    if seconds <= 0:
        raise ValueError(f"{what} {text!r} must be longer than zero; accepted: {ACCEPTED}")
    return seconds
