"""Issue 11 sections 1-2: the admin CLI talks to a running gateway over HTTP only (its admin API, with the
gateway's own authorisation), says what it acted on, and prints what people can read.

Two gateways: one configured (`DEPUTY_ADDR` with `DEPUTY_TOKEN`, `--token-file`, `deputy login` or the SPIFFE
Workload API as the credential), and a `deputy serve --dev` that the CLI finds from another directory. Every
`deputy` runs as a subprocess with its own XDG directories, so nothing of this machine's user is read."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs

import httpx2
import jwt
import pytest

from gateway.admin_output import InputError, colour_on, point, span, table, when
from gateway.dev import ADMIN as DEMO_ADMIN
from gateway.dev import AGENT as DEMO_AGENT
from gateway.dev import MAIL as DEMO_MAIL
from gateway.dev import DemoIdentities
from gateway.process import serving
from tests.client.workload_api import WorkloadApi
from tests.conftest import Deployment, deployed
from tests.support import ACCESS_TOKEN, GRANT, JWT, LoopbackServer, QuietHandler, free_port

ADMIN_PATH = "/ops/admin"
ADMINS = f"""
[admin]
claim = "groups"
value = "deputy-admins"
spiffe_ids = ["spiffe://example.org{ADMIN_PATH}"]
"""
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


class Cli:
    """`deputy ...` as a subprocess, in a directory of its own, with only the environment given."""

    def __init__(self, home: Path, **env: str) -> None:
        self.home, self.env = home, env
        (home / "cwd").mkdir(parents=True, exist_ok=True)

    def environment(self, **extra: str) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items()
                     if k not in {"DEPUTY_ADDR", "DEPUTY_TOKEN", "SPIFFE_ENDPOINT_SOCKET", "NO_COLOR"}}
        return {**inherited, "XDG_STATE_HOME": str(self.home / "state"), "XDG_CONFIG_HOME": str(self.home / "config"),
                **self.env, **extra}

    def __call__(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True,
                              timeout=60, cwd=self.home / "cwd", env=self.environment(**env))
        assert "Traceback" not in done.stderr, done.stderr
        return done

    def json(self, *args: str, **env: str) -> Any:
        done = self(*args, "--json", **env)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployed(tmp_path_factory.mktemp("admin-cli"), extra=ADMINS) as running:
        yield running


@pytest.fixture
def cli(gateway: Deployment, tmp_path: Path) -> Cli:
    """As the admin workload, by its JWT-SVID in DEPUTY_TOKEN."""
    return Cli(tmp_path, DEPUTY_ADDR=gateway.url, DEPUTY_TOKEN=gateway.svid(ADMIN_PATH))


def open_task(gateway: Deployment) -> dict[str, Any]:
    response = gateway.exchange()
    assert response.status_code == 200, response.text
    return dict(response.json())


def admin_task(gateway: Deployment, task_id: str) -> dict[str, Any]:
    response = gateway.client.get(f"/admin/tasks/{task_id}",
                                  headers={"Authorization": f"Bearer {gateway.svid(ADMIN_PATH)}"})
    assert response.status_code == 200, response.text
    return dict(response.json())


def fits(output: str) -> None:
    assert output.strip() and all(len(line) <= 100 for line in output.splitlines()), output
    assert "None" not in output and "['" not in output and "\033[" not in output, output


# --- listings, show, --json, times -------------------------------------------------------------------------


def test_issue11_2_tasks_list_is_a_table_within_100_columns_and_its_json_is_the_api_answer(
        gateway: Deployment, cli: Cli) -> None:
    task = open_task(gateway)
    listing = cli("tasks", "list", "--agent", "spiffe://example.org/agents/mail")
    assert listing.returncode == 0, listing.stderr
    fits(listing.stdout)
    assert listing.stdout.split()[:3] == ["TASK", "STATE", "AGENT"] and task["task_id"][:12] in listing.stdout
    assert ISO.search(listing.stdout)  # the deadline, in ISO 8601
    assert task["task_id"] in {t["id"] for t in cli.json("tasks", "list")["tasks"]}


def test_issue11_2_tasks_show_prints_fields_and_tokens_and_json_whole(gateway: Deployment, cli: Cli) -> None:
    task = open_task(gateway)
    shown = cli("tasks", "show", task["task_id"])
    assert shown.returncode == 0, shown.stderr
    fits(shown.stdout)
    assert f"id         {task['task_id']}" in shown.stdout and "alice at https://idp.example.com" in shown.stdout
    assert "JTI" in shown.stdout and "https://mail.example.com" in shown.stdout
    document = cli.json("tasks", "show", task["task_id"])
    assert document["id"] == task["task_id"] and len(document["tokens"]) == 1


def test_issue11_1_tasks_complete_then_again_matched_nothing_exits_3(gateway: Deployment, cli: Cli) -> None:
    task = open_task(gateway)
    done = cli("tasks", "complete", task["task_id"])
    assert done.returncode == 0, done.stderr
    assert f"task {task['task_id']} completed: 1 task(s) ended" in done.stdout and "1 token(s) revoked" in done.stdout
    assert admin_task(gateway, task["task_id"])["state"] == "completed"
    again = cli("tasks", "revoke", task["task_id"])
    assert again.returncode == 3 and "already completed: nothing changed" in again.stdout, again.stdout


def test_issue11_1_tasks_revoke_ends_the_task_and_its_tokens(gateway: Deployment, cli: Cli) -> None:
    task = open_task(gateway)
    body = cli.json("tasks", "revoke", task["task_id"])
    assert body["state"] == "revoked" and body["ended_tasks"] == [task["task_id"]] and body["revoked_tokens"] == 1
    assert admin_task(gateway, task["task_id"])["state"] == "revoked"


def test_issue11_1_a_revocation_that_matched_nothing_says_so_and_exits_3(cli: Cli) -> None:
    done = cli("revoke", "--agent", "spiffe://example.org/agents/nobody")
    assert done.returncode == 3, done.stderr
    assert done.stdout.startswith("nothing matched: agent spiffe://example.org/agents/nobody"), done.stdout
    assert cli("revoke", "--user", "nobody", "--json").returncode == 3


def test_issue11_1_a_bad_party_is_a_usage_error_before_any_call(cli: Cli) -> None:
    done = cli("revoke", "--agent", "system:serviceaccount:ns:name")
    assert done.returncode == 2 and "give its workload issuer too" in done.stderr, done.stderr


def test_issue11_2_audit_accepts_iso_8601_and_spans_and_prints_json_lines(gateway: Deployment, cli: Cli) -> None:
    task = open_task(gateway)
    since = datetime.fromtimestamp(time.time() - 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for moment in (since, "1h", "90s"):
        lines = cli("audit", "--task", task["task_id"], "--since", moment, "--json").stdout.splitlines()
        assert [json.loads(line)["task_id"] for line in lines] == [task["task_id"]], moment
    assert not cli("audit", "--task", task["task_id"], "--until", "1h", "--json").stdout  # before the task
    table = cli("audit", "--since", "1h", "--limit", "5")
    assert table.returncode == 0 and table.stdout.split()[:3] == ["AT", "ACTION", "OUTCOME"]
    fits(table.stdout)
    bad = cli("audit", "--since", "yesterday")
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr


def test_issue11_2_audit_follow_streams_new_events_and_ctrl_c_exits_0(gateway: Deployment, cli: Cli) -> None:
    open_task(gateway)  # an event for the stream to begin with
    follower = subprocess.Popen([sys.executable, "-m", "gateway.cli", "audit", "--follow", "--json", "--limit", "1",
                                 "--interval", "0.2"], cwd=cli.home / "cwd", env=cli.environment(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert follower.stdout is not None
    watchdog = threading.Timer(30, follower.kill)  # a stream that never shows the event ends the test
    watchdog.start()
    try:
        first = json.loads(follower.stdout.readline())  # the newest event so far
        task = open_task(gateway)
        streamed = [json.loads(follower.stdout.readline())]
        while streamed[-1]["task_id"] != task["task_id"]:  # other events (a sweep) may come first
            streamed.append(json.loads(follower.stdout.readline()))
    finally:
        watchdog.cancel()
        follower.send_signal(signal.SIGINT)
        _, errors = follower.communicate(timeout=20)
    ids = [first["id"], *(event["id"] for event in streamed)]
    assert ids == sorted(set(ids)), ids  # each event once, oldest first, none from before the stream began
    assert follower.returncode == 0 and "Traceback" not in errors, errors


# --- credentials and errors --------------------------------------------------------------------------------


def test_issue11_1_a_user_token_of_an_admin_group_in_a_token_file_is_an_admin(gateway: Deployment, cli: Cli,
                                                                              tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(gateway.admin_user_token("carol", groups=["deputy-admins"]) + "\n")
    assert cli("tasks", "list", "--token-file", str(path), DEPUTY_TOKEN="").returncode == 0


def test_issue11_1_a_refusal_is_one_line_and_exits_1(gateway: Deployment, cli: Cli) -> None:
    done = cli("tasks", "list", DEPUTY_TOKEN=gateway.admin_user_token("dave", groups=["staff"]))
    assert done.returncode == 1 and done.stdout == "", done.stdout
    assert re.fullmatch(r"error: access_denied: .+\n", done.stderr), done.stderr
    missing = cli("tasks", "show", "no-such-task")
    assert missing.returncode == 1 and missing.stderr == "error: not_found: no such task\n", missing.stderr


def test_issue11_1_an_unreachable_gateway_names_the_address_tried(cli: Cli) -> None:
    addr = f"http://127.0.0.1:{free_port()}"
    done = cli("tasks", "list", "--addr", addr)
    assert done.returncode == 1 and done.stderr.startswith(f"error: cannot reach the gateway at {addr}")


@pytest.mark.parametrize(("addr", "message"), [
    ("http://deputy.example.com", "must use https (plain http is allowed on loopback only)"),
    ("deputy.example.com", "must be an http(s) URL"),
    ("https://admin:secret@deputy.example.com", "must not hold a user name or password")])
def test_issue11_1_the_admin_token_goes_over_https_only_except_on_loopback(addr: str, message: str,
                                                                            cli: Cli) -> None:
    done = cli("tasks", "list", "--addr", addr)
    assert done.returncode == 2 and f"--addr (or DEPUTY_ADDR): {message}" in done.stderr, done.stderr


def test_issue11_1_an_expired_token_of_deputy_login_is_reported_never_sent(gateway: Deployment,
                                                                           tmp_path: Path) -> None:
    stored = tmp_path / "config" / "deputy" / "tokens.json"
    stored.parent.mkdir(parents=True)
    stored.write_text(json.dumps({gateway.url: {"access_token": "expired", "expires_at": int(time.time()) - 1}}))
    done = Cli(tmp_path, DEPUTY_ADDR=gateway.url)("tasks", "list")
    assert done.returncode == 1 and "has expired: run `deputy login` again" in done.stderr, done.stderr


def test_issue11_1_no_credential_says_which_ones_exist_and_exits_2(gateway: Deployment, tmp_path: Path) -> None:
    done = Cli(tmp_path, DEPUTY_ADDR=gateway.url)("tasks", "list")
    assert done.returncode == 2 and "no admin credential" in done.stderr and "deputy login" in done.stderr


def test_issue11_1_the_callers_jwt_svid_comes_from_the_spiffe_workload_api(gateway: Deployment,
                                                                           tmp_path: Path) -> None:
    api = WorkloadApi(tmp_path, gateway.domain, ADMIN_PATH)
    try:
        done = Cli(tmp_path, DEPUTY_ADDR=gateway.url, SPIFFE_ENDPOINT_SOCKET=api.endpoint)("tasks", "list")
    finally:
        api.close()
    assert done.returncode == 0, done.stderr
    assert len(api.fetched) == 1
    assert jwt.decode(api.fetched[0], options={"verify_signature": False})["aud"] == [gateway.issuer]


class ImpostorGateway(QuietHandler):
    """A server on loopback whose RFC 8414 metadata names another gateway's issuer (`issuer`)."""

    issuer: ClassVar[str] = ""

    def do_GET(self) -> None:
        self.send_json(200, {"issuer": ImpostorGateway.issuer})


