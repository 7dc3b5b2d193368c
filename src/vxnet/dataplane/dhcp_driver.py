"""The DHCP responders' kernel side: their veth pairs, and the responder thread (AF_PACKET
sockets, the steering table's nft transactions). The agent's DHCP feature (agent/dhcp.py)
decides what to serve; this module does every kernel I/O of it.

`ResponderLinks.converge(responders)`: the veth pair of every responder exists with the right
attributes (bridge side `vxpd<id>`, host side `vxdr<id>`: up, no IP, NOARP, addrgenmode none so
it never sends IPv6 into the bridge, MTU = network MTU; compute/dhcp.py says why its MAC is not
the responder MAC); pairs not wanted, and leftovers of a crashed agent, are deleted; wanted ones
are adopted. The kernel is read (one raw link dump) on the first call and after `invalidate()`;
otherwise the call compares with what it applied last. Idempotent: EEXIST on create and
ENODEV/ENOENT on delete count as success.

`ResponderServer`: one daemon thread that enters the host namespace (`pyroute2.netns.setns`,
per thread), runs the nft transactions there (the one executor, `dataplane/nft_exec.py`), and
holds one AF_PACKET socket per responder device, with a classic BPF filter (`arp or ip udp dst
port 67`, not fragments) so it wakes only for DHCP requests and ARP. It answers DHCP
(`compute.dhcp.answer`) and the ARP for server ids no port holds, and counts per network
(offers, acks, naks, ignored, releases, declines: `counters` and Prometheus
`vxnet_agent_dhcp_messages_total`). `serve(table, nft)` swaps the table (one reference) and
waits until the thread has applied it and the script, with its sockets open.
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
from collections.abc import Iterable, Mapping

from prometheus_client import Counter
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vxnet.compute import dhcp_packet as pkt
from vxnet.compute.dhcp import Lease, Responder, answer, is_device, is_service_port
from vxnet.dataplane.nft_exec import NftExecutor
from vxnet.dataplane.rtnl import LinkRecord, RtnlSocket, dump_links

log = logging.getLogger("vxnet.dataplane.dhcp")

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
class Served:
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
        self._job: tuple[Mapping[str, Served], str | None] = ({}, None)   # (table, nft script to apply)
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

    def serve(self, table: Mapping[str, Served], nft: str | None, timeout: float = SYNC_TIMEOUT) -> SyncResult:
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
        table: Mapping[str, Served] = {}
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

    def _sync(self, socks: dict[str, tuple[int, socket.socket]], table: Mapping[str, Served]) -> frozenset[str]:
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

    def _drain(self, s: socket.socket, served: Served) -> None:
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

    def _handle(self, s: socket.socket, served: Served, frame: bytes) -> None:
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



class ResponderLinks:
    """The responders' veth pairs in one host namespace (see the module docstring)."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self._rtnl: RtnlSocket | None = None
        self._ipr: IPRoute | None = None
        self._links: dict[str, LinkRecord] | None = None     # our links as last read / applied

    def invalidate(self) -> None:
        self._links = None

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
        if self._rtnl is not None:
            self._rtnl.close()

    def converge(self, responders: Iterable[Responder], changes: collections.Counter[str], failed: list[object],
                 bad: set[str]) -> dict[str, LinkRecord]:
        """Delete the unwanted pairs, create or fix the wanted; our links (NetlinkError/OSError
        when even the link dump failed: nothing is known)."""
        responders = list(responders)
        if self._links is None:
            self._links = {ln.ifname: ln for ln in dump_links(self.rtnl)
                           if is_device(ln.ifname) or is_service_port(ln.ifname)}
        links = self._links
        wanted = {r.port for r in responders} | {r.device for r in responders}
        for name in sorted(n for n in links if n not in wanted):
            if name not in links:         # went with its peer
                continue
            if self._delete(name):
                changes["responder_deleted"] += 1
            else:
                failed.append(f"dhcp veth {name}")
        for r in responders:
            try:
                self._ensure(r, changes)
            except (NetlinkError, OSError, IndexError) as e:
                log.warning("DHCP responder %s: %s", r.device, e)
                bad.add(r.network_id)
                failed.append(f"dhcp responder {r.network_id}")
        return links

    @property
    def rtnl(self) -> RtnlSocket:
        if self._rtnl is None:
            self._rtnl = RtnlSocket(self.netns)
        return self._rtnl

    @property
    def ipr(self) -> IPRoute:
        if self._ipr is None:
            self._ipr = IPRoute(netns=self.netns) if self.netns else IPRoute()
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


