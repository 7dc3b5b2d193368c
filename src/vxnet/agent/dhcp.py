"""The DHCP feature: every host answers the DHCP of its own VMs, inside the agent (docs/dhcp.md).

Its desired state is `HostDesired.dhcp` (`compute.dhcp`: responders per network, leases, and the
L2 part: the service ports' plugs, FDB entries and server-id neighbours). `apply`:
1. converges the responder veth pairs (bridge side `vxpd<id>`, host side `vxdr<id>`: up, no
   IP, NOARP, addrgenmode none so it never sends IPv6 into the bridge, MTU = network MTU;
   compute/dhcp.py says why its MAC is not the responder MAC). The kernel
   is read (one raw link dump) on the first pass and after `invalidate()`; otherwise the pass
   compares with what it applied last. Pairs for networks that no longer need DHCP, and
   leftovers of a crashed agent that are not wanted, are deleted; wanted ones are adopted.
2. hands the responder thread the new lease table (one reference swap) and, when its text
   changed (or after `invalidate()`), the steering table `bridge vxnet_dhcp`
   (`compute.dhcp.steer_script`: the whole table when its state is unknown, else only the map
   elements that changed; one atomic transaction), and waits until the thread has applied
   both and has its sockets open on the current devices: a port is reported ACTIVE only when
   its DHCP answers. Nothing changed: no work at all (no syscall).

The responder thread (`ResponderServer`): one daemon thread that enters the host namespace
(`pyroute2.netns.setns`, per thread), runs the nft transactions there (the one executor,
`dataplane/nft_exec.py`: libnftables in-process), and holds one AF_PACKET socket per
responder device, with
a classic BPF filter (`arp or ip udp dst port 67`, not fragments) so it wakes only for DHCP
requests and ARP. It answers DHCP (`compute.dhcp.answer`) and the ARP for server ids no port
holds, counts per network (offers, acks, naks, ignored, releases, declines: `counters()` and
Prometheus `vxnet_agent_dhcp_messages_total`). No tenant data packet ever reaches it.

Failures: a responder whose veth cannot be made is in `failed` and its leased ports are DOWN
(a VM there would get no address); an nft failure is in `failed` only (DHCP still answers the
broadcast frames without steering).
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import errno
import logging
import os
import select
import socket
import struct
import threading
from collections.abc import Mapping

from prometheus_client import Counter
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vxnet.agent.features import FeatureResult, HostContext
from vxnet.compute import dhcp_packet as pkt
from vxnet.compute.dhcp import (
    DhcpState,
    Lease,
    Responder,
    answer,
    is_device,
    is_service_port,
    steer_elements,
    steer_script,
)
from vxnet.dataplane.nft_exec import NftExecutor
from vxnet.dataplane.rtnl import LinkRecord, RtnlSocket, dump_links

log = logging.getLogger("vxnet.agent.dhcp")

MESSAGES = Counter("vxnet_agent_dhcp_messages_total", "DHCP requests handled by the host's responders, by outcome",
                   ["network", "kind"])

IFF_UP = 0x1
IFF_NOARP = 0x80
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
ADDR_GEN_MODE_NONE = 1
# tcpdump -dd 'arp or (ip and udp dst port 67)'
BPF_DHCP_ARP = ((0x28, 0, 0, 0x0000000c), (0x15, 8, 0, 0x00000806), (0x15, 0, 8, 0x00000800),
                (0x30, 0, 0, 0x00000017), (0x15, 0, 6, 0x00000011), (0x28, 0, 0, 0x00000014),
                (0x45, 4, 0, 0x00001fff), (0xb1, 0, 0, 0x0000000e), (0x48, 0, 0, 0x00000010),
                (0x15, 0, 1, 0x00000043), (0x6, 0, 0, 0x00040000), (0x6, 0, 0, 0x00000000))
SYNC_TIMEOUT = 2.0


@dataclasses.dataclass(frozen=True)
class _Served:
    """What the thread serves on one device (swapped as a whole)."""

    responder: Responder
    ifindex: int
    leases: Mapping[str, Lease]
    arp_ips: frozenset[str]


# ---------------------------------------------------------------------------------- thread
@dataclasses.dataclass(frozen=True)
class SyncResult:
    """What the thread did with one `serve` call."""

    no_socket: frozenset[str] = frozenset()      # devices without an open socket
    nft_error: str | None = None                 # the steering transaction failed (nothing applied)


class ResponderServer:
    """The responder thread, in the host namespace: AF_PACKET sockets answering from the table,
    and the steering table's nft transactions (libnftables in-process)."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self._job: tuple[Mapping[str, _Served], str | None] = ({}, None)   # (table, nft script to apply)
        self._generation = 0
        self._synced = 0                                  # generation the thread has applied
        self._result = SyncResult()
        self._cond = threading.Condition()
        self._stop = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self.counters: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self._thread = threading.Thread(target=self._run, name="vxnet-agent-dhcp", daemon=True)
        self._started = False

    def serve(self, table: Mapping[str, _Served], nft: str | None, timeout: float = SYNC_TIMEOUT) -> SyncResult:
        """Serve `table` from now on (and apply the nft script `nft` first, if not None); waits
        up to `timeout` for the thread to have its sockets open."""
        if not self._started:
            self._thread.start()
            self._started = True
        with self._cond:
            self._job = (dict(table), nft)
            self._generation += 1
            gen = self._generation
        os.write(self._wake_w, b"x")
        with self._cond:
            if not self._cond.wait_for(lambda: self._synced >= gen or self._stop, timeout) or self._stop:
                return SyncResult(frozenset(table), "responder thread not running" if nft is not None else None)
            return self._result

    @property
    def alive(self) -> bool:
        """False once the thread has stopped (closed, or crashed: then make a new server)."""
        return not self._stop

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        os.write(self._wake_w, b"x")
        if self._started:
            self._thread.join(5)
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- thread side ----------------------------------------------------------------------
    def _run(self) -> None:
        socks: dict[str, tuple[int, socket.socket]] = {}
        nft: NftExecutor | None = None
        table: Mapping[str, _Served] = {}
        try:
            if self.netns:
                from pyroute2.netns import setns

                setns(self.netns, flags=0)       # this thread only; flags=0: never create it
            nft = NftExecutor()     # in this thread's namespace (entered above)
            while True:
                with self._cond:
                    if self._stop:
                        return
                    (table, script), gen = self._job, self._generation
                if gen != self._synced:
                    err = nft.run(script) if script is not None else None
                    failed = self._sync(socks, table)
                    with self._cond:
                        self._synced, self._result = gen, SyncResult(failed, err)
                        self._cond.notify_all()
                by_fd = {s.fileno(): (dev, s) for dev, (_, s) in socks.items()}
                ready, _, _ = select.select([self._wake_r, *by_fd], [], [], 1.0)
                for fd in ready:
                    if fd == self._wake_r:
                        try:
                            os.read(self._wake_r, 4096)
                        except BlockingIOError:
                            pass
                        continue
                    dev, s = by_fd[fd]
                    served = table.get(dev)
                    if served is not None:
                        self._drain(s, served)
        except Exception:   # logged; the next apply() sees the thread gone and starts another
            log.exception("DHCP responder thread failed")
        finally:
            for _, s in socks.values():
                s.close()
            if nft is not None:
                nft.close()
            with self._cond:
                self._stop = True
                self._cond.notify_all()

    def _sync(self, socks: dict[str, tuple[int, socket.socket]], table: Mapping[str, _Served]) -> frozenset[str]:
        """Open sockets for new (or recreated) devices, close the others."""
        for dev in list(socks):
            if dev not in table or table[dev].ifindex != socks[dev][0]:
                socks.pop(dev)[1].close()
        failed = set()
        for dev, served in table.items():
            if dev in socks:
                continue
            try:
                socks[dev] = (served.ifindex, _packet_socket(dev, served.ifindex))
            except OSError as e:
                log.warning("DHCP socket on %s failed: %s", dev, e)
                failed.add(dev)
        return frozenset(failed)

    def _drain(self, s: socket.socket, served: _Served) -> None:
        for _ in range(64):
            try:
                frame, addr = s.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:      # ENETDOWN after the device went: the next sync replaces it
                log.debug("DHCP socket %s: %s", served.responder.device, e)
                return
            if addr[2] == PACKET_OUTGOING:
                continue
            self._handle(s, served, frame)

    def _handle(self, s: socket.socket, served: _Served, frame: bytes) -> None:
        r = served.responder
        got = pkt.decode_frame(frame)
        if isinstance(got, pkt.ArpFrame):
            if got.op == 1 and got.tpa in served.arp_ips and got.spa not in ("0.0.0.0", got.tpa):
                self._send(s, pkt.arp_reply_frame(r.mac, got.tpa, got.sha, got.spa))
            return
        if got is None:
            return
        ans = answer(got, r.mac, served.leases)
        self.counters[r.network_id][ans.kind] += 1
        MESSAGES.labels(r.network_id, ans.kind).inc()
        log.debug("dhcp %s %s xid=%#x from %s -> %s %s", r.network_id,
                  pkt.TYPE_NAMES.get(got.msg.msg_type or 0, got.msg.msg_type), got.msg.xid, got.msg.chaddr,
                  ans.kind, ans.reason)
        if ans.frame is not None:
            self._send(s, ans.frame)

    @staticmethod
    def _send(s: socket.socket, frame: bytes) -> None:
        try:
            s.send(frame)
        except OSError as e:
            log.warning("DHCP send failed: %s", e)