def test_rfc8414_3_3_no_jwt_svid_is_fetched_for_an_issuer_other_than_the_address(gateway: Deployment,
                                                                                tmp_path: Path) -> None:
    """A server at DEPUTY_ADDR naming the real gateway as its issuer must not get an admin SVID for it."""
    ImpostorGateway.issuer = gateway.issuer
    server = LoopbackServer(ImpostorGateway)
    api = WorkloadApi(tmp_path, gateway.domain, ADMIN_PATH)
    try:
        done = Cli(tmp_path, DEPUTY_ADDR=server.url, SPIFFE_ENDPOINT_SOCKET=api.endpoint)("tasks", "list")
    finally:
        api.close()
        server.close()
    assert done.returncode != 0 and "names another issuer" in done.stderr, done.stderr
    assert api.fetched == []


class DeviceIdp(QuietHandler):
    """RFC 8628 at an identity provider on loopback: approves the device code at the second poll. Under
    /plain it offers no device grant."""

    issue: Any = None  # the user token it gives once approved
    polls: ClassVar[list[dict[str, list[str]]]] = []

    def do_GET(self) -> None:
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        if self.path == "/.well-known/openid-configuration":
            self.send_json(200, {"issuer": base, "token_endpoint": f"{base}/token",
                             "device_authorization_endpoint": f"{base}/device"})
        elif self.path == "/plain/.well-known/openid-configuration":
            self.send_json(200, {"issuer": f"{base}/plain", "token_endpoint": f"{base}/token"})
        else:
            self.send_json(404, {"error": "not_found"})

    def do_POST(self) -> None:
        form = parse_qs(self.rfile.read(int(self.headers["content-length"])).decode())
        if self.path == "/device":
            self.send_json(200, {"device_code": "dc-1", "user_code": "WDJB-MJHT", "expires_in": 60, "interval": 1,
                             "verification_uri": "http://127.0.0.1/device"})
            return
        DeviceIdp.polls.append(form)
        if len(DeviceIdp.polls) < 2:
            self.send_json(400, {"error": "authorization_pending"})
        else:
            self.send_json(200, {"access_token": DeviceIdp.issue(), "token_type": "Bearer", "expires_in": 600})



