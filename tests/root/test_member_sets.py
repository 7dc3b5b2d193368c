"""Remote-group member sets in the kernel (compute/firewall.py `_member_set`,
dataplane/nft_driver.py `diff_table`): a group whose members are plain addresses is a plain
(hash) set, one with a prefix member an interval set; a member change of either kind is one
element command, and a change of kind re-makes the set in the same transaction (its users
flushed before and refilled after) without touching the table's other rules. Real nftables in
a lab host namespace, read back with `nft list`. Also what makes the driver read its tables back
and replace them: another program's commit (the ledger), a base chain's changed policy."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.root.conftest import needs_root
from tests.root.helpers import nsexec
from vxnet.compute.firewall import compute_firewall, set_name
from vxnet.dataplane.nft_driver import NftDriver
from vxnet.lab import topology

pytestmark = needs_root

NET = "aaaaaaaa-0000-4000-8000-000000000001"
G1 = "11111111-0000-4000-8000-000000000001"
G2 = "22222222-0000-4000-8000-000000000002"


def _port(pid: str, ip: str, host: str, group: str, pairs: list[dict] | None = None) -> dict:
    last = int(ip.split(".")[-1])
    return {"id": pid, "network_id": NET, "binding:host_id": host, "mac_address": f"02:00:00:00:00:{last:02x}",
            "fixed_ips": [{"subnet_id": "s", "ip_address": ip}], "security_groups": [group],
            "port_security_enabled": True, "device_owner": "compute:nova", "allowed_address_pairs": pairs or []}


def _view(pair: bool, members: int = 2) -> dict:
    ports = [_port("p1000000-0000-4000-8000-000000000001", "192.0.2.11", "h1", G1)]
    ports += [_port(f"p2{i:06d}-0000-4000-8000-000000000002", f"192.0.2.{20 + 2 * i}", "h2", G2,
                    [{"ip_address": "203.0.113.0/24", "mac_address": "02:00:00:00:01:16"}] if pair and i == 0 else None)
              for i in range(members)]
    rules = [{"id": "r-group", "security_group_id": G1, "direction": "ingress", "ethertype": "IPv4",
              "protocol": None, "port_range_min": None, "port_range_max": None, "remote_ip_prefix": None,
              "remote_group_id": G2},
             {"id": "r-egress", "security_group_id": G1, "direction": "egress", "ethertype": "IPv4",
              "protocol": None, "port_range_min": None, "port_range_max": None, "remote_ip_prefix": None,
              "remote_group_id": None}]
    return {"networks": {NET: {"id": NET, "provider:network_type": "vxlan", "provider:segmentation_id": 1001}},
            "ports": {p["id"]: p for p in ports},
            "security_groups": {G1: {"id": G1, "stateful": True}, G2: {"id": G2, "stateful": True}},
            "security_group_rules": {r["id"]: r for r in rules}}


@pytest.fixture
def ns(underlay3: list[str]) -> Iterator[str]:
    yield topology.host_ns(1)


def _set(ns: str) -> tuple[set[str], frozenset[str]]:
    """(flags, elements) of G2's member set as the kernel lists it."""
    out = json.loads(nsexec(ns, "nft", "-j", "list", "set", "inet", "vxnet_sg", set_name(G2)).stdout)
    s = next(x["set"] for x in out["nftables"] if "set" in x)
    elems = s.get("elem", [])
    norm = frozenset(e if isinstance(e, str) else f"{e['prefix']['addr']}/{e['prefix']['len']}" for e in elems)
    return set(s.get("flags", [])), norm


def _handles(ns: str) -> dict[str, int]:
    """Rule comment -> handle of every rule in the table (a re-made rule gets a new handle)."""
    out = json.loads(nsexec(ns, "nft", "-j", "-a", "list", "table", "inet", "vxnet_sg").stdout)
    return {r["rule"]["comment"]: r["rule"]["handle"] for r in out["nftables"] if "rule" in r}


