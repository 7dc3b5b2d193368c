"""QoS kernel driver: TBF shapers on VM taps and their IFB devices (`tc`, `ip`), DSCP marks in
the QoS nftables table.

Why these tools (KERNEL-NOTES): a VM's egress enters the host on its tap's *ingress*, where
Linux can only police or redirect. Policing (`act_police`, `cls_matchall`) is not built into
every kernel (it is not on our CI kernel), and a policer drops bursts TCP then recovers from
slowly; so the tap's ingress is redirected (`u32` match-all, `mirred egress redirect`, both
core) to an IFB device whose root TBF shapes it, as the VM's ingress is shaped by a TBF at the
tap's root. TBF counts whole frames: a TCP flow's goodput is the limit times payload/frame
(~95.5% at MTU 1450).

It drives iproute2's `tc` and `ip` programs (JSON listings to read back), as the gateway
driver does: QoS changes are rare and off the port-up path (a tap's limits are applied in the
pass that plugs it, a few ms).

Contract:
- `QosDriver(netns)`: commands run in `netns` (tests drive a host namespace from outside) or in
  the caller's namespace.
- `apply_tap(t)` converges one tap to `t` and says whether it changed anything: each object
  (shaper, IFB and its state, ingress qdisc, redirect filter) is read first and written only
  when it differs (`replace`, so re-applying after a restart disturbs no flow, and a resync of
  an unchanged tap writes nothing); `clear_tap(tap, port_id)` removes what QoS put there.
  A tap that does not exist (VM not plugged yet) is a `QosError` (retried with backoff).
- `owned(taps)`: which existing taps carry a QoS object of ours (root qdisc `QOS_QDISC_HANDLE`
  or an ingress filter of pref `QOS_FILTER_PREF`) and which IFBs of ours exist, read from the
  kernel (a restarted agent finds its leftovers).
- `apply_dscp(text, marked, verify)` runs the QoS table's ruleset (one nftables transaction) and
  says whether it did: with `verify` (the state is unknown, e.g. a resync) only when the
  kernel's table differs from the listing nft printed after the driver's own last transaction of
  the same text (nft prints rules in its own normal form: dataplane/nft_image.py), or the table
  is present while no tap is `marked`.
- It touches only objects marked as ours (compute/naming.py): other qdiscs and filters on a tap,
  and other tables, are left alone; the tap's ingress qdisc is removed only when no filter is
  left on it.
"""

from __future__ import annotations

import json
import subprocess

from vxnet.compute import naming
from vxnet.compute.qos import TBF_LATENCY_MS, Limit, TapQos
from vxnet.dataplane import nft_image
from vxnet.dataplane.nft_exec import NftExecutor

HANDLE = naming.QOS_QDISC_HANDLE
PREF = str(naming.QOS_FILTER_PREF)


