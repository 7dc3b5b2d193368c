"""The DHCP responders' kernel side: their veth pairs, and the responder thread (AF_PACKET
sockets, the steering table's nft transactions). The agent's DHCP feature (agent/dhcp.py)
decides what to serve; this module does every kernel I/O of it.

`ResponderLinks`: `read()` lists the responder pairs in the kernel (one raw link dump),
`ensure(r, have)` makes one responder's veth pair exist with the right attributes (bridge side
`vxpd<id>`, host side `vxdr<id>`: up, no IP, NOARP, addrgenmode none so it never sends IPv6
into the bridge, MTU = network MTU; compute/dhcp.py says why its MAC is not the responder MAC)
and returns its ifindex, `delete(device)` removes a pair. Which pairs to converge or delete
(leftovers of a crashed agent included) is the DHCP feature's `Manager`. Idempotent: EEXIST on
create and ENODEV/ENOENT on delete count as success.

`ResponderServer`: one daemon thread that enters the host namespace (`rtnl.setns`, per
thread), runs the nft transactions there (the one executor, `dataplane/nft_exec.py`), and
holds one AF_PACKET socket per responder device, with a classic BPF filter (`arp or ip udp dst
port 67 or ip6 udp dst port 547 or ICMPv6 type 133`, not fragments) so it wakes only for DHCP
requests, ARP, DHCPv6 and router solicitations. It answers DHCP (`compute.dhcp.answer`), the ARP
for server ids no port holds, DHCPv6 (`compute.dhcp6.answer_dhcp6`) and router solicitations
(`compute.dhcp6.answer_rs`), and sends the router advertisements of its networks unsolicited:
a burst when a VM is first served or its advertisement changes (RA_BURST: the tap may be
plugged a moment after the responder is told), then every RA_INTERVAL seconds (jittered, as
radvd's MinRtrAdvInterval..MaxRtrAdvInterval), each a unicast frame to one local VM. It counts
per network (offers, acks, naks, ignored, releases, declines; ra, advertises, replies, informs:
`counters` and Prometheus `vxnet_agent_dhcp_messages_total`). `serve(table, nft, expect)` swaps the table (one reference) and
waits until the thread has applied it and the script, with its sockets open. A whole-table
script comes with `expect`, the map elements it installs: the thread then lists the steering
table first and sends nothing when the kernel holds exactly that table (rules compared with the
listing nft printed after the thread's own last whole-table transaction, elements as sets:
dataplane/nft_image.py), so the replace after every resync changes the kernel only when it
drifted; `SyncResult.nft_applied` says whether a transaction was committed.
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import errno
import logging
import os
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Mapping

from prometheus_client import Counter

from vxnet.compute import dhcp_packet as pkt
from vxnet.compute import naming
from vxnet.compute import nd_packet as nd
from vxnet.compute.dhcp import SERVICE_KIND, Lease, Responder, answer, is_device, is_service_port, split_steer
from vxnet.compute.dhcp6 import Answer6, V6Service, answer_dhcp6, answer_rs, ra_frames
from vxnet.dataplane import nft_image
from vxnet.dataplane.nft_exec import NftExecutor
from vxnet.dataplane.rtnl import LinkRecord, RtnlSocket, dump_links, setns
from vxnet.dataplane.rtnl_links import RtnlError, RtnlLinks, del_link, new_veth, set_link

log = logging.getLogger("vxnet.dataplane.dhcp")

MESSAGES = Counter("vxnet_agent_dhcp_messages_total", "DHCP requests handled by the host's responders, by outcome",
                   ["network", "kind"])

IFF_UP = 0x1
IFF_NOARP = 0x80
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
# tcpdump -dd 'arp or (ip and udp dst port 67) or (ip6 and udp dst port 547) or (icmp6 and ip6[40] == 133)'
BPF_DHCP_ARP = ((0x28, 0, 0, 0x0000000c), (0x15, 19, 0, 0x00000806), (0x15, 0, 7, 0x00000800),
                (0x30, 0, 0, 0x00000017), (0x15, 0, 17, 0x00000011), (0x28, 0, 0, 0x00000014),
                (0x45, 15, 0, 0x00001fff), (0xb1, 0, 0, 0x0000000e), (0x48, 0, 0, 0x00000010),
                (0x15, 11, 12, 0x00000043), (0x15, 0, 11, 0x000086dd), (0x30, 0, 0, 0x00000014),
                (0x15, 0, 2, 0x00000011), (0x28, 0, 0, 0x00000038), (0x15, 6, 7, 0x00000223),
                (0x15, 3, 0, 0x0000003a), (0x15, 0, 5, 0x0000002c), (0x30, 0, 0, 0x00000036),
                (0x15, 0, 3, 0x0000003a), (0x30, 0, 0, 0x00000036), (0x15, 0, 1, 0x00000085),
                (0x6, 0, 0, 0x00040000), (0x6, 0, 0, 0x00000000))
SYNC_TIMEOUT = 2.0
ETH_P_IPV6 = 0x86DD
RA_BURST = (0.0, 1.0, 3.0, 8.0)      # seconds after a VM is first served (or its RA changed)
RA_INTERVAL = (30.0, 100.0)          # then every uniform(min, max) seconds (Neutron's radvd defaults)


@dataclasses.dataclass(frozen=True)
class Served:
    """What the thread serves on one device (swapped as a whole)."""

    responder: Responder
    ifindex: int
    leases: Mapping[str, Lease]
    arp_ips: frozenset[str]

    @property
    def v6(self) -> V6Service:
        return self.responder.v6



# ---------------------------------------------------------------------------------- thread
@dataclasses.dataclass(frozen=True)
class SyncResult:
    """What the thread did with one `serve` call."""

    no_socket: frozenset[str] = frozenset()      # devices without an open socket
    nft_error: str | None = None                 # the steering transaction failed (nothing applied)
    nft_applied: bool = False                    # a steering transaction was committed


class ResponderServer:
    """The responder thread, in the host namespace: AF_PACKET sockets answering from the table,
    and the steering table's nft transactions (libnftables in-process)."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        # (table, nft script to apply, the elements a whole-table script installs)
        self._job: tuple[Mapping[str, Served], str | None, frozenset[str] | None] = ({}, None, None)
        self._skeleton: tuple[str, ...] | None = None    # the steering table's rules, as nft listed them
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

    def serve(self, table: Mapping[str, Served], nft: str | None, expect: frozenset[str] | None = None,
              timeout: float = SYNC_TIMEOUT) -> SyncResult:
        """Serve `table` from now on (and apply the nft script `nft` first, if not None, unless
        `expect` is given and the kernel holds exactly that steering table); waits up to
        `timeout` for the thread to have its sockets open."""
        if not self._started:
            self._thread.start()
            self._started = True
        with self._cond:
            self._job = (dict(table), nft, expect)
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
    def _steer(self, nft: NftExecutor, script: str | None, expect: frozenset[str] | None) -> tuple[str | None, bool]:
        """Run `script` unless the kernel already holds what it makes (see the module docstring):
        (error or None, whether a transaction was committed)."""
        if script is None:
            return None, False
        if expect is not None and self._holds(nft, expect):
            return None, False
        err = nft.run(script)
        if err is None and self._skeleton is None:
            self._skeleton = self._learn(nft)
        return err, err is None

    def _learn(self, nft: NftExecutor) -> tuple[str, ...] | None:
        """The steering table's rules as nft lists them, right after our own transaction made
        it (None: absent; learnt again after a later transaction). The rules never change."""
        try:
            image = nft_image.parse(nft.output(f"list table bridge {naming.DHCP_TABLE[1]}", 0))
        except OSError:
            return None
        return image.skeleton if image is not None else None

    def _holds(self, nft: NftExecutor, expect: frozenset[str]) -> bool:
        """Whether the kernel's steering table is the one holding `expect` (absent when empty)."""
        try:
            image = nft_image.parse(nft.output(f"list table bridge {naming.DHCP_TABLE[1]}", 0))
        except OSError:
            image = None                  # absent (or unreadable)
        if not expect:
            return image is None
        if image is None or self._skeleton is None or image.skeleton != self._skeleton:
            return False
        want = {name: nft_image.norm_elements(els) for name, els in split_steer(expect).items()}
        return {k: image.elements.get(k, frozenset()) for k in want} == want and set(image.elements) <= set(want)

    def _run(self) -> None:
        socks: dict[str, tuple[int, socket.socket]] = {}
        nft: NftExecutor | None = None
        table: Mapping[str, Served] = {}
        ras = _RaSchedule()
        try:
            if self.netns:
                setns(self.netns)       # this thread only; never creates it
            nft = NftExecutor(ledger=True)     # in this thread's namespace (entered above); nft_ledger
            while True:
                with self._cond:
                    if self._stop:
                        return
                    (table, script, expect), gen = self._job, self._generation
                if gen != self._synced:
                    err, applied = self._steer(nft, script, expect)
                    failed = self._sync(socks, table)
                    ras.sync(table, time.monotonic())
                    with self._cond:
                        self._synced, self._result = gen, SyncResult(failed, err, applied)
                        self._cond.notify_all()
                for dev, mac in ras.due(time.monotonic()):
                    self._advertise(socks, table, dev, mac)
                by_fd = {s.fileno(): (dev, s) for dev, (_, s) in socks.items()}
                ready, _, _ = select.select([self._wake_r, *by_fd], [], [], ras.timeout(time.monotonic(), 1.0))
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

    def _advertise(self, socks: Mapping[str, tuple[int, socket.socket]], table: Mapping[str, Served], dev: str,
                   mac: str) -> None:
        """One unsolicited advertisement round for the VM with `mac` on `dev`."""
        served, sock = table.get(dev), socks.get(dev)
        if served is None or sock is None or mac not in served.v6.targets:
            return
        for frame in ra_frames(served.v6, served.responder.mac, mac):
            self._send(sock[1], frame)
        self._count(served.responder, "ra_sent")

    def _count(self, r: Responder, kind: str) -> None:
        self.counters[r.network_id][kind] += 1
        MESSAGES.labels(r.network_id, kind).inc()

    def _handle6(self, s: socket.socket, served: Served, frame: bytes) -> None:
        r = served.responder
        f = nd.decode_frame6(frame)
        if f is None:
            return
        if f.icmp_type == nd.RS:
            ans: Answer6 = answer_rs(f, r.mac, served.v6)
        elif f.proto == nd.PROTO_UDP:
            ans = answer_dhcp6(f, r.mac, served.v6)
        else:
            return
        self._count(r, ans.kind if ans.kind != "ignored" else "ignored6")
        log.debug("ipv6 %s from %s -> %s %s", r.network_id, f.src_mac, ans.kind, ans.reason)
        for out in ans.frames:
            self._send(s, out)

    def _handle(self, s: socket.socket, served: Served, frame: bytes) -> None:
        r = served.responder
        if len(frame) >= 14 and struct.unpack_from("!H", frame, 12)[0] == ETH_P_IPV6:
            self._handle6(s, served, frame)
            return
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


