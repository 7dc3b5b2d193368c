"""View of one host -> its desired metadata-proxy state; and what the proxy sends Nova (pure).

Contract: `compute_metadata(view, host)` is a pure function of its arguments, and so are
`nft_script`, `steer_script`, `sign`, `upstream_headers` and `needs_metadata_route` (docs/metadata.md).

Desired state:
- A *served* port (`served`): bound to this host, `admin_state_up` not false, not an
  infrastructure port (`network:*`), with a MAC and an IPv4 fixed IP (its first one), on a
  VXLAN network of the view. A served port without `device_id` is still steered: the proxy
  answers it 404 rather than letting the request wander to a router.
- Every served port gets a *proxy address* (`proxy_ip`): a link-local address
  (169.254.0.0/16, never 169.254.169.254), unique on this host, derived from a hash of the port
  id (linear probing in port-id order, so an address only moves on a collision). It names the
  port inside the host's metadata namespace: it is how the proxy knows which port a connection
  came from. It is written into the packet by the bridge, keyed by the tap the frame entered
  from, never taken from the packet (the VM's source IP or MAC play no part).
- Per network with a served port: a veth pair, bridge side `vxpm<net>` (a service port: the L2
  part plugs it and pins the metadata MAC on it), other side `vxmd<net>` inside the host's
  metadata namespace `vxm-<host>`, holding 169.254.169.254/32 and the metadata MAC
  (`metadata_mac`: from the network id, the same on every host, first octet 0x0e). In the
  namespace each served port has a route `<proxy ip>/32 dev vxmd<net>` and a permanent
  neighbour `<proxy ip> -> port MAC`. The L2 part also adds a bridge neighbour entry
  169.254.169.254 -> metadata MAC (a VM that ARPs for it directly gets the namespace's answer,
  and the ARP never floods to the VXLAN port).
- Steering, table `bridge vxnet_meta` (`steer_script`: one transaction; the whole table when
  its state is unknown, else only the map elements that changed):
  1. prerouting (priority -300, before port security and br_netfilter): a frame from a served
     tap to 169.254.169.254 tcp/80 gets `ether daddr` = its network's metadata MAC, whatever
     MAC it was sent to (the router's, the DHCP server's): it is bridged to `vxpm<net>` only.
  2. forward (priority 10: after br_netfilter has run conntrack and the security groups on the
     VM's real addresses): towards a `vxpm*` port, such a frame gets `ip saddr` = the proxy
     address of the tap it came from; ARP passes (answers for 169.254.169.254); everything
     else is dropped (so no other frame, from a VM or from the VXLAN port, reaches the
     namespace).
  3. prerouting: a reply from a `vxpm*` port from 169.254.169.254 tcp/80 to a proxy address
     gets `ip daddr` = that port's fixed IP, before conntrack: conntrack sees exactly the reverse
     of the VM's request (the security groups' `ct state established` lets it in) and the VM
     sees an answer from 169.254.169.254 to itself.
  A VM spoofing its source IP or MAC is still identified by its tap: it gets its own metadata
  (or nothing, when port security drops the spoofed frame first).
  Per-packet cost: each rule tests addresses, protocol or ether type before the port name, so
  a frame of the data path (a VM's TCP to another VM) leaves the table after cheap
  comparisons and one copy of its output port's name (the forward chain's last rule).

Proxying (`upstream_headers`, as Neutron's metadata agent): `X-Instance-ID` = device_id,
`X-Tenant-ID` = project, `X-Forwarded-For` = the port's fixed IP, `X-Instance-ID-Signature` =
hex HMAC-SHA256(shared secret, instance id); every header of the VM's request that could
impersonate those is dropped.

DHCP (`needs_metadata_route`): a subnet that no router interface is on gets the option-121 route
169.254.169.254/32 via its DHCP server address (Neutron's isolated metadata).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from vxnet.compute import naming
from vxnet.compute.state import Fdb, HostState, Neigh, Plug
from vxnet.model import Port, Subnet, View, as_view

METADATA_IP = "169.254.169.254"
METADATA_PORT = 80
SERVICE_KIND = naming.METADATA_KIND
DEVICE_PREFIX = naming.METADATA_DEVICE_PREFIX
NETNS_PREFIX = naming.METADATA_NS_PREFIX
NFT_TABLE = naming.METADATA_TABLE[1]
PROXY_NET = ipaddress.IPv4Network("169.254.0.0/16")
ROUTER_OWNERS = ("network:router_interface", "network:router_interface_distributed",
                 "network:ha_router_replicated_interface")
# Headers of the VM's request never forwarded (they are the proxy's to set, or hop-by-hop).
DROPPED_HEADERS = frozenset({"x-instance-id", "x-tenant-id", "x-forwarded-for", "x-instance-id-signature",
                             "x-instance-id-signature-secret", "x-metadata-provider", "x-metadata-provider-signature",
                             "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host",
                             "content-length", "te", "trailer", "proxy-authorization"})


def service_port(network_id: str) -> str:
    """Bridge side of a network's metadata veth."""
    return naming.service_port_name(SERVICE_KIND, network_id)


