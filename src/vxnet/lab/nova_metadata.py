"""The lab's Nova: a Nova-metadata-compatible endpoint for the lab's VMs (docs/metadata.md).

One HTTP server process per lab (`python -m vxnet.lab.nova_metadata --listen IP:PORT
--secret-file F --instances F`), started by `vxnet lab up` (`start`), killed by PID with the lab
(`stop`). It plays Nova's metadata API as the agents' proxies reach it:
- every request must carry `X-Instance-ID`, `X-Tenant-ID`, `X-Forwarded-For` (else 400) and
  `X-Instance-ID-Signature` = hex HMAC-SHA256(shared secret, instance id) (else 403, compared
  in constant time); an unknown instance, or a tenant that is not the instance's, is 404;
- it serves what cloud-init's OpenStack datasource reads: `openstack/` (versions),
  `openstack/<version>/meta_data.json` (uuid, name, hostname, project_id, public_keys, keys,
  availability_zone, launch_index, meta), `.../user_data` (404 when none), `.../network_data.json`,
  `.../vendor_data.json` and `vendor_data2.json` (empty); and the EC2 tree `<version>/meta-data/`
  (instance-id, hostname, local-hostname, local-ipv4, public-keys/0/openssh-key, ...) and
  `<version>/user-data`.
The instances live in a JSON file (instance id -> record) that `vxnet lab vm add` writes
(`register`) and the server re-reads when it changes. Secrets: the shared secret file and the
agents' config file are 0600.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import secrets
import socket
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from vxnet.store.secure_files import write_private

MARKER = "vxnet.lab.nova_metadata"
OPENSTACK_VERSIONS = ("2012-08-10", "2013-04-04", "2013-10-17", "2015-10-15", "2016-06-30", "2016-10-06",
                      "2017-02-22", "2018-08-27", "2020-10-14", "latest")
EC2_VERSIONS = ("1.0", "2007-01-19", "2007-03-01", "2007-08-29", "2007-10-10", "2007-12-15", "2008-02-01",
                "2008-09-01", "2009-04-04", "latest")


# ---------------------------------------------------------------------------------- the lab side
def files(state_dir: str) -> dict[str, str]:
    """Where the lab keeps the endpoint's files."""
    return {"secret": os.path.join(state_dir, "metadata-secret"),
            "instances": os.path.join(state_dir, "nova-instances.json"),
            "agent_config": os.path.join(state_dir, "agent-metadata.toml"),
            "log": os.path.join(state_dir, "nova-metadata.log")}


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def prepare(st: dict[str, Any], state_dir: str, host: str) -> None:
    """A new shared secret, an empty instance file and the agents' `[metadata]` config (once per lab)."""
    f = files(state_dir)
    secret = secrets.token_hex(32)
    write_private(f["secret"], secret + "\n")
    if not os.path.exists(f["instances"]):
        write_private(f["instances"], "{}")
    port = _free_port(host)
    url = f"http://{host}:{port}"
    write_private(f["agent_config"], f'[metadata]\nnova_metadata_url = "{url}"\nshared_secret_file = "{f["secret"]}"\n'
                                     "timeout = 3\n")
    st["nova_metadata"] = {"url": url, "listen": f"{host}:{port}", "pid": None}


def command(st: dict[str, Any], state_dir: str) -> list[str]:
    f = files(state_dir)
    return [sys.executable, "-m", MARKER, "--listen", st["nova_metadata"]["listen"], "--secret-file", f["secret"],
            "--instances", f["instances"]]


def agent_args(st: dict[str, Any], state_dir: str) -> list[str]:
    """What the lab's agents get: their `[metadata]` config file."""
    return ["--config", files(state_dir)["agent_config"]] if st.get("nova_metadata") else []


def load_instances(state_dir: str) -> dict[str, Any]:
    try:
        with open(files(state_dir)["instances"]) as fh:
            return dict(json.load(fh))
    except FileNotFoundError:
        return {}


