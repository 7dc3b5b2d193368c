"""The metadata proxy's kernel side: the host's metadata namespace, its veth pairs, routes and
neighbours, and the steering table `bridge vxnet_meta` (compute/metadata.py says what they are).

Contract:
- `MetadataLinks(host_netns).converge(state)` makes the metadata namespace `state.netns` exist
  (sysctls: IPv6 off, no forwarding, rp_filter off, arp_ignore 1, port 80 bindable without
  CAP_NET_BIND_SERVICE; `lo` up) and hold exactly the
  wanted `vxmd*` devices (peers of the `vxpm*` service ports in the host namespace, created as one
  pair across the two namespaces), with the metadata MAC, the network MTU, up, and
  169.254.169.254/32; exactly the wanted `<proxy ip>/32` routes (protocol `ROUTE_PROTO`) and
  permanent neighbours on them. Host-side `vxpm*` ports without a wanted peer are deleted. It
  reads the kernel back (one namespace, a few dumps, one host link dump) on its first call,
  after `drop_sockets()` (the feature's `invalidate()`: drift repair), after a failure, and
  whenever the networks change; a change of ports only (a port-up: one route and one
  neighbour) is applied as a difference from what it converged last. Idempotent (EEXIST/ENOENT count as
  success); failures raise OSError (`rtnl_links.RtnlError` for the kernel's refusals).
  Kernel access: raw rtnetlink (`rtnl`, `rtnl_links`, `rtnl_routes`) and `netns` (no pyroute2).
- `MetadataLinks.remove(netns)` deletes the namespace and the host-side service ports.
- `NsWorker(netns)`: one daemon thread inside a namespace (the host's) running the nftables
  transactions (a libnftables context lives in the namespace of the thread that made it).
- `listen_socket(netns)`: a TCP socket bound to 0.0.0.0:80 inside the metadata namespace (made
  by a short-lived thread that entered it; a socket keeps its namespace): only the `vxmd`
  devices reach it.
Ownership: the namespace `vxm-<host>`, links `vxmd*` in it, routes of protocol `ROUTE_PROTO`
there, service ports `vxpm*` in the host namespace, the table `bridge vxnet_meta`.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import socket
import threading
from collections.abc import Callable
from typing import Any

from vxnet.compute import naming
from vxnet.compute.metadata import DEVICE_PREFIX, METADATA_IP, METADATA_PORT, SERVICE_KIND, MetadataState
from vxnet.dataplane import netns as nsmod
from vxnet.dataplane.netns import in_netns
from vxnet.dataplane.nft_exec import NftExecutor
from vxnet.dataplane.rtnl import NUD_PERMANENT, NeighRequest, RtnlSocket, dump_links, setns
from vxnet.dataplane.rtnl_links import RtnlError, RtnlLinks, del_link, new_veth, set_link
from vxnet.dataplane.rtnl_routes import RT_SCOPE_LINK, addrs, new_addr, route, routes

log = logging.getLogger("vxnet.dataplane.metadata")

NETNS_DIR = "/run/netns"
ROUTE_PROTO = naming.ROUTER_ROUTE_PROTO
IFF_UP = 0x1
SERVICE_PREFIX = naming.SERVICE_PREFIX + SERVICE_KIND
SYSCTLS = (
    ("net/ipv6/conf/all/disable_ipv6", "1"),
    ("net/ipv6/conf/default/disable_ipv6", "1"),
    ("net/ipv4/ip_forward", "0"),
    ("net/ipv4/conf/all/rp_filter", "0"),
    ("net/ipv4/conf/default/rp_filter", "0"),
    ("net/ipv4/conf/all/arp_ignore", "1"),          # answer ARP only for the device's own address
    ("net/ipv4/conf/default/arp_ignore", "1"),
    # The listener binds port 80 here; the agent's systemd unit keeps no CAP_NET_BIND_SERVICE,
    # and only the agent's own socket lives in this namespace.
    ("net/ipv4/ip_unprivileged_port_start", "80"),
)


def _write_sysctls() -> None:
    for key, value in SYSCTLS:
        path = "/proc/sys/" + key
        with open(path) as f:
            if f.read().strip() == value:
                continue
        with open(path, "w") as f:
            f.write(value)


def _ok(fn: Callable[[], object], codes: tuple[int, ...]) -> None:
    try:
        fn()
    except RtnlError as e:
        if e.code not in codes:
            raise


def _neigh(links: RtnlLinks, req: NeighRequest, codes: tuple[int, ...] = ()) -> None:
    """One neighbour request (errors in `codes` count as success)."""
    (code,) = links.sock.batch([req])
    if code and code not in codes:
        raise RtnlError(code, f"neighbour {req.op} {req.dst}: {os.strerror(code)}")


def _neigh_replace(dst: str, ifindex: int, mac: str) -> NeighRequest:
    return NeighRequest("replace", socket.AF_INET, ifindex, NUD_PERMANENT, 0, mac, dst)


def _neigh_del(dst: str, ifindex: int) -> NeighRequest:
    return NeighRequest("del", socket.AF_INET, ifindex, NUD_PERMANENT, 0, None, dst)


GONE = (errno.ENOENT, errno.ENODEV, errno.ESRCH)
EXISTS = (errno.EEXIST,)


class MetadataLinks:
    """The metadata namespace and its links, converged whole (see module contract)."""

    def __init__(self, host_netns: str | None, run_dir: str = NETNS_DIR) -> None:
        self.host_netns = host_netns
        self.run_dir = run_dir
        self._host: RtnlLinks | None = None
        self._ns: dict[str, RtnlLinks] = {}
        self._known: MetadataState | None = None    # converged by the last call (None: read the kernel)
        self._index: dict[str, int] = {}            # vxmd device -> ifindex, as of `_known`

    def close(self) -> None:
        for links in [self._host, *self._ns.values()]:
            if links is not None:
                links.sock.close()
        self._host = None
        self._ns.clear()
        self._known = None

    @property
    def host(self) -> RtnlLinks:
        if self._host is None:
            self._host = RtnlLinks(RtnlSocket(self.host_netns))
        return self._host

    def _ipr(self, name: str) -> RtnlLinks:
        if name not in self._ns:
            self._ns[name] = RtnlLinks(RtnlSocket(os.path.join(self.run_dir, name)))
        return self._ns[name]

    def drop_sockets(self) -> None:
        """Forget the netlink sockets (after a failure: the namespace may have been replaced)."""
        self.close()

    def ensure_netns(self, name: str) -> bool:
        """Create the namespace if missing (True when created), sysctls and `lo` up."""
        path = os.path.join(self.run_dir, name)
        created = False
        if not os.path.ismount(path):
            stale = self._ns.pop(name, None)
            if stale is not None:
                stale.sock.close()
            if os.path.exists(path):
                os.unlink(path)        # a name without a namespace behind it
            try:
                nsmod.create(name, self.run_dir)
                created = True
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise
        in_netns(path, _write_sysctls)
        ipr = self._ipr(name)
        lo = ipr.index("lo")
        if lo is not None:
            ipr.call(set_link(lo, up=True))
        return created

    def converge(self, state: MetadataState) -> dict[str, int]:
        """Make the namespace and links exactly `state` (returns change counts). After a full
        read-back, a change of ports only (the same networks: a port-up) is applied as the route
        and neighbour differences from the last converged state, without reading the kernel;
        anything else, or the first call after `drop_sockets()` or a failure, reads it all."""
        known, self._known = self._known, None
        try:
            if known is not None and (known.netns, known.networks) == (state.netns, state.networks):
                changes = self._ports_only(known, state)
            else:
                changes = self._full(state)
        except BaseException:
            self.drop_sockets()
            raise
        self._known = state
        return changes

    def _ports_only(self, known: MetadataState, state: MetadataState) -> dict[str, int]:
        ipr = self._ipr(state.netns)
        dev = {n.network_id: self._index[n.device] for n in state.networks}
        old = {(p.proxy_ip, dev[p.network_id], p.mac) for p in known.ports}
        new = {(p.proxy_ip, dev[p.network_id], p.mac) for p in state.ports}
        changes: dict[str, int] = {}
        for ip, oif, _ in sorted(old - new):
            if (ip, oif) not in {(i, o) for i, o, _ in new}:
                _ok(lambda ip=ip, oif=oif: ipr.call(route("del", ip, 32, oif, ROUTE_PROTO)), GONE)
                _neigh(ipr, _neigh_del(ip, oif), GONE)
                changes["route_deleted"] = changes.get("route_deleted", 0) + 1
        for ip, oif, mac in sorted(new - old):
            ipr.call(route("replace", ip, 32, oif, ROUTE_PROTO, RT_SCOPE_LINK))
            _neigh(ipr, _neigh_replace(ip, oif, mac))
            changes["route"] = changes.get("route", 0) + 1
        return changes

    def _full(self, state: MetadataState) -> dict[str, int]:
        changes: dict[str, int] = {}

        def count(kind: str) -> None:
            changes[kind] = changes.get(kind, 0) + 1

        if self.ensure_netns(state.netns):
            count("namespace")
        ipr = self._ipr(state.netns)
        links = {ln.ifname: ln for ln in dump_links(ipr.sock)}
        wanted = {n.device: n for n in state.networks}
        for name, ln in links.items():
            if name.startswith(DEVICE_PREFIX) and name not in wanted:
                _ok(lambda ln=ln: ipr.call(del_link(ln.index)), GONE)
                count("link_deleted")
        index: dict[str, int] = {}
        for n in state.networks:
            ln = links.get(n.device)
            host_idx = self.host.index(n.port)
            if ln is None or host_idx is None:
                if ln is not None:
                    _ok(lambda ln=ln: ipr.call(del_link(ln.index)), GONE)
                if host_idx is not None:
                    _ok(lambda i=host_idx: self.host.call(del_link(i)), GONE)
                fd = os.open(os.path.join(self.run_dir, state.netns), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    self.host.call(new_veth(n.port, n.device, n.mtu, peer_mac=n.mac, peer_netns_fd=fd))
                finally:
                    os.close(fd)
                port_idx = self.host.index(n.port)
                if port_idx is not None:
                    _ok(lambda i=port_idx: self.host.call(set_link(i, addr_gen_none=True)), (errno.EOPNOTSUPP, *GONE))
                ln = ipr.get(n.device)
                if ln is None:
                    raise RtnlError(errno.ENODEV, f"{n.device} missing after creating it")
                count("link_created")
            idx = ln.index
            index[n.device] = idx
            if ln.address.lower() != n.mac or ln.mtu != n.mtu or not ln.flags & IFF_UP:
                ipr.call(set_link(idx, mac=n.mac, mtu=n.mtu, up=True))
                count("link_updated")
            have = {a.address for a in addrs(ipr, socket.AF_INET, idx)}
            if METADATA_IP not in have:
                _ok(lambda idx=idx: ipr.call(new_addr(idx, METADATA_IP, 32)), EXISTS)
                count("address")
        self._delete_orphan_ports(set(wanted), count)
        net_dev = {n.network_id: n.device for n in state.networks}
        want_routes = {(p.proxy_ip, index[net_dev[p.network_id]]) for p in state.ports}
        have_routes = set()
        for r in routes(ipr, socket.AF_INET):
            if r.proto != ROUTE_PROTO or r.dst_len != 32:
                continue
            have_routes.add((r.dst, r.oif))
        for dst, oif in sorted(have_routes - want_routes, key=str):
            _ok(lambda dst=dst, oif=oif: ipr.call(route("del", dst, 32, oif, ROUTE_PROTO)), GONE)
            count("route_deleted")
        for dst, oif in sorted(want_routes - have_routes):
            ipr.call(route("replace", dst, 32, oif, ROUTE_PROTO, RT_SCOPE_LINK))
            count("route")
        want_neigh = {(p.proxy_ip, index[net_dev[p.network_id]], p.mac) for p in state.ports}
        have_neigh = set()
        for nb in ipr.sock.dump_neigh(socket.AF_INET):
            if nb.ifindex in index.values() and nb.state & NUD_PERMANENT:
                have_neigh.add((nb.dst, nb.ifindex, (nb.lladdr or "").lower()))
        for dst, oif, mac in sorted(have_neigh - want_neigh, key=str):
            _neigh(ipr, _neigh_del(dst, oif), GONE)
            count("neigh_deleted")
        for dst, oif, mac in sorted(want_neigh - have_neigh):
            _neigh(ipr, _neigh_replace(dst, oif, mac))
            count("neigh")
        self._index = index
        return changes

    def _delete_orphan_ports(self, wanted: set[str], count: Callable[[str], None]) -> None:
        for ln in dump_links(self.host.sock):
            name = ln.ifname
            if name.startswith(SERVICE_PREFIX) and DEVICE_PREFIX + name[len(SERVICE_PREFIX):] not in wanted:
                _ok(lambda ln=ln: self.host.call(del_link(ln.index)), GONE)
                count("link_deleted")

    def remove(self, netns: str) -> bool:
        """No port served: the namespace and every host-side service port go (True when there
        was something to remove)."""
        self._known = None
        removed: list[str] = []
        self._delete_orphan_ports(set(), removed.append)
        stale = self._ns.pop(netns, None)
        if stale is not None:
            stale.sock.close()
        if os.path.ismount(os.path.join(self.run_dir, netns)):
            try:
                nsmod.remove(netns, self.run_dir)
                removed.append("namespace")
            except FileNotFoundError:
                pass
        return bool(removed)


class NsWorker:
    """One daemon thread inside a namespace (None: the caller's), running submitted calls."""

    def __init__(self, netns: str | None, name: str) -> None:
        self.netns = netns
        self._q: queue.Queue[tuple[Callable[[], Any], queue.Queue[tuple[bool, Any]]] | None] = queue.Queue()
        self._nft: NftExecutor | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self.netns:
            setns(self.netns)
        while True:
            job = self._q.get()
            if job is None:
                break
            fn, reply = job
            try:
                reply.put((True, fn()))
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                reply.put((False, e))
        if self._nft is not None:
            self._nft.close()

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        reply: queue.Queue[tuple[bool, Any]] = queue.Queue()
        self._q.put((fn, reply))
        ok, value = reply.get(timeout=timeout)
        if not ok:
            raise value
        return value

    def nft(self, script: str) -> str | None:
        """Run one nftables transaction in the namespace: None, or the error text."""
        def run() -> str | None:
            if self._nft is None:
                self._nft = NftExecutor(ledger=True)   # nft_ledger: our commits, not foreign ones
            return self._nft.run(script)
        return self.call(run)  # type: ignore[no-any-return]

    def nft_output(self, cmd: str) -> str:
        """An nftables listing in the namespace (OSError on failure, e.g. no such table)."""
        def run() -> str:
            if self._nft is None:
                self._nft = NftExecutor(ledger=True)   # nft_ledger: our commits, not foreign ones
            return self._nft.output(cmd, 0)
        return self.call(run)  # type: ignore[no-any-return]

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(5)


def listen_socket(netns: str) -> socket.socket:
    """A listening TCP socket on 0.0.0.0:80 inside `netns`."""
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.bind(("0.0.0.0", METADATA_PORT))
            s.listen(256)
            return s
        except OSError:
            s.close()
            raise
    return in_netns(netns, make)
