"""SSF 1.0 over real HTTP: the transmitter metadata (§7, interoperability profile §2.3), the SET keys, stream
configuration (§8.1.1), status (§8.1.2), verification (§8.1.4), who may manage a stream (§8), and no server
error for any body."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from gateway import openapi, ssf_routes
from tests.conftest import Deployment, make_setup, running
from tests.gateway.ssf_env import (
    CREDENTIAL_CHANGE,
    DOCS,
    PHOTOS,
    POLL,
    PUSH,
    RS_BOTH,
    RS_DOCS,
    RS_PHOTOS,
    SESSION_REVOKED,
    STREAM_UPDATED,
    VERIFICATION,
    Receiver,
    event_of,
    one_shot,
    policy_data,
    resources,
    revoke,
    ssf_deployment,
)

SUPPORTED = [SESSION_REVOKED, CREDENTIAL_CHANGE]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with ssf_deployment(tmp_path_factory.mktemp("ssf-streams"), ssf="min_verification_interval = 30") as deployment:
        yield deployment


@pytest.fixture
def docs(env: Deployment) -> Receiver:
    return Receiver(env, RS_DOCS)


def test_ssf_7_2_the_metadata_is_served_at_the_well_known_location_without_authentication(env: Deployment) -> None:
    response = env.client.get("/.well-known/ssf-configuration")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    document = response.json()
    openapi.SsfConfigurationBody.model_validate(document)
    assert document["issuer"] == env.issuer  # §7.2.4: identical to the issuer asked
    assert document["spec_version"] == "1_0"  # interoperability profile §2.3.1
    assert document["jwks_uri"] == f"{env.issuer}/ssf/jwks.json"
    assert document["delivery_methods_supported"] == [PUSH, POLL]
    assert document["configuration_endpoint"] == f"{env.issuer}/ssf/streams"
    assert document["status_endpoint"] == f"{env.issuer}/ssf/status"
    assert document["verification_endpoint"] == f"{env.issuer}/ssf/verify"
    assert document["authorization_schemes"] == [{"spec_urn": "urn:ietf:rfc:6749"}]
    assert document["default_subjects"] == "ALL"
    assert "add_subject_endpoint" not in document and "remove_subject_endpoint" not in document
    assert env.client.get("/.well-known/risc-configuration").status_code == 404  # §7.2: not the RISC location


def test_ssf_4_1_4_the_set_keys_are_rs256_of_at_least_2048_bits_and_not_the_token_keys(env: Deployment) -> None:
    keys = env.client.get("/ssf/jwks.json").json()["keys"]
    token_kids = {k["kid"] for k in env.client.get("/.well-known/jwks.json").json()["keys"]}
    assert keys and all(k["kty"] == "RSA" and k["alg"] == "RS256" and k["kid"] not in token_kids for k in keys)
    assert all(len(k["n"]) >= 342 for k in keys)  # base64url of a 2048-bit modulus
    assert all("d" not in k and "p" not in k for k in keys)  # public keys only


def test_ssf_8_1_1_1_create_answers_201_with_a_poll_stream_for_the_callers_resources(docs: Receiver) -> None:
    config = docs.create(description="docs RS")
    openapi.StreamConfigBody.model_validate(config)
    assert config["iss"] == docs.env.issuer and config["aud"] == DOCS  # §8.1.1.1.1
    assert config["delivery"] == {"method": POLL, "endpoint_url": f"{docs.env.issuer}/ssf/poll/{config['stream_id']}"}
    assert config["events_supported"] == SUPPORTED and config["events_delivered"] == SUPPORTED
    assert config["description"] == "docs RS"
    assert (config["min_verification_interval"], config["inactivity_timeout"]) == (30, 86400)
    both = Receiver(docs.env, RS_BOTH).create()
    assert both["aud"] == [DOCS, PHOTOS]  # a client of two resources: their audiences, sorted


def test_ssf_8_1_1_1_a_push_stream_keeps_the_receivers_endpoint(docs: Receiver) -> None:
    config = docs.create(delivery={"method": PUSH, "endpoint_url": "https://rs.example.com/ssf",
                                   "authorization_header": "Bearer secret"})
    assert config["delivery"] == {"method": PUSH, "endpoint_url": "https://rs.example.com/ssf"}
    assert "secret" not in json.dumps(config)  # the receiver's credential is never shown again


def test_ssf_8_1_1_2_read_one_stream_or_the_list_of_the_callers(env: Deployment) -> None:
    photos = Receiver(env, RS_PHOTOS)
    first, second = photos.create(), photos.create()
    listed = photos.request("GET", "/ssf/streams")
    assert listed.status_code == 200
    assert {first["stream_id"], second["stream_id"]} <= {s["stream_id"] for s in listed.json()}
    one = photos.request("GET", "/ssf/streams", params={"stream_id": first["stream_id"]})
    assert one.status_code == 200 and one.json() == first
    openapi.StreamRead.model_validate(listed.json())
    openapi.StreamRead.model_validate(one.json())


def test_ssf_8_1_1_2_a_client_without_streams_reads_an_empty_list(env: Deployment) -> None:
    for stream in Receiver(env, RS_BOTH).request("GET", "/ssf/streams").json():
        Receiver(env, RS_BOTH).request("DELETE", "/ssf/streams", params={"stream_id": stream["stream_id"]})
    listed = Receiver(env, RS_BOTH).request("GET", "/ssf/streams")
    assert listed.status_code == 200 and listed.json() == []


def test_ssf_8_1_1_3_patch_replaces_the_members_sent_and_keeps_the_rest(docs: Receiver) -> None:
    config = docs.create(description="first", events_requested=[SESSION_REVOKED])
    patched = docs.request("PATCH", "/ssf/streams", json={"stream_id": config["stream_id"], "description": "second"})
    assert patched.status_code == 200, patched.text
    assert patched.json() == {**config, "description": "second"}
    assert docs.request("GET", "/ssf/streams", params={"stream_id": config["stream_id"]}).json() == patched.json()


def test_ssf_8_1_1_3_transmitter_supplied_members_sent_unchanged_are_accepted(docs: Receiver) -> None:
    config = docs.create()
    echoed = docs.request("PATCH", "/ssf/streams", json={**config, "description": "echo"})
    assert echoed.status_code == 200 and echoed.json()["description"] == "echo"


@pytest.mark.parametrize(("member", "value"), [
    ("aud", "https://photos.example.com"), ("aud", [DOCS, PHOTOS]), ("iss", "https://evil.example.com"),
    ("events_supported", [SESSION_REVOKED]), ("events_delivered", []), ("min_verification_interval", 0),
    ("inactivity_timeout", 1),
])
def test_ssf_8_1_1_3_a_changed_transmitter_supplied_member_is_400(docs: Receiver, member: str, value: Any) -> None:
    config = docs.create()
    response = docs.request("PATCH", "/ssf/streams", json={"stream_id": config["stream_id"], member: value})
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request")
    assert member in response.json()["error_description"]
    assert docs.request("GET", "/ssf/streams", params={"stream_id": config["stream_id"]}).json() == config


def test_ssf_8_1_1_4_put_deletes_the_receiver_members_it_does_not_send(docs: Receiver) -> None:
    config = docs.create(description="first", events_requested=[CREDENTIAL_CHANGE])
    replaced = docs.request("PUT", "/ssf/streams", json={"stream_id": config["stream_id"]})
    assert replaced.status_code == 200, replaced.text
    body = replaced.json()
    assert "description" not in body and "events_requested" not in body
    assert body["events_delivered"] == SUPPORTED and body["delivery"]["method"] == POLL


def test_ssf_8_1_1_unknown_requested_events_are_ignored_and_an_empty_request_delivers_none(docs: Receiver) -> None:
    unknown = docs.create(events_requested=["https://example.com/event/unknown", SESSION_REVOKED])
    assert unknown["events_delivered"] == [SESSION_REVOKED]
    empty = docs.create(events_requested=[])
    assert empty["events_delivered"] == []


def test_ssf_8_1_1_5_delete_answers_204_and_the_stream_is_gone(docs: Receiver) -> None:
    config = docs.create()
    deleted = docs.request("DELETE", "/ssf/streams", params={"stream_id": config["stream_id"]})
    assert deleted.status_code == 204 and deleted.content == b""
    assert docs.request("GET", "/ssf/streams", params={"stream_id": config["stream_id"]}).status_code == 404
    assert docs.request("DELETE", "/ssf/streams", params={"stream_id": config["stream_id"]}).status_code == 404
    missing = docs.request("DELETE", "/ssf/streams")
    assert (missing.status_code, missing.json()["error"]) == (400, "invalid_request")


def test_ssf_8_1_2_status_is_read_and_changed_with_a_reason(docs: Receiver) -> None:
    stream_id = docs.create()["stream_id"]
    status = docs.request("GET", "/ssf/status", params={"stream_id": stream_id})
    assert status.status_code == 200 and status.json() == {"stream_id": stream_id, "status": "enabled"}
    for value in ("paused", "disabled", "enabled"):
        changed = docs.request("POST", "/ssf/status", json={"stream_id": stream_id, "status": value, "reason": "ops"})
        assert changed.status_code == 200, changed.text
        assert changed.json() == {"stream_id": stream_id, "status": value, "reason": "ops"}
        openapi.StreamStatusBody.model_validate(changed.json())
        read = docs.request("GET", "/ssf/status", params={"stream_id": stream_id}).json()
        assert read["status"] == value


@pytest.mark.parametrize("body", [{"status": "stopped"}, {"status": None}, {}, {"status": "enabled", "reason": 5}])
def test_ssf_8_1_2_2_a_bad_status_is_400(docs: Receiver, body: dict[str, Any]) -> None:
    stream_id = docs.create()["stream_id"]
    response = docs.request("POST", "/ssf/status", json={"stream_id": stream_id, **body})
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request")


def test_ssf_8_1_4_verification_answers_204_queues_the_state_and_too_soon_is_429(docs: Receiver) -> None:
    stream_id = docs.create()["stream_id"]
    docs.drop_backlog(stream_id)
    answered = docs.request("POST", "/ssf/verify", json={"stream_id": stream_id, "state": "VGhpcyBpcyBhIHN0YXRl"})
    assert answered.status_code == 204 and answered.content == b""
    [claims] = docs.drain(stream_id, DOCS)
    assert event_of(claims) == (VERIFICATION, {"state": "VGhpcyBpcyBhIHN0YXRl"})
    assert claims["sub_id"] == {"format": "opaque", "id": stream_id}  # §8.1.4.1
    again = docs.request("POST", "/ssf/verify", json={"stream_id": stream_id})
    assert again.status_code == 429 and 1 <= int(again.headers["retry-after"]) <= 30  # §8.1.4.2
    assert docs.drain(stream_id, DOCS) == []


def test_ssf_8_1_4_a_paused_stream_still_delivers_its_verification(env: Deployment) -> None:
    photos = Receiver(env, RS_PHOTOS)
    stream_id = photos.create()["stream_id"]
    photos.drop_backlog(stream_id)
    photos.request("POST", "/ssf/status", json={"stream_id": stream_id, "status": "paused"})
    assert photos.request("POST", "/ssf/verify", json={"stream_id": stream_id, "state": "s"}).status_code == 204
    assert [event_of(c)[0] for c in photos.drain(stream_id, PHOTOS)] == [VERIFICATION]


def test_ssf_8_a_stream_belongs_to_the_client_that_made_it(env: Deployment, docs: Receiver) -> None:
    stream_id = docs.create()["stream_id"]
    other = Receiver(env, RS_PHOTOS)
    for method, path, kw in [("GET", "/ssf/streams", {"params": {"stream_id": stream_id}}),
                             ("PATCH", "/ssf/streams", {"json": {"stream_id": stream_id, "description": "mine"}}),
                             ("PUT", "/ssf/streams", {"json": {"stream_id": stream_id}}),
                             ("DELETE", "/ssf/streams", {"params": {"stream_id": stream_id}}),
                             ("GET", "/ssf/status", {"params": {"stream_id": stream_id}}),
                             ("POST", "/ssf/status", {"json": {"stream_id": stream_id, "status": "disabled"}}),
                             ("POST", "/ssf/verify", {"json": {"stream_id": stream_id}}),
                             ("POST", f"/ssf/poll/{stream_id}", {"json": {"returnImmediately": True}})]:
        response = other.request(method, path, **kw)
        assert (response.status_code, response.json()["error"]) == (404, "not_found"), (method, path)
    assert stream_id not in {s["stream_id"] for s in other.request("GET", "/ssf/streams").json()}
    assert docs.request("GET", "/ssf/status", params={"stream_id": stream_id}).json()["status"] == "enabled"


@pytest.mark.parametrize(("method", "path"), [("POST", "/ssf/streams"), ("GET", "/ssf/streams"),
                                              ("PATCH", "/ssf/streams"), ("PUT", "/ssf/streams"),
                                              ("DELETE", "/ssf/streams"), ("GET", "/ssf/status"),
                                              ("POST", "/ssf/status"), ("POST", "/ssf/verify"),
                                              ("POST", "/ssf/poll/any")])
def test_rfc6750_3_every_management_endpoint_needs_a_receivers_bearer_token(env: Deployment, method: str,
                                                                            path: str) -> None:
    for headers, status in [({}, 401), ({"Authorization": "Bearer not-a-token"}, 401),
                            ({"Authorization": f"Bearer {env.svid()}"}, 403)]:  # an agent, no resource's client
        response = env.client.request(method, path, headers=headers, json={})
        assert response.status_code == status, (method, path, response.text)
        if status == 401:
            assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_bearer_token_in_the_query_is_not_accepted(env: Deployment) -> None:
    """Interoperability profile §2.7.3: bearer tokens in the header only."""
    token = env.svid(sub=RS_DOCS)
    assert env.client.get("/ssf/streams", params={"access_token": token}).status_code == 401


@pytest.mark.parametrize("body", [
    b"", b"null", b"[]", b"{", b'"x"', b"{}" * 2, b'{"delivery": 5}', b'{"delivery": {"method": null}}',
    b'{"delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": "javascript:alert(1)"}}',
    b'{"delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": "https://\xff.example/"}}',
    b'{"events_requested": {"a": 1}}', b'{"events_requested": [null]}', b'{"description": ["x"]}',
    b'{"stream_id": 5}', b'{"stream_id": "' + b"x" * 100 + b'"}', b'{"aud": null}', b'{"a":' * 50_000 + b"1",
    b'{"description": "\\ud800"}', b'{"description": "a", "description": "b"}', b"\x00\x01\x02",
])
@pytest.mark.parametrize(("method", "path"), [("POST", "/ssf/streams"), ("PATCH", "/ssf/streams"),
                                              ("PUT", "/ssf/streams"), ("POST", "/ssf/status"),
                                              ("POST", "/ssf/verify")])
def test_no_body_makes_a_server_error(docs: Receiver, body: bytes, method: str, path: str) -> None:
    response = docs.request(method, path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 404, 413), (body[:40], response.status_code, response.text)
    assert response.json()["error"] in ("invalid_request", "not_found")


def test_a_body_that_is_not_json_is_refused_by_media_type(docs: Receiver) -> None:
    response = docs.request("POST", "/ssf/streams", content=b"{}", headers={"Content-Type": "text/plain"})
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request")
    assert "application/json" in response.json()["error_description"]


def test_ssf_8_1_5_a_receiver_that_lost_a_resource_has_its_stream_disabled_with_stream_updated(
        tmp_path: Path) -> None:
    """`aud` never changes (§8.1.1): once a restart drops RS_BOTH from PHOTOS' clients, its stream about
    DOCS and PHOTOS would tell it of a resource it no longer serves; the transmitter disables it instead
    and says so (§8.1.2: stream-updated, before it stops)."""
    setup = make_setup(tmp_path, extra=resources(), policy_files={"data.json": policy_data()})
    try:
        with running(setup) as env:
            stream_id = Receiver(env, RS_BOTH).create()["stream_id"]
        photos_clients = json.dumps([RS_PHOTOS, RS_BOTH])
        setup.config.write_text(setup.config.read_text().replace(photos_clients, json.dumps([RS_PHOTOS])))
        with running(setup) as env:
            both = Receiver(env, RS_BOTH)
            status = both.request("GET", "/ssf/status", params={"stream_id": stream_id}).json()
            assert status["status"] == "disabled" and "create a new stream" in status["reason"]
            revoke(env, one_shot(env, PHOTOS))
            [updated] = both.drain(stream_id, [DOCS, PHOTOS])
            assert event_of(updated) == (STREAM_UPDATED, {"status": "disabled", "reason": status["reason"]})
            assert updated["sub_id"] == {"format": "opaque", "id": stream_id}
            assert both.create()["aud"] == DOCS
        assert "Traceback" not in env.log()
    finally:
        setup.jwks_server.close()


SSF_OPERATIONS = {("/.well-known/ssf-configuration", "get"), ("/ssf/jwks.json", "get"), ("/ssf/streams", "post"),
                  ("/ssf/streams", "get"), ("/ssf/streams", "patch"), ("/ssf/streams", "put"),
                  ("/ssf/streams", "delete"), ("/ssf/status", "get"), ("/ssf/status", "post"),
                  ("/ssf/verify", "post"), ("/ssf/poll/{stream_id}", "post")}


def test_openapi_documents_every_ssf_endpoint_with_its_body_and_security(env: Deployment) -> None:
    document = env.client.get("/openapi.json").json()
    for path, method in SSF_OPERATIONS:
        operation = document["paths"][path][method]
        assert ("security" in operation) == (path.startswith("/ssf/") and path != "/ssf/jwks.json"), (path, method)
        if method in ("post", "patch", "put"):
            assert "application/json" in operation["requestBody"]["content"], (path, method)
    assert set(document["paths"]["/ssf/streams"]["post"]["responses"]) >= {"201", "400", "401", "403"}
    assert "204" in document["paths"]["/ssf/verify"]["post"]["responses"]
    refs = {ref.rpartition("/")[2] for ref in _refs(document)}
    assert refs <= set(document["components"]["schemas"]), refs - set(document["components"]["schemas"])


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_ssf_7_2_with_an_issuer_path_the_metadata_and_endpoints_are_served_where_the_metadata_says() -> None:
    app = FastAPI()
    app.include_router(ssf_routes.router("https://example.com/deputy"))
    paths = set(app.openapi()["paths"])
    assert {"/.well-known/ssf-configuration/deputy", "/deputy/ssf/jwks.json", "/deputy/ssf/streams",
            "/deputy/ssf/status", "/deputy/ssf/verify", "/deputy/ssf/poll/{stream_id}"} <= paths
    assert "/ssf/streams" not in paths
