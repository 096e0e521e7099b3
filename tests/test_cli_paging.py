"""walk / ptdump / check from the command line, on the built-in layout and on images."""

import json
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
    assert rc == 1 and err == ""
    assert out.splitlines() == [
        "0xffffffff81000000  write at CPL0 in A.kernel (cr3 0x3e000)",
        "  control  WP SMEP SMAP NXE pke ac PKRU=0x0 la57  CPL0 (the default in A.kernel; --cpl to choose)",
        "  pgd[511]  0x0000000000005067  xd g ps D A pcd pwt U W P",
        "  pud[510]  0x0000000000006067  xd g ps D A pcd pwt U W P",
        "  pmd[  8]  0x00000000010000e1  xd pat g PS D A pcd pwt u w P",          # a 2M page of kernel text
        "  -> #PF error code 0x3 (protection, write, supervisor)",
        "     R/W: write to a read-only page with CR0.WP on; R/W clear at pmd (PDE)",
    ]


@pytest.mark.parametrize("argv,cpl,note", [
    (["400000", "--space", "A.user"], 3, " (the default in A.user; --cpl to choose)"),
    (["400000", "--space", "B.user", "--cpl", "3"], 3, ""),
    (["400000", "--space", "A.user", "--cpl", "0"], 0, ""),
    (["400000", "--space", "A.asi"], 0, " (the default in A.asi; --cpl to choose)"),
    (["400000", "--space", "kernel.user"], 3, " (the default in kernel.user; --cpl to choose)"),
])
def test_walk_default_cpl_follows_the_space(capsys, argv, cpl, note):
    rc, out, _ = run(capsys, "walk", *argv)
    assert out.splitlines()[1].endswith(f"la57  CPL{cpl}{note}")
    rc, out, _ = run(capsys, "walk", *argv, "--json")
    doc = json.loads(out)
    assert doc["cpl"] == cpl and doc["cpl_default"] is bool(note)


@pytest.mark.parametrize("flags,control", [
    ([], "WP SMEP SMAP NXE pke ac PKRU=0x0 la57"),
    (["--no-wp", "--ac", "--no-smep"], "wp smep SMAP NXE pke AC PKRU=0x0 la57"),
    (["--pkru", "0x55555554"], "WP SMEP SMAP NXE PKE ac PKRU=0x55555554 la57"),
    (["--pkru", "12"], "WP SMEP SMAP NXE PKE ac PKRU=0xc la57"),           # decimal without 0x
    (["--set", "smap=off,nx=off"], "WP SMEP smap nxe pke ac PKRU=0x0 la57"),
    (["--la57"], "WP SMEP SMAP NXE pke ac PKRU=0x0 LA57"),
])
def test_walk_prints_the_control_state(capsys, flags, control):
    rc, out, _ = run(capsys, "walk", "ffffffff81000000", *flags)
    assert out.splitlines()[1].startswith(f"  control  {control}  CPL0")


def test_walk_json_translation(capsys):
    rc, out, _ = run(capsys, "walk", "0xffffffff81000123", "--json")
    doc = json.loads(out)
    assert rc == 0
    assert set(doc) == {"va", "space", "cr3", "access", "cpl", "cpl_default", "control", "levels", "result"}
    assert (doc["va"], doc["space"], doc["cr3"], doc["access"], doc["cpl"]) == \
        ("0xffffffff81000123", "A.kernel", "0x3e000", "r", 0)
    assert doc["result"] == {"pa": "0x1000123", "size": 2 << 20, "user": False, "writable": False, "nx": False}
    assert [lv["level"] for lv in doc["levels"]] == ["pgd", "pud", "pmd"]
    assert [lv["index"] for lv in doc["levels"]] == [511, 510, 8]
    assert "\n" not in out.strip()                                   # compact: one line


