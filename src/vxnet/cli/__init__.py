"""The `vxnet` command line: server, agent, lab, demo, trace, bench."""
