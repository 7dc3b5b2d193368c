"""`vxnet lab`: hosts and VMs as network namespaces on one machine, with a real server and agents."""