class _RaSchedule:
    """When each served VM gets its next unsolicited router advertisement (thread-local state
    of the responder thread): a burst (RA_BURST) when a (device, MAC) is new or its
    advertisements changed, then every RA_INTERVAL (jittered)."""

    def __init__(self) -> None:
        self._content: dict[tuple[str, str], object] = {}
        self._next: dict[tuple[str, str], tuple[float, int]] = {}     # key -> (due, burst step)

    def sync(self, table: Mapping[str, Served], now: float) -> None:
        wanted = {(dev, mac): served.v6.adverts for dev, served in table.items() for mac in served.v6.targets}
        for key in list(self._next):
            if key not in wanted:
                self._next.pop(key)
                self._content.pop(key, None)
        for key, content in wanted.items():
            if self._content.get(key) != content:
                self._content[key] = content
                self._next[key] = (now + RA_BURST[0], 0)

    def due(self, now: float) -> list[tuple[str, str]]:
        out = []
        for key, (when, step) in list(self._next.items()):
            if when <= now:
                out.append(key)
                nxt = step + 1
                delay = RA_BURST[nxt] - RA_BURST[step] if nxt < len(RA_BURST) else random.uniform(*RA_INTERVAL)
                self._next[key] = (now + delay, nxt)
        return sorted(out)

    def timeout(self, now: float, default: float) -> float:
        soonest = min((when for when, _ in self._next.values()), default=now + default)
        return max(0.0, min(default, soonest - now))


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
    """The responders' veth pairs in one host namespace, one pair at a time (see the module
    docstring); keeps no record of what it applied (the DHCP feature's `Manager` does)."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self._links: RtnlLinks | None = None

    def close(self) -> None:
        if self._links is not None:
            self._links.sock.close()
            self._links = None

    @property
    def links(self) -> RtnlLinks:
        if self._links is None:
            self._links = RtnlLinks(RtnlSocket(self.netns))
        return self._links

    def read(self) -> dict[str, tuple[LinkRecord | None, LinkRecord | None]]:
        """Device name -> (bridge side, host side) of every pair in the kernel (one dump;
        OSError when it fails)."""
        out: dict[str, tuple[LinkRecord | None, LinkRecord | None]] = {}
        for ln in dump_links(self.links.sock):
            if is_device(ln.ifname) or is_service_port(ln.ifname):
                key = pair_device(ln.ifname)
                port, dev = out.get(key, (None, None))
                out[key] = (port, ln) if is_device(ln.ifname) else (ln, dev)
        return out

    def delete(self, device: str) -> None:
        """Delete the pair of `device` (gone already: success; else RtnlError)."""
        for name in (device, pair_port(device)):
            idx = self.links.index(name)
            if idx is None:
                continue
            try:
                self.links.call(del_link(idx))
            except RtnlError as e:
                if e.code not in (errno.ENODEV, errno.ENOENT):
                    raise
        log.info("DHCP responder device %s deleted", device)

    def ensure(self, r: Responder, have: tuple[LinkRecord | None, LinkRecord | None] | None) -> int:
        """The veth pair of `r` with the right attributes (created or fixed; `have`: the pair
        as read, None: not read, assumed absent); returns the host side's ifindex."""
        port, dev = have or (None, None)
        if port is None or dev is None or port.kind != "veth" or dev.kind != "veth":
            if have is not None and (port or dev):
                self.delete(r.device)
            return self._create(r)
        if dev.mtu != r.mtu or dev.flags & (IFF_UP | IFF_NOARP) != IFF_UP | IFF_NOARP:
            self.links.call(set_link(dev.index, mtu=r.mtu, up=True, noarp=True))
        return dev.index

    def _create(self, r: Responder) -> int:
        try:
            self.links.call(new_veth(r.port, r.device, r.mtu))
        except RtnlError as e:
            if e.code != errno.EEXIST:
                raise
        idx = {}
        for name in (r.port, r.device):
            i = self.links.index(name)
            if i is None:
                raise RtnlError(errno.ENODEV, f"{name} missing after creating it")
            idx[name] = i
        for i in idx.values():
            self.links.call(set_link(i, addr_gen_none=True))
        # NOARP: the host never answers a tenant's ARP for its own addresses on this device.
        # The bridge side comes up when the L2 pass plugs it.
        self.links.call(set_link(idx[r.device], mtu=r.mtu, up=True, noarp=True))
        log.info("DHCP responder for network %s: %s/%s", r.network_id, r.port, r.device)
        return idx[r.device]


def pair_device(ifname: str) -> str:
    """The host-side name of the pair `ifname` belongs to (both sides share the id suffix)."""
    return naming.DHCP_DEVICE_PREFIX + ifname[len(naming.DHCP_DEVICE_PREFIX):]


def pair_port(device: str) -> str:
    """The bridge-side name of responder device `device`."""
    return naming.service_port_name(SERVICE_KIND, "") + device[len(naming.DHCP_DEVICE_PREFIX):]
