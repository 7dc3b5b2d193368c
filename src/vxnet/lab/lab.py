"""The lab: state directory, server and agent processes, VMs. Used by `vxnet lab ...` and tests.

State lives in `state_dir()/state.json` (default /run/vxnet-lab, `VXNET_LAB_DIR` overrides):
the processes the lab started (by PID, with their command line to recognise them), the server
URLs, the admin credentials from the config, and the VMs (namespaces, or QEMU guests with their
QEMU PID: lab/qemu.py, recorded before QEMU starts). `down()` kills only those PIDs (after
checking their command line; QEMU guests first), then removes every namespace and link with the lab prefix, so
it also cleans up after a crash that lost the state file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import httpx

from vxnet.compute import naming
from vxnet.config import load_config
from vxnet.httptls import verify_for
from vxnet.lab import nova_metadata, topology
from vxnet.store.secure_files import write_private


class LabError(Exception):
    """A lab operation cannot be done (message for the user)."""


def state_dir() -> str:
    return os.environ.get("VXNET_LAB_DIR", "/run/vxnet-lab")


def _state_path() -> str:
    return os.path.join(state_dir(), "state.json")


def load_state() -> dict[str, Any]:
    try:
        with open(_state_path()) as f:
            return json.load(f)
    except FileNotFoundError:
        raise LabError(f"no lab is running (no state in {state_dir()})") from None


def save_state(st: dict[str, Any]) -> None:
    os.makedirs(state_dir(), exist_ok=True)
    tmp = _state_path() + ".tmp"
    write_private(tmp, json.dumps(st, indent=1))  # holds the admin's password: 0600
    os.replace(tmp, _state_path())


def _python_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from vxnet.cli.main import main; sys.argv[0] = 'vxnet'; main()", *args]


def _spawn(cmd: list[str], log_name: str) -> int:
    with open(os.path.join(state_dir(), log_name), "ab") as logf:
        p = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
    return p.pid


def _alive(pid: int, marker: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except OSError:
        return False
    return marker in cmd


def _kill(pid: int, marker: str, sig: int = signal.SIGTERM, wait: float = 5.0) -> None:
    """Signal our own process `pid` (only if its command line still carries `marker`)."""
    _kill_all([(pid, marker)], sig, wait)


def _kill_all(procs: list[tuple[int, str]], sig: int = signal.SIGTERM, wait: float = 5.0) -> None:
    """Signal each of our own processes (PID, marker) whose command line still carries its marker,
    all at once, then wait up to `wait` s for them together (SIGKILL to any still alive)."""
    signalled = []
    for pid, marker in procs:
        if not _alive(pid, marker):
            continue
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            continue
        signalled.append((pid, marker))
    deadline = time.time() + wait
    while time.time() < deadline and any(_alive(pid, marker) for pid, marker in signalled):
        time.sleep(0.02)
    for pid, marker in signalled:
        if _alive(pid, marker):
            os.kill(pid, signal.SIGKILL)
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def _wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url + "/", timeout=1, verify=verify_for(url)).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise LabError(f"server at {url} did not come up")


def token(st: dict[str, Any], url: str | None = None) -> str:
    """An admin token from the lab's server."""
    adm = st["admin"]
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": adm["name"], "domain": {"id": "default"}, "password": adm["password"]}}},
        "scope": {"project": {"name": adm["project"], "domain": {"id": "default"}}}}}
    r = httpx.post((url or st["url"]) + "/identity/v3/auth/tokens", json=body, timeout=10, verify=verify_for(url or st["url"]))
    if r.status_code != 201:
        raise LabError(f"cannot log in as {adm['name']}: {r.status_code} {r.text}")
    return r.headers["X-Subject-Token"]