def device_name(network_id: str) -> str:
    """Metadata-namespace side of a network's metadata veth."""
    return DEVICE_PREFIX + network_id[:naming.ID_CHARS]


def netns_name(host: str) -> str:
    """The host's metadata namespace (the host name is part of it: lab hosts share /run/netns)."""
    return NETNS_PREFIX + host


def metadata_mac(network_id: str) -> str:
    """The metadata device's MAC on a network: the same on every host, locally administered
    unicast, first octet 0x0e (never a bridge's 0x02 nor a DHCP responder's 0x0a)."""
    digest = hashlib.sha256(f"metadata/{network_id}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x0E, *digest[:5]))


@dataclasses.dataclass(frozen=True, order=True)
class MetaPort:
    """One served port: what the proxy tells Nova about a connection from `proxy_ip`."""

    port_id: str
    network_id: str
    device: str              # the tap (or subport device) its frames enter the bridge from
    mac: str
    fixed_ip: str
    proxy_ip: str
    device_id: str = ""      # the instance (empty: answered 404)
    project_id: str = ""


@dataclasses.dataclass(frozen=True, order=True)
class MetaNetwork:
    """The metadata veth of one network on this host."""

    network_id: str
    port: str                # bridge side (service port)
    device: str              # inside the metadata namespace
    mac: str
    bridge: str
    mtu: int


@dataclasses.dataclass(frozen=True)
class MetadataState:
    """Desired metadata state of a host."""

    netns: str = ""
    networks: tuple[MetaNetwork, ...] = ()       # sorted by network id
    ports: tuple[MetaPort, ...] = ()             # sorted by port id
    l2: HostState = dataclasses.field(default_factory=HostState)

    def by_proxy_ip(self) -> dict[str, MetaPort]:
        return {p.proxy_ip: p for p in self.ports}


def served(port: Port, host: str) -> bool:
    """A local VM port that the proxy serves (see module contract; the network is checked apart)."""
    return port.host == host and port.admin_up and not port.is_infra and bool(port.mac) and bool(port.ipv4)


def _proxy_number(port_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"metadata-proxy/{port_id}".encode()).digest()[:4], "big") % 65534 + 1


_EXCLUDED = {int(ipaddress.IPv4Address(METADATA_IP)) - int(PROXY_NET.network_address)}


def proxy_ips(port_ids: Iterable[str]) -> dict[str, str]:
    """Port id -> proxy address, unique (hash, then linear probing in port-id order)."""
    taken = set(_EXCLUDED)
    out = {}
    for pid in sorted(port_ids):
        n = _proxy_number(pid)
        while n in taken:
            n = n % 65534 + 1
        taken.add(n)
        out[pid] = str(PROXY_NET.network_address + n)
    return out


def reads_port(port: Port, host: str) -> bool:
    """Whether `compute_metadata(view, host)` reads `port`: only this host's ports (a port of
    another host joining, leaving or changing leaves the result as it was)."""
    return port.host == host


def compute_metadata(view: View | Mapping[str, Mapping[str, Any]], host: str) -> MetadataState:
    """Desired metadata state of `host` (see module contract)."""
    v = as_view(view)
    local = [p for p in v.ports.values() if p.host == host]       # the cheap test first: views hold peers' ports
    chosen = sorted((p for p in local if served(p, host) and p.network_id in v.networks
                     and v.networks[p.network_id].is_vxlan), key=lambda p: p.id)
    if not chosen:
        return MetadataState()
    addrs = proxy_ips(p.id for p in chosen)
    ports = tuple(MetaPort(p.id, p.network_id, naming.port_device(p.id, p.is_subport), p.mac, p.ipv4[0].ip_address,
                           addrs[p.id], p.device_id, p.project_id) for p in chosen)
    nets = tuple(MetaNetwork(nid, service_port(nid), device_name(nid), metadata_mac(nid), naming.bridge_name(nid),
                             v.networks[nid].mtu) for nid in sorted({p.network_id for p in chosen}))
    l2 = HostState(plugs=frozenset(Plug(n.port, n.bridge, n.mtu) for n in nets),
                   fdb=frozenset(Fdb(n.port, n.mac) for n in nets),
                   neighs=frozenset(Neigh(n.bridge, METADATA_IP, n.mac) for n in nets))
    return MetadataState(netns_name(host), nets, ports, l2)


Elements = dict[str, frozenset[tuple[str, str]]]     # map name -> {(key, value)}


def steer_elements(state: MetadataState) -> Elements:
    """The steering table's map elements: `steer` tap -> metadata MAC, `src` tap -> proxy
    address, `back` service port . proxy address -> fixed IP."""
    mac = {n.network_id: n.mac for n in state.networks}
    port_of = {n.network_id: n.port for n in state.networks}
    return {"steer": frozenset((f'"{p.device}"', mac[p.network_id]) for p in state.ports),
            "src": frozenset((f'"{p.device}"', p.proxy_ip) for p in state.ports),
            "back": frozenset((f'"{port_of[p.network_id]}" . {p.proxy_ip}', p.fixed_ip) for p in state.ports)}


