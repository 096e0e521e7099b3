"""Make the real-kernel fixtures of the test suite (tests/fixtures/linux61-*).

Run as root on a Debian 12 machine with the packages scripts/realkernel.py
names, from the repository root, after ``pip install -e .``::

    python scripts/make_fixtures.py [NAME ...]

For each configuration below it boots Debian's kernel under QEMU
(scripts/realkernel.py), then keeps only what the tests need
(docs/images.md, "Real-kernel fixtures"):

``NAME.elf``         ``isoemu image extract`` of the QEMU core: the page-table pages
                     reachable from the probe's page table, its PTI user table and
                     swapper_pg_dir (init_top_pgt and its PTI twin), with the
                     registers of ``info registers`` and MAXPHYADDR in its note
``NAME.kernel.txt``  the kernel's own dump of the probe's page table
``NAME.user.txt``    the kernel's own dump of its PTI user page table
``NAME.regs.txt``    QEMU's ``info registers`` at the moment of the dump
``NAME.info.txt``    the roots and the layout the kernel used (the module's report)
``NAME.probe.txt``   where the probe put its mappings (memfd_secret, THP, hugetlb, PROT_NONE)
``NAME.kallsyms``    a few lines of /proc/kallsyms (the KASLR configuration only;
                     its ``.elf`` then also holds the page of the base variables)
``NAME.vmcore-head`` the kdump configuration only: the first bytes of the real
                     /proc/vmcore (ELF header, program headers, notes), from which
                     the tests rebuild a sparse vmcore around the extracted tables.
                     Its ``.elf`` is the extract of the vmcore (taken at the crash,
                     after kexec loaded the capture kernel: the kernel's own dump,
                     taken before, differs where kexec changed the tables; the PTI
                     user table does not)

Never a whole RAM image, never a kernel binary.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realkernel  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"

#: name -> realkernel.py options
CONFIGS = {
    "linux61-4level": [],
    "linux61-4level-kaslr": ["--kaslr"],
    "linux61-5level-kaslr": ["--la57", "--kaslr"],
    "linux61-4level-3g": ["--mem", "3G", "--hugepage-1g"],
    "linux61-kdump": ["--kdump"],
}
#: the symbols kept from kallsyms: the base variables, the kernel's bounds, a few entry points
KEPT_SYMBOLS = ("_text", "_stext", "_etext", "_end", "page_offset_base", "vmalloc_base", "vmemmap_base",
                "init_top_pgt", "phys_base", "entry_SYSCALL_64", "startup_64", "init_task")


def info_of(path: Path) -> dict[str, str]:
    return dict(line.split(None, 1) for line in path.read_text().splitlines() if line.strip())


def make(name: str, options: list[str], work: Path) -> None:
    out = work / name
    for attempt in range(3):
        args = realkernel.parser().parse_args(["--out", str(out)] + options)
        args.kernel = args.kernel or str(sorted(Path("/boot").glob("vmlinuz-*"))[-1])
        if realkernel.boot(args):
            break
    else:
        raise SystemExit(f"make_fixtures: {name}: the tables kept changing")
    info = info_of(out / "info.txt")
    pgd = int(info["pgd"], 16)
    kdump = "--kdump" in options
    core = out / ("vmcore" if kdump else "core.elf")
    # swapper_pg_dir from the core's VMCOREINFO: the kernel's own root and its PTI twin
    from emu.hw.image import ImageMem
    from emu.tools.image import vmcore_root
    swapper = vmcore_root(ImageMem(str(core)))
    roots = [pgd, pgd + 0x1000] + ([swapper, swapper + 0x1000] if swapper else [])
    cmd = [sys.executable, "-m", "emu.cli", "image", "extract", str(core), "-o", str(FIXTURES / f"{name}.elf"),
           "--maxphyaddr", info["phys_bits"].strip()]
    if not kdump:
        cmd += ["--regs", str(out / "regs.txt")]
    else:
        (FIXTURES / f"{name}.vmcore-head").write_bytes(vmcore_head(core))
    for r in roots:
        cmd += ["--cr3", f"{r:#x}"]
    if "--kaslr" in options and "--la57" not in options:
        kept = [line for line in (out / "kallsyms").read_text().splitlines()
                if len(line.split()) >= 3 and line.split()[2] in KEPT_SYMBOLS and line.split()[1] != "A"]
        (FIXTURES / f"{name}.kallsyms").write_text("\n".join(kept) + "\n")
        cmd += ["--kallsyms", str(FIXTURES / f"{name}.kallsyms")]
    subprocess.run(cmd, check=True, cwd=ROOT)
    shutil.copy(out / "kernel2.txt", FIXTURES / f"{name}.kernel.txt")     # taken last, nearest the dump
    shutil.copy(out / "user.txt", FIXTURES / f"{name}.user.txt")
    if not kdump:
        shutil.copy(out / "regs.txt", FIXTURES / f"{name}.regs.txt")
    shutil.copy(out / "info.txt", FIXTURES / f"{name}.info.txt")
    probe = [line.rstrip("\r") for line in (out / "report.txt").read_text(errors="replace").splitlines()
             if line.startswith("probe: ")]
    (FIXTURES / f"{name}.probe.txt").write_text("\n".join(probe) + "\n")


def vmcore_head(path: Path) -> bytes:
    """The bytes of an ELF core before its first segment's data: headers and notes."""
    import struct
    with open(path, "rb") as f:
        head = f.read(64)
        phoff, = struct.unpack_from("<Q", head, 32)
        phnum, = struct.unpack_from("<H", head, 56)
        f.seek(phoff)
        phdrs = [struct.unpack("<IIQQQQQQ", f.read(56)) for _ in range(phnum)]
        first = min(p[2] for p in phdrs if p[0] == 1)
        f.seek(0)
        return f.read(first)


def main(argv: list[str]) -> None:
    names = argv or list(CONFIGS)
    for n in names:
        if n not in CONFIGS:
            raise SystemExit(f"make_fixtures: unknown configuration {n!r}: {', '.join(CONFIGS)}")
    FIXTURES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fixtures-") as tmp:
        for n in names:
            make(n, CONFIGS[n], Path(tmp))


if __name__ == "__main__":
    main(sys.argv[1:])
