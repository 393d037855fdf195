"""The test OPA against OPA's REST API (`../shared/reference/opa-rest-api.md`, items cited by number).

Real HTTP on loopback (httpx2 and opa-python-client's AsyncOpaClient), real Rego (regopy), bundles written
here with tarfile. Expected messages are OPA's own where its server source fixes them.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx2
import pytest
from opa_client import AsyncOpaClient
from opa_client.errors import RegoParseError

from tests.opa_server import (
    BundleError,
    ExternalOpa,
    PolicyStore,
    RunningOpa,
    opa_for_tests,
    read_bundle,
    running_opa,
)

ROOT = Path(__file__).resolve().parent.parent
DEPUTY_REGO = (ROOT / "policies" / "deputy" / "exchange.rego").read_text()
DEPUTY_DATA = json.loads((ROOT / "policies" / "data.json").read_text())
MAIL_AGENT = "spiffe://example.org/agents/mail"
EXCHANGE = {
    "action": "exchange",
    "subject": {"iss": "https://idp.example.com", "sub": "alice", "scope": [],
                "claims": {"may_act": {"sub": MAIL_AGENT}}},
    "actor": {"id": MAIL_AGENT, "sub": MAIL_AGENT, "kind": "spiffe", "domain": "example.org", "claims": {}},
    "request": {"scope": ["mail.read"], "audience": "https://mail.example.com",
                "audiences": ["https://mail.example.com"], "requested_token_type": None},
    "now": 1_700_000_000,
}
TESTMOD = "package x.y\np = 1\nq = 2"  # OPA server_test.go's "put base/virtual conflict" module


@pytest.fixture(scope="module")
def served() -> Iterator[RunningOpa]:
    with running_opa() as server:
        yield server


@pytest.fixture
def opa(served: RunningOpa) -> RunningOpa:
    """The module's server, emptied and with every fault switched off."""
    served.store = PolicyStore()
    served.delay_s, served.fail_with, served.garbage, served.decision_logs = 0.0, None, False, True
    served.decision_log.clear()
    return served


@pytest.fixture
def http(opa: RunningOpa) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=opa.url, timeout=10) as client:
        yield client


def push(http: httpx2.Client, policy_id: str, text: str) -> None:
    response = http.put(f"/v1/policies/{policy_id}", content=text, headers={"Content-Type": "text/plain"})
    assert response.status_code == 200, response.text


def write_bundle(path: Path, files: Mapping[str, str | bytes]) -> Path:
    """A gzipped tarball, as `opa build` writes one (item 17)."""
    with tarfile.open(path, "w:gz") as archive:
        for name, content in files.items():
            raw = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            archive.addfile(info, io.BytesIO(raw))
    return path


def deputy_bundle(path: Path, *, revision: str = "rev-42", roots: list[str] | None = None) -> Path:
    manifest = {"revision": revision, "roots": roots if roots is not None else ["deputy", "access"]}
    return write_bundle(path, {".manifest": json.dumps(manifest), "deputy/exchange.rego": DEPUTY_REGO,
                               "data.json": json.dumps(DEPUTY_DATA)})


def is_error(response: httpx2.Response, status: int, code: str) -> dict[str, Any]:
    """Item 13: an error is `{"code", "message", "errors"?}` with the status OPA gives it."""
    body: dict[str, Any] = response.json()
    assert (response.status_code, body["code"]) == (status, code), response.text
    assert isinstance(body["message"], str) and body["message"]
    return body


# ---- decisions: the Data API (items 1-7) ------------------------------------------------------------------


def test_rest_data_api_item1_post_input_evaluates_the_data_path(http: httpx2.Client) -> None:
    push(http, "deputy", DEPUTY_REGO)
    assert http.put("/v1/data/access", json=DEPUTY_DATA["access"]).status_code == 204
    body = http.post("/v1/data/deputy/decision", json={"input": EXCHANGE}).json()
    assert body["result"]["allow"] is True and body["result"]["scope"] == ["mail.read"]
    refused = http.post("/v1/data/deputy/decision", json={"input": {**EXCHANGE, "actor": {"sub": "spiffe://x/y"}}})
    assert refused.json()["result"]["allow"] is False


def test_rest_data_api_item3_undefined_document_is_200_without_result(http: httpx2.Client) -> None:
    push(http, "p", "package p\nallow if input.user == \"alice\"\n")
    for path in ("/v1/data/p/allow", "/v1/data/does/not/exist"):
        response = http.post(path, json={"input": {"user": "bob"}})
        assert response.status_code == 200
        assert "result" not in response.json() and set(response.json()) == {"decision_id"}


