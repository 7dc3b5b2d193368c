"""Gateway kernel driver: SNAT namespaces, their veth legs, addresses, routes and NAT table,
and the external interface's place in its bridge (KERNEL-NOTES §5).

Contract:
- `GatewayDriver(host_netns)`: host-side commands target `host_netns` (tests drive a host
  namespace from outside) or the caller's namespace.
- `ensure_external(ext, bridge)` makes the network's port (its physical network's interface, or
  for a VLAN network a VLAN device `vxv-<network 11>` on it) a port of the external network's
  bridge (creating the bridge with the L2 reconciler's exact attributes if it is not there yet,
  so the L2 pass adopts it unchanged). A kernel without 802.1Q refuses the VLAN device
  (EOPNOTSUPP): `GatewayError` saying so.
- `apply_router(r, previous)` converges one namespace to `r` and returns whether it was
  (re)created: missing namespace / legs are created, a leg whose MAC or MTU differs is fixed,
  addresses and routes not wanted are removed (only in our namespaces, which hold nothing
  else), and the NAT table is replaced in one transaction (libnftables, in a thread inside the
  namespace). IPv6 (routed, no NAT): the legs' IPv6 addresses (`nodad`), the ::/0 route, the
  snat legs' permanent IPv6 neighbours and the `table ip6 vxnet_v6` isolation filter
  (`filter6_ruleset`, replaced in one transaction when it changes). Floating IPs that went
  away or changed their fixed IP have their conntrack entries deleted (`conntrack -D`, if
  installed), so a move takes effect at once. Gratuitous ARP (raw AF_PACKET,
  `router_driver.announce`) for the gateway address and floating IPs after a (re)creation and
  for new floating IPs.
- Kernel access: netlink (pyroute2) for namespaces, links, addresses and routes; /proc/sys
  from a thread inside the namespace for its sysctls. The one program still run is
  `conntrack -D`: pyroute2 0.9.7's conntrack delete sends only an original tuple, so "every
  entry whose reply destination is X" needs a dump, a filter and one delete per entry, which
  conntrack-tools does in C; it runs only when a floating IP moves or goes.
- A standby router (`r.active` False) is built the same, but the host side of its legs is
  kept down and off any bridge (so the namespace answers nothing) and it sends no gratuitous
  ARP; a router that becomes active (promoted) announces its addresses at once (its taps are
  brought up here; the L2 pass plugs them).
- A router with a sync address gets its conntrack-sync leg: a macvlan (bridge mode) of the
  host's underlay interface moved into the namespace, IPv6 on it alone (`sync_ip`/48, no
  link-local, no DAD); conntrackd (dataplane/ctsync.py) talks to the peer copy over it.
- `delete_stale(keep)` deletes this host's SNAT namespaces not in `keep` (a veth dies with its
  namespace, so the host-side taps go too).
- Every method raises `GatewayError` on a kernel failure; the feature reports the router as
  failed and retries on the next pass.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable

from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns
from pyroute2.netlink.exceptions import NetlinkError

from vxnet.compute import naming
from vxnet.compute.gateway import (
    SYNC_PLEN,
    ExternalBridge,
    GatewayRouter,
    Leg,
    filter6_ruleset,
    is_router_netns,
    nat_ruleset,
)
from vxnet.compute.routing import NsNeigh
from vxnet.compute.state import Bridge
from vxnet.dataplane.nft_exec import NftExecutor
from vxnet.dataplane.router_driver import AF_INET6, IFA_F_NODAD, announce, converge_neighs, in_netns, read_addrs

log = logging.getLogger("vxnet.dataplane.gateway")

NETNS_DIR = "/run/netns"
ROUTE_PROTO = naming.GATEWAY_ROUTE_PROTO   # routes we add; the kernel's connected routes are proto kernel
RTPROT_KERNEL = 2
IFF_UP = 0x1
# IPv6 on and forwarding (routed, no NAT); no DAD and no RAs accepted (addresses come from
# IPAM; the default route is configured); unsolicited NA so the external network learns a
# gateway address that moved here (the IPv6 side of the gratuitous ARP).
SYSCTLS = (("net/ipv4/ip_forward", "1"), ("net/ipv6/conf/default/accept_dad", "0"),
           ("net/ipv6/conf/all/accept_dad", "0"), ("net/ipv6/conf/default/accept_ra", "0"),
           ("net/ipv6/conf/default/ndisc_notify", "1"), ("net/ipv6/conf/all/disable_ipv6", "0"),
           ("net/ipv6/conf/default/disable_ipv6", "0"), ("net/ipv6/conf/all/forwarding", "1"),
           # HA: a flow that moves between gateways (takeover, failback) arrives with sequence
           # numbers beyond the window of a stale or synced entry; window tracking would mark
           # it INVALID (no NAT): loose tracking, as conntrackd's documentation advises for
           # failover.
           ("net/netfilter/nf_conntrack_tcp_be_liberal", "1"), ("net/netfilter/nf_conntrack_tcp_loose", "1"))
_GONE = (errno.ENODEV, errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL)


class GatewayError(Exception):
    """A kernel operation failed (message: what and why)."""


def _write_sysctls() -> None:
    for key, value in SYSCTLS:
        try:
            with open("/proc/sys/" + key, "w") as f:
                f.write(value)
        except FileNotFoundError:
            if not key.startswith("net/netfilter/"):   # conntrack not loaded yet: the NAT table loads it
                raise


def _sync_sysctls(dev: str) -> None:
    """IPv6 on the sync leg only, without a link-local address (only the derived one)."""
    for key, value in ((f"net/ipv6/conf/{dev}/addr_gen_mode", "1"), (f"net/ipv6/conf/{dev}/disable_ipv6", "0")):
        with open("/proc/sys/" + key, "w") as f:
            f.write(value)


def _nft_in_thread(text: str) -> str | None:
    ex = NftExecutor()
    try:
        return ex.run(text)
    finally:
        ex.close()


def _links(ipr: IPRoute) -> dict[str, dict]:
    """ifname -> {index, address, mtu, up, master} of every link."""
    out = {}
    for m in ipr.get_links():
        out[m.get("ifname")] = {"index": m["index"], "address": (m.get("address") or "").lower(),
                                "mtu": m.get("mtu"), "up": bool(m["flags"] & IFF_UP), "master": m.get("master")}
    return out


class GatewayDriver:
    """Netlink (pyroute2) for links, addresses, routes and namespaces, libnftables for the NAT
    table, raw AF_PACKET for gratuitous ARP; only conntrack deletion runs a program."""

    def __init__(self, host_netns: str | None = None, underlay_ip: str | None = None) -> None:
        self.host_netns = host_netns
        self.underlay_ip = underlay_ip
        self._host_ipr: IPRoute | None = None
        self.conntrack = shutil.which("conntrack")

    @property
    def host_ipr(self) -> IPRoute:
        if self._host_ipr is None:
            self._host_ipr = IPRoute(netns=self.host_netns) if self.host_netns else IPRoute()
        return self._host_ipr

    def close(self) -> None:
        if self._host_ipr is not None:
            self._host_ipr.close()
            self._host_ipr = None

    @staticmethod
    def _do(what: str, fn: Callable[[], object], ok: tuple[int, ...] = ()) -> None:
        try:
            fn()
        except NetlinkError as e:
            if e.code not in ok:
                raise GatewayError(f"{what}: {e}") from e
        except OSError as e:
            raise GatewayError(f"{what}: {e}") from e

    # -- external bridge ------------------------------------------------------------------
    def ensure_external(self, ext: ExternalBridge, bridge: Bridge) -> None:
        """The network's port (its physical network's interface, or a VLAN device on it) up and
        enslaved to `bridge` (created if missing)."""
        if not ext.interface:
            return
        ipr = self.host_ipr
        try:
            links = _links(ipr)
        except (NetlinkError, OSError) as e:
            raise GatewayError(f"link dump: {e}") from e
        if ext.interface not in links:
            raise GatewayError(f"external interface {ext.interface} not found")
        port = ext.port or ext.interface
        if ext.vlan is not None and port not in links:
            parent = links[ext.interface]
            try:
                ipr.link("add", ifname=port, kind="vlan", link=parent["index"], vlan_id=ext.vlan)
            except NetlinkError as e:
                if e.code == errno.EOPNOTSUPP:
                    raise GatewayError(f"VLAN {ext.vlan} on physical network {ext.physical_network}: this kernel "
                                       "has no 802.1Q support (module 8021q): VLAN external networks cannot be "
                                       "served on this host") from e
                if e.code != errno.EEXIST:
                    raise GatewayError(f"VLAN device {port}: {e}") from e
            if not parent["up"]:
                self._do(f"{ext.interface} up", lambda: ipr.link("set", index=parent["index"], state="up"))
            links = _links(ipr)
        if bridge.name not in links:
            self._do(f"bridge {bridge.name}", lambda: ipr.link("add", ifname=bridge.name, kind="bridge",
                                                                address=bridge.mac, mtu=bridge.mtu), (errno.EEXIST,))
            idx = ipr.link_lookup(ifname=bridge.name)
            if not idx:
                raise GatewayError(f"bridge {bridge.name} not found after creation")
            self._do(f"bridge {bridge.name} up", lambda: ipr.link("set", index=idx[0], state="up"))
            links[bridge.name] = {"index": idx[0]}
        ifc = links[port]
        if ifc["master"] != links[bridge.name]["index"]:
            self._do(f"{port} master", lambda: ipr.link("set", index=ifc["index"], master=links[bridge.name]["index"]))
        if not ifc["up"]:
            self._do(f"{port} up", lambda: ipr.link("set", index=ifc["index"], state="up"))

    # -- namespaces -----------------------------------------------------------------------
    def namespaces(self, host: str) -> set[str]:
        """This host's SNAT namespaces present in the kernel."""
        try:
            names = os.listdir(NETNS_DIR)
        except FileNotFoundError:
            return set()
        return {n for n in names if is_router_netns(n, host)}

    def delete_stale(self, host: str, keep: Iterable[str]) -> list[str]:
        gone = sorted(self.namespaces(host) - set(keep))
        for ns in gone:
            try:
                pr_netns.remove(ns)
            except OSError as e:
                log.warning("deleting %s: %s", ns, e)
        return gone

    def _ensure_netns(self, ns: str) -> bool:
        path = os.path.join(NETNS_DIR, ns)
        if os.path.exists(path) and os.path.ismount(path):
            return False
        try:
            if os.path.exists(path):
                os.unlink(path)         # a name without a namespace behind it
            pr_netns.create(ns)
            in_netns(ns, _write_sysctls)
        except OSError as e:
            raise GatewayError(f"namespace {ns}: {e}") from e
        return True

    def _ensure_leg(self, ns: str, ipr: IPRoute, leg: Leg, host_links: dict[str, dict],
                    ns_links: dict[str, dict], active: bool = True) -> bool:
        """The veth pair with MAC/MTU/up (the host side down on a standby); True if it was
        (re)created."""
        host = self.host_ipr
        created = False
        if leg.tap not in host_links or leg.inner not in ns_links:
            if leg.tap in host_links:
                self._do(f"del {leg.tap}", lambda: host.link("del", index=host_links[leg.tap]["index"]), _GONE)
            if leg.inner in ns_links:
                self._do(f"del {leg.inner}", lambda: ipr.link("del", index=ns_links[leg.inner]["index"]), _GONE)
            self._do(f"veth {leg.tap}", lambda: host.link("add", ifname=leg.tap, kind="veth", mtu=leg.mtu,
                                                          peer={"ifname": leg.inner, "net_ns_fd": ns,
                                                                "address": leg.mac, "mtu": leg.mtu}))
            host_links[leg.tap] = {"index": host.link_lookup(ifname=leg.tap)[0], "mtu": leg.mtu, "up": False}
            ns_links[leg.inner] = {"index": ipr.link_lookup(ifname=leg.inner)[0]}
            created = True
        inner = ns_links[leg.inner]
        if created or inner.get("address") != leg.mac or inner.get("mtu") != leg.mtu or not inner.get("up"):
            self._do(f"set {leg.inner}", lambda: ipr.link("set", index=inner["index"], address=leg.mac,
                                                          mtu=leg.mtu, state="up"))
        tap = host_links[leg.tap]
        if active and (created or tap.get("mtu") != leg.mtu or not tap.get("up")):
            self._do(f"set {leg.tap}", lambda: host.link("set", index=tap["index"], mtu=leg.mtu, state="up"))
        elif not active and (created or tap.get("up") or tap.get("master")):
            # a standby: off the bridge and down, so nothing reaches the namespace (no ARP answer)
            self._do(f"set {leg.tap} down", lambda: host.link("set", index=tap["index"], mtu=leg.mtu,
                                                              state="down", master=0))
        return created

    def _ensure_addrs(self, ipr: IPRoute, dev: str, index: int, wanted: set[str]) -> None:
        wanted = {f"{ipaddress.ip_interface(c).ip}/{ipaddress.ip_interface(c).network.prefixlen}" for c in wanted}
        have = read_addrs(ipr, index)
        for cidr in sorted(have - wanted):
            ip, plen = cidr.split("/")
            self._do(f"del {cidr} {dev}", lambda ip=ip, plen=plen: ipr.addr("del", index=index, address=ip,
                                                                           prefixlen=int(plen)), _GONE)
        for cidr in sorted(wanted - have):
            ip, plen = cidr.split("/")
            kw = {"flags": IFA_F_NODAD} if ":" in ip else {}
            self._do(f"add {cidr} {dev}", lambda ip=ip, plen=plen, kw=kw: ipr.addr("replace", index=index, address=ip,
                                                                                 prefixlen=int(plen), **kw))

    def _ensure_routes(self, ipr: IPRoute, r: GatewayRouter, index: dict[str, int]) -> None:
        wanted: dict[str, tuple[str, int | None]] = {}
        if r.gateway_ip:
            wanted["0.0.0.0/0"] = (r.gateway_ip, index[r.gw.inner])
        if r.gateway_ip6:
            wanted["::/0"] = (str(ipaddress.ip_address(r.gateway_ip6)), index[r.gw.inner])
        for dest, hop in r.routes:
            wanted[str(ipaddress.ip_network("0.0.0.0/0" if dest == "default" else dest, strict=False))] = (hop, None)
        have: dict[str, tuple[str, int | None]] = {}
        for fam, any_ in ((2, "0.0.0.0"), (AF_INET6, "::")):
            for m in ipr.get_routes(family=fam, table=254):
                if m["proto"] != RTPROT_KERNEL and m.get("type", 1) == 1:   # unicast, not the kernel's
                    have[f"{m.get('RTA_DST') or any_}/{m['dst_len']}"] = (m.get("RTA_GATEWAY") or "", m.get("RTA_OIF"))
        for dst in sorted(set(have) - set(wanted)):
            fam = AF_INET6 if ":" in dst else 2
            self._do(f"del route {dst}", lambda dst=dst, fam=fam: ipr.route("del", dst=dst, table=254, family=fam),
                     _GONE)
        for dst, (hop, oif) in sorted(wanted.items()):
            if dst in have and have[dst][0] == hop and (oif is None or have[dst][1] == oif):
                continue
            kw = {"oif": oif} if oif is not None else {}
            fam = AF_INET6 if ":" in dst else 2
            self._do(f"route {dst} via {hop}", lambda dst=dst, hop=hop, kw=kw, fam=fam: ipr.route(
                "replace", dst=dst, gateway=hop, table=254, proto=ROUTE_PROTO, family=fam, **kw))

    def _forget_flows(self, ns: str, fips: Iterable[tuple[str, str]]) -> None:
        """Delete conntrack entries of floating IPs that moved or went (no stale DNAT/SNAT).
        The one program the driver runs: see the module docstring."""
        if not self.conntrack:
            return
        for fip, fixed in fips:
            for args in (("--orig-dst", fip), ("--reply-dst", fip), ("--orig-src", fixed)):
                subprocess.run(["ip", "netns", "exec", ns, self.conntrack, "-D", *args], capture_output=True,
                               check=False)

    def _underlay_dev(self) -> int:
        """Index of the host interface holding the underlay address."""
        for a in self.host_ipr.get_addr(family=2):
            if a.get("IFA_ADDRESS") == self.underlay_ip:
                return int(a["index"])
        raise GatewayError(f"no interface holds the underlay address {self.underlay_ip}")

    def _ensure_sync_leg(self, ns: str, ipr: IPRoute, r: GatewayRouter, ns_links: dict[str, dict]) -> None:
        """A macvlan of the underlay interface in the namespace, with only `r.sync_ip` (IPv6,
        no link-local, no DAD): conntrackd's channel to the router's copy on the peer host."""
        dev = r.sync_dev
        if dev not in ns_links:
            host = self.host_ipr
            parent = self._underlay_dev()
            self._do(f"macvlan {dev}", lambda: host.link("add", ifname=dev, kind="macvlan", link=parent,
                                                         macvlan_mode="bridge"), (errno.EEXIST,))
            idx = host.link_lookup(ifname=dev)
            if idx:
                self._do(f"{dev} to {ns}", lambda: host.link("set", index=idx[0], net_ns_fd=ns))
            in_netns(ns, lambda: _sync_sysctls(dev))
            found = ipr.link_lookup(ifname=dev)
            if not found:
                raise GatewayError(f"{ns}: {dev} missing after creation")
            ns_links[dev] = {"index": found[0], "up": False}
        index = ns_links[dev]["index"]
        have = {a.get("IFA_ADDRESS") for a in ipr.get_addr(family=10, index=index)}
        if have != {r.sync_ip}:
            for a in have - {r.sync_ip}:
                self._do(f"del {a}", lambda a=a: ipr.addr("del", index=index, address=a, prefixlen=SYNC_PLEN), _GONE)
            self._do(f"{dev} {r.sync_ip}", lambda: ipr.addr("replace", index=index, address=r.sync_ip,
                                                            prefixlen=SYNC_PLEN, flags=IFA_F_NODAD), (errno.EEXIST,))
        if not ns_links[dev].get("up"):
            self._do(f"{dev} up", lambda: ipr.link("set", index=index, state="up"))

    # -- one router -----------------------------------------------------------------------
    def apply_router(self, r: GatewayRouter, previous: GatewayRouter | None) -> bool:
        """Converge `r`'s namespace (see the module contract); True if it was (re)created."""
        ns = r.netns
        created = self._ensure_netns(ns)
        if previous is None and not created:     # adopted: it may predate IPv6 (sysctls of an older version)
            try:
                in_netns(ns, _write_sysctls)
            except OSError as e:
                raise GatewayError(f"namespace {ns} sysctls: {e}") from e
        try:
            with IPRoute(netns=ns) as ipr:
                return self._apply_router(ipr, r, previous, created)
        except (NetlinkError, OSError, IndexError) as e:
            raise GatewayError(f"{ns}: {e}") from e

    def _apply_router(self, ipr: IPRoute, r: GatewayRouter, previous: GatewayRouter | None, created: bool) -> bool:
        ns = r.netns
        host_links = _links(self.host_ipr)
        ns_links = _links(ipr)
        if not ns_links.get("lo", {}).get("up", True):
            self._do(f"{ns} lo up", lambda: ipr.link("set", index=ns_links["lo"]["index"], state="up"))
        wanted_inner = {leg.inner for leg in r.legs} | {"lo"} | ({r.sync_dev} if r.sync_ip else set())
        for name in sorted(set(ns_links) - wanted_inner):
            # a removed snat leg (its tap goes too)
            self._do(f"del {name}", lambda name=name: ipr.link("del", index=ns_links[name]["index"]), _GONE)
        gw_new = False
        for leg in r.legs:
            new = self._ensure_leg(ns, ipr, leg, host_links, ns_links, r.active)
            gw_new = gw_new or (new and leg is r.gw)
            extra = {f"{f.floating_ip}/32" for f in r.fips} if leg is r.gw else set()
            self._ensure_addrs(ipr, leg.inner, ns_links[leg.inner]["index"], set(leg.cidrs) | extra)
        self._ensure_routes(ipr, r, {n: ln["index"] for n, ln in ns_links.items()})
        neighs = tuple(NsNeigh(dev, ip, mac) for dev, ip, mac in r.neighs6)
        self._do(f"{ns} IPv6 neighbours", lambda: converge_neighs(
            ipr, neighs, {leg.inner: ns_links[leg.inner]["index"] for leg in r.snat_legs}, naming.SNAT_IFACE_PREFIX))
        if r.sync_ip:
            self._ensure_sync_leg(ns, ipr, r, ns_links)
        if created or previous is None or nat_ruleset(previous) != nat_ruleset(r) or gw_new:
            err = in_netns(ns, lambda: _nft_in_thread(nat_ruleset(r)))
            if err is not None:
                raise GatewayError(f"{ns} NAT table: {err}")
        if created or previous is None or filter6_ruleset(previous) != filter6_ruleset(r) or gw_new:
            err = in_netns(ns, lambda: _nft_in_thread(filter6_ruleset(r)))
            if err is not None:
                raise GatewayError(f"{ns} IPv6 filter table: {err}")
        old = {f.floating_ip: f.fixed_ip for f in (previous.fips if previous else ())}
        new = {f.floating_ip: f.fixed_ip for f in r.fips}
        self._forget_flows(ns, [(ip, fixed) for ip, fixed in old.items() if new.get(ip) != fixed])
        # Unsolicited ARP so the external network learns where the addresses live now (a
        # gateway moved to this host, or a floating IP moved here). Not waited for.
        promoted = r.active and (previous is None or not previous.active)
        if not r.active:
            garp = []
        elif created or gw_new or promoted:
            garp = [r.gw_ip, *new]
        else:
            garp = [ip for ip in new if old.get(ip) != new[ip]]
        garp = [ip for ip in garp if ":" not in ip]   # IPv6 addresses announce themselves (ndisc_notify)
        if garp:
            # a takeover: the first at once (the external switch learns the MAC's new port)
            announce(ns, r.gw.inner, r.gw.mac, garp, delays=(0.0, 0.2, 0.5, 1.0) if promoted else (0.0, 0.5, 1.0))
        return created or gw_new