def test_issue11_1_deputy_login_uses_the_device_grant_and_keeps_the_token_0600(gateway: Deployment,
                                                                               tmp_path: Path) -> None:
    DeviceIdp.issue = lambda: gateway.admin_user_token("carol", groups=["deputy-admins"])
    server = LoopbackServer(DeviceIdp)
    idp, cli = server.url, Cli(tmp_path, DEPUTY_ADDR=gateway.url)
    try:
        done = cli("login", "--issuer", idp, "--client-id", "deputy-cli")
        plain = cli("login", "--issuer", f"{idp}/plain", "--client-id", "deputy-cli")
    finally:
        server.close()
    assert done.returncode == 0, done.stderr
    assert "open http://127.0.0.1/device and enter the code WDJB-MJHT" in done.stderr
    assert DeviceIdp.polls[-1]["grant_type"] == ["urn:ietf:params:oauth:grant-type:device_code"]
    assert DeviceIdp.polls[-1]["resource"] == [f"{gateway.url}/admin"]  # RFC 8707: `[admin] audience`
    stored = tmp_path / "config" / "deputy" / "tokens.json"
    assert stored.stat().st_mode & 0o777 == 0o600 and gateway.url in json.loads(stored.read_text())
    assert cli("tasks", "list").returncode == 0  # as carol, with the token `deputy login` kept
    assert plain.returncode == 1 and "offers no device authorization grant" in plain.stderr, plain.stderr


