"""Gateway kernel driver: SNAT namespaces, their veth legs, addresses, routes and NAT table,
and the external interface's place in its bridge (KERNEL-NOTES §5).

Contract:
- `GatewayDriver(host_netns)`: host-side commands target `host_netns` (tests drive a host
  namespace from outside) or the caller's namespace.
- `ensure_external(ext, bridge)` makes the external interface a port of the external network's
  bridge (creating the bridge with the L2 reconciler's exact attributes if it is not there yet,
  so the L2 pass adopts it unchanged).
- `apply_router(r, previous)` converges one namespace to `r` and returns whether it was
  (re)created: missing namespace / legs are created, a leg whose MAC or MTU differs is fixed,
  addresses and routes not wanted are removed (only in our namespaces, which hold nothing
  else), and the NAT table is replaced in one `nft -f` transaction. Floating IPs that went away
  or changed their fixed IP have their conntrack entries deleted (`conntrack -D`, if
  installed), so a move takes effect at once. GARP (`busybox arping -U`) for the gateway
  address and floating IPs after a (re)creation and for new floating IPs.
- `delete_stale(keep)` deletes this host's SNAT namespaces not in `keep` (a veth dies with its
  namespace, so the host-side taps go too).
- Every method raises `GatewayError` on a kernel failure; the feature reports the router as
  failed and retries on the next pass.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence

from vxnet.compute import naming
from vxnet.compute.gateway import (
    ExternalBridge,
    GatewayRouter,
    Leg,
    is_router_netns,
    nat_ruleset,
)
from vxnet.compute.state import Bridge

log = logging.getLogger("vxnet.dataplane.gateway")

NETNS_DIR = "/run/netns"
ROUTE_PROTO = naming.GATEWAY_ROUTE_PROTO   # routes we add; the kernel's connected routes are proto kernel


class GatewayError(Exception):
    """A kernel command failed (message: the command and its stderr)."""


def _run(cmd: Sequence[str], stdin: str | None = None, check: bool = True) -> str:
    r = subprocess.run(list(cmd), input=stdin, capture_output=True, text=True, check=False)
    if check and r.returncode != 0:
        raise GatewayError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout


class GatewayDriver:
    """Thin wrapper over `ip`, `nft`, `conntrack` and `arping` for one host."""

    def __init__(self, host_netns: str | None = None) -> None:
        self.host_netns = host_netns
        self._garps: list[subprocess.Popen[bytes]] = []
        self.conntrack = shutil.which("conntrack")

    # -- helpers --------------------------------------------------------------------------
    def _ip(self, *args: str, ns: str | None = None, check: bool = True) -> str:
        return _run(["ip", *(["-n", ns] if ns else []), *args], check=check)

    def _host_ip(self, *args: str, check: bool = True) -> str:
        return self._ip(*args, ns=self.host_netns, check=check)

    def _json(self, *args: str, ns: str | None) -> list[dict]:
        out = self._ip("-j", *args, ns=ns, check=False)
        try:
            return json.loads(out) if out.strip() else []
        except ValueError:
            return []

    def _in_ns(self, ns: str, *cmd: str, stdin: str | None = None, check: bool = True) -> str:
        return _run(["ip", "netns", "exec", ns, *cmd], stdin=stdin, check=check)

    def close(self) -> None:
        for p in self._garps:
            if p.poll() is None:
                p.kill()
            p.wait()
        self._garps = []

    # -- external bridge ------------------------------------------------------------------
    def ensure_external(self, ext: ExternalBridge, bridge: Bridge) -> None:
        """The external interface up and enslaved to `bridge` (created if missing)."""
        if not ext.interface:
            return
        links = {link["ifname"]: link for link in self._json("link", "show", ns=self.host_netns)}
        if ext.interface not in links:
            raise GatewayError(f"external interface {ext.interface} not found")
        if bridge.name not in links:
            self._host_ip("link", "add", bridge.name, "address", bridge.mac, "mtu", str(bridge.mtu), "type", "bridge")
            self._host_ip("link", "set", bridge.name, "up")
        if links[ext.interface].get("master") != bridge.name:
            self._host_ip("link", "set", ext.interface, "master", bridge.name)
        if "UP" not in links[ext.interface].get("flags", []):
            self._host_ip("link", "set", ext.interface, "up")

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
            _run(["ip", "netns", "del", ns], check=False)
        return gone

    def _ensure_netns(self, ns: str) -> bool:
        if os.path.exists(os.path.join(NETNS_DIR, ns)):
            return False
        _run(["ip", "netns", "add", ns])
        self._in_ns(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1")
        self._ip("link", "set", "lo", "up", ns=ns)
        return True

    def _ensure_leg(self, ns: str, leg: Leg, host_links: dict[str, dict], ns_links: dict[str, dict]) -> bool:
        """The veth pair with MAC/MTU/up; True if it was (re)created."""
        created = False
        if leg.tap not in host_links or leg.inner not in ns_links:
            self._host_ip("link", "del", leg.tap, check=False)
            self._ip("link", "del", leg.inner, ns=ns, check=False)
            self._host_ip("link", "add", leg.tap, "mtu", str(leg.mtu), "type", "veth", "peer", "name", leg.inner,
                          "netns", ns)
            ns_links[leg.inner] = {}
            created = True
        inner = ns_links[leg.inner]
        if created or inner.get("address") != leg.mac or inner.get("mtu") != leg.mtu or "UP" not in inner.get("flags", []):
            self._ip("link", "set", leg.inner, "address", leg.mac, "mtu", str(leg.mtu), "up", ns=ns)
        host = host_links.get(leg.tap, {})
        if created or host.get("mtu") != leg.mtu or "UP" not in host.get("flags", []):
            self._host_ip("link", "set", leg.tap, "mtu", str(leg.mtu), "up")
        return created

    def _ensure_addrs(self, ns: str, dev: str, wanted: set[str]) -> None:
        have = set()
        for link in self._json("addr", "show", "dev", dev, ns=ns):
            for a in link.get("addr_info", []):
                if a.get("family") == "inet":
                    have.add(f"{a['local']}/{a['prefixlen']}")
        for cidr in sorted(have - wanted):
            self._ip("addr", "del", cidr, "dev", dev, ns=ns, check=False)
        for cidr in sorted(wanted - have):
            self._ip("addr", "replace", cidr, "dev", dev, ns=ns)

    def _ensure_routes(self, ns: str, r: GatewayRouter) -> None:
        wanted: dict[str, tuple[str, str]] = {}
        if r.gateway_ip:
            wanted["default"] = (r.gateway_ip, r.gw.inner)
        for dest, hop in r.routes:
            wanted[dest] = (hop, "")
        have = {}
        for rt in self._json("route", "show", "table", "main", ns=ns):
            if rt.get("protocol") != "kernel":
                have[rt["dst"]] = (rt.get("gateway", ""), rt.get("dev", ""))
        for dst in sorted(set(have) - set(wanted)):
            self._ip("route", "del", dst, ns=ns, check=False)
        for dst, (hop, dev) in sorted(wanted.items()):
            if dst in have and have[dst][0] == hop and (not dev or have[dst][1] == dev):
                continue
            self._ip("route", "replace", dst, "via", hop, *(["dev", dev] if dev else []), "proto", ROUTE_PROTO, ns=ns)

    def _forget_flows(self, ns: str, fips: Iterable[tuple[str, str]]) -> None:
        """Delete conntrack entries of floating IPs that moved or went (no stale DNAT/SNAT)."""
        if not self.conntrack:
            return
        for fip, fixed in fips:
            for args in (("--orig-dst", fip), ("--reply-dst", fip), ("--orig-src", fixed)):
                self._in_ns(ns, self.conntrack, "-D", *args, check=False)

    def _garp(self, ns: str, dev: str, ips: Iterable[str]) -> None:
        self._garps = [p for p in self._garps if p.poll() is None]
        for ip in ips:
            # Unsolicited ARP so the external network learns where the address lives now
            # (a gateway moved to this host, or a floating IP moved here). Not waited for.
            self._garps.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, "busybox", "arping", "-U", "-c", "2", "-w", "1", "-I", dev, "-s", ip, ip],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    # -- one router -----------------------------------------------------------------------
    def apply_router(self, r: GatewayRouter, previous: GatewayRouter | None) -> bool:
        """Converge `r`'s namespace (see the module contract); True if it was (re)created."""
        ns = r.netns
        created = self._ensure_netns(ns)
        host_links = {link["ifname"]: link for link in self._json("link", "show", ns=self.host_netns)}
        ns_links = {link["ifname"]: link for link in self._json("link", "show", ns=ns)}
        wanted_inner = {leg.inner for leg in r.legs} | {"lo"}
        for name in sorted(set(ns_links) - wanted_inner):
            self._ip("link", "del", name, ns=ns, check=False)     # a removed snat leg (its tap goes too)
        gw_new = False
        for leg in r.legs:
            new = self._ensure_leg(ns, leg, host_links, ns_links)
            gw_new = gw_new or (new and leg is r.gw)
            extra = {f"{f.floating_ip}/32" for f in r.fips} if leg is r.gw else set()
            self._ensure_addrs(ns, leg.inner, {leg.cidr} | extra)
        self._ensure_routes(ns, r)
        if created or previous is None or nat_ruleset(previous) != nat_ruleset(r) or gw_new:
            self._in_ns(ns, "nft", "-f", "-", stdin=nat_ruleset(r))
        old = {f.floating_ip: f.fixed_ip for f in (previous.fips if previous else ())}
        new = {f.floating_ip: f.fixed_ip for f in r.fips}
        self._forget_flows(ns, [(ip, fixed) for ip, fixed in old.items() if new.get(ip) != fixed])
        if created or gw_new:
            self._garp(ns, r.gw.inner, [r.gw_ip, *new])
        else:
            self._garp(ns, r.gw.inner, [ip for ip in new if old.get(ip) != new[ip]])
        return created or gw_new
