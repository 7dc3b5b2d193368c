"""TLS as the deployment guide sets it up: certificates from deploy/make-certs.sh, etcd serving
HTTPS with client-certificate auth, and `vxnet server` serving HTTPS on top of it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx

from tests.conftest import free_port, get_token
from tests.support.etcd import EtcdCluster
from vxnet.store import open_store
from vxnet.store.contract import StoreUnavailable, put

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def make_certs(out: str) -> tuple[str, str, str]:
    subprocess.run([os.path.join(ROOT, "deploy", "make-certs.sh"), out, "node1", "127.0.0.1"], check=True,
                   capture_output=True)
    return (os.path.join(out, "ca.pem"), os.path.join(out, "node1.pem"), os.path.join(out, "node1.key"))


def test_etcd_over_tls_and_https_api(tmp_path) -> None:
    ca, cert, key = make_certs(str(tmp_path / "pki"))
    cluster = EtcdCluster(1, prefix="vxt-tls", tls=(ca, cert, key))
    server = None
    try:
        store = open_store(cluster.url())
        rev = put(store, "/t/tls", "ok")
        assert store.get("/t/tls").mod_revision == rev
        store.close()
        # without the client certificate etcd refuses the connection
        try:
            bad = open_store(cluster.url().split("&cert=")[0])
            bad.close()
            raise AssertionError("etcd accepted a client without a certificate")
        except (StoreUnavailable, httpx.HTTPError):
            pass

        port = free_port()
        cfg = tmp_path / "vxnet.toml"
        cfg.write_text(f'''[server]
listen = "127.0.0.1:{port}"
store = "{cluster.url()}"
tls_cert = "{cert}"
tls_key = "{key}"
public_url = "https://127.0.0.1:{port}"

[[identity.users]]
name = "alice"
password = "alice-pw"
project = "tenant-a"
roles = ["member"]
''')
        server = subprocess.Popen([sys.executable, "-m", "vxnet.cli.main", "server", "--config", str(cfg)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"https://127.0.0.1:{port}"
        deadline = time.time() + 20
        while True:
            try:
                if httpx.get(url + "/", verify=ca, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
            assert time.time() < deadline, "HTTPS server did not come up"
            time.sleep(0.1)
        # an untrusted client refuses the self-signed certificate
        try:
            httpx.get(url + "/", timeout=2)
            raise AssertionError("certificate accepted without the CA")
        except httpx.ConnectError:
            pass
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "alice", "domain": {"id": "default"}, "password": "alice-pw"}}},
            "scope": {"project": {"name": "tenant-a", "domain": {"id": "default"}}}}}
        r = httpx.post(url + "/identity/v3/auth/tokens", json=body, verify=ca, timeout=10)
        assert r.status_code == 201
        catalog = r.json()["token"]["catalog"]
        assert any(ep["url"].startswith("https://") for s in catalog for ep in s["endpoints"])
        tok = r.headers["X-Subject-Token"]
        r = httpx.post(url + "/v2.0/networks", json={"network": {"name": "secure"}}, verify=ca,
                       headers={"X-Auth-Token": tok}, timeout=10)
        assert r.status_code == 201, r.text
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        cluster.stop()


_ = get_token  # the conftest helper is the plain-HTTP path; this test speaks HTTPS itself