def _packet_socket(dev: str, ifindex: int) -> socket.socket:
    """A non-blocking AF_PACKET socket on `dev` (in the calling thread's namespace) that
    receives only ARP and DHCP-server frames."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        prog = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *ins) for ins in BPF_DHCP_ARP))
        fprog = struct.pack("HL", len(BPF_DHCP_ARP), ctypes.addressof(prog))    # struct sock_fprog
        s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        s.bind((dev, ETH_P_ALL))
        if socket.if_nametoindex(dev) != ifindex:
            raise OSError(errno.ENODEV, f"{dev} was recreated")
        s.setblocking(False)
        return s
    except OSError:
        s.close()
        raise


# ---------------------------------------------------------------------------------- feature
class DhcpFeature:
    """The agent feature (see module contract)."""

    name = "dhcp"

    def __init__(self, ctx: HostContext) -> None:
        self.ctx = ctx
        self._rtnl: RtnlSocket | None = None
        self._ipr: IPRoute | None = None
        self.server = ResponderServer(ctx.netns)
        self._links: dict[str, LinkRecord] | None = None     # our links as last read / applied
        self._steer: frozenset[str] | None = None            # steering map elements applied (None: unknown)
        self._served: dict[str, _Served] | None = None

    def counters(self) -> dict[str, dict[str, int]]:
        """Per network: offers, acks, naks, ignored, releases, declines (since start)."""
        return {nid: dict(c) for nid, c in self.server.counters.items()}

    # -- apply ----------------------------------------------------------------------------
    def apply(self, desired: DhcpState) -> FeatureResult:
        try:
            return self._apply(desired)
        except Exception as e:   # a DHCP bug must not turn every port of the host DOWN
            log.exception("DHCP apply failed")
            self.invalidate()
            self._served = None
            return FeatureResult(failed=(f"dhcp: {e}",),
                                 down=frozenset(lease.port_id for r in desired.responders for lease in r.leases))

    def _apply(self, desired: DhcpState) -> FeatureResult:
        changes: collections.Counter[str] = collections.Counter()
        failed: list[object] = []
        bad: set[str] = set()
        try:
            links = self._converge_links(desired, changes, failed, bad)
        except (NetlinkError, OSError) as e:     # the link dump itself failed: nothing is known
            log.warning("DHCP links: %s", e)
            links, bad = {}, {r.network_id for r in desired.responders}
            failed.append(f"dhcp links: {e}")
        table = {r.device: _Served(r, links[r.device].index, r.lease_table(), frozenset(r.arp_ips))
                 for r in desired.responders if r.network_id not in bad and r.device in links}
        steer = steer_elements(desired.responders)
        nft = steer_script(self._steer, steer) or None
        if not self.server.alive:
            log.warning("DHCP responder thread stopped; starting a new one")
            counters = self.server.counters
            self.server.close()
            self.server = ResponderServer(self.ctx.netns)
            self.server.counters = counters
            self._served = None
        if table != self._served or nft is not None:
            res = self.server.serve(table, nft)
            for dev in res.no_socket:
                bad.add(table[dev].responder.network_id)
                failed.append(f"dhcp socket {dev}")
            self._served = None if res.no_socket else table
            if nft is not None:
                if res.nft_error is None:
                    self._steer = steer
                    changes["steering_table"] += 1
                else:
                    log.warning("DHCP steering table failed: %s", res.nft_error)
                    failed.append("dhcp steering table")
                    self._steer = None
        if failed:
            self._links = None            # read the kernel again next pass
        down = frozenset(lease.port_id for r in desired.responders if r.network_id in bad for lease in r.leases)
        return FeatureResult(failed=tuple(failed), down=down, changes=dict(changes))

    def _converge_links(self, desired: DhcpState, changes: collections.Counter[str], failed: list[object],
                        bad: set[str]) -> dict[str, LinkRecord]:
        """Responder veths: delete the unwanted, create or fix the wanted; returns our links."""
        if self._links is None:
            self._links = {ln.ifname: ln for ln in dump_links(self.rtnl)
                           if is_device(ln.ifname) or is_service_port(ln.ifname)}
        links = self._links
        wanted = {r.port for r in desired.responders} | {r.device for r in desired.responders}
        for name in sorted(n for n in links if n not in wanted):
            if name not in links:         # went with its peer
                continue
            if self._delete(name):
                changes["responder_deleted"] += 1
            else:
                failed.append(f"dhcp veth {name}")
        for r in desired.responders:
            try:
                self._ensure(r, changes)
            except (NetlinkError, OSError, IndexError) as e:
                log.warning("DHCP responder %s: %s", r.device, e)
                bad.add(r.network_id)
                failed.append(f"dhcp responder {r.network_id}")
        return links

    def invalidate(self) -> None:
        self._links = None
        if self._steer:
            self._steer = None    # re-applied (atomic replace); an absent table stays absent

    def close(self) -> None:
        self.server.close()
        if self._ipr is not None:
            self._ipr.close()
        if self._rtnl is not None:
            self._rtnl.close()

    # -- kernel ---------------------------------------------------------------------------
    @property
    def rtnl(self) -> RtnlSocket:
        if self._rtnl is None:
            self._rtnl = RtnlSocket(self.ctx.netns)
        return self._rtnl

    @property
    def ipr(self) -> IPRoute:
        if self._ipr is None:
            self._ipr = IPRoute(netns=self.ctx.netns) if self.ctx.netns else IPRoute()
        return self._ipr

    def _delete(self, name: str) -> bool:
        assert self._links is not None
        link = self._links.pop(name)
        try:
            self.ipr.link("del", index=link.index)
        except NetlinkError as e:
            if e.code not in (errno.ENODEV, errno.ENOENT):
                log.warning("deleting %s: %s", name, e)
                return False
        # The peer went with it.
        for other in [n for n, ln in self._links.items() if n[4:] == name[4:]]:
            self._links.pop(other)
        log.info("DHCP responder device %s deleted", name)
        return True

    def _ensure(self, r: Responder, changes: collections.Counter[str]) -> None:
        """The veth pair of `r` exists with the right attributes (created or fixed)."""
        assert self._links is not None
        port, dev = self._links.get(r.port), self._links.get(r.device)
        if port is None or dev is None or port.kind != "veth" or dev.kind != "veth":
            for stale in (port, dev):
                if stale is not None and stale.ifname in self._links:
                    self._delete(stale.ifname)
            self._create(r)
            changes["responder_created"] += 1
            return
        if dev.mtu != r.mtu or dev.flags & (IFF_UP | IFF_NOARP) != IFF_UP | IFF_NOARP:
            self.ipr.link("set", index=dev.index, mtu=r.mtu, flags=IFF_UP | IFF_NOARP, change=IFF_UP | IFF_NOARP)
            self._links[r.device] = dataclasses.replace(dev, mtu=r.mtu, flags=dev.flags | IFF_UP | IFF_NOARP)
            changes["responder_updated"] += 1

    def _create(self, r: Responder) -> None:
        assert self._links is not None
        try:
            self.ipr.link("add", ifname=r.port, kind="veth", mtu=r.mtu, peer={"ifname": r.device, "mtu": r.mtu})
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
        no_ipv6 = {"attrs": [["AF_INET6", {"attrs": [["IFLA_INET6_ADDR_GEN_MODE", ADDR_GEN_MODE_NONE]]}]]}
        for name in (r.port, r.device):
            idx = self.ipr.link_lookup(ifname=name)[0]
            self.ipr.link("set", index=idx, af_spec=no_ipv6)
        # NOARP: the host never answers a tenant's ARP for its own addresses on this device.
        # The bridge side comes up when the L2 pass plugs it.
        dev_idx = self.ipr.link_lookup(ifname=r.device)[0]
        self.ipr.link("set", index=dev_idx, flags=IFF_UP | IFF_NOARP, change=IFF_UP | IFF_NOARP)
        for ln in dump_links(self.rtnl):
            if ln.ifname in (r.port, r.device):
                self._links[ln.ifname] = ln
        log.info("DHCP responder for network %s: %s/%s", r.network_id, r.port, r.device)


def build(ctx: HostContext) -> list[DhcpFeature]:
    """The DHCP feature (every host)."""
    return [DhcpFeature(ctx)]
