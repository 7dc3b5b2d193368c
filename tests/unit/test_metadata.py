"""The metadata service's pure parts and its proxy over real loopback HTTP.

- `sign` is Nova's signature (a vector computed with `openssl dgst -sha256 -hmac`);
  `upstream_headers` sets the four identifying headers from the port and drops the VM's own
  versions of them.
- `compute_metadata`: which ports are served, unique proxy addresses (never 169.254.169.254,
  not moved by another port's arrival), the L2 part, the steering table.
- `MetadataProxy` against a recording fake Nova: the signed headers arrive; unknown peer and
  missing device_id -> 404; Nova refusing -> 502, Nova silent -> 503 after the timeout; no
  settings -> 503; 403 from Nova -> 403; a VM holding connections open is capped.
- `load_metadata`: the secret must be in a private file.
"""

from __future__ import annotations

import http.client
import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from vxnet.agent.metadata_proxy import MetadataProxy
from vxnet.compute import metadata as m
from vxnet.config import ConfigError, MetadataSettings, load_metadata

NET = "aaaaaaaa-0000-4000-8000-000000000001"
SUB = "5aaaaaaa-0000-4000-8000-000000000001"


def port(pid: str, ip: str, host: str = "h1", **kw: object) -> dict:
    return {"id": pid, "network_id": NET, "binding:host_id": host, "admin_state_up": True,
            "mac_address": "02:00:00:00:01:" + ip.rsplit(".", 1)[1][-2:].zfill(2), "device_owner": "compute:nova",
            "device_id": "inst-" + pid[:4], "project_id": "proj-1",
            "fixed_ips": [{"subnet_id": SUB, "ip_address": ip}], **kw}


def view(ports: list[dict]) -> dict:
    return {"networks": {NET: {"id": NET, "provider:network_type": "vxlan", "provider:segmentation_id": 7, "mtu": 1450}},
            "subnets": {SUB: {"id": SUB, "network_id": NET, "cidr": "192.0.2.0/24", "ip_version": 4}},
            "ports": {p["id"]: p for p in ports}, "hosts": {}}


# ---------------------------------------------------------------------------------- headers
def test_signature_is_novas_hmac_sha256() -> None:
    assert m.sign("s3cret", "i-123") == "d985d433d86723609e6b4619757c1d8643057c56d6a2944ee36c8d79b8a97ac0"
    assert m.sign("other", "i-123") != m.sign("s3cret", "i-123")


def test_upstream_headers_come_from_the_port_never_from_the_vm() -> None:
    p = m.MetaPort("port-1", NET, "tapport-1", "02:00:00:00:01:11", "192.0.2.11", "169.254.1.1", "inst-1", "proj-1")
    vm = [("Accept", "*/*"), ("X-Instance-ID", "inst-victim"), ("x-tenant-id", "proj-victim"),
          ("X-Forwarded-For", "192.0.2.99"), ("X-Instance-ID-Signature", "forged"), ("Host", "169.254.169.254"),
          ("Connection", "keep-alive")]
    got = m.upstream_headers(p, "s3cret", vm)
    assert got == [("Accept", "*/*"), ("X-Forwarded-For", "192.0.2.11"), ("X-Instance-ID", "inst-1"),
                   ("X-Tenant-ID", "proj-1"), ("X-Instance-ID-Signature", m.sign("s3cret", "inst-1"))]


# ---------------------------------------------------------------------------------- compute
def test_served_ports_and_their_proxy_addresses() -> None:
    a, b = port("p1000000-a", "192.0.2.11"), port("p2000000-b", "192.0.2.12", device_id="")
    others = [port("p3000000-c", "192.0.2.13", host="h2"), port("p4000000-d", "192.0.2.14", admin_state_up=False),
              port("p5000000-e", "192.0.2.1", device_owner="network:router_interface"),
              dict(port("p6000000-f", "192.0.2.16"), fixed_ips=[{"subnet_id": SUB, "ip_address": "2001:db8::6"}])]
    st = m.compute_metadata(view([a, b, *others]), "h1")
    assert [p.port_id for p in st.ports] == [a["id"], b["id"]]          # the others are not served
    p1 = st.ports[0]
    assert (p1.device, p1.fixed_ip, p1.device_id, p1.project_id) == ("tapp1000000-a", "192.0.2.11", "inst-p100",
                                                                      "proj-1")
    assert st.ports[1].device_id == ""                                   # steered, answered 404
    ips = [p.proxy_ip for p in st.ports]
    assert len(set(ips)) == 2 and m.METADATA_IP not in ips and all(ip.startswith("169.254.") for ip in ips)
    assert st.netns == "vxm-h1" and len(st.networks) == 1
    n = st.networks[0]
    assert (n.port, n.device, n.mac[:3]) == ("vxpm" + NET[:11], "vxmd" + NET[:11], "0e:")
    assert {f.mac for f in st.l2.fdb} == {n.mac} and {(x.ip, x.mac) for x in st.l2.neighs} == {(m.METADATA_IP, n.mac)}
    # Another port arriving does not move the first one's address (no collision here).
    st2 = m.compute_metadata(view([a, b, port("p0000000-z", "192.0.2.20")]), "h1")
    assert {p.port_id: p.proxy_ip for p in st2.ports}[a["id"]] == p1.proxy_ip
    assert m.compute_metadata(view([others[0]]), "h1") == m.MetadataState()


