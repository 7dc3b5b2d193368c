"""Router namespaces: namespaces, veths, addresses, routes, rules and sysctls, converged.

Contract:
- `RouterDriver.converge(r)` makes one router namespace exactly `r` (`compute.routing.RouterNs`):
  it creates it if missing (sysctls first: IPv4 and IPv6 forwarding, rp_filter=0, redirects
  off, no IPv6 duplicate address detection or router advertisements accepted: the anycast
  addresses are the same on every host by design; unsolicited neighbour advertisements on),
  its veths (bridge side `vxpr...` in the host namespace, router side `qr-...` in the router
  namespace, created as one pair directly across the two namespaces), MACs, MTUs, addresses
  (IPv4 and IPv6, IPv6 ones `nodad`; link-local addresses are the kernel's), routes and rules
  of both families, the legs' permanent IPv6 neighbours, and removes what the desired state no
  longer has. `delete(name)` removes a
  namespace, legs first, so routing through it stops at once.
- Ownership: namespaces `vxr-*` whose name ends with this host's suffix
  (`compute.routing.is_host_netns`); links `qr-*` inside them; service ports `vxpr*` in the
  host namespace; routes and rules with protocol `ROUTE_PROTO` inside them; permanent IPv6
  neighbour entries on `qr-*` links. Nothing else is ever changed or deleted (kernel routes of
  connected subnets and link-local addresses are the kernel's).
- `list_host_netns(host)` lists this host's namespaces, `delete_orphan_ports(wanted)` removes
  host-side service ports of routers that are gone. What to converge when (what was applied,
  backoff of a failing namespace) is the routing feature's `Manager` (agent/routing.py); this
  driver keeps no record of what it applied. Failures raise OSError/NetlinkError.
- Creating something that exists and deleting something gone count as success (idempotent).
- Address scopes: the namespace's nftables tables `ip vxnet_scope` and `ip6 vxnet_scope` (a
  forward-hook chain that drops what a leg of one scope group would forward out of a leg of
  another; IPv4 and IPv6 groups) are replaced as a whole, in one nftables transaction, by every
  converge of a namespace with two or more groups of either family (and once where this
  process does not know the namespace holds none); a family with fewer than two groups has no
  table. It is the only nftables table the agent owns in a router
  namespace. Each namespace keeps one libnftables context, made by a thread inside it (its
  netlink socket stays bound to that namespace whichever thread uses it later): a fresh
  context's first transaction costs ~12-16 ms, later ones under 1 ms.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns
from pyroute2.netlink.exceptions import NetlinkError

from vxnet.compute import naming
from vxnet.compute.routing import (
    IFACE_PREFIX,
    NsNeigh,
    Route,
    RouterIface,
    RouterNs,
    Rule,
    is_host_netns,
    is_service_port,
)
from vxnet.dataplane.netns import in_netns, list_netns
from vxnet.dataplane.nft_exec import NftExecutor

log = logging.getLogger("vxnet.dataplane.router")

NETNS_DIR = "/run/netns"
ROUTE_PROTO = naming.ROUTER_ROUTE_PROTO   # routes and rules the agent owns inside router namespaces
IFF_UP = 0x1
SYSCTLS = (
    # IPv6 (issue #16): DAD off before any leg exists (legs inherit `default`): the anycast
    # gateway address is on every host on purpose, and a tentative address would not route.
    ("net/ipv6/conf/default/accept_dad", "0"),
    ("net/ipv6/conf/all/accept_dad", "0"),
    ("net/ipv6/conf/default/accept_ra", "0"),
    ("net/ipv6/conf/default/ndisc_notify", "1"),   # a new leg announces itself (like the GARP)
    ("net/ipv6/conf/all/disable_ipv6", "0"),
    ("net/ipv6/conf/default/disable_ipv6", "0"),
    ("net/ipv6/conf/all/forwarding", "1"),
    ("net/ipv4/conf/all/rp_filter", "0"),        # asymmetric paths: replies come back elsewhere
    ("net/ipv4/conf/default/rp_filter", "0"),
    ("net/ipv4/conf/all/send_redirects", "0"),
    ("net/ipv4/conf/default/send_redirects", "0"),
    ("net/ipv4/ip_forward", "1"),
)
_GONE = (errno.ENODEV, errno.ENOENT, errno.ESRCH)
AF_INET6 = socket.AF_INET6
IFA_F_NODAD = 0x02
NUD_PERMANENT = 0x80
SCOPE_TABLE = "vxnet_scope"


Groups = tuple[tuple[str, ...], ...]


def scope_ruleset(groups: Groups, groups6: Groups = ()) -> str:
    """One nftables transaction leaving the namespace's scope tables exactly as `groups` (IPv4)
    and `groups6` (IPv6) want (no table for a family with fewer than two groups)."""
    text = ""
    for family, gs in (("ip", groups), ("ip6", groups6)):
        text += f"table {family} {SCOPE_TABLE} {{}}\ndelete table {family} {SCOPE_TABLE}\n"
        if len(gs) < 2:
            continue
        drops = []
        for g in gs:
            names = ", ".join(f'"{n}"' for n in g)
            drops.append(f"    iifname {{ {names} }} oifname != {{ {names} }} drop")
        text += (f"table {family} {SCOPE_TABLE} {{\n  chain forward {{\n"
                 "    type filter hook forward priority 0; policy accept;\n" + "\n".join(drops) + "\n  }\n}\n")
    return text


@dataclasses.dataclass
class ApplyResult:
    failed: list[str] = dataclasses.field(default_factory=list)
    changes: dict[str, int] = dataclasses.field(default_factory=dict)

    def count(self, kind: str, n: int = 1) -> None:
        self.changes[kind] = self.changes.get(kind, 0) + n


def announce(ns: str, dev: str, mac: str, ips: list[str], delays: tuple[float, ...] = (0.2, 1.0, 3.0)) -> None:
    """Gratuitous ARP for a new leg, in the background: VMs holding the gateway IP with an
    older MAC (an interface removed and added again is a new port, so a new MAC) update it at
    once instead of after their neighbour entry goes stale. The first is sent after a short
    delay so the L2 pass of the same round has plugged the service port. Stays on the host:
    the bridge never floods a gratuitous ARP to the (neigh_suppress) VXLAN port."""
    hw = bytes.fromhex(mac.replace(":", ""))
    frames = [b"\xff" * 6 + hw + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
              + hw + socket.inet_aton(ip) + b"\x00" * 6 + socket.inet_aton(ip) for ip in ips]

    def send() -> None:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
            s.bind((dev, 0))
            for f in frames:
                s.send(f)

    def run() -> None:
        last = 0.0
        for d in delays:
            time.sleep(d - last)
            last = d
            try:
                in_netns(ns, send)
            except OSError as e:       # the leg or namespace went meanwhile
                log.debug("gratuitous ARP on %s/%s: %s", ns, dev, e)
                return

    threading.Thread(target=run, name=f"vxnet-garp-{dev}", daemon=True).start()


def _write_sysctls() -> list[str]:
    """Set SYSCTLS in the current thread's namespace; returns the ones that needed a change."""
    changed = []
    for key, value in SYSCTLS:
        path = "/proc/sys/" + key
        with open(path) as f:
            if f.read().strip() == value:
                continue
        with open(path, "w") as f:
            f.write(value)
        changed.append(key)
    return changed


