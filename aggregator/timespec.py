"""Time specs shared by every command: a duration before now (`24h`, `7d`) or a UTC date."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final

_DURATION: Final = re.compile(r"(\d{1,9})([smhd])")
_SECONDS_PER_UNIT: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DATE_FORMATS: Final = ("%Y-%m-%d", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S")


def duration_seconds(text: str) -> int | None:
    """Seconds in a duration such as `90s`, `30m`, `24h` or `7d`; None when it is not one."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        return None
    return int(match.group(1)) * _SECONDS_PER_UNIT[match.group(2)]


def parse_time_spec(spec: str, now: datetime) -> datetime:
    """A point in time from a duration before `now` or a UTC date.

    Dates are `YYYY-MM-DD`, optionally followed by ` HH:MM` or ` HH:MM:SS`
    (a `T` works in place of the space). Raises ValueError with a one-line message.
    """
    text = spec.strip()
    seconds = duration_seconds(text)
    if seconds is not None:
        if seconds == 0:
            raise ValueError(f"{spec!r} is an empty duration: use e.g. 90s, 30m, 24h or 7d")
        try:
            return now - timedelta(seconds=seconds)
        except OverflowError:
            raise ValueError(f"{spec!r} reaches before year 1") from None
    for date_format in _DATE_FORMATS:
        try:
            return datetime.strptime(text.replace("T", " ", 1), date_format).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise ValueError(
        f"{spec!r} is neither a duration (90s, 30m, 24h, 7d) nor a date (YYYY-MM-DD[ HH:MM[:SS]])"
    )
