"""`deputy serve` / `deputy check` configuration errors, and `deputy keys rotate` (issue 2, Configuration).

A wrong or missing key, unknown field, unreadable file or bad key material stops start-up with one line
naming the key and the problem, exit code 2, never a traceback. The whole table runs through the CLI's
`main` in-process (fd-level output captured, so text printed by native code counts too); a few cases run
as real `deputy` processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from gateway.cli import main
from tests.conftest import MAIL, make_setup, running
from tests.support import UserIdp, deputy_command, free_port
from token_exchange.signing import SigningKey

VALID = """
listen = "127.0.0.1:{port}"
state_dir = "state"

[tokens]
signing_alg = "ES256"
default_ttl = 300
max_ttl = 900

[[subject_issuers]]
issuer = "https://idp.example.com"
jwks_file = "idp.jwks.json"

[[trust_domains]]
name = "example.org"
bundle_file = "bundle.jwks"

[[resources]]
audience = "https://mail.example.com"
scopes = ["mail.read", "mail.send"]
max_ttl = 300
"""

Edit = Callable[[str, Path], str]


@dataclass(frozen=True)
class Case:
    name: str
    edit: Edit
    key: str  # the config key the one line must name
    says: str = ""  # and a word of the problem


def _replace(old: str, new: str) -> Edit:
    def edit(text: str, directory: Path) -> str:
        assert old in text, old
        return text.replace(old, new)
    return edit


def _append(extra: str) -> Edit:
    return lambda text, directory: text + textwrap.dedent(extra)


def _write(name: str, content: bytes | str, then: Edit | None = None) -> Edit:
    def edit(text: str, directory: Path) -> str:
        path = directory / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return then(text, directory) if then else text
    return edit


def _policy(rego: str, *, data: str | None = None) -> Edit:
    def edit(text: str, directory: Path) -> str:
        (directory / "bad-policy" / "deputy").mkdir(parents=True)
        (directory / "bad-policy" / "deputy" / "x.rego").write_text(rego)
        if data is not None:
            (directory / "bad-policy" / "data.json").write_text(data)
        return text + '\n[policy]\ndir = "bad-policy"\n'
    return edit


def _whole(content: bytes) -> Edit:
    def edit(text: str, directory: Path) -> str:
        (directory / "deputy.toml").write_bytes(content)
        return "\0keep"
    return edit


BAD_EC_JWK = {"kty": "EC", "crv": "P-256", "kid": "k", "x": "AAAA", "y": "AAAA", "alg": "ES256"}
WEAK_RSA_JWK = {**RSAAlgorithm.to_jwk(rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key(),
                                      as_dict=True), "kid": "weak", "alg": "RS256"}
P384_AS_ES256_JWK = {**ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()).public_key(), as_dict=True),
                     "kid": "p384", "alg": "ES256", "use": "jwt-svid"}

CASES = [
    Case("unknown_key", _append('colour = "blue"\n'), "colour", "unknown"),
    Case("unknown_key_in_a_table", _replace('signing_alg = "ES256"', 'signing_algo = "ES256"'),
         "tokens.signing_algo", "unknown"),
    Case("unknown_key_in_an_array_of_tables", _replace('max_ttl = 300', 'max_ttl = 300\ncolour = 1'),
         "resources[0].colour", "unknown"),
    Case("missing_resource_audience", _replace('audience = "https://mail.example.com"\n', ""),
         "resources[0].audience", "required"),
    Case("missing_issuer_of_subject_issuer", _replace('issuer = "https://idp.example.com"\n', ""),
         "subject_issuers[0].issuer", "required"),
    Case("missing_trust_domain_name", _replace('name = "example.org"\n', ""), "trust_domains[0].name", "required"),
    Case("bad_type_integer_as_string", _replace("max_ttl = 900", 'max_ttl = "900"'), "tokens.max_ttl", "int"),
    Case("bad_type_listen_as_integer", _replace('listen = "127.0.0.1:{port}"', "listen = 8600"), "listen", "str"),
    Case("bad_type_boolean_as_integer", _replace("default_ttl = 300", "default_ttl = true"),
         "tokens.default_ttl", "int"),
    Case("bad_type_table_as_string", _replace("[tokens]\n", 'tokens = "fast"\n[unused]\n'), "tokens", "table"),
    Case("bad_type_scopes_as_string", _replace('scopes = ["mail.read", "mail.send"]', 'scopes = "mail.read"'),
         "resources[0].scopes", "list"),
    Case("bad_value_signing_alg", _replace('signing_alg = "ES256"', 'signing_alg = "HS256"'),
         "tokens.signing_alg", "ES256"),
    Case("bad_value_negative_ttl", _replace("max_ttl = 300", "max_ttl = -1"), "resources[0].max_ttl", "positive"),
    Case("bad_value_default_over_max", _replace("default_ttl = 300", "default_ttl = 1000"), "tokens.default_ttl"),
    Case("bad_value_listen", _replace('listen = "127.0.0.1:{port}"', 'listen = "localhost"'), "listen"),
    Case("bad_value_issuer_not_https", _replace("\nlisten", '\nissuer = "http://deputy.example.com"\nlisten'),
         "issuer", "https"),
    Case("bad_value_issuer_not_a_url", _replace("\nlisten", '\nissuer = "http://[::1"\nlisten'), "issuer"),
    Case("bad_value_jwks_uri_not_a_url", _replace('jwks_file = "idp.jwks.json"', 'jwks_uri = "http://[::1"'),
         "subject_issuers[0].jwks_uri"),
    Case("bad_value_jwks_uri_plain_http", _replace('jwks_file = "idp.jwks.json"',
                                                   'jwks_uri = "http://idp.example.com/jwks"'),
         "subject_issuers[0].jwks_uri", "https"),
    Case("bad_value_uppercase_trust_domain", _replace('name = "example.org"', 'name = "Example.org"'),
         "trust_domains[0].name"),
    Case("bad_value_duplicate_resource", _append("""
         [[resources]]
         audience = "https://mail.example.com"
         scopes = ["mail.read"]
         """), "resources[1].audience", "twice"),
    Case("jwks_file_and_jwks_uri", _replace('jwks_file = "idp.jwks.json"',
                                            'jwks_file = "idp.jwks.json"\njwks_uri = "https://idp.example.com/jwks"'),
         "subject_issuers[0].jwks_file", "jwks_uri"),
    Case("neither_jwks_file_nor_jwks_uri", _replace('jwks_file = "idp.jwks.json"\n', ""),
         "subject_issuers[0].jwks_file", "jwks_uri"),
    Case("bundle_file_and_bundle_uri", _replace('bundle_file = "bundle.jwks"',
                                                'bundle_file = "bundle.jwks"\nbundle_uri = "https://x.example/b"'),
         "trust_domains[0].bundle_file", "bundle_uri"),
    Case("unreadable_jwks_file_missing", _replace('"idp.jwks.json"', '"nowhere.jwks.json"'),
         "subject_issuers[0].jwks_file", "nowhere.jwks.json"),
    Case("unreadable_jwks_file_is_a_directory", lambda text, d: (d / "adir").mkdir() or text.replace(
        '"idp.jwks.json"', '"adir"'), "subject_issuers[0].jwks_file"),
    Case("unreadable_bundle_file_missing", _replace('"bundle.jwks"', '"nowhere.jwks"'),
         "trust_domains[0].bundle_file"),
    Case("jwks_file_not_json", _write("idp.jwks.json", "{not json"), "subject_issuers[0].jwks_file", "JSON"),
    Case("jwks_file_not_utf8", _write("idp.jwks.json", b'{"keys": ["\xff"]}'), "subject_issuers[0].jwks_file"),
    Case("jwks_file_not_a_jwk_set", _write("idp.jwks.json", "[1, 2]"), "subject_issuers[0].jwks_file"),
    Case("bad_key_material", _write("idp.jwks.json", json.dumps({"keys": [BAD_EC_JWK]})),
         "subject_issuers[0].jwks_file", "key"),
    Case("weak_rsa_key", _write("idp.jwks.json", json.dumps({"keys": [WEAK_RSA_JWK]})),
         "subject_issuers[0].jwks_file", "kid 'weak': RSA key of 1024 bits; at least 2048 are required"),
    Case("weak_rsa_key_among_good_ones", _write("idp.jwks.json", json.dumps(
        {"keys": [SigningKey.generate("ES256").public_jwk, WEAK_RSA_JWK]})), "subject_issuers[0].jwks_file",
         "idp.jwks.json: kid 'weak': RSA key of 1024 bits"),
    Case("bundle_key_on_the_wrong_curve", _write("bundle.jwks", json.dumps({"keys": [P384_AS_ES256_JWK]})),
         "trust_domains[0].bundle_file", "kid 'p384': an EC key on P-384 cannot be used with ES256"),
    Case("symmetric_key_material", _write("idp.jwks.json", json.dumps(
        {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "k", "alg": "HS256"}]})), "subject_issuers[0].jwks_file"),
    Case("bundle_without_jwt_svid_keys", _write("bundle.jwks", json.dumps(
        {"keys": [{**SigningKey.generate("ES256").public_jwk, "use": "x509-svid"}]})), "trust_domains[0].bundle_file"),
    Case("policy_dir_missing", _append('\n[policy]\ndir = "no-such-policies"\n'), "policy.dir"),
    Case("policy_dir_without_rego", lambda text, d: (d / "empty").mkdir() or text + '\n[policy]\ndir = "empty"\n',
         "policy.dir"),
    Case("policy_that_does_not_compile", _policy('package deputy\nimport rego.v1\ndecision := {"allow": true if {\n'),
         "policy.dir", "unclosed"),
    Case("policy_that_is_not_rego", _policy("this is not rego\n"), "policy.dir", "x.rego"),
    Case("policy_engine_unknown", _append('\n[policy]\nengine = "magic"\n'), "policy.engine"),
    Case("policy_data_nested_too_deeply", _policy("package deputy\n", data="[" * 100_000 + "]" * 100_000),
         "policy.dir", "data.json"),
    Case("decision_log_cannot_open", _append('\n[audit]\ndecision_log = "/proc/no-such-dir/decisions.jsonl"\n'),
         "audit.decision_log", "cannot open"),
    Case("store_url_unsupported", _append('\n[store]\nurl = "mysql://db/deputy"\n'), "store.url"),
    Case("not_toml", _append("this is = = not toml\n"), "deputy.toml", "TOML"),
    Case("not_utf8", _whole(b'listen = "127.0.0.1:8600"\nissuer = "\xff"\n'), "deputy.toml"),
    Case("config_file_missing", lambda text, d: "\0missing", "nowhere.toml"),
    Case("retention_shorter_than_a_token", _append("\n[tasks]\nretention = 60\n"), "tasks.retention", "longest"),
    Case("task_default_over_max", _append("\n[tasks]\ndefault_ttl = 7200\nmax_ttl = 3600\n"), "tasks.default_ttl"),
    Case("task_sweep_every_zero", _append("\n[tasks]\nsweep_every = 0\n"), "tasks.sweep_every", "positive"),
    Case("metrics_listen_malformed", _append('\n[metrics]\nlisten = "9600"\n'), "metrics.listen"),
    Case("metrics_listen_unknown_key", _append('\n[metrics]\nport = 9600\n'), "metrics.port", "unknown key"),
    Case("admin_spiffe_id_malformed", _append('\n[admin]\nspiffe_ids = ["SPIFFE://X/a"]\n'), "admin.spiffe_ids"),
    Case("resource_audience_is_the_issuer", _replace('audience = "https://mail.example.com"',
                                                     'audience = "http://127.0.0.1:{port}"'), "resources"),
]


def write_case(directory: Path, case: Case) -> Path:
    idp = UserIdp("https://idp.example.com")
    (directory / "idp.jwks.json").write_text(json.dumps(idp.jwks()))
    (directory / "bundle.jwks").write_text(json.dumps({"keys": [{**idp.key.public_jwk, "use": "jwt-svid"}]}))
    config = directory / "deputy.toml"
    edited = case.edit(VALID, directory).replace("{port}", str(free_port()))
    if edited == "\0missing":
        return directory / "nowhere.toml"
    if edited != "\0keep":
        config.write_text(edited)
    return config


def assert_one_line_naming(output: str, case: Case) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    assert lines[0].startswith("deputy: "), lines[0]
    assert case.key in lines[0], lines[0]
    assert case.says in lines[0], lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_issue2_config_error_is_one_line_naming_the_key_exit_2(tmp_path: Path, case: Case,
                                                                capfd: pytest.CaptureFixture[str]) -> None:
    config = write_case(tmp_path, case)
    assert main(["check", "--config", str(config)]) == 2
    out, err = capfd.readouterr()
    assert_one_line_naming(out + err, case)


def test_issue2_valid_config_checks_ok(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The template the table edits is itself valid, so each refusal above is caused by its edit."""
    config = write_case(tmp_path, Case("valid", lambda text, d: text, ""))
    assert main(["check", "--config", str(config)]) == 0
    assert "config ok" in capfd.readouterr().out


