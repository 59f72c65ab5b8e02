"""deploy/: the alert rules under `promtool test rules`, the systemd unit under `systemd-analyze verify` and its
notify protocol spoken by a real `nginxctl watch`, and every dashboard query and alert expression evaluated by
a real Prometheus scraping a real `nginxctl watch` against a real nginx."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import free_port, terminate, wait_for, who, write_inventory

ROOT = Path(__file__).parent.parent
RULES = ROOT / "deploy" / "prometheus" / "nginxctl.rules.yml"
RULE_TESTS = Path(__file__).parent / "promtool" / "nginxctl.rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "nginxctl.json"
UNIT = ROOT / "deploy" / "systemd" / "nginxctl-watch.service"


def tool(name: str) -> str:
    path = shutil.which(name) or f"/usr/bin/{name}"
    assert os.access(path, os.X_OK), f"{name} is missing: run scripts/setup.sh (it installs it)"
    return path


def alerts() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]


# -- alert rules ------------------------------------------------------------------------------------------

def test_the_alert_rules_pass_promtool_check_and_their_unit_tests():
    check = subprocess.run([tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run([tool("promtool"), "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                           capture_output=True, text=True)
    assert tests.returncode == 0 and "SUCCESS" in tests.stdout, tests.stdout + tests.stderr


def test_every_alert_is_tested_firing_and_quiet():
    cases: dict[str, set[bool]] = {}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], set()).add(bool(case["exp_alerts"]))
    assert {a["alert"]: {True, False} for a in alerts()} == cases


def test_the_rules_assume_job_nginxctl_everywhere():
    for rule in alerts():
        selectors = re.findall(r"\w+\{([^}]*)\}", rule["expr"])
        assert selectors and all('job="nginxctl"' in s for s in selectors), rule["alert"]


# -- the systemd unit -----------------------------------------------------------------------------------------

def test_the_systemd_unit_verifies(tmp_path):
    """`systemd-analyze verify` checks the unit's syntax, its options and that ExecStart= is executable: the
    unit's /usr/local/bin/nginxctl is pointed at the nginxctl under test for that (nothing else changes)."""
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/nginxctl watch " in text
    nginxctl = shutil.which("nginxctl")
    assert nginxctl, "nginxctl is not on PATH (run the tests with the venv first on PATH, as scripts/test.sh does)"
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace("/usr/local/bin/nginxctl", nginxctl))
    verify = subprocess.run([tool("systemd-analyze"), "verify", str(unit)], capture_output=True, text=True)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    options = dict(line.split("=", 1) for line in text.splitlines() if re.match(r"^\w+=", line))
    assert options["Type"] == "notify" and options["Restart"] == "on-failure"
    assert options["CapabilityBoundingSet"] == "CAP_SYS_PTRACE"
    assert "ProtectProc" not in options and "PrivateUsers" not in options  # /proc and the host's PIDs stay


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    try:
        yield sock
    finally:
        sock.close()


def received(sock: socket.socket, wanted: str, timeout: float = 30.0) -> list[str]:
    """The datagrams received until one equals `wanted` (fails after `timeout`)."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while wanted not in got:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {wanted} within {timeout}s; got {got}"
        sock.settimeout(remaining)
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return got


def test_watch_tells_systemd_it_is_ready_when_the_loop_runs_even_with_etcd_down(lb, tmp_path, notify_socket):
    """READY=1 before any apply (etcd, a discovery source, does not answer: the loop waits for it), then
    WATCHDOG=1 at the watchdog's pace, STOPPING=1 on SIGTERM, exit 0: Type=notify spoken for real."""
    port, g = lb.group([], discover={"etcd": "/services/pool/"})
    g.pop("servers")
    lb.write({"pool": g}, discovery={"etcd": {"endpoints": [f"http://127.0.0.1:{free_port()}"]}})
    log = tmp_path / "watch.log"
    env = {**os.environ, "NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "400000"}
    env.pop("WATCHDOG_PID", None)
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "nginxctl", "watch", "-i", str(lb.inventory),
                                 "--log-format", "json"], stdout=subprocess.DEVNULL, stderr=out, env=env, cwd="/")
    try:
        assert received(notify_socket, "READY=1")[0] == "READY=1"
        assert received(notify_socket, "WATCHDOG=1")
        wait_for(lambda: '"event": "wait"' in log.read_text(), 30, "watch did not wait for etcd")
        events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
        assert "reload" not in events and "in-sync" not in events  # ready, and nothing applied yet
        proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in received(notify_socket, "STOPPING=1")
        assert proc.wait(30) == 0
    finally:
        terminate(proc)


