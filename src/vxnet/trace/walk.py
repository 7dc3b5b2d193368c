"""Walk one packet through the logical topology, hop by hop, over the agents' desired state.

Contract: `walk(snapshot, source, dst_ip, proto, dport, src_ip, sport)` is pure. `source` is a
port id, or an address on a `router:external` network (a client outside the cloud); a port
sends from its own MAC and first address of the destination's family (IPv4 or IPv6; `icmp`
means ICMPv6 towards an IPv6 destination) unless `src_ip` says which source address it
uses (a spoofed or former address: port security decides); `sport` is the source port (tcp/udp). It returns a `Trace`:
hops in order, each naming the host, the object and the exact entry that decides (a
security-group rule id, an FDB/neighbour entry, a route, a NAT rule), with an optional `Check`
saying which kernel object `--live` must find on which host; and the verdict.

The path model is the data path the agents build (docs/architecture.md):
source port -> port security (bridge table: `firewall.port_security` names the rule; a client
->server DHCP frame from a port DHCP steers ends at its network's responder on the host; a
request to 169.254.169.254 tcp/80 from a served port ends, after its egress security groups, at
the host's metadata proxy) ->
egress security groups (frames the port-security chain marked) -> same subnet: the
network's ARP-suppression entry and FDB entry (local tap or VXLAN to the destination's VTEP);
other subnet: the distributed router on the source host (connected subnets, extra routes,
then the policy rule to the router's centralized SNAT port) -> gateway namespace on the gateway
host (floating-IP SNAT, else SNAT to the router's gateway address when enable_snat) -> the
external network. From outside: the floating IP's gateway namespace (DNAT) -> the snat leg's
subnet -> FDB/VXLAN -> destination port. Ingress security groups are evaluated at the
destination port with the source address the port really sees (translation applied).
IPv6 follows the same path without any NAT: out through the gateway namespace's IPv6 default
route if the source is one of the router's IPv6 subnets (else the isolation filter drops it);
from outside, to the gateway namespace of a router whose IPv6 interface subnets hold the
destination (the outside's own route decides which, when two tenants use the same prefix: the
trace names them all and follows the first). Neighbours of an IPv6 next hop come from the
bridge's suppression entries, else the router's static neighbour entries.
Only the new-connection direction is traced (replies pass as `ct established` when stateful).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

from vxnet.compute import naming
from vxnet.compute.firewall import Packet, decide, port_security
from vxnet.compute.firewall_model import IP_PROTOCOL_MAP
from vxnet.compute.firewall_ps import ps_chain_name
from vxnet.compute.metadata import METADATA_IP, METADATA_PORT
from vxnet.compute.metadata import NFT_TABLE as METADATA_TABLE
from vxnet.compute.routing import MAIN_TABLE, RouterNs
from vxnet.trace.snapshot import Snapshot

SNAT_OWNER = "network:router_centralized_snat"
INTF_OWNERS = ("network:router_interface", "network:router_interface_distributed")


@dataclasses.dataclass(frozen=True)
class Check:
    """A kernel object `--live` must find: kind in fdb | neigh | nft-rule | nft-chain | route | nat."""

    kind: str
    host: str
    args: tuple[tuple[str, Any], ...]

    def arg(self, key: str) -> Any:
        return dict(self.args)[key]


@dataclasses.dataclass
class Hop:
    host: str
    what: str            # the object: "port web1 (1a2b3c4d)", "router edge (…) on h1"...
    decision: str        # what happens here and why
    check: Check | None = None
    live: str = ""       # filled by --live: "ok ..." or "DRIFT: ..."


@dataclasses.dataclass
class Trace:
    hops: list[Hop]
    verdict: str         # delivered | dropped | leaves | unreachable
    summary: str
    deciding: str = ""   # the entry that decided the verdict (rule id, route, ...)

    @property
    def drift(self) -> list[Hop]:
        return [h for h in self.hops if h.live.startswith("DRIFT")]


def protocol_number(proto: str) -> int:
    if proto.isdigit():
        return int(proto)
    if proto not in IP_PROTOCOL_MAP:
        raise ValueError(f"unknown protocol {proto!r}")
    return IP_PROTOCOL_MAP[proto]


def _packet(src: str, dst: str, proto: int, dport: int | None, sport: int | None = None) -> Packet:
    if proto in (1, 58):
        v6 = ipaddress.ip_address(dst).version == 6
        return Packet(src, dst, 58 if v6 else 1, icmp_type=128 if v6 else 8, icmp_code=0)
    return Packet(src, dst, proto, sport=sport or 40000, dport=dport)


def _address(port: dict[str, Any], version: int = 4) -> str | None:
    """The port's first fixed IP of that IP version."""
    for f in port.get("fixed_ips") or ():
        try:
            if ipaddress.ip_address(f["ip_address"]).version == version:
                return str(ipaddress.ip_address(f["ip_address"]))
        except (KeyError, ValueError):
            continue
    return None


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


