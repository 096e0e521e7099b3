"""walk / ptdump / check from the command line, on the built-in layout and on images."""

import json
import re
import subprocess
import sys

import pytest

from emu.cli import main
from emu.paging import NX, P, PAGE_KERNEL, PAGE_KERNEL_RX, PAGE_SHARED, RW, PageTable
from emu.phys import PhysMem


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_walk_text(capsys):
    rc, out, err = run(capsys, "walk", "ffffffff81000000", "--access", "w")
    assert rc == 1
    lines = out.splitlines()
    assert lines[0].startswith("0xffffffff81000000  write at CPL0 in demo.kernel")
    levels = [re.match(r"\s+(\w+)\[\s*(\d+)\]", ln).groups() for ln in lines[1:5]]
    assert levels == [("pgd", "511"), ("pud", "510"), ("pmd", "8"), ("pte", "0")]
    assert lines[4].endswith("xd G pat D A pcd pwt u w P")
    assert lines[5] == "  -> #PF error code 0x3 (protection, write, supervisor)"


def test_walk_json_translation(capsys):
    rc, out, _ = run(capsys, "walk", "0xffffffff81000123", "--json")
    doc = json.loads(out)
    assert rc == 0
    assert doc["va"] == "0xffffffff81000123"
    assert doc["result"] == {"pa": "0x1000123", "size": 4096}
    assert [lv["level"] for lv in doc["levels"]] == ["pgd", "pud", "pmd", "pte"]
    assert [lv["index"] for lv in doc["levels"]] == [511, 510, 8, 0]
    assert "fault" not in doc


@pytest.mark.parametrize("argv,vector,ec", [
    (["0x400000", "--cpl", "3", "--access", "w"], 14, 0x7),
    (["0x400000", "--access", "r"], 14, 0x1),                      # SMAP
    (["0x400000", "--access", "r", "--ac"], None, None),
    (["0x400000", "--access", "x"], 14, 0x11),                     # SMEP
    (["0x400000", "--access", "x", "--no-smep"], None, None),
    (["0x500000", "--cpl", "3"], 14, 0x4),
    (["0x8000000000000000"], 13, 0),
])
def test_walk_json_faults(capsys, argv, vector, ec):
    rc, out, _ = run(capsys, "walk", *argv, "--json")
    doc = json.loads(out)
    if vector is None:
        assert rc == 0 and "result" in doc
    else:
        assert rc == 1 and doc["fault"] == {"vector": vector, "error_code": ec}


def test_ptdump_demo(capsys):
    rc, out, _ = run(capsys, "ptdump")
    lines = out.splitlines()
    assert rc == 0 and lines[0] == "---[ User Space ]---"
    assert "0xffffffff81000000-0xffffffff81010000          64K     ro                 GLB x  pte" in lines


def test_check_demo_is_clean(capsys):
    rc, out, err = run(capsys, "check")
    assert rc == 0 and out == "" and "0 findings" in err


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
