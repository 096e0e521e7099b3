"""Real kernels' tables (tests/fixtures/linux61-*: Debian's Linux 6.1 under
QEMU, extracted by scripts/make_fixtures.py): ptdump equals the kernel's own
dump line for line, the layout and the paging mode are detected, the
registers read, the lints quiet, inverted PFNs decoded, extract idempotent."""

import json

import pytest

from emu.cli.main import main
from emu.hw.image import ImageMem, parse_info_registers
from emu.hw.x86 import CR0_WP, CR4_LA57, CR4_PKE, CR4_SMAP, CR4_SMEP
from emu.tools.detect import detect_bases, detect_mode
from emu.tools.image import open_image, reachable_tables
from emu.tools.lint import check
from emu.tools.ptdump import ptdump_lines

from .imagekit import FIXTURE_LIST, pages_of, write_raw

FIX = {f.name: f for f in FIXTURE_LIST}
EFER_NXE = 1 << 11


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# --- ptdump: the kernel's own dump, markers included ------------------------------------------
@pytest.mark.parametrize("fx", FIXTURE_LIST, ids=lambda f: f.name)
@pytest.mark.parametrize("table", ["kernel", "user"])
def test_ptdump_equals_the_kernels_own_dump(capsys, fx, table):
    """arch/x86/mm/dump_pagetables.c's output of the probe's page table (and
    of its PTI user table), printed by the kernel itself, against isoemu's
    dump of the extracted tables with nothing but the image given."""
    root = fx.pgd + (0x1000 if table == "user" else 0)
    rc, out, err = run(capsys, "ptdump", "--image", fx.elf, "--cr3", hex(root))
    want = fx.dump(table)
    assert rc == 0
    assert out == want
    assert want.count("---[") >= (13 if table == "kernel" else 10)      # every section marker


@pytest.mark.parametrize("fx", FIXTURE_LIST, ids=lambda f: f.name)
def test_memoized_ptdump_and_check_equal_the_plain_walk(fx):
    s = open_image(fx.elf)
    for root in s.roots:
        assert ptdump_lines(s.mem, root, s.ctl.mode, s.layout) == \
            ptdump_lines(s.mem, root, s.ctl.mode, s.layout, memoize=False)
        assert check(s.mem, root, s.ctl.mode, s.ctl.maxphyaddr, layout=s.layout) == \
            check(s.mem, root, s.ctl.mode, s.ctl.maxphyaddr, layout=s.layout, memoize=False)


@pytest.mark.parametrize("fx", FIXTURE_LIST, ids=lambda f: f.name)
def test_no_lint_fires_on_a_healthy_kernel(capsys, fx):
    """The kernel's own W+X check passed at boot; so does every isoemu lint,
    on the kernel page table, its PTI twin and swapper_pg_dir's pair."""
    s = open_image(fx.elf)
    assert len(s.roots) == 4
    for root in s.roots:
        rc, out, err = run(capsys, "check", "--image", fx.elf, "--cr3", hex(root), "--json")
        assert rc == 0 and json.loads(out)["findings"] == []


# --- what the image says, and where it came from ----------------------------------------------------
@pytest.mark.parametrize("fx", FIXTURE_LIST, ids=lambda f: f.name)
def test_layout_is_the_kernels(capsys, fx):
    """Every base the kernel used (its own report, info.txt), found from the image."""
    rc, out, _ = run(capsys, "image", "info", fx.elf, "--json")
    doc = json.loads(out)
    info = fx.info
    for key in ("page_offset_base", "vmalloc_base", "vmemmap_base", "ldt_base", "cpu_entry_area",
                "espfix_base", "efi_va_end", "kernel_map", "modules_vaddr", "modules_end", "fixaddr_start"):
        assert int(doc["layout"][key], 16) == info[key], key
    kaslr_from = "the kernel's" if fx.path("kallsyms").exists() else "detected"
    for key in ("page_offset_base", "vmalloc_base", "vmemmap_base"):
        assert doc["sources"][f"layout.{key}"].startswith(kaslr_from)
    assert doc["sources"]["layout.modules_vaddr"] == "VMCOREINFO (KERNEL_IMAGE_SIZE)"
    assert doc["control"]["la57"] == fx.la57 and doc["control"]["maxphyaddr"] == info["phys_bits"]


