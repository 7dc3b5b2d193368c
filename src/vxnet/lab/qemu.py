"""QEMU guests of the lab: real VMs whose virtio-net NIC is a tap named like Nova's.

`start()` runs `qemu-system-x86_64` inside the host's network namespace (nsenter --net, so the
tap `tap<port id[:11]>` that QEMU creates appears there, where the agent plugs it like any other
tap), with the port's MAC, the guest image of lab/image.py, the console written to a file and a
virtio-serial port `vxnet.ctl` on a unix socket for `exec()`. KVM is used only when a short probe
boot under it succeeds (on some machines `-enable-kvm` spins in the host kernel); else TCG.

The command channel: the client connects to the unix socket (QEMU serves one client at a time,
so concurrent callers queue) and sends `ID BASE64(script)\\n`; the guest runs the script with
`sh` (stderr joined to stdout) and answers `BEGIN ID`, the output in base64 lines, `END ID RC`.
Answers with another ID (left over from a caller that gave up) are skipped.

Processes are tracked by PID with a marker in their command line (`guest=vxnet-<name>`), like
the lab's agents; `stop()` kills only such a PID. The tap vanishes with the QEMU process, the disk
of the cloud-init guest is opened with `snapshot=on` (a deleted temporary overlay), and nothing is
mounted on this machine.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time

from vxnet.lab import image

QEMU = "qemu-system-x86_64"
PROBE_TIMEOUT = 8.0


class GuestError(Exception):
    """A QEMU guest operation failed (message for the user)."""


def marker(name: str) -> str:
    return f"guest=vxnet-{name} "


def _proc_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int, name: str) -> bool:
    """PID is still our QEMU process of guest `name` (and not a zombie)."""
    if marker(name) not in _proc_cmdline(pid):
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _base_cmd(name: str, accel: str, memory: int) -> list[str]:
    cmd = [QEMU, "-name", f"guest=vxnet-{name}", "-nodefaults", "-no-user-config", "-display", "none",
           "-no-reboot", "-m", str(memory), "-smp", "1", "-kernel", image.kernel_path(), "-initrd", image.initrd_path()]
    if accel == "kvm":
        cmd += ["-accel", "kvm", "-cpu", "host"]
    else:
        cmd += ["-accel", "tcg"]
    return cmd


def _probe_kvm() -> bool:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    cmd = [*_base_cmd("kvm-probe", "kvm", 128), "-serial", "stdio", "-append", "console=ttyS0 panic=-1 quiet"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    ok = False
    try:
        deadline = time.monotonic() + PROBE_TIMEOUT
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(p.stdout, selectors.EVENT_READ)   # type: ignore[arg-type]
        buf = b""
        while time.monotonic() < deadline and not ok:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            chunk = os.read(p.stdout.fileno(), 4096)   # type: ignore[union-attr]
            if not chunk:
                break
            buf += chunk
            ok = b"vxnet-guest: modules loaded" in buf
        sel.close()
    finally:
        p.kill()
        p.wait()
        p.stdout.close()   # type: ignore[union-attr]
    return ok


def accelerator() -> str:
    """`kvm` if a probe boot under KVM reaches our /init, else `tcg` (cached per machine boot;
    `VXNET_QEMU_ACCEL=tcg|kvm` overrides)."""
    forced = os.environ.get("VXNET_QEMU_ACCEL")
    if forced in ("tcg", "kvm"):
        return forced
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    cache = os.path.join(image.cache_dir(), "accel")
    try:
        with open(cache) as f:
            b, acc = f.read().split()
            if b == boot:
                return acc
    except (OSError, ValueError):
        pass
    acc = "kvm" if _probe_kvm() else "tcg"
    try:
        with open(cache, "w") as f:
            f.write(f"{boot} {acc}\n")
    except OSError:
        pass
    return acc


def paths(state_dir: str, name: str) -> dict[str, str]:
    return {"console": os.path.join(state_dir, f"vm-{name}.console"),
            "ctl": os.path.join(state_dir, f"vm-{name}.ctl"),
            "log": os.path.join(state_dir, f"vm-{name}.qemu.log")}


def start(name: str, state_dir: str, host_netns: str, tap: str, mac: str, mtu: int, cloud: bool = False,
          memory: int | None = None) -> dict[str, object]:
    """Boot guest `name` with its NIC on `tap` in `host_netns`; returns what the lab records."""
    if shutil.which(QEMU) is None:
        raise GuestError(f"{QEMU} is not installed (package qemu-system-x86; make setup)")
    if not image.ready(cloud=cloud):
        try:
            image.build(cloud=cloud)   # first use: built from Debian packages, then cached
        except image.ImageError as e:
            raise GuestError(str(e)) from None
    accel = accelerator()
    p = paths(state_dir, name)
    for f in (p["console"], p["ctl"]):
        if os.path.exists(f):
            os.unlink(f)
    append = "console=ttyS0 panic=-1 quiet"
    cmd = _base_cmd(name, accel, memory or (256 if cloud else 128))
    if cloud:
        append += " vxnet.root=/dev/vda"
        cmd += ["-drive", f"file={image.cloud_image_path()},if=virtio,format=raw,snapshot=on",
                # What Nova's libvirt driver sets: cloud-init's OpenStack datasource looks for it.
                "-smbios", "type=1,manufacturer=OpenStack Foundation,product=OpenStack Nova"]
    cmd += ["-append", append, "-serial", f"file:{p['console']}",
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={mac}",
            "-device", "virtio-serial-pci,id=vs0",
            "-chardev", f"socket,id=ctl,path={p['ctl']},server=on,wait=off",
            "-device", "virtserialport,bus=vs0.0,chardev=ctl,name=vxnet.ctl"]
    with open(p["log"], "ab") as logf:
        proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{host_netns}", *cmd], stdout=logf,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    # The tap exists once QEMU has opened it; up (as libvirt leaves it) with the network's MTU.
    deadline = time.monotonic() + 20
    while True:
        r = subprocess.run(["ip", "-n", host_netns, "link", "set", tap, "mtu", str(mtu), "up"],
                           capture_output=True, text=True, check=False)
        if r.returncode == 0:
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc.pid, name)
            with open(p["log"], errors="replace") as f:
                raise GuestError(f"QEMU for {name} did not create {tap}: {f.read()[-1500:]}")
        time.sleep(0.02)
    return {"pid": proc.pid, "accel": accel, "cloud": cloud, **p}


def stop(pid: int, name: str, wait: float = 5.0) -> None:
    """Kill our QEMU process `pid` (only if it still is guest `name`'s) and reap it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not alive(pid, name):
            break
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and alive(pid, name):
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.02)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def cleanup_files(state_dir: str, name: str) -> None:
    for f in paths(state_dir, name).values():
        if os.path.exists(f) and not f.endswith(".console"):
            os.unlink(f)


