"""`vxnet demo` (what `make demo` runs) starts a usable server: the unmodified `openstack` CLI,
given the clouds.yaml the demo writes, creates and lists a network through it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx

from tests.conftest import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def test_demo_server_works_with_the_openstack_cli(tmp_path) -> None:
    port = free_port()
    data = tmp_path / "demo"
    demo = subprocess.Popen(
        [os.path.join(BIN, "vxnet"), "demo", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.time() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert demo.poll() is None, demo.stdout.read() if demo.stdout else "demo exited"
            assert time.time() < deadline, "demo server did not come up"
            time.sleep(0.2)
        env = {**os.environ, "OS_CLIENT_CONFIG_FILE": str(data / "clouds.yaml")}
        cli = [os.path.join(BIN, "openstack"), "--os-cloud", "vxnet-alice"]
        made = subprocess.run(cli + ["network", "create", "demo-net", "-f", "json"], env=env,
                              capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stderr
        listed = subprocess.run(cli + ["network", "list", "-f", "json"], env=env, capture_output=True,
                                text=True, timeout=120)
        assert listed.returncode == 0, listed.stderr
        assert [n["Name"] for n in json.loads(listed.stdout)] == ["demo-net"]
    finally:
        demo.terminate()
        demo.wait(15)
