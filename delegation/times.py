"""Times as admins read and write them: ISO 8601 UTC (`2026-12-02T04:48:55Z`), and spans (`90s`, `15m`,
`2h`, `7d`, or plain seconds)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from token_exchange.errors import InvalidRequest

_SPAN = re.compile(r"([0-9]{1,9})([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_SPAN_S = 100 * 365 * 86400  # a span past this would end after any date `iso` can write


def iso(seconds: int | None) -> str | None:
    """Unix seconds as ISO 8601 UTC with a `Z`; None stays None."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def span(text: str | int, name: str) -> int:
    """A positive span in seconds: an integer, or digits with a unit (s, m, h, d)."""
    if isinstance(text, int) and not isinstance(text, bool):
        seconds = text
    elif isinstance(text, str) and (match := _SPAN.fullmatch(text.strip())):
        seconds = int(match[1]) * _UNIT[match[2]]
    else:
        raise InvalidRequest(f"{name} must be seconds or a span such as 90s, 15m, 2h or 7d")
    if not 0 < seconds <= MAX_SPAN_S:
        raise InvalidRequest(f"{name} must be a positive span of at most 36500d")
    return seconds


def instant(text: str, name: str, *, now: int) -> int:
    """A point in time: Unix seconds, ISO 8601 (a time without a zone is UTC), or a span back from `now`
    (`1h`: an hour ago)."""
    text = text.strip()
    if text.isascii() and text.isdigit():
        return int(text)
    if _SPAN.fullmatch(text):
        return now - span(text, name)
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError as exc:
        raise InvalidRequest(f"{name} must be ISO 8601 (2026-01-31T12:00:00Z), Unix seconds, or a span back "
                             "from now such as 1h") from exc
    return int((parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp())