def exec_(ctl: str, script: str, timeout: float = 60.0) -> tuple[int, bytes]:
    """Run `script` with the guest's sh; returns (exit code, stdout+stderr)."""
    rid = secrets.token_hex(6)
    deadline = time.monotonic() + timeout
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        while True:
            try:
                s.connect(ctl)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise GuestError(f"no command channel at {ctl}") from None
                time.sleep(0.1)
        s.sendall(f"{rid} {base64.b64encode(script.encode()).decode()}\n".encode())
        buf, out, inside = b"", [], False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise GuestError(f"guest command timed out after {timeout:.0f} s")
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise GuestError("the guest's command channel closed")
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                line = line.strip()
                if line == f"BEGIN {rid}".encode():
                    inside, out = True, []
                elif inside and line.startswith(f"END {rid} ".encode()):
                    return int(line.split()[2]), base64.b64decode(b"".join(out))
                elif inside:
                    out.append(line)
    finally:
        s.close()


def wait_console(console: str, text: str, timeout: float) -> str:
    """Wait until the console log contains `text`; returns the log."""
    deadline = time.monotonic() + timeout
    log = ""
    while time.monotonic() < deadline:
        try:
            with open(console, errors="replace") as f:
                log = f.read()
        except FileNotFoundError:
            log = ""
        if text in log:
            return log
        time.sleep(0.05)
    raise GuestError(f"{text!r} not on the console after {timeout:.0f} s; console:\n{log[-2000:]}")