def test_member_set_kind_follows_its_members(ns: str) -> None:
    d = NftDriver(ns)
    try:
        plain, cidr = compute_firewall(_view(False), "h1"), compute_firewall(_view(True), "h1")
        d.apply([(t, None) for t in plain.tables])
        assert _set(ns) == (set(), frozenset({"192.0.2.20", "192.0.2.22"}))
        before = _handles(ns)
        group_rules = {c for c in before if c.startswith("vxnet:sg:r-group")}
        assert len(group_rules) == 1

        r = d.apply([(t, o) for t, o in zip(cidr.tables, plain.tables, strict=True)])
        assert r.mode == "incremental"
        assert _set(ns) == ({"interval"}, frozenset({"192.0.2.20", "192.0.2.22", "203.0.113.0/24"}))
        after = _handles(ns)
        # only the rule naming the set was re-made; every other rule (and its counter) stayed
        assert {c for c in before if after.get(c) != before[c]} == group_rules
        assert set(after) == set(before)

        d.apply([(t, o) for t, o in zip(plain.tables, cidr.tables, strict=True)])
        assert _set(ns) == (set(), frozenset({"192.0.2.20", "192.0.2.22"}))
        back = _handles(ns)
        assert {c for c in before if back.get(c) != after[c]} == group_rules

        # a member change within a kind is an element command; the kernel agrees with the model
        more = compute_firewall(_view(False, members=5), "h1")
        d.apply([(t, o) for t, o in zip(more.tables, plain.tables, strict=True)])
        assert _set(ns) == (set(), frozenset(f"192.0.2.{20 + 2 * i}" for i in range(5)))
        assert _handles(ns) == back
        d.invalidate()
        nsexec(ns, "nft", "add", "table", "inet", "someone_else")   # a commit of another program: read back
        assert d.apply([(t, None) for t in more.tables]).mode == "verified"   # the kernel agrees: nothing sent
        cidr5 = compute_firewall(_view(True, members=5), "h1")
        d.invalidate()
        nsexec(ns, "nft", "add", "table", "inet", "someone_else2")
        assert d.apply([(t, None) for t in cidr5.tables]).mode in ("adopt", "full")   # the kind differs: rewritten
        assert _set(ns) == ({"interval"}, frozenset({*(f"192.0.2.{20 + 2 * i}" for i in range(5)), "203.0.113.0/24"}))
    finally:
        d.close()


def test_only_someone_elses_commit_makes_the_firewall_read_back(ns: str) -> None:
    """dataplane/nft_ledger.py: the agent's own transactions in other tables (the metadata
    steering table's worker, a ledger-keeping executor) leave the firewall's proof intact: after
    an invalidation it trusts its tables without listing them ("unchanged"). Another program's
    commit makes it read them back; an element that program deleted is put back, also when an
    incremental change of ours came between (a change on top of someone else's proves nothing)."""
    from vxnet.dataplane.metadata_driver import NsWorker

    d, worker = NftDriver(ns), NsWorker(ns, "test-ledger")
    try:
        two, five = compute_firewall(_view(False), "h1"), compute_firewall(_view(False, members=5), "h1")
        d.apply([(t, None) for t in two.tables])
        assert worker.nft("add table bridge vxnet_test_own\nadd chain bridge vxnet_test_own c\n") is None
        d.invalidate()
        assert d.apply([(t, None) for t in two.tables]).mode == "unchanged"    # no listing: nothing sent
        assert worker.nft("delete table bridge vxnet_test_own\n") is None
        assert d.apply([(t, None) for t in two.tables]).mode == "unchanged"

        # another program deletes a member: the next check reads back and repairs it
        assert nsexec(ns, "nft", "delete", "element", "inet", "vxnet_sg", set_name(G2), "{ 192.0.2.22 }").returncode == 0
        assert d.apply([(t, None) for t in two.tables]).mode == "adopt"
        assert _set(ns) == (set(), frozenset({"192.0.2.20", "192.0.2.22"}))
        assert d.apply([(t, None) for t in two.tables]).mode == "unchanged"

        # ... and when our incremental change (three new members) came after its deletion
        assert nsexec(ns, "nft", "delete", "element", "inet", "vxnet_sg", set_name(G2), "{ 192.0.2.20 }").returncode == 0
        assert d.apply([(t, o) for t, o in zip(five.tables, two.tables, strict=True)]).mode == "incremental"
        assert d.apply([(t, None) for t in five.tables]).mode == "adopt"
        assert _set(ns) == (set(), frozenset(f"192.0.2.{20 + 2 * i}" for i in range(5)))
    finally:
        worker.close()
        d.close()