def _default(ip: str) -> str:
    return "::/0" if ":" in ip else "0.0.0.0/0"


class Walker:
    def __init__(self, snap: Snapshot, proto: int, dport: int | None) -> None:
        self.s = snap
        self.proto = proto
        self.dport = dport
        self.hops: list[Hop] = []

    def hop(self, host: str, what: str, decision: str, check: Check | None = None) -> None:
        self.hops.append(Hop(host, what, decision, check))

    def done(self, verdict: str, summary: str, deciding: str = "") -> Trace:
        return Trace(self.hops, verdict, summary, deciding)

    def port_label(self, pid: str) -> str:
        return f"port {self.s.name('ports', pid)}"

    # -- security groups -----------------------------------------------------------------------
    def sg(self, host: str, pid: str, direction: str, pkt: Packet) -> tuple[bool, str]:
        """(accepted, the deciding entry in words) of the port's groups in one direction."""
        fw = self.s.firewall(host)
        verdict, ident = decide(fw, pid, direction, pkt)
        pf = fw.port(pid)
        if ident.startswith("sg:"):
            rule_id = ident[3:]
            why = self.s.describe_rule(rule_id)
            text = f"accepted by {why}"
            check = Check("nft-rule", host, (("rule", rule_id),))
        elif ident == "unfiltered":
            why = text = "not filtered (port security off, or an infrastructure port)"
            check = None
        elif ident == "default-drop":
            groups = ", ".join(self.s.name("security_groups", g) for g in (pf.groups if pf else ()))
            why = f"no {direction} rule of group(s) {groups or 'none'} matches (default drop)"
            text = f"DROPPED: {why}"
            check = Check("nft-chain", host, (("port", pid), ("direction", direction)))
        else:
            why = text = f"{verdict} ({ident})"
            check = None
        self.hop(host, f"{direction} security groups of {self.port_label(pid)}",
                 f"{text} [{_pkt_text(pkt)}]", check)
        return verdict == "accept", why

    # -- L2 on one network, from one host ----------------------------------------------------------
    def l2(self, host: str, network_id: str, target_ip: str,
           static: dict[str, tuple[str, str]] | None = None) -> tuple[str, dict[str, Any], str] | None:
        """The port holding `target_ip` on the network as seen from `host`, and its host.
        `static`: IPv6 address -> (MAC, where) of the sending namespace's own neighbour entries."""
        br, vx = naming.bridge_name(network_id), naming.vxlan_name(network_id)
        l2 = self.s.l2(host)
        routing = self.s.routing(host).l2
        neighs = {(n.dev, str(ipaddress.ip_address(n.ip))): n.mac for n in (*l2.neighs, *routing.neighs)}
        target_ip = str(ipaddress.ip_address(target_ip))
        if static and target_ip in static:     # the sender's own entry: it never solicits
            mac, where = static[target_ip]
            how = f"static neighbour {target_ip} -> {mac} in {where}"
        else:
            mac = neighs.get((br, target_ip))
            how = f"ARP for {target_ip} answered on the host ({mac})" if ":" not in target_ip else \
                f"neighbour solicitation for {target_ip} answered on the host ({mac})"
        net_label = f"network {self.s.name('networks', network_id)} on {host}"
        if mac is None:
            what = "ARP-suppression entry: the ARP request" if ":" not in target_ip else \
                "neighbour entry: the neighbour solicitation"
            self.hop(host, net_label, f"DROPPED: no port of the network holds {target_ip} "
                                      f"(no {what} is not answered)")
            return None
        found = self.s.port_by_mac(network_id, mac)
        if found is None:
            self.hop(host, net_label, f"DROPPED: {target_ip} -> {mac}, but no port has that MAC")
            return None
        pid, port = found
        fdb = [e for e in l2.fdb if e.mac == mac and e.dev in (vx, naming.tap_name(pid))]
        remote = next((e for e in fdb if e.dst), None)
        bound = port.get("binding:host_id") or ""
        if remote is not None:
            dest = self.s.host_of_vtep(remote.dst) or "?"
            vni = (self.s.objects["networks"].get(network_id) or {}).get("provider:segmentation_id")
            self.hop(host, net_label, f"{how}; FDB {mac} dev {vx} "
                                      f"dst {remote.dst}: VXLAN VNI {vni} to host {dest}",
                     Check("fdb", host, (("dev", vx), ("mac", mac), ("dst", remote.dst))))
            return pid, port, dest
        if bound == host and fdb:
            self.hop(host, net_label, f"{how}; FDB {mac} on {fdb[0].dev}: a port of this "
                                      "host", Check("fdb", host, (("dev", fdb[0].dev), ("mac", mac), ("dst", None))))
            return pid, port, host
        self.hop(host, net_label, f"DROPPED: {target_ip} is {self.port_label(pid)}, but this host has no FDB "
                                  f"entry for {mac} (port bound to {bound or 'no host'})")
        return None

    # -- routers -----------------------------------------------------------------------------------
    def route(self, host: str, rns: RouterNs, src: str, dst: str) -> tuple[str, str, str] | None:
        """(network id, next-hop IP, why) chosen by a distributed router namespace, or None."""
        addr = ipaddress.ip_address(dst)
        best: tuple[int, str, str, str] | None = None
        for ifc in rns.ifaces:
            for cidr in ifc.addresses:
                net = ipaddress.ip_interface(cidr).network
                if addr in net and (best is None or net.prefixlen > best[0]):
                    best = (net.prefixlen, ifc.network_id, dst, f"connected {net} on {ifc.name}")
        for r in rns.routes:
            if r.table != MAIN_TABLE:
                continue
            net = ipaddress.ip_network(r.dst)
            if addr in net and (best is None or net.prefixlen > best[0]):
                ifc = next((i for i in rns.ifaces if i.name == r.dev), None)
                if ifc:
                    best = (net.prefixlen, ifc.network_id, r.gateway, f"extra route {r.dst} via {r.gateway}")
        if best is not None and best[0] > 0:
            return best[1], best[2], best[3]
        s = ipaddress.ip_address(src)
        for rule in sorted(rns.rules):
            net = ipaddress.ip_network(rule.src)
            if rule.suppress_prefixlength is not None or net.version != s.version or s not in net:
                continue
            default = next((r for r in rns.routes if r.table == rule.table and r.dst == _default(dst)), None)
            ifc = next((i for i in rns.ifaces if default and i.name == default.dev), None)
            if default and ifc:
                return ifc.network_id, default.gateway, (f"rule from {rule.src} lookup {rule.table}: default via "
                                                         f"{default.gateway} (the router's "
                                                         f"{'centralized' if s.version == 6 else 'SNAT'} port)")
        return None

    def routed(self, host: str, network_id: str, gateway_ip: str, pkt: Packet) -> Trace:
        rns = next((r for r in self.s.routing(host).routers
                    if any(i.network_id == network_id and any(_same_ip(a.split("/")[0], gateway_ip)
                                                              for a in i.addresses)
                           for i in r.ifaces)), None)
        if rns is None:
            self.hop(host, f"gateway {gateway_ip}", f"DROPPED: no router on {host} owns {gateway_ip}")
            return self.done("unreachable", f"no router owns the gateway {gateway_ip}")
        label = f"router {self.s.name('routers', rns.router_id)} on {host} (namespace {rns.netns})"
        chosen = self.route(host, rns, pkt.src, pkt.dst)
        if chosen is None:
            self.hop(host, label, f"DROPPED: no route to {pkt.dst}")
            return self.done("unreachable", f"router {rns.router_id[:8]} has no route to {pkt.dst}", "no route")
        net2, nexthop, why = chosen
        fam = (lambda i: any(":" in a for a in i.addresses)) if ":" in pkt.dst else \
            (lambda i: any(":" not in a for a in i.addresses))
        leg_in = next((i.name for i in rns.ifaces if i.network_id == network_id and fam(i)), "")
        leg_out = next((i.name for i in rns.ifaces if i.network_id == net2 and fam(i)), "")
        v6 = ":" in pkt.dst
        groups = rns.scope_groups6 if v6 else rns.scope_groups
        if groups and leg_in != leg_out and not any(leg_in in g and leg_out in g for g in groups):
            self.hop(host, label, f"DROPPED: {leg_in} and {leg_out} are in different address scopes "
                                  f"(table {'ip6' if v6 else 'ip'} vxnet_scope)")
            return self.done("dropped", "the router does not route between address scopes", "address scope")
        self.hop(host, label, f"routes {pkt.dst}: {why}",
                 Check("route", host, (("netns", rns.netns), ("dst", pkt.dst), ("src", pkt.src))))
        static = {n.ip: (n.mac, f"{rns.netns} ({n.dev})") for n in rns.neighs}
        found = self.l2(host, net2, nexthop, static)
        if found is None:
            return self.done("dropped", f"next hop {nexthop} not found", "no neighbour")
        pid, port, dest = found
        if port.get("device_owner") == SNAT_OWNER and ":" in pkt.dst:
            return self.gateway_out6(dest, port, pkt)
        if port.get("device_owner") == SNAT_OWNER:
            return self.gateway_out(dest, port, pkt)
        if nexthop != pkt.dst:
            return self.done("delivered", f"forwarded to next hop {nexthop} ({self.port_label(pid)}) on {dest}", why)
        return self.arrive(dest, pid, pkt)

    # -- gateway hosts -----------------------------------------------------------------------------
    def gateway_out(self, host: str, snat_port: dict[str, Any], pkt: Packet) -> Trace:
        rid = snat_port.get("device_id", "")
        gw = next((r for r in self.s.gateway(host).routers if r.router_id == rid), None)
        label = f"gateway namespace of router {self.s.name('routers', rid)} on {host}"
        if gw is None:
            self.hop(host, label, "DROPPED: the router's gateway is not scheduled on this host")
            return self.done("dropped", "no gateway namespace", "gateway not scheduled")
        if not gw.gw_ip4:
            self.hop(host, label, "DROPPED: the external network has no IPv4 subnet (IPv6 only: no SNAT, "
                                  "no IPv4 default route)")
            return self.done("unreachable", "no IPv4 on the external network", "no route")
        fip = next((f for f in gw.fips if f.fixed_ip == pkt.src), None)
        if fip:
            new_src, why = fip.floating_ip, f"SNAT {pkt.src} -> floating IP {fip.floating_ip}"
        elif gw.enable_snat and any(ipaddress.ip_address(pkt.src) in ipaddress.ip_network(c) for c in gw.snat_cidrs):
            new_src, why = gw.gw_ip, f"SNAT {pkt.src} -> the router's gateway address {gw.gw_ip}"
        else:
            new_src, why = pkt.src, "no SNAT (enable_snat is false): the private source address leaves as is"
        self.hop(host, label, why, Check("nat", host, (("netns", gw.netns), ("match", new_src))))
        out = dataclasses.replace(pkt, src=new_src)
        inner = self.s.external_subnet_of(pkt.dst)
        if inner is not None and _fip_owner(self.s, pkt.dst):
            return self.outside_in(out, hop_text=f"to floating IP {pkt.dst} over the external network")
        if inner is not None:
            return self.done("leaves", f"leaves the cloud on external network "
                                       f"{self.s.name('networks', inner[0])} from {host} as {new_src}", why)
        return self.done("leaves", f"leaves the cloud from {host} via the external network's gateway as {new_src}", why)

    def gateway_out6(self, host: str, snat_port: dict[str, Any], pkt: Packet) -> Trace:
        """IPv6 through the router's gateway namespace: routed, never translated."""
        rid = snat_port.get("device_id", "")
        gw = next((r for r in self.s.gateway(host).routers if r.router_id == rid), None)
        label = f"gateway namespace of router {self.s.name('routers', rid)} on {host}"
        if gw is None:
            self.hop(host, label, "DROPPED: the router's gateway is not scheduled on this host")
            return self.done("dropped", "no gateway namespace", "gateway not scheduled")
        src = ipaddress.ip_address(pkt.src)
        if not any(src in ipaddress.ip_network(c) for c in gw.cidrs6):
            self.hop(host, label, f"DROPPED: {pkt.src} is not in the router's IPv6 subnets "
                                  f"({', '.join(gw.cidrs6) or 'none'}): table ip6 vxnet_v6 isolation filter")
            return self.done("dropped", "IPv6 source outside the router's own subnets", "ipv6 isolation")
        inner = self.s.external_subnet_of(pkt.dst)
        if not gw.gateway_ip6 and inner is None:
            self.hop(host, label, "DROPPED: no IPv6 default route (the gateway has no external IPv6 subnet)")
            return self.done("unreachable", "no IPv6 route out", "no route")
        way = f"on-link on {gw.gw.inner}" if inner is not None else f"::/0 via {gw.gateway_ip6} dev {gw.gw.inner}"
        self.hop(host, label, f"routes {pkt.dst} {way}: no NAT for IPv6 (the source stays {pkt.src})",
                 Check("route", host, (("netns", gw.netns), ("dst", pkt.dst), ("src", pkt.src))))
        return self.done("leaves", f"leaves the cloud from {host} as {pkt.src} (IPv6, routed)", way)

    def outside_in6(self, pkt: Packet) -> Trace:
        """From outside to a tenant IPv6 address: through a router whose IPv6 subnets hold it."""
        dst = ipaddress.ip_address(pkt.dst)
        found = [(h, r) for h in sorted(self.s.hosts) for r in self.s.gateway(h).routers
                 if any(dst in ipaddress.ip_network(c) for c in r.cidrs6)]
        if not found:
            self.hop("-", "external network", f"DROPPED: no router of this cloud has an IPv6 subnet holding {pkt.dst}")
            return self.done("unreachable", f"no router routes {pkt.dst}", "no route")
        host, gw = found[0]
        via = ", ".join(f"{self.s.name('routers', r.router_id)} at {_gw6(r)}" for _, r in found)
        more = f" (the outside's route decides; candidates: {via})" if len(found) > 1 else ""
        label = f"gateway namespace of router {self.s.name('routers', gw.router_id)} on {host}"
        leg = next((lg for lg in gw.snat_legs for c in lg.cidrs if ":" in c
                    and dst in ipaddress.ip_interface(c).network), None)
        if leg is None:
            self.hop(host, label, f"DROPPED: no leg on the subnet of {pkt.dst}")
            return self.done("unreachable", "no leg on the destination's subnet", "no route")
        self.hop(host, label, f"the outside routes {pkt.dst} via {_gw6(gw)}{more}; connected on {leg.inner}, "
                              "no NAT", Check("route", host, (("netns", gw.netns), ("dst", pkt.dst),
                                                              ("src", pkt.src))))
        net = (self.s.objects["ports"].get(leg.port_id) or {}).get("network_id") or ""
        static = {ip: (mac, f"{gw.netns} ({dev})") for dev, ip, mac in gw.neighs6}
        got = self.l2(host, net, pkt.dst, static)
        if got is None:
            return self.done("dropped", f"{pkt.dst} not found", "no neighbour")
        pid, _, dest = got
        return self.arrive(dest, pid, pkt)

    def outside_in(self, pkt: Packet, hop_text: str = "") -> Trace:
        if ":" in pkt.dst:
            return self.outside_in6(pkt)
        owner = _fip_owner(self.s, pkt.dst)
        if owner is None:
            for rid, r in sorted(self.s.objects["routers"].items()):
                for f in (r.get("external_gateway_info") or {}).get("external_fixed_ips") or ():
                    if f.get("ip_address") == pkt.dst:
                        self.hop("-", f"router {self.s.name('routers', rid)}",
                                 "the router's own gateway address: nothing is forwarded inwards")
                        return self.done("unreachable", f"{pkt.dst} is a router gateway address", "no DNAT")
            self.hop("-", "external network", f"DROPPED: {pkt.dst} is no floating IP of this cloud")
            return self.done("unreachable", f"no floating IP {pkt.dst}", "no floating IP")
        _, fip = owner
        rid = fip.get("router_id") or ""
        host = next((h for h in sorted(self.s.hosts) for r in self.s.gateway(h).routers if r.router_id == rid
                     and any(f.floating_ip == pkt.dst for f in r.fips)), None)
        if host is None:
            self.hop("-", f"floating IP {pkt.dst}", "DROPPED: no gateway host holds it (router not scheduled, "
                                                     "or the floating IP has no port)")
            return self.done("unreachable", "floating IP not served by any gateway", "not scheduled")
        gw = next(r for r in self.s.gateway(host).routers if r.router_id == rid)
        nat = next(f for f in gw.fips if f.floating_ip == pkt.dst)
        self.hop(host, f"gateway namespace of router {self.s.name('routers', rid)} on {host}",
                 f"{hop_text + ': ' if hop_text else ''}DNAT floating IP {pkt.dst} -> {nat.fixed_ip}",
                 Check("nat", host, (("netns", gw.netns), ("match", nat.fixed_ip))))
        inner = dataclasses.replace(pkt, dst=nat.fixed_ip)
        leg_net = None
        for leg in gw.snat_legs:
            if ipaddress.ip_address(nat.fixed_ip) in ipaddress.ip_interface(leg.cidr).network:
                leg_net = (self.s.objects["ports"].get(leg.port_id) or {}).get("network_id")
        if leg_net is None:
            self.hop(host, "gateway namespace", f"DROPPED: no leg on the subnet of {nat.fixed_ip}")
            return self.done("unreachable", "no SNAT leg on the fixed IP's subnet", "no route")
        found = self.l2(host, leg_net, nat.fixed_ip)
        if found is None:
            return self.done("dropped", f"{nat.fixed_ip} not found", "no neighbour")
        pid, _, dest = found
        return self.arrive(dest, pid, inner)

    # -- the destination -----------------------------------------------------------------------------
    def arrive(self, host: str, pid: str, pkt: Packet) -> Trace:
        port = self.s.objects["ports"].get(pid) or {}
        owner = port.get("device_owner") or ""
        if owner in INTF_OWNERS:
            self.hop(host, f"router interface {self.port_label(pid)}", "the router itself answers")
            return self.done("delivered", f"delivered to the router's interface {pkt.dst}")
        ok, ident = self.sg(host, pid, "ingress", pkt)
        if not ok:
            return self.done("dropped", f"dropped by the ingress security groups of {self.port_label(pid)} on {host}",
                             ident)
        return self.done("delivered", f"delivered to {self.port_label(pid)} on {host}", ident)