def up(hosts: int, config: str, server: str | None = None, agent_args: list[str] | None = None,
       gateways: int = 0, external: bool = False, external2: bool = False, bgp: bool = False) -> dict[str, Any]:
    """Build the lab and start server (unless `server` is given) and agents; returns the state.

    `gateways` extra hosts (h<hosts+1>..) run their agents with `--gateway`; with `external`,
    they also get an external interface on the external segment (topology.build_external);
    with `external2` too, a second one on a second segment (physical network `external2`); with
    `bgp` too, the outside runs an upstream BGP router the gateway agents peer with (lab/bgp.py)."""
    if os.path.exists(_state_path()):
        try:
            st = load_state()
        except (LabError, ValueError):
            st = {}
        if st and _alive(st.get("server_pid") or -1, "vxnet.lab.server") or any(
                _alive(p, "agent") for p in (st.get("agents") or {}).values()):
            raise LabError(f"a lab is already up (state in {state_dir()}); run `vxnet lab down` first")
    down(quiet=True)
    cfg = load_config(config)
    admins = [u for u in cfg.users if "admin" in u.roles]
    agents_users = [u for u in cfg.users if "service" in u.roles] or admins
    if not admins:
        raise LabError(f"{config} defines no user with the admin role")
    os.makedirs(state_dir(), exist_ok=True)
    gw_hosts = [topology.host_name(i) for i in range(hosts + 1, hosts + gateways + 1)]
    st: dict[str, Any] = {"hosts": hosts + gateways, "gateways": gw_hosts, "external": external,
                          "external2": external and external2, "bgp": external and bgp, "config": os.path.abspath(config), "agents": {}, "vms": {},
                          "admin": {"name": admins[0].name, "password": admins[0].password,
                                    "project": admins[0].project},
                          "agent_user": {"name": agents_users[0].name, "password": agents_users[0].password,
                                         "project": agents_users[0].project},
                          "agent_args": agent_args or []}
    save_state(st)
    topology.build_underlay(hosts + gateways)
    if external:
        topology.build_external(range(hosts + 1, hosts + gateways + 1))
        if external2:
            topology.build_external(range(hosts + 1, hosts + gateways + 1), 1)
        if bgp:
            from vxnet.lab import bgp as lab_bgp

            st["bgp_pid"] = lab_bgp.start_upstream(state_dir())
            save_state(st)
    lhost, _, lport = cfg.listen.rpartition(":")
    if server:
        # One or several equivalent servers (comma-separated; agents fail over between them).
        st["urls"] = [u.strip().rstrip("/") for u in server.split(",") if u.strip()]
        st["url"] = st["urls"][0]
        mgmt_urls = []
        for u in st["urls"]:
            mgmt = httpx.URL(u)
            host_part = mgmt.host
            if host_part in ("127.0.0.1", "localhost", "::1"):
                host_part = topology.MGMT_SERVER_IP   # the server must listen on 0.0.0.0 or on this address
            mgmt_urls.append(str(mgmt.copy_with(host=host_part)).rstrip("/"))
        st["mgmt_url"] = ",".join(mgmt_urls)
        st["server_pid"] = None
    else:
        listen_local = f"{lhost or '127.0.0.1'}:{lport}"
        listen_mgmt = f"{topology.MGMT_SERVER_IP}:{lport}"
        args = ["--config", os.path.abspath(config), "--listen", listen_local, "--listen", listen_mgmt]
        if not cfg.store:
            args += ["--store", "sqlite:///" + os.path.join(state_dir(), "vxnet.db")]
        st["server_args"] = args
        st["url"] = f"http://{lhost or '127.0.0.1'}:{lport}"
        st["mgmt_url"] = f"http://{listen_mgmt}"
        start_server(st, wait=False)  # starts while the Nova metadata endpoint does (~0.4 s)
    nova_metadata.prepare(st, state_dir(), topology.MGMT_SERVER_IP)
    start_nova_metadata(st)
    if st["server_pid"]:
        _wait_http(st["url"])
    save_state(st)
    for i in range(1, hosts + gateways + 1):
        start_agent(st, topology.host_name(i))
    save_state(st)
    return st


def start_server(st: dict[str, Any], wait: bool = True) -> int:
    """Start the lab's own server (again) and (unless not `wait`) wait until it answers."""
    if not st.get("server_args"):
        raise LabError("this lab uses an external server")
    st["server_pid"] = _spawn([sys.executable, "-m", "vxnet.lab.server", *st["server_args"]], "server.log")
    save_state(st)
    if wait:
        _wait_http(st["url"])
    return st["server_pid"]


def start_nova_metadata(st: dict[str, Any]) -> int:
    """Start the lab's Nova metadata endpoint (again; lab/nova_metadata.py) and wait until it answers."""
    st["nova_metadata"]["pid"] = _spawn(nova_metadata.command(st, state_dir()), "nova-metadata.log")
    save_state(st)
    _wait_http(st["nova_metadata"]["url"])
    return int(st["nova_metadata"]["pid"])