def test_rest_data_api_item3_empty_package_is_an_empty_object_not_undefined(http: httpx2.Client) -> None:
    push(http, "empty", "package testmod.empty.mod\n")
    push(http, "undef", "package testmod.all.undefined\np := true if false\n")
    assert http.get("/v1/data/testmod/empty/mod").json()["result"] == {}
    assert http.get("/v1/data/testmod/all/undefined").json()["result"] == {}


@pytest.mark.parametrize("body", [b'{"input": @}', b"{bad", b'{"input": {"a": 1}', b"[1, 2]", b'"input"'])
def test_rest_data_api_item3_malformed_input_is_400_invalid_parameter(http: httpx2.Client, body: bytes) -> None:
    response = http.post("/v1/data/p", content=body, headers={"Content-Type": "application/json"})
    error = is_error(response, 400, "invalid_parameter")
    assert error["message"].startswith("body contains malformed input document: ")


def test_rest_data_api_item2_decision_id_is_a_fresh_uuid_per_decision(opa: RunningOpa, http: httpx2.Client) -> None:
    ids = [http.post("/v1/data/any", json={"input": {}}).json()["decision_id"] for _ in range(3)]
    assert len(set(ids)) == 3 and all(uuid.UUID(i).version == 4 for i in ids)
    assert [event["decision_id"] for event in opa.decision_log] == ids  # item 24: the same id in the log


def test_rest_data_api_item2_no_decision_id_without_decision_logging(opa: RunningOpa, http: httpx2.Client) -> None:
    push(http, "p", "package p\nx := 1\n")
    opa.decision_logs = False
    assert http.post("/v1/data/p/x", json={"input": {}}).json() == {"result": 1}
    assert http.post("/v1/data/p/y", json={"input": {}}).json() == {}
    assert not opa.decision_log


@pytest.mark.parametrize(("query", "expected"), [("provenance", True), ("provenance=true", True),
                                                 ("provenance=TRUE", True), ("provenance=True", True),
                                                 ("provenance=false", False), ("provenance=1", False), ("", False)])
def test_rest_data_api_item4_provenance_is_a_boolean_parameter(http: httpx2.Client, query: str, expected: bool) -> None:
    body = http.post(f"/v1/data/p?{query}", json={"input": {}}).json()
    assert ("provenance" in body) is expected
    if expected:  # OPA's ProvenanceV1; `bundles` is left out when none is loaded
        assert set(body["provenance"]) == {"version", "build_commit", "build_timestamp", "build_hostname"}


def test_rest_data_api_item5_get_takes_input_as_a_json_query_parameter(http: httpx2.Client) -> None:
    push(http, "testmod", "package testmod\ngt1 if input.req1 > 1\n")
    assert http.get("/v1/data/testmod/gt1", params={"input": '{"req1": 2}'}).json()["result"] is True
    assert "result" not in http.get("/v1/data/testmod/gt1", params={"input": '{"req1": 0}'}).json()
    for bad in ("", '"foo', '{"foo:1}'):
        error = is_error(http.get("/v1/data/testmod/gt1", params={"input": bad}), 400, "invalid_parameter")
        assert error["message"].startswith("parameter contains malformed input document: ")


def test_rest_data_api_post_without_input_warns_and_sees_no_earlier_input(http: httpx2.Client) -> None:
    push(http, "p", "package p\ndefault seen := false\nseen if input\n")
    assert http.post("/v1/data/p/seen", json={"input": {"a": 1}}).json()["result"] is True
    for body in (b"", b"{}", b'{"input": null}'):  # null decodes to no input in OPA's DataRequestV1
        answer = http.post("/v1/data/p/seen", content=body).json()
        assert answer["result"] is False
        assert answer["warning"] == {"code": "api_usage_warning", "message": "'input' key missing from the request"}


def test_rest_data_api_item6_integer_segments_index_arrays(http: httpx2.Client) -> None:
    assert http.put("/v1/data/a", json={"list": [10, 20, {"k": "v"}], "obj": {"1": "one"}}).status_code == 204
    push(http, "p", 'package p\nrows := [{"id": "r0"}, {"id": "r1"}]\n')
    assert http.get("/v1/data/a/list/1").json()["result"] == 20
    assert http.get("/v1/data/a/list/2/k").json()["result"] == "v"
    assert http.post("/v1/data/p/rows/1/id", json={"input": {}}).json()["result"] == "r1"
    for undefined in ("/v1/data/a/list/3", "/v1/data/a/list/-1", "/v1/data/a/obj/1"):  # data.a.obj[1]: no key 1
        assert "result" not in http.get(undefined).json(), undefined


