"""`deputy.toml`: read once with tomllib into frozen dataclasses, every key checked.

The first problem is reported as `ConfigError("key: reason")`. Relative paths are resolved against the
directory of the config file (the working directory when there is none).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import SplitResult, urlsplit

from token_exchange.oidc_discovery import is_loopback
from token_exchange.scope import Scope
from token_exchange.signing import SIGNING_ALGORITHMS
from token_exchange.spiffe import SpiffeId, SpiffeIdError

T = TypeVar("T")
DEFAULT_LISTEN = "127.0.0.1:8600"
SHARED_STORES = ("postgresql://", "postgres://")  # libpq connection URIs (PostgreSQL docs §34.1.1.2)


class ConfigError(Exception):
    """A wrong or missing key, an unknown field, or a bad value: `key: reason`."""


@dataclass(frozen=True, slots=True)
class TokenSettings:
    signing_alg: str = "ES256"
    default_ttl: int = 300
    max_ttl: int = 900


@dataclass(frozen=True, slots=True)
class TaskSettings:
    default_ttl: int = 900
    max_ttl: int = 3600
    retention: int = 86400  # how long ended tasks, their tokens and feed events are kept
    sweep_every: int = 30  # seconds between sweeps (expiry, purge, audit retention, the tasks-open gauge)


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """How long audit events stay in the store, and where they are written out before they leave it."""

    retention: int = 30 * 86400  # seconds; 0 keeps every event in the store
    export: Literal["files", "stdout"] = "files"
    export_dir: Path = Path(".deputy/audit")  # with "files": one JSON-lines file per UTC day
    decision_log: Path | None = None  # OPA-style decision-log JSON lines, besides the audit store


@dataclass(frozen=True, slots=True)
class AdminSettings:
    """Who may use /admin: users whose token for `audience` has a `claim` holding `value`, or these SPIFFE
    IDs. `audience` is the admin API's alone ("" until loaded: `<issuer>/admin`)."""

    claim: str = "groups"
    value: str | None = None
    spiffe_ids: tuple[str, ...] = ()
    audience: str = ""


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    """The web console (`/console`): its OIDC client at `issuer` (one of the subject issuers), public with
    PKCE. `demo_idp` (DEMO ONLY, `serve --dev`): the demo identities whose login page the gateway serves."""

    issuer: str
    client_id: str
    discovery_url: str
    redirect_uri: str
    scope: str = "openid"
    session_ttl: int = 8 * 3600
    demo_idp: Path | None = None


@dataclass(frozen=True, slots=True)
class PolicySettings:
    engine: Literal["embedded", "opa"] = "embedded"
    dir: Path | None = None  # None: the packaged policies
    opa_url: str = "http://127.0.0.1:8181"
    timeout_ms: int = 250  # per decision asked of an OPA server


@dataclass(frozen=True, slots=True)
class SsfSettings:
    """The SSF transmitter (seconds): how long a long poll is held (RFC 8936 §2.5), how often a stream may ask
    for verification (SSF §8.1.4.2), how long a stream nobody manages or polls lives (SSF §8.1.1), and how
    long a push to a receiver may take (RFC 8935)."""

    poll_timeout: int = 15
    min_verification_interval: int = 1
    inactivity_timeout: int = 86400
    push_timeout: int = 5
    push_to_private_addresses: bool = False  # receivers' push endpoints inside the network (else public only)


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """The management listener for Prometheus' `/metrics`; None: no metrics are served."""

    listen: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class KeySettings:
    """Where the signing key ring is kept: with `encryption_key_file`, in the store, sealed under the
    key-encryption key that file holds (every replica shares it); without, as files in `state_dir/keys`."""

    encryption_key_file: Path | None = None


@dataclass(frozen=True, slots=True)
class KeySetSettings:
    """Where a JWK Set comes from: exactly one of a file or an https/http URI."""

    file: Path | None
    uri: str | None


@dataclass(frozen=True, slots=True)
class SubjectIssuerSettings:
    issuer: str
    jwks: KeySetSettings
    audience: str


@dataclass(frozen=True, slots=True)
class AttesterSettings:
    """A client attester (draft-ietf-oauth-attestation-based-client-auth): its keys, and how old (by `iat`)
    an attestation may be and still count as fresh posture."""

    name: str
    keys: KeySetSettings
    max_age: int = 300