def _pkt_text(pkt: Packet) -> str:
    proto = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}.get(pkt.protocol, str(pkt.protocol))
    return f"{proto} {pkt.src} -> {pkt.dst}{f':{pkt.dport}' if pkt.dport else ''}"


def _gw6(r: Any) -> str:
    return next((c.split("/")[0] for c in r.gw.cidrs if ":" in c), "?")


def _fip_owner(s: Snapshot, ip: str) -> tuple[str, dict[str, Any]] | None:
    for fid, f in sorted(s.objects["floatingips"].items()):
        if f.get("floating_ip_address") == ip and f.get("port_id"):
            return fid, f
    return None


def _port_security(w: Walker, host: str, source: str, port: dict[str, Any], pkt: Packet) -> Trace | None:
    """The source port's anti-spoofing hop; a Trace when the frame ends there (dropped, or
    steered to the DHCP responder), None when it goes on (to the egress security groups when
    marked)."""
    fw = w.s.firewall(host)
    pf = fw.port(source)
    mac = str(port.get("mac_address") or "")
    steered = next((r for r in w.s.dhcp(host).responders if naming.tap_name(source) in r.taps), None)
    dhcp_client = pkt.protocol == 17 and (pkt.sport, pkt.dport) == (68, 67)
    if pf is None:
        w.hop(host, w.port_label(source), f"sends {_pkt_text(pkt)}; port security off: not checked")
        verdict, kind = "accept", "unfiltered"
    else:
        verdict, kind = port_security(fw, source, mac, pkt)
        # the shared chain of its kind (`ps6` with IPv6 pairs, else `ps`), its facts in the sets
        check = Check("nft-rule", host, (("table", "ps"), ("chain", ps_chain_name(pf)), ("rule", kind)))
        why = {"mark": "from its own MAC and address", "mark6": "from its own MAC and IPv6 address",
               "v6-unspecified": "duplicate address detection or MLD from ::",
               "dhcp-client": "a DHCP client frame from 0.0.0.0",
               "dhcp-renew": "a DHCP request steered to its network's responder, whatever its source address",
               }.get(kind, "")
        w.hop(host, w.port_label(source), f"sends {_pkt_text(pkt)}: port security "
                                          f"{'passes' if verdict == 'accept' else 'DROPS it'} (rule {kind}"
                                          f"{': ' + why if why else ''})", check)
        if verdict != "accept":
            return w.done("dropped", f"dropped by the port security of {w.port_label(source)} ({kind})", kind)
        if kind in ("mark", "mark6"):
            ok, ident = w.sg(host, source, "egress", pkt)
            if not ok:
                return w.done("dropped", f"dropped by the egress security groups of {w.port_label(source)}", ident)
    if dhcp_client and steered is not None:
        w.hop(host, f"network {w.s.name('networks', steered.network_id)} on {host}",
              f"DHCP steering: destination MAC -> the responder {steered.mac} (table bridge vxnet_dhcp)")
        return w.done("delivered", f"steered to the DHCP responder of network "
                                   f"{w.s.name('networks', steered.network_id)} on {host}", kind)
    return None