def nft_script(state: MetadataState) -> str:
    """The steering table, replaced atomically; only its deletion when nothing is served."""
    return steer_script(None, steer_elements(state))


MAP_TYPES = {"steer": "ifname : ether_addr", "src": "ifname : ipv4_addr", "back": "ifname . ipv4_addr : ipv4_addr"}


def steer_script(applied: Elements | None, wanted: Elements) -> str:
    """The transaction that turns the table holding `applied` (None: unknown or absent) into one
    holding `wanted`: the whole table when its state is unknown or it comes or goes (deleting and
    re-creating a table costs 5-20 ms here: base chains are unregistered and registered again),
    else only the map elements that changed (a port-up: one element per map); "" for no change."""
    head = f"table bridge {NFT_TABLE}\ndelete table bridge {NFT_TABLE}\n"
    have_any, want_any = applied is not None and any(applied.values()), any(wanted.values())
    if applied is not None and have_any and want_any:
        lines = []
        for name in ("steer", "src", "back"):
            gone = {k for k, _ in applied[name] - wanted[name]} - {k for k, _ in wanted[name]}
            changed = wanted[name] - applied[name]
            if gone:
                lines.append(f"delete element bridge {NFT_TABLE} {name} {{ {', '.join(sorted(gone))} }}")
            if changed:      # a key whose value changed: delete it first (add would not replace it)
                stale = {k for k, _ in changed} & {k for k, _ in applied[name]}
                if stale:
                    lines.append(f"delete element bridge {NFT_TABLE} {name} {{ {', '.join(sorted(stale))} }}")
                # as the map's declaration: libnftables then needs no cache of the ruleset's chains and sets
                lines.append(f"add map bridge {NFT_TABLE} {name} {{ type {MAP_TYPES[name]}; elements = "
                             f"{{ {', '.join(f'{k} : {v}' for k, v in sorted(changed))} }}; }}")
        return "".join(line + "\n" for line in lines)
    if applied is not None and not have_any and not want_any:
        return ""
    if not want_any:
        return head

    def elements(name: str) -> str:
        return ", ".join(f"{k} : {v}" for k, v in sorted(wanted[name]))

    steer, src, back = elements("steer"), elements("src"), elements("back")
    svc = naming.SERVICE_PREFIX + SERVICE_KIND
    return head + (
        f"table bridge {NFT_TABLE} {{\n"
        f"  map steer {{\n    type {MAP_TYPES['steer']}\n    elements = {{ {steer} }}\n  }}\n"
        f"  map src {{\n    type {MAP_TYPES['src']}\n    elements = {{ {src} }}\n  }}\n"
        f"  map back {{\n    type {MAP_TYPES['back']}\n    elements = {{ {back} }}\n  }}\n"
        "  chain prerouting {\n"
        "    type filter hook prerouting priority -300; policy accept;\n"
        f"    ip daddr {METADATA_IP} tcp dport {METADATA_PORT} ether daddr set iifname map @steer\n"
        f'    ip saddr {METADATA_IP} tcp sport {METADATA_PORT} iifname "{svc}*" ip daddr set iifname . ip daddr map @back\n'
        "  }\n"
        "  chain forward {\n"
        "    type filter hook forward priority 10; policy accept;\n"
        f'    ip daddr {METADATA_IP} tcp dport {METADATA_PORT} oifname "{svc}*" ip saddr set iifname map @src accept\n'
        f'    ether type arp oifname "{svc}*" accept\n'
        f'    oifname "{svc}*" counter drop\n'
        "  }\n}\n")


# ---------------------------------------------------------------------------------- proxying
def sign(secret: str, instance_id: str) -> str:
    """Nova's `X-Instance-ID-Signature`: hex HMAC-SHA256 of the instance id with the shared secret."""
    return hmac.new(secret.encode(), instance_id.encode(), hashlib.sha256).hexdigest()


def upstream_headers(port: MetaPort, secret: str, client: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers of the request sent to Nova for `port`: the VM's own ones minus `DROPPED_HEADERS`,
    plus the four identifying headers (the only ones that name the instance)."""
    out = [(k, v) for k, v in client if k.lower() not in DROPPED_HEADERS]
    out += [("X-Forwarded-For", port.fixed_ip), ("X-Instance-ID", port.device_id),
            ("X-Tenant-ID", port.project_id), ("X-Instance-ID-Signature", sign(secret, port.device_id))]
    return out


def needs_metadata_route(subnet: Subnet, network_ports: Iterable[Port]) -> bool:
    """True when no router interface is on `subnet` (its VMs reach 169.254.169.254 through the
    option-121 route via the DHCP server address; with a router they use their default route)."""
    return not any(p.device_owner in ROUTER_OWNERS and any(f.subnet_id == subnet.id for f in p.fixed_ips)
                   for p in network_ports)