def stop_nova_metadata(st: dict[str, Any], sig: int = signal.SIGTERM) -> None:
    """Stop the lab's Nova metadata endpoint (by its PID)."""
    pid = (st.get("nova_metadata") or {}).get("pid")
    if pid:
        _kill(pid, nova_metadata.MARKER, sig)


def stop_server(st: dict[str, Any], sig: int = signal.SIGTERM) -> None:
    """Stop the lab's own server (agents keep the data plane as it is)."""
    if st.get("server_pid"):
        _kill(st["server_pid"], "vxnet.lab.server", sig)


def _host_index(st: dict[str, Any], host: str) -> int:
    if not host.startswith("h") or not host[1:].isdigit() or not 1 <= int(host[1:]) <= st["hosts"]:
        raise LabError(f"unknown host {host!r} (this lab has h1..h{st['hosts']})")
    return int(host[1:])


def control_socket(host: str) -> str:
    """Where the lab's agent of `host` serves `vxnet doctor --local` (agent/control.py)."""
    return os.path.join(state_dir(), f"agent-{host}.sock")


def bfd_dir(host: str) -> str:
    """Where a lab host's bfdd keeps its sockets (`--bfd`): traversable by FRR's user, unlike a
    test's private state directory; `tools/sandbox` gives every sandbox its own."""
    return f"/run/vxnet-lab/bfd-{host}"


def start_agent(st: dict[str, Any], host: str) -> int:
    """Start (or restart) the agent of `host` inside its namespace."""
    i = _host_index(st, host)
    u = st["agent_user"]
    gw_args = []
    if host in st.get("gateways", ()):
        gw_args = ["--gateway"] + topology.external_args(bool(st.get("external")), bool(st.get("external2")))
        if st.get("bgp"):
            from vxnet.lab import bgp as lab_bgp

            gw_args += lab_bgp.gateway_args(state_dir(), host)
    # nsenter --net, not `ip netns exec`: the latter gives the agent a slave mount namespace, so
    # namespaces the agent creates (router, DHCP...) would be mounted only inside it: invisible
    # to everyone else and destroyed with the agent process (routing broken by a restart).
    cmd = ["nsenter", f"--net=/run/netns/{topology.host_ns(i)}", *_python_cmd(
        "agent", "--server", st["mgmt_url"], "--host", host, "--underlay-ip", topology.underlay_ip(i),
        "--user", u["name"], "--password", u["password"], "--project", u["project"], *gw_args,
        "--control-socket", control_socket(host), *nova_metadata.agent_args(st, state_dir()),
        *st.get("agent_args", []))]
    if "--bfd" in st.get("agent_args", []):
        cmd += ["--bfd-dir", bfd_dir(host)]
    pid = _spawn(cmd, f"agent-{host}.log")
    st["agents"][host] = pid
    save_state(st)
    return pid


def stop_agent(st: dict[str, Any], host: str, sig: int = signal.SIGTERM) -> None:
    """Stop the agent of `host` (SIGKILL = a crash: nothing is cleaned up)."""
    _host_index(st, host)
    pid = st["agents"].get(host)
    if pid:
        _kill(pid, "agent", sig)


def _api(st: dict[str, Any]) -> httpx.Client:
    """An admin client of the first of the lab's servers that answers."""
    urls = st.get("urls") or [st["url"]]
    for url in urls[:-1]:
        try:
            return httpx.Client(base_url=url + "/v2.0", headers={"X-Auth-Token": token(st, url)}, timeout=10,
                                verify=verify_for(url))
        except httpx.TransportError:
            continue
    return httpx.Client(base_url=urls[-1] + "/v2.0", headers={"X-Auth-Token": token(st, urls[-1])}, timeout=10,
                        verify=verify_for(urls[-1]))


