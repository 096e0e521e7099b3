"""Boot a real Linux kernel under QEMU and capture its page tables.

Run as root on a Debian 12 machine (docs/images.md, "Real-kernel fixtures")::

    apt-get install qemu-system-x86 linux-image-amd64 linux-headers-amd64 busybox-static gcc
    python scripts/realkernel.py --out /tmp/rk-4level
    python scripts/realkernel.py --out /tmp/rk-5level --la57 --kaslr --mem 3G

The guest is Debian's own ``linux-image-amd64`` booted by ``qemu-system-x86_64``
(TCG: no KVM needed) from a busybox initramfs holding

* ``isoemu_ptdump.ko`` (scripts/guest/isoemu_ptdump.c, built here against the
  matching ``linux-headers`` package): the kernel's own ``dump_pagetables``
  output of the reading process, which Debian's kernel (no
  CONFIG_PTDUMP_DEBUGFS) does not otherwise print;
* ``probe`` (scripts/guest/probe.c, built here with ``gcc -static``): a
  process with a memfd_secret page, a transparent huge page, hugetlb pages,
  PROT_NONE pages; it prints the kernel's dumps of its own tables and waits.

When the probe says READY the script stops the guest and writes to ``--out``:

============== ===========================================================
``core.elf``   ``dump-guest-memory``: an ELF core, PT_LOAD by physical address
``raw.img``    ``pmemsave`` of RAM below 4 GiB (only with ``--raw``)
``regs.txt``   ``info registers`` (the CPU was idle: CR3 is swapper_pg_dir's)
``info.txt``   the probe's roots and the layout the kernel uses (from the module)
``kernel.txt`` the kernel's dump of the probe's page table
``user.txt``   the kernel's dump of its PTI user page table
``kernel2.txt`` the same dump taken again (the tables were still if equal)
``kallsyms``   /proc/kallsyms, read as root (real addresses)
``console.log`` the guest's console
``vmcore``     with ``--kdump``: the kernel crashes into a capture kernel
               (loaded by scripts/guest/kexec_crash.c, booting
               scripts/guest/capture.sh) which copies ``/proc/vmcore`` to a
               virtio disk: a real kdump core instead of ``core.elf``
============== ===========================================================

Nothing here is run by the test suite: scripts/make_fixtures.py turns these
outputs into the small committed fixtures (tests/fixtures/) the tests use.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GUEST = HERE / "guest"


def kernel_release(kernel: Path) -> str:
    name = kernel.name
    if not name.startswith("vmlinuz-"):
        raise SystemExit(f"realkernel: {kernel}: expected /boot/vmlinuz-RELEASE")
    return name[len("vmlinuz-"):]


def build_module(release: str, work: Path) -> Path:
    build = Path(f"/lib/modules/{release}/build")
    if not build.is_dir():
        raise SystemExit(f"realkernel: no {build}: apt-get install linux-headers-{release}")
    src = work / "kmod"
    src.mkdir()
    shutil.copy(GUEST / "isoemu_ptdump.c", src)
    (src / "Kbuild").write_text("obj-m := isoemu_ptdump.o\n")
    subprocess.run(["make", "-s", "-C", str(build), f"M={src}", "modules"], check=True,
                   stdout=subprocess.DEVNULL)
    return src / "isoemu_ptdump.ko"


def build_static(work: Path, name: str) -> Path:
    out = work / name
    subprocess.run(["gcc", "-O2", "-static", "-Wall", "-o", str(out), str(GUEST / f"{name}.c")], check=True)
    return out


#: the virtio disk driver of the capture kernel, in load order
VIRTIO = ("virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "virtio_blk")


def build_capture_initramfs(release: str) -> bytes:
    """The kdump capture kernel's initramfs: busybox, capture.sh, the virtio disk driver."""
    d, f, x = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644, stat.S_IFREG | 0o755
    entries = [("bin", d, b""), ("proc", d, b""), ("dev", d, b""),
               ("bin/busybox", x, Path("/bin/busybox").read_bytes()),
               ("init", x, (GUEST / "capture.sh").read_bytes())]
    for m in VIRTIO:
        found = sorted(Path(f"/lib/modules/{release}/kernel/drivers").rglob(f"{m}.ko"))
        if not found:
            raise SystemExit(f"realkernel: no {m}.ko for {release} (a compressed module?)")
        entries.append((f"{m}.ko", f, found[0].read_bytes()))
    return newc(entries)


def newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A cpio archive in the "newc" format the kernel unpacks as initramfs."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate(entries + [("TRAILER!!!", 0, b"")], 1):
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0))
        out += hdr.encode() + nb
        out += b"\0" * (-len(out) % 4)
        out += data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def build_initramfs(work: Path, module: Path, probe: Path, fw_cfg: Path, extra=()) -> Path:
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise SystemExit("realkernel: no /bin/busybox: apt-get install busybox-static")
    d, f, x = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644, stat.S_IFREG | 0o755
    entries = [("bin", d, b""), ("proc", d, b""), ("sys", d, b""), ("dev", d, b""),
               ("bin/busybox", x, busybox.read_bytes()),
               ("init", x, (GUEST / "init.sh").read_bytes()),
               ("probe", x, probe.read_bytes()),
               ("isoemu_ptdump.ko", f, module.read_bytes())]
    if fw_cfg.exists():
        entries.append(("qemu_fw_cfg.ko", f, fw_cfg.read_bytes()))
    entries.extend(extra)
    path = work / "initramfs.cpio"
    path.write_bytes(newc(entries))
    return path


class QMP:
    """QEMU's machine protocol over a UNIX socket; HMP commands through it."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(path))
        self.buf = b""
        self._read()                                     # the greeting
        self.call("qmp_capabilities")

    def _read(self) -> dict:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SystemExit("realkernel: QEMU closed the monitor")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def call(self, cmd: str, **args):
        self.sock.sendall(json.dumps({"execute": cmd, "arguments": args}).encode() + b"\n")
        while True:
            msg = self._read()
            if "return" in msg:
                return msg["return"]
            if "error" in msg:
                raise SystemExit(f"realkernel: QEMU: {cmd}: {msg['error'].get('desc')}")

    def hmp(self, line: str) -> str:
        return self.call("human-monitor-command", **{"command-line": line})


def sections(text: str) -> dict[str, str]:
    """The probe's report: ``=== BEGIN name`` ... ``=== END name`` blocks."""
    out, name, lines = {}, None, []
    for line in text.splitlines():
        if line.startswith("=== BEGIN "):
            name, lines = line[10:].strip(), []
        elif line.startswith("=== END ") and name:
            out[name] = "\n".join(lines) + "\n"
            name = None
        elif name:
            lines.append(line.rstrip("\r"))
    return out


