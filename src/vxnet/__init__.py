"""vxnet: software-defined network virtualisation for multi-tenant clouds on plain Linux."""
