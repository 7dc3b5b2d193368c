"""Security groups on real packets: `vxnet lab` (server + 3 agents), groups and rules through the API.

Probes are real TCP connections and UDP datagrams (python sockets in the VM namespaces, echo
servers on the other side) and pings:
- each rule kind: CIDR + TCP port range, UDP port, ICMP type, remote group, egress restriction,
  stateless group: the probe that should pass passes, the one that should not is dropped;
  replies of allowed connections pass (conntrack), also when egress allows nothing of them;
- an established TCP connection keeps working across an unrelated rule change (one nft
  transaction, conntrack untouched);
- removing a port from a remote group revokes its access (set element removed), also for the
  connection it had open (its conntrack entries are deleted);
- two projects with the same CIDR, the same addresses and the same TCP 4-tuple at the same time:
  both connections work, and conntrack holds the identical tuple in two zones (= the VNIs).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from tests.root.conftest import Lab, needs_root
from tests.root.helpers import nsexec, ping, wait_for
from vxnet.compute import firewall_model as fwmodel
from vxnet.dataplane.nft_driver import NftDriver
from vxnet.lab import topology

pytestmark = [pytest.mark.root, needs_root]

ECHO_SERVER = r"""
import socket, sys, threading
def tcp(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", port)); s.listen(16)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
def serve(c):
    with c:
        while (d := c.recv(4096)):
            c.sendall(d)
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    while True:
        d, a = s.recvfrom(4096); s.sendto(d, a)
tcps, udps = sys.argv[1].split(","), sys.argv[2].split(",") if len(sys.argv) > 2 else []
for p in tcps:
    threading.Thread(target=tcp, args=(int(p),), daemon=True).start()
for p in udps:
    if p:
        threading.Thread(target=udp, args=(int(p),), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

PROBE = r"""
import socket, sys
kind, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if kind == "tcp":
        c = socket.create_connection((ip, port), timeout=1.0)
        c.settimeout(1.0); c.sendall(b"hi"); ok = c.recv(10) == b"hi"
    else:
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.settimeout(1.0)
        c.sendto(b"hi", (ip, port)); ok = c.recvfrom(10)[0] == b"hi"
except OSError:
    ok = False
print("open" if ok else "closed")
"""

# A long-lived TCP client: one line on stdin -> one echo round trip -> "ok"/"fail" on stdout.
CLIENT = r"""
import socket, sys
src = sys.argv[3] if len(sys.argv) > 3 else None
c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if src:
    ip, port = src.split(":"); c.bind((ip, int(port)))
c.settimeout(2.0); c.connect((sys.argv[1], int(sys.argv[2])))
print("connected", flush=True)
for line in sys.stdin:
    try:
        c.sendall(b"x"); print("ok" if c.recv(10) == b"x" else "fail", flush=True)
    except OSError:
        print("fail", flush=True)
"""


def probe(vm: str, kind: str, ip: str, port: int) -> bool:
    """True when a TCP connection (+ echo) or a UDP echo from VM `vm` to ip:port succeeds."""
    r = nsexec(topology.vm_ns(vm), sys.executable, "-c", PROBE, kind, ip, str(port))
    return r.stdout.strip() == "open"


def host_rules(host: int) -> str:
    return nsexec(topology.host_ns(host), "nft", "-t", "list", "table", "inet", "vxnet_sg").stdout


def rule_loaded(host: int, rule_id: str) -> Callable[[], bool]:
    return lambda: f"vxnet:sg:{rule_id}#" in host_rules(host)


def rule_gone(host: int, rule_id: str) -> Callable[[], bool]:
    return lambda: f"vxnet:sg:{rule_id}#" not in host_rules(host)


class Topo:
    """Servers and clients of the module, and the lab's API."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.procs: list[subprocess.Popen[str]] = []

    def group(self, name: str, stateful: bool = True) -> dict:
        with self.lab.api("alice") as c:
            r = c.post("/security-groups", json={"security_group": {"name": name, "stateful": stateful}})
            assert r.status_code == 201, r.text
            return r.json()["security_group"]

    def add_rule(self, group: dict, **kw: object) -> dict:
        body = {"security_group_id": group["id"], "ethertype": "IPv4", **kw}
        with self.lab.api("alice") as c:
            r = c.post("/security-group-rules", json={"security_group_rule": body})
            assert r.status_code == 201, r.text
            return r.json()["security_group_rule"]

    def del_rule(self, rule_id: str) -> None:
        with self.lab.api("alice") as c:
            assert c.delete(f"/security-group-rules/{rule_id}").status_code == 204

    def port(self, net: dict, ip: str, groups: list[str], user: str = "alice") -> dict:
        with self.lab.api(user) as c:
            r = c.post("/ports", json={"port": {"network_id": net["id"], "fixed_ips": [{"ip_address": ip}],
                                                "security_groups": groups}})
            assert r.status_code == 201, r.text
            return r.json()["port"]

    def serve(self, vm: str, tcp: str, udp: str = "") -> None:
        p = subprocess.Popen(["ip", "netns", "exec", topology.vm_ns(vm), sys.executable, "-c", ECHO_SERVER, tcp, udp],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"

    def client(self, vm: str, ip: str, port: int, src: str | None = None) -> subprocess.Popen[str]:
        args = [ip, str(port)] + ([src] if src else [])
        p = subprocess.Popen(["ip", "netns", "exec", topology.vm_ns(vm), sys.executable, "-c", CLIENT, *args],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "connected"
        return p

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait(5)


def srv_in(t: Topo) -> str:
    """The ingress chain of `srv`'s security profile (stateful, IPv4 only, group srv; the only
    local port of it on h1, so its counters are srv's)."""
    return "in_" + fwmodel.sg_profile(True, False, (t.srv_g["id"],))


def roundtrip(p: subprocess.Popen[str]) -> bool:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write("x\n")
    p.stdin.flush()
    return p.stdout.readline().strip() == "ok"


@pytest.fixture(scope="module")
def topo(lab3: Lab) -> Iterator[Topo]:
    """Server `srv` (h1, group srv), stateless server `st` (h3, group sl), clients c1 (h2, 100.64.10.5,
    groups open + members) and c2 (h3, 100.64.10.50, group open)."""
    t = Topo(lab3)
    net, _ = lab3.network("alice", "100.64.10.0/24", "sg")
    t.net = net
    t.srv_g, t.open_g, t.members_g, t.sl_g = t.group("srv"), t.group("open"), t.group("members"), t.group("sl", False)
    t.add_rule(t.open_g, direction="ingress", remote_ip_prefix="100.64.10.0/24")
    t.srv = t.port(net, "100.64.10.10", [t.srv_g["id"]])
    t.st = t.port(net, "100.64.10.20", [t.sl_g["id"]])
    t.c1 = t.port(net, "100.64.10.5", [t.open_g["id"], t.members_g["id"]])
    t.c2 = t.port(net, "100.64.10.50", [t.open_g["id"]])
    for name, host, p in (("srv", "h1", t.srv), ("st", "h3", t.st), ("c1", "h2", t.c1), ("c2", "h3", t.c2)):
        lab3.vm(name, host, p)
    for p in (t.srv, t.st, t.c1, t.c2):
        lab3.wait_status(p["id"], "ACTIVE")
    t.serve("srv", "22,23,24,8080", "53,54")
    t.serve("st", "22")
    t.serve("c1", "443,444")
    try:
        yield t
    finally:
        t.close()


def test_cidr_port_range_udp_and_icmp_rules(topo: Topo) -> None:
    # Nothing but egress in srv yet: every probe to it is dropped.
    assert not probe("c1", "tcp", "100.64.10.10", 22)
    assert ping("c1", "100.64.10.10", count=1, wait=0.5) == 0
    r_ssh = topo.add_rule(topo.srv_g, direction="ingress", protocol="tcp", port_range_min=22, port_range_max=23,
                          remote_ip_prefix="100.64.10.0/28")
    r_dns = topo.add_rule(topo.srv_g, direction="ingress", protocol="udp", port_range_min=53, port_range_max=53)
    r_ts = topo.add_rule(topo.srv_g, direction="ingress", protocol="icmp", port_range_min=13)   # timestamp only
    wait_for(rule_loaded(1, r_ts["id"]), what="rules on h1")
    assert probe("c1", "tcp", "100.64.10.10", 22) and probe("c1", "tcp", "100.64.10.10", 23)
    assert not probe("c1", "tcp", "100.64.10.10", 24)          # outside the port range
    assert not probe("c2", "tcp", "100.64.10.10", 22)          # 100.64.10.50 is outside 100.64.10.0/28
    assert probe("c2", "udp", "100.64.10.10", 53)              # any source; the reply passes (conntrack)
    assert not probe("c2", "udp", "100.64.10.10", 54)
    assert ping("c1", "100.64.10.10", count=1, wait=0.5) == 0  # echo request is not type 13
    # The kernel's counters name the rules that decided (a SYN per accepted connection).
    counters = NftDriver(topology.host_ns(1)).counters("inet", "vxnet_sg")
    gi, port_in = "gi_" + fwmodel.ident(topo.srv_g["id"]), srv_in(topo)
    assert counters[(gi, f"sg:{r_ssh['id']}")][0] == 2
    assert counters[(gi, f"sg:{r_dns['id']}")][0] == 1
    assert counters[(gi, f"sg:{r_ts['id']}")][0] == 0
    assert counters[(port_in, "default-drop")][0] >= 4
    r_ping = topo.add_rule(topo.srv_g, direction="ingress", protocol="icmp", port_range_min=8, port_range_max=0)
    wait_for(rule_loaded(1, r_ping["id"]), what="icmp rule on h1")
    assert ping("c1", "100.64.10.10", count=2) == 2
    # The rule was added to the group chain by itself: the other rules kept their counters.
    counters = NftDriver(topology.host_ns(1)).counters("inet", "vxnet_sg")
    assert counters[(gi, f"sg:{r_ssh['id']}")][0] == 2
    assert counters[(gi, f"sg:{r_ping['id']}")][0] == 1          # the first echo request; then ct established
    for rid in (r_dns["id"], r_ts["id"], r_ping["id"]):
        topo.del_rule(rid)
    wait_for(rule_gone(1, r_ping["id"]), what="icmp rule removed")
    assert ping("c1", "100.64.10.10", count=1, wait=0.5) == 0
    assert not probe("c2", "udp", "100.64.10.10", 53)


def test_remote_group_membership_follows_ports(topo: Topo) -> None:
    r = topo.add_rule(topo.srv_g, direction="ingress", protocol="tcp", port_range_min=8080, port_range_max=8080,
                      remote_group_id=topo.members_g["id"])
    wait_for(rule_loaded(1, r["id"]), what="remote group rule")
    assert probe("c1", "tcp", "100.64.10.10", 8080)            # c1 is a member
    assert not probe("c2", "tcp", "100.64.10.10", 8080)        # c2 is not
    # c2 joins the group: an element of rg_<members> on h1, no rule rewritten.
    with topo.lab.api("alice") as c:
        assert c.put(f"/ports/{topo.c2['id']}", json={"port": {"security_groups": [
            topo.open_g["id"], topo.members_g["id"]]}}).status_code == 200
    set_name = fwmodel.set_name(topo.members_g["id"])

    def members() -> str:
        return nsexec(topology.host_ns(1), "nft", "list", "set", "inet", "vxnet_sg", set_name).stdout
    wait_for(lambda: "100.64.10.50" in members(), what="c2 in the member set")
    assert probe("c2", "tcp", "100.64.10.10", 8080)
    # c1 leaves the group: its access is revoked, also for the connection it has open (its
    # conntrack entries on h1 are deleted, so its next segment meets the rules again).
    conn = topo.client("c1", "100.64.10.10", 8080)
    assert roundtrip(conn)

    def tracked() -> str:
        return nsexec(topology.host_ns(1), "conntrack", "-L", "-p", "tcp", "-s", "100.64.10.5", "--dport", "8080").stdout
    assert "ESTABLISHED" in tracked()
    with topo.lab.api("alice") as c:
        assert c.put(f"/ports/{topo.c1['id']}", json={"port": {"security_groups": [topo.open_g["id"]]}}).status_code == 200
    wait_for(lambda: "100.64.10.5," not in members() and "100.64.10.5 " not in members(), what="c1 removed")
    wait_for(lambda: "dport=8080" not in tracked(), what="c1's flows forgotten on h1")
    assert not roundtrip(conn)
    assert not probe("c1", "tcp", "100.64.10.10", 8080)
    assert probe("c2", "tcp", "100.64.10.10", 8080)
    topo.del_rule(r["id"])


def test_egress_restriction_and_replies(topo: Topo) -> None:
    r_ssh = next(iter(_rules(topo, topo.srv_g, "ingress", 22)), None)
    assert r_ssh is not None, "the CIDR rule of the first test"
    egress = _rules(topo, topo.srv_g, "egress")
    assert probe("srv", "tcp", "100.64.10.5", 443) and probe("srv", "tcp", "100.64.10.5", 444)
    r443 = topo.add_rule(topo.srv_g, direction="egress", protocol="tcp", port_range_min=443, port_range_max=443,
                         remote_ip_prefix="100.64.10.0/24")
    for rid in egress:
        topo.del_rule(rid)
    wait_for(lambda: all(rule_gone(1, rid)() for rid in egress) and rule_loaded(1, r443["id"])(), what="egress")
    assert probe("srv", "tcp", "100.64.10.5", 443)
    assert not probe("srv", "tcp", "100.64.10.5", 444)         # egress allows 443 only
    assert ping("srv", "100.64.10.5", count=1, wait=0.5) == 0
    # Replies of an allowed inbound connection leave although no egress rule matches them.
    assert probe("c1", "tcp", "100.64.10.10", 22)
    topo.add_rule(topo.srv_g, direction="egress")               # back to "egress any"
    topo.del_rule(r443["id"])
    wait_for(rule_gone(1, r443["id"]), what="egress any back")
    assert probe("srv", "tcp", "100.64.10.5", 444)


def _rules(topo: Topo, group: dict, direction: str, port: int | None = None) -> list[str]:
    with topo.lab.api("alice") as c:
        rules = c.get("/security-group-rules", params={"security_group_id": group["id"]}).json()["security_group_rules"]
    return [r["id"] for r in rules if r["direction"] == direction and r["ethertype"] == "IPv4"
            and (port is None or r["port_range_min"] == port)]


def test_established_connection_survives_unrelated_rule_change(topo: Topo) -> None:
    conn = topo.client("c1", "100.64.10.10", 22)
    assert roundtrip(conn)
    r = topo.add_rule(topo.srv_g, direction="ingress", protocol="tcp", port_range_min=9999, port_range_max=9999)
    wait_for(rule_loaded(1, r["id"]), what="unrelated rule")
    assert roundtrip(conn)
    topo.del_rule(r["id"])
    wait_for(rule_gone(1, r["id"]), what="unrelated rule removed")
    assert roundtrip(conn)
    # A new port on the server's host rewrites the dispatch maps in the same kind of transaction.
    extra = topo.port(topo.net, "100.64.10.11", [topo.srv_g["id"]])
    topo.lab.vm("srv2", "h1", extra)
    topo.lab.wait_status(extra["id"], "ACTIVE")
    assert roundtrip(conn)
    conn.stdin.close()   # type: ignore[union-attr]


def test_stateless_group_needs_rules_both_ways(topo: Topo) -> None:
    # sl has Neutron's default egress rules (any) and now ingress tcp 22: replies leave by rule.
    r_in = topo.add_rule(topo.sl_g, direction="ingress", protocol="tcp", port_range_min=22, port_range_max=22)
    wait_for(rule_loaded(3, r_in["id"]), what="stateless ingress")
    assert probe("c1", "tcp", "100.64.10.20", 22)
    egress = _rules(topo, topo.sl_g, "egress")
    for rid in egress:
        topo.del_rule(rid)
    wait_for(lambda: all(rule_gone(3, rid)() for rid in egress), what="stateless egress removed")
    assert not probe("c1", "tcp", "100.64.10.20", 22)          # no conntrack: the SYN-ACK has no rule
    zone = nsexec(topology.host_ns(3), "nft", "list", "chain", "inet", "vxnet_sg", "zone").stdout
    assert "notrack" in zone
    r_out = topo.add_rule(topo.sl_g, direction="egress", protocol="tcp", port_range_min=1024, port_range_max=65535)
    wait_for(rule_loaded(3, r_out["id"]), what="stateless egress to ephemeral ports")
    assert probe("c1", "tcp", "100.64.10.20", 22)
    r = nsexec(topology.host_ns(3), "conntrack", "-L", "-s", "100.64.10.5", "-d", "100.64.10.20")
    assert "dport=22" not in r.stdout, "a stateless port's traffic was tracked"


def test_same_tuple_in_two_projects_two_zones(lab3: Lab) -> None:
    na, _ = lab3.network("alice", "192.0.2.0/24", "za")
    nb, _ = lab3.network("bob", "192.0.2.0/24", "zb")
    t = Topo(lab3)
    try:
        ports = {}
        for user, n, tag in (("alice", na, "a"), ("bob", nb, "b")):
            with lab3.api(user) as c:
                for i, host in ((11, "h1"), (12, "h2")):
                    r = c.post("/ports", json={"port": {"network_id": n["id"], "fixed_ips": [{"ip_address": f"192.0.2.{i}"}]}})
                    assert r.status_code == 201, r.text
                    ports[f"z{tag}{i}"] = r.json()["port"]
                    lab3.vm(f"z{tag}{i}", host, ports[f"z{tag}{i}"])
        for p in ports.values():
            lab3.wait_status(p["id"], "ACTIVE")
        t.serve("za12", "22")
        t.serve("zb12", "22")
        # The same 4-tuple 192.0.2.11:40000 -> 192.0.2.12:22 in both projects at the same time.
        ca = t.client("za11", "192.0.2.12", 22, "192.0.2.11:40000")
        cb = t.client("zb11", "192.0.2.12", 22, "192.0.2.11:40000")
        assert roundtrip(ca) and roundtrip(cb) and roundtrip(ca)
        with lab3.api("admin") as c:
            vni_a = c.get(f"/networks/{na['id']}").json()["network"]["provider:segmentation_id"]
            vni_b = c.get(f"/networks/{nb['id']}").json()["network"]["provider:segmentation_id"]
        for host in (1, 2):
            out = nsexec(topology.host_ns(host), "conntrack", "-L", "-p", "tcp", "--sport", "40000", "--dport", "22").stdout
            lines = [ln for ln in out.splitlines() if "src=192.0.2.11 dst=192.0.2.12 sport=40000 dport=22" in ln]
            zones = sorted(int(ln.split("zone=")[1].split()[0]) for ln in lines if "zone=" in ln)
            assert zones == sorted([vni_a, vni_b]), out
            assert all("ESTABLISHED" in ln for ln in lines), out
    finally:
        t.close()


def test_restarted_agent_adopts_its_rules_counters_kept(topo: Topo) -> None:
    """A restarted agent reads its tables back and recognises every rule (comment hashes): no
    reload, so no counter restarts and no packet meets a half-built ruleset."""
    import os

    from vxnet.lab import lab as vlab

    port_in = srv_in(topo)
    assert not probe("c2", "tcp", "100.64.10.10", 24)
    before = NftDriver(topology.host_ns(1)).counters("inet", "vxnet_sg")[(port_in, "default-drop")][0]
    assert before > 0
    st = vlab.load_state()
    log_path = os.path.join(vlab.state_dir(), "agent-h1.log")
    offset = os.path.getsize(log_path)
    vlab.stop_agent(st, "h1")
    vlab.start_agent(st, "h1")

    def adopted() -> bool:
        with open(log_path) as f:
            f.seek(offset)
            return "firewall rules adopted from the kernel (nothing reloaded)" in f.read()
    wait_for(adopted, timeout=30, what="the restarted agent's adoption pass")
    after = NftDriver(topology.host_ns(1)).counters("inet", "vxnet_sg")[(port_in, "default-drop")][0]
    assert after >= before
    assert probe("c1", "tcp", "100.64.10.10", 22)
    with open(log_path) as f:
        f.seek(offset)
        assert "nft_full" not in f.read()
