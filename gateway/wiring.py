"""Builds the running gateway from Settings: checked once at start-up, then handed down in pieces."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2

from delegation.callers import AdminRule, Callers
from delegation.flows import ExchangeSteps, Lifetimes, token_exchange_grant
from delegation.lifecycle import TaskLifecycle
from delegation.observe import NoObserver, Observer, Observers
from delegation.opa import OpaServer
from delegation.policy import PolicyEngine, PolicyError, PolicySource
from delegation.rego import EmbeddedRego
from delegation.resources import Resource, Resources
from delegation.ssf import StreamTimings, Transmitter
from delegation.store import Store
from delegation.stores import open_store
from delegation.token_endpoint import TokenEndpoint
from policies import PACKAGED_POLICIES
from token_exchange.actors import WorkloadVerifiers
from token_exchange.attestation import AUTH_METHOD as ATTESTATION_AUTH_METHOD
from token_exchange.attestation import AttestationVerifier, Attester
from token_exchange.attestation import metadata as attestation_metadata
from token_exchange.dpop_nonces import DpopNonces
from token_exchange.dpop_token import TokenEndpointDpop
from token_exchange.keys import ASYMMETRIC_ALGORITHMS, KeySource, RemoteKeys, StaticKeys, parse_key_set, read_key_set
from token_exchange.oidc_discovery import DiscoveredKeys, is_loopback
from token_exchange.rfc8414 import metadata, origin
from token_exchange.rfc8935 import Pusher
from token_exchange.scope import Scope
from token_exchange.signing import SIGNING_ALGORITHMS, SigningKey
from token_exchange.single_use import SingleUse
from token_exchange.spiffe import SVID_ALGORITHMS, JwtSvidVerifier
from token_exchange.txn_tokens import OwnTokenVerifier
from token_exchange.user_tokens import SubjectIssuer, UserTokenVerifier
from token_exchange.workload_tokens import WorkloadIssuer, WorkloadTokenVerifier

from .decision_log import DecisionLogFile
from .key_ring import KeyVault
from .keystore import KeyFiles
from .live_keys import LiveKeys
from .sealed_keys import KeyEncryptionKey, StoreKeys, read_encryption_key
from .settings import ConfigError, KeySetSettings, PolicySettings, Settings

SVID_KEY_USE = "jwt-svid"
POLICY_ENGINES: dict[str, Callable[[PolicySettings], PolicyEngine]] = {
    "embedded": lambda settings: EmbeddedRego(PolicySource.read(settings.dir or PACKAGED_POLICIES)),
    "opa": lambda settings: OpaServer(settings.opa_url, timeout_ms=settings.timeout_ms),
}
"""`[policy] engine` → how it is built: compiled from the policy directory, or asked of an OPA server."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """What start-up checks before serving: key files read, policy compiled."""

    settings: Settings
    policy: PolicyEngine
    static_keys: dict[str, StaticKeys]  # by config key of the file
    encryption_key: KeyEncryptionKey | None  # `[keys] encryption_key_file`: the ring is in the store


def prepare(settings: Settings) -> Prepared:
    """Read every key file and build the policy engine; the first problem raises ConfigError naming its key."""
    static = {key: _read(keyset, key, allowed, use) for key, keyset, allowed, use in key_files(settings)}
    if settings.audit.decision_log is not None:
        _check_writable(settings.audit.decision_log)
    return Prepared(settings, policy_engine(settings.policy), static, encryption_key(settings))


def encryption_key(settings: Settings) -> KeyEncryptionKey | None:
    path = settings.keys.encryption_key_file
    return None if path is None else read_encryption_key(path)


def key_vault(settings: Settings, kek: KeyEncryptionKey | None, store: Store) -> KeyVault:
    """Where the signing key ring is kept: sealed in the store under the key-encryption key, else as files."""
    return KeyFiles(settings.state_dir) if kek is None else StoreKeys(store, kek)


def _check_writable(decision_log: Path) -> None:
    """`[audit] decision_log` opens (each worker opens its own at start-up): a path that cannot is a config
    error naming the key, before any worker starts."""
    try:
        DecisionLogFile(decision_log).close()
    except OSError as exc:
        raise ConfigError(f"audit.decision_log: cannot open {decision_log}: {exc.strerror or exc}") from exc


def key_files(settings: Settings) -> Iterator[tuple[str, KeySetSettings, frozenset[str], str | None]]:
    """Every key set configured as a file: its config key, where it is, its algorithms and JWK `use`."""
    tables: list[tuple[str, str, frozenset[str], str | None, list[KeySetSettings | None]]] = [
        ("subject_issuers", "jwks_file", ASYMMETRIC_ALGORITHMS, None, [s.jwks for s in settings.subject_issuers]),
        ("trust_domains", "bundle_file", SVID_ALGORITHMS, SVID_KEY_USE, [d.bundle for d in settings.trust_domains]),
        ("workload_issuers", "jwks_file", ASYMMETRIC_ALGORITHMS, None, [w.keys for w in settings.workload_issuers]),
        ("attesters", "jwks_file", ASYMMETRIC_ALGORITHMS, None, [a.keys for a in settings.attesters]),
    ]
    for table, name, allowed, use, keysets in tables:
        for i, keyset in enumerate(keysets):
            if keyset is not None and keyset.file is not None:
                yield f"{table}[{i}].{name}", keyset, allowed, use


def policy_engine(settings: PolicySettings) -> PolicyEngine:
    try:
        return POLICY_ENGINES[settings.engine](settings)
    except PolicyError as exc:
        raise ConfigError(f"policy.dir: {exc}") from exc


def _read(source: KeySetSettings, key: str, allowed: frozenset[str], use: str | None) -> StaticKeys:
    assert source.file is not None
    try:
        keys = read_key_set(str(source.file), allowed=allowed, use=use)
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {source.file}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"{key}: {source.file}: {exc}") from exc
    if not keys:
        raise ConfigError(f"{key}: {source.file} holds no usable key (each needs kid and a supported algorithm)")
    return StaticKeys(keys)


@dataclass(frozen=True, slots=True)
class Deputy:
    """The running gateway's parts, as the HTTP layer needs them."""

    settings: Settings
    token_endpoint: TokenEndpoint
    lifecycle: TaskLifecycle
    callers: Callers
    keys: LiveKeys
    metadata: dict[str, Any]
    store: Store
    policy: PolicyEngine
    observer: Observer
    ssf: Transmitter
    dpop: TokenEndpointDpop


