"""The one place mapping object ids to kernel interface names and addresses.

Invariants:
- Names are at most 15 characters (IFNAMSIZ - 1) and are the same on every host.
- Every link the agent creates starts with `OWNED_PREFIXES`; the agent deletes nothing else.
- VM-facing devices are created by the hypervisor (Nova names them `tap` + 11 characters of the
  port id); the agent plugs and unplugs them but never creates or deletes them.
- Service ports are bridge ports the agent's features create for themselves (the DHCP
  responder's port, a router namespace's leg on a network): named `vxp` + a kind letter + 11
  characters of an id. The L2 reconciler plugs them like taps; the feature that created one
  deletes it (the L2 links driver never does).
"""

from __future__ import annotations

import hashlib

BRIDGE_PREFIX = "vxb-"
VXLAN_PREFIX = "vxv-"
TAP_PREFIX = "tap"
SERVICE_PREFIX = "vxp"
PLUG_PREFIXES = (TAP_PREFIX, SERVICE_PREFIX)
OWNED_PREFIXES = (BRIDGE_PREFIX, VXLAN_PREFIX)
ID_CHARS = 11
VXLAN_PORT = 4789


def bridge_name(network_id: str) -> str:
    """Bridge of a network on every host."""
    return BRIDGE_PREFIX + network_id[:ID_CHARS]


def vxlan_name(network_id: str) -> str:
    """VXLAN device of a network on every host."""
    return VXLAN_PREFIX + network_id[:ID_CHARS]


def tap_name(port_id: str) -> str:
    """Hypervisor-side device of a VM port, as Nova names it."""
    return TAP_PREFIX + port_id[:ID_CHARS]


def is_owned(ifname: str) -> bool:
    """True for links the agent created (and so may delete)."""
    return ifname.startswith(OWNED_PREFIXES)


def is_bridge(ifname: str) -> bool:
    return ifname.startswith(BRIDGE_PREFIX)


def is_vxlan(ifname: str) -> bool:
    return ifname.startswith(VXLAN_PREFIX)


def service_port_name(kind: str, object_id: str) -> str:
    """A feature's own bridge port: `vxp` + one kind letter (d: DHCP, r: router...) + 11 id chars."""
    if len(kind) != 1:
        raise ValueError("service port kind is one letter")
    return SERVICE_PREFIX + kind + object_id[:ID_CHARS]


def is_tap(ifname: str) -> bool:
    """A hypervisor-created VM device."""
    return ifname.startswith(TAP_PREFIX)


def is_plug(ifname: str) -> bool:
    """A device the L2 reconciler plugs into bridges: a VM tap or a feature's service port."""
    return ifname.startswith(PLUG_PREFIXES)


def bridge_mac(network_id: str, host: str) -> str:
    """A fixed, locally administered unicast MAC for a network's bridge on a host.

    Why explicit: a bridge without one follows its lowest port MAC, and a MAC change flushes
    every neighbour entry on the bridge, permanent ones included (KERNEL-NOTES §2).
    """
    digest = hashlib.sha256(f"{host}/{network_id}".encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])