@pytest.mark.parametrize(("typed", "expected"), [
    ("2026-05-01", 1777593600), ("2026-05-01T12:00:00Z", 1777636800), ("2026-05-01T14:00:00+02:00", 1777636800),
    ("2026-05-01T12:00:00", 1777636800), ("1777636800", 1777636800), ("1h", 1_000_000 - 3600),
    ("1h30m", 1_000_000 - 5400), ("2d", 1_000_000 - 172800)])
def test_issue11_2_times_are_iso_8601_unix_seconds_or_spans_back_from_now(typed: str, expected: int) -> None:
    assert point(typed, now=1_000_000) == expected


@pytest.mark.parametrize("typed", ["yesterday", "1x", "h", "0m", "-1h", "2026-13-01", ""])
def test_issue11_2_a_time_or_span_that_means_nothing_is_refused(typed: str) -> None:
    with pytest.raises(InputError):
        point(typed, now=1_000_000)
    with pytest.raises(InputError):
        span(typed)


def test_issue11_2_times_are_shown_in_iso_8601_utc_whatever_the_api_sends() -> None:
    assert when(1777636800) == when("2026-05-01T12:00:00Z") == when("2026-05-01T14:00:00+02:00")
    assert when(1777636800) == "2026-05-01T12:00:00Z" and when(None) == ""


