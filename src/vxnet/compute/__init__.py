"""Pure compute layer: a host's view of the topology -> its desired kernel state.

Nothing here does I/O or imports `vxnet.dataplane`, `vxnet.agent` or `vxnet.api`; the
dataplane drivers import these types (one-way dependency).
"""
