"""The one place mapping object ids to kernel interface names and addresses.

Invariants:
- Names are at most 15 characters (IFNAMSIZ - 1) and are the same on every host.
- Every link the agent creates starts with `OWNED_PREFIXES`; the agent deletes nothing else.
- VM-facing devices are created by the hypervisor (Nova names them `tap` + 11 characters of the
  port id); the agent plugs and unplugs them but never creates or deletes them.
- A trunk's subport rides on its parent's tap as an 802.1Q VLAN device the agent creates and
  deletes itself: `vxt` + 11 characters of the subport's id (its VLAN id and parent are the
  device's attributes, not part of its name), plugged into the subport network's bridge like a
  tap; every per-port object (firewall, DHCP steering, QoS) names it by `port_device`.
- Service ports are bridge ports the agent's features create for themselves (the DHCP
  responder's port, a router namespace's leg on a network): named `vxp` + a kind letter + 11
  characters of an id. The L2 reconciler plugs them like taps; the feature that created one
  deletes it (the L2 links driver never does).
- Every ownership mark is defined here, so that an agent restarted with no memory recognises
  (and cleans up) exactly its own objects: link prefixes, namespace prefixes, nftables tables,
  route protocol numbers. Modules use these constants, never their own literals.
"""

from __future__ import annotations

import hashlib

BRIDGE_PREFIX = "vxb-"
VXLAN_PREFIX = "vxv-"
TAP_PREFIX = "tap"
SERVICE_PREFIX = "vxp"
SUBPORT_PREFIX = "vxt"                # vxt<subport>: a trunk subport's VLAN device on its parent's tap
PLUG_PREFIXES = (TAP_PREFIX, SERVICE_PREFIX, SUBPORT_PREFIX)
OWNED_PREFIXES = (BRIDGE_PREFIX, VXLAN_PREFIX)
ID_CHARS = 11
VXLAN_PORT = 4789

# Features' service ports (`service_port_name` kinds) and their other devices.
DHCP_KIND = "d"                       # vxpd<network>: the DHCP responder's bridge side
ROUTER_KIND = "r"                     # vxpr<port>: a router namespace's leg, bridge side
METADATA_KIND = "m"                   # vxpm<network>: the metadata veth, bridge side
METADATA_DEVICE_PREFIX = "vxmd"       # vxmd<network>: the metadata veth, in the metadata namespace
DHCP_DEVICE_PREFIX = "vxdr"           # vxdr<network>: the DHCP responder's host side
QOS_IFB_PREFIX = "vxqi"               # vxqi<port>: the IFB a VM's egress is shaped on (QoS)
# Namespaces (the host name is part of the name: lab hosts share /run/netns).
ROUTER_NS_PREFIX = "vxr-"             # vxr-<router>-<host>: distributed router
SNAT_NS_PREFIX = "vxs-"               # vxs-<router>-<host>: a gateway host's SNAT namespace
METADATA_NS_PREFIX = "vxm-"           # vxm-<host>: the host's metadata namespace (one per host)
ROUTER_IFACE_PREFIX = "qr-"           # inside vxr-: a router leg
GATEWAY_IFACE_PREFIX = "qg-"          # inside vxs-: the external leg
SNAT_IFACE_PREFIX = "sg-"             # inside vxs-: a leg on a tenant network
# nftables tables (family, name): the agent touches no other table.
PS_TABLE = ("bridge", "vxnet_ps")     # port security, port marks
SG_TABLE = ("inet", "vxnet_sg")       # security groups, conntrack zones
HOST_TABLE = ("arp", "vxnet_host")    # the host guard
DHCP_TABLE = ("bridge", "vxnet_dhcp") # DHCP steering
NAT_TABLE = ("ip", "vxnet_nat")       # inside vxs- namespaces
QOS_TABLE = ("bridge", "vxnet_qos")   # QoS DSCP marking
METADATA_TABLE = ("bridge", "vxnet_meta")   # metadata steering
# tc objects the QoS feature owns (on VM taps and its IFBs): a root qdisc with this handle, and
# on the tap's ingress qdisc a filter with this preference (the ingress qdisc itself is ffff:).
QOS_QDISC_HANDLE = "7671:"
QOS_FILTER_PREF = 30247
# Routes and rules the agent owns.
ROUTER_ROUTE_PROTO = 118              # 'v': inside router namespaces
GATEWAY_ROUTE_PROTO = "static"        # inside SNAT namespaces (the kernel's own are proto kernel)


def bridge_name(network_id: str) -> str:
    """Bridge of a network on every host."""
    return BRIDGE_PREFIX + network_id[:ID_CHARS]


def vxlan_name(network_id: str) -> str:
    """VXLAN device of a network on every host."""
    return VXLAN_PREFIX + network_id[:ID_CHARS]


def tap_name(port_id: str) -> str:
    """Hypervisor-side device of a VM port, as Nova names it."""
    return TAP_PREFIX + port_id[:ID_CHARS]


def subport_device(port_id: str) -> str:
    """The VLAN device a trunk subport is carried on (created on its parent's tap)."""
    return SUBPORT_PREFIX + port_id[:ID_CHARS]


def port_device(port_id: str, subport: bool = False) -> str:
    """The bridge-side device of a VM port: its tap, or for a trunk subport its VLAN device."""
    return subport_device(port_id) if subport else tap_name(port_id)


def is_subport_device(ifname: str) -> bool:
    return ifname.startswith(SUBPORT_PREFIX)


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


def qos_ifb_name(port_id: str) -> str:
    """The IFB device that shapes a VM port's egress (its tap's ingress is redirected to it)."""
    return QOS_IFB_PREFIX + port_id[:ID_CHARS]


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
