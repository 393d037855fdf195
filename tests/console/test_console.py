"""The web console in a real browser (issue 11, sections 4 and 5): sign-in through the dev login, a task
tree appearing live, revocation from the console reaching a resource server, blocks, and the web
security the console promises (cookie flags, CSRF, CSP, no token in browser storage, logout)."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx2
import pytest
from playwright.sync_api import Browser, Page, expect

from deputy_client.resource import AccessTokenVerifier, InvalidToken
from gateway.dev import AGENT, MAIL, MAIL_API, SUBAGENT
from tests.console.conftest import ADMIN, Dev, Loop, screenshot, sign_in
from tests.support import ACCESS_TOKEN, GRANT, JWT

TXN = "urn:ietf:params:oauth:token-type:txn_token"


def exchange(dev: Dev, **form: Any) -> httpx2.Response:
    return dev.http.post("/token", data={"grant_type": GRANT, "actor_token_type": JWT, **form})


def granted(response: httpx2.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return dict(response.json())


def open_and_delegate(dev: Dev, purpose: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The mail agent opens a task for alice and delegates reading to the summarizer, which mints a token."""
    ids = dev.identities
    task = granted(exchange(dev, subject_token=ids.user_token("alice"), subject_token_type=ACCESS_TOKEN,
                            actor_token=ids.svid(AGENT), requested_token_type=TXN, audience=MAIL,
                            scope="mail.read mail.send", purpose=purpose))
    child = granted(exchange(dev, subject_token=task["access_token"], subject_token_type=TXN,
                             actor_token=ids.svid(SUBAGENT), requested_token_type=TXN, scope="mail.read"))
    access = granted(exchange(dev, subject_token=child["access_token"], subject_token_type=TXN,
                              actor_token=ids.svid(SUBAGENT), resource=MAIL, scope="mail.read"))
    return task, child, str(access["access_token"])


def confirm(page: Page, reason: str) -> None:
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Reason").fill(reason)
    dialog.get_by_role("button", name="Confirm").click()
    expect(dialog).to_be_hidden()


def test_console_sign_in_goes_through_the_dev_login_page_marked_demo_only(browser: Browser, dev: Dev) -> None:
    page = browser.new_context().new_page()
    page.goto(f"{dev.url}/console")
    expect(page).to_have_url(re.compile(r"/console/demo-idp/authorize\?.*code_challenge_method=S256"))
    expect(page.locator(".demo")).to_contain_text("DEMO ONLY")
    screenshot(page, "login")
    page.get_by_role("button", name="Sign in as admin").click()
    page.wait_for_url(f"{dev.url}/console/")
    expect(page.locator("#admin")).to_have_text(f"signed in as {ADMIN}")
    page.context.close()


def test_console_refuses_a_user_who_is_not_an_admin(browser: Browser, dev: Dev) -> None:
    page = sign_in(browser, dev, "alice")
    expect(page.locator("h1")).to_have_text("Sign-in refused")
    expect(page.locator("main")).to_contain_text("not in the admin group")
    assert not [c for c in page.context.cookies() if c["name"] == "deputy_console"]
    page.goto(f"{dev.url}/console/")
    expect(page).to_have_url(re.compile("/console/demo-idp/authorize"))  # no session: back to sign-in
    page.context.close()


