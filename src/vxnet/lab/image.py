"""Guest images for the lab's QEMU guests, built from Debian packages only and cached.

`build()` makes, once, under `cache_dir()` (default /var/cache/vxnet/guest, `VXNET_GUEST_CACHE`
overrides):
- `vmlinuz`: the kernel of one exact Debian cloud kernel package (`linux-image-<abi>-cloud-amd64`,
  the version the `linux-image-cloud-amd64` meta package depends on, fetched with `apt-get
  download`);
- `initrd.gz`: a busybox-static initramfs (busybox from the `busybox-static` package, fetched the
  same way and only unpacked: it conflicts with the installed `busybox`) whose `/init` loads the
  virtio modules of that kernel, runs a command channel on the virtio-serial port `vxnet.ctl`
  (see lab/qemu.py for the protocol), brings eth0 up and runs busybox `udhcpc` (a real DHCP
  client). After the lease it asks the metadata service (169.254.169.254) for its hostname and
  runs a `#!` user-data script, both if answered. Every step is logged on the console
  (`vxnet-guest: ...`), which the lab and the benchmark read.
- with `cloud=True`, also `debian-cloud.ext4`: a Debian root file system with the real
  `cloud-init` (mmdebstrap from Debian's mirror, written into an ext4 image with `mke2fs -d`, so
  nothing is ever mounted on this machine). The same initramfs boots it when the kernel command
  line says `vxnet.root=/dev/vda`: it mounts the disk, copies the lab's pieces into it (channel,
  udhcpc script, `/sbin/vxnet-init`, the cloud-init configuration: the disk itself holds only
  Debian's packages, so a changed recipe does not rebuild it), and switches to `/sbin/vxnet-init`
  (networking by udhcpc, then `cloud-init init` and `cloud-init modules`, then the channel).

The build is idempotent: a `stamp` file with the inputs' versions marks a finished image, and
everything is written to a temporary directory first and moved into place at the end.
Run `python -m vxnet.lab.image [--cloud]` to build (the Makefile does it for `make test`/`demo`).
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

KERNEL_META = "linux-image-cloud-amd64"
BUSYBOX_PKG = "busybox-static"
# Loaded by /init with their dependencies: the NIC, the control channel, the disk (ext4: built in
# in the cloud kernel).
MODULES = ["virtio_pci", "virtio_net", "virtio_console", "virtio_blk", "ext4"]
CLOUD_PACKAGES = ["cloud-init", "busybox", "iproute2", "ifupdown", "isc-dhcp-client", "sudo", "openssh-client",
                  "ca-certificates"]
CLOUD_IMAGE_MB = 1024


class ImageError(Exception):
    """The guest image cannot be built (message for the user)."""


def cache_dir() -> str:
    return os.environ.get("VXNET_GUEST_CACHE", "/var/cache/vxnet/guest")


def kernel_path() -> str:
    return os.path.join(cache_dir(), "vmlinuz")


def initrd_path() -> str:
    return os.path.join(cache_dir(), "initrd.gz")


def cloud_image_path() -> str:
    return os.path.join(cache_dir(), "debian-cloud.ext4")


def _run(cmd: list[str], cwd: str | None = None) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise ImageError(f"{' '.join(cmd)}: {r.stderr.strip()[-2000:]}")
    return r.stdout


def kernel_package() -> str:
    """The one exact kernel package the cloud meta package points at (never a glob)."""
    out = _run(["apt-cache", "depends", KERNEL_META])
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends:") and "linux-image-" in line:
            return line.split()[1]
    raise ImageError(f"apt-cache: {KERNEL_META} depends on no kernel package (apt-get update?)")


def _candidate(pkg: str) -> str:
    out = _run(["apt-cache", "policy", pkg])
    for line in out.splitlines():
        if line.strip().startswith("Candidate:"):
            v = line.split(":", 1)[1].strip()
            if v and v != "(none)":
                return v
    raise ImageError(f"apt-cache: no candidate version of {pkg}")


def _download(pkgs: list[str], dest: str) -> list[str]:
    _run(["apt-get", "download", "-q", *pkgs], cwd=dest)
    debs = sorted(glob.glob(os.path.join(dest, "*.deb")))
    if len(debs) != len(pkgs):
        raise ImageError(f"apt-get download gave {debs} for {pkgs}")
    return debs


INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mkdir -p /proc /sys /dev /tmp /run /etc /newroot
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
log() { echo "vxnet-guest: $* (uptime $(cut -d' ' -f1 /proc/uptime))" > /dev/console; }
for m in __MODULES__; do [ -f /lib/modules/$m.ko ] && { insmod /lib/modules/$m.ko || log "insmod $m failed"; }; done
log "modules loaded"
arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^$1=//p" | tail -1; }
root=$(arg vxnet.root)
if [ -n "$root" ]; then
  i=0; while [ ! -b "$root" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  mount -t ext4 "$root" /newroot || { log "cannot mount $root"; exec sh; }
  # The lab's own pieces come from this initramfs (the disk holds Debian's packages only).
  mkdir -p /newroot/usr/local/bin /newroot/etc/cloud/cloud.cfg.d
  cp /bin/vxnet-ctl /bin/udhcpc-script /newroot/usr/local/bin/
  cp /bin/vxnet-cloud-init /newroot/sbin/vxnet-init
  cp /etc/90-vxnet-lab.cfg /newroot/etc/cloud/cloud.cfg.d/
  log "switching to $root"
  mount --move /dev /newroot/dev; umount /proc /sys
  exec switch_root /newroot /sbin/vxnet-init
fi
hostname guest
/bin/vxnet-ctl &
ip link set lo up
ip link set eth0 up
log "eth0 up"
udhcpc -f -i eth0 -s /bin/udhcpc-script -t 60 -T 1 -A 1 -O staticroutes -x hostname:guest > /dev/console 2>&1 &
i=0; while [ ! -f /run/lease ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
# busybox-static's wget crashes (static glibc): plain HTTP/1.0 over nc.
md_get() {
  printf 'GET /openstack/latest/%s HTTP/1.0\r\nHost: 169.254.169.254\r\n\r\n' "$1" | nc -w 3 169.254.169.254 80 > /tmp/md.raw 2>/dev/null
  head -1 /tmp/md.raw | grep -q ' 200 ' && tr -d '\r' < /tmp/md.raw | sed '1,/^$/d'
}
j=$(md_get meta_data.json)
h=$(echo "$j" | sed -n 's/.*"hostname": *"\([^"]*\)".*/\1/p' | cut -d. -f1)
[ -n "$h" ] && hostname "$h" && log "hostname $h from metadata"
if md_get user_data > /tmp/user-data && [ "$(head -c 2 /tmp/user-data)" = "#!" ]; then
  chmod +x /tmp/user-data; /tmp/user-data > /tmp/user-data.log 2>&1; log "user-data ran: $?"
fi
log "ready"
while true; do sleep 3600; done
"""