def test_rest_data_api_escaped_slashes_stay_inside_their_segment(http: httpx2.Client) -> None:
    assert http.put("/v1/data/a%2Fb", json={"c/d": 1}).status_code == 204
    assert http.get("/v1/data/a%2Fb/c%2Fd").json()["result"] == 1
    assert "result" not in http.get("/v1/data/a/b").json()


def test_rest_data_api_root_document_holds_base_and_virtual_documents(http: httpx2.Client) -> None:
    push(http, "test", 'package testmod\np := [1, 2, 3, 4]\nq := {"a": 1, "b": 2}\n')
    assert http.put("/v1/data/x", json=[1, 2, 3, 4]).status_code == 204
    expected = {"testmod": {"p": [1, 2, 3, 4], "q": {"a": 1, "b": 2}}, "x": [1, 2, 3, 4]}
    assert http.get("/v1/data").json()["result"] == expected
    assert http.post("/v1/data", json={"input": {}}).json()["result"] == expected


@pytest.mark.parametrize(("method", "path"), [("HEAD", "/v1/data/p"), ("OPTIONS", "/v1/data"),
                                              ("POST", "/v1/policies"), ("POST", "/v1/policies/p"),
                                              ("PUT", "/health")])
def test_rest_data_api_item6_unsupported_method_is_405(http: httpx2.Client, method: str, path: str) -> None:
    assert http.request(method, path).status_code == 405


def test_rest_errors_item13_evaluation_conflict_is_500_internal_error(http: httpx2.Client) -> None:
    push(http, "test", "package testmod\np := true if true\np := false if true\n")
    error = is_error(http.post("/v1/data/testmod/p", json={"input": {}}), 500, "internal_error")
    assert error["message"] == "error(s) occurred while evaluating query"
    assert error["errors"][0]["code"] == "eval_conflict_error"


def test_rest_data_api_item4_strict_builtin_errors_make_a_builtin_error_fatal(http: httpx2.Client) -> None:
    push(http, "test", "package test\ndefault p := false\np if { x := 1 / 0; x }\n")
    assert http.post("/v1/data/test/p", json={"input": {}}).json()["result"] is False
    error = is_error(http.post("/v1/data/test/p?strict-builtin-errors", json={"input": {}}), 500, "internal_error")
    assert error["errors"][0]["code"] == "eval_builtin_error"


# ---- the Policy API (items 8-10) --------------------------------------------------------------------------


def test_rest_policy_api_item8_put_installs_and_the_policies_are_listed(http: httpx2.Client) -> None:
    response = http.put("/v1/policies/deputy", content=DEPUTY_REGO, headers={"Content-Type": "text/plain"})
    assert (response.status_code, response.json()) == (200, {})
    assert http.get("/v1/policies").json() == {"result": [{"id": "deputy", "raw": DEPUTY_REGO}]}
    assert http.get("/v1/policies/deputy").json() == {"result": {"id": "deputy", "raw": DEPUTY_REGO}}


IF_REQUIRED = "`if` keyword is required before rule body"
CONTAINS_REQUIRED = "`contains` keyword is required for partial set rules"
V0_MODULES = {
    "complete rule": ("package p\nallow { true }\n", [IF_REQUIRED]),
    "partial set": ('package p\ndeny[msg] {\n  msg := "no"\n}\n', [IF_REQUIRED, CONTAINS_REQUIRED]),
    "function": ("package p\nf(x) { x > 1 }\n", [IF_REQUIRED]),
    "value and body": ("package p\nx = 5 { true }\n", [IF_REQUIRED]),
    "else body": ("package p\nx := 1 if { input.a } else { true }\n", [IF_REQUIRED]),
}


@pytest.mark.parametrize("case", V0_MODULES)
def test_rest_policy_api_item8_v0_rule_heads_are_refused_as_opa_v1_does(http: httpx2.Client, case: str) -> None:
    text, messages = V0_MODULES[case]
    response = http.put("/v1/policies/v0", content=text)
    error = is_error(response, 400, "invalid_parameter")
    assert error["message"] == "error(s) occurred while compiling module(s)"
    assert [(e["code"], e["message"]) for e in error["errors"]] == [("rego_parse_error", m) for m in messages]
    assert all(e["location"]["file"] == "v0" and e["location"]["row"] >= 2 for e in error["errors"])
    assert http.get("/v1/policies/v0").status_code == 404  # nothing installed