def test_walk_json_pretty_is_the_same_document(capsys):
    _, compact, _ = run(capsys, "walk", "400000", "--space", "A.user", "--json")
    _, pretty, _ = run(capsys, "walk", "400000", "--space", "A.user", "--json", "--pretty")
    assert pretty.count("\n") > 10 and json.loads(pretty) == json.loads(compact)


def test_walk_symbol(capsys):
    rc, out, _ = run(capsys, "walk", "entry_SYSCALL_64+10", "--space", "A.user", "--access", "x", "--cpl", "3",
                     "--json")
    doc = json.loads(out)
    assert doc["va"] == "0xffffffff81200010"                      # +10 is hexadecimal
    # the user PGD maps the entry text, but its top-level entry is the kernel's: supervisor
    assert doc["fault"] == {"vector": 14, "error_code": 0x15, "level": "pgd", "rule": "user_supervisor",
                            "reason": "U/S: CPL3 fetch of a supervisor page; U/S clear at pgd (PML4E)"}


@pytest.mark.parametrize("expr,va", [
    ("USER_DATA", 0x600000),                          # the names user programs see
    ("DIRECT_MAP_BASE+0x1600000", 0xffff888001600000),
    ("DIRECT_MAP_BASE + 1600000", 0xffff888001600000),  # every number in an expression is hex
    ("USER_DATA + 8", 0x600008),
    ("USER_DATA - 10", 0x5ffff0),
    ("A:_start", 0x400000),                           # a label of process A's program
    ("400000", 0x400000),                             # hexadecimal without 0x
    ("0x400000", 0x400000),
    ("ffff_8880_0000_0000", 0xffff888000000000),
])
def test_walk_names(capsys, expr, va):
    rc, out, err = run(capsys, "walk", expr, "--space", "A.kernel", "--json")
    assert json.loads(out)["va"] == hex(va) and err == ""


def test_walk_name_that_is_also_hex_gets_a_note(capsys, monkeypatch):
    """A word that is both a symbol and a hex number is the symbol, and a note on stderr says so."""
    from emu.cli import paging

    real = paging.space_from_args

    def with_label_bad(args):
        space = real(args)
        names = space.symbols
        space.symbols = lambda n: 0x600000 if n == "bad" else names(n)
        return space

    monkeypatch.setattr(paging, "space_from_args", with_label_bad)
    rc, out, err = run(capsys, "walk", "bad", "--space", "A.user", "--json")
    assert json.loads(out)["va"] == "0x600000"
    assert err == "isoemu: note: 'bad' is read as the name bad (0x600000); write 0xbad for the number\n"
    rc, out, err = run(capsys, "walk", "0xbad", "--space", "A.user", "--json")
    assert json.loads(out)["va"] == "0xbad" and err == ""