def register(state_dir: str, vm: str, port: dict[str, Any], ip: str | None, mtu: int, hostname: str | None = None,
             user_data: bytes | None = None, ssh_key: str | None = None) -> str:
    """Record VM `vm` as a Nova instance; returns its instance id (the port's device_id)."""
    inst = load_instances(state_dir)
    iid = str(uuid.uuid4())
    inst[iid] = {"name": vm, "hostname": hostname or vm, "project_id": port.get("project_id") or port.get("tenant_id"),
                 "ip": ip.split("/")[0] if ip else None, "mac": port["mac_address"], "port_id": port["id"],
                 "network_id": port["network_id"], "mtu": mtu,
                 "user_data": base64.b64encode(user_data).decode() if user_data is not None else None,
                 "public_keys": {"lab-key": ssh_key.strip()} if ssh_key else {}}
    write_private(files(state_dir)["instances"] + ".tmp", json.dumps(inst, indent=1))
    os.replace(files(state_dir)["instances"] + ".tmp", files(state_dir)["instances"])
    return iid


def unregister(state_dir: str, vm: str) -> None:
    inst = {k: v for k, v in load_instances(state_dir).items() if v.get("name") != vm}
    write_private(files(state_dir)["instances"] + ".tmp", json.dumps(inst, indent=1))
    os.replace(files(state_dir)["instances"] + ".tmp", files(state_dir)["instances"])


# ---------------------------------------------------------------------------------- the server
def signature(secret: str, instance_id: str) -> str:
    return hmac.new(secret.encode(), instance_id.encode(), hashlib.sha256).hexdigest()


def network_data(i: dict[str, Any]) -> dict[str, Any]:
    link = "tap" + i["port_id"][:11]
    return {"links": [{"id": link, "vif_id": i["port_id"], "type": "tap", "mtu": i["mtu"],
                       "ethernet_mac_address": i["mac"]}],
            "networks": [{"id": "network0", "type": "ipv4_dhcp", "link": link, "network_id": i["network_id"]}],
            "services": []}


def meta_data(iid: str, i: dict[str, Any]) -> dict[str, Any]:
    keys = i.get("public_keys") or {}
    return {"uuid": iid, "name": i["name"], "hostname": i["hostname"], "project_id": i["project_id"],
            "availability_zone": "nova", "launch_index": 0, "meta": {}, "devices": [],
            "public_keys": keys, "keys": [{"name": k, "type": "ssh", "data": v} for k, v in keys.items()]}


def ec2_tree(iid: str, i: dict[str, Any]) -> dict[str, Any]:
    keys = i.get("public_keys") or {}
    tree: dict[str, Any] = {
        "ami-id": "ami-00000001", "ami-launch-index": "0", "ami-manifest-path": "FIXME",
        "instance-id": "i-" + iid.replace("-", "")[:8], "instance-type": "m1.small", "hostname": i["hostname"],
        "local-hostname": i["hostname"], "public-hostname": i["hostname"], "local-ipv4": i.get("ip") or "",
        "reservation-id": "r-lab", "security-groups": "default", "placement": {"availability-zone": "nova"},
        "block-device-mapping": {"ami": "vda", "root": "/dev/vda"}}
    if keys:
        tree["public-keys"] = {f"{n}={name}": {"openssh-key": key} for n, (name, key) in enumerate(keys.items())}
    return tree


def _walk(tree: Any, parts: list[str]) -> Any:
    """EC2 path lookup; `public-keys/0` names the entry `0=<name>`."""
    node = tree
    for p in parts:
        if not isinstance(node, dict):
            return None
        hit = node.get(p)
        if hit is None:
            hit = next((v for k, v in node.items() if k.split("=")[0] == p), None)
        if hit is None:
            return None
        node = hit
    return node


def _listing(node: dict[str, Any]) -> str:
    if all("=" in k for k in node):
        return "\n".join(k for k in node)
    return "\n".join(k + "/" if isinstance(v, dict) else k for k, v in node.items())