def vm_add(name: str, host: str, port_id: str, bind: bool = True, hostname: str | None = None,
           user_data: bytes | None = None, ssh_key: str | None = None, qemu: bool = False,
           cloud: bool = False) -> dict[str, Any]:
    """A VM plugged like Nova would (tap named after the port), then the port bound (device_id =
    the VM's instance id at the lab's Nova metadata endpoint, which serves its hostname, user
    data and SSH key).

    By default the VM is a namespace whose eth0 has the port's address; with `qemu`, a real
    guest (lab/qemu.py) on a tap that QEMU creates, taking its address by DHCP; `cloud` boots the
    Debian cloud-init image instead of the busybox one."""
    st = load_state()
    i = _host_index(st, host)
    if name in st["vms"] or os.path.exists(f"/run/netns/{topology.vm_ns(name)}"):
        raise LabError(f"VM {name} exists")
    if len(topology.vm_ns(name)) > 64 or not name.replace("-", "").isalnum():
        raise LabError("VM names are letters, digits and '-'")
    with _api(st) as api:
        r = api.get(f"/ports/{port_id}")
        if r.status_code != 200:
            raise LabError(f"port {port_id}: {r.status_code} {r.text}")
        port = r.json()["port"]
        net = api.get(f"/networks/{port['network_id']}").json()["network"]
        if qemu or cloud:
            return _qemu_vm_add(st, name, host, i, port, int(net.get("mtu") or 1450), bind, cloud,
                                (hostname, user_data, ssh_key), api)
        cidr_ip, gateway = None, None
        for fip in port.get("fixed_ips") or ():
            sub = api.get(f"/subnets/{fip['subnet_id']}").json().get("subnet") or {}
            if sub.get("ip_version") == 4:
                cidr_ip = f"{fip['ip_address']}/{sub['cidr'].split('/')[1]}"
                gateway = sub.get("gateway_ip")
                break
        topology.add_vm(name, topology.host_ns(i), naming.tap_name(port_id), port["mac_address"], cidr_ip,
                        int(net.get("mtu") or 1450), gateway=gateway)
        st["vms"][name] = {"host": host, "port": port_id, "ip": cidr_ip, "gateway": gateway}
        if st.get("nova_metadata"):
            st["vms"][name]["instance_id"] = nova_metadata.register(
                state_dir(), name, port, cidr_ip, int(net.get("mtu") or 1450), hostname, user_data, ssh_key)
        save_state(st)
        if bind:
            bind_port(st, port_id, host, api, st["vms"][name].get("instance_id"))
    return st["vms"][name]


def _qemu_vm_add(st: dict[str, Any], name: str, host: str, i: int, port: dict[str, Any], mtu: int, bind: bool,
                 cloud: bool, meta: tuple[str | None, bytes | None, str | None], api: httpx.Client) -> dict[str, Any]:
    from vxnet.lab import qemu

    ips = [f["ip_address"] for f in port.get("fixed_ips") or () if ":" not in f["ip_address"]]
    vm: dict[str, Any] = {"host": host, "port": port["id"], "ip": ips[0] if ips else None, "gateway": None,
                          "qemu": {"cloud": cloud}}
    st["vms"][name] = vm   # recorded before the process exists: `lab down` after a crash finds it
    if st.get("nova_metadata"):
        vm["instance_id"] = nova_metadata.register(state_dir(), name, port, vm["ip"], mtu, *meta)
    save_state(st)
    try:
        vm["qemu"] = qemu.start(name, state_dir(), topology.host_ns(i), naming.tap_name(port["id"]),
                                port["mac_address"], mtu, cloud=cloud)
    except qemu.GuestError as e:
        st["vms"].pop(name, None)
        if st.get("nova_metadata"):
            nova_metadata.unregister(state_dir(), name)
        save_state(st)
        raise LabError(str(e)) from None
    save_state(st)
    if bind:
        bind_port(st, port["id"], host, api, vm.get("instance_id"))
    return vm


def _qemu_stop(name: str, vm: dict[str, Any]) -> None:
    from vxnet.lab import qemu

    q = vm.get("qemu") or {}
    if q.get("pid"):
        qemu.stop(int(q["pid"]), name)
    qemu.cleanup_files(state_dir(), name)


def vm_console(name: str) -> str:
    """The console log of QEMU guest `name`."""
    vm = load_state()["vms"].get(name)
    if vm is None:
        raise LabError(f"no VM {name}")
    if not vm.get("qemu"):
        raise LabError(f"{name} is a namespace VM: it has no console")
    try:
        with open(vm["qemu"]["console"], errors="replace") as f:
            return f.read()
    except (KeyError, FileNotFoundError):
        return ""


def bind_port(st: dict[str, Any], port_id: str, host: str, api: httpx.Client | None = None,
              device_id: str | None = None) -> None:
    """Set binding:host_id (what Nova does when it starts or migrates a VM), and the instance id."""
    own = api is None
    api = api or _api(st)
    body = {"binding:host_id": host, "device_owner": "compute:nova", **({"device_id": device_id} if device_id else {})}
    try:
        r = api.put(f"/ports/{port_id}", json={"port": body})
        if r.status_code != 200:
            raise LabError(f"binding port {port_id} to {host}: {r.status_code} {r.text}")
    finally:
        if own:
            api.close()


