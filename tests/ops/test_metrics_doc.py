"""docs/metrics.md lists every metric of the server and the agent, with its type and labels.

The code's metrics are found two ways: by reading every module for prometheus_client metric
definitions (so a metric of a rarely-run path counts too), and by scraping a live server and the
agent's registry (so a metric defined some other way cannot hide). A metric in the code but not
in the doc fails, and so does a documented one the code no longer has, or a type or label set
that differs."""

from __future__ import annotations

import ast
import pathlib
import re

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServerHandle
from tests.support import http

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "metrics.md"
KINDS = {"Counter": "counter", "Gauge": "gauge", "Histogram": "histogram", "Summary": "summary", "Info": "info",
         "Enum": "stateset", "CounterMetricFamily": "counter", "GaugeMetricFamily": "gauge",
         "HistogramMetricFamily": "histogram", "SummaryMetricFamily": "summary", "InfoMetricFamily": "info"}


def exposed(name: str, kind: str) -> str:
    """The family name Prometheus sees (prometheus_client adds these suffixes)."""
    if kind == "counter":
        return name.removesuffix("_total") + "_total"
    if kind == "info":
        return name.removesuffix("_info") + "_info"
    return name


def _prometheus_names(tree: ast.Module) -> set[str]:
    """Names bound to prometheus_client's metric classes in one module."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prometheus_client"):
            names |= {a.asname or a.name for a in node.names if a.name in KINDS}
    return names


def code_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """{exposed name: (type, labels)} of every metric defined in src/vxnet."""
    found: dict[str, tuple[str, frozenset[str]]] = {}
    for path in sorted((ROOT / "src" / "vxnet").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        local = _prometheus_names(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in local):
                continue
            kind = KINDS[node.func.id]
            first = node.args[0] if node.args else None
            assert isinstance(first, ast.Constant) and isinstance(first.value, str), \
                f"{path}:{node.lineno}: a metric name must be a literal (so this check can see it)"
            labels_node = node.args[2] if len(node.args) > 2 else next(
                (k.value for k in node.keywords if k.arg in ("labelnames", "labels")), None)
            labels: frozenset[str] = frozenset()
            if labels_node is not None:
                assert isinstance(labels_node, (ast.List, ast.Tuple)), f"{path}:{node.lineno}: labels must be literal"
                labels = frozenset(ast.literal_eval(labels_node))
            name = exposed(first.value, kind)
            assert name not in found or found[name] == (kind, labels), f"{name} defined twice, differently"
            found[name] = (kind, labels)
    return found


def doc_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """{name: (type, labels)} from the tables of docs/metrics.md."""
    rows: dict[str, tuple[str, frozenset[str]]] = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\|\s*`(\w+)`\s*\|\s*(\w+)\s*\|([^|]*)\|\s*\S", line)
        if m and m.group(2) in set(KINDS.values()):
            assert m.group(1) not in rows, f"{m.group(1)} documented twice"
            rows[m.group(1)] = (m.group(2), frozenset(re.findall(r"`(\w+)`", m.group(3))))
    return rows


def test_every_metric_in_the_code_is_documented_with_its_type_and_labels() -> None:
    code, doc = code_metrics(), doc_metrics()
    assert len(code) >= 20  # the scan sees the metrics (a broken scan must not pass)
    assert sorted(set(code) - set(doc)) == [], "metrics missing from docs/metrics.md"
    assert sorted(set(doc) - set(code)) == [], "docs/metrics.md lists metrics the code does not have"
    wrong = {n: (code[n], doc[n]) for n in code if code[n] != doc[n]}
    assert wrong == {}, "type or labels differ (code, doc)"


def test_a_live_server_and_agent_expose_only_documented_metrics(server: ServerHandle) -> None:
    doc = doc_metrics()
    text = http.get(server.url + "/metrics", headers={"X-Auth-Token": server.token("admin")}, timeout=10).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # prometheus_client also writes a `<name>_created` sample per counter and histogram
    served = {exposed(n, f.type) for n, f in families.items() if not (n.endswith("_created") and n[:-8] in families)}
    expected_server = {"vxnet_api_requests_total", "vxnet_store_revision", "vxnet_store_up", "vxnet_agents",
                       "vxnet_ports", "vxnet_view_streams"}
    assert expected_server <= served
    assert sorted(n for n in served if n not in doc) == []
    up = families["vxnet_store_up"].samples
    assert [s.value for s in up] == [1.0]

    from prometheus_client import REGISTRY

    import vxnet.agent.metrics  # the agent's metrics live in the default registry
    import vxnet.dataplane.dhcp_driver  # noqa: F401

    agent = {exposed(f.name, f.type) for f in REGISTRY.collect() if f.name.startswith("vxnet_")}
    assert {"vxnet_agent_applied_revision", "vxnet_agent_drift_repairs_total"} <= agent
    assert sorted(n for n in agent if n not in doc) == []