V1_MODULES = {
    "import rego.v1": ("package p\nimport rego.v1\nv if true\n", "v", True),
    "contains": ('package p\nv contains x if { some x in ["a", "b"] }\n', "v", ["a", "b"]),
    "object value": ('package p\nv := {"a": {"b": 1}}\n', "v", {"a": {"b": 1}}),
    "set union": ("package p\nv := {1} | {2}\n", "v", [1, 2]),
    "comprehension": ("package p\nv := [x |\n  some x in [1, 2]\n  x > 1\n]\n", "v", [2]),
    "else chain": ("package p\nv := 1 if { false } else := 2 if { false } else := 3\n", "v", 3),
    "multi-line body": ("package p\nv if {\n  # a comment with { braces }\n  input.a == `raw {`\n}\n", "v", True),
    "default and ref head": ('package p\ndefault v := false\nq["a b"] := 1\nv if q["a b"] == 1\n', "v", True),
}


@pytest.mark.parametrize("case", V1_MODULES)
def test_rest_policy_api_item8_v1_modules_are_accepted_and_evaluate(http: httpx2.Client, case: str) -> None:
    text, rule, expected = V1_MODULES[case]
    push(http, "p", text)
    assert http.post(f"/v1/data/p/{rule}", json={"input": {"a": "raw {"}}).json()["result"] == expected


@pytest.mark.parametrize("text", ["package a.b.c\n\np ;- true\n", "package p\nallow if {{{\n", "allow := 1\n"])
def test_rest_policy_api_item8_syntax_errors_are_400_located_in_the_module(http: httpx2.Client, text: str) -> None:
    error = is_error(http.put("/v1/policies/test", content=text), 400, "invalid_parameter")
    assert error["errors"] and all(e["code"] == "rego_parse_error" for e in error["errors"])
    assert error["errors"][0]["location"]["file"] == "test"


def test_rest_policy_api_item8_empty_module_is_400(http: httpx2.Client) -> None:
    for text in ("", "\n# only a comment\n"):
        assert is_error(http.put("/v1/policies/e", content=text), 400, "invalid_parameter")["message"] == "empty module"


def test_rest_policy_api_item10_absent_policy_is_404_resource_not_found(http: httpx2.Client) -> None:
    for response in (http.get("/v1/policies/nope"), http.delete("/v1/policies/nope")):
        assert is_error(response, 404, "resource_not_found")["message"] == 'storage_not_found_error: policy id "nope"'


def test_rest_policy_api_item10_delete_uninstalls_the_module(http: httpx2.Client) -> None:
    push(http, "p", "package p\nx := 1\n")
    assert http.post("/v1/data/p/x", json={"input": {}}).json()["result"] == 1
    response = http.delete("/v1/policies/p")
    assert (response.status_code, response.json()) == (200, {})
    assert "result" not in http.post("/v1/data/p/x", json={"input": {}}).json()


def test_rest_policy_api_item8_replacing_a_module_changes_the_next_decision(opa: RunningOpa, http: httpx2.Client
                                                                             ) -> None:
    push(http, "p", "package p\nx := 1\n")
    assert http.post("/v1/data/p/x", json={"input": {}}).json()["result"] == 1
    push(http, "p", "package p\nx := 2\n")
    assert http.post("/v1/data/p/x", json={"input": {}}).json()["result"] == 2


# ---- the Data API's writes (items 11-12) ------------------------------------------------------------------


def test_rest_data_api_item11_put_creates_parents_and_the_policy_sees_it(http: httpx2.Client) -> None:
    push(http, "p", "package p\nx := data.a.b.c\n")
    assert http.put("/v1/data/a/b/c", json=1).status_code == 204
    assert http.get("/v1/data/a").json()["result"] == {"b": {"c": 1}}
    assert http.post("/v1/data/p/x", json={"input": {}}).json()["result"] == 1
    assert http.put("/v1/data/a/b/c", json=2).status_code == 204
    assert http.post("/v1/data/p/x", json={"input": {}}).json()["result"] == 2


def test_rest_data_api_item11_if_none_match_star_is_304_when_the_document_exists(http: httpx2.Client) -> None:
    assert http.put("/v1/data/a/b/c", json=0, headers={"If-None-Match": "*"}).status_code == 204
    assert http.put("/v1/data/a/b/c", json=1, headers={"If-None-Match": "*"}).status_code == 304
    assert http.get("/v1/data/a/b/c").json()["result"] == 0