def vm_migrate(name: str, host: str) -> None:
    """Move VM `name` to `host`: its tap moves (VM downtime), then the port binding follows."""
    st = load_state()
    vm = st["vms"].get(name)
    if vm is None:
        raise LabError(f"no VM {name}")
    if vm.get("qemu"):
        raise LabError(f"{name} is a QEMU guest: the lab migrates namespace VMs only")
    new, old = _host_index(st, host), _host_index(st, vm["host"])
    with _api(st) as api:
        port = api.get(f"/ports/{vm['port']}").json()["port"]
        net = api.get(f"/networks/{port['network_id']}").json()["network"]
        topology.move_vm(name, topology.host_ns(old), topology.host_ns(new), naming.tap_name(vm["port"]),
                         port["mac_address"], vm["ip"], int(net.get("mtu") or 1450))
        bind_port(st, vm["port"], host, api)
    vm["host"] = host
    save_state(st)


def vm_del(name: str) -> None:
    st = load_state()
    vm = st["vms"].pop(name, None)
    if st.get("nova_metadata"):
        nova_metadata.unregister(state_dir(), name)
    if vm and vm.get("qemu"):
        _qemu_stop(name, vm)   # its tap goes with the process
    else:
        topology.del_vm(name)
    save_state(st)


def vm_exec(name: str, cmd: list[str], timeout: float = 120.0) -> int:
    """Run `cmd` in VM `name` (its output goes to our stdout); returns its exit code.

    In a QEMU guest the words are joined into one shell command line (quoted) for the guest's
    `sh`, over the command channel; stderr comes back joined to stdout."""
    try:
        vm = load_state()["vms"].get(name) or {}
    except LabError:
        vm = {}
    if vm.get("qemu"):
        import shlex

        from vxnet.lab import qemu

        try:
            rc, out = qemu.exec_(vm["qemu"]["ctl"], cmd[0] if len(cmd) == 1 else shlex.join(cmd), timeout)
        except (qemu.GuestError, KeyError) as e:
            raise LabError(f"{name}: {e}") from None
        sys.stdout.buffer.write(out)
        sys.stdout.flush()
        return rc
    if not os.path.exists(f"/run/netns/{topology.vm_ns(name)}"):
        raise LabError(f"no VM {name}")
    return subprocess.call(["ip", "netns", "exec", topology.vm_ns(name), *cmd])


def _remove_router_namespaces() -> None:
    """Router namespaces the lab's agents made (`vxr-<router>-h<i>`, docs/routing.md): agents
    keep kernel state when they stop, so the lab removes them (they are not `vxl`-prefixed)."""
    import re

    r = topology.sh(["ip", "netns", "list"], check=False)
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if re.fullmatch(r"vx[rs]-[0-9a-f-]{11}-h\d+", name) or re.fullmatch(r"vxm-h\d+", name):
            # vxs-: gateway (SNAT) namespaces; vxm-: metadata namespaces
            # their daemons (conntrackd, agent --bfd) first: a process keeps a deleted namespace alive
            pids = topology.sh(["ip", "netns", "pids", name], check=False).stdout.split()
            for pid in pids:
                if pid.isdigit() and _alive(int(pid), "conntrackd"):
                    _kill(int(pid), "conntrackd", signal.SIGKILL)
            topology.sh(["ip", "netns", "del", name], check=False)


def down(quiet: bool = False) -> None:
    """Stop our processes and remove everything with the lab prefix (also after a crash)."""
    try:
        st = load_state()
    except (LabError, ValueError):
        st = {}
    for name, vm in (st.get("vms") or {}).items():
        if vm.get("qemu"):
            _qemu_stop(name, vm)
    procs = [(pid, "agent") for pid in (st.get("agents") or {}).values()]
    if st.get("server_pid"):
        procs.append((st["server_pid"], "vxnet.lab.server"))
    if (st.get("nova_metadata") or {}).get("pid"):
        procs.append((st["nova_metadata"]["pid"], nova_metadata.MARKER))
    if st.get("bgp_pid"):
        procs.append((st["bgp_pid"], "bgpd"))
    _kill_all(procs)  # together: each takes ~0.2-0.4 s to exit
    topology.teardown()
    _remove_router_namespaces()
    if os.path.exists(_state_path()):
        os.unlink(_state_path())
    if not quiet:
        shutil.rmtree(state_dir(), ignore_errors=True)
