"""The demo cloud (`vxnet demo`): scenario.py builds it through the public API, matrix.py proves
its connectivity with real packets, run.py orchestrates the lab around them."""
