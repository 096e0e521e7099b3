"""Image formats: each read by what it holds, memory holes kept holes,
registers from notes or a QEMU register dump, bad files refused in one line."""

import json
import os
import struct

import pytest

from emu.cli.main import main
from emu.errors import ImageError
from emu.hw.image import ImageMem, note_bytes, parse_info_registers
from emu.tools.image import open_image

from .imagekit import FIXTURE_LIST, Fixture, pages_of, qemu_cpu_note, runs, write_elf, write_raw

FX = FIXTURE_LIST[0]                    # linux61-4level
FX5 = FIXTURE_LIST[2]                   # linux61-5level-kaslr


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _vmcoreinfo(fx) -> dict[str, str]:
    return ImageMem(fx.elf).notes.vmcoreinfo


def build(kind: str, tmp_path, fx=FX):
    """An image of ``kind`` holding the fixture's pages; returns (path, the root its notes give)."""
    pages = pages_of(fx.elf)
    info = fx.info
    path = tmp_path / f"{kind}.img"
    if kind == "raw":
        write_raw(path, pages)
        return path, None
    if kind == "qemu":
        # QEMU's layout: a CPU note, segments at unaligned file offsets, one
        # page split between two segments
        segs = runs(pages)
        pa, data = segs[0]
        segs[0:1] = [(pa, data[:0x800]), (pa + 0x800, data[0x800:])]
        write_elf(path, segs, qemu_cpu_note(info["cr0"], info["pgd"], info["cr4"]), misalign=0x508 - 0x1D8)
        return path, info["pgd"]
    if kind == "kdump":
        # /proc/vmcore: NT_PRSTATUS per CPU and VMCOREINFO, page-aligned segments
        vmci = "".join(f"{k}={v}\n" for k, v in _vmcoreinfo(fx).items()).encode()
        notes = note_bytes("CORE", 1, bytes(336)) + note_bytes("VMCOREINFO", 0, vmci)
        segs = runs(pages)
        write_elf(path, segs, notes, misalign=(-(64 + 56 * (1 + len(segs)) + len(notes))) % 4096)
        return path, None
    raise AssertionError(kind)


@pytest.mark.parametrize("kind,description,root_source", [
    ("raw", "raw physical-memory image", "--cr3"),
    ("qemu", "ELF core (QEMU dump-guest-memory)", "the image's QEMU note"),
    ("kdump", "ELF core (kdump vmcore)", "VMCOREINFO (init_top_pgt, phys_base)"),
    ("extract", "ELF core (isoemu image extract)", "the image's ISOEMU note"),
])
def test_every_format_reads_the_same_tables(tmp_path, capsys, kind, description, root_source):
    if kind == "extract":
        path, root = FX.elf, FX.pgd
    else:
        path, root = build(kind, tmp_path)
    opts = ["--cr3", hex(FX.pgd)] if kind == "raw" else []
    rc, out, _ = run(capsys, "image", "info", path, "--json", *opts)
    doc = json.loads(out)
    assert rc == 0 and doc["format"] == description and doc["sources"]["cr3"] == root_source
    if kind == "kdump":
        # VMCOREINFO gives swapper_pg_dir (init_top_pgt at phys_base), not the probe's table
        swapper = int(_vmcoreinfo(FX)["SYMBOL(init_top_pgt)"], 16) - 0xFFFFFFFF80000000
        assert doc["roots"] == [f"{swapper:#x}"]
        opts = ["--cr3", hex(FX.pgd)]
    rc, out, err = run(capsys, "ptdump", "--image", path, *opts)
    assert rc == 0 and out == FX.dump("kernel")


def test_kdump_vmcoreinfo_gives_the_paging_mode(tmp_path, capsys):
    path, _ = build("kdump", tmp_path, FX5)
    rc, out, _ = run(capsys, "image", "info", path, "--json")
    doc = json.loads(out)
    assert doc["control"]["la57"] is True and doc["sources"]["la57"] == "VMCOREINFO (pgtable_l5_enabled)"


