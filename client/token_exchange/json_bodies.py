"""JSON request bodies (RFC 8259) read strictly: UTF-8, one object, each member name once, no NaN or Infinity.

SSF management requests (SSF 1.0 §8) and RFC 8936 poll requests are JSON objects; anything else is an
`invalid_request`, never a traceback."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .errors import InvalidRequest

JSON_TYPE = "application/json"


def json_object(body: bytes) -> dict[str, Any]:
    """`body` as one JSON object; InvalidRequest naming what is wrong with it."""
    try:
        document = json.loads(body.decode("utf-8"), object_pairs_hook=_unique_members, parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise InvalidRequest("the body is not valid UTF-8") from exc
    except RecursionError as exc:
        raise InvalidRequest("the body is JSON nested too deeply to read") from exc
    except ValueError as exc:  # JSONDecodeError, a repeated member, a number too long to convert
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise InvalidRequest("the body must be a JSON object")
    return document


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """RFC 8259 §4: with a name repeated, readers disagree on which member counts; refuse it."""
    members = dict(pairs)
    if len(members) != len(pairs):
        raise ValueError("a member name is repeated in an object")
    return members


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def optional_string(document: Mapping[str, Any], name: str, *, limit: int) -> str | None:
    """An optional member that must be a string of 1 to `limit` printable characters when present."""
    if name not in document or document[name] is None:
        return None
    value = document[name]
    if not isinstance(value, str) or not 0 < len(value) <= limit or not value.isprintable():
        raise InvalidRequest(f"{name} must be a string of 1 to {limit} printable characters")
    return value


def required_string(document: Mapping[str, Any], name: str, *, limit: int) -> str:
    if (value := optional_string(document, name, limit=limit)) is None:
        raise InvalidRequest(f"{name} is required")
    return value