@pytest.mark.parametrize("fx", FIXTURE_LIST, ids=lambda f: f.name)
def test_detection_from_the_tables_alone(fx):
    """The paging mode and the three randomized bases, from the tables only
    (the kernel table and its PTI twin)."""
    mem = ImageMem(fx.elf)
    info = fx.info
    for root in (fx.pgd, fx.pgd + 0x1000):
        found, kroot, why = detect_mode(mem, root)
        assert found is not None, why
        assert found.mode.depth == (5 if fx.la57 else 4) and kroot == fx.pgd
        assert found.page_offset == info["page_offset_base"]
        bases = detect_bases(mem, kroot, found.mode, found.page_offset)
        assert {k: v for k, (v, _) in bases.items()} == {"vmalloc_base": info["vmalloc_base"],
                                                         "vmemmap_base": info["vmemmap_base"]}


@pytest.mark.parametrize("fx", FIXTURE_LIST, ids=lambda f: f.name)
def test_registers_give_the_control_state(fx):
    """QEMU's 'info registers' at the dump, against the control registers the
    kernel read inside the guest (info.txt): CR3, LA57, WP, SMEP, SMAP, PKE, NXE."""
    (cpu,) = parse_info_registers(fx.path("regs.txt").read_text())
    info = fx.info
    assert (cpu["cr0"], cpu["cr4"], cpu["efer"]) == (info["cr0"], info["cr4"], info["efer"])
    s = open_image(fx.elf, regs=str(fx.path("regs.txt")))
    want = {"wp": bool(info["cr0"] & CR0_WP), "smep": bool(info["cr4"] & CR4_SMEP),
            "smap": bool(info["cr4"] & CR4_SMAP), "pke": bool(info["cr4"] & CR4_PKE),
            "la57": bool(info["cr4"] & CR4_LA57), "nxe": bool(info["efer"] & EFER_NXE)}
    assert {k: getattr(s.ctl, k) for k in want} == want
    assert want["pke"] and want["nxe"] and want["la57"] == fx.la57     # -cpu max: PKU on, as the guest had
    assert s.root == cpu["cr3"] & ~0xFFF
    assert s.sources["control"].startswith("--regs")


def test_a_5_level_image_is_never_read_as_4_level(tmp_path, capsys):
    """Without registers (a raw image), the 5-level tables are detected and
    read so, with a note; --la57 on 4-level tables and registers that
    contradict the tables are refused."""
    l5, l4 = FIX["linux61-5level-kaslr"], FIX["linux61-4level"]
    raw5, raw4 = tmp_path / "l5.raw", tmp_path / "l4.raw"
    write_raw(raw5, pages_of(l5.elf))
    write_raw(raw4, pages_of(l4.elf))
    rc, out, err = run(capsys, "ptdump", "--image", raw5, "--cr3", hex(l5.pgd))
    assert rc == 0 and out == l5.dump("kernel")
    assert f"the tables at {l5.pgd:#x} are 5-level" in err
    rc, out, err = run(capsys, "ptdump", "--image", raw4, "--cr3", hex(l4.pgd), "--la57")
    assert rc == 2 and out == "" and f"--la57: the tables at {l4.pgd:#x} are 4-level" in err
    rc, out, err = run(capsys, "ptdump", "--image", raw5, "--cr3", hex(l5.pgd), "--regs", l4.path("regs.txt"))
    assert rc == 2 and out == "" and "says 4-level paging, but the tables" in err
    assert err.count("\n") == 1


# --- inverted PFNs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fx", FIXTURE_LIST, ids=lambda f: f.name)
def test_inverted_pfns_are_decoded(capsys, fx):
    """The memfd_secret page is mapped for its process and removed from the
    direct map: the direct-map PTE is non-present, its PFN inverted
    (pgtable-invert.h); walk decodes it to the very frame the process maps.
    The PROT_NONE page likewise."""
    probe, info = fx.probe, fx.info
    rc, out, _ = run(capsys, "walk", hex(probe["memfd_secret page"]), "--image", fx.elf, "--cr3", hex(fx.pgd),
                     "--cpl", "3", "--json")
    pa = int(json.loads(out)["result"]["pa"], 16)
    assert rc == 0
    rc, out, _ = run(capsys, "walk", hex(info["page_offset_base"] + pa), "--image", fx.elf, "--cr3",
                     hex(fx.pgd))
    assert rc == 1 and f"PFN inverted: {pa >> 12:#x}" in out.splitlines()[-3]
    rc, out, _ = run(capsys, "walk", hex(probe["four pages"] + 0x1000), "--image", fx.elf, "--cr3", hex(fx.pgd),
                     "--cpl", "3", "--json")
    leaf = json.loads(out)["levels"][-1]
    assert rc == 1 and 0 < int(leaf["pfn_inverted"], 16) << 12 < 1 << 32     # a frame of the guest's RAM
    words = leaf["flags"].split()
    assert "G" in words and words[-1] == "p"                  # PAGE_NONE: _PAGE_PROTNONE is the G bit
    rc, out, _ = run(capsys, "ptdump", "--image", fx.elf, "--cr3", hex(fx.pgd), "--entries")
    assert f"PFN inverted: {int(leaf['pfn_inverted'], 16):#x}" in out
    assert f"PFN inverted: {pa >> 12:#x}" in out