# busybox udhcpc calls this with $1 = deconfig|bound|renew|nak and the lease in the environment.
UDHCPC_SCRIPT = r"""#!/bin/sh
log() { echo "vxnet-guest: $* (uptime $(cut -d' ' -f1 /proc/uptime))" > /dev/console; }
case "$1" in
  deconfig) ip addr flush dev $interface; ip link set $interface up ;;
  bound|renew)
    [ -n "$mtu" ] && ip link set $interface mtu $mtu
    ip addr flush dev $interface
    ip addr add $ip/$mask dev $interface
    if [ -n "$staticroutes" ]; then
      set -- $staticroutes
      while [ $# -ge 2 ]; do ip route replace $1 via $2 dev $interface; shift 2; done
    fi
    [ -n "$router" ] && ip route replace default via ${router%% *} dev $interface
    : > /etc/resolv.conf; for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    log "lease $ip/$mask router $router mtu $mtu"
    echo "$ip" > /run/lease ;;
esac
"""

# The command channel (lab/qemu.py): one line `ID BASE64(script)` in; `BEGIN ID`, the base64
# output, `END ID RC` out; one command at a time.
CTL = r"""#!/bin/sh
# No udev in the guest: find the port by the name QEMU gives it (it arrives asynchronously).
find_port() {
  [ -e /dev/virtio-ports/vxnet.ctl ] && { echo /dev/virtio-ports/vxnet.ctl; return; }
  p=$(grep -l '^vxnet.ctl$' /sys/class/virtio-ports/*/name 2>/dev/null | head -1 | cut -d/ -f5)
  [ -n "$p" ] && [ -e /dev/$p ] && echo /dev/$p
}
i=0; dev=$(find_port)
while [ -z "$dev" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); dev=$(find_port); done
[ -n "$dev" ] || { echo "vxnet-guest: no command channel" > /dev/console; exit 1; }
# A read returns end-of-file while no client is connected on the host side: wait and read again.
exec 3<>"$dev"
while true; do
  while read -r id b64 <&3; do
    [ -n "$id" ] || continue
    echo "$b64" | base64 -d > /tmp/ctl.cmd 2>/dev/null
    sh /tmp/ctl.cmd > /tmp/ctl.out 2>&1 < /dev/null
    rc=$?
    { echo "BEGIN $id"; base64 < /tmp/ctl.out; echo "END $id $rc"; } >&3
  done
  sleep 0.2
done
"""

