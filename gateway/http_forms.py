"""Reading an OAuth form body strictly (RFC 6749 Appendix B): size-capped, form-encoded, UTF-8."""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect, Request

from token_exchange.errors import InvalidRequest, PayloadTooLarge

MAX_BODY_BYTES = 64 * 1024
MAX_FIELDS = 32
FORM_TYPE = "application/x-www-form-urlencoded"


async def read_form(request: Request, *, limit: int = MAX_BODY_BYTES) -> list[tuple[str, str]]:
    """The body's name/value pairs; InvalidRequest for a wrong type, a bad encoding or too much data."""
    media_type, _, params = request.headers.get("content-type", "").partition(";")
    if media_type.strip().lower() != FORM_TYPE:
        raise InvalidRequest(f"the body must be {FORM_TYPE}")
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
    try:
        return parse_qsl(
            bytes(body).decode("utf-8"),
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