def same_burst(listed: object, lim: Limit) -> bool:
    """Whether a TBF's listed burst is `lim.burst`: the kernel keeps the bucket as a time at
    the rate (in scheduler ticks), so `tc` lists the burst back rounded (249997 for 250000 bytes
    at 30 Mbit/s); a difference within 4 microseconds at the rate is that rounding."""
    if not isinstance(listed, int):
        return False
    return abs(listed - lim.burst) <= max(8, lim.kbps * 125 * 4 // 1_000_000)


class QosError(Exception):
    """A kernel command failed (message: the command and its stderr)."""


class QosDriver:
    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._nft: NftExecutor | None = None
        self._dscp_seen: tuple[str, nft_image.TableImage | None] | None = None   # (ruleset, listing after it)

    def _run(self, *cmd: str, check: bool = True) -> str:
        full = [*(["ip", "netns", "exec", self.netns] if self.netns else []), *cmd]
        r = subprocess.run(full, capture_output=True, text=True, check=False, timeout=30)
        if check and r.returncode != 0:
            raise QosError(f"{' '.join(cmd)}: {r.stderr.strip()}")
        return r.stdout

    def _json(self, *cmd: str) -> list[dict]:
        out = self._run(*cmd, check=False).strip()
        try:
            data = json.loads(out) if out else []
        except ValueError:
            return []
        return data if isinstance(data, list) else []

    # ------------------------------------------------------------------ reading
    def links(self) -> set[str]:
        return {link.get("ifname", "") for link in self._json("ip", "-j", "link", "show")}

    def _root_is_ours(self, dev: str) -> bool:
        return any(q.get("root") and q.get("handle") == HANDLE for q in self._json("tc", "-j", "qdisc", "show",
                                                                                   "dev", dev))

    def _ingress_filters(self, dev: str) -> list[dict]:
        return self._json("tc", "-j", "filter", "show", "dev", dev, "ingress")

    def owned(self) -> tuple[set[str], set[str]]:
        """(taps carrying a QoS object of ours, our IFB devices), from the kernel: one qdisc
        listing of every device, then the filters of the taps that have an ingress qdisc."""
        ifbs = {n for n in self.links() if n.startswith(naming.QOS_IFB_PREFIX)}
        marked, with_ingress = set(), set()
        for q in self._json("tc", "-j", "qdisc", "show"):
            dev = str(q.get("dev", ""))
            if not naming.is_tap(dev):
                continue
            if q.get("root") and q.get("handle") == HANDLE:
                marked.add(dev)
            elif q.get("kind") in ("ingress", "clsact"):
                with_ingress.add(dev)
        for dev in with_ingress - marked:
            if any(str(f.get("pref")) == PREF for f in self._ingress_filters(dev)):
                marked.add(dev)
        return marked, ifbs

    # ------------------------------------------------------------------ writing
    def _tbf(self, dev: str, lim: Limit) -> bool:
        for q in self._json("tc", "-j", "qdisc", "show", "dev", dev):
            opts = q.get("options") or {}
            if (q.get("root") and q.get("handle") == HANDLE and q.get("kind") == "tbf"
                    and opts.get("rate") == lim.kbps * 125 and same_burst(opts.get("burst"), lim)):
                return False              # equal: leave it (and its queue) alone
        self._run("tc", "qdisc", "replace", "dev", dev, "root", "handle", HANDLE, "tbf",
                  "rate", f"{lim.kbps}kbit", "burst", str(lim.burst), "latency", f"{TBF_LATENCY_MS}ms")
        return True

    def _del_root(self, dev: str) -> bool:
        if self._root_is_ours(dev):
            self._run("tc", "qdisc", "del", "dev", dev, "root", check=False)
            return True
        return False

    def _redirects_to(self, tap: str, ifb: str) -> bool:
        """Whether `tap` has its ingress qdisc and our redirect filter (pref, handle) to `ifb`."""
        if not any(q.get("kind") == "ingress" for q in self._json("tc", "-j", "qdisc", "show", "dev", tap)):
            return False
        for f in self._ingress_filters(tap):
            opts = f.get("options") or {}
            if str(f.get("pref")) != PREF or opts.get("fh") != "800::1":
                continue
            acts = opts.get("actions") or []
            match = opts.get("match") or {}
            return (f.get("protocol") == "all" and match.get("value") == "0" and match.get("mask") == "0"
                    and len(acts) == 1 and acts[0].get("kind") == "mirred"
                    and acts[0].get("mirred_action") == "redirect" and acts[0].get("direction") == "egress"
                    and acts[0].get("to_dev") == ifb)
        return False

    def apply_tap(self, t: TapQos) -> bool:
        """Converge `t.tap` (and its IFB) to `t`'s limits; True when something was written (see
        the module contract)."""
        links = {str(ln.get("ifname", "")): ln for ln in self._json("ip", "-j", "link", "show")}
        if t.tap not in links:
            raise QosError(f"{t.tap} does not exist (yet)")
        changed = self._tbf(t.tap, t.ingress) if t.ingress is not None else self._del_root(t.tap)
        if t.egress is not None:
            ifb = links.get(t.ifb)
            if ifb is None:
                self._run("ip", "link", "add", t.ifb, "type", "ifb", check=False)    # EEXIST: adopted
            if ifb is None or "UP" not in (ifb.get("flags") or ()):
                self._run("ip", "link", "set", t.ifb, "up")
                changed = True
            changed = self._tbf(t.ifb, t.egress) or changed
            if not self._redirects_to(t.tap, t.ifb):
                self._run("tc", "qdisc", "replace", "dev", t.tap, "handle", "ffff:", "ingress")
                self._run("tc", "filter", "replace", "dev", t.tap, "parent", "ffff:", "pref", PREF,
                          "handle", "800::1", "protocol", "all", "u32", "match", "u32", "0", "0",
                          "action", "mirred", "egress", "redirect", "dev", t.ifb)
                changed = True
        else:
            changed = self._clear_egress(t.tap, t.ifb) or changed
        return changed

    def _clear_egress(self, tap: str, ifb: str) -> bool:
        links = self.links()
        changed = False
        if tap in links:
            filters = self._ingress_filters(tap)
            if any(str(f.get("pref")) == PREF for f in filters):
                self._run("tc", "filter", "del", "dev", tap, "parent", "ffff:", "pref", PREF, check=False)
                changed = True
                if all(str(f.get("pref")) == PREF for f in filters):   # nothing else there: ours
                    self._run("tc", "qdisc", "del", "dev", tap, "ingress", check=False)
        if ifb in links:
            self._run("ip", "link", "del", ifb, check=False)
            changed = True
        return changed

    def clear_tap(self, tap: str, port_id: str) -> None:
        """Remove every QoS object of ours from `tap` and its IFB (gone devices are fine)."""
        if tap in self.links():
            self._del_root(tap)
        self._clear_egress(tap, naming.qos_ifb_name(port_id))

    def delete_ifb(self, name: str) -> None:
        if name.startswith(naming.QOS_IFB_PREFIX):
            self._run("ip", "link", "del", name, check=False)

    def _dscp_listing(self) -> nft_image.TableImage | None:
        assert self._nft is not None
        try:
            return nft_image.parse(self._nft.output("list table {} {}".format(*naming.QOS_TABLE), 0))
        except OSError:
            return None                   # absent (or unreadable)

    def apply_dscp(self, ruleset: str, marked: bool = True, verify: bool = False) -> bool:
        """Replace the QoS nftables table (one transaction); True when it did (see the module
        contract)."""
        if self._nft is None:
            self._nft = NftExecutor(self.netns, in_process=False)   # the agent's threads vary: the nft program
        if verify:
            have = self._dscp_listing()
            if have is None and not marked:
                return False
            if marked and have is not None and self._dscp_seen is not None and self._dscp_seen == (ruleset, have):
                return False
        err = self._nft.run(ruleset)
        if err is not None:
            self._dscp_seen = None
            raise QosError(f"nft: {err}")
        self._dscp_seen = (ruleset, self._dscp_listing()) if marked else None
        return True

    def close(self) -> None:
        if self._nft is not None:
            self._nft.close()
            self._nft = None
