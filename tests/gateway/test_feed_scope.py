"""The revocation feed tells each resource server only about its own tokens (issue 7, item 6), as
introspection does (RFC 7662 §2.2: a caller learns nothing of other audiences).

Two resources with different `clients` (DOCS: its server and one that serves both; PHOTOS: its server
and the same one). Over real HTTP, /revocations and /revocations/stream give a reader, per event, only the
jtis of tokens for its resources and the ids of tasks that include one of them; an event with nothing
for it is not sent, and `next` still moves past it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import jwt
import pytest

from tests.conftest import MAIL_AGENT, POLICY_DATA, Deployment, deployed
from tests.gateway.ssf_env import DOCS, PHOTOS, RS_BOTH, RS_DOCS, RS_PHOTOS, SCOPE, resources
from tests.support import ACCESS_TOKEN, GRANT, JWT, feed_head

TXN = "urn:ietf:params:oauth:token-type:txn_token"
RESOURCES = resources()  # the SSF tests' two resources: DOCS and PHOTOS, each with its server and RS_BOTH


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    data = json.loads(json.dumps(POLICY_DATA))
    next(iter(data.values()))["grants"][MAIL_AGENT].update({DOCS: ["docs.read"], PHOTOS: ["photos.read"]})
    with deployed(tmp_path_factory.mktemp("feed-scope"), extra=RESOURCES,
                  policy_files={"data.json": json.dumps(data)}) as deployment:
        yield deployment


def as_rs(env: Deployment, spiffe_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {env.svid(sub=spiffe_id)}"}


def exchange(env: Deployment, **form: str) -> dict[str, Any]:
    response = env.client.post("/token", data={"grant_type": GRANT, "actor_token": env.svid(),
                                               "actor_token_type": JWT, **form})
    assert response.status_code == 200, response.text
    return dict(response.json())


def one_shot(env: Deployment, resource: str) -> str:
    user = env.user_token(scope="docs.read photos.read")
    body = exchange(env, subject_token=user, subject_token_type=ACCESS_TOKEN, resource=resource,
                    scope=SCOPE[resource])
    return str(body["access_token"])


def jti_of(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


def revoke(env: Deployment, token: str) -> None:
    assert env.client.post("/revoke", data={"token": token}, headers=as_rs(env, MAIL_AGENT)).status_code == 200


def page(env: Deployment, reader: str, since: int, limit: int = 500) -> dict[str, Any]:
    response = env.client.get("/revocations", params={"since": since, "limit": limit}, headers=as_rs(env, reader))
    assert response.status_code == 200, response.text
    return dict(response.json())


def head(env: Deployment, reader: str) -> int:
    return feed_head(env.client, env.svid(sub=reader))


def told(env: Deployment, reader: str, since: int) -> list[dict[str, Any]]:
    return list(page(env, reader, since)["events"])


def introspect(env: Deployment, reader: str, token: str) -> dict[str, Any]:
    return dict(env.client.post("/introspect", data={"token": token}, headers=as_rs(env, reader)).json())


def test_rfc7662_2_2_the_feed_tells_a_resource_server_only_of_tokens_for_its_resources(env: Deployment) -> None:
    since = {reader: head(env, reader) for reader in (RS_DOCS, RS_PHOTOS, RS_BOTH)}
    token = one_shot(env, PHOTOS)
    assert introspect(env, RS_PHOTOS, token)["active"] is True
    assert introspect(env, RS_DOCS, token) == {"active": False}  # introspection already hid it...
    revoke(env, token)
    assert told(env, RS_DOCS, since[RS_DOCS]) == []  # ...and now the feed does too
    for reader in (RS_PHOTOS, RS_BOTH):
        events = told(env, reader, since[reader])
        assert [e["jtis"] for e in events] == [[jti_of(token)]], events
        assert set(events[0]) == {"seq", "at", "reason", "task_ids", "jtis"}


def test_a_task_is_named_to_each_of_its_resources_servers_and_a_token_only_to_its_own(env: Deployment) -> None:
    since = {reader: head(env, reader) for reader in (RS_DOCS, RS_PHOTOS, RS_BOTH)}
    task = exchange(env, subject_token=env.user_token(scope="docs.read photos.read"), subject_token_type=ACCESS_TOKEN,
                    requested_token_type=TXN, audience=[DOCS, PHOTOS], scope="docs.read photos.read")
    docs_token = exchange(env, subject_token=task["access_token"], subject_token_type=TXN, resource=DOCS,
                          scope="docs.read")["access_token"]
    done = env.client.post(f"/tasks/{task['task_id']}/complete", headers=as_rs(env, MAIL_AGENT))
    assert done.status_code == 200, done.text
    expected = {RS_DOCS: [jti_of(docs_token)], RS_PHOTOS: [], RS_BOTH: [jti_of(docs_token)]}
    for reader, jtis in expected.items():
        events = told(env, reader, since[reader])
        assert [(e["task_ids"], e["jtis"]) for e in events] == [([task["task_id"]], jtis)], (reader, events)


def test_feed_cursors_move_past_events_a_reader_is_not_told_about(env: Deployment) -> None:
    start = head(env, RS_DOCS)
    revoke(env, one_shot(env, PHOTOS))
    skipped = page(env, RS_DOCS, start)
    assert skipped["events"] == [] and skipped["next"] > start  # the photos event is passed, not told
    assert page(env, RS_DOCS, skipped["next"])["next"] == skipped["next"]
    docs_token = one_shot(env, DOCS)
    revoke(env, one_shot(env, PHOTOS))
    revoke(env, docs_token)
    revoke(env, one_shot(env, PHOTOS))
    seen, cursor = [], start
    for _ in range(10):  # one event a page: a reader that looped would never get to the end
        body = page(env, RS_DOCS, cursor, limit=1)
        seen += [j for e in body["events"] for j in e["jtis"]]
        if len(body["events"]) < 1:
            break
        cursor = body["next"]
    assert seen == [jti_of(docs_token)]
    assert body["next"] == head(env, RS_PHOTOS)  # at the end, the cursor is at the head of the whole feed


def test_the_stream_sends_a_reader_only_events_about_its_resources(env: Deployment) -> None:
    since = head(env, RS_BOTH)
    photos_token, docs_token = one_shot(env, PHOTOS), one_shot(env, DOCS)
    with httpx2.Client(base_url=env.url, timeout=10) as client, \
            client.stream("GET", "/revocations/stream", params={"since": since},
                          headers=as_rs(env, RS_DOCS)) as stream:
        lines = stream.iter_lines()
        assert next(lines) == ": deputy revocation feed"
        revoke(env, photos_token)
        revoke(env, docs_token)
        first = json.loads(next(line for line in lines if line.startswith("data:")).removeprefix("data:"))
    assert first["jtis"] == [jti_of(docs_token)]  # the photos event, committed first, was not sent