def test_proxy_addresses_stay_unique_under_collisions() -> None:
    ids = [f"port-{i:05d}" for i in range(3000)]
    addrs = m.proxy_ips(ids)
    assert len(set(addrs.values())) == 3000 and m.METADATA_IP not in addrs.values()


def test_steering_table_keys_everything_by_the_ingress_device() -> None:
    st = m.compute_metadata(view([port("p1000000-a", "192.0.2.11")]), "h1")
    p = st.ports[0]
    text = m.nft_script(st)
    assert f'"tapp1000000-a" : {st.networks[0].mac}' in text                 # steer by tap
    assert f'"tapp1000000-a" : {p.proxy_ip}' in text                          # source by tap
    assert f'"{st.networks[0].port}" . {p.proxy_ip} : 192.0.2.11' in text      # replies back to the fixed IP
    assert "ip saddr set iifname map @src" in text and 'oifname "vxpm*" counter drop' in text
    assert m.nft_script(m.MetadataState()) == "table bridge vxnet_meta\ndelete table bridge vxnet_meta\n"


def test_steering_changes_only_the_elements_that_changed() -> None:
    a, b = port("p1000000-a", "192.0.2.11"), port("p2000000-b", "192.0.2.12")
    one, two = (m.steer_elements(m.compute_metadata(view(ps), "h1")) for ps in ([a], [a, b]))
    up = m.steer_script(one, two)                  # a port-up: one element per map, no table rebuild
    assert "delete table" not in up and up.count("add map") == 3 and "tapp1000000-a" not in up
    # added as the maps' declarations with elements: libnftables needs no cache of the ruleset
    assert "add map bridge vxnet_meta back { type ifname . ipv4_addr : ipv4_addr; elements = {" in up
    down = m.steer_script(two, one)
    assert down.count("delete element") == 3 and "add element" not in down and "tapp1000000-a" not in down
    assert m.steer_script(two, two) == ""
    moved = m.steer_elements(m.compute_metadata(view([a, dict(b, fixed_ips=[{"subnet_id": SUB,
                                                                             "ip_address": "192.0.2.99"}])]), "h1"))
    change = m.steer_script(two, moved)            # a changed value: its key is deleted, then added
    assert change.splitlines()[0].startswith("delete element bridge vxnet_meta back") and ": 192.0.2.99" in change
    assert m.steer_script(None, two).startswith("table bridge vxnet_meta\ndelete table")      # unknown: whole
    assert m.steer_script(two, m.steer_elements(m.MetadataState())).endswith("delete table bridge vxnet_meta\n")


