"""An SSF receiver written from the specifications alone, to test Deputy's transmitter from the outside.

Sources: OpenID Shared Signals Framework 1.0 (§3 subjects, §4 SET profile, §7 metadata, §8 stream management
and verification), the CAEP Interoperability Profile 1.0 draft 02 (§2.3 transmitter metadata and streams,
§2.5 subjects, §2.6 RS256 with 2048-bit keys, §2.8.1 one event per SET), RFC 8936 (poll delivery), RFC 8417
(SETs) and RFC 9493 (subject identifiers). It imports nothing of Deputy's (token_exchange, delegation,
gateway, deputy_client, nor tests.support, which does): HTTP is httpx2, JWS and JWK are joserfc.

Every check raises `InteropError` naming the section it enforces.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx2
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey

PUSH, POLL = "urn:ietf:rfc:8935", "urn:ietf:rfc:8936"
OAUTH = "urn:ietf:rfc:6749"
VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"
SUBJECT_MEMBERS = {  # RFC 9493 §3.2, SSF §3.5.1
    "account": {"uri"}, "email": {"email"}, "iss_sub": {"iss", "sub"}, "opaque": {"id"},
    "phone_number": {"phone_number"}, "did": {"url"}, "uri": {"uri"}, "jwt_id": {"iss", "jti"},
}
INTEROP_METADATA = ("spec_version", "delivery_methods_supported", "jwks_uri", "configuration_endpoint",
                    "status_endpoint", "verification_endpoint", "authorization_schemes")  # interop §2.3.1-§2.3.7


class InteropError(AssertionError):
    """The transmitter broke a rule of the specifications; the message names it."""


def _require(condition: bool, rule: str) -> None:
    if not condition:
        raise InteropError(rule)


def well_known_url(issuer: str) -> str:
    """SSF §7.2: the well-known path goes between the host and the issuer's path (without a trailing /)."""
    parts = urlsplit(issuer)
    return f"{parts.scheme}://{parts.netloc}/.well-known/ssf-configuration{parts.path.rstrip('/')}"


def _secure_url(value: Any, name: str) -> None:
    """SSF §7.1: every URL https; plain http is accepted here for a loopback test transmitter only."""
    parts = urlsplit(value) if isinstance(value, str) else None
    _require(parts is not None and parts.scheme in ("https", "http") and bool(parts.hostname),
             f"SSF 7.1: {name} must be an absolute URL")
    assert parts is not None
    _require(parts.scheme == "https" or parts.hostname in ("127.0.0.1", "localhost", "::1"),
             f"SSF 7.1: {name} must use https")


def _check_subject(subject: Any) -> None:
    """RFC 9493 §3: a known format with exactly its members, non-empty strings; SSF §3.3 complex subjects."""
    _require(isinstance(subject, dict), "SSF 3.1: sub_id must be a subject identifier object")
    members = {k: v for k, v in subject.items() if k != "format"}
    if subject.get("format") == "complex":
        _require(bool(members), "SSF 3.3: a complex subject has at least one member")
        for member in members.values():
            _require(isinstance(member, dict) and member.get("format") != "complex",
                     "SSF 3.3: complex members are simple subject identifiers")
            _check_subject(member)
        return
    required = SUBJECT_MEMBERS.get(subject.get("format"))  # type: ignore[arg-type]
    _require(required is not None, f"RFC 9493 3: unknown subject format {subject.get('format')!r}")
    _require(set(members) == required, f"RFC 9493 3: format {subject['format']} has exactly {sorted(required or ())}")
    _require(all(isinstance(v, str) and v for v in members.values()), "RFC 9493 3.2: members are non-empty strings")


@dataclass(frozen=True)
class DecodedSet:
    """A SET whose signature verified with a key of `jwks_uri`, and its one event."""

    header: Mapping[str, Any]
    claims: Mapping[str, Any]

    @property
    def event_type(self) -> str:
        return next(iter(self.claims["events"]))

    @property
    def event(self) -> Mapping[str, Any]:
        return dict(self.claims["events"][self.event_type])


