"""walk / ptdump / check from the command line, on the built-in layout and on images."""

import json
import re
import subprocess
import sys

import pytest

from emu.cli.main import main
from emu.hw.paging import P, PAGE_KERNEL_RX, PAGE_SHARED, RW, PageTable
from emu.hw.phys import PhysMem


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_walk_text(capsys):
    rc, out, err = run(capsys, "walk", "ffffffff81000000", "--access", "w")
    assert rc == 1
    lines = out.splitlines()
    assert lines[0].startswith("0xffffffff81000000  write at CPL0 in A.kernel (cr3 0x")
    levels = [re.match(r"\s+(\w+)\[\s*(\d+)\]", ln).groups() for ln in lines[1:4]]
    assert levels == [("pgd", "511"), ("pud", "510"), ("pmd", "8")]       # a 2M page of kernel text
    assert lines[3].endswith("xd pat g PS D A pcd pwt u w P")
    assert lines[4] == "  -> #PF error code 0x3 (protection, write, supervisor)"


def test_walk_json_translation(capsys):
    rc, out, _ = run(capsys, "walk", "0xffffffff81000123", "--json")
    doc = json.loads(out)
    assert rc == 0
    assert doc["va"] == "0xffffffff81000123"
    assert doc["result"] == {"pa": "0x1000123", "size": 2 << 20}
    assert [lv["level"] for lv in doc["levels"]] == ["pgd", "pud", "pmd"]
    assert [lv["index"] for lv in doc["levels"]] == [511, 510, 8]
    assert "fault" not in doc


def test_walk_symbol(capsys):
    rc, out, _ = run(capsys, "walk", "entry_SYSCALL_64+0x10", "--space", "A.user", "--access", "x", "--cpl", "3",
                     "--json")
    doc = json.loads(out)
    assert doc["va"] == "0xffffffff81200010"
    assert doc["fault"] == {"vector": 14, "error_code": 0x15}     # mapped in the user PGD, supervisor


@pytest.mark.parametrize("expr,va", [
    ("USER_DATA", 0x600000),                          # the names user programs see
    ("DIRECT_MAP_BASE+0x1600000", 0xffff888001600000),
    ("A:_start", 0x400000),                           # a label of process A's program
])
def test_walk_names(capsys, expr, va):
    rc, out, _ = run(capsys, "walk", expr, "--space", "A.kernel", "--json")
    assert json.loads(out)["va"] == hex(va)


@pytest.mark.parametrize("argv,vector,ec", [
    (["0x400000", "--space", "A.user", "--cpl", "3", "--access", "w"], 14, 0x7),
    (["0x400000", "--space", "A.user", "--cpl", "3", "--access", "x"], None, None),
    (["0x400000", "--space", "A.user", "--access", "r"], 14, 0x1),           # SMAP
    (["0x400000", "--space", "A.user", "--access", "r", "--ac"], None, None),
    (["0x400000", "--space", "A.user", "--access", "x"], 14, 0x11),          # SMEP
    (["0x400000", "--space", "A.user", "--access", "x", "--no-smep"], None, None),
    # the kernel PGD's user half carries NX (PTI): no SMEP needed to refuse
    (["0x400000", "--space", "A.kernel", "--access", "x", "--no-smep"], 14, 0x11),
    (["0x500000", "--space", "A.user", "--cpl", "3"], 14, 0x4),
    (["0xffff888000000000", "--space", "A.user", "--cpl", "3"], 14, 0x4),     # PTI: no direct map
    (["0xffff888000000000", "--space", "A.user", "--cpl", "3", "--no-pti"], 14, 0x5),
    (["0x8000000000000000"], 13, 0),
])
def test_walk_json_faults(capsys, argv, vector, ec):
    rc, out, _ = run(capsys, "walk", *argv, "--json")
    doc = json.loads(out)
    if vector is None:
        assert rc == 0 and "result" in doc
    else:
        assert rc == 1 and doc["fault"] == {"vector": vector, "error_code": ec}


def test_ptdump_kernel(capsys):
    rc, out, _ = run(capsys, "ptdump")
    lines = out.splitlines()
    assert rc == 0 and lines[0] == "---[ User Space ]---"
    assert "0xffffffff81000000-0xffffffff81200000           2M     ro         PSE         x  pmd" in lines
    assert "0xffffffff81200000-0xffffffff81400000           2M     ro         PSE     GLB x  pmd" in lines


