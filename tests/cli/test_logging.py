"""`vxnet server --log-format json` and SIGHUP, on a real server process: every stderr line is
a JSON object, the access line names the response's request id, and after the config file's
`log_level` is changed and SIGHUP sent, info lines that were filtered appear."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx

from tests.conftest import free_port, get_token
from tests.support import http

CONFIG = """
[server]
listen = "127.0.0.1:{port}"
store = "sqlite:///{db}"
log_level = "{level}"

[[identity.users]]
name = "admin"
password = "s3cret"
project = "admin"
roles = ["admin"]
"""


def _lines(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _wait(path: str, pred, timeout: float = 20) -> list[dict]:
    deadline = time.time() + timeout
    while True:
        docs = _lines(path)
        if any(pred(d) for d in docs) or time.time() > deadline:
            return docs
        time.sleep(0.1)


def test_json_logs_and_sighup_reloads_the_level(tmp_path) -> None:
    port = free_port()
    cfg = tmp_path / "vxnet.toml"
    cfg.write_text(CONFIG.format(port=port, db=tmp_path / "vxnet.db", level="warning"))
    err = tmp_path / "server.err"
    with open(err, "w") as errf:
        proc = subprocess.Popen([sys.executable, "-c", "from vxnet.cli.main import main; main()", "server",
                                 "--config", str(cfg), "--log-format", "json"], stderr=errf, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                http.get(url + "/", timeout=1)
                break
            except httpx.TransportError:
                assert time.time() < deadline and proc.poll() is None, err.read_text()
                time.sleep(0.1)
        admin = get_token(url, "admin", "s3cret", "admin")

        def revoke() -> str:
            victim = get_token(url, "admin", "s3cret", "admin")
            r = http.delete(url + "/identity/v3/auth/tokens", headers={"X-Auth-Token": admin,
                                                                      "X-Subject-Token": victim}, timeout=10)
            assert r.status_code == 204, r.text
            return r.headers["X-Openstack-Request-Id"]

        rid = revoke()
        docs = _wait(str(err), lambda d: rid in d["msg"])
        access = [d for d in docs if rid in d["msg"] and d["logger"] == "vxnet.access"]
        assert access and "DELETE /identity/v3/auth/tokens 204" in access[0]["msg"], docs
        assert not [d for d in docs if "revoked by" in d["msg"]], "an info line at level warning"

        cfg.write_text(CONFIG.format(port=port, db=tmp_path / "vxnet.db", level="info"))
        proc.send_signal(signal.SIGHUP)
        docs = _wait(str(err), lambda d: d["msg"] == "log level now info")
        assert [d for d in docs if d["msg"] == "log level now info"], docs
        revoke()
        docs = _wait(str(err), lambda d: "revoked by" in d["msg"])
        assert [d for d in docs if "revoked by" in d["msg"] and d["level"] == "INFO"], docs

        cfg.write_text(CONFIG.format(port=port, db=tmp_path / "vxnet.db", level="chatty"))
        proc.send_signal(signal.SIGHUP)                    # a bad file: logged, level unchanged, still serving
        docs = _wait(str(err), lambda d: "cannot re-read" in d["msg"] or "not one of" in d["msg"])
        assert [d for d in docs if d["level"] == "ERROR" and "log level" in d["msg"]], docs
        assert proc.poll() is None and http.get(url + "/", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(15)
    assert all(isinstance(d, dict) for d in _lines(str(err)))
    assert os.path.getsize(err) > 0
