"""The monitoring kit under deploy/: the alert rules pass `promtool check rules` and their unit
tests (`promtool test rules`), the example Prometheus configuration is valid, the dashboard is
valid JSON whose every query parses as PromQL, and rules and dashboard use only metrics that
docs/metrics.md lists (or etcd's and Prometheus' own)."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess

import yaml

from tests.ops.test_metrics_doc import doc_metrics

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "vxnet.json"
EXTERNAL = {"up", "etcd_server_has_leader"}


def promtool(*args: str, cwd: pathlib.Path = PROM) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool missing: Debian's prometheus package (etc/apt-packages.txt)"
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def used_metrics(exprs: list[str]) -> set[str]:
    names = set()
    for e in exprs:
        for m in re.findall(r"\b(vxnet_\w+|etcd_\w+|up)\b", e):
            names.add(re.sub(r"_(bucket|sum|count)$", "", m))
    return names


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_alert_rules_check_and_unit_tests_pass() -> None:
    out = promtool("check", "rules", "vxnet-alerts.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    out = promtool("test", "rules", "vxnet-alerts.test.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout
    out = promtool("check", "config", "--syntax-only", "prometheus.yml")
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_of_the_issue_exists_and_is_unit_tested() -> None:
    rules = yaml.safe_load((PROM / "vxnet-alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {"VxnetAgentDown", "VxnetAgentBehindStore", "VxnetAgentDrift", "VxnetPortsStuckDown",
            "VxnetApiErrorRate", "VxnetStoreUnavailable", "VxnetEtcdDown"} <= alerts
    tests = yaml.safe_load((PROM / "vxnet-alerts.test.yml").read_text())
    tested = {a["alertname"] for t in tests["tests"] for a in t.get("alert_rule_test", []) if a["exp_alerts"]}
    assert alerts - tested == set(), "alerts without a test that makes them fire"
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    doc = doc_metrics()
    assert sorted(used_metrics(exprs) - set(doc) - EXTERNAL) == []


def test_a_broken_rule_fails_its_unit_test(tmp_path) -> None:
    """The unit tests can fail: loosen one threshold and promtool reports it."""
    rules = (PROM / "vxnet-alerts.yml").read_text()
    assert "> 0.05" in rules
    (tmp_path / "vxnet-alerts.yml").write_text(rules.replace("> 0.05", "> 0.5"))
    shutil.copy(PROM / "vxnet-alerts.test.yml", tmp_path)
    out = promtool("test", "rules", "vxnet-alerts.test.yml", cwd=tmp_path)
    assert out.returncode != 0 and "VxnetApiErrorRate" in out.stdout + out.stderr


def test_dashboard_queries_parse_and_use_documented_metrics(tmp_path) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    # promtool has no PromQL parser of its own: each query becomes a recording rule to check
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": e}
                                                        for i, e in enumerate(exprs)]}]}
    (tmp_path / "dash-rules.yml").write_text(yaml.safe_dump(rules))
    out = promtool("check", "rules", "dash-rules.yml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert sorted(used_metrics(exprs) - set(doc_metrics()) - EXTERNAL) == []
    dash = json.loads(DASHBOARD.read_text())
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