def test_port_ups_without_a_cache_converge_the_kernel(ns: str) -> None:
    """Port-ups written so that libnftables needs no cache of the table's chains and sets
    (`diff_table`: `add chain NAME { rules }`, `add set NAME { ...; elements = ... }`) are
    accepted by the kernel and leave exactly the desired tables: local ports coming one by one,
    the first port of a group whose rule names an existing member set, a member with a prefix
    (an interval set: `add element`), a port going. After each step, read back after another
    program's commit, the kernel holds the rules and elements of the model ("verified")."""
    g3 = "33333333-0000-4000-8000-000000000003"

    def view(local: int, g3_port: bool = False, pair: bool = False) -> dict:
        v = _view(pair)
        ports = [_port(f"p3{i:06d}-0000-4000-8000-000000000003", f"192.0.2.{100 + i}", "h1", G1) for i in range(local)]
        if g3_port:
            ports.append(_port("p4000000-0000-4000-8000-000000000004", "192.0.2.90", "h1", g3))
        v["ports"].update({p["id"]: p for p in ports})
        v["security_groups"][g3] = {"id": g3, "stateful": True}
        v["security_group_rules"]["r-g3"] = {**v["security_group_rules"]["r-group"], "id": "r-g3",
                                             "security_group_id": g3}
        return v

    d = NftDriver(ns)
    try:
        steps = [view(1), view(2), view(3), view(3, g3_port=True), view(3, g3_port=True, pair=True),
                 view(4, g3_port=True, pair=True), view(2, g3_port=True, pair=True)]
        prev = compute_firewall(steps[0], "h1")
        d.apply([(t, None) for t in prev.tables])
        for i, v in enumerate(steps[1:]):
            fw = compute_firewall(v, "h1")
            assert d.apply([(t, o) for t, o in zip(fw.tables, prev.tables, strict=True)]).mode == "incremental"
            d.invalidate()
            nsexec(ns, "nft", "add", "table", "inet", f"someone_else{i}")
            assert d.apply([(t, None) for t in fw.tables]).mode == "verified", f"step {i + 1}"
            prev = fw
        assert _set(ns) == ({"interval"}, frozenset({"192.0.2.20", "192.0.2.22", "203.0.113.0/24"}))
    finally:
        d.close()


def _policy(ns: str, chain: str) -> str:
    out = json.loads(nsexec(ns, "nft", "-j", "list", "chain", "inet", "vxnet_sg", chain).stdout)["nftables"]
    return next(x["chain"] for x in out if "chain" in x)["policy"]


def test_a_base_chain_policy_changed_behind_the_agent_is_rewritten(ns: str) -> None:
    """Every rule intact but a base chain's policy changed (by hand, another program): the rule
    fingerprints agree, the hook line does not, so the driver's read-back replaces the table
    instead of adopting it."""
    d = NftDriver(ns)
    try:
        fw = compute_firewall(_view(False), "h1")
        d.apply([(t, None) for t in fw.tables])
        assert _policy(ns, "ingress") == "accept"
        before = _handles(ns)
        assert nsexec(ns, "nft", "chain", "inet", "vxnet_sg", "ingress", "{ policy drop; }").returncode == 0
        assert _policy(ns, "ingress") == "drop"
        d.invalidate()
        assert d.apply([(t, None) for t in fw.tables]).mode == "full"
        assert _policy(ns, "ingress") == "accept"
        assert set(_handles(ns)) == set(before)
        d.invalidate()
        nsexec(ns, "nft", "add", "table", "inet", "someone_else3")
        assert d.apply([(t, None) for t in fw.tables]).mode == "verified"    # now it agrees: nothing sent
    finally:
        d.close()
