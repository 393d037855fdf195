"""Builds the running gateway from Settings: checked once at start-up, then handed down in pieces."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx2

from delegation.exchange import Lifetimes, TokenExchange
from delegation.lifecycle import TaskLifecycle
from delegation.policy import EmbeddedRego, PolicyError, PolicySource
from delegation.resources import Resource, Resources
from delegation.stores.sqlite import SqliteStore, sqlite_path
from policies import PACKAGED_POLICIES
from token_exchange.keys import ASYMMETRIC_ALGORITHMS, KeySource, RemoteKeys, StaticKeys, parse_key_set, read_key_set
from token_exchange.rfc8414 import metadata
from token_exchange.rfc9068 import Signer
from token_exchange.scope import Scope
from token_exchange.signing import SIGNING_ALGORITHMS
from token_exchange.spiffe import SVID_ALGORITHMS, JwtSvidVerifier
from token_exchange.txn_tokens import OwnTokenVerifier
from token_exchange.user_tokens import SubjectIssuer, UserTokenVerifier

from .keystore import KeyRing
from .settings import ConfigError, KeySetSettings, Settings

SVID_KEY_USE = "jwt-svid"


@dataclass(frozen=True, slots=True)
class Prepared:
    """What start-up checks before serving: key files read, policy compiled."""

    settings: Settings
    policy: EmbeddedRego
    static_keys: dict[str, StaticKeys]  # by config key of the file


def prepare(settings: Settings) -> Prepared:
    """Read every key file and compile the policy; the first problem raises ConfigError naming its key."""
    static: dict[str, StaticKeys] = {}
    for i, issuer in enumerate(settings.subject_issuers):
        if issuer.jwks.file is not None:
            static[f"subject_issuers[{i}].jwks_file"] = _read(
                issuer.jwks, f"subject_issuers[{i}].jwks_file", ASYMMETRIC_ALGORITHMS, None
            )
    for i, domain in enumerate(settings.trust_domains):
        if domain.bundle.file is not None:
            static[f"trust_domains[{i}].bundle_file"] = _read(
                domain.bundle, f"trust_domains[{i}].bundle_file", SVID_ALGORITHMS, SVID_KEY_USE
            )
    directory = settings.policy.dir or PACKAGED_POLICIES
    try:
        policy = EmbeddedRego(PolicySource.read(directory))
    except PolicyError as exc:
        raise ConfigError(f"policy.dir: {exc}") from exc
    return Prepared(settings, policy, static)


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
    exchange: TokenExchange
    lifecycle: TaskLifecycle
    actors: JwtSvidVerifier
    users: UserTokenVerifier
    keys: KeyRing
    metadata: dict[str, Any]
    store: SqliteStore


@asynccontextmanager
async def running(prepared: Prepared, keys: KeyRing) -> AsyncIterator[Deputy]:
    """Open the store and the HTTP client for remote key sets; close them on exit."""
    settings = prepared.settings
    store = await SqliteStore.open(sqlite_path(settings.store_url))
    async with httpx2.AsyncClient(timeout=5.0, follow_redirects=False) as client:

        def source(keyset: KeySetSettings, key: str, parse: Callable[[Any], Any]) -> KeySource:
            if keyset.uri is not None:
                return RemoteKeys(keyset.uri, client=client, parse=parse)
            return prepared.static_keys[key]

        issuers = {
            s.issuer: SubjectIssuer(
                s.issuer,
                s.audience,
                source(s.jwks, f"subject_issuers[{i}].jwks_file", _parser(ASYMMETRIC_ALGORITHMS, None)),
            )
            for i, s in enumerate(settings.subject_issuers)
        }
        bundles = {
            d.name: source(d.bundle, f"trust_domains[{i}].bundle_file", _parser(SVID_ALGORITHMS, SVID_KEY_USE))
            for i, d in enumerate(settings.trust_domains)
        }
        resources = Resources(
            Resource(r.audience, Scope(frozenset(r.scopes)), r.max_ttl, frozenset(r.clients))
            for r in settings.resources
        )
        own_keys = StaticKeys(parse_key_set(keys.public_jwks(), allowed=frozenset(SIGNING_ALGORITHMS)))
        own_tokens = OwnTokenVerifier(own_keys, issuer=settings.issuer, allowed=frozenset(SIGNING_ALGORITHMS))
        actors, users = JwtSvidVerifier(bundles, audience=settings.issuer), UserTokenVerifier(issuers)
        exchange = TokenExchange(
            actors=actors,
            subjects=users,
            own_tokens=own_tokens,
            resources=resources,
            policy=prepared.policy,
            signer=Signer(issuer=settings.issuer, key=keys.current),
            records=store,
            lifetimes=Lifetimes(settings.tokens.default_ttl, settings.tokens.max_ttl, settings.tasks.default_ttl,
                                settings.tasks.max_ttl),
        )
        lifecycle = TaskLifecycle(store=store, own_tokens=own_tokens, resources=resources)
        endpoints = {"revocation_endpoint": "/revoke", "introspection_endpoint": "/introspect"}
        document = metadata(settings.issuer, endpoints=endpoints, scopes=resources.all_scopes())
        try:
            yield Deputy(settings, exchange, lifecycle, actors, users, keys, document, store)
        finally:
            await store.close()


def _parser(allowed: frozenset[str], use: str | None) -> Callable[[Any], Any]:
    return lambda document: parse_key_set(document, allowed=allowed, use=use)