# -- a real Prometheus ------------------------------------------------------------------------------------------

class Prometheus:
    """Debian's prometheus on 127.0.0.1, a temp data dir, scraping `targets` as job "nginxctl" every second,
    with the alert rules loaded."""

    def __init__(self, tmp: Path, targets: list[str]) -> None:
        self.port = free_port()
        config = tmp / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "nginxctl", "static_configs": [{"targets": targets}]}]}))
        self.log = (tmp / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp / 'prometheus-data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self.log, stderr=self.log)

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # a query that does not parse: 400 with the error in the body
            return json.loads(exc.read())

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.api("query", query=expr)
        assert answer["status"] == "success", (expr, answer)
        return list(answer["data"]["result"])

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"prometheus exited ({self.proc.returncode}); see {self.log.name}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        terminate(self.proc, 30)
        self.log.close()


def dashboard_queries() -> list[str]:
    """Every PromQL query of the dashboard: its panels' targets and its template variables' (the inner query
    of label_values(QUERY, label)), with the template variables replaced as Grafana would for "All"."""
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*), *\w+\)", var["query"]["query"])
            assert inner, var["query"]
            exprs.append(inner.group(1))
    return [e.replace("$__rate_interval", "1m").replace("$instance", ".*").replace("$group", ".*") for e in exprs]


def test_the_dashboard_covers_what_operators_watch():
    titles = [p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]]
    exprs = " ".join(dashboard_queries())
    assert {"Reloads by result", "Change to verified reload (quantiles)", "Servers by state and source, per group",
            "Pending changes", "Health checks by result"} <= set(titles)
    assert "histogram_quantile(0.99, sum by (le) (rate(nginxctl_change_to_reload_seconds_bucket" in exprs
    assert "rate(nginxctl_pending_changes" not in exprs  # a gauge is never rate()d


def test_a_real_prometheus_scrapes_watch_and_every_dashboard_query_and_alert_evaluates(lb, backends, tmp_path):
    from helpers import Watch

    a, b = backends("A"), backends("B")
    port, g = lb.group([a.address], health_check={"interval": "500ms", "timeout": "200ms"})
    lb.write({"pool": g})
    watch = Watch(lb.inventory, "--quiet-period", "200ms")
    prometheus = Prometheus(tmp_path, [f"127.0.0.1:{watch.metrics_port}"])
    try:
        watch.reload()
        wait_for(prometheus.ready, 60, "prometheus not ready")
        wait_for(lambda: [r["value"][1] for r in prometheus.query('up{job="nginxctl"}')] == ["1"], 60,
                 "prometheus did not scrape the watch")
        # a change after the first scrape: the latency histogram and the reload counter move under Prometheus's eyes
        write_inventory(lb.inventory, {**yaml.safe_load(lb.inventory.read_text()),
                                       "upstreams": {"pool": {**g, "servers": [a.address, b.address]}}})
        watch.reload()
        assert {who(port) for _ in range(4)} == {"A", "B"}
        wait_for(lambda: bool(prometheus.query('increase(nginxctl_reloads_total{result="ok"}[1m]) > 0')), 60,
                 "prometheus did not see the reload")
        wait_for(lambda: bool(prometheus.query('nginxctl_health_checks_total{result="pass"} > 1')), 60,
                 "prometheus did not see the health checks")
        for expr in dashboard_queries():
            assert prometheus.query(expr), f"no series for the dashboard query {expr}"
        for rule in alerts():
            assert prometheus.query(rule["expr"]) == [], f"{rule['alert']} fires on a healthy controller"
        loaded = prometheus.api("rules")["data"]["groups"]
        assert {r["name"] for grp in loaded for r in grp["rules"]} == {r["alert"] for r in alerts()}
        assert all(r["health"] in ("ok", "unknown") for grp in loaded for r in grp["rules"]), loaded
    finally:
        prometheus.stop()
        watch.stop()