@pytest.mark.parametrize("argv,vector,ec,rule", [
    (["0x400000", "--space", "A.user", "--cpl", "3", "--access", "w"], 14, 0x7, "read_write"),
    (["0x400000", "--space", "A.user", "--access", "w"], 14, 0x7, "read_write"),      # CPL3: the default
    (["0x400000", "--space", "A.user", "--cpl", "3", "--access", "x"], None, None, None),
    (["0x400000", "--space", "A.user", "--cpl", "0", "--access", "r"], 14, 0x1, "smap"),
    (["0x400000", "--space", "A.user", "--cpl", "0", "--access", "r", "--ac"], None, None, None),
    (["0x400000", "--space", "A.user", "--cpl", "0", "--access", "x"], 14, 0x11, "smep"),
    (["0x400000", "--space", "A.user", "--cpl", "0", "--access", "x", "--no-smep"], None, None, None),
    (["0x400000", "--space", "A.user", "--cpl", "0", "--access", "x", "--set", "smep=off"], None, None, None),
    # the kernel PGD's user half carries NX (PTI): no SMEP needed to refuse
    (["0x400000", "--space", "A.kernel", "--access", "x", "--no-smep"], 14, 0x11, "execute_disable"),
    (["0x500000", "--space", "A.user", "--cpl", "3"], 14, 0x4, "not_present"),
    (["0xffff888000000000", "--space", "A.user", "--cpl", "3"], 14, 0x4, "not_present"),  # PTI: no direct map
    (["0xffff888000000000", "--space", "A.user", "--cpl", "3", "--no-pti"], 14, 0x5, "user_supervisor"),
    (["0xffff888000000000", "--space", "A.user", "--set", "pti=off"], 14, 0x5, "user_supervisor"),
    (["0x400000", "--space", "A.user", "--pkru", "0x1"], 14, 0x25, None),       # user text has key 0: AD0
    (["0x400000", "--space", "A.user", "--pkru", "4"], None, None, None),       # AD1: not key 0
    (["0x8000000000000000"], 13, 0, "non_canonical"),
])
def test_walk_json_faults(capsys, argv, vector, ec, rule):
    rc, out, _ = run(capsys, "walk", *argv, "--json")
    doc = json.loads(out)
    if vector is None:
        assert rc == 0 and "result" in doc and "fault" not in doc
    else:
        assert rc == 1 and (doc["fault"]["vector"], doc["fault"]["error_code"]) == (vector, ec)
        assert doc["fault"]["rule"] == (rule or "protection_key")
        assert doc["fault"]["reason"]


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
    ("ok", ["walk", "zz9", "--image", "IMG", "--cr3", "ROOT"], "bad virtual address 'zz9'"),
    ("ok", ["walk", "USER_DATA", "--image", "IMG", "--cr3", "ROOT"], "bad virtual address 'USER_DATA'"),
    ("ok", ["check", "--lint", "nope"], "unknown lint 'nope'"),
    ("ok", ["check", "--lint", "wxx"], "unknown lint 'wxx' (did you mean 'wx'?)"),
    ("ok", ["ptdump", "--space", "nope"], "unknown space 'nope'"),
    ("ok", ["walk", "no_such_symbol"], "unknown name 'no_such_symbol'"),
    ("ok", ["ptdump", "--ram", "33M"], "not a multiple of 2 MiB"),
    # options that mean nothing for the chosen tables
    ("ok", ["ptdump", "--cr3", "ROOT"], "--cr3 needs --image FILE"),
    ("ok", ["walk", "400000", "--cr3", "1000"], "--cr3 needs --image FILE"),
    ("ok", ["ptdump", "--image", "IMG", "--cr3", "ROOT", "--space", "A.user"], "--space: not with --image"),
    ("ok", ["ptdump", "--image", "IMG", "--cr3", "ROOT", "--no-pti"], "--no-pti: not with --image"),
    ("ok", ["check", "--image", "IMG", "--cr3", "ROOT", "--set", "pti=off"], "--set: not with --image"),
    ("ok", ["walk", "0", "--image", "IMG", "--cr3", "ROOT", "--ram", "1G"], "--ram: not with --image"),
    ("ok", ["ptdump", "--image", "IMG", "--cr3", "xyz"], "bad --cr3 value 'xyz'"),
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


@pytest.mark.parametrize("setup,command,problem", [
    ("truncated", "ptdump", "pud table at {t} (for 0x0) is outside image guest.img"),
    ("truncated", "check", "pud table at {t} (for 0x0) is outside image guest.img"),
    ("loop", "ptdump", "loop in page tables: the pgd entry at {e} (for 0x28000000000) points back"),
    ("loop", "check", "loop in page tables: the pgd entry at {e} (for 0x28000000000) points back"),
])
def test_broken_tables_are_reported_once_and_the_rest_is_walked(tmp_path, capsys, setup, command, problem):
    """A table outside the image or a loop: named once, the rest of the tree still dumped or checked."""
    path, root = make_image(tmp_path, loop=setup == "loop")
    data = path.read_bytes()
    pud = int.from_bytes(data[root:root + 8], "little") & ~0xFFF
    if setup == "truncated":
        path.write_bytes(data[:pud])        # the tables of the user half are cut off
    problem = problem.format(t=hex(pud), e=hex(root + 8 * 5))
    rc, out, err = run(capsys, command, "--image", str(path), "--cr3", hex(root), "--json")
    doc = json.loads(out)
    assert rc == 1
    if command == "ptdump":
        assert [p for p in doc["problems"] if problem in p] and len(doc["problems"]) == 1
        # the kernel half is still dumped: the kernel text mapping survives
        assert any(line.startswith("0xffffffff81000000-0xffffffff81002000") for line in doc["lines"])
    else:
        broken = [f for f in doc["findings"] if f["lint"] == "broken"]
        assert len(broken) == 1 and problem in broken[0]["message"]
    rc, out, err = run(capsys, command, "--image", str(path), "--cr3", hex(root))
    assert rc == 1 and (problem in err if command == "ptdump" else problem in out)


