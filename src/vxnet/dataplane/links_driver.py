"""Links: bridges and VXLAN devices the agent owns, and VM devices it plugs into them.

Contract:
- `read_links` reads every link once (raw netlink dump) and returns the owned bridges / VXLAN devices and every
  pluggable (`tap*` / service `vxp*`) device as `compute.state` entries (a tap's `bridge` is the name of its master, or "").
- `LinksDriver.apply_*` take a `Diff` of those entries and converge the kernel: create and
  update in dependency order (bridges, then VXLAN devices, then plugs), delete in reverse.
  Creating something that exists, or deleting something gone, counts as success.
- Only links named with the owned prefixes are ever created or deleted; taps are only
  attached/detached (set master), never created or deleted.
- A plug with a `parent` (a trunk subport, `vxt*`) is a VLAN device the driver creates on that
  parent (its VLAN id), recreates when its parent or VLAN id differ, and deletes on unplug.
- A VXLAN device whose immutable attributes (VNI, local IP, port, learning) differ is recreated.
- br_netfilter per bridge: a bridge's `nf_call` (its nf_call_iptables/ip6tables) is set in the
  message that creates it and repaired like its MTU; after a pass that created or changed a
  bridge, the namespace-wide `net.bridge.bridge-nf-call-iptables`/`-ip6tables` are set to 0
  (a new namespace starts with 1: every bridge's frames through the inet hooks), so only the
  bridges that want it pass br_netfilter. Fail closed: a tap is not plugged into a bridge that
  wants br_netfilter but whose create/update failed (its filters would be bypassed).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
from typing import Any

from vxnet.compute import naming
from vxnet.compute.diff import Diff
from vxnet.compute.state import Bridge, Plug, Vxlan
from vxnet.dataplane.netns import in_netns
from vxnet.dataplane.rtnl import LinkSet, RtnlSocket, dump_links
from vxnet.dataplane.rtnl_links import RtnlError as NetlinkError
from vxnet.dataplane.rtnl_links import (
    RtnlLinks,
    del_link,
    new_bridge,
    new_vlan,
    new_vxlan,
    set_bridge_nf,
    set_brport,
    set_link,
)

log = logging.getLogger("vxnet.dataplane.links")

IFF_UP = 0x1
_GONE = (errno.ENODEV, errno.ENOENT)
# accept_ra/autoconf off before IPv6 goes on: the host never configures itself from a tenant's RA.
_BRIDGE_IPV6 = (("accept_ra", "0"), ("autoconf", "0"), ("disable_ipv6", "0"))


_BR_NF_SYSCTLS = ("/proc/sys/net/bridge/bridge-nf-call-iptables", "/proc/sys/net/bridge/bridge-nf-call-ip6tables")


def _bridge_nf_sysctls_off() -> None:
    # The namespace-wide switches off: a bridge passes br_netfilter only by its own option.
    for path in _BR_NF_SYSCTLS:
        try:
            with open(path) as fh:
                if fh.read().strip() == "0":
                    continue
        except FileNotFoundError:       # no br_netfilter in this kernel: nothing passes it
            return
        with open(path, "w") as fh:
            fh.write("0\n")


def _bridge_ipv6_sysctls(bridge: str) -> None:
    for key, value in _BRIDGE_IPV6:
        with open(f"/proc/sys/net/ipv6/conf/{bridge}/{key}", "w") as fh:
            fh.write(value + "\n")


def _run_in_netns(netns: str | None, fn: Any) -> None:
    """`fn()` in network namespace `netns` (a short-lived thread that entered it: setns is per
    thread), or in the caller's when None."""
    if netns is None:
        fn()
    else:
        in_netns(netns, fn)


@dataclasses.dataclass(frozen=True)
class LinkSnapshot:
    """What `read_links` found."""

    bridges: frozenset[Bridge]
    vxlans: frozenset[Vxlan]
    taps: frozenset[Plug]
    index: dict[str, int]

    @property
    def tap_names(self) -> frozenset[str]:
        return frozenset(p.tap for p in self.taps)


def read_links(sock: RtnlSocket) -> LinkSnapshot:
    """One link dump (raw netlink: pyroute2 takes ~1 ms per link to parse, this ~25 us),
    parsed into owned bridges, owned VXLAN devices and taps."""
    raw = dump_links(sock)
    names = {link.index: link.ifname for link in raw}
    bridges, vxlans, taps = set(), set(), set()
    index: dict[str, int] = {}
    for link in raw:
        name = link.ifname
        index[name] = link.index
        up = bool(link.flags & IFF_UP)
        master = names.get(link.master, "") if link.master else ""
        if naming.is_bridge(name):
            bridges.add(Bridge(name, link.address, link.mtu, up, link.ipv6_quiet, link.br_nf_call))
        elif naming.is_vxlan(name):
            vxlans.add(Vxlan(name, link.vxlan_id, link.vxlan_local, master, link.mtu, link.vxlan_port,
                             link.vxlan_learning, link.port_learning, link.port_neigh_suppress, up))
        elif naming.is_subport_device(name):
            taps.add(Plug(name, master, link.mtu, up, names.get(link.link, "") if link.link else "", link.vlan_id))
        elif naming.is_plug(name):
            taps.add(Plug(name, master, link.mtu, up))
    return LinkSnapshot(frozenset(bridges), frozenset(vxlans), frozenset(taps), index)