class KeySources:
    """The key source for each configured key set: its file's keys, or its URI fetched with `client`; and
    for a workload issuer with `discovery = true`, the keys its OIDC discovery document names."""

    def __init__(self, prepared: Prepared, client: httpx2.AsyncClient) -> None:
        self._static = prepared.static_keys
        self.client = client  # also the SSF transmitter's, for push delivery

    def __call__(self, keyset: KeySetSettings, key: str, allowed: frozenset[str], use: str | None) -> KeySource:
        if keyset.uri is not None:
            return RemoteKeys(keyset.uri, client=self.client,
                              parse=lambda document: parse_key_set(document, allowed=allowed, use=use))
        return self._static[key]

    def discovered(self, issuer: str, allowed: frozenset[str]) -> KeySource:
        return DiscoveredKeys(issuer, client=self.client,
                              parse=lambda document: parse_key_set(document, allowed=allowed))


def verifiers(settings: Settings, sources: KeySources
              ) -> tuple[WorkloadVerifiers, UserTokenVerifier, UserTokenVerifier]:
    """The agents' verifier (SPIFFE trust domains, and workload issuers by `iss`), the users' (the subject
    issuers; never a token for the admin API) and the admin users' (the same issuers, for the admin API)."""
    bundles = {d.name: sources(d.bundle, f"trust_domains[{i}].bundle_file", SVID_ALGORITHMS, SVID_KEY_USE)
               for i, d in enumerate(settings.trust_domains)}
    issuers = {s.issuer: SubjectIssuer(s.issuer, s.audience, sources(s.jwks, f"subject_issuers[{i}].jwks_file",
                                                                      ASYMMETRIC_ALGORITHMS, None))
               for i, s in enumerate(settings.subject_issuers)}
    actors = WorkloadVerifiers(spiffe=JwtSvidVerifier(bundles, audience=settings.issuer),
                               by_issuer=workload_verifiers(settings, sources))
    admin = settings.admin.audience
    return actors, UserTokenVerifier(issuers, reserved=admin), UserTokenVerifier(issuers, audience=admin)


def workload_verifiers(settings: Settings, sources: KeySources) -> dict[str, WorkloadTokenVerifier]:
    """A verifier for each `[[workload_issuers]]` entry, by its issuer."""
    verifiers: dict[str, WorkloadTokenVerifier] = {}
    for i, w in enumerate(settings.workload_issuers):
        keys = (sources.discovered(w.issuer, ASYMMETRIC_ALGORITHMS) if w.keys is None
                else sources(w.keys, f"workload_issuers[{i}].jwks_file", ASYMMETRIC_ALGORITHMS, None))
        verifiers[w.issuer] = WorkloadTokenVerifier(WorkloadIssuer(w.issuer, w.audience, keys, w.kind, w.id_claim))
    return verifiers
def attestation(settings: Settings, sources: KeySources, seen: SingleUse) -> AttestationVerifier | None:
    """The client attestation verifier over the configured `[[attesters]]` (None without any: attestation
    headers are then ignored and the metadata does not advertise them)."""
    if not settings.attesters:
        return None
    attesters = [Attester(a.name, sources(a.keys, f"attesters[{i}].jwks_file", ASYMMETRIC_ALGORITHMS, None),
                          a.max_age) for i, a in enumerate(settings.attesters)]
    return AttestationVerifier(attesters, issuer=settings.issuer, seen=seen)