def test_ptdump_user_pgd_maps_only_what_pti_maps(capsys):
    rc, out, _ = run(capsys, "ptdump", "--space", "A.user")
    present = [ln for ln in out.splitlines() if ln.startswith("0x") and ("USR" in ln or " ro " in ln
               or " RW " in ln)]
    kernel = [ln for ln in present if ln.startswith("0xff")]
    # the per-CPU TSS page, the entry text, the cpu_entry_area pages and espfix
    assert any(ln.startswith("0xffffffff81200000-0xffffffff81400000") for ln in kernel)
    assert any(ln.startswith("0xffffffff81800000-0xffffffff81801000") for ln in kernel)
    assert all(not ln.startswith("0xffff888") for ln in kernel)              # no direct map


def test_check_kernel_is_clean(capsys):
    rc, out, err = run(capsys, "check")
    assert rc == 0 and out == "" and "0 findings in A.kernel" in err


def test_spaces(capsys):
    rc, out, _ = run(capsys, "spaces", "--json")
    names = [s["name"] for s in json.loads(out)]
    assert set(names) == {"kernel", "kernel.user", "asi.global", "A.kernel", "A.user", "A.asi",
                          "B.kernel", "B.user", "B.asi"}


def make_image(tmp_path, *, wx=False, loop=False):
    mem = PhysMem(32 << 20)
    pt = PageTable.create(mem)
    pt.map(0xFFFFFFFF81000000, 0x100000, 0x2000, PAGE_KERNEL_RX, page_size=4096)
    pt.map(0x400000, 0x200000, 0x1000, PAGE_SHARED)
    if wx:
        pt.map(0xFFFFC90000000000, 0x300000, 0x1000, P | RW)
    if loop:
        mem.write_u64(pt.root + 8 * 5, pt.root | P | RW)
    path = tmp_path / "guest.img"
    path.write_bytes(bytes(mem.buf))
    root = pt.root
    mem.close()
    return path, root


def test_image_walk_ptdump_check(tmp_path, capsys):
    path, root = make_image(tmp_path, wx=True)
    rc, out, _ = run(capsys, "walk", "0xffffffff81001004", "--image", str(path), "--cr3", hex(root), "--json")
    assert rc == 0 and json.loads(out)["result"]["pa"] == "0x101004"
    rc, out, _ = run(capsys, "ptdump", "--image", str(path), "--cr3", hex(root))
    assert "0xffffffff81000000-0xffffffff81002000           8K     ro                 GLB x  pte" in out
    rc, out, _ = run(capsys, "check", "--image", str(path), "--cr3", hex(root), "--json")
    doc = json.loads(out)
    assert rc == 1
    assert [(f["lint"], f["va"]) for f in doc["findings"]] == [("wx", "0xffffc90000000000")]


@pytest.mark.parametrize("setup,argv,message", [
    ("none", ["ptdump", "--image", "/nonexistent.img", "--cr3", "0x1000"], "cannot open image"),
    ("ok", ["ptdump", "--image", "IMG"], "--image needs --cr3"),
    ("ok", ["ptdump", "--image", "IMG", "--cr3", "0x4000000"], "outside image guest.img"),
    ("truncated", ["ptdump", "--image", "IMG", "--cr3", "ROOT"], "is outside image guest.img"),
    ("loop", ["ptdump", "--image", "IMG", "--cr3", "ROOT"], "loop in page tables"),
    ("loop", ["check", "--image", "IMG", "--cr3", "ROOT"], "loop in page tables"),
    ("ok", ["walk", "zz9", "--image", "IMG", "--cr3", "ROOT"], "bad virtual address 'zz9'"),
    ("ok", ["check", "--lint", "nope"], "unknown lint 'nope'"),
    ("ok", ["ptdump", "--space", "nope"], "unknown space 'nope'"),
    ("ok", ["walk", "no_such_symbol"], "unknown symbol 'no_such_symbol'"),
    ("ok", ["ptdump", "--ram", "3M"], "not a multiple of 2 MiB"),
])
def test_image_errors_are_one_line(tmp_path, capsys, setup, argv, message):
    path, root = make_image(tmp_path, loop=setup == "loop")
    if setup == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[:root + 4096])        # the root survives, lower tables do not
    argv = [a.replace("IMG", str(path)).replace("ROOT", hex(root)) for a in argv]
    rc, out, err = run(capsys, *argv)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("isoemu: ") and message in err


def test_no_traceback_from_the_console_script(tmp_path):
    p = subprocess.run([sys.executable, "-m", "emu.cli", "walk", "nonsense!"],
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr == "isoemu: bad virtual address 'nonsense!': expected a number like 0xffffffff81000000\n"


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("walk", "ptdump", "check", "bench"):
        assert cmd in out
