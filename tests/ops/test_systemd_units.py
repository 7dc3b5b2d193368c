"""deploy/systemd: the units pass `systemd-analyze verify` with no warning (ExecStart pointed at
this venv's real `vxnet`, as the verifier wants an existing executable), the server runs as its
own user with no capabilities, the agent with exactly CAP_NET_ADMIN, CAP_NET_RAW and
CAP_SYS_ADMIN, both under ProtectSystem=strict, and `systemd-analyze security` rates both "OK"
(exposure below 4 of 10)."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
VXNET = (pathlib.Path(sys.executable).parent / "vxnet").resolve()
INSTALLED = "/opt/vxnet/.venv/bin/vxnet"


def analyze(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("systemd-analyze")
    assert exe, "systemd-analyze missing (Debian's systemd package)"
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def service(name: str) -> dict[str, list[str]]:
    """[Service] keys of a unit, each with every value it is given (systemd allows repeats)."""
    out: dict[str, list[str]] = {}
    section = ""
    text = (UNITS / name).read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


@pytest.fixture
def units(tmp_path) -> pathlib.Path:
    # the installed path becomes this venv's console script (which exists); nothing else changes
    assert VXNET.exists()
    for unit in ("vxnet-server.service", "vxnet-agent.service"):
        text = (UNITS / unit).read_text()
        assert INSTALLED in text
        (tmp_path / unit).write_text(text.replace(INSTALLED, str(VXNET)))
    return tmp_path


def test_units_verify_without_a_warning(units: pathlib.Path) -> None:
    out = analyze("verify", "--man=no", "vxnet-server.service", "vxnet-agent.service", cwd=units)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (out.stdout + out.stderr).strip() == ""


def test_a_mistyped_setting_is_caught(units: pathlib.Path) -> None:
    """verify exits 0 on unknown keys and bad values, so the test above also demands silence."""
    unit = units / "vxnet-server.service"
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=strickt"))
    out = analyze("verify", "--man=no", "vxnet-server.service", cwd=units)
    assert "strickt" in out.stdout + out.stderr


def test_server_is_unprivileged_and_the_agent_has_only_its_capabilities() -> None:
    server = service("vxnet-server.service")
    assert server["User"] == ["vxnet"] or server.get("DynamicUser") == ["yes"]
    assert server["CapabilityBoundingSet"] == [""] and server["AmbientCapabilities"] == [""]
    assert server["ProtectSystem"] == ["strict"] and server["NoNewPrivileges"] == ["yes"]
    assert server["StateDirectory"] == ["vxnet"] and server["StateDirectoryMode"] == ["0700"]
    assert "--data-dir /var/lib/vxnet" in server["ExecStart"][0]
    agent = service("vxnet-agent.service")
    want = {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_ADMIN"}
    assert set(agent["CapabilityBoundingSet"][0].split()) == want
    assert set(agent["AmbientCapabilities"][0].split()) == want
    assert agent["ProtectSystem"] == ["strict"] and agent["NoNewPrivileges"] == ["yes"]
    assert agent["RuntimeDirectory"] == ["netns vxnet"] and agent["RuntimeDirectoryPreserve"] == ["yes"]
    # the sysusers entry creates the server's user
    sysusers = (UNITS / "vxnet.sysusers.conf").read_text()
    assert re.search(r"^u vxnet ", sysusers, re.MULTILINE)


@pytest.mark.parametrize("unit", ["vxnet-server.service", "vxnet-agent.service"])
def test_exposure_is_ok(units: pathlib.Path, unit: str) -> None:
    out = analyze("security", "--offline=yes", "--no-pager", unit, cwd=units)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", out.stdout + out.stderr)
    assert m, out.stdout + out.stderr
    assert float(m.group(1)) < 4.0, out.stdout