def test_issue11_2_a_table_too_wide_cuts_the_columns_named_first_and_keeps_the_id() -> None:
    row = ("a" * 12, "spiffe://example.org/agents/" + "x" * 40, "scope " * 20)
    lines = table(("ID", "AGENT", "SCOPE"), [row], cut_first=("SCOPE",)).splitlines()
    assert all(len(line) <= 100 for line in lines) and lines[1].startswith("a" * 12 + "  " + row[1])
    assert lines[1].endswith("...")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_issue11_2_colour_only_on_a_terminal_and_never_under_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert colour_on(Terminal()) and not colour_on(io.StringIO())
    assert "\033[31mrevoked\033[0m" in table(("STATE",), [("revoked",)], colour=True)
    assert "\033[" not in table(("STATE",), [("revoked",)], colour=False)
    monkeypatch.setenv("NO_COLOR", "1")
    assert not colour_on(Terminal())


# --- blocks, reasons in the audit, never-seen warnings, id prefixes ---------------------------------------


def test_issue11_1_the_reason_and_the_acting_admin_are_in_the_audit(gateway: Deployment, cli: Cli) -> None:
    task = open_task(gateway)
    assert cli("tasks", "revoke", task["task_id"], "--reason", "incident 42").returncode == 0
    events = [json.loads(line) for line in cli("audit", "--task", task["task_id"], "--json").stdout.splitlines()]
    revoked = next(e for e in events if e["action"] == "admin_revoke")
    assert revoked["agent"] == f"spiffe://example.org{ADMIN_PATH}"
    assert any("incident 42" in reason for reason in revoked["reasons"])


def test_issue11_2_the_12_character_ids_a_listing_shows_are_accepted_back(gateway: Deployment, cli: Cli) -> None:
    task = open_task(gateway)
    assert cli.json("tasks", "show", task["task_id"][:12])["id"] == task["task_id"]


def test_issue11_1_a_revocation_of_a_never_seen_agent_carries_the_apis_warning(cli: Cli) -> None:
    done = cli("revoke", "--agent", "spiffe://example.org/agents/never-seen", "--reason", "typo?")
    assert done.returncode == 3 and "warning: Deputy has never seen agent" in done.stderr, done.stderr