def test_holes_are_holes_not_zeros(tmp_path, capsys):
    """A page-table page missing from a core (a hole) is named, never read
    as zeros (which would say 'not present')."""
    pages = pages_of(FX.elf)
    s = open_image(FX.elf)
    t = s.ctl.mode
    va = 0xFFFFFFFF81000000
    # the pud table of the kernel mapping: drop it from the core
    pud = s.mem.read_u64(FX.pgd + 8 * t.index(va, t.levels[0])) & 0x000FFFFFFFFFF000
    kept = [(pa, d) for pa, d in pages if pa != pud]
    path = tmp_path / "holey.elf"
    info = FX.info
    write_elf(path, runs(kept), qemu_cpu_note(info["cr0"], FX.pgd, info["cr4"]), misalign=3)
    mem = ImageMem(str(path))
    assert not mem.contains(pud, 8) and mem.contains(FX.pgd, 4096)
    with pytest.raises(ImageError, match="in a hole of image holey.elf"):
        mem.read(pud, 8)
    rc, out, err = run(capsys, "walk", hex(va), "--image", path)
    assert rc == 2 and out == "" and f"pud table at {pud:#x} (for {va:#x}) is in a hole of image holey.elf" in err
    rc, out, err = run(capsys, "ptdump", "--image", path, "--json")
    doc = json.loads(out)
    assert rc == 1 and len(doc["problems"]) == 1 and f"pud table at {pud:#x}" in doc["problems"][0]
    assert "in a hole of image holey.elf" in doc["problems"][0]
    rc, out, err = run(capsys, "check", "--image", path, "--json")
    (broken,) = json.loads(out)["findings"]
    assert rc == 1 and broken["lint"] == "broken" and "in a hole" in broken["message"]


def test_memory_is_read_on_demand(tmp_path):
    """A core's pages are copied in when a reader asks, not before."""
    path, _ = build("qemu", tmp_path)
    mem = ImageMem(str(path))
    assert mem.lazy and mem.pages_loaded == 0
    mem.read(FX.pgd + 8, 8)
    assert mem.pages_loaded == 1
    s = open_image(str(path))
    assert 0 < s.mem.pages_loaded < len(pages_of(FX.elf))      # detection read some tables, not all


@pytest.mark.parametrize("content,message", [
    (b"KDUMP   " + bytes(100), "kdump-compressed format"),
    (b"\x1f\x8b\x08" + bytes(100), "gzip-compressed"),
    (b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack("<HH", 2, 62) + bytes(100), "not a core file"),
    (b"\x7fELF\x01\x01\x01" + bytes(100), "not 64-bit little-endian"),
    (b"", "is empty"),
])
def test_files_that_are_not_images_are_refused(tmp_path, capsys, content, message):
    path = tmp_path / "bad"
    path.write_bytes(content)
    rc, out, err = run(capsys, "ptdump", "--image", path, "--cr3", "1000")
    assert rc == 2 and out == "" and message in err and err.count("\n") == 1


@pytest.mark.parametrize("make,message", [
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: os.mkfifo(p), "is a FIFO"),                     # would block an open() forever
])
def test_an_image_that_is_not_a_file_is_refused(tmp_path, capsys, make, message):
    path = tmp_path / "odd"
    make(path)
    rc, out, err = run(capsys, "walk", "0", "--image", path, "--cr3", "1000")
    assert (rc, out, err) == (2, "", f"isoemu: image {path} {message}: give a memory image or core file\n")


def test_truncated_core_is_refused(tmp_path, capsys):
    path, _ = build("qemu", tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 4096])
    rc, out, err = run(capsys, "ptdump", "--image", path)
    assert rc == 2 and "is truncated" in err and err.count("\n") == 1


# --- registers -------------------------------------------------------------------------------------------
QEMU_REGS = """CPU#0
RAX=0000000000000000 RBX=0000000000000000 RCX=0000000000000000 RDX=0000000000000000
RIP=ffffffff81a592eb RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1
CR0=80050033 CR2=00007ffe87d62000 CR3=000000001fd24000 CR4=00750ef0
EFER=0000000000000d01
CPU#1
CR0=80050033 CR2=0000000000000000 CR3=0000000002a10000 CR4=00350ef0
EFER=0000000000000501
"""