def list_host_netns(host: str, run_dir: str = NETNS_DIR) -> list[str]:
    """This host's router namespaces present in `run_dir`."""
    return list_netns(lambda n: is_host_netns(n, host), run_dir)


class RouterDriver:
    """Converges this host's router namespaces, one at a time (the routing feature's manager
    decides which); owns one netlink socket per namespace."""

    def __init__(self, host: str, host_netns: str | None = None, run_dir: str = NETNS_DIR) -> None:
        self.host = host
        self.host_netns = host_netns
        self.run_dir = run_dir
        self.host_ipr = IPRoute(netns=host_netns) if host_netns else IPRoute()
        self._ipr: dict[str, IPRoute] = {}
        self._nft: dict[str, NftExecutor] = {}                       # namespace -> its nftables context
        self._scopes: dict[str, tuple[Groups, Groups]] = {}    # namespace -> scope groups (v4, v6) as applied

    def close(self) -> None:
        for ipr in self._ipr.values():
            ipr.close()
        self._ipr.clear()
        for nft in self._nft.values():
            nft.close()
        self._nft.clear()
        self.host_ipr.close()

    def converge(self, r: RouterNs, res: ApplyResult) -> None:
        """Make namespace `r.netns` exactly `r` (OSError/NetlinkError: left dirty, socket dropped)."""
        try:
            self._converge(r, res)
        except (OSError, NetlinkError):
            self._drop_socket(r.netns)
            raise

    def delete(self, name: str, res: ApplyResult) -> None:
        """Delete namespace `name`, legs first (OSError/NetlinkError on failure)."""
        self._delete_ns(name, res)

    # ------------------------------------------------------------------ namespaces
    def _ns(self, name: str) -> IPRoute:
        ipr = self._ipr.get(name)
        if ipr is None:
            ipr = self._ipr[name] = IPRoute(netns=name)
        return ipr

    def _drop_socket(self, name: str) -> None:
        ipr = self._ipr.pop(name, None)
        if ipr is not None:
            ipr.close()
        nft = self._nft.pop(name, None)
        if nft is not None:
            nft.close()
        self._scopes.pop(name, None)

    def _create_ns(self, name: str, res: ApplyResult) -> None:
        path = os.path.join(self.run_dir, name)
        if os.path.exists(path) and not os.path.ismount(path):
            os.unlink(path)     # a name without a namespace behind it (e.g. a mount lost with its mount namespace)
        try:
            pr_netns.create(name)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise
        res.count("namespaces")

    def _delete_ns(self, name: str, res: ApplyResult) -> None:
        """Legs first (the veth pairs go at once, not when the namespace is finally freed)."""
        path = os.path.join(self.run_dir, name)
        if os.path.ismount(path):
            ipr = self._ns(name)
            for link in ipr.get_links():
                if (link.get("ifname") or "").startswith(IFACE_PREFIX):
                    _ok_gone(lambda link=link: ipr.link("del", index=link["index"]))
        self._drop_socket(name)
        try:
            pr_netns.remove(name)
        except FileNotFoundError:
            pass
        res.count("namespaces")

    # ------------------------------------------------------------------ one router
    def _converge(self, r: RouterNs, res: ApplyResult) -> None:
        path = os.path.join(self.run_dir, r.netns)
        if not os.path.ismount(path):
            self._drop_socket(r.netns)
            self._create_ns(r.netns, res)
            self._scopes[r.netns] = ((), ())  # a new namespace holds no nftables table
        changed = in_netns(r.netns, _write_sysctls)
        if changed:
            res.count("sysctls", len(changed))  # type: ignore[arg-type]
        ipr = self._ns(r.netns)
        links = {link.get("ifname"): link for link in ipr.get_links()}
        lo = links.get("lo")
        if lo is not None and not lo["flags"] & IFF_UP:
            ipr.link("set", index=lo["index"], state="up")
        wanted = {i.name for i in r.ifaces}
        for name, link in links.items():
            if (name or "").startswith(IFACE_PREFIX) and name not in wanted:
                _ok_gone(lambda link=link: ipr.link("del", index=link["index"]))
                res.count("links")
        index: dict[str, int] = {}
        for leg in r.ifaces:
            index[leg.name] = self._leg(ipr, r.netns, leg, links.get(leg.name), res)
        self._routes(ipr, r.routes, index, res)
        self._rules(ipr, r.rules, res)
        converge_neighs(ipr, r.neighs, index, IFACE_PREFIX, res)
        self._scope_filter(r, res)

    def _scope_filter(self, r: RouterNs, res: ApplyResult) -> None:
        want = (r.scope_groups if len(r.scope_groups) > 1 else (),
                r.scope_groups6 if len(r.scope_groups6) > 1 else ())
        if want == ((), ()) and self._scopes.get(r.netns) == ((), ()):
            return  # none wanted, none there
        nft = self._nft.get(r.netns)
        if nft is None:  # made inside the namespace: its socket stays there
            nft = self._nft[r.netns] = in_netns(r.netns, lambda: NftExecutor(netns=r.netns))  # type: ignore[assignment]
        err = nft.run(scope_ruleset(*want))  # type: ignore[union-attr]
        if err:
            self._scopes.pop(r.netns, None)
            raise OSError(f"address scope filter: {err}")
        self._scopes[r.netns] = want
        res.count("scope_filters")

    def _leg(self, ipr: IPRoute, ns: str, leg: RouterIface, link: object, res: ApplyResult) -> int:
        host_idx = self.host_ipr.link_lookup(ifname=leg.service_port)
        if link is None or not host_idx:
            # A half pair (one end deleted behind our back) cannot be repaired: start again.
            if link is not None:
                _ok_gone(lambda: ipr.link("del", index=link["index"]))  # type: ignore[index]
            if host_idx:
                _ok_gone(lambda: self.host_ipr.link("del", index=host_idx[0]))
            self.host_ipr.link("add", ifname=leg.service_port, kind="veth", mtu=leg.mtu,
                               peer={"ifname": leg.name, "net_ns_fd": ns, "address": leg.mac, "mtu": leg.mtu})
            res.count("links")
            link = ipr.link("get", ifname=leg.name)[0]
            announce(ns, leg.name, leg.mac, [a.split("/")[0] for a in leg.addresses])
        idx = int(link["index"])  # type: ignore[index]
        if (link.get("address") or "").lower() != leg.mac or link.get("mtu") != leg.mtu \
                or not link["flags"] & IFF_UP:  # type: ignore[attr-defined,index]
            ipr.link("set", index=idx, address=leg.mac, mtu=leg.mtu, state="up")
            res.count("links")
        have = read_addrs(ipr, idx)
        for a in sorted(set(leg.addresses) - have):
            ip, plen = a.split("/")
            kw = {"flags": IFA_F_NODAD} if ":" in ip else {}
            _ok_exists(lambda ip=ip, plen=plen, kw=kw: ipr.addr("add", index=idx, address=ip, prefixlen=int(plen), **kw))
            res.count("addresses")
        for a in sorted(have - set(leg.addresses)):
            ip, plen = a.split("/")
            _ok_gone(lambda ip=ip, plen=plen: ipr.addr("del", index=idx, address=ip, prefixlen=int(plen)))
            res.count("addresses")
        return idx

    def _routes(self, ipr: IPRoute, routes: tuple[Route, ...], index: dict[str, int], res: ApplyResult) -> None:
        names = {i: n for n, i in index.items()}
        have: dict[tuple[str, int], Route] = {}
        raw: dict[tuple[str, int], object] = {}
        for m in [*ipr.get_routes(family=2, proto=ROUTE_PROTO), *ipr.get_routes(family=AF_INET6, proto=ROUTE_PROTO)]:
            dst = f"{m.get('RTA_DST') or ('::' if m['family'] == AF_INET6 else '0.0.0.0')}/{m['dst_len']}"
            rt = Route(str(ipaddress.ip_network(dst, strict=False)), m.get("RTA_GATEWAY") or "",
                       names.get(m.get("RTA_OIF"), "?"), int(m.get("RTA_TABLE") or m["table"]))
            have[rt.key] = rt
            raw[rt.key] = m
        want = {rt.key: rt for rt in routes}
        for key, rt in have.items():
            if key not in want:
                _ok_gone(lambda rt=rt: ipr.route("del", dst=rt.dst, table=rt.table, proto=ROUTE_PROTO,
                                                 family=_family(rt.dst)))
                res.count("routes")
        for key, rt in want.items():
            if have.get(key) != rt:
                ipr.route("replace", dst=rt.dst, gateway=rt.gateway, oif=index[rt.dev], table=rt.table,
                          proto=ROUTE_PROTO, family=_family(rt.dst))
                res.count("routes")

    def _rules(self, ipr: IPRoute, rules: tuple[Rule, ...], res: ApplyResult) -> None:
        have: dict[tuple[int, str, int], Rule] = {}
        for m in [*ipr.get_rules(family=2), *ipr.get_rules(family=AF_INET6)]:
            if m.get("FRA_PROTOCOL") != ROUTE_PROTO:
                continue
            sup = m.get("FRA_SUPPRESS_PREFIXLEN")
            any_src = "::" if m["family"] == AF_INET6 else "0.0.0.0"
            rule = Rule(int(m.get("priority") or 0), f"{m.get('FRA_SRC') or any_src}/{m['src_len']}",
                        int(m.get("FRA_TABLE") or m["table"]), None if sup in (None, 0xFFFFFFFF) else int(sup))
            have[rule.key] = rule
        want = {r.key: r for r in rules}
        for key, rule in have.items():
            if want.get(key) != rule:
                _ok_gone(lambda rule=rule: ipr.rule("del", **_rule_args(rule)))
                res.count("rules")
        for key, rule in want.items():
            if have.get(key) != rule:
                _ok_exists(lambda rule=rule: ipr.rule("add", protocol=ROUTE_PROTO, **_rule_args(rule)))
                res.count("rules")

    # ------------------------------------------------------------------ host side
    def delete_orphan_ports(self, wanted: set[str], res: ApplyResult) -> None:
        """Service ports of routers that no longer exist here (e.g. the namespace vanished)."""
        for link in self.host_ipr.get_links():
            name = link.get("ifname") or ""
            if is_service_port(name) and name not in wanted:
                _ok_gone(lambda link=link: self.host_ipr.link("del", index=link["index"]))
                res.count("links")