def underlay_index(ipr: RtnlLinks, underlay_ip: str) -> int | None:
    """Index of the device holding the underlay IP (the VXLAN devices' lower device)."""
    return ipr.addr_index(underlay_ip)


class LinksDriver:
    """Applies link diffs; collects the entries that failed (they stay dirty)."""

    def __init__(self, ipr: RtnlLinks, underlay_ip: str, index: dict[str, int] | None = None,
                 rtnl: RtnlSocket | None = None, netns: str | None = None) -> None:
        self.ipr = ipr
        self.netns = netns        # for the bridges' IPv6 sysctls (written from a thread inside it)
        self.rtnl = rtnl          # plugs: one raw netlink write (two messages, one write)
        self.underlay_ip = underlay_ip
        self.index = dict(index or {})
        self.failed: list[object] = []
        self.applied = 0
        self.unsafe_bridges: set[str] = set()   # want br_netfilter, create/update failed: no plugs

    # -- helpers --------------------------------------------------------------------------
    def _idx(self, name: str) -> int | None:
        """Index by name: from the read snapshot, else one RTM_GETLINK (not a full dump)."""
        if name in self.index:
            return self.index[name]
        idx = self.ipr.index(name)
        if idx is None:
            return None
        self.index[name] = idx
        return idx

    def _try(self, entry: object, what: str, fn: Any) -> bool:
        try:
            fn()
            self.applied += 1
            return True
        except NetlinkError as e:
            if what == "delete" and e.code in _GONE:
                return True
            if what == "create" and e.code == errno.EEXIST:
                return True
            log.warning("link %s failed for %s: %s", what, entry, e)
            self.failed.append(entry)
            return False

    # -- bridges --------------------------------------------------------------------------
    def create_bridge(self, b: Bridge) -> None:
        def go() -> None:
            try:
                self.ipr.call(new_bridge(b.name, b.mac, b.mtu, bool(b.nf_call)))
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise
            self._set_bridge(b)
        if not self._try(b, "create", go) and b.nf_call:
            self.unsafe_bridges.add(b.name)

    def _set_bridge(self, b: Bridge) -> None:
        idx = self._idx(b.name)
        if idx is None:
            raise NetlinkError(errno.ENODEV, f"{b.name} vanished")
        if b.ipv6_quiet:
            # Address generation off first: enabling IPv6 on an up device with the default mode
            # would give the host a link-local address (DAD, MLD, router solicitations into the
            # tenant network). Then IPv6 on: the bridge's ND suppression reads the IPv6
            # neighbour table, which a device with IPv6 disabled cannot hold.
            self.ipr.call(set_link(idx, addr_gen_none=True))
            try:
                _run_in_netns(self.netns, lambda: _bridge_ipv6_sysctls(b.name))
            except OSError as e:       # e.g. IPv6 compiled out or disabled at boot: the bridge stays dirty
                raise NetlinkError(e.errno or errno.EIO, f"{b.name} IPv6 sysctls: {e}") from e
        self.ipr.call(set_bridge_nf(idx, bool(b.nf_call)))
        self.ipr.call(set_link(idx, mac=b.mac, mtu=b.mtu, up=b.up))

    def update_bridge(self, b: Bridge) -> None:
        if not self._try(b, "update", lambda: self._set_bridge(b)) and b.nf_call:
            self.unsafe_bridges.add(b.name)

    def _sysctls_off(self) -> None:
        # Never at another program's expense: a bridge of the namespace that is not ours and
        # has no br_netfilter switch of its own (docker0, libvirt's, ...) may rely on the
        # namespace-wide one, so with such a bridge the sysctls stay as they are (our bridges'
        # own switches are set either way; only frames of unfiltered networks then pay the
        # inet pass, as before per-bridge switches).
        if self.rtnl is not None:
            foreign = sorted(ln.ifname for ln in dump_links(self.rtnl)
                             if ln.kind == "bridge" and not naming.is_bridge(ln.ifname) and ln.br_nf_call is not True)
            if foreign:
                log.warning("bridge-nf-call sysctls left as they are: bridge(s) %s may rely on them (give them "
                            "their own switch, `ip link set dev BR type bridge nf_call_iptables 1 "
                            "nf_call_ip6tables 1`, to let vxnet turn them off)", ", ".join(foreign[:5]))
                return
        try:
            _run_in_netns(self.netns, _bridge_nf_sysctls_off)
            self.applied += 1
        except OSError as e:
            log.warning("bridge-nf-call sysctls: %s", e)
            self.failed.append("bridge-nf-call sysctls")

    def delete_link(self, entry: Bridge | Vxlan) -> None:
        assert naming.is_owned(entry.name), entry
        def go() -> None:
            idx = self._idx(entry.name)
            if idx is not None:
                self.ipr.call(del_link(idx))
            self.index.pop(entry.name, None)
        self._try(entry, "delete", go)

    # -- vxlan ----------------------------------------------------------------------------
    def create_vxlan(self, v: Vxlan) -> None:
        def go() -> None:
            lower = underlay_index(self.ipr, v.local_ip)
            try:
                self.ipr.call(new_vxlan(v.name, v.vni, v.local_ip, v.dstport, v.learning, v.mtu, lower))
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise
            self._set_vxlan(v)
        self._try(v, "create", go)

    def _set_vxlan(self, v: Vxlan) -> None:
        idx, br = self._idx(v.name), self._idx(v.bridge)
        if idx is None or br is None:
            raise NetlinkError(errno.ENODEV, f"{v.name} or {v.bridge} missing")
        self.ipr.call(set_link(idx, master=br, mtu=v.mtu))
        # Suppression on the VXLAN port only: on the ingress (VM) port it disables the proxy
        # (KERNEL-NOTES §2). Learning off on the port so a static entry is never moved.
        self.ipr.call(set_brport(idx, neigh_suppress=v.neigh_suppress, learning=v.port_learning))
        self.ipr.call(set_link(idx, up=v.up))

    def update_vxlan(self, old: Vxlan, new: Vxlan) -> None:
        immutable = ("vni", "local_ip", "dstport", "learning")
        if any(getattr(old, f) != getattr(new, f) for f in immutable):
            log.info("recreating %s: %s -> %s", new.name, old, new)
            self.delete_link(old)
            self.create_vxlan(new)
            return
        self._try(new, "update", lambda: self._set_vxlan(new))

    # -- plugs ----------------------------------------------------------------------------
    def _vlan(self, p: Plug, old: Plug | None) -> None:
        """Make sure a subport's VLAN device exists as `p` says (recreated if it differs)."""
        if old is not None and (old.parent, old.vid) != (p.parent, p.vid):
            idx = self._idx(p.tap)
            if idx is not None:
                self.ipr.call(del_link(idx))
            self.index.pop(p.tap, None)
        if self._idx(p.tap) is not None:
            return
        lower = self._idx(p.parent)
        if lower is None:
            raise NetlinkError(errno.ENODEV, f"{p.parent} missing")
        try:
            self.ipr.call(new_vlan(p.tap, lower, p.vid, p.mtu))
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
        self.index.pop(p.tap, None)

    def plug(self, p: Plug, old: Plug | None = None) -> None:
        def go() -> None:
            if p.parent:
                assert naming.is_subport_device(p.tap), p
                self._vlan(p, old)
            if p.bridge in self.unsafe_bridges:
                raise NetlinkError(errno.EAGAIN, f"{p.bridge}: its br_netfilter switch is not set")
            idx, br = self._idx(p.tap), self._idx(p.bridge)
            if idx is None or br is None:
                raise NetlinkError(errno.ENODEV, f"{p.tap} or {p.bridge} missing")
            # Two messages (one write, in order): the kernel applies a link's flags before its
            # master, so "master + up" in one message brings the device up outside the bridge
            # for a moment, and a frame the VM sends then (its first ARP) is lost.
            if self.rtnl is None:
                self.ipr.call(set_link(idx, master=br, mtu=p.mtu))
                self.ipr.call(set_link(idx, up=p.up))
                return
            for code in self.rtnl.batch([LinkSet(idx, master=br, mtu=p.mtu), LinkSet(idx, up=p.up)]):
                if code:
                    raise NetlinkError(code, os.strerror(code))
        self._try(p, "update", go)

    def unplug(self, p: Plug) -> None:
        def go() -> None:
            idx = self._idx(p.tap)
            if idx is not None:
                if naming.is_subport_device(p.tap):
                    self.ipr.call(del_link(idx))     # ours: a subport's VLAN device
                    self.index.pop(p.tap, None)
                else:
                    self.ipr.call(set_link(idx, master=0))
        self._try(p, "delete", go)

    # -- whole diffs ----------------------------------------------------------------------
    def apply_up(self, bridges: Diff[Bridge], vxlans: Diff[Vxlan]) -> None:
        """Creates and updates of owned links, in dependency order."""
        for b in bridges.create:
            self.create_bridge(b)
        for _, b in bridges.update:
            self.update_bridge(b)
        if bridges.create or bridges.update:
            self._sysctls_off()
        for v in vxlans.create:
            self.create_vxlan(v)
        for old, v in vxlans.update:
            self.update_vxlan(old, v)

    def apply_plugs(self, plugs: Diff[Plug]) -> None:
        """Attach (and bring up) VM devices; called once their network's entries are in place."""
        for p in plugs.create:
            self.plug(p)
        for old, p in plugs.update:
            self.plug(p, old)

    def apply_down(self, bridges: Diff[Bridge], vxlans: Diff[Vxlan], plugs: Diff[Plug]) -> None:
        """Deletes, in reverse dependency order."""
        for p in plugs.delete:
            self.unplug(p)
        for v in vxlans.delete:
            self.delete_link(v)
        for b in bridges.delete:
            self.delete_link(b)


