"""Thin kernel drivers (netlink through pyroute2 and a raw batch socket).

Drivers read the kernel back into `vxnet.compute.state` entries, and apply a `Diff` of those
entries. They touch only objects the agent owns (`vxnet.compute.naming`): links with its
prefixes, and FDB / neighbour entries of a kind it programs on devices it manages.
"""
