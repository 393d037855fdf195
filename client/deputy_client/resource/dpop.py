"""RFC 9449 §7 at a resource server: reading the Authorization header, and remembering proofs already used.

The verifier's request-level entry point (`AccessTokenVerifier.verify_request`) uses these: the one
`Authorization` header split into its scheme and token (RFC 6750 §2.1, RFC 9449 §7.1), and a replay
cache of proof `jti`s, in memory, per verifier (§11.1).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence

from token_exchange.dpop import SCHEME as DPOP_SCHEME

from .errors import BEARER_SCHEME, MalformedRequest, NoCredentials

MAX_REPLAYS = 200_000
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 9110 §11.2


def credentials(authorization: Sequence[str]) -> tuple[str, str]:
    """(scheme, token) of the request's one Authorization header, the scheme as "Bearer" or "DPoP" (scheme
    names are case-insensitive, RFC 9110 §11.1). Raises `NoCredentials` without credentials of either
    scheme (RFC 6750 §3.1: another scheme is no attempt at these), or `MalformedRequest` for two headers
    (credentials sent two ways) or a token that is not token68."""
    if not authorization:
        raise NoCredentials("an access token is required")
    if len(authorization) > 1:
        raise MalformedRequest("more than one Authorization header: send the access token one way only "
                               "(RFC 9449 section 7.2)")
    scheme, _, token = authorization[0].strip().partition(" ")
    named = {BEARER_SCHEME.lower(): BEARER_SCHEME, DPOP_SCHEME.lower(): DPOP_SCHEME}.get(scheme.lower())
    if named is None:
        raise NoCredentials("an access token is required, with the Bearer or DPoP scheme")
    token = token.strip()
    if not _TOKEN68.fullmatch(token):
        raise MalformedRequest(f"the {named} credentials are not one token (token68)", scheme=named)
    return named, token


class ReplayCache:
    """The proofs seen within their window, by `DpopProof.replay_value` (a hash: bounded whatever the `jti`).

    Bounded by `max_entries`: entries leave when their window has passed, or, once the cache is full,
    oldest first. A proof whose entry was pushed out that way could be replayed within its window, which
    takes more than `max_entries` other proofs within about a minute; size it above the peak rate times
    the window (65 s)."""

    def __init__(self, max_entries: int = MAX_REPLAYS) -> None:
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._max = max_entries

    def first_use(self, value: str, *, until: int, now: int) -> bool:
        """Record `value` until `until` and return True, unless it is already recorded (then False)."""
        seen = self._seen
        while seen and next(iter(seen.values())) <= now:  # recorded in about the order they expire
            seen.popitem(last=False)
        if value in seen:
            return False
        seen[value] = until
        if len(seen) > self._max:
            seen.popitem(last=False)
        return True