def test_rest_data_api_item11_writing_through_a_non_object_is_404_resource_conflict(http: httpx2.Client) -> None:
    assert http.put("/v1/data/a/b", json=[1, 2, 3, 4]).status_code == 204
    error = is_error(http.put("/v1/data/a/b/c/d", json=0), 404, "resource_conflict")
    assert error["message"] == "storage_write_conflict_error: /a/b"


def test_rest_data_api_item11_base_data_on_a_rule_path_is_400(http: httpx2.Client) -> None:
    push(http, "testmod", TESTMOD)
    error = is_error(http.put("/v1/data/x", json={"y": {"p": "xxx"}}), 400, "invalid_parameter")
    assert error["message"] == ("1 error occurred: testmod:2: rego_compile_error: conflicting rule for data path "
                                "x/y/p found")
    for path, value in (("x/y", {"p": "xxx"}), ("x/y/p", "xxx"), ("x/y/p/a", 1)):
        assert http.put(f"/v1/data/{path}", json=value).status_code == 400, path
    assert http.delete("/v1/policies/testmod").status_code == 200
    assert http.put("/v1/data/x/y/p/a", json=1).status_code == 204
    error = is_error(http.put("/v1/policies/testmod", content=TESTMOD), 400, "invalid_parameter")
    assert error["errors"] == [{"code": "rego_compile_error", "message": "conflicting rule for data path x/y/p found",
                                "location": {"file": "testmod", "row": 2, "col": 1}}]


def test_rest_data_api_item11_malformed_json_is_400(http: httpx2.Client) -> None:
    is_error(http.put("/v1/data/a", content=b"{nope"), 400, "invalid_parameter")


def test_rest_data_api_item12_patch_applies_json_patch_all_or_nothing(http: httpx2.Client) -> None:
    patch = {"Content-Type": "application/json-patch+json"}
    ops = [{"op": "add", "path": "/", "value": {"y": [{"z": [1, 2, 3]}, {"z": [4, 5, 6]}]}}]
    assert http.patch("/v1/data/x", json=ops, headers=patch).status_code == 204
    assert http.patch("/v1/data/x/y/1", json=[{"op": "add", "path": "/z/1", "value": 100}], headers=patch
                      ).status_code == 204
    assert http.get("/v1/data/x/y/1/z").json()["result"] == [4, 100, 5, 6]  # OPA's "insert array" case
    aborted = [{"op": "add", "path": "/foo", "value": "hello"}, {"op": "add", "path": "/foo/bad", "value": 1}]
    is_error(http.patch("/v1/data", json=aborted, headers=patch), 404, "resource_not_found")
    assert "foo" not in http.get("/v1/data").json()["result"]
    is_error(http.patch("/v1/data", json=[{"op": "move", "path": "/a"}], headers=patch), 400, "invalid_parameter")
    is_error(http.patch("/v1/data", json=[{"op": "remove", "path": "/"}], headers=patch), 400, "invalid_parameter")


def test_rest_data_api_item12_delete_is_204_then_404(http: httpx2.Client) -> None:
    assert is_error(http.delete("/v1/data/a/b"), 404, "resource_not_found")["message"] == (
        "storage_not_found_error: /a/b: document does not exist")
    assert http.put("/v1/data/a/b/c/d", json=1).status_code == 204
    assert http.delete("/v1/data/a/b").status_code == 204
    assert "result" not in http.get("/v1/data/a/b/c/d").json()
    assert http.get("/v1/data/a").json()["result"] == {}


def test_rest_health_item15_is_200_with_an_empty_object(http: httpx2.Client) -> None:
    for query in ("", "?bundles", "?plugins"):
        response = http.get(f"/health{query}")
        assert (response.status_code, response.json()) == (200, {})


# ---- bundles (items 9, 17-19) -----------------------------------------------------------------------------


def test_bundles_item17_18_serve_modules_data_and_the_manifest_revision(tmp_path: Path) -> None:
    file = deputy_bundle(tmp_path / "bundle.tar.gz", revision="rev-42")
    with running_opa(bundle=file) as server, httpx2.Client(base_url=server.url) as http:
        body = http.post("/v1/data/deputy/decision?provenance=true", json={"input": EXCHANGE}).json()
        assert body["result"]["allow"] is True
        assert body["provenance"]["bundles"] == {str(file): {"revision": "rev-42"}}
        assert server.decision_log[-1]["bundles"] == {str(file): {"revision": "rev-42"}}  # item 24
        assert http.get("/v1/data/access/ttl").json()["result"] == DEPUTY_DATA["access"]["ttl"]
        manifest = http.get(f"/v1/data/system/bundles/{str(file).replace('/', '%2F')}/manifest").json()["result"]
        assert manifest == {"revision": "rev-42", "roots": ["deputy", "access"]}
        assert [p["id"] for p in http.get("/v1/policies").json()["result"]] == [f"{file}/deputy/exchange.rego"]