@dataclass
class InteropReceiver:
    """One receiver of one transmitter: discovery, a poll stream, verification, polls and acknowledgements.

    `bearer` gives the access credential the transmitter's `authorization_schemes` ask for (SSF §7.1.1)."""

    issuer: str
    bearer: Callable[[], str]
    http: httpx2.Client
    metadata: dict[str, Any] = field(default_factory=dict)
    stream: dict[str, Any] = field(default_factory=dict)
    keys: KeySet | None = None

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.bearer()}"}

    def discover(self) -> dict[str, Any]:
        """SSF §7.2 and §7.1; the CAEP interop profile's §2.3 members."""
        response = self.http.get(well_known_url(self.issuer))
        _require(response.status_code == 200, f"SSF 7.2: metadata answers 200, got {response.status_code}")
        _require(response.headers.get("content-type", "").startswith("application/json"),
                 "SSF 7.2: metadata is application/json")
        document = response.json()
        _require(document.get("issuer") == self.issuer, "SSF 7.2.4: issuer identical to the one asked for")
        for name in INTEROP_METADATA:
            _require(name in document, f"CAEP interop 2.3: metadata has {name}")
        _require(document["spec_version"] == "1_0", "SSF 7.1 / interop 2.3.1: spec_version 1_0")
        _require({PUSH, POLL} <= set(document["delivery_methods_supported"]), "interop 2.3.8: push and poll")
        _require({"spec_urn": OAUTH} in document["authorization_schemes"], "interop 2.3.7: OAuth 2.0 scheme")
        _require(all(value != [] for value in document.values()), "SSF 7.1: zero-element arrays are omitted")
        for name in ("jwks_uri", "configuration_endpoint", "status_endpoint", "verification_endpoint"):
            _secure_url(document[name], name)
        self.metadata = document
        return document

    def load_keys(self) -> KeySet:
        """SSF §4.1.4: the signing keys at jwks_uri; interop §2.6: RSA of at least 2048 bits."""
        response = self.http.get(self.metadata["jwks_uri"])
        _require(response.status_code == 200, "RFC 7517: jwks_uri answers a JWK Set")
        self.keys = KeySet.import_key_set(response.json())
        for key in self.keys.keys:
            _require(isinstance(key, RSAKey) and key.public_key.key_size >= 2048,
                     "interop 2.6: SET keys are RSA keys of at least 2048 bits")
            _require(bool(key.kid), "SSF 4.1.4: keys carry a kid")
        return self.keys

    def create_stream(self, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """SSF §8.1.1.1: POST with no delivery asks for poll; 201 with the configuration."""
        response = self.http.post(self.metadata["configuration_endpoint"], json=body or {}, headers=self._auth())
        _require(response.status_code == 201, f"SSF 8.1.1.1: create answers 201, got {response.status_code}")
        config = response.json()
        _require(config.get("iss") == self.issuer, "SSF 8.1.1.1: the receiver MUST check iss")
        aud = config.get("aud")
        _require(isinstance(aud, str) or (isinstance(aud, list) and bool(aud)), "SSF 8.1.1: aud is REQUIRED")
        _require(isinstance(config.get("stream_id"), str) and bool(config["stream_id"]), "SSF 8.1.1: stream_id")
        delivery = config.get("delivery") or {}
        _require(delivery.get("method") == POLL, "SSF 8.1.1.1: no delivery in the request means poll")
        _secure_url(delivery.get("endpoint_url"), "delivery.endpoint_url")
        delivered = set(config.get("events_delivered", ()))
        _require(delivered <= set(config.get("events_supported", ())), "SSF 8.1.1: delivered within supported")
        self.stream = config
        return config

    @property
    def audience(self) -> frozenset[str]:
        aud = self.stream["aud"]
        return frozenset([aud] if isinstance(aud, str) else aud)

    def status(self) -> dict[str, Any]:
        response = self.http.get(self.metadata["status_endpoint"], params={"stream_id": self.stream["stream_id"]},
                                 headers=self._auth())
        _require(response.status_code == 200, f"SSF 8.1.2.1: status answers 200, got {response.status_code}")
        return dict(response.json())

    def delete_stream(self) -> int:
        response = self.http.delete(self.metadata["configuration_endpoint"],
                                    params={"stream_id": self.stream["stream_id"]}, headers=self._auth())
        return response.status_code

    def request_verification(self, state: str) -> None:
        """SSF §8.1.4.2: 204, the event follows in the stream."""
        response = self.http.post(self.metadata["verification_endpoint"], headers=self._auth(),
                                  json={"stream_id": self.stream["stream_id"], "state": state})
        _require(response.status_code == 204, f"SSF 8.1.4.2: verification answers 204, got {response.status_code}")

    def poll(self, *, ack: tuple[str, ...] = (), set_errs: dict[str, Any] | None = None,
             return_immediately: bool = True, max_events: int | None = None) -> tuple[dict[str, str], bool]:
        """RFC 8936 §2.2-§2.3: `sets` (jti → SET) and `moreAvailable` (absent: false)."""
        body: dict[str, Any] = {"returnImmediately": return_immediately, "ack": list(ack)}
        if set_errs:
            body["setErrs"] = set_errs
        if max_events is not None:
            body["maxEvents"] = max_events
        response = self.http.post(self.stream["delivery"]["endpoint_url"], headers=self._auth(), json=body,
                                  timeout=httpx2.Timeout(5.0, read=30.0))
        _require(response.status_code == 200, f"RFC 8936 2.3: a poll answers 200, got {response.status_code}")
        answer = response.json()
        _require(isinstance(answer.get("sets"), dict), "RFC 8936 2.3: sets is a JSON object")
        more = answer.get("moreAvailable", False)
        _require(isinstance(more, bool), "RFC 8936 2.3: moreAvailable is a boolean")
        return dict(answer["sets"]), more

    def decode(self, jti: str, token: str) -> DecodedSet:
        """Verify the SET with joserfc against jwks_uri, then SSF §4.1 and interop §2.6, §2.8.1."""
        _require(self.keys is not None, "load_keys() first")
        assert self.keys is not None
        header = json.loads(_b64(token.split(".")[0]))
        _require(header.get("typ") == "secevent+jwt", "SSF 4.1.1 / RFC 8417 2.3: typ secevent+jwt")
        _require(header.get("alg") == "RS256", "interop 2.6: RS256")
        try:
            key = self.keys.get_by_kid(header.get("kid"))
            claims = json.loads(jws.deserialize_compact(token, key, algorithms=["RS256"]).payload)
        except JoseError as exc:
            raise InteropError(f"SSF 4.1.4: the SET does not verify with a key of jwks_uri ({exc})") from exc
        _require(claims.get("iss") == self.issuer, "SSF 4.1.6: iss is the issuer")
        aud = claims.get("aud")
        audience = frozenset([aud] if isinstance(aud, str) else aud or ())
        _require(audience == self.audience, "SSF 4.1.8: the stream's aud")
        _require(claims.get("jti") == jti, "RFC 8936 2.3: sets are keyed by their jti")
        _require(type(claims.get("iat")) is int, "RFC 8417 2.2: iat")
        _require("sub" not in claims and "exp" not in claims, "SSF 4.1.2, 4.1.7: no sub, no exp")
        events = claims.get("events")
        _require(isinstance(events, dict) and len(events) == 1, "interop 2.8.1: exactly one event")
        _require(all(isinstance(v, dict) for v in events.values()), "RFC 8417 2.2: event payloads are objects")
        _check_subject(claims.get("sub_id"))
        return DecodedSet(header, claims)

    def handshake(self, state: str, *, timeout: float = 10.0) -> DecodedSet:
        """SSF §8.1.4: ask, then poll until the verification event with `state` comes; acknowledge it."""
        self.request_verification(state)
        found = self.collect(lambda s: s.event_type == VERIFICATION and s.event.get("state") == state,
                             timeout=timeout)
        return found[-1]

    def collect(self, done: Callable[[DecodedSet], bool], *, timeout: float = 10.0) -> list[DecodedSet]:
        """Poll (acknowledging what came) until a SET satisfies `done`; every SET received, in order."""
        received: list[DecodedSet] = []
        ack: tuple[str, ...] = ()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sets, _ = self.poll(ack=ack, return_immediately=False)
            decoded = [self.decode(jti, token) for jti, token in sets.items()]
            received += decoded
            ack = tuple(sets)
            if any(done(s) for s in decoded):
                self.poll(ack=ack, max_events=0)  # RFC 8936 §2.4.2: acknowledge only
                return received
        raise InteropError(f"no awaited SET within {timeout} s; got {[s.event_type for s in received]}")


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