def boot(args) -> bool:
    """Boot, capture, write the outputs; True when the two dumps agree (the
    tables did not change while the report was printed)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kernel = Path(args.kernel)
    release = kernel_release(kernel)
    with tempfile.TemporaryDirectory(prefix="realkernel-") as tmp:
        work = Path(tmp)
        fw_cfg = Path(f"/lib/modules/{release}/kernel/drivers/firmware/qemu_fw_cfg.ko")
        extra = []
        if args.kdump:
            x = stat.S_IFREG | 0o755
            extra = [("vmlinuz", x, kernel.read_bytes()), ("capture.cpio", x, build_capture_initramfs(release)),
                     ("kexec_crash", x, build_static(work, "kexec_crash").read_bytes())]
        initrd = build_initramfs(work, build_module(release, work), build_static(work, "probe"), fw_cfg, extra)
        cmdline = ["console=ttyS0", "pti=on", "secretmem.enable=1", "panic=-1", "loglevel=4"]
        if args.kdump:
            cmdline += [f"crashkernel={args.crashkernel}", "isoemu.kdump"]
        cmdline.append("kaslr" if args.kaslr else "nokaslr")
        if args.hugepage_1g:
            cmdline += ["hugepagesz=1G", "hugepages=1", "PROBE_1G=1"]
        cpu = "max" if args.la57 else "max,-la57"
        qmp_path = work / "qmp.sock"
        data = out / "report.txt"
        for name in ("report.txt", "kallsyms", "console.log"):
            (out / name).unlink(missing_ok=True)
        qemu = [args.qemu, "-accel", args.accel, "-cpu", cpu, "-m", args.mem, "-smp", str(args.smp),
                "-nographic", "-no-reboot", "-device", "vmcoreinfo", "-kernel", str(kernel), "-initrd", str(initrd),
                "-append", " ".join(cmdline),
                "-serial", f"file:{out / 'console.log'}", "-serial", f"file:{data}",
                "-serial", f"file:{out / 'kallsyms'}",
                "-monitor", "none", "-qmp", f"unix:{qmp_path},server=on,wait=off"]
        disk = out / "vmcore.disk"
        if args.kdump:
            with open(disk, "wb") as f:
                f.truncate(parse_mem(args.mem))
            qemu += ["-drive", f"file={disk},format=raw,if=virtio"]
        print("realkernel:", " ".join(qemu), file=sys.stderr)
        proc = subprocess.Popen(qemu, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + args.timeout
            while not qmp_path.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("realkernel: QEMU did not start")
                time.sleep(0.2)
            qmp = QMP(qmp_path)
            if args.kdump:
                wait_kdump(proc, data, disk, out, deadline)
                return report_files(out, data)
            while "=== READY" not in (data.read_text(errors="replace") if data.exists() else ""):
                if proc.poll() is not None:
                    raise SystemExit("realkernel: the guest stopped before READY (see console.log)")
                if time.monotonic() > deadline:
                    raise SystemExit(f"realkernel: no READY after {args.timeout} s (see console.log)")
                time.sleep(1)
            time.sleep(args.settle)                # let the last writes of the report reach the port
            qmp.hmp("stop")
            (out / "regs.txt").write_text(qmp.hmp("info registers"))
            (out / "core.elf").unlink(missing_ok=True)
            qmp.hmp(f"dump-guest-memory {out / 'core.elf'}")
            if args.raw:
                below_4g = min(parse_mem(args.mem), 0xE0000000)
                qmp.hmp(f'pmemsave 0 {below_4g:#x} "{out / "raw.img"}"')
            qmp.hmp("quit")
        finally:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return report_files(out, data)


def wait_kdump(proc, data: Path, disk: Path, out: Path, deadline: float) -> None:
    """The crash, the capture kernel's boot and its copy of /proc/vmcore."""
    while "=== VMCORE DONE" not in (text := data.read_text(errors="replace") if data.exists() else ""):
        if "=== KEXEC FAILED" in text:
            raise SystemExit("realkernel: loading the capture kernel failed (see console.log)")
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("realkernel: no vmcore (see console.log)")
        time.sleep(1)
    size = int(text.split("=== VMCORE ", 1)[1].split()[0])
    with open(disk, "rb") as src, open(out / "vmcore", "wb") as dst:
        left = size
        while left:
            chunk = src.read(min(left, 1 << 24))
            if not chunk:
                raise SystemExit(f"realkernel: the disk holds less than the {size} bytes of /proc/vmcore")
            dst.write(chunk)
            left -= len(chunk)
    disk.unlink()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def report_files(out: Path, data: Path) -> bool:
    report = sections(data.read_text(errors="replace"))
    for name in ("info", "kernel", "user", "kernel2"):
        if name not in report:
            raise SystemExit(f"realkernel: the probe's report has no {name} section (see {data})")
        (out / f"{name}.txt").write_text(report[name])
    still = report["kernel"] == report["kernel2"]
    print(f"realkernel: wrote {out} (the tables were {'still' if still else 'CHANGING: run again'})",
          file=sys.stderr)
    return still


def parse_mem(text: str) -> int:
    units = {"M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1:].upper() in units else int(text)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="directory for the outputs")
    p.add_argument("--kernel", default=None, help="the kernel (default: the newest /boot/vmlinuz-*)")
    p.add_argument("--mem", default="512M", help="guest RAM (QEMU -m syntax, default 512M)")
    p.add_argument("--la57", action="store_true", help="5-level paging (QEMU -cpu max; default -cpu max,-la57)")
    p.add_argument("--kaslr", action="store_true", help="boot with KASLR (default nokaslr)")
    p.add_argument("--hugepage-1g", action="store_true", help="reserve and map a 1 GiB hugetlb page")
    p.add_argument("--raw", action="store_true", help="also write a pmemsave raw image of RAM below 4 GiB")
    p.add_argument("--accel", default="tcg", help="QEMU accelerator (default tcg)")
    p.add_argument("--smp", type=int, default=1)
    p.add_argument("--qemu", default="qemu-system-x86_64")
    p.add_argument("--timeout", type=int, default=600, help="seconds to wait for the probe")
    p.add_argument("--settle", type=float, default=2.0, help="seconds between READY and the stop")
    p.add_argument("--kdump", action="store_true",
                   help="crash into a kdump capture kernel and save /proc/vmcore (instead of core.elf)")
    p.add_argument("--crashkernel", default="160M", help="memory reserved for the capture kernel (--kdump)")
    return p


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    if args.kernel is None:
        kernels = sorted(Path("/boot").glob("vmlinuz-*"), key=lambda k: k.stat().st_mtime)
        if not kernels:
            raise SystemExit("realkernel: no /boot/vmlinuz-*: apt-get install linux-image-amd64")
        args.kernel = str(kernels[-1])
    if os.geteuid() != 0:
        print("realkernel: note: not root; building the module may fail", file=sys.stderr)
    sys.exit(0 if boot(args) else 1)


if __name__ == "__main__":
    main()