def test_bundles_item17_data_json_lands_at_its_directory_path(tmp_path: Path) -> None:
    file = write_bundle(tmp_path / "b.tar.gz", {"roles/bindings/data.json": '{"alice": ["admin"]}',
                                                "data.json": '{"top": 1}', "roles/other.json": '{"ignored": 1}',
                                                ".manifest": '{"revision": "r", "roots": ["roles", "top"]}'})
    bundle = read_bundle(file)
    assert bundle.data == {"roles": {"bindings": {"alice": ["admin"]}}, "top": 1}


OWNED_WRITES = [
    ("PUT", "/v1/data/access/ttl", "1", 'path access/ttl is owned by bundle "{name}"'),
    ("DELETE", "/v1/data/access", None, 'path access is owned by bundle "{name}"'),
    ("PUT", "/v1/data", "{}", "can't write to document root with bundle roots configured"),
    ("PUT", "/v1/policies/extra", "package deputy.extra\nx := 1\n", 'path deputy/extra is owned by bundle "{name}"'),
    ("DELETE", "/v1/policies/{name}/deputy/exchange.rego", None, 'path deputy is owned by bundle "{name}"'),
]


@pytest.mark.parametrize(("method", "path", "body", "message"), OWNED_WRITES)
def test_bundles_item9_rest_writes_under_a_bundle_root_are_refused(tmp_path: Path, method: str, path: str,
                                                                   body: str | None, message: str) -> None:
    file = deputy_bundle(tmp_path / "bundle.tar.gz")
    with running_opa(bundle=file) as server, httpx2.Client(base_url=server.url) as http:
        response = http.request(method, path.format(name=str(file).replace("/", "%2F")), content=body)
        assert is_error(response, 400, "invalid_parameter")["message"] == message.format(name=file)
        assert http.post("/v1/data/deputy/decision", json={"input": EXCHANGE}).json()["result"]["allow"] is True
        assert http.put("/v1/data/elsewhere/x", json=1).status_code == 204  # outside the roots


def test_bundles_item18_no_roots_means_the_bundle_owns_everything(tmp_path: Path) -> None:
    file = write_bundle(tmp_path / "all.tar.gz", {"p/policy.rego": "package p\nx := 1\n"})
    with running_opa(bundle=file) as server, httpx2.Client(base_url=server.url) as http:
        error = is_error(http.put("/v1/data/anything", json=1), 400, "invalid_parameter")
        assert error["message"] == f'all paths owned by bundle "{file}"'
        assert "revision" not in http.get("/v1/data/system/bundles").json()["result"][str(file)]["manifest"]


def test_bundles_item18_rego_version_0_allows_v0_syntax(tmp_path: Path) -> None:
    files = {".manifest": '{"rego_version": 0, "roots": ["legacy"]}', "legacy.rego": "package legacy\nallow { true }\n"}
    with running_opa(bundle=write_bundle(tmp_path / "v0.tar.gz", files)) as server, httpx2.Client(base_url=server.url
                                                                                                   ) as http:
        assert http.post("/v1/data/legacy/allow", json={"input": {}}).json()["result"] is True
    files[".manifest"] = '{"roots": ["legacy"]}'  # v1 by default
    with pytest.raises(BundleError, match="`if` keyword is required before rule body"):
        read_bundle(write_bundle(tmp_path / "v1.tar.gz", files))


BAD_BUNDLES = {
    "package outside roots": ({".manifest": '{"roots": ["deputy"]}', "x.rego": "package other\nx := 1\n"},
                              "manifest roots [deputy] do not permit 'package other' in module '/x.rego'"),
    "data outside roots": ({".manifest": '{"roots": ["deputy"]}', "access/data.json": "{}"},
                           "manifest roots [deputy] do not permit data at path '/access'"),
    "overlapping roots": ({".manifest": '{"roots": ["a", "a/b"]}'}, "manifest has overlapped roots: 'a' and 'a/b'"),
    "signed without keys": ({".signatures.json": '{"signatures": []}', "p.rego": "package p\n"},
                            "verification key not provided"),
    "delta bundle": ({"patch.json": '{"data": []}'}, "delta bundles"),
    "rule on bundle data": ({"p.rego": "package p\nx := 1\n", "p/data.json": '{"x": 2}'},
                            "conflicting rule for data path p/x found"),
    "not JSON": ({"data.json": "{nope"}, "bundle load failed on /data.json"),
}


