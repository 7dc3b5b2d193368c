"""Port binding: the `binding:vif_type` a port gets for its `binding:host_id`, and rebinding the
ports of a host whose agent arrives late.

Neutron (ML2) binds a port when its host is set: with a live agent on that host that can bind
it, the port gets the mechanism's vif type; with none, `binding_failed`, until a later attempt
succeeds. vxnet decides in the transaction that sets the host:
- no host: `unbound`;
- the host's liveness key exists (its agent holds a live lease, services/agents.py): `tap`;
- otherwise `binding_failed`, recorded at `/vxnet/binding-failed/<host>/<port>`.

`tap` is what Nova's libvirt driver plugs with no os-vif plugin of ours (as for Calico): Nova
creates the tap `tap` + the port id's first 11 characters (`plug_tap`) with the host-side MAC
`binding:vif_details.mac_address` and hands it to the guest (`get_config_tap`); the agent sees
the tap appear and plugs it into the network's bridge, exactly as for the lab's taps. Details:
`port_filter: true` (vxnet filters: Nova adds no firewall of its own) and `mac_address` =
the port's MAC with the first octet `fe` (libvirt's convention for a tap's host side: never
the guest's own MAC, which the bridge would then take as a local address, and high enough
never to become the bridge's MAC). Unbound and failed ports have empty details. Ports bound
before this rule keep `bridge` until their binding changes (no agent reads the vif type).
Reading the liveness key guards it, so a registration committing meanwhile makes the binding
transaction rerun (and bind). A registration committing first is followed by `rebind_host`,
which turns exactly the recorded ports of that host to `tap` (no scan of all ports; each such
port's revision_number and updated_at move on, as for any write). A bound port keeps its vif
type when its agent dies later, as in Neutron.

Agents learn their ports from `binding:host_id` alone (services/host_view.py): the vif type
never changes what a host programs, so a late agent plugs its ports as before.

Every function works inside the caller's unit of work and stages nothing else.
"""

from __future__ import annotations

from typing import Any

from vxnet.services.repo import ROOT, UnitOfWork, now_iso

LIVE_PREFIX = f"{ROOT}agents/"
FAILED_PREFIX = f"{ROOT}binding-failed/"
UNBOUND, BOUND, FAILED = "unbound", "tap", "binding_failed"
LEGACY_BOUND = "bridge"  # the vif type of ports bound before `tap` (still a bound port)


def live_key(host: str) -> str:
    """The liveness key of a host (attached to its agent's lease)."""
    return LIVE_PREFIX + host


def failed_key(host: str, port_id: str) -> str:
    return f"{FAILED_PREFIX}{host}/{port_id}"


def vif_details(port: dict[str, Any], vif: str) -> dict[str, Any]:
    """The `binding:vif_details` of `port` with vif type `vif` (see the module docstring)."""
    if vif != BOUND:
        return {}
    return {"port_filter": True, "mac_address": "fe" + port["mac_address"][2:]}


def vif_type(uow: UnitOfWork, host: str) -> str:
    """The vif type a port bound to `host` gets now (guards the host's liveness key)."""
    if not host:
        return UNBOUND
    return BOUND if uow.get_raw(live_key(host)) is not None else FAILED


def bind(uow: UnitOfWork, port: dict[str, Any], host: str) -> None:
    """Set `port`'s host and vif type (in place; the caller stages the port) and keep the
    failed-binding record in step with it."""
    old_host, old_vif = port.get("binding:host_id") or "", port.get("binding:vif_type")
    vif = vif_type(uow, host)
    if old_vif == FAILED and old_host and (old_host != host or vif != FAILED):
        uow.delete_raw(failed_key(old_host, port["id"]))
    if vif == FAILED:
        uow.put_raw(failed_key(host, port["id"]), "")
    port["binding:host_id"] = host
    port["binding:vif_type"] = vif
    port["binding:vif_details"] = vif_details(port, vif)


def release(uow: UnitOfWork, port: dict[str, Any]) -> None:
    """Drop the failed-binding record of a port that goes away."""
    if port.get("binding:vif_type") == FAILED and port.get("binding:host_id"):
        uow.delete_raw(failed_key(port["binding:host_id"], port["id"]))


def rebind_host(uow: UnitOfWork, host: str) -> list[str]:
    """Bind the ports whose binding to `host` failed, now that its agent is alive; their ids."""
    if uow.get_raw(live_key(host)) is None:
        return []
    kvs, _ = uow.repo.store.range(failed_key(host, ""))
    done = []
    for kv in kvs:
        pid = kv.key[len(failed_key(host, "")):]
        if "/" in pid:
            continue  # a record of another host whose name starts with "<host>/"
        uow.get_raw(kv.key)  # guard: a concurrent unbind of the port reruns this
        uow.delete_raw(kv.key)
        port = uow.get("ports", pid)
        if port is None or port.get("binding:host_id") != host or port.get("binding:vif_type") != FAILED:
            continue  # stale record: the port moved or went away
        port["binding:vif_type"] = BOUND
        port["binding:vif_details"] = vif_details(port, BOUND)
        port["revision_number"] = port.get("revision_number", 0) + 1
        port["updated_at"] = now_iso()
        uow.put("ports", port)
        done.append(pid)
    return done


def has_failed(uow_or_store: Any, host: str) -> bool:
    """Whether any binding to `host` is recorded as failed (a cheap read before a transaction)."""
    store = uow_or_store.repo.store if isinstance(uow_or_store, UnitOfWork) else uow_or_store
    kvs, _ = store.range(failed_key(host, ""))
    return bool(kvs)
