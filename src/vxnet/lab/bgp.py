"""The lab's upstream BGP router (`vxnet lab up --external --bgp`), an FRR `bgpd`.

- It runs in the outside namespace `vxl-x` (the external segment's upstream router, 203.0.113.1)
  as AS UPSTREAM_AS, with a leg on the management bridge (`vxlxmg0`, UPSTREAM_IP) over which
  the gateway hosts peer with it: it accepts any of them (`bgp listen range` of the management
  subnet, remote AS GATEWAY_AS), so hosts need no configuration on its side.
- The gateway agents get `gateway_args(state dir, host)`: AS GATEWAY_AS, this router as peer,
  their bgpd's state directory `bgp_dir(state dir, host)` (its pid file: `bgpd.pid`).
- Without zebra (`-Z`): it learns and shows routes (`routes()`), it installs nothing.
- Its pid is kept in the lab state (`bgp_pid`); `vxnet lab down` ends it by that pid.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

from vxnet.lab import topology

UPSTREAM_AS = 64500
GATEWAY_AS = 64512
UPSTREAM_IP = "100.127.255.253"
UPSTREAM_DEV = "vxlxmg0"
BGPD = "/usr/lib/frr/bgpd"


def upstream_dir(state_dir: str) -> str:
    return os.path.join(state_dir, "bgp-upstream")


def bgp_dir(state_dir: str, host: str) -> str:
    """A gateway host's bgpd state directory in the lab."""
    return os.path.join(state_dir, f"bgp-{host}")


def gateway_args(state_dir: str, host: str) -> list[str]:
    return ["--bgp-as", str(GATEWAY_AS), "--bgp-peer", f"{UPSTREAM_IP}:{UPSTREAM_AS}",
            "--bgp-dir", bgp_dir(state_dir, host)]


def upstream_config() -> str:
    return "\n".join([
        f"router bgp {UPSTREAM_AS}", f" bgp router-id {UPSTREAM_IP}", " no bgp ebgp-requires-policy",
        " neighbor gateways peer-group", f" neighbor gateways remote-as {GATEWAY_AS}",
        " neighbor gateways timers 3 9", " neighbor gateways advertisement-interval 0",
        f" bgp listen range {topology.MGMT_SERVER_IP.rsplit('.', 1)[0]}.0/24 peer-group gateways", "exit", ""])


def start_upstream(state_dir: str) -> int:
    """The management leg of the outside namespace and its bgpd; the bgpd's pid."""
    ns = topology.EXTERNAL_NS
    topology.ip_batch([f"link add vxlx-mg type veth peer name {UPSTREAM_DEV} netns {ns}",
                       f"link set vxlx-mg master {topology.MGMT_BR} up"], topology.UNDERLAY_NS)
    topology.ip_batch([f"addr add {UPSTREAM_IP}/24 dev {UPSTREAM_DEV}", f"link set {UPSTREAM_DEV} up"], ns)
    d = upstream_dir(state_dir)
    os.makedirs(d, mode=0o700, exist_ok=True)
    conf = os.path.join(d, "bgpd.conf")
    with open(conf, "w") as f:
        f.write(upstream_config())
    with open(os.path.join(d, "bgpd.out"), "ab") as out:
        p = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", BGPD, "-Z", "-n", "-S", "-P", "0", "-f", conf,
                              "-i", os.path.join(d, "bgpd.pid"), "--vty_socket", d,
                              "--log", f"file:{os.path.join(d, 'bgpd.log')}"],
                             stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 10
    while time.time() < deadline and not os.path.exists(os.path.join(d, "bgpd.vty")):
        if p.poll() is not None:
            raise RuntimeError(f"upstream bgpd exited with {p.returncode} (see {d}/bgpd.out)")
        time.sleep(0.02)
    return p.pid


def routes(state_dir: str) -> dict[str, list[dict[str, Any]]]:
    """prefix -> [{"nexthop", "peer", "best"}] of the upstream router's valid paths; a prefix
    without one is left out (a withdrawn prefix stays in bgpd's table, its path not valid, until
    bgpd's next pass removes it)."""
    r = subprocess.run(["vtysh", "--vty_socket", upstream_dir(state_dir), "-c", "show ip bgp json"],
                       capture_output=True, text=True, timeout=20, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"vtysh: {r.stdout}{r.stderr}")
    table = json.loads(r.stdout or "{}").get("routes") or {}
    valid = {prefix: [{"nexthop": (p.get("nexthops") or [{}])[0].get("ip"), "peer": p.get("peerId"),
                       "best": bool(p.get("bestpath"))} for p in paths if p.get("valid")]
             for prefix, paths in table.items()}
    return {prefix: paths for prefix, paths in valid.items() if paths}


def peers(state_dir: str) -> dict[str, str]:
    """peer address -> BGP state, as the upstream router sees them."""
    r = subprocess.run(["vtysh", "--vty_socket", upstream_dir(state_dir), "-c", "show ip bgp neighbors json"],
                       capture_output=True, text=True, timeout=20, check=False)
    data = json.loads(r.stdout or "{}") if r.returncode == 0 else {}
    return {addr: v.get("bgpState", "") for addr, v in data.items() if isinstance(v, dict)}