def _rule_args(rule: Rule) -> dict[str, object]:
    src, plen = rule.src.split("/")
    kw: dict[str, object] = {"priority": rule.priority, "src": src, "src_len": int(plen), "table": rule.table,
                             "family": _family(rule.src)}
    if rule.suppress_prefixlength is not None:
        kw["FRA_SUPPRESS_PREFIXLEN"] = rule.suppress_prefixlength   # `suppress_prefixlength=` is ignored by pyroute2 0.9.7
    return kw


def _family(cidr: str) -> int:
    return AF_INET6 if ":" in cidr else socket.AF_INET


def read_addrs(ipr: IPRoute, index: int) -> set[str]:
    """"ip/prefixlen" of the link's IPv4 and global IPv6 addresses (link-local ones are the kernel's)."""
    out = {f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(family=socket.AF_INET, index=index)}
    for a in ipr.get_addr(family=AF_INET6, index=index):
        ip = a.get("IFA_ADDRESS") or ""
        if ip and not ipaddress.ip_address(ip).is_link_local:
            out.add(f"{ipaddress.ip_address(ip)}/{a['prefixlen']}")
    return out


def converge_neighs(ipr: IPRoute, wanted: tuple[NsNeigh, ...], index: dict[str, int], prefix: str,
                    res: ApplyResult | None = None) -> int:
    """Make the permanent IPv6 neighbours on links named `prefix*` exactly `wanted` (entries on
    links not in `index` are skipped); returns the number of changes."""
    names = {i: n for n, i in index.items()}
    have: dict[tuple[str, str], str] = {}
    for m in ipr.get_neighbours(family=AF_INET6):
        dev = names.get(m["ifindex"], "")
        if dev.startswith(prefix) and m["state"] & NUD_PERMANENT and m.get("NDA_DST"):
            have[(dev, str(ipaddress.ip_address(m.get("NDA_DST"))))] = (m.get("NDA_LLADDR") or "").lower()
    want = {(n.dev, n.ip): n.mac for n in wanted if n.dev in index}
    changes = 0
    for (dev, ip) in sorted(set(have) - set(want)):
        _ok_gone(lambda dev=dev, ip=ip: ipr.neigh("del", ifindex=index[dev], dst=ip, family=AF_INET6))
        changes += 1
    for (dev, ip), mac in sorted(want.items()):
        if have.get((dev, ip)) != mac:
            ipr.neigh("replace", ifindex=index[dev], dst=ip, lladdr=mac, state=NUD_PERMANENT, family=AF_INET6)
            changes += 1
    if res is not None and changes:
        res.count("neighbours", changes)
    return changes


def _ok_gone(fn: Callable[[], object]) -> None:
    try:
        fn()
    except NetlinkError as e:
        if e.code not in _GONE:
            raise


def _ok_exists(fn: Callable[[], object]) -> None:
    try:
        fn()
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise
