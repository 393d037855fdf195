"""RFC 8935 push delivery to a real receiver on loopback: the request's headers and body, 202 (taken), 503
(retried with backoff, the SET still queued), 400 (refused: dropped), a paused stream held and delivered
once enabled, a disabled one dropped; and SSF §8.1.1's inactivity timeout."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Deployment
from tests.gateway.ssf_env import (
    DOCS,
    PHOTOS,
    PUSH,
    RS_DOCS,
    RS_PHOTOS,
    SESSION_REVOKED,
    VERIFICATION,
    Receiver,
    checked_set,
    claims_of,
    one_shot,
    queued,
    revoke,
    ssf_deployment,
)
from tests.support import until


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class SetReceiver:
    """An RFC 8935 receiver on loopback: records each push and answers with `answers` in turn (then 202)."""

    answers: list[tuple[int, dict[str, Any] | None]] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                owner.received.append(Received({k.lower(): v for k, v in self.headers.items()}, body,
                                               time.monotonic()))
                status, error = owner.answers.pop(0) if owner.answers else (202, None)
                payload = json.dumps(error).encode() if error else b""
                self.send_response(status)
                if error:
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Language", "en-US")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ssf/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def tokens(self) -> list[str]:
        return [r.body.decode() for r in self.received]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with ssf_deployment(tmp_path_factory.mktemp("ssf-push")) as deployment:
        yield deployment


@pytest.fixture
def receiver() -> Iterator[SetReceiver]:
    running = SetReceiver()
    yield running
    running.close()


def push_stream(env: Deployment, receiver: SetReceiver, **delivery: Any) -> str:
    """A docs push stream to `receiver`, its backlog delivered and forgotten."""
    rs = Receiver(env, RS_DOCS)
    stream_id = str(rs.create(delivery={"method": PUSH, "endpoint_url": receiver.url, **delivery})["stream_id"])
    until(lambda: caught_up(env, stream_id))
    receiver.received.clear()
    return stream_id


def exists(env: Deployment, stream_id: str) -> bool:
    with sqlite3.connect(env.state_dir / "deputy.db") as db:
        return db.execute("SELECT 1 FROM ssf_streams WHERE id = ?", (stream_id,)).fetchone() is not None


def caught_up(env: Deployment, stream_id: str) -> bool:
    """The stream's SETs are made up to the feed's head, and none is left to push."""
    with sqlite3.connect(env.state_dir / "deputy.db") as db:
        head = db.execute("SELECT coalesce(max(seq), 0) FROM revocations").fetchone()[0]
        cursor = db.execute("SELECT cursor FROM ssf_streams WHERE id = ?", (stream_id,)).fetchone()[0]
    return bool(cursor == head) and queued(env, stream_id) == 0


def test_rfc8935_2_1_a_set_is_posted_with_its_media_type_and_the_streams_authorization(
        env: Deployment, receiver: SetReceiver) -> None:
    stream_id = push_stream(env, receiver, authorization_header="Bearer receiver-secret")
    token = one_shot(env, DOCS)
    revoke(env, token)
    until(lambda: len(receiver.received) == 1)
    [push] = receiver.received
    assert push.headers["content-type"] == "application/secevent+jwt"
    assert push.headers["accept"] == "application/json"
    assert push.headers["authorization"] == "Bearer receiver-secret"  # SSF §6.1.1
    claims = checked_set(env, push.body.decode(), jti=claims_of(push.body.decode())["jti"], audience=DOCS)
    assert claims["sub_id"] == {"format": "jwt_id", "iss": env.issuer, "jti": claims_of(token)["jti"]}
    until(lambda: queued(env, stream_id) == 0)  # §2.2: 202, taken: gone from the queue
    time.sleep(0.3)
    assert len(receiver.received) == 1  # and never sent again


def test_rfc8935_a_failed_push_is_retried_with_backoff_and_the_set_stays_queued(
        env: Deployment, receiver: SetReceiver) -> None:
    stream_id = push_stream(env, receiver)
    receiver.answers = [(503, None), (503, None)]
    revoke(env, one_shot(env, DOCS))
    until(lambda: len(receiver.received) == 1)
    assert queued(env, stream_id) == 1
    until(lambda: len(receiver.received) == 3)  # after 1 s, then 2 s
    first, second, third = receiver.received
    assert first.body == second.body == third.body
    assert second.at - first.at >= 0.9 and third.at - second.at >= 1.8  # doubling
    until(lambda: queued(env, stream_id) == 0)  # the third answer was 202


def test_rfc8935_2_3_a_refused_set_is_dropped_and_the_next_one_delivered(env: Deployment,
                                                                        receiver: SetReceiver) -> None:
    stream_id = push_stream(env, receiver)
    receiver.answers = [(400, {"err": "invalid_audience", "description": "not ours"})]
    revoke(env, one_shot(env, DOCS))
    until(lambda: len(receiver.received) == 1 and queued(env, stream_id) == 0)
    second = one_shot(env, DOCS)
    revoke(env, second)
    until(lambda: len(receiver.received) == 2)
    assert claims_of(receiver.tokens()[1])["sub_id"]["jti"] == claims_of(second)["jti"]
    time.sleep(0.3)
    assert len(receiver.received) == 2  # the refused SET was not sent again
    assert "invalid_audience" in env.log()


def test_ssf_8_1_2_1_a_paused_push_stream_holds_and_delivers_once_enabled(env: Deployment,
                                                                         receiver: SetReceiver) -> None:
    stream_id = push_stream(env, receiver)
    rs = Receiver(env, RS_DOCS)
    rs.request("POST", "/ssf/status", json={"stream_id": stream_id, "status": "paused"})
    token = one_shot(env, DOCS)
    revoke(env, token)
    time.sleep(0.5)
    assert receiver.received == []
    rs.request("POST", "/ssf/status", json={"stream_id": stream_id, "status": "enabled"})
    until(lambda: len(receiver.received) == 1)
    assert claims_of(receiver.tokens()[0])["sub_id"]["jti"] == claims_of(token)["jti"]


def test_ssf_8_1_2_1_a_disabled_push_stream_sends_nothing_and_holds_nothing(env: Deployment,
                                                                           receiver: SetReceiver) -> None:
    stream_id = push_stream(env, receiver)
    rs = Receiver(env, RS_DOCS)
    rs.request("POST", "/ssf/status", json={"stream_id": stream_id, "status": "disabled"})
    revoke(env, one_shot(env, DOCS))
    time.sleep(0.5)
    rs.request("POST", "/ssf/status", json={"stream_id": stream_id, "status": "enabled"})
    later = one_shot(env, DOCS)
    revoke(env, later)
    until(lambda: len(receiver.received) == 1)
    time.sleep(0.3)
    assert [claims_of(t)["sub_id"]["jti"] for t in receiver.tokens()] == [claims_of(later)["jti"]]


def test_ssf_8_1_1_a_stream_nobody_touches_for_the_inactivity_timeout_is_deleted(tmp_path: Path) -> None:
    with ssf_deployment(tmp_path, ssf="inactivity_timeout = 2") as env:
        rs = Receiver(env, RS_DOCS)
        kept, left = rs.create()["stream_id"], rs.create()["stream_id"]
        for _ in range(6):  # polls touch `kept` every half second
            assert rs.poll(kept, returnImmediately=True).status_code == 200
            time.sleep(0.5)
        until(lambda: not exists(env, left), timeout=6)  # asked through the API, it would be touched
        assert rs.request("GET", "/ssf/streams", params={"stream_id": kept}).status_code == 200
        assert rs.request("GET", "/ssf/streams", params={"stream_id": left}).status_code == 404
        assert rs.create()["inactivity_timeout"] == 2


def test_ssf_8_1_4_a_paused_push_stream_is_still_pushed_its_verification(env: Deployment,
                                                                         receiver: SetReceiver) -> None:
    stream_id = push_stream(env, receiver)
    rs = Receiver(env, RS_DOCS)
    rs.request("POST", "/ssf/status", json={"stream_id": stream_id, "status": "paused"})
    revoke(env, one_shot(env, DOCS))  # held
    assert rs.request("POST", "/ssf/verify", json={"stream_id": stream_id, "state": "xyz"}).status_code == 204
    until(lambda: len(receiver.received) == 1)
    claims = claims_of(receiver.tokens()[0])
    assert claims["events"] == {VERIFICATION: {"state": "xyz"}}
    time.sleep(0.3)
    assert len(receiver.received) == 1  # the revocation stays held


def trickling_receiver() -> str:
    """An endpoint that answers 202 and then sends its promised body one byte every 2 s, for ever."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)

    def serve(connection: socket.socket) -> None:
        with suppress(OSError), connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Length: 4096\r\n\r\n")
            for _ in range(4096):
                time.sleep(2)
                connection.sendall(b" ")

    def accept() -> None:
        while True:
            connection, _ = server.accept()
            threading.Thread(target=serve, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return f"http://127.0.0.1:{server.getsockname()[1]}/events"


def test_rfc8935_one_receiver_that_trickles_its_answers_does_not_hold_up_the_others(
        tmp_path: Path, receiver: SetReceiver) -> None:
    with ssf_deployment(tmp_path, ssf="push_timeout = 5") as env:
        honest = push_stream(env, receiver)
        Receiver(env, RS_PHOTOS).create(delivery={"method": PUSH, "endpoint_url": trickling_receiver()})
        until(lambda: caught_up(env, honest))
        revoke(env, one_shot(env, PHOTOS))  # the trickling stream's push starts, and never completes
        time.sleep(1)
        revoke(env, one_shot(env, DOCS))
        began = time.monotonic()
        until(lambda: any(SESSION_REVOKED in claims_of(r.body.decode())["events"] for r in receiver.received),
              timeout=10)
        assert time.monotonic() - began < 5