def test_issue11_3_block_add_list_remove(gateway: Deployment, cli: Cli) -> None:
    added = cli("block", "add", "--agent", "spiffe://example.org/agents/helper", "--for", "2h", "--reason", "drill")
    assert added.returncode == 0 and added.stdout.startswith("blocked agent spiffe://example.org/agents/helper until")
    blocks = cli.json("block", "list")["blocks"]
    block = next(b for b in blocks if b["party"] == "spiffe://example.org/agents/helper")
    assert block["reason"] == "drill" and ISO.fullmatch(block["expires_at"])
    listing = cli("block", "list")
    fits(listing.stdout)
    assert block["id"][:12] in listing.stdout
    removed = cli("block", "remove", block["id"][:12], "--reason", "drill over")
    assert removed.returncode == 0 and f"lifted block {block['id']}" in removed.stdout
    assert cli("block", "remove", "no-such-block").returncode == 1
    assert block["id"] not in {b["id"] for b in cli.json("block", "list")["blocks"]}


def test_issue11_3_block_add_refuses_a_span_that_means_nothing(cli: Cli) -> None:
    done = cli("block", "add", "--agent", "spiffe://example.org/agents/helper", "--for", "soon", "--reason", "x")
    assert done.returncode == 2 and "is not a span" in done.stderr
    unexplained = cli("block", "add", "--agent", "spiffe://example.org/agents/helper", "--for", "1h")
    assert unexplained.returncode == 2 and "--reason" in unexplained.stderr


# --- dev mode ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dev_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, DemoIdentities, str]]:
    """`deputy serve --dev` in a directory of its own; returns the XDG home the CLI shares with it."""
    home = tmp_path_factory.mktemp("dev-home")
    (home / "served").mkdir()
    listen = f"127.0.0.1:{free_port()}"
    env = Cli(home).environment()
    with serving(["--dev", "--listen", listen], f"http://{listen}", log=home / "dev.log", cwd=home / "served",
                 env=env):
        yield home, DemoIdentities(home / "served" / ".deputy-dev"), f"http://{listen}"


def test_issue11_1_dev_mode_finds_the_dev_gateway_from_another_directory_and_says_so(
        dev_gateway: tuple[Path, DemoIdentities, str]) -> None:
    home, ids, url = dev_gateway
    exchanged = httpx2.post(f"{url}/token", data={
        "grant_type": GRANT, "subject_token": ids.user_token("alice"), "subject_token_type": ACCESS_TOKEN,
        "actor_token": ids.svid(DEMO_AGENT), "actor_token_type": JWT, "resource": DEMO_MAIL, "scope": "mail.read"})
    assert exchanged.status_code == 200, exchanged.text
    cli = Cli(home)
    listing = cli("tasks", "list")
    assert listing.returncode == 0 and exchanged.json()["task_id"][:12] in listing.stdout, listing.stderr
    assert listing.stderr == f"deputy: dev mode: the `deputy serve --dev` gateway at {url} " \
                             f"({home / 'served' / '.deputy-dev'}), as the demo admin {DEMO_ADMIN}\n"
    assert cli.json("tasks", "show", exchanged.json()["task_id"][:12])["state"] == "open"
    revoked = cli("revoke", "--agent", DEMO_AGENT)
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout == f"revoked 1 task(s) and 1 token(s) of agent {DEMO_AGENT}\n"
    events = [json.loads(line) for line in cli("audit", "--json", "--since", "5m").stdout.splitlines()]
    assert any(e["action"] == "admin_revoke" and e["agent"] == DEMO_ADMIN for e in events)
    blocked = cli.json("block", "add", "--user", "mallory", "--issuer", "https://idp.demo.test", "--for", "1m",
                       "--reason", "drill")
    assert blocked["block"]["created_by"] == DEMO_ADMIN
    assert cli("block", "remove", blocked["block"]["id"]).returncode == 0


def test_issue11_1_without_an_address_or_a_dev_gateway_the_cli_says_what_to_give(tmp_path: Path) -> None:
    done = Cli(tmp_path)("tasks", "list")
    assert done.returncode == 2 and "give --addr or set DEPUTY_ADDR" in done.stderr, done.stderr