def test_info_registers_one_dict_per_cpu():
    cpus = parse_info_registers(QEMU_REGS)
    assert [(c["cr0"], c["cr3"], c["cr4"], c["efer"]) for c in cpus] == [
        (0x80050033, 0x1FD24000, 0x750EF0, 0xD01), (0x80050033, 0x2A10000, 0x350EF0, 0x501)]
    assert cpus[0]["rip"] == 0xFFFFFFFF81A592EB and cpus[0]["rflags"] == 0x246


@pytest.mark.parametrize("text,message", [
    ("hello\n", "no CR3 found"),
    ("CR0=80050033 CR3=0000000001000000\n", "no CR4, EFER beside CR3"),
])
def test_bad_register_dumps_are_refused(tmp_path, capsys, text, message):
    regs = tmp_path / "regs.txt"
    regs.write_text(text)
    rc, out, err = run(capsys, "walk", "0", "--image", FX.elf, "--regs", regs)
    assert rc == 2 and message in err and err.count("\n") == 1


def test_regs_without_nxe_make_xd_reserved(tmp_path, capsys):
    """EFER.NXE clear (as --regs says): bit 63 is reserved, every NX leaf a
    reserved-bit fault and a reserved finding; the user half of the probe's
    table has them."""
    regs = tmp_path / "regs.txt"
    regs.write_text(f"CR0=80050033 CR3={FX.pgd:016x} CR4=00750ef0\nEFER=0000000000000501\n")
    rc, out, _ = run(capsys, "check", "--image", FX.elf, "--regs", regs, "--lint", "reserved", "--json")
    found = json.loads(out)["findings"]
    assert rc == 1 and found and all("reserved bits 0x8000000000000000" in f["message"] for f in found)


@pytest.mark.parametrize("maxphyaddr,fires", [("40", True), ("46", False), (None, False)])
def test_maxphyaddr_decides_reserved_address_bits(tmp_path, capsys, maxphyaddr, fires):
    """A present entry with address bit 45 (device memory above 1 TiB): a
    reserved bit at MAXPHYADDR 40 only.  Unknown, 52 is assumed, and said."""
    pages = dict(pages_of(FX.elf))
    page = bytearray(pages[FX.pgd])
    i = next(k for k in range(256) if not struct.unpack_from("<Q", page, 8 * k)[0])   # a free user slot
    struct.pack_into("<Q", page, 8 * i, (1 << 45) | 0x1000 | 0x7)        # a pud table above 1 TiB
    pages[FX.pgd] = bytes(page)
    path = tmp_path / "wide.raw"
    write_raw(path, sorted(pages.items()))
    opts = ["--maxphyaddr", maxphyaddr] if maxphyaddr else []
    rc, out, err = run(capsys, "check", "--image", path, "--cr3", hex(FX.pgd), "--lint", "reserved",
                       "--lint", "broken", *opts)
    # not reserved: the table is followed, and it is outside the image
    assert rc == 1 and ("reserved bits 0x200000000000" in out) == fires and ("outside" in out) != fires
    assert ("MAXPHYADDR unknown: assumed 52" in err) == (maxphyaddr is None)
    rc, out, err = run(capsys, "walk", hex(i << 39), "--image", path, "--cr3", hex(FX.pgd), *opts)
    assert ("reserved-bit" in out) == fires


@pytest.mark.parametrize("argv,message", [
    (["walk", "0", "--regs", "r.txt"], "--regs needs --image FILE"),
    (["ptdump", "--layout", "vmalloc_base=0"], "--layout needs --image FILE"),
    (["ptdump", "--image", "IMG", "--layout", "vmalloc=1"], "unknown layout key 'vmalloc'"),
    (["ptdump", "--image", "IMG", "--layout", "page_offset_base=none"], "every kernel has a page_offset_base"),
    (["ptdump", "--image", "IMG", "--layout", "vmalloc_base=ffff800000000000"], "must be in address order"),
    (["ptdump", "--image", "IMG", "--layout", "vmalloc_base"], "expected KEY=VALUE"),
    (["ptdump", "--image", "IMG", "--maxphyaddr", "60"], "--maxphyaddr '60' is out of range (32 .. 52)"),
    (["ptdump", "--image", "IMG", "--kallsyms", "K", "--system-map", "K"], "give one symbol table"),
    (["ptdump", "--image", "IMG", "--kallsyms", "/nonexistent"], "cannot read --kallsyms file"),
    (["image", "extract", "IMG"], "needs -o OUT"),
])
def test_image_option_errors_are_one_line(capsys, argv, message):
    argv = [a.replace("IMG", FX.elf) for a in argv]
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and out == "" and message in err and err.count("\n") == 1