@pytest.mark.parametrize("case", BAD_BUNDLES)
def test_bundles_item19_bundles_opa_refuses_to_activate(tmp_path: Path, case: str) -> None:
    files, message = BAD_BUNDLES[case]
    with pytest.raises(BundleError) as caught, running_opa(bundle=write_bundle(tmp_path / "bad.tar.gz", files)):
        pass
    assert message in str(caught.value)


def test_bundles_a_file_that_is_not_a_gzipped_tarball_is_refused(tmp_path: Path) -> None:
    (tmp_path / "b.tar.gz").write_text("plain text")
    with pytest.raises(BundleError, match="not a gzipped tarball"):
        read_bundle(tmp_path / "b.tar.gz")


# ---- opa-python-client, as Deputy's engine calls it (items 34-36, 40) -------------------------------------


def client_for(server: RunningOpa) -> AsyncOpaClient:
    port = int(server.url.rsplit(":", 1)[1])
    return AsyncOpaClient(host="127.0.0.1", port=port, timeout=5, retries=0)


async def test_opa_client_item36_pushes_and_item34_queries_with_provenance(tmp_path: Path) -> None:
    with running_opa(bundle=write_bundle(tmp_path / "b.tar.gz", {".manifest": '{"revision": "r7", "roots": ["x"]}'})
                     ) as server:
        async with client_for(server) as client:
            assert await client.check_health() is True
            assert await client.update_policy_from_string(DEPUTY_REGO, "deputy", rego_compat=False) is True
            assert await client.update_or_create_data(DEPUTY_DATA["access"], "access") is True
            body = await client.query_rule(EXCHANGE, "deputy", "decision", query_params={"provenance": True})
    assert body["result"]["allow"] is True and uuid.UUID(body["decision_id"])
    assert body["provenance"]["bundles"] == {str(tmp_path / "b.tar.gz"): {"revision": "r7"}}


async def test_opa_client_item34_undefined_decision_comes_back_as_an_empty_dict() -> None:
    with running_opa(decision_logs=False) as server:
        async with client_for(server) as client:
            assert await client.query_rule(EXCHANGE, "deputy", "decision") == {}


async def test_opa_client_item36_v0_syntax_without_rego_compat_raises_rego_parse_error(opa: RunningOpa) -> None:
    async with client_for(opa) as client:
        with pytest.raises(RegoParseError):
            await client.update_policy_from_string("package deputy\nallow { true }\n", "v0", rego_compat=False)
    assert opa.store.policies() == []  # never silently rewritten and installed


async def test_opa_client_item35_health_is_false_when_opa_is_down() -> None:
    with running_opa() as server:
        pass
    async with client_for(server) as client:
        assert await client.check_health() is False


# ---- fault injection --------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503])
def test_fault_fail_with_answers_decisions_with_that_status_and_an_opa_error(opa: RunningOpa, http: httpx2.Client,
                                                                             status: int) -> None:
    opa.fail_with = status
    is_error(http.post("/v1/data/deputy/decision", json={"input": EXCHANGE}), status, "internal_error")
    assert http.get("/health").status_code == 200  # decisions only


def test_fault_garbage_answers_200_with_a_body_that_is_not_json(opa: RunningOpa, http: httpx2.Client) -> None:
    opa.garbage = True
    response = http.post("/v1/data/deputy/decision", json={"input": EXCHANGE})
    assert response.status_code == 200
    with pytest.raises(ValueError):
        json.loads(response.content)


def test_fault_delay_s_answers_decisions_late(opa: RunningOpa, http: httpx2.Client) -> None:
    opa.delay_s = 0.3
    started = time.monotonic()
    assert http.post("/v1/data/p", json={"input": {}}).status_code == 200
    assert time.monotonic() - started >= 0.3
    with pytest.raises(httpx2.TimeoutException):
        http.post("/v1/data/p", json={"input": {}}, timeout=0.05)