# PID 1 of the cloud-init guest (Debian root file system): networking, then the real cloud-init
# stages in order (as their systemd units would run them), then the command channel.
CLOUD_INIT = r"""#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /tmp
mount -o remount,rw /
log() { echo "vxnet-guest: $* (uptime $(cut -d' ' -f1 /proc/uptime))" > /dev/console; }
log "debian root"
/usr/local/bin/vxnet-ctl &
ip link set lo up; ip link set eth0 up
busybox udhcpc -f -i eth0 -s /usr/local/bin/udhcpc-script -t 60 -T 1 -A 1 -O staticroutes > /dev/console 2>&1 &
i=0; while [ ! -f /run/lease ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
cloud-init init > /dev/console 2>&1; log "cloud-init init: $?"
cloud-init modules --mode=config > /dev/console 2>&1; log "cloud-init config: $?"
cloud-init modules --mode=final > /dev/console 2>&1; log "cloud-init final: $?"
log "ready"
while true; do sleep 3600; done
"""

CLOUD_CFG = """# vxnet lab guest: the OpenStack datasource only (no probing of other clouds), networking is
# already up (udhcpc from the guest's init), no host key generation (slow under TCG).
datasource_list: [ OpenStack, None ]
datasource:
  OpenStack:
    metadata_urls: [ 'http://169.254.169.254' ]
    max_wait: 30
    timeout: 5
    retries: 3
network: {config: disabled}
ssh_genkeytypes: []
ssh_deletekeys: false
"""


def _write(path: str, text: str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def _modules(kroot: str, dest: str) -> list[str]:
    """Copy MODULES and what they depend on (decompressed) from the unpacked kernel to dest;
    returns their names in load order (dependencies first, from `modinfo -F depends`: the
    package ships no modules.dep, depmod makes it at install time)."""
    index = {}
    for path in glob.glob(os.path.join(kroot, "lib/modules/*/kernel/**/*.ko*"), recursive=True):
        index[os.path.basename(path).split(".ko")[0].replace("-", "_")] = path
    order: list[str] = []

    def visit(name: str, stack: tuple[str, ...] = ()) -> None:
        if name in order or name not in index or name in stack:
            return   # loaded already, built in, or a cycle (none in these drivers)
        deps = subprocess.run(["modinfo", "-F", "depends", index[name]], capture_output=True, text=True,
                              check=False).stdout.strip()
        for d in filter(None, deps.split(",")):
            visit(d.replace("-", "_"), (*stack, name))
        order.append(name)

    for name in MODULES:
        visit(name)
    for needed in ("virtio_net", "virtio_console"):
        if needed not in order and not _builtin(kroot, needed):
            raise ImageError(f"the kernel package has no {needed} module")
    for name in order:
        src, out = index[name], os.path.join(dest, name + ".ko")
        if src.endswith(".xz"):
            with open(out, "wb") as f:
                f.write(subprocess.run(["xz", "-dc", src], capture_output=True, check=True).stdout)
        else:
            shutil.copy(src, out)
    return order


def _builtin(kroot: str, name: str) -> bool:
    for f in glob.glob(os.path.join(kroot, "lib/modules/*/modules.builtin")):
        with open(f) as fh:
            if any(line.strip().endswith("/" + name + ".ko") for line in fh):
                return True
    return False


def _cpio(root: str, out: str) -> None:
    files = subprocess.run(["find", ".", "-mindepth", "1"], cwd=root, capture_output=True, text=True,
                           check=True).stdout
    data = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"], cwd=root, input=files.encode(),
                          capture_output=True, check=True).stdout
    with gzip.open(out, "wb", compresslevel=6) as f:
        f.write(data)


