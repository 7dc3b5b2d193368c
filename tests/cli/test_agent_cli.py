"""`vxnet agent`'s command line (vxnet/cli/agent.py: argparse, run without the typer app):
options, defaults and environment variables as documented, usage errors exit 2, and the typer
app's `vxnet agent` hands its arguments (and `--help`) to the same parser."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vxnet.cli.agent import DEFAULT_CONTROL_SOCKET, parser

REQUIRED = ["--server", "http://192.0.2.1:9696", "--host", "h1", "--underlay-ip", "198.51.100.1"]


def test_defaults_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("VXNET_AGENT_USER", "VXNET_AGENT_PASSWORD", "VXNET_AGENT_PROJECT"):
        monkeypatch.delenv(k, raising=False)
    o = parser().parse_args(REQUIRED)
    assert (o.server, o.host, o.underlay_ip) == ("http://192.0.2.1:9696", "h1", "198.51.100.1")
    assert (o.user, o.password, o.project) == ("vxnet-agent", None, "service")  # no built-in password
    assert (o.gateway, o.bfd, o.resync, o.dhcp_lease_time, o.control_socket) == \
        (False, False, 30.0, 86400, DEFAULT_CONTROL_SOCKET)
    assert o.external_interface is None and o.bgp_peer is None and o.bgp_as is None
    o = parser().parse_args([*REQUIRED, "--gateway", "--external-interface", "external:eth1", "--external-interface",
                             "phys2:eth2", "--bgp-as", "65001", "--bgp-peer", "192.0.2.9:65000", "--bfd",
                             "--resync", "2.5", "--dhcp-lease-time", "600", "--control-socket", ""])
    assert o.gateway and o.bfd and o.bgp_as == 65001 and o.bgp_peer == ["192.0.2.9:65000"]
    assert o.external_interface == ["external:eth1", "phys2:eth2"] and o.resync == 2.5 and o.dhcp_lease_time == 600
    assert o.control_socket == ""
    assert parser().parse_args([*REQUIRED, "--gateway", "--no-gateway"]).gateway is False


def test_credentials_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VXNET_AGENT_USER", "u1")
    monkeypatch.setenv("VXNET_AGENT_PASSWORD", "pw1")
    monkeypatch.setenv("VXNET_AGENT_PROJECT", "proj1")
    o = parser().parse_args(REQUIRED)
    assert (o.user, o.password, o.project) == ("u1", "pw1", "proj1")
    assert parser().parse_args([*REQUIRED, "--user", "u2"]).user == "u2"     # the option wins


@pytest.mark.parametrize("args", [REQUIRED[2:], [*REQUIRED, "--resync", "soon"], [*REQUIRED, "--bogus"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parser().parse_args(args)
    assert e.value.code == 2


def _vxnet(entry: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", entry, *args], capture_output=True, text=True, timeout=60,
                          check=False, env={**os.environ, "COLUMNS": "200"})


@pytest.mark.parametrize("entry", ["import sys; sys.argv[0] = 'vxnet'; from vxnet.cli.main import main; main()",
                                   "from vxnet.cli.app import app; app()"])
def test_help_and_checks_through_both_entry_points(entry: str) -> None:
    r = _vxnet(entry, "agent", "--help")
    assert r.returncode == 0 and "usage: vxnet agent" in r.stdout and "--underlay-ip" in r.stdout, r.stderr
    # a check of the agent's own (after parsing): BGP without --gateway, exit 2, nothing started
    r = _vxnet(entry, "agent", *REQUIRED, "--bgp-as", "65001")
    assert r.returncode == 2 and "BGP needs --gateway" in r.stderr, (r.stdout, r.stderr)
    r = _vxnet(entry, "agent", *REQUIRED, "--gateway", "--external-interface", "p1:eth1", "--external-interface", "p2:eth1")
    assert r.returncode == 2 and "--external-interface: interface eth1 given twice" in r.stderr, (r.stdout, r.stderr)


def test_an_agent_without_a_password_exits_before_connecting() -> None:
    """No built-in service password: one shipped in the code is a credential every reader of
    the source knows. Without VXNET_AGENT_PASSWORD or --password the agent exits 2, naming it."""
    env = {k: v for k, v in os.environ.items() if k != "VXNET_AGENT_PASSWORD"}
    r = subprocess.run([sys.executable, "-c", "from vxnet.cli.app import app; app()", "agent", *REQUIRED,
                        "--control-socket", ""], capture_output=True, text=True, timeout=60, check=False, env=env)
    assert r.returncode == 2 and "set VXNET_AGENT_PASSWORD" in r.stderr, (r.stdout, r.stderr)


def test_vxnet_help_lists_agent() -> None:
    r = _vxnet("import sys; sys.argv[0] = 'vxnet'; from vxnet.cli.main import main; main()", "--help")
    assert r.returncode == 0 and " agent " in r.stdout, r.stdout