# ---------------------------------------------------------------------------------- the proxy
class FakeNova:
    """A recording Nova metadata API on loopback; `mode`: ok | forbidden | silent."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.mode = "ok"
        self.release = threading.Event()
        nova = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                nova.seen.append(dict(self.headers.items()) | {"path": self.path})
                if nova.mode == "silent":
                    nova.release.wait(10)
                code = 403 if nova.mode == "forbidden" else 200
                body = b'{"uuid": "inst-1"}'
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def nova() -> Iterator[FakeNova]:
    n = FakeNova()
    yield n
    n.close()


def _proxy(settings: MetadataSettings | None, device_id: str = "inst-1") -> tuple[MetadataProxy, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    proxy = MetadataProxy(settings)
    # Loopback connections come from 127.0.0.1: that is the "proxy address" of this port.
    proxy.set_table({"127.0.0.1": m.MetaPort("port-1", NET, "tap1", "02:00:00:00:01:11", "192.0.2.11", "127.0.0.1",
                                              device_id, "proj-1")})
    proxy.start(s)
    return proxy, s.getsockname()[1]


def _get(port: int, path: str = "/openstack/latest/meta_data.json",
         headers: dict[str, str] | None = None) -> tuple[int, bytes, float]:
    t0 = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    c.request("GET", path, headers=headers or {})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body, time.monotonic() - t0


def test_proxy_sends_the_signed_headers(nova: FakeNova) -> None:
    proxy, port = _proxy(MetadataSettings(nova.url, "s3cret", 2.0))
    try:
        status, body, _ = _get(port, headers={"X-Instance-ID": "inst-victim", "X-Instance-ID-Signature": "x"})
        assert (status, body) == (200, b'{"uuid": "inst-1"}')
        h = nova.seen[-1]
        assert h["path"] == "/openstack/latest/meta_data.json"
        assert (h["X-Instance-ID"], h["X-Tenant-ID"], h["X-Forwarded-For"]) == ("inst-1", "proj-1", "192.0.2.11")
        assert h["X-Instance-ID-Signature"] == m.sign("s3cret", "inst-1")
        nova.mode = "forbidden"
        assert _get(port)[0] == 403
    finally:
        proxy.stop()


def test_proxy_errors_never_hang(nova: FakeNova) -> None:
    proxy, port = _proxy(None)
    try:
        assert _get(port)[0] == 503                           # not configured
    finally:
        proxy.stop()
    proxy, port = _proxy(MetadataSettings(nova.url, "s3cret", 2.0))
    try:
        for raw in (b"GET /x HTTP/1.1\r\nContent-Length: abc\r\n\r\n", b"GET http://elsewhere/ HTTP/1.1\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(raw)
                assert s.recv(100).startswith(b"HTTP/1.1 400 "), raw
        assert nova.seen == []
    finally:
        proxy.stop()
    proxy, port = _proxy(MetadataSettings(nova.url, "s3cret", 2.0), device_id="")
    try:
        assert _get(port)[0] == 404 and nova.seen == []      # no instance: Nova is not asked
        proxy.set_table({})
        assert _get(port)[0] == 404                           # unknown peer
    finally:
        proxy.stop()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"       # nothing listens there
    proxy, port = _proxy(MetadataSettings(dead, "s3cret", 2.0))
    try:
        status, _, took = _get(port)
        assert status == 502 and took < 2
    finally:
        proxy.stop()
    nova.mode = "silent"
    proxy, port = _proxy(MetadataSettings(nova.url, "s3cret", 1.0))
    try:
        status, _, took = _get(port)
        assert status == 503 and 0.9 < took < 5
    finally:
        nova.release.set()
        proxy.stop()


def test_a_vm_holding_connections_open_is_capped(nova: FakeNova) -> None:
    from vxnet.agent import metadata_proxy as mp

    proxy, port = _proxy(MetadataSettings(nova.url, "s3cret", 2.0))
    idle = []
    try:
        for _ in range(mp.MAX_PER_PORT):                   # connections that never send a request
            idle.append(socket.create_connection(("127.0.0.1", port)))
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", port))
        extra.settimeout(5)
        assert extra.recv(10) == b""                         # closed at once, not left to hang
        extra.close()
        for s in idle:
            s.close()
        idle.clear()
        # The slots come back once the proxy has seen the closes: until then a new connection is
        # still closed at once (under load that can take a while, so bound it generously).
        def served() -> bool:
            try:
                return _get(port)[0] == 200
            except (http.client.RemoteDisconnected, ConnectionResetError):
                return False
        deadline = time.monotonic() + 30
        while not served():
            assert time.monotonic() < deadline, "the slots never came back"
            time.sleep(0.05)
    finally:
        for s in idle:
            s.close()
        proxy.stop()


# ---------------------------------------------------------------------------------- config
def test_metadata_config_needs_a_private_secret(tmp_path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[metadata]\nnova_metadata_url = "http://192.0.2.5:8775"\nshared_secret = "abc"\n')
    os.chmod(cfg, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_metadata(str(cfg))
    os.chmod(cfg, 0o600)
    assert load_metadata(str(cfg)) == MetadataSettings("http://192.0.2.5:8775", "abc", 10.0)
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    os.chmod(secret, 0o640)
    cfg.write_text(f'[metadata]\nnova_metadata_url = "http://192.0.2.5:8775/"\nshared_secret_file = "{secret}"\n'
                   "timeout = 2\n")
    os.chmod(cfg, 0o644)                       # the file holds no secret itself: may be readable
    with pytest.raises(ConfigError, match="chmod 600"):
        load_metadata(str(cfg))
    os.chmod(secret, 0o600)
    assert load_metadata(str(cfg)) == MetadataSettings("http://192.0.2.5:8775", "from-file", 2.0)
    assert repr(load_metadata(str(cfg))).count("from-file") == 0           # never logged
    for bad in ('nova_metadata_url = "ftp://x"\nshared_secret_file = "/x"\n',
                'nova_metadata_url = "http://x"\n', 'nova_metadata_url = "http://x"\nshared_secret_file = "/x"\nfoo = 1\n'):
        cfg.write_text("[metadata]\n" + bad)
        with pytest.raises(ConfigError):
            load_metadata(str(cfg))
    cfg.write_text("[agent]\nlog_level = \"info\"\n")
    assert load_metadata(str(cfg)) is None
