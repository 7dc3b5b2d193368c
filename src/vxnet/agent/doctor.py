"""Doctor: compare one host's desired state with its kernel, read-only (`vxnet doctor`).

`host_drift(view, spec, netns)` computes the host's desired state with the agent's own pure
function (`compute_host`) and reads the kernel the way the reconcilers do, but changes nothing:
- L2 (the L2 reconciler's objects): owned bridges and VXLAN devices, plugs of the taps that
  exist (a tap the hypervisor has not created yet is not drift), FDB and neighbour entries;
- firewall: the agent's nftables tables, chain by chain, compared by the hash comment every
  rule carries (the same test the driver uses to adopt a ruleset), their sets by name, and each
  set's and map's elements in one normal form (`dataplane/nft_image.py`, as the driver's resync
  compares them) and each base chain's hook, priority and policy (a changed policy, or a base
  chain re-made as a regular chain with the same rules, filters nothing as desired).
- IPv6 neighbours in namespaces (`ns-neighs`): the permanent IPv6 neighbour entries of every
  distributed router's `qr-` legs and every gateway namespace's `sg-` legs (the static entries
  that replace neighbour discovery across the underlay), read with `ip -j -6 neigh`;
- metadata (`metadata`): the metadata namespace, each network's device in it (MAC, the
  169.254.169.254/32 address), each served port's proxy route and permanent neighbour, and the
  host's bridge steering table with each served tap's `steer` element.
The other routing, DHCP and gateway objects (routes, rules, addresses, NAT tables, responder
sockets) are not checked (`CHECKED` says what is).

`run(agent, repair)` is the agent's side (`Agent.doctor`): the diff of its current view; with
`repair`, passes that read the kernel again (`kernel_changed(invalidate=True)`, as the periodic
resync does) until no drift is left or the timeout. `answer_request(agent, msg)` answers a
`doctor` stream message from its own thread and sends the result to the servers.

Each difference is one `Drift(kind, object, expected, found)`: `found` None = missing in the
kernel, `expected` None = in the kernel but not desired (an owned object the agent would
delete). The agent runs this for `vxnet doctor` requests (its current view, the same
namespace it drives); `vxnet doctor --local` runs it on a view fetched from a server, so it
works with the agent stopped. Repair is not done here: the agent repairs by reading the kernel
again on its next pass (`Agent.kernel_changed(invalidate=True)`).
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from vxnet.compute import naming
from vxnet.compute.diff import Diff, diff
from vxnet.compute.host import HostSpec, compute_host
from vxnet.compute.nft_table import NftTable

CHECKED = ("bridges", "vxlans", "plugs", "fdb", "neighs", "nftables", "ns-neighs", "metadata")
SHOWN = 500     # drift entries an answer lists (its `drift_count` counts them all)

log = logging.getLogger("vxnet.agent")


@dataclasses.dataclass(frozen=True)
class Drift:
    """One object whose kernel state differs from the desired one."""

    kind: str                 # bridges | vxlans | plugs | fdb | neighs | nftables | ns-neighs | metadata
    object: str               # its key, readable
    expected: str | None      # desired (None: should not exist)
    found: str | None         # in the kernel (None: missing)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _text(obj: Any) -> str:
    fields = dataclasses.fields(obj)
    return " ".join(f"{f.name}={getattr(obj, f.name)}" for f in fields)


def _key(obj: Any) -> str:
    key = obj.key
    return " ".join(str(k) for k in key) if isinstance(key, tuple) else str(key)


def drifts_of(kind: str, d: Diff[Any]) -> list[Drift]:
    """A keyed diff (desired vs kernel) as drift entries."""
    out = [Drift(kind, _key(e), _text(e), None) for e in d.create]
    out += [Drift(kind, _key(want), _text(want), _text(have)) for have, want in d.update]
    out += [Drift(kind, _key(e), None, _text(e)) for e in d.delete]
    return out


def l2_drift(desired: Any, kernel: Any) -> list[Drift]:
    """Drift of the L2 state (`desired`: a HostState) against `kernel` (a reconciler Kernel)."""
    links = kernel.read_links()
    present = links.tap_names
    wanted_taps = {p.tap for p in desired.plugs}
    want_plugs = frozenset(p for p in desired.plugs if p.tap in present)
    have_plugs = frozenset(p for p in links.taps if naming.is_bridge(p.bridge) or p.tap in wanted_taps)
    plugged_now = frozenset(p.tap for p in have_plugs if naming.is_bridge(p.bridge))
    have_fdb = kernel.read_fdb(links.index, plugged_now)
    have_neigh = kernel.read_neighs(links.index)
    plugged = frozenset(p.tap for p in want_plugs)
    want_fdb = frozenset(e for e in desired.fdb if not naming.is_plug(e.dev) or e.dev in plugged)
    return (drifts_of("bridges", diff(desired.bridges, links.bridges))
            + drifts_of("vxlans", diff(desired.vxlans, links.vxlans))
            + drifts_of("plugs", diff(want_plugs, have_plugs))
            + drifts_of("fdb", diff(want_fdb, have_fdb))
            + drifts_of("neighs", diff(desired.neighs, have_neigh)))


def nft_drift(tables: Iterable[NftTable], list_table: Any, elements: bool = False) -> list[Drift]:
    """Drift of nftables `tables`; `list_table(family, name)` returns the table's listing or
    raises (table missing). With `elements` the listing is a full one (`nft list table`, not
    `-t`) and every set's and map's elements are compared too."""
    from vxnet.dataplane import nft_image
    from vxnet.dataplane.nft_driver import base_changes, fingerprint, normalise_listing, parse_listing

    out: list[Drift] = []
    for t in tables:
        tname = f"{t.family} {t.name}"
        try:
            listing = list_table(t.family, t.name)
        except Exception:  # noqa: BLE001 - nft says the table does not exist (or cannot be read)
            out.append(Drift("nftables", f"table {tname}", f"{len(t.chains)} chains", None))
            continue
        chains, sets = parse_listing(listing)
        want, have = fingerprint(t), normalise_listing(t, chains)
        for name in sorted(set(want) | set(have)):
            w, h = want.get(name), have.get(name)
            if w == h:
                continue
            obj = f"table {tname} chain {name}"
            if w is None:
                out.append(Drift("nftables", obj, None, f"{len(h or ())} rules"))
            elif h is None:
                out.append(Drift("nftables", obj, f"{len(w)} rules", None))
            else:
                missing, extra = len(set(w) - set(h)), len(set(h) - set(w))
                out.append(Drift("nftables", obj, f"{len(w)} rules",
                                 f"{len(h)} rules ({missing} missing, {extra} not desired"
                                 + (", order differs" if not missing and not extra else "") + ")"))
        for name, (spec, listed) in sorted(base_changes(t, listing).items()):
            out.append(Drift("nftables", f"table {tname} chain {name} hook", spec or "regular chain",
                             listed or "regular chain"))
        for name in sorted({s.name for s in t.sets} - sets):
            out.append(Drift("nftables", f"table {tname} set {name}", "present", None))
        for name in sorted(sets - {s.name for s in t.sets}):
            out.append(Drift("nftables", f"table {tname} set {name}", None, "present"))
        image = nft_image.parse(listing) if elements else None
        for s in t.sets if image is not None else ():
            if s.name not in sets:
                continue  # reported missing above
            want, have = nft_image.norm_elements(s.elements), image.elements.get(s.name, frozenset())
            if want != have:
                out.append(Drift("nftables", f"table {tname} {s.kind} {s.name} elements", f"{len(want)} elements",
                                 f"{len(have)} elements ({len(want - have)} missing, {len(have - want)} not desired)"))
    return out


class NsMissing(Exception):
    """A namespace the doctor was asked to read does not exist."""


def ip_json(ns: str | None, *args: str) -> list[dict[str, Any]]:
    """`ip -j ARGS` in namespace `ns` (None: the caller's), parsed; NsMissing when `ns` is gone."""
    import json

    cmd = ["ip", *(["-n", ns] if ns else []), "-j", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if r.returncode != 0:
        err = r.stderr or ""
        if ns and ("network namespace" in err or "No such file" in err):
            raise NsMissing(ns)
        raise RuntimeError((r.stderr or r.stdout).strip()[-300:])
    return json.loads(r.stdout or "[]") or []


def _permanent6(read: Any, ns: str, prefix: str) -> set[tuple[str, str, str]]:
    return {(str(e.get("dev")), str(e.get("dst")), str(e.get("lladdr") or "").lower())
            for e in read(ns, "-6", "neigh", "show", "nud", "permanent")
            if str(e.get("dev") or "").startswith(prefix) and e.get("dst")}


def ns_neigh_drift(desired: Any, read: Any = ip_json) -> list[Drift]:
    """Drift of the permanent IPv6 neighbours inside the router and gateway namespaces."""
    from vxnet.compute.routing import IFACE_PREFIX

    wanted: dict[str, tuple[str, set[tuple[str, str, str]]]] = {}
    for r in desired.routing.routers:
        wanted[r.netns] = (IFACE_PREFIX, {(n.dev, n.ip, n.mac.lower()) for n in r.neighs})
    for g in desired.gateway.routers:
        wanted[g.netns] = (naming.SNAT_IFACE_PREFIX, {(d, ip, mac.lower()) for d, ip, mac in g.neighs6})
    out: list[Drift] = []
    for ns, (prefix, want) in sorted(wanted.items()):
        if not want:
            continue
        try:
            have = _permanent6(read, ns, prefix)
        except NsMissing:
            out.append(Drift("ns-neighs", f"netns {ns}", f"{len(want)} IPv6 neighbours", None))
            continue
        keyed_w = {(d, ip): mac for d, ip, mac in want}
        keyed_h = {(d, ip): mac for d, ip, mac in have}
        for (d, ip) in sorted(set(keyed_w) | set(keyed_h)):
            w, h = keyed_w.get((d, ip)), keyed_h.get((d, ip))
            if w != h:
                out.append(Drift("ns-neighs", f"{ns} {d} {ip}", f"lladdr {w}" if w else None,
                                 f"lladdr {h}" if h else None))
    return out


def metadata_drift(meta: Any, host_netns: str | None, read: Any = ip_json,
                   list_table: Any = None) -> list[Drift]:
    """Drift of the metadata service's kernel objects (see the module docstring)."""
    from vxnet.compute.metadata import METADATA_IP, NFT_TABLE

    if not meta.networks:
        return []
    out: list[Drift] = []
    ns = meta.netns
    try:
        links = {str(ln.get("ifname")): ln for ln in read(ns, "link", "show")}
        addrs = {str(a.get("ifname")): {f"{i.get('local')}/{i.get('prefixlen')}" for i in a.get("addr_info") or ()}
                 for a in read(ns, "-4", "addr", "show")}
        routes = {str(r.get("dst")) for r in read(ns, "-4", "route", "show")}
        neighs = {(str(e.get("dst")), str(e.get("lladdr") or "").lower())
                  for e in read(ns, "-4", "neigh", "show", "nud", "permanent")}
    except NsMissing:
        return [Drift("metadata", f"netns {ns}", f"{len(meta.networks)} network devices", None)]
    for n in meta.networks:
        ln = links.get(n.device)
        if ln is None:
            out.append(Drift("metadata", f"{ns} device {n.device}", f"mac {n.mac}", None))
            continue
        if str(ln.get("address") or "").lower() != n.mac.lower():
            out.append(Drift("metadata", f"{ns} device {n.device}", f"mac {n.mac}", f"mac {ln.get('address')}"))
        if f"{METADATA_IP}/32" not in addrs.get(n.device, set()):
            out.append(Drift("metadata", f"{ns} device {n.device} address", f"{METADATA_IP}/32", None))
    for p in meta.ports:
        if p.proxy_ip not in routes:
            out.append(Drift("metadata", f"{ns} route {p.proxy_ip}", "present", None))
        if (p.proxy_ip, p.mac.lower()) not in neighs:
            out.append(Drift("metadata", f"{ns} neighbour {p.proxy_ip}", f"lladdr {p.mac}", None))
    lister = list_table or (lambda f, t: nft_list_full(host_netns, f, t))
    try:
        listing = lister("bridge", NFT_TABLE)
    except Exception:  # noqa: BLE001 - nft says the table does not exist (or cannot be read)
        return out + [Drift("metadata", f"table bridge {NFT_TABLE}", f"{len(meta.ports)} steered taps", None)]
    flat = " ".join(listing.split())
    for p in meta.ports:
        if f'"{p.device}" :' not in flat:
            out.append(Drift("metadata", f"table bridge {NFT_TABLE} steer {p.device}", "present", None))
    return out


def nft_list_full(netns: str | None, family: str, name: str) -> str:
    """`nft list table FAMILY NAME` with set and map elements (in `netns`)."""
    cmd = (["ip", "netns", "exec", netns] if netns else []) + ["nft", "list", "table", family, name]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if r.returncode != 0:
        raise RuntimeError((r.stderr or r.stdout).strip()[-500:])
    return r.stdout


def host_drift(view: Mapping[str, Any] | Any, spec: HostSpec, netns: str | None = None,
               kernel: Any = None, list_table: Any = None, ns_read: Any = None) -> list[Drift]:
    """Every drift of the host (see the module docstring); `kernel`/`list_table`/`ns_read` are
    seams for tests (default: netlink, nft and `ip -j` in `netns`, or the caller's namespace;
    with a `kernel` seam and no `ns_read`, the namespace checks are left out)."""
    desired = compute_host(view, spec)
    check_ns = ns_read is not None or kernel is None
    read = ns_read or ip_json
    own_kernel = kernel is None
    if kernel is None:
        from vxnet.dataplane.host_kernel import RtnlKernel

        kernel = RtnlKernel(spec.underlay_ip, netns)
    try:
        out = l2_drift(desired.l2, kernel)
    finally:
        if own_kernel:
            kernel.close()
    # the default lister reads whole tables (elements too); a test's seam gives terse listings
    out += nft_drift(desired.firewall.tables, list_table or (lambda f, n: nft_list_full(netns, f, n)),
                     elements=list_table is None)
    if check_ns:
        out += ns_neigh_drift(desired, read)
        out += metadata_drift(desired.metadata, netns, read, list_table if ns_read is not None else None)
    return out


class DoctorAgent(Protocol):
    """What `run` and `answer_request` use of the agent (vxnet.agent.core.Agent)."""

    cfg: Any
    control: Any
    passes: int
    applied: threading.Condition
    doctor_kernel: Any
    doctor_list_table: Any

    @property
    def view(self) -> Any: ...
    def kernel_changed(self, invalidate: bool) -> None: ...
    def doctor(self, repair: bool = False, timeout: float = 20.0) -> dict[str, Any]: ...


def run(agent: DoctorAgent, repair: bool = False, timeout: float = 20.0) -> dict[str, Any]:
    """The agent's doctor answer: its drift now; with `repair`, what is left after repairing."""
    view = agent.view
    if not view.complete:
        return {"host": agent.cfg.host, "error": "no complete view yet", "drift": []}
    spec = agent.cfg.context.spec

    def check() -> list[Drift]:
        return host_drift(agent.view.view, spec, agent.cfg.netns, agent.doctor_kernel, agent.doctor_list_table,
                          getattr(agent, "doctor_ns_read", None))

    found = check()
    out: dict[str, Any] = {"host": agent.cfg.host, "revision": view.revision, "checked": list(CHECKED),
                           "drift": [d.as_dict() for d in found[:SHOWN]], "drift_count": len(found)}
    if repair and found:
        left = found
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            before = agent.passes
            agent.kernel_changed(invalidate=True)
            with agent.applied:
                agent.applied.wait_for(lambda b=before: agent.passes > b, max(0.0, deadline - time.monotonic()))
            left = check()
        out["after_repair"] = [d.as_dict() for d in left[:SHOWN]]
    log.info("host=%s doctor: %d drift(s)%s", agent.cfg.host, len(found),
             f", {len(out['after_repair'])} left after repair" if "after_repair" in out else "")
    return out


def answer_request(agent: DoctorAgent, msg: Mapping[str, Any]) -> None:
    """A `doctor` stream message: answered from another thread (the diff reads the kernel, a
    repair waits for passes), the result sent with `control.report_doctor`."""
    hosts = msg.get("hosts")
    if isinstance(hosts, list) and agent.cfg.host not in hosts:
        return
    request_id = str(msg.get("id") or "")

    def answer() -> None:
        try:
            result = agent.doctor(repair=bool(msg.get("repair")))
        except Exception as e:  # answer with the failure rather than not at all
            log.exception("host=%s doctor %s failed", agent.cfg.host, request_id)
            result = {"host": agent.cfg.host, "error": f"{type(e).__name__}: {e}", "drift": []}
        try:
            send = getattr(agent.control, "report_doctor", None)
            if send is not None:
                send(request_id, result)
        except Exception as e:  # noqa: BLE001 - the asker times out and says so
            log.warning("host=%s doctor %s: answer not delivered: %s", agent.cfg.host, request_id, e)

    threading.Thread(target=answer, name="vxnet-agent-doctor", daemon=True).start()