class NovaMetadata:
    """The endpoint's logic: (headers, path) -> (status, content type, body)."""

    def __init__(self, secret: str, instances_path: str) -> None:
        self.secret = secret
        self.path = instances_path
        self._mtime = -1.0
        self._instances: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.requests = 0

    def instances(self) -> dict[str, Any]:
        with self._lock:
            try:
                mtime = os.stat(self.path).st_mtime_ns
            except FileNotFoundError:
                return {}
            if mtime != self._mtime:
                with open(self.path) as f:
                    self._instances = json.load(f)
                self._mtime = mtime
            return self._instances

    def answer(self, headers: Any, path: str) -> tuple[int, str, bytes]:
        iid, tenant, fwd, sig = (headers.get(h) for h in ("X-Instance-ID", "X-Tenant-ID", "X-Forwarded-For",
                                                            "X-Instance-ID-Signature"))
        if not iid or not tenant or not fwd or sig is None:
            return 400, "text/plain", b"X-Instance-ID, X-Tenant-ID and X-Forwarded-For are required\n"
        if not hmac.compare_digest(signature(self.secret, iid), sig):
            return 403, "text/plain", b"Invalid proxy request signature.\n"
        inst = self.instances().get(iid)
        if inst is None or inst.get("project_id") != tenant:
            return 404, "text/plain", b"Instance not found\n"
        parts = [p for p in path.split("?")[0].split("/") if p]
        if not parts:
            return 200, "text/plain", "\n".join(EC2_VERSIONS).encode()
        if parts[0] == "openstack":
            return self._openstack(iid, inst, parts[1:])
        if parts[0] in EC2_VERSIONS:
            return self._ec2(iid, inst, parts[1:])
        return 404, "text/plain", b"Not Found\n"

    def _openstack(self, iid: str, inst: dict[str, Any], parts: list[str]) -> tuple[int, str, bytes]:
        if not parts:
            return 200, "text/plain", "\n".join(OPENSTACK_VERSIONS).encode()
        if parts[0] not in OPENSTACK_VERSIONS:
            return 404, "text/plain", b"Not Found\n"
        rest = "/".join(parts[1:])
        if rest == "":
            return 200, "text/plain", b"meta_data.json\nuser_data\nnetwork_data.json\nvendor_data.json\nvendor_data2.json"
        if rest == "meta_data.json":
            return 200, "application/json", json.dumps(meta_data(iid, inst)).encode()
        if rest == "network_data.json":
            return 200, "application/json", json.dumps(network_data(inst)).encode()
        if rest in ("vendor_data.json", "vendor_data2.json"):
            return 200, "application/json", b"{}"
        if rest == "user_data":
            if inst.get("user_data") is None:
                return 404, "text/plain", b"Not Found\n"
            return 200, "application/octet-stream", base64.b64decode(inst["user_data"])
        return 404, "text/plain", b"Not Found\n"

    def _ec2(self, iid: str, inst: dict[str, Any], parts: list[str]) -> tuple[int, str, bytes]:
        if not parts:
            return 200, "text/plain", b"meta-data/\nuser-data" if inst.get("user_data") else b"meta-data/"
        if parts[0] == "user-data":
            if inst.get("user_data") is None:
                return 404, "text/plain", b"Not Found\n"
            return 200, "application/octet-stream", base64.b64decode(inst["user_data"])
        if parts[0] != "meta-data":
            return 404, "text/plain", b"Not Found\n"
        node = _walk(ec2_tree(iid, inst), parts[1:])
        if node is None:
            return 404, "text/plain", b"Not Found\n"
        if isinstance(node, dict):
            return 200, "text/plain", _listing(node).encode()
        return 200, "text/plain", str(node).encode()


def serve(listen: str, logic: NovaMetadata) -> ThreadingHTTPServer:
    host, _, port = listen.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 10

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            logic.requests += 1
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(min(length, 65536))
            status, ctype, body = logic.answer(self.headers, self.path)
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_HEAD = do_GET
        do_POST = do_GET

    srv = ThreadingHTTPServer((host, int(port)), Handler)
    srv.daemon_threads = True
    return srv


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="The lab's Nova metadata endpoint")
    ap.add_argument("--listen", required=True)
    ap.add_argument("--secret-file", required=True)
    ap.add_argument("--instances", required=True)
    args = ap.parse_args(argv)
    with open(args.secret_file) as f:
        secret = f.read().strip()
    srv = serve(args.listen, NovaMetadata(secret, args.instances))
    print(f"serving on {args.listen}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
