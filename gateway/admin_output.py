"""What the admin CLI prints and reads: ISO 8601 times and relative spans, tables that fit 100 columns, colour
only on a terminal (and never under NO_COLOR)."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

WIDTH = 100
GAP = "  "
MIN_CUT = 8
SPAN = re.compile(r"(\d+)([smhdw])")
SPAN_TEXT = re.compile(r"(?:\d+[smhdw])+")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
COLOURS = {"open": "32", "active": "32", "revoked": "31", "lifted": "33", "granted": "32",
           "completed": "2", "expired": "2"}


class InputError(ValueError):
    """A time or span the admin typed that means nothing: the message says what is accepted."""


def span(text: str) -> int:
    """Seconds in a relative span: `90s`, `15m`, `2h`, `1d`, `1w`, combined (`1h30m`), or plain seconds."""
    if text.isdigit() and int(text) > 0:
        return int(text)
    if not SPAN_TEXT.fullmatch(text) or not (total := sum(int(n) * UNITS[u] for n, u in SPAN.findall(text))):
        raise InputError(f"{text!r} is not a span: use e.g. 90s, 15m, 2h, 1d, 1w or 1h30m")
    return total


def point(text: str, *, now: int) -> int:
    """A moment as Unix seconds: ISO 8601 (`2026-05-01`, `2026-05-01T12:00:00Z`; no offset means UTC), Unix
    seconds, or a span back from now (`1h`: an hour ago)."""
    if text.isdigit():
        return int(text)
    if SPAN_TEXT.fullmatch(text):
        return now - span(text)
    moment = seconds(text)
    if moment is None:
        raise InputError(f"{text!r} is not a time: use ISO 8601 (2026-05-01T12:00:00Z), Unix seconds, or a span "
                         "back from now (1h, 2d)")
    return moment


def seconds(value: object) -> int | None:
    """A time from the API (Unix seconds, or ISO 8601) as Unix seconds; None for none or for what is neither."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    try:
        moment = datetime.fromisoformat(str(value).replace("z", "Z"))
    except ValueError:
        return None
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


def when(value: object) -> str:
    """A time from the API shown as ISO 8601 UTC (`2026-05-01T12:00:00Z`); empty for none."""
    moment = seconds(value)
    if moment is None:
        return text(value)
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def text(value: object) -> str:
    """A value as a person reads it: never a Python repr (None, lists, dicts)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(text(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def colour_on(stream: TextIO) -> bool:
    """Colour only for a terminal, and never under NO_COLOR (no-color.org) or TERM=dumb."""
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def paint(value: str, *, on: bool) -> str:
    code = COLOURS.get(value.strip())
    return f"\033[{code}m{value}\033[0m" if on and code else value


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, colour: bool = False,
          cut_first: Sequence[str] = (), widths: Sequence[int] | None = None, empty: str | None = "(none)") -> str:
    """Aligned columns within WIDTH; `empty` without rows (None: the header alone). Too wide, the columns
    named in `cut_first` are cut (`...`) first, widest first, then any but the first (the id). `widths`
    fixes the columns instead (a stream of rows printed as they come)."""
    if not rows and empty is not None:
        return empty
    cells = [list(headers), *[[text(c) for c in row] for row in rows]]
    if widths is None:
        widths = _fit([max(len(row[i]) for row in cells) for i in range(len(headers))],
                      [i for i, name in enumerate(headers) if name in cut_first])
    lines = []
    for number, row in enumerate(cells):
        parts = [cut(c, w).ljust(w) for c, w in zip(row, widths, strict=True)]
        if number == 0:
            parts = [f"\033[1m{p}\033[0m" if colour else p for p in parts]
        else:
            parts = [paint(p, on=colour) for p in parts]
        lines.append(GAP.join(parts).rstrip())
    return "\n".join(lines)


def _fit(widths: list[int], first: list[int]) -> list[int]:
    """Narrow the widest column that may be cut, one character at a time, until the row fits WIDTH."""
    widths = list(widths)
    while sum(widths) + len(GAP) * (len(widths) - 1) > WIDTH:
        cuttable = [i for i in first if widths[i] > MIN_CUT] or [i for i in range(1, len(widths))
                                                                if widths[i] > MIN_CUT]
        if not cuttable:
            break
        widths[max(cuttable, key=lambda i: widths[i])] -= 1
    return widths


def cut(value: str, width: int) -> str:
    """`value` in at most `width` characters, its end replaced by `...` when cut (ASCII, as all Deputy says)."""
    return value if len(value) <= width else value[: max(width - 3, 0)] + "..."[: width]


def fields(pairs: Sequence[tuple[str, object]]) -> str:
    """`name  value` lines, for one object (a task, a block)."""
    size = max(len(name) for name, _ in pairs)
    return "\n".join(f"{name:<{size}}  {text(value)}".rstrip() for name, value in pairs)


def emit(document: Any) -> None:
    """A JSON document on stdout (`--json`)."""
    print(json.dumps(document, indent=2))


def note(message: str) -> None:
    """One line for the admin on stderr (what the CLI chose for them)."""
    print(f"deputy: {message}", file=sys.stderr)