def test_image_cr3_is_hexadecimal(tmp_path, capsys):
    """--cr3 1000 is 0x1000, as every CR3 value: the same root with or without 0x."""
    path, root = make_image(tmp_path)
    assert root < 0x10000
    rc, with_0x, _ = run(capsys, "ptdump", "--image", str(path), "--cr3", hex(root))
    rc2, without, _ = run(capsys, "ptdump", "--image", str(path), "--cr3", f"{root:x}")
    assert rc == rc2 == 0 and with_0x == without and "0xffffffff81000000" in without


def test_image_la57_is_allowed(tmp_path, capsys):
    path, root = make_image(tmp_path)
    rc, out, err = run(capsys, "walk", "0", "--image", str(path), "--cr3", hex(root), "--la57", "--json")
    assert rc == 1 and json.loads(out)["control"]["la57"] is True
    # what was assumed is said: no registers, no MAXPHYADDR (the paging mode was given)
    assert err.splitlines() == [
        "isoemu: note: no registers (--regs FILE, or an image with notes): assumed CR0.WP, CR4.SMEP, "
        "CR4.SMAP and EFER.NXE set, CR4.PKE clear",
        "isoemu: note: MAXPHYADDR unknown: assumed 52, so no address bit is taken for a reserved one "
        "(--maxphyaddr N)"]


def test_ptdump_json(capsys):
    rc, out, _ = run(capsys, "ptdump", "--space", "A.user", "--json")
    doc = json.loads(out)
    assert rc == 0 and set(doc) == {"space", "cr3", "lines"}
    assert doc["space"] == "A.user" and doc["cr3"] == "0x3f000" and doc["lines"][0] == "---[ User Space ]---"
    rc, text, _ = run(capsys, "ptdump", "--space", "A.user")
    assert text.splitlines() == doc["lines"]


def test_spaces_with_set(capsys):
    rc, out, _ = run(capsys, "spaces", "--set", "pti=off", "--json")
    rows = {s["name"]: s for s in json.loads(out)}
    assert rows["A.user"]["cr3"] == rows["A.kernel"]["cr3"]          # no PTI: one table per process
    assert rows["A.user"]["description"].endswith("(no PTI: its only table)")
    rc, out, _ = run(capsys, "spaces", "--json")
    rows = {s["name"]: s for s in json.loads(out)}
    assert rows["A.user"]["cr3"] != rows["A.kernel"]["cr3"]


@pytest.mark.parametrize("opt", ["--space", "--image", "--cr3"])
def test_spaces_takes_no_space_options(capsys, opt):
    rc, _, err = run(capsys, "spaces", opt, "x")
    assert rc == 2 and err.startswith("isoemu: spaces: unrecognized argument") and err.count("\n") == 1


def test_no_traceback_from_the_console_script(tmp_path):
    p = subprocess.run([sys.executable, "-m", "emu.cli", "walk", "nonsense!"],
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr == "isoemu: bad virtual address 'nonsense!': unknown name 'nonsense'\n"


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("walk", "ptdump", "check", "bench"):
        assert cmd in out
