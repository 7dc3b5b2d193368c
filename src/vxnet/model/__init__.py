"""Typed logical resources (frozen dataclasses) and the typed host view built from them.

The layer under compute/: it imports nothing else of vxnet. See resources.py and view.py.
"""

from vxnet.model.resources import (
    AddressPair,
    FixedIp,
    FloatingIP,
    Host,
    HostRoute,
    Network,
    Port,
    QosPolicy,
    QosRule,
    Router,
    Rule,
    SecurityGroup,
    Subnet,
    parse,
)
from vxnet.model.view import KINDS, View, as_view, parse_view

__all__ = ["KINDS", "AddressPair", "FixedIp", "FloatingIP", "Host", "HostRoute", "Network", "Port", "QosPolicy", "QosRule", "Router",
           "Rule", "SecurityGroup", "Subnet", "View", "as_view", "parse", "parse_view"]