def _script_hash() -> str:
    """This builder's own source: a changed recipe rebuilds the image."""
    with open(__file__, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def _stamp() -> dict[str, str]:
    kpkg = kernel_package()
    return {"kernel": f"{kpkg}={_candidate(kpkg)}", "busybox": f"{BUSYBOX_PKG}={_candidate(BUSYBOX_PKG)}",
            "script": _script_hash()}


def _read_stamp(name: str) -> dict[str, str] | None:
    try:
        with open(os.path.join(cache_dir(), name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def ready(cloud: bool = False) -> bool:
    """True when the images exist (without asking apt: for the lab at VM creation)."""
    need = [kernel_path(), initrd_path(), os.path.join(cache_dir(), "stamp")]
    if cloud:
        need += [cloud_image_path(), os.path.join(cache_dir(), "stamp-cloud")]
    return all(os.path.exists(p) for p in need)


def build(cloud: bool = False, force: bool = False) -> str:
    """Build what is missing; returns the cache directory."""
    os.makedirs(cache_dir(), exist_ok=True)
    try:
        stamp = _stamp()
    except ImageError:
        _run(["apt-get", "update", "-qq"])   # a fresh machine may have no package lists yet
        stamp = _stamp()
    if force or not ready() or _read_stamp("stamp") != stamp:
        _build_initrd()
    if cloud and (force or not ready(cloud=True)):
        _build_cloud()
    return cache_dir()


def _build_initrd() -> None:
    stamp = _stamp()
    kpkg = stamp["kernel"].split("=")[0]
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".build-") as tmp:
        debs = os.path.join(tmp, "debs")
        os.makedirs(debs)
        _download([kpkg, BUSYBOX_PKG], debs)
        for deb in glob.glob(os.path.join(debs, "*.deb")):
            _run(["dpkg-deb", "-x", deb, os.path.join(tmp, "x")])
        x = os.path.join(tmp, "x")
        vmlinuz = glob.glob(os.path.join(x, "boot", "vmlinuz-*"))
        busybox = os.path.join(x, "bin", "busybox")
        if not vmlinuz or not os.path.exists(busybox):
            raise ImageError("the packages hold no boot/vmlinuz-* or bin/busybox")
        root = os.path.join(tmp, "root")
        for d in ("bin", "sbin", "lib/modules", "proc", "sys", "dev", "tmp", "run", "etc", "newroot"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        shutil.copy(busybox, os.path.join(root, "bin", "busybox"))
        os.symlink("busybox", os.path.join(root, "bin", "sh"))
        found = _modules(x, os.path.join(root, "lib", "modules"))
        _write(os.path.join(root, "init"), INIT.replace("__MODULES__", " ".join(found)), 0o755)
        _write(os.path.join(root, "bin", "udhcpc-script"), UDHCPC_SCRIPT, 0o755)
        _write(os.path.join(root, "bin", "vxnet-ctl"), CTL, 0o755)
        _write(os.path.join(root, "bin", "vxnet-cloud-init"), CLOUD_INIT, 0o755)
        _write(os.path.join(root, "etc", "90-vxnet-lab.cfg"), CLOUD_CFG)
        _cpio(root, os.path.join(tmp, "initrd.gz"))
        shutil.copy(vmlinuz[0], os.path.join(tmp, "vmlinuz"))
        for name in ("vmlinuz", "initrd.gz"):
            os.replace(os.path.join(tmp, name), os.path.join(cache_dir(), name))
        _write(os.path.join(cache_dir(), "stamp"), json.dumps(stamp))


def _build_cloud() -> None:
    """The Debian root file system with cloud-init, as an ext4 image (no mount on this machine)."""
    if not shutil.which("mmdebstrap") or not shutil.which("mke2fs"):
        raise ImageError("the cloud-init guest needs mmdebstrap and mke2fs (make setup)")
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".build-cloud-") as tmp:
        rootfs = os.path.join(tmp, "rootfs")
        _run(["mmdebstrap", "--variant=minbase", "--mode=root", "--include=" + ",".join(CLOUD_PACKAGES),
              "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
              "--dpkgopt=path-exclude=/usr/share/locale/*", "bookworm", rootfs])
        _write(os.path.join(rootfs, "etc", "hostname"), "debian\n")
        img = os.path.join(tmp, "debian-cloud.ext4")
        _run(["mke2fs", "-q", "-t", "ext4", "-L", "vxnet-root", "-d", rootfs, img, f"{CLOUD_IMAGE_MB}M"])
        os.replace(img, cloud_image_path())
        _write(os.path.join(cache_dir(), "stamp-cloud"), json.dumps({"packages": CLOUD_PACKAGES}))


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Build the lab's QEMU guest images (cached).")
    ap.add_argument("--cloud", action="store_true", help="also the Debian cloud-init root file system")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    try:
        print(build(cloud=args.cloud, force=args.force))
    except ImageError as e:
        print(f"guest image: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