# --- Real processes: `deputy serve` and `deputy check` ----------------------------------------------------


PROCESS_CASES = [("serve", "unknown_key"), ("serve", "policy_that_does_not_compile"), ("serve", "not_utf8"),
                 ("serve", "corrupt_signing_keys"), ("check_from_env", "bad_key_material")]
CORRUPT_KEYS = Case("corrupt_signing_keys", lambda text, d: text, "keys", "signing keys")


@pytest.fixture(scope="module")
def process_results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[int, str, Case]]]:
    """All the real `deputy` processes at once: they spend their time importing, so run them in parallel."""
    by_name = {c.name: c for c in [*CASES, CORRUPT_KEYS]}
    started = {}
    for command, name in PROCESS_CASES:
        directory = tmp_path_factory.mktemp(name)
        config = write_case(directory, by_name[name])
        if name == "corrupt_signing_keys":
            (directory / "state" / "keys").mkdir(parents=True)
            (directory / "state" / "keys" / "keys.json").write_text('{"current": {"kid": "x", "alg": "ES256"}}')
            (directory / "state" / "keys" / "x.pem").write_text("not a key")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        argv = ["serve", "--config", str(config)]
        if command == "check_from_env":
            argv, env["DEPUTY_CONFIG"] = ["check"], str(config)
        started[f"{command}-{name}"] = (subprocess.Popen(
            deputy_command(*argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=directory,
        ), by_name[name])
    results = {}
    for key, (process, case) in started.items():
        output, _ = process.communicate(timeout=60)
        results[key] = (process.returncode, output.decode(errors="replace"), case)
    yield results


@pytest.mark.parametrize(("command", "name"), PROCESS_CASES, ids=[f"{c}-{n}" for c, n in PROCESS_CASES])
def test_issue2_deputy_process_with_bad_config_exits_2_with_one_line(
        process_results: dict[str, tuple[int, str, Case]], command: str, name: str) -> None:
    returncode, output, case = process_results[f"{command}-{name}"]
    assert returncode == 2, output
    assert_one_line_naming(output, case)


# --- deputy keys rotate: the previous key stays published ------------------------------------------------


def jwks_of(url: str) -> KeySet:
    return KeySet.import_key_set(httpx2.get(url + "/.well-known/jwks.json").json())


def test_issue2_keys_rotate_keeps_the_previous_key_published(tmp_path: Path) -> None:
    setup = make_setup(tmp_path)
    try:
        with running(setup) as before:
            response = before.exchange()
            assert response.status_code == 200, response.text
            old_token = response.json()["access_token"]
            old_kids = [k.kid for k in jwks_of(before.url).keys]
        rotate = subprocess.run(deputy_command("keys", "rotate", "--config", str(setup.config)),
                                capture_output=True, text=True, timeout=60)
        assert rotate.returncode == 0, rotate.stderr
        with running(setup) as after:
            keys = jwks_of(after.url)
            kids = [k.kid for k in keys.keys]
            assert len(old_kids) == 1 and old_kids[0] in kids and len(kids) == 2
            old = jose_jwt.decode(old_token, keys, algorithms=["ES256"])  # minted before rotation: still verifies
            assert old.header["kid"] == old_kids[0] and old.claims["aud"] == MAIL
            response = after.exchange()
            assert response.status_code == 200, response.text
            new = jose_jwt.decode(response.json()["access_token"], keys, algorithms=["ES256"])
            assert new.header["kid"] in kids and new.header["kid"] != old_kids[0]  # signs with the new key
    finally:
        setup.jwks_server.close()