# --- extract -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fx", FIXTURE_LIST, ids=lambda f: f.name)
def test_extract_keeps_the_tables_and_nothing_else(tmp_path, capsys, fx):
    """Extracting a fixture again gives the same pages: only page-table
    pages (and, with symbols, the page of the base variables)."""
    out_path = tmp_path / "again.elf"
    args = ["image", "extract", fx.elf, "-o", out_path]
    if fx.path("kallsyms").exists():
        args += ["--kallsyms", fx.path("kallsyms")]
    rc, _, err = run(capsys, *args)
    assert rc == 0 and "page-table pages" in err
    assert pages_of(str(out_path)) == pages_of(fx.elf)
    s = open_image(fx.elf)
    tables, problems = reachable_tables(s)
    extra = 1 if fx.path("kallsyms").exists() else 0
    assert problems == [] and len(pages_of(fx.elf)) == len(tables) + extra
    rc, out, _ = run(capsys, "ptdump", "--image", out_path, "--cr3", hex(fx.pgd))
    assert out == fx.dump("kernel")


# --- symbols ---------------------------------------------------------------------------------------------
def test_kallsyms_and_system_map(tmp_path, capsys):
    """Symbols name addresses, and give the bases read from the kernel's own
    variables; a System.map is moved by the KASLR slide; a table from
    another boot is refused."""
    fx = FIX["linux61-4level-kaslr"]
    kallsyms = fx.path("kallsyms")
    syms = {line.split()[2]: int(line.split()[0], 16) for line in kallsyms.read_text().splitlines()}
    rc, out, err = run(capsys, "walk", "page_offset_base", "--image", fx.elf, "--kallsyms", kallsyms, "--json")
    assert rc == 0 and json.loads(out)["va"] == f"{syms['page_offset_base']:#x}"
    slide = syms["_text"] - 0xFFFFFFFF81000000
    assert slide and slide % (2 << 20) == 0                              # KASLR moved the kernel
    sysmap = tmp_path / "System.map"
    sysmap.write_text("".join(f"{v - slide:016x} D {k}\n" for k, v in syms.items()))
    for option, path in (("--kallsyms", kallsyms), ("--system-map", sysmap)):
        rc, out, _ = run(capsys, "image", "info", fx.elf, option, path, "--json")
        doc = json.loads(out)
        assert rc == 0 and int(doc["layout"]["vmalloc_base"], 16) == fx.info["vmalloc_base"]
        assert doc["sources"]["layout.vmalloc_base"].startswith("the kernel's vmalloc_base variable")
        assert int(doc["symbols"]["slide"], 16) == (slide if option == "--system-map" else 0)
    wrong = tmp_path / "other-boot"
    wrong.write_text("".join(f"{v + (2 << 20):016x} D {k}\n" for k, v in syms.items()))
    rc, out, err = run(capsys, "ptdump", "--image", fx.elf, "--kallsyms", wrong)
    assert rc == 2 and out == "" and "kallsyms of another boot" in err and err.count("\n") == 1


def test_layout_overrides_move_the_markers(tmp_path, capsys):
    """--layout and a layout file change the markers; 'image layout' writes a file that reads back."""
    fx = FIX["linux61-4level"]
    rc, text, _ = run(capsys, "image", "layout", fx.elf)
    layout_file = tmp_path / "layout.txt"
    layout_file.write_text(text)
    rc, out, err = run(capsys, "ptdump", "--image", fx.elf, "--layout-file", layout_file)
    assert rc == 0 and out == fx.dump("kernel") and "layout" not in err     # every base given
    rc, out, _ = run(capsys, "ptdump", "--image", fx.elf, "--layout", "modules_vaddr=ffffffffa0000000")
    lines = out.splitlines()
    i = lines.index("---[ Modules ]---")
    assert lines[i + 1].startswith("0xffffffffa0000000-") and out != fx.dump("kernel")
    rc, out, _ = run(capsys, "ptdump", "--image", fx.elf, "--layout", "ldt_base=none")
    assert rc == 0 and "---[ LDT remap ]---" not in out