def test_console_session_cookie_is_httponly_samesite_strict_and_no_token_is_in_browser_storage(console: Page) -> None:
    cookie = next(c for c in console.context.cookies() if c["name"] == "deputy_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert not cookie["secure"]  # loopback dev only: Secure everywhere else (tests/console/test_console_http.py)
    assert console.evaluate("document.cookie") == ""
    assert console.evaluate("localStorage.length + sessionStorage.length") == 0


def test_console_task_tree_appears_live_and_its_revocation_reaches_the_resource_server(
        console: Page, dev: Dev, loop: Loop) -> None:
    console.goto(f"{dev.url}/console/#tasks")
    task, child, access = open_and_delegate(dev, "triage inbox")
    root = console.locator(f'[data-task-id="{task["task_id"]}"]')
    expect(root).to_contain_text(AGENT, timeout=5000)  # polled: no reload
    nested = console.locator(f'li:has(> [data-task-id="{task["task_id"]}"]) [data-task-id="{child["task_id"]}"]')
    expect(nested).to_contain_text(SUBAGENT)
    expect(root).to_contain_text("alice")
    expect(root).to_contain_text("mail.read mail.send")
    expect(root).to_contain_text(MAIL)
    screenshot(console, "tasks")

    verifier = AccessTokenVerifier(issuer=dev.url, audience=MAIL, client=httpx2.AsyncClient(timeout=5),
                                   svid=lambda: dev.identities.svid(MAIL_API))
    loop.run(verifier.__aenter__())
    try:
        assert loop.run(verifier.verify(access, "mail.read")).agent == SUBAGENT
        root.get_by_role("link", name="Details").click()
        console.locator("#view").get_by_role("link", name=child["task_id"]).click()
        expect(console.locator(".chain li")).to_have_text([AGENT, SUBAGENT])
        expect(console.locator("#view tbody tr")).to_have_count(1)  # the summarizer's access token
        screenshot(console, "task")
        console.go_back()
        expect(console.locator("#view h2").first).to_have_text(f"Task {task['task_id']}")
        console.get_by_role("button", name="Revoke task").click()
        confirm(console, "incident 7: mail agent misbehaving")
        expect(console.locator(".state").first).to_have_text("revoked")
        with pytest.raises(InvalidToken, match="revoked"):
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                loop.run(verifier.verify(access, "mail.read"))
                time.sleep(0.1)
    finally:
        loop.run(verifier.__aexit__(None, None, None))
    refused = exchange(dev, subject_token=child["access_token"], subject_token_type=TXN,
                       actor_token=dev.identities.svid(SUBAGENT), resource=MAIL, scope="mail.read")
    assert refused.status_code == 400 and "ended" in refused.json()["error_description"]


def test_console_audit_trail_filters_by_task_and_shows_the_admin_revocation(console: Page, dev: Dev) -> None:
    task, _, _ = open_and_delegate(dev, "audit me")
    granted(dev.http.post(f"/admin/tasks/{task['task_id']}/revoke",
                          headers={"Authorization": f"Bearer {dev.identities.svid('spiffe://demo.test/admin')}"}))
    console.goto(f"{dev.url}/console/#audit")
    console.get_by_label("Task", exact=True).fill(task["task_id"])
    console.get_by_role("button", name="Filter").click()
    rows = console.locator("#view tbody tr")
    expect(rows.filter(has_text="admin_revoke")).to_have_count(1)
    expect(rows.filter(has_text="task")).not_to_have_count(0)
    for row in rows.all():
        expect(row).to_contain_text(task["task_id"])
    screenshot(console, "audit")


def test_console_confirmation_can_be_cancelled_and_then_nothing_changes(console: Page, dev: Dev) -> None:
    console.goto(f"{dev.url}/console/#tasks")
    task, _, _ = open_and_delegate(dev, "keep me")
    root = console.locator(f'[data-task-id="{task["task_id"]}"]')
    root.get_by_role("button", name="Revoke task").click()
    console.get_by_role("button", name="Cancel").click()
    console.wait_for_timeout(1500)
    expect(root).to_contain_text("open")


def test_console_blocks_an_agent_and_its_next_exchange_is_refused(console: Page, dev: Dev) -> None:
    """Needs the blocks API (`/admin/blocks`): until the gateway has it, the view says so."""
    console.goto(f"{dev.url}/console/#blocks")
    admin = {"Authorization": f"Bearer {dev.identities.svid('spiffe://demo.test/admin')}"}
    if dev.http.get("/admin/blocks", headers=admin).status_code == 404:
        expect(console.locator("#view")).to_contain_text("This gateway has no blocks API")
        pytest.skip("this gateway has no /admin/blocks yet (issue 11 blocks)")
    console.get_by_label("Identifier", exact=True).fill(AGENT)
    console.get_by_label("For", exact=True).fill("2h")
    console.get_by_role("button", name="Add block").click()
    confirm(console, "incident 8")
    row = console.locator("#view tbody tr", has_text=AGENT)
    expect(row).to_contain_text("incident 8")
    screenshot(console, "blocks")
    refused = exchange(dev, subject_token=dev.identities.user_token("alice"), subject_token_type=ACCESS_TOKEN,
                       actor_token=dev.identities.svid(AGENT), resource=MAIL, scope="mail.read")
    assert refused.status_code in (400, 401, 403) and "block" in refused.json()["error_description"]
    row.get_by_role("button", name="Lift").click()
    confirm(console, "incident 8 over")
    expect(row).to_have_count(0)
    time.sleep(1.1)  # the block revoked the agent: SVIDs issued until then stay barred (a cutoff in seconds)
    granted(exchange(dev, subject_token=dev.identities.user_token("alice"), subject_token_type=ACCESS_TOKEN,
                     actor_token=dev.identities.svid(AGENT), resource=MAIL, scope="mail.read"))


def test_console_revokes_an_agent_with_a_reason_and_its_tasks_leave_the_tree(console: Page, dev: Dev) -> None:
    console.goto(f"{dev.url}/console/#tasks")
    task, _, _ = open_and_delegate(dev, "revoke the agent")
    root = console.locator(f'[data-task-id="{task["task_id"]}"]')
    root.get_by_role("button", name="Revoke agent").click()
    confirm(console, "compromised SVID")
    expect(root).to_have_count(0)
    listed = dev.http.get("/admin/tasks", params={"agent": AGENT, "state": "open"},
                          headers={"Authorization": f"Bearer {dev.identities.svid('spiffe://demo.test/admin')}"})
    assert listed.json()["tasks"] == []
