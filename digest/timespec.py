"""Parsing `--since SPEC`: a duration back from now (`24h`, `7d`) or a date (`YYYY-MM-DD`)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from aggregator.settings import SettingsError, parse_duration

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_LONGEST = 3660 * 86400  # ten years: anything older is a typo


def parse_since(name: str, spec: str, *, now: datetime) -> datetime:
    """The instant `spec` names, in UTC; dates mean midnight UTC, times without a zone UTC."""
    text = spec.strip()
    if text and text[0].isdigit() and text[-1].lower() in "smhd" and not _DATE.fullmatch(text):
        seconds = parse_duration(name, text, minimum=1, maximum=_LONGEST)
        return now - timedelta(seconds=seconds)
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        raise SettingsError(
            f"{name} must be a duration (90s, 30m, 24h, 7d) or a date (YYYY-MM-DD), not {spec!r}"
        ) from None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    if instant > now:
        raise SettingsError(f"{name} is in the future: {spec!r}")
    return instant