def test_fault_undefined_and_malformed_decisions_come_from_the_policy(http: httpx2.Client) -> None:
    push(http, "deputy", 'package deputy\ndecision := "true" if input.malformed\n')
    assert "result" not in http.post("/v1/data/deputy/decision", json={"input": {}}).json()
    assert http.post("/v1/data/deputy/decision", json={"input": {"malformed": 1}}).json()["result"] == "true"


def test_fault_down_refuses_connections_until_started_again() -> None:
    with running_opa() as server:
        server.store.put_data(("a",), 1)
        server.stop()
        with pytest.raises(httpx2.ConnectError):
            httpx2.post(f"{server.url}/v1/data/a", json={"input": {}}, timeout=2)
        server.start()
        assert httpx2.post(f"{server.url}/v1/data/a", json={"input": {}}).json()["result"] == 1


def test_fault_stop_is_prompt_while_a_delayed_decision_is_in_flight() -> None:
    with running_opa() as server:
        server.delay_s = 30
        with pytest.raises(httpx2.TimeoutException):
            httpx2.post(f"{server.url}/v1/data/p", json={"input": {}}, timeout=0.2)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 5


# ---- speed: compiled once per change ----------------------------------------------------------------------


def test_decisions_compile_once_per_change_of_policies_or_data(opa: RunningOpa, http: httpx2.Client) -> None:
    push(http, "deputy", DEPUTY_REGO)
    assert http.put("/v1/data/access", json=DEPUTY_DATA["access"]).status_code == 204
    for _ in range(20):
        http.post("/v1/data/deputy/decision", json={"input": EXCHANGE})
    assert opa.store.compilations == 1
    assert http.put("/v1/data/access/ttl", json=60).status_code == 204
    assert http.post("/v1/data/deputy/decision", json={"input": EXCHANGE}).json()["result"]["ttl"] == 60
    assert opa.store.compilations == 2


# ---- runners ----------------------------------------------------------------------------------------------


def test_process_runner_prints_its_url_when_ready_and_stops_on_sigterm(tmp_path: Path) -> None:
    bundle = deputy_bundle(tmp_path / "bundle.tar.gz")
    command = [sys.executable, "-m", "tests.opa_server", "--addr", "127.0.0.1:0", "--bundle", str(bundle)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), process.stderr.read() if process.stderr else ""
        body = httpx2.post(f"{url}/v1/data/deputy/decision?provenance", json={"input": EXCHANGE}).json()
        assert body["result"]["allow"] is True and body["provenance"]["bundles"][str(bundle)]["revision"] == "rev-42"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        process.kill()
        process.wait()


def test_process_runner_refuses_a_bad_bundle_and_a_non_loopback_address(tmp_path: Path) -> None:
    bad = write_bundle(tmp_path / "bad.tar.gz", {".manifest": '{"roots": ["a", "a/b"]}'})
    for arguments in (["--bundle", str(bad)], ["--addr", "0.0.0.0:0"]):
        done = subprocess.run([sys.executable, "-m", "tests.opa_server", "--addr", "127.0.0.1:0", *arguments],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and done.stderr.startswith("error: "), done.stderr


def test_opa_for_tests_names_a_real_opa_when_deputy_test_opa_url_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPUTY_TEST_OPA_URL", "http://127.0.0.1:8181/")
    with opa_for_tests() as found:
        assert found == ExternalOpa("http://127.0.0.1:8181")
    monkeypatch.delenv("DEPUTY_TEST_OPA_URL")
    with opa_for_tests() as found:
        assert isinstance(found, RunningOpa) and httpx2.get(f"{found.url}/health").status_code == 200


@pytest.mark.skipif(not os.environ.get("DEPUTY_TEST_OPA_URL"), reason="DEPUTY_TEST_OPA_URL names no real OPA")
def test_a_real_opa_answers_like_the_test_opa() -> None:
    """With DEPUTY_TEST_OPA_URL set, the basics above hold against the real server too."""
    url = os.environ["DEPUTY_TEST_OPA_URL"].rstrip("/")
    with httpx2.Client(base_url=url) as http:
        module_id = f"deputy-test-{uuid.uuid4().hex[:8]}"
        push(http, module_id, "package deputytest\nx := input.a\n")
        try:
            assert http.post("/v1/data/deputytest/x", json={"input": {"a": 1}}).json()["result"] == 1
            assert "result" not in http.post("/v1/data/deputytest/nope", json={"input": {}}).json()
            assert http.put(f"/v1/policies/{module_id}v0", content="package v0\nallow { true }\n").status_code == 400
        finally:
            http.delete(f"/v1/policies/{module_id}")