def test_image_info_text_names_every_source(capsys):
    rc, out, err = run(capsys, "image", "info", FX.elf)
    lines = out.splitlines()
    assert rc == 0 and err == ""
    assert lines[0] == f"image     {FX.elf}: ELF core (isoemu image extract)"
    assert lines[1].startswith("memory    ") and " ranges, " in lines[1]
    assert lines[3] == f"roots     {FX.pgd:#x}, {FX.pgd + 0x1000:#x}, " + lines[3].split(", ", 2)[2]
    assert "control   WP SMEP SMAP NXE PKE  (the image's ISOEMU note)" in lines
    assert "paging    4-level  (CR4.LA57 from the image's ISOEMU note)" in lines
    layout = {line.split()[0]: line.split(None, 2)[1:] for line in lines[lines.index("layout") + 1:]}
    assert layout["page_offset_base"][0] == "0xffff888000000000"
    assert layout["page_offset_base"][1].startswith("detected: physical 0 is mapped at 0xffff888000000000")
    assert layout["modules_vaddr"] == ["0xffffffffc0000000", "VMCOREINFO (KERNEL_IMAGE_SIZE)"]
    assert layout["kasan_shadow_start"] == ["none", "assumed: no CONFIG_KASAN"]


def test_a_real_kdump_vmcore(tmp_path, capsys):
    """Linux's own /proc/vmcore (scripts/realkernel.py --kdump: kexec_file_load,
    a crash, the capture kernel copied it): its ELF header, program headers
    and notes byte for byte as the kernel wrote them, around the extracted
    tables at their file offsets, in a sparse file.  The kernel-text segment
    overlaps the RAM segment, as in every x86 vmcore."""
    fx = Fixture("linux61-kdump")
    head = fx.path("vmcore-head").read_bytes()
    phoff, = struct.unpack_from("<Q", head, 32)
    phnum, = struct.unpack_from("<H", head, 56)
    loads = [p for p in (struct.unpack_from("<IIQQQQQQ", head, phoff + 56 * i) for i in range(phnum)) if p[0] == 1]
    assert any(a[4] < b[4] < a[4] + a[5] or b[4] < a[4] < b[4] + b[5] for a in loads for b in loads if a != b)
    path = tmp_path / "vmcore"
    with open(path, "wb") as f:
        f.write(head)
        for pa, data in pages_of(fx.elf):
            for _, _, off, _, paddr, filesz, _, _ in loads:
                if paddr <= pa < paddr + filesz:
                    f.seek(off + pa - paddr)
                    f.write(data)
        f.truncate(max(p[2] + p[5] for p in loads))
    rc, out, _ = run(capsys, "image", "info", path, "--json")
    doc = json.loads(out)
    swapper = int(_vmcoreinfo(fx)["SYMBOL(init_top_pgt)"], 16) - 0xFFFFFFFF80000000
    assert rc == 0 and doc["format"] == "ELF core (kdump vmcore)" and set(doc["notes"]) == {"CORE", "VMCOREINFO"}
    assert doc["roots"] == [f"{swapper:#x}"] and doc["sources"]["la57"] == "VMCOREINFO (pgtable_l5_enabled)"
    ram = sorted((p[4], p[4] + p[6]) for p in loads)
    assert doc["memory"][0]["start"] == f"{ram[0][0]:#x}" and len(doc["memory"]) < len(loads)   # the overlap merged
    rc, out, _ = run(capsys, "ptdump", "--image", path, "--cr3", hex(fx.pgd + 0x1000))
    assert rc == 0 and out == fx.dump("user")
    for root in (fx.pgd, swapper):
        rc, out, _ = run(capsys, "ptdump", "--image", path, "--cr3", hex(root))
        rc2, out2, _ = run(capsys, "ptdump", "--image", fx.elf, "--cr3", hex(root))
        assert rc == rc2 == 0 and out == out2 and out.count("---[") == 13
