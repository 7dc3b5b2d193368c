"""Thin kernel drivers: raw rtnetlink (`rtnl`, `rtnl_links`, `rtnl_routes`; named namespaces in
`netns`) for the L2, DHCP and metadata paths, pyroute2 for the router and gateway drivers
(imported only on hosts that have routers or are gateways).

Drivers read the kernel back into `vxnet.compute.state` entries, and apply a `Diff` of those
entries. They touch only objects the agent owns (`vxnet.compute.naming`): links with its
prefixes, and FDB / neighbour entries of a kind it programs on devices it manages.
"""
