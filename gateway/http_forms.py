"""Reading request bodies strictly, size-capped and UTF-8: OAuth forms (RFC 6749 Appendix B) and the JSON
objects of the SSF endpoints (RFC 8259)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect, Request

from token_exchange.errors import InvalidRequest, PayloadTooLarge
from token_exchange.json_bodies import JSON_TYPE, json_object

MAX_BODY_BYTES = 64 * 1024
MAX_FIELDS = 32
FORM_TYPE = "application/x-www-form-urlencoded"


async def read_form(request: Request, *, limit: int = MAX_BODY_BYTES) -> list[tuple[str, str]]:
    """The body's name/value pairs; InvalidRequest for a wrong type, a bad encoding or too much data."""
    body = await _read_body(request, FORM_TYPE, limit)
    try:
        return parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=bool(body),
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except UnicodeDecodeError as exc:
        raise InvalidRequest("the body is not valid UTF-8") from exc
    except ValueError as exc:
        raise InvalidRequest(f"the body is not a valid form (at most {MAX_FIELDS} fields)") from exc


async def read_json(request: Request, *, limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The body as one JSON object (`json_bodies.json_object`); InvalidRequest as for forms."""
    return json_object(await _read_body(request, JSON_TYPE, limit))


async def _read_body(request: Request, media: str, limit: int) -> bytes:
    media_type, _, params = request.headers.get("content-type", "").partition(";")
    if media_type.strip().lower() != media:
        raise InvalidRequest(f"the body must be {media}")
    charset = params.strip().lower().removeprefix("charset=").strip('"')
    if params.strip() and charset not in ("utf-8", "utf8"):
        raise InvalidRequest("the body must be UTF-8")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise PayloadTooLarge(f"the body is larger than {limit} bytes")
    except ClientDisconnect as exc:  # the client went away (or sent a broken body): a refusal, not a bug
        raise InvalidRequest("the connection closed before the whole body arrived") from exc
    return bytes(body)