def dpop(settings: Settings, keys: LiveKeys, seen: SingleUse) -> TokenEndpointDpop:
    """DPoP at `/token` (RFC 9449 §5); with `[dpop] nonces`, nonces keyed by the token signing keys every
    replica shares (`dpop_nonces`), the current ring's read on each use so a rotation is followed."""
    def signing_keys() -> list[SigningKey]:
        pair = keys.ring.tokens
        return [pair.current] + ([pair.previous] if pair.previous else [])

    nonces = DpopNonces(signing_keys, issuer=settings.issuer) if settings.dpop.nonces else None
    return TokenEndpointDpop(token_url=origin(settings.issuer) + "/token", seen=seen, nonces=nonces)


def discovery(settings: Settings, resources: Resources, endpoint: TokenEndpoint) -> dict[str, Any]:
    """The RFC 8414 metadata document, with `dpop_signing_alg_values_supported` (RFC 9449 §5.1); with
    attesters, the client attestation members too (draft-ietf-oauth-attestation-based-client-auth-10 §8)."""
    endpoints = {"revocation_endpoint": "/revoke", "introspection_endpoint": "/introspect"}
    methods, extensions = ["none"], {"dpop_signing_alg_values_supported": sorted(ASYMMETRIC_ALGORITHMS)}
    if settings.attesters:
        methods, extensions = ["none", ATTESTATION_AUTH_METHOD], {**extensions, **attestation_metadata()}
    return metadata(settings.issuer, endpoints=endpoints, scopes=resources.all_scopes(),
                    grant_types=endpoint.grant_types, token_auth_methods=methods, extensions=extensions)


def assemble(prepared: Prepared, keys: LiveKeys, store: Store, sources: KeySources,
             observer: Observer | None = None) -> Deputy:
    """Every part of the gateway, from its settings, signing keys, store and key sources; `observer` counts
    what happens (the metrics)."""
    observer = observer or NoObserver()
    settings = prepared.settings
    actors, users, admin_users = verifiers(settings, sources)
    resources = Resources(Resource(r.audience, Scope(frozenset(r.scopes)), r.max_ttl, frozenset(r.clients),
                                   r.require_dpop) for r in settings.resources)
    own_tokens = OwnTokenVerifier(keys.own_keys, issuer=settings.issuer, allowed=frozenset(SIGNING_ALGORITHMS))
    lifetimes = Lifetimes(settings.tokens.default_ttl, settings.tokens.max_ttl, settings.tasks.default_ttl,
                          settings.tasks.max_ttl)
    proofs = dpop(settings, keys, store)
    steps = ExchangeSteps(actors, users, own_tokens, resources, prepared.policy, keys.signer, store, lifetimes,
                          observer, attestation(settings, sources, store), proofs)
    endpoint = TokenEndpoint([token_exchange_grant(steps)], audit=store, policy=prepared.policy, observer=observer)
    admins = AdminRule(settings.admin.claim, settings.admin.value, frozenset(settings.admin.spiffe_ids))
    callers = Callers(actors=actors, users=admin_users, credentials=store, resources=resources, admins=admins)
    document = discovery(settings, resources, endpoint)
    lifecycle = TaskLifecycle(store=store, own_tokens=own_tokens, resources=resources, observer=observer)
    return Deputy(settings, endpoint, lifecycle, callers, keys, document, store, prepared.policy, observer,
                  transmitter(settings, store, keys, resources, sources.client), proofs)


def transmitter(settings: Settings, store: Store, keys: LiveKeys, resources: Resources,
                client: httpx2.AsyncClient) -> Transmitter:
    """The SSF transmitter: streams for the resources' clients, SETs signed with the event keys."""
    ssf = settings.ssf
    timings = StreamTimings(ssf.poll_timeout, ssf.min_verification_interval, ssf.inactivity_timeout)
    # A development gateway (a loopback issuer) pushes to loopback receivers; others only as configured.
    private = ssf.push_to_private_addresses or is_loopback(urlsplit(settings.issuer).hostname)
    pusher = Pusher(client, timeout=ssf.push_timeout, private=private)
    return Transmitter.of(store, keys.events_signer, resources, pusher, issuer=settings.issuer, timings=timings)


@asynccontextmanager
async def running(prepared: Prepared, observer: Observer | None = None) -> AsyncIterator[Deputy]:
    """Open the store, then the signing keys, the policy engine's client, the decision-log file and the HTTP
    client for remote key sets; close them on exit."""
    settings = prepared.settings
    store = await open_store(settings.store_url)
    decision_log = settings.audit.decision_log
    log_file = DecisionLogFile(decision_log) if decision_log is not None else None
    try:
        keys = await LiveKeys.open(key_vault(settings, prepared.encryption_key, store),
                                   algorithm=settings.tokens.signing_alg, issuer=settings.issuer)
        await prepared.policy.start()
        observers = Observers(observer or NoObserver(), log_file) if log_file else observer
        async with httpx2.AsyncClient(timeout=5.0, follow_redirects=False) as client:
            yield assemble(prepared, keys, store, KeySources(prepared, client), observers)
    finally:
        await prepared.policy.stop()
        if log_file is not None:
            log_file.close()
        await store.close()