def walk(snap: Snapshot, source: str, dst_ip: str, proto: str = "icmp", dport: int | None = None,
         src_ip: str | None = None, sport: int | None = None) -> Trace:
    """Trace a new connection from `source` (port id or outside address) to `dst_ip` (from
    `src_ip` instead of the port's own address when given; source port `sport`)."""
    w = Walker(snap, protocol_number(proto), dport)
    try:
        version = ipaddress.ip_address(dst_ip).version
    except ValueError:
        raise ValueError(f"{dst_ip!r} is not an IP address") from None
    port = snap.objects["ports"].get(source)
    if port is None:
        try:
            if ipaddress.ip_address(source).version != version:
                raise ValueError(f"{source} and {dst_ip} are not of the same IP version")
        except ValueError as e:
            if "same IP version" in str(e):
                raise
            raise ValueError(f"{source!r} is neither a port id, a lab VM name, nor an IP address") from None
        ext = snap.external_subnet_of(source)
        if ext is None:
            raise ValueError(f"{source} is neither a port id nor an address on an external network")
        w.hop("-", f"client {source} outside the cloud", f"on external network {snap.name('networks', ext[0])}")
        return w.outside_in(_packet(source, dst_ip, w.proto, dport, sport))
    host = port.get("binding:host_id") or ""
    src = src_ip or _address(port, version)
    if not host or not src:
        w.hop(host or "-", w.port_label(source), f"DROPPED: the port is not bound to a host or has no "
                                                 f"IPv{version} address")
        return w.done("unreachable", "source port not bound", "unbound")
    pkt = _packet(src, dst_ip, w.proto, dport, sport)
    net = port["network_id"]
    ended = _port_security(w, host, source, port, pkt)
    if ended is not None:
        return ended
    if (dst_ip, w.proto, dport) == (METADATA_IP, 6, METADATA_PORT):
        served = next((p for p in snap.desired(host).metadata.ports if p.port_id == source), None)
        if served is not None:
            w.hop(host, f"network {snap.name('networks', net)} on {host}",
                  f"metadata steering (table bridge {METADATA_TABLE}): destination MAC -> the metadata device, "
                  f"source -> proxy address {served.proxy_ip} (from the tap, not the packet)")
            what = f"instance {served.device_id}" if served.device_id else "no device_id: answered 404"
            return w.done("delivered", f"steered to the metadata proxy on {host} ({what})", "metadata")
    sub = snap.subnet_of(net, src)
    own = _address(port, version)
    if sub is None and own is not None:     # another source address: still its own subnet's gateway
        sub = snap.subnet_of(net, own)
    if sub is not None and ipaddress.ip_address(dst_ip) in ipaddress.ip_network(sub[1]["cidr"]):
        found = w.l2(host, net, dst_ip)
        if found is None:
            return w.done("dropped", f"no port holds {dst_ip} on the source's network", "no neighbour")
        pid, _, dest = found
        return w.arrive(dest, pid, pkt)
    gateway_ip = (sub[1].get("gateway_ip") if sub else None) or ""
    if not gateway_ip:
        w.hop(host, "subnet", f"DROPPED: {dst_ip} is off-subnet and the subnet has no gateway")
        return w.done("unreachable", "no gateway", "no gateway")
    return w.routed(host, net, gateway_ip, pkt)