@dataclass(frozen=True, slots=True)
class WorkloadIssuerSettings:
    """An issuer of Kubernetes service-account or other OIDC workload tokens accepted as `actor_token`.

    `keys` is None with `discovery`: the JWKS is found through OIDC discovery at the issuer."""

    issuer: str
    keys: KeySetSettings | None
    audience: str
    kind: Literal["kubernetes", "oidc"] = "oidc"
    id_claim: str = "sub"

    @property
    def discovery(self) -> bool:
        return self.keys is None


@dataclass(frozen=True, slots=True)
class TrustDomainSettings:
    name: str
    bundle: KeySetSettings


@dataclass(frozen=True, slots=True)
class ResourceSettings:
    audience: str
    scopes: tuple[str, ...]
    max_ttl: int
    clients: tuple[str, ...] = ()
    require_dpop: bool = False


@dataclass(frozen=True, slots=True)
class DpopSettings:
    """`[dpop]`: RFC 9449 at the token endpoint; `nonces`: every proof must carry a server nonce (§8)."""

    nonces: bool = False


@dataclass(frozen=True, slots=True)
class Settings:
    issuer: str = f"http://{DEFAULT_LISTEN}"
    host: str = "127.0.0.1"
    port: int = 8600
    state_dir: Path = Path(".deputy")
    store_url: str = "sqlite:///.deputy/deputy.db"
    tokens: TokenSettings = field(default_factory=TokenSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    subject_issuers: tuple[SubjectIssuerSettings, ...] = ()
    trust_domains: tuple[TrustDomainSettings, ...] = ()
    resources: tuple[ResourceSettings, ...] = ()
    tasks: TaskSettings = field(default_factory=TaskSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    attesters: tuple[AttesterSettings, ...] = ()
    workload_issuers: tuple[WorkloadIssuerSettings, ...] = ()
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    keys: KeySettings = field(default_factory=KeySettings)
    ssf: SsfSettings = field(default_factory=SsfSettings)
    dpop: DpopSettings = field(default_factory=DpopSettings)
    console: ConsoleSettings | None = None


def load_settings(path: Path | None, *, listen: str | None = None) -> Settings:
    """Settings from a TOML file, or the embedded defaults when `path` is None.

    `listen` (`deputy serve --listen`) replaces the file's `listen` before anything is derived from it: an
    issuer the file does not set follows it."""
    overrides = {} if listen is None else {"listen": listen}
    if path is None:
        return parse_settings(overrides, base=Path.cwd())
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:  # TOML is UTF-8 (tomllib decodes strictly)
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_settings(document | overrides, base=path.resolve().parent)


def parse_settings(document: dict[str, Any], *, base: Path) -> Settings:
    t = _Table(document, "", base)
    listen = t.take("listen", str, DEFAULT_LISTEN)
    host, port = _listen(listen)
    issuer = _issuer(t.take("issuer", str, f"http://{listen}"))
    state_dir = t.path("state_dir", ".deputy")
    tokens = _tokens(t.table("tokens"))
    store = t.table("store")
    store_url = store.take("url", str, f"sqlite:///{state_dir / 'deputy.db'}")
    if store_url.startswith("sqlite:///") and not store_url.startswith("sqlite:////"):
        store_url = f"sqlite:///{base / store_url.removeprefix('sqlite:///')}"
    elif not store_url.startswith(("sqlite:///", *SHARED_STORES)):
        raise ConfigError("store.url: must be a sqlite:///path or postgresql:// URL")
    store.done()
    keys = _keys(t.table("keys"), store_url)
    policy = _policy(t.table("policy"))
    issuers = tuple(_subject_issuer(s, issuer) for s in t.tables("subject_issuers"))
    domains = tuple(_trust_domain(s) for s in t.tables("trust_domains"))
    resources = tuple(_resource(s, tokens) for s in t.tables("resources"))
    tasks = _tasks(t.table("tasks"))
    admin = _admin(t.table("admin"), issuer, issuers)
    audit = _audit(t.table("audit"), state_dir)
    attesters = tuple(_attester(s) for s in t.tables("attesters"))
    workloads = tuple(_workload_issuer(s, issuer) for s in t.tables("workload_issuers"))
    metrics = _metrics(t.table("metrics"), (host, port))
    ssf, dpop = _ssf(t.table("ssf"), tasks), _dpop(t.table("dpop"))
    t.done()
    _unique("subject_issuers", [s.issuer for s in issuers], "issuer")
    _unique("trust_domains", [d.name for d in domains], "name")
    _unique("attesters", [a.name for a in attesters], "name")
    _unique("workload_issuers", [w.issuer for w in workloads], "issuer")
    _apart(workloads, issuers)
    _unique("resources", [r.audience for r in resources], "audience")
    longest = max([tokens.max_ttl, *(r.max_ttl for r in resources)])
    if tasks.retention < max(longest, tasks.max_ttl):
        raise ConfigError(f"tasks.retention: must be at least the longest token or task lifetime ({longest} s)")
    if any(r.audience == issuer for r in resources):
        raise ConfigError("resources: no resource audience may equal the gateway issuer (task tokens use it)")
    return Settings(issuer, host, port, state_dir, store_url, tokens, policy, issuers, domains, resources, tasks, admin,
                    audit, attesters, workloads, metrics, keys, ssf, dpop, _console(t, issuer, issuers))


KNOWN_KEYS: dict[str, frozenset[str]] = {
    "": frozenset({"issuer", "listen", "state_dir", "tokens", "store", "policy", "subject_issuers", "trust_domains",
                   "resources", "tasks", "admin", "audit", "attesters", "workload_issuers", "metrics",
                   "keys", "ssf", "dpop", "console"}),
    "audit": frozenset({"retention", "export", "export_dir", "decision_log"}),
    "tokens": frozenset({"signing_alg", "default_ttl", "max_ttl"}),
    "store": frozenset({"url"}),
    "policy": frozenset({"engine", "dir", "opa_url", "timeout_ms"}),
    "attesters": frozenset({"name", "jwks_file", "jwks_uri", "max_age"}),
    "workload_issuers": frozenset({"issuer", "jwks_file", "jwks_uri", "discovery", "audience", "kind", "id_claim"}),
    "metrics": frozenset({"listen"}),
    "keys": frozenset({"encryption_key_file"}),
    "ssf": frozenset({"poll_timeout", "min_verification_interval", "inactivity_timeout", "push_timeout",
                      "push_to_private_addresses"}),
    "subject_issuers": frozenset({"issuer", "jwks_file", "jwks_uri", "audience"}),
    "trust_domains": frozenset({"name", "bundle_file", "bundle_uri"}),
    "resources": frozenset({"audience", "scopes", "max_ttl", "clients", "require_dpop"}),
    "dpop": frozenset({"nonces"}),
    "tasks": frozenset({"default_ttl", "max_ttl", "retention", "sweep_every"}),
    "admin": frozenset({"claim", "value", "spiffe_ids", "audience"}),
    "console": frozenset({"issuer", "client_id", "discovery_url", "redirect_uri", "scope", "session_ttl",
                          "demo_idp"}),
}
"""Every key of `deputy.toml`, by table (an array of tables by its name)."""


_TYPE_NAMES: dict[type, str] = {str: "a string", int: "an integer", bool: "a boolean", list: "a list"}


class _Table:
    """One TOML table being read: typed takes, and unknown keys rejected by `done()`, or as soon as a
    required key is missing (a misspelt key is reported as unknown, not as the key it was meant to be)."""

    def __init__(self, data: Any, path: str, base: Path) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: must be a table")
        self.data, self.path_prefix, self.base = data, path, base
        self.known = KNOWN_KEYS[path.partition("[")[0].rpartition(".")[2]]

    def key(self, name: str) -> str:
        return f"{self.path_prefix}.{name}" if self.path_prefix else name

    def take(self, name: str, kind: type[T], default: T | None = None) -> T:
        if name not in self.data:
            if default is None:
                self.done()
                raise ConfigError(f"{self.key(name)}: required")
            return default
        value = self.data[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"{self.key(name)}: must be {_TYPE_NAMES.get(kind, kind.__name__)}")
        return value

    def positive(self, name: str, default: int) -> int:
        value = self.take(name, int, default)
        if value <= 0:
            raise ConfigError(f"{self.key(name)}: must be a positive number of seconds")
        return value

    def path(self, name: str, default: str) -> Path:
        return self.base / self.take(name, str, default)

    def table(self, name: str) -> _Table:
        return _Table(self.data.get(name, {}), self.key(name), self.base)

    def tables(self, name: str) -> list[_Table]:
        items = self.data.get(name, [])
        if not isinstance(items, list):
            raise ConfigError(f"{self.key(name)}: must be an array of tables ([[{name}]])")
        return [_Table(item, f"{self.key(name)}[{i}]", self.base) for i, item in enumerate(items)]

    def done(self) -> None:
        if unknown := sorted(set(self.data) - self.known):
            raise ConfigError(f"{self.key(unknown[0])}: unknown key")


def _listen(listen: str, *, key: str = "listen") -> tuple[str, int]:
    host, colon, port = listen.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: must be host:port, e.g. 127.0.0.1:8600")
    return host.strip("[]"), int(port)


def _issuer(issuer: str) -> str:
    """RFC 8414 §2: https, no query or fragment; plain http only on loopback (development)."""
    parts = _split(issuer, "issuer")
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError("issuer: must be an https URL without query or fragment")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ConfigError("issuer: must use https (plain http is allowed on loopback only)")
    return issuer


def _url(t: _Table, name: str) -> str:
    return checked_url(t.take(name, str), key=t.key(name))


def checked_url(value: str, *, key: str) -> str:
    """An http(s) URL: https except on loopback, without a user name or password; ConfigError names `key`."""
    parts = _split(value, key)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"{key}: must be an http(s) URL")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ConfigError(f"{key}: must use https (plain http is allowed on loopback only)")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{key}: must not hold a user name or password (it would be logged and sent "
                          "as a static secret)")
    return value


def opa_address(value: str, *, key: str) -> str:
    """An OPA server's address (`[policy] opa_url`, `deputy policy push --opa`): a checked URL, no path."""
    address = checked_url(value, key=key).rstrip("/")
    if urlsplit(address).path or urlsplit(address).query:
        raise ConfigError(f"{key}: must be the OPA server's address, without a path (e.g. http://127.0.0.1:8181)")
    return address


def _split(url: str, key: str) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError as exc:  # e.g. "Invalid IPv6 URL"
        raise ConfigError(f"{key}: not a URL: {exc}") from exc


def _tokens(t: _Table) -> TokenSettings:
    alg = t.take("signing_alg", str, "ES256")
    if alg not in SIGNING_ALGORITHMS:
        raise ConfigError(f"tokens.signing_alg: must be one of {', '.join(SIGNING_ALGORITHMS)}")
    default_ttl, max_ttl = t.positive("default_ttl", 300), t.positive("max_ttl", 900)
    if default_ttl > max_ttl:
        raise ConfigError("tokens.default_ttl: must not exceed tokens.max_ttl")
    t.done()
    return TokenSettings(alg, default_ttl, max_ttl)


def _policy(t: _Table) -> PolicySettings:
    engine = t.take("engine", str, "embedded")
    if engine not in ("embedded", "opa"):
        raise ConfigError("policy.engine: must be 'embedded' or 'opa'")
    directory = t.path("dir", "") if "dir" in t.data else None
    opa_url = opa_address(t.take("opa_url", str), key="policy.opa_url") if "opa_url" in t.data \
        else "http://127.0.0.1:8181"
    timeout_ms = t.take("timeout_ms", int, 250)
    if not 0 < timeout_ms <= 60_000:
        raise ConfigError("policy.timeout_ms: must be between 1 and 60000 milliseconds")
    t.done()
    return PolicySettings("opa" if engine == "opa" else "embedded", directory, opa_url, timeout_ms)


def _key_set(t: _Table, file_key: str, uri_key: str) -> KeySetSettings:
    has_file, has_uri = file_key in t.data, uri_key in t.data
    if has_file == has_uri:
        raise ConfigError(f"{t.key(file_key)}: exactly one of {file_key} or {uri_key} is required")
    if has_file:
        return KeySetSettings(t.path(file_key, ""), None)
    return KeySetSettings(None, _url(t, uri_key))


def _subject_issuer(t: _Table, gateway_issuer: str) -> SubjectIssuerSettings:
    issuer = t.take("issuer", str)
    jwks = _key_set(t, "jwks_file", "jwks_uri")
    audience = t.take("audience", str, gateway_issuer)
    t.done()
    return SubjectIssuerSettings(issuer, jwks, audience)


def _trust_domain(t: _Table) -> TrustDomainSettings:
    name = t.take("name", str)
    try:
        SpiffeId.check_trust_domain(name)
    except SpiffeIdError as exc:
        raise ConfigError(f"{t.key('name')}: {exc}") from exc
    bundle = _key_set(t, "bundle_file", "bundle_uri")
    t.done()
    return TrustDomainSettings(name, bundle)


def _resource(t: _Table, tokens: TokenSettings) -> ResourceSettings:
    audience = t.take("audience", str)
    scopes = t.take("scopes", list)
    if not scopes or not all(isinstance(s, str) for s in scopes) or len(Scope.of(scopes).values) != len(scopes):
        raise ConfigError(f"{t.key('scopes')}: must be a non-empty list of distinct RFC 6749 scope tokens")
    max_ttl = t.positive("max_ttl", tokens.max_ttl)
    clients = _spiffe_ids(t, "clients")
    require_dpop = t.take("require_dpop", bool, False)
    t.done()
    return ResourceSettings(audience, tuple(scopes), max_ttl, clients, require_dpop)


def _dpop(t: _Table) -> DpopSettings:
    nonces = t.take("nonces", bool, False)
    t.done()
    return DpopSettings(nonces)


def _tasks(t: _Table) -> TaskSettings:
    default_ttl, max_ttl = t.positive("default_ttl", 900), t.positive("max_ttl", 3600)
    if default_ttl > max_ttl:
        raise ConfigError("tasks.default_ttl: must not exceed tasks.max_ttl")
    retention = t.positive("retention", 86400)
    sweep_every = t.positive("sweep_every", 30)
    t.done()
    return TaskSettings(default_ttl, max_ttl, retention, sweep_every)


def _audit(t: _Table, state_dir: Path) -> AuditSettings:
    retention = t.take("retention", int, 30 * 86400)
    if retention < 0:
        raise ConfigError("audit.retention: must be a number of seconds (0 keeps every event in the store)")
    export = t.take("export", str, "files")
    if export not in ("files", "stdout"):
        raise ConfigError("audit.export: must be 'files' or 'stdout'")
    export_dir = t.path("export_dir", "") if "export_dir" in t.data else state_dir / "audit"
    decision_log = t.path("decision_log", "") if "decision_log" in t.data else None
    t.done()
    return AuditSettings(retention, "stdout" if export == "stdout" else "files", export_dir, decision_log)


def _attester(t: _Table) -> AttesterSettings:
    name = t.take("name", str)
    if not name.strip():
        raise ConfigError(f"{t.key('name')}: must not be empty")
    keys = _key_set(t, "jwks_file", "jwks_uri")
    max_age = t.positive("max_age", 300)
    t.done()
    return AttesterSettings(name, keys, max_age)


def _workload_issuer(t: _Table, gateway_issuer: str) -> WorkloadIssuerSettings:
    issuer = _url(t, "issuer")
    if t.take("discovery", bool, False):
        if "jwks_file" in t.data or "jwks_uri" in t.data:
            raise ConfigError(f"{t.key('discovery')}: give discovery = true or a jwks_file or jwks_uri, not both")
        keys = None
    else:
        keys = _key_set(t, "jwks_file", "jwks_uri")
    audience = t.take("audience", str, gateway_issuer)
    kind = t.take("kind", str, "oidc")
    if kind not in ("kubernetes", "oidc"):
        raise ConfigError(f"{t.key('kind')}: must be 'kubernetes' or 'oidc'")
    id_claim = t.take("id_claim", str, "sub")
    if not id_claim:
        raise ConfigError(f"{t.key('id_claim')}: must name a claim")
    t.done()
    return WorkloadIssuerSettings(issuer, keys, audience, "kubernetes" if kind == "kubernetes" else "oidc", id_claim)


def _apart(workloads: tuple[WorkloadIssuerSettings, ...], users: tuple[SubjectIssuerSettings, ...]) -> None:
    """An issuer is either the users' or the agents': one token must not serve as both."""
    user_issuers = {u.issuer for u in users}
    for i, workload in enumerate(workloads):
        if workload.issuer in user_issuers:
            raise ConfigError(f"workload_issuers[{i}].issuer: {workload.issuer!r} is also a subject issuer; "
                              "a token must not serve both as a user's and as an agent's")


def _metrics(t: _Table, public: tuple[str, int]) -> MetricsSettings:
    if "listen" not in t.data:
        t.done()
        return MetricsSettings()
    where = _listen(t.take("listen", str), key="metrics.listen")
    if where[1] == public[1] and (where[0] == public[0] or "0.0.0.0" in (where[0], public[0])):
        raise ConfigError("metrics.listen: must differ from listen (metrics are never served on the public port)")
    t.done()
    return MetricsSettings(where)


def _ssf(t: _Table, tasks: TaskSettings) -> SsfSettings:
    poll_timeout = t.positive("poll_timeout", 15)
    if poll_timeout > 300:
        raise ConfigError("ssf.poll_timeout: must be at most 300 seconds (a long poll holds a connection)")
    interval = t.take("min_verification_interval", int, 1)
    if interval < 0:
        raise ConfigError("ssf.min_verification_interval: must be a number of seconds (0: no limit)")
    inactivity = t.positive("inactivity_timeout", min(86400, tasks.retention))
    push_timeout = t.positive("push_timeout", 5)
    private = t.take("push_to_private_addresses", bool, False)
    if inactivity > tasks.retention:
        raise ConfigError("ssf.inactivity_timeout: must not exceed tasks.retention (a stream left alone longer "
                          "could miss events purged from the feed)")
    t.done()
    return SsfSettings(poll_timeout, interval, inactivity, push_timeout, private)


def _keys(t: _Table, store_url: str) -> KeySettings:
    """The key-encryption key is required where replicas share the store (PostgreSQL): the ring is in it."""
    if "encryption_key_file" not in t.data:
        t.done()
        if store_url.startswith(SHARED_STORES):
            raise ConfigError("keys.encryption_key_file: required with a PostgreSQL store (replicas share their "
                              "signing keys through the database, which needs a key-encryption key)")
        return KeySettings()
    path = t.path("encryption_key_file", "")
    t.done()
    return KeySettings(path)


def _admin(t: _Table, gateway_issuer: str, users: tuple[SubjectIssuerSettings, ...]) -> AdminSettings:
    """`audience` is no other audience a user token is taken for (RFC 8725 §3.9): an agent's subject token
    never opens /admin."""
    claim = t.take("claim", str, "groups")
    value = t.take("value", str) if "value" in t.data else None
    spiffe_ids = _spiffe_ids(t, "spiffe_ids")
    audience = t.take("audience", str, f"{gateway_issuer}/admin")
    t.done()
    if audience == gateway_issuer or audience in {u.audience for u in users}:
        raise ConfigError(f"{t.key('audience')}: {audience!r} is the gateway issuer or a subject_issuers audience: "
                          "admin tokens need an audience of their own")
    return AdminSettings(claim, value, spiffe_ids, audience)


def _console(root: _Table, gateway_issuer: str, users: tuple[SubjectIssuerSettings, ...]) -> ConsoleSettings | None:
    """The console signs admins in at one of the subject issuers: its access token is checked as /admin's."""
    if "console" not in root.data:
        return None
    t = root.table("console")
    issuer = t.take("issuer", str)
    if issuer not in {u.issuer for u in users}:
        raise ConfigError(f"{t.key('issuer')}: {issuer!r} is not one of the subject_issuers")
    client_id = t.take("client_id", str, "deputy-console")
    discovery = checked_url(t.take("discovery_url", str, f"{issuer}/.well-known/openid-configuration"),
                            key=t.key("discovery_url"))
    redirect = checked_url(t.take("redirect_uri", str, f"{gateway_issuer}/console/callback"),
                           key=t.key("redirect_uri"))
    scope = t.take("scope", str, "openid")
    ttl = t.positive("session_ttl", 8 * 3600)
    demo = t.path("demo_idp", "") if "demo_idp" in t.data else None
    if demo is not None and not is_loopback(urlsplit(gateway_issuer).hostname):
        raise ConfigError(f"{t.key('demo_idp')}: DEMO ONLY, a passwordless admin login: served on a loopback "
                          f"issuer only (`serve --dev`), never at {gateway_issuer}")
    t.done()
    return ConsoleSettings(issuer, client_id, discovery, redirect, scope, ttl, demo)


def _spiffe_ids(t: _Table, name: str) -> tuple[str, ...]:
    """An optional list of SPIFFE IDs, each checked (SPIFFE-ID §2)."""
    values = t.take(name, list, [])
    for value in values:
        try:
            SpiffeId.parse(value)
        except SpiffeIdError as exc:
            raise ConfigError(f"{t.key(name)}: {value!r} is not a SPIFFE ID: {exc}") from exc
    return tuple(values)


def _unique(section: str, values: list[str], key: str) -> None:
    seen: set[str] = set()
    for i, value in enumerate(values):
        if value in seen:
            raise ConfigError(f"{section}[{i}].{key}: {value!r} is configured twice")
        seen.add(value)
