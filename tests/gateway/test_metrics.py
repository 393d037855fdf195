"""Issue 8 §5, Prometheus metrics, over real HTTP against `deputy serve`: served on the management listener
`[metrics] listen` only (404 on the public port), summed exactly across worker processes (a replaced
worker's counts kept), label values that are fixed words (never a SPIFFE ID, a user or a token),
revocations and open tasks as they happen, and start-up refused on a shared or busy port."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from gateway.process import gateway_process
from tests.conftest import CALENDAR, HELPER_AGENT, IDP, MAIL, MAIL_AGENT, Setup, make_setup
from tests.gateway.test_supervision import BANNER, gone, until, worker_pids
from tests.support import ACCESS_TOKEN, GRANT, JWT, deputy_command, free_port, gateway_log

OPS = "spiffe://example.org/ops/admin"
TXN_TOKEN = "urn:ietf:params:oauth:token-type:txn_token"
EXCHANGES = "deputy_exchanges_total"
Labels = frozenset[tuple[str, str]]


def labels(**values: str) -> Labels:
    return frozenset(values.items())


GRANTED = labels(action="exchange", outcome="granted", error="")
INVALID_SCOPE = labels(action="exchange", outcome="refused", error="invalid_scope")
POLICY_REFUSED = labels(action="exchange", outcome="refused", error="unauthorized_client")
EMBEDDED = labels(engine="embedded")


@dataclass
class Gateway:
    setup: Setup
    pid: int  # of `deputy serve`: the supervising parent with workers
    url: str
    metrics_url: str
    seen: list[str]  # every identity and token the test used: none may appear in the metrics
    directories: set[Path] = field(default_factory=set)  # the workers' multiprocess directories seen

    def exchange(self, **changes: str) -> httpx2.Response:
        """One token request over a fresh connection (so that the kernel picks a worker each time)."""
        user = changes.pop("subject_token", None) or self.setup.idp.token("alice", audience=self.setup.issuer)
        agent = changes.pop("actor_token", None) or self.svid()
        form = {"grant_type": GRANT, "subject_token": user, "subject_token_type": ACCESS_TOKEN, "actor_token": agent,
                "actor_token_type": JWT, "resource": MAIL, "scope": "mail.read", **changes}
        with httpx2.Client(base_url=self.url, timeout=10) as client:
            response = client.post("/token", data=form)
        self.seen += [user, agent]
        if response.status_code == 200:
            issued = response.json()["access_token"]
            claims = jwt.decode(issued, options={"verify_signature": False})
            self.seen += [issued, claims["jti"], response.json()["task_id"]]
        return response

    def svid(self, spiffe_id: str = MAIL_AGENT) -> str:
        return self.setup.domain.svid(sub=spiffe_id, audience=self.setup.issuer)

    def call(self, path: str, *, caller: str = MAIL_AGENT, **form: str) -> httpx2.Response:
        with httpx2.Client(base_url=self.url, timeout=10) as client:
            return client.post(path, data=form, headers={"Authorization": f"Bearer {self.svid(caller)}"})

    def open_task(self, **changes: str) -> dict[str, Any]:
        response = self.exchange(requested_token_type=TXN_TOKEN, **changes)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def exposition(self) -> str:
        response = httpx2.get(self.metrics_url, timeout=10)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain")
        return response.text

    def samples(self) -> dict[tuple[str, Labels], float]:
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(self.exposition()) for s in family.samples}

    def value(self, name: str, at: Labels = frozenset()) -> float | None:
        return self.samples().get((name, at))


@pytest.fixture
def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Gateway]:
    """A gateway with metrics on a port of their own, sweeping every second; as many workers as the test's
    indirect parameter says (default 1)."""
    workers = getattr(request, "param", 1)
    metrics_port = free_port()
    setup = make_setup(tmp_path, extra=f'\n[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n\n'
                                       f'[tasks]\nsweep_every = 1\n\n[admin]\nspiffe_ids = ["{OPS}"]\n')
    log = gateway_log(setup.config)
    try:
        with gateway_process(setup.config, setup.issuer, workers=workers, log=log) as process:
            until(lambda: BANNER in log.read_text(), what="the banner: every worker serves")
            running = Gateway(setup, process.pid, setup.issuer, f"http://127.0.0.1:{metrics_port}/metrics",
                              [MAIL_AGENT, HELPER_AGENT, OPS, IDP, "alice", MAIL, CALENDAR])
            yield running
        assert "Traceback" not in log.read_text(), log.read_text()
        assert [d for d in running.directories if d.exists()] == []  # removed by the parent as it stopped
    finally:
        setup.jwks_server.close()


def counted_by(gateway: Gateway, pid: int) -> float:
    """The exchanges a worker counted, read from its own multiprocess file."""
    variables = Path(f"/proc/{pid}/environ").read_text().split("\0")
    environment = dict(line.split("=", 1) for line in variables if "=" in line)
    directory = Path(environment["PROMETHEUS_MULTIPROC_DIR"])
    gateway.directories.add(directory)
    path = directory / f"counter_{pid}.db"
    return sum(value for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path))
               if key.startswith(f'["{EXCHANGES.removesuffix("_total")}"'))


@pytest.mark.parametrize("gateway", [2], indirect=True, ids=["2 workers"])
def test_issue8_5_counts_of_every_worker_are_summed_exactly_and_outlive_a_replaced_worker(gateway: Gateway) -> None:
    statuses = [gateway.exchange().status_code for _ in range(12)]
    statuses += [gateway.exchange(scope="calendar.read").status_code for _ in range(6)]  # before the policy
    statuses += [gateway.exchange(actor_token=gateway.svid(HELPER_AGENT)).status_code for _ in range(4)]
    assert statuses == [200] * 12 + [400] * 10
    samples = gateway.samples()
    assert (samples[(EXCHANGES, GRANTED)], samples[(EXCHANGES, INVALID_SCOPE)],
            samples[(EXCHANGES, POLICY_REFUSED)]) == (12, 6, 4)
    assert samples[("deputy_policy_decision_seconds_count", EMBEDDED)] == 16
    workers = worker_pids(gateway.pid)
    per_worker = {pid: counted_by(gateway, pid) for pid in workers}
    assert len(per_worker) == 2 and all(per_worker.values()) and sum(per_worker.values()) == 22, per_worker
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    until(lambda: gone(victim) and len(worker_pids(gateway.pid) - workers) == 1, what="a new worker")
    assert {gateway.exchange().status_code for _ in range(4)} == {200}
    assert gateway.value(EXCHANGES, GRANTED) == 16  # the dead worker's count is still in the sum
    assert gateway.value("deputy_policy_decision_seconds_count", EMBEDDED) == 20


def test_issue8_5_metrics_are_served_on_the_management_port_only(gateway: Gateway) -> None:
    with httpx2.Client(base_url=gateway.url, timeout=10) as public:
        for method in ("GET", "POST", "HEAD"):
            assert public.request(method, "/metrics").status_code == 404
    assert httpx2.get(gateway.metrics_url.removesuffix("/metrics") + "/", timeout=10).status_code == 404
    assert httpx2.get(gateway.metrics_url + "/extra", timeout=10).status_code == 404
    assert "# TYPE deputy_exchanges_total counter" in gateway.exposition()


def test_issue8_5_label_values_are_fixed_words_never_identities_or_tokens(gateway: Gateway) -> None:
    assert gateway.exchange().status_code == 200
    assert gateway.exchange(scope="calendar.read").status_code == 400
    assert gateway.exchange(subject_token="not.a.token").status_code == 400
    task = gateway.open_task()
    within = gateway.exchange(subject_token=task["access_token"], subject_token_type=TXN_TOKEN)
    assert within.status_code == 200
    assert gateway.call("/revoke", token=within.json()["access_token"]).status_code == 200
    assert gateway.call(f"/tasks/{task['task_id']}/complete").status_code == 200
    until(lambda: gateway.value("deputy_tasks_open") == 1, what="the sweep to count the one-shot task")
    text = gateway.exposition()
    assert [seen for seen in gateway.seen if str(seen) in text] == []
    values = {value for (name, at) in gateway.samples() for label, value in at if label != "le"}
    assert values >= {"exchange", "open_task", "granted", "refused", "invalid_scope", "invalid_request", "embedded",
                      "complete", "token"}
    assert all(v.replace("_", "").isalnum() and v.islower() for v in values if v), values


@pytest.mark.parametrize("gateway", [2], indirect=True, ids=["2 workers"])
def test_issue8_5_revocations_and_open_tasks_move_as_tasks_end(gateway: Gateway) -> None:
    def revoked(kind: str) -> float | None:
        return gateway.value("deputy_revoked_total", labels(kind=kind))

    completed, revoked_task, last = gateway.open_task(), gateway.open_task(), gateway.open_task()
    gateway.open_task(task_ttl="1")
    until(lambda: revoked("expired") == 1 and gateway.value("deputy_tasks_open") == 3, what="the expiry swept")
    assert gateway.call(f"/tasks/{completed['task_id']}/complete").status_code == 200
    assert gateway.call("/revoke", token=revoked_task["access_token"]).status_code == 200
    within = gateway.exchange(subject_token=last["access_token"], subject_token_type=TXN_TOKEN)
    assert gateway.call("/revoke", token=within.json()["access_token"]).status_code == 200
    assert (revoked("complete"), revoked("revoke"), revoked("token")) == (1, 1, 1)
    until(lambda: gateway.value("deputy_tasks_open") == 1, what="the sweep to count one open task")
    response = httpx2.post(f"{gateway.url}/admin/revoke", params={"agent": MAIL_AGENT}, timeout=10,
                           headers={"Authorization": f"Bearer {gateway.svid(OPS)}"})
    assert response.status_code == 200, response.text
    assert revoked("agent") == 1
    until(lambda: gateway.value("deputy_tasks_open") == 0, what="the sweep to count no open task")
    assert gateway.value(EXCHANGES, labels(action="open_task", outcome="granted", error="")) == 4


def test_issue8_5_failed_store_calls_are_counted_by_operation_never_by_path(gateway: Gateway) -> None:
    task = gateway.open_task()
    with sqlite3.connect(gateway.setup.directory / "state" / "deputy.db", isolation_level=None) as holder:
        holder.execute("BEGIN IMMEDIATE")  # every write waits for the lock, then fails (after 5 s)
        with httpx2.Client(base_url=gateway.url, timeout=60) as client:
            response = client.post(f"/tasks/{task['task_id']}/complete",
                                   headers={"Authorization": f"Bearer {gateway.svid()}"})
        holder.execute("ROLLBACK")
    assert (response.status_code, response.json()["error"]) == (503, "temporarily_unavailable")
    assert gateway.value("deputy_store_errors_total", labels(operation="complete")) == 1
    assert task["task_id"] not in gateway.exposition()


def write_config(directory: Path, listen: str, metrics_listen: str) -> Path:
    config = directory / "deputy.toml"
    config.write_text(f'listen = "{listen}"\nstate_dir = "state"\n\n[metrics]\nlisten = "{metrics_listen}"\n')
    return config


@pytest.mark.parametrize("metrics_host", ["127.0.0.1", "0.0.0.0"])
def test_issue8_5_metrics_on_the_public_port_are_refused(tmp_path: Path, metrics_host: str) -> None:
    port = free_port()
    config = write_config(tmp_path, f"127.0.0.1:{port}", f"{metrics_host}:{port}")
    for command in (("check",), ("serve", "--workers", "2")):
        result = subprocess.run(deputy_command(*command, "--config", str(config)), capture_output=True, text=True,
                                timeout=60, cwd=tmp_path)
        assert (result.returncode, result.stderr) == (
            2, "deputy: metrics.listen: must differ from listen (metrics are never served on the public port)\n")
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_issue8_5_a_busy_metrics_port_stops_start_up_with_one_line(tmp_path: Path, workers: str) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        config = write_config(tmp_path, f"127.0.0.1:{port}", f"127.0.0.1:{busy}")
        result = subprocess.run(deputy_command("serve", "--config", str(config), "--workers", workers),
                                capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"deputy: metrics.listen: cannot bind 127.0.0.1:{busy}: ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "state").exists()  # refused before any state was made
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
