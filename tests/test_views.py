"""isoemu diff and isoemu whereis (docs/views.md): exact expectations on the
default machine, on a hand-built image and on a real kernel's tables."""

import json
import re

import pytest

from emu.cli.main import main
from emu.hw.paging import PAGE_KERNEL, PAGE_KERNEL_RX, PAGE_READONLY, PAGE_SHARED, PageTable, mode_for
from emu.hw.phys import FrameKind, PhysMem
from emu.linux import abi
from emu.linux.config import MachineConfig
from emu.tools.addrmap import MachineFrames, ReverseMap, diff_spaces, space_map
from emu.tools.matrix import MatrixMachine

from .imagekit import Fixture


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def paused():
    """The default machine at A's yield (what every inspection command shows)."""
    mm = MatrixMachine()
    mm.pause_at_yield()
    return mm


def maps_of(m):
    mode = mode_for(m.config.levels)
    return {n: space_map(n, m.mem, r, mode) for n, r in m.spaces().items()}


def secret_of(mm):
    m = mm.m
    va = m.read_u64(mm.a.image.symbols["va_secret"], "A.kernel")
    pa = m.pa_of(va, "A.user")
    return va, pa


def xpfo_of(mm):
    m = mm.m
    va = m.read_u64(mm.a.image.symbols["va_xpfo"], "A.kernel")
    return va, m.pa_of(va, "A.user")


def gmem_nodm_of(mm):
    """The frame of A's private NO_DIRECT_MAP guest_memfd page (its alias, noted while shared)."""
    m = mm.m
    return m.read_u64(mm.a.image.symbols["va_gmem_nodm_dm"], "A.kernel") - m.layout.page_offset


def range_at(d, va):
    hits = [r for r in d.ranges if r.va <= va < r.end]
    assert len(hits) <= 1
    return hits[0] if hits else None


# --- diff on the default machine --------------------------------------------------------------
def test_diff_user_kernel_under_pti(paused):
    """A.user against A.kernel (PTI): the user half differs only where the
    kernel's copy of a user PGD entry adds NX (user text: executable only in
    A.user, arch/x86/mm/pti.c pti_set_user_pgtbl); the kernel half that only
    A.kernel maps is the direct map (less the secret page, the xpfo page and the
    NO_DIRECT_MAP guest_memfd page, mapped by neither), vmalloc (kernel stacks) and the kernel image; the PTI-cloned
    entry text and cpu_entry_area are the same in both."""
    m = paused.m
    maps = maps_of(m)
    frames = MachineFrames(m.mem.frames)
    d = diff_spaces(maps["A.user"], maps["A.kernel"], frames)
    k, lay = m.kernel, m.layout
    secret_va, secret_pa = secret_of(paused)
    dm = lay.page_offset
    cases = [  # (va, diff, frame kind of the differing side or None: not in the diff)
        (abi.USER_TEXT, "permissions", "user"),
        (abi.USER_DATA, None, None),
        (secret_va, None, None),
        (dm + secret_pa, None, None),                                  # out of the direct map: in neither
        (dm + xpfo_of(paused)[1], None, None),                         # the xpfo page: likewise
        (dm + gmem_nodm_of(paused), None, None),                       # NO_DIRECT_MAP guest_memfd: the same
        (dm + k.kva_to_pa(k.sym("probe_data_ret")), "only-b", "kernel_text"),
        (dm + m.pa_of(abi.USER_DATA, "A.user"), "only-b", "user"),
        (k.sym("probe_target_ret"), "only-b", "kernel_text"),
        (k.sym("entry_probe_ret"), None, None),                        # entry text, PTI-cloned
        (k.cea["gdt"], None, None),                                    # cpu_entry_area
        (lay.vmalloc_start, "only-b", "kernel_stack"),                 # A's kernel stack
    ]
    for va, what, kind in cases:
        r = range_at(d, va)
        if what is None:
            assert r is None, (hex(va), r)
            continue
        assert r is not None and r.what == what, (hex(va), r)
        side = r.b if what == "only-b" else r.a
        assert side.frame.kind == kind, (hex(va), side)
    r = range_at(d, abi.USER_TEXT)
    assert (r.a.flags & 7, r.b.flags & 7) == (0b101, 0b001)           # user r-x | user r--
    assert {r.what for r in d.ranges} == {"permissions", "only-b"}
    assert [r for r in d.ranges if r.what == "permissions"] == [r]
    # the direct map: all of RAM but the secret page, the xpfo page and the
    # NO_DIRECT_MAP guest_memfd page, only in A.kernel
    covered = sum(min(r.end, dm + m.mem.size) - max(r.va, dm) for r in d.ranges
                  if r.va < dm + m.mem.size and r.end > dm)
    assert covered == m.mem.size - 3 * 4096


def test_diff_kernel_asi_is_the_sensitive_memory(paused):
    """A.kernel against A.asi: A.asi maps the direct map of exactly the
    non-sensitive frames, so the frames A.kernel alone maps are the
    sensitive, free and reserved ones; the sensitivity the diff reports
    (the allocator's HC_SENSITIVE flag and ASI's rule) agrees with the
    restricted table frame by frame."""
    m = paused.m
    maps = maps_of(m)
    frames = MachineFrames(m.mem.frames)
    d = diff_spaces(maps["A.kernel"], maps["A.asi"], frames)
    assert {r.what for r in d.ranges} == {"only-a"}
    dm = m.layout.page_offset
    only_kernel = set()
    for r in d.ranges:
        assert dm <= r.va < r.end <= dm + m.mem.size
        only_kernel.update(range(r.a.pa >> 12, (r.a.pa + r.size) >> 12))
    _, secret_pa = secret_of(paused)
    _, xpfo_pa = xpfo_of(paused)
    seen = set()
    for pfn in range(m.mem.size >> 12):
        cls = frames.classify(pfn)
        seen.add(cls.sensitivity)
        if pfn in (secret_pa >> 12, xpfo_pa >> 12, gmem_nodm_of(paused) >> 12):
            assert pfn not in only_kernel                 # removed from the direct map of both
        else:
            assert (pfn in only_kernel) == (cls.sensitivity != "non-sensitive"), (hex(pfn), cls)
    assert seen == {"sensitive", "non-sensitive", "n/a"}


@pytest.mark.parametrize("argv,status,first", [
    (["diff", "A.kernel", "B.kernel"], 1, r"A.kernel \(cr3 (0x\w+)\) vs B.kernel \(cr3 (0x\w+)\): 6 ranges differ"),
    (["diff", "A.user", "A.kernel", "--no-pti"], 0, r"A.user \(cr3 (0x\w+)\) vs A.kernel \(cr3 \1\): 0 ranges differ"),
])
def test_diff_cli(capsys, argv, status, first):
    rc, out, err = run(capsys, *argv)
    assert rc == status and err == ""
    assert re.fullmatch(first, out.splitlines()[0]), out
    if status == 0:
        assert out.splitlines()[-1] == "total: the spaces map the same"


def test_diff_processes_json(capsys):
    """A's and B's kernel tables: the user half differs (other frames at the
    same addresses; A's secret, xpfo page, further data pages and stack), the
    kernel half is shared."""
    rc, out, _ = run(capsys, "diff", "A.kernel", "B.kernel", "--json")
    doc = json.loads(out)
    got = [(r["start"], r["diff"], r["a"]["frame"]["owner"], r["b"] and r["b"]["frame"]["owner"])
           for r in doc["ranges"]]
    assert got == [("0x400000", "frames", "A", "B"), ("0x600000", "frames", "A", "B"), ("0x601000", "only-a", "A", None),
                   ("0x7f0000000000", "only-a", "A", None), ("0x7f0000002000", "only-a", "A", None),
                   ("0x7fffffffe000", "only-a", "A", None)]
    assert doc["ranges"][3]["a"]["frame"] == {"kind": "secret", "owner": "A", "sensitivity": "sensitive"}
    assert doc["ranges"][4]["a"]["frame"] == {"kind": "xpfo", "owner": "A", "sensitivity": "sensitive"}
    assert doc["summary"]["ranges"] == 6 and doc["summary"]["bytes"]["frames"] == 8192


# --- whereis on the default machine --------------------------------------------------------------
def test_whereis_secret_frame(paused):
    """The secret page: mapped at A's user address in A's tables (and A.asi,
    whose user half mirrors A's), its direct-map alias removed (P clear, the
    PFN inverted: set_direct_map_invalid_noflush) in every kernel table."""
    m = paused.m
    va, pa = secret_of(paused)
    dm = m.layout.page_offset + pa
    rmap = ReverseMap(list(maps_of(m).values()), MachineFrames(m.mem.frames))
    got = [(h.space, h.va, h.removed) for h in rmap.whereis(pa)]
    assert got == [("kernel", dm, True), ("A.kernel", va, False), ("A.kernel", dm, True), ("A.user", va, False),
                   ("A.asi", va, False), ("B.kernel", dm, True)]
    assert rmap.frame(pa)[2].as_dict() == {"kind": "secret", "owner": "A", "sensitivity": "sensitive"}


def test_whereis_secret_frame_after_release():
    """After munmap and close, secretmem_free_folio restored the direct map:
    the frame is mapped again, at its direct-map address only, in every
    kernel table (and not in ASI's: a free frame is not non-sensitive)."""
    mm = MatrixMachine()
    mm.pause_at_yield()
    _, pa = secret_of(mm)
    mm.finish()
    m = mm.m
    rmap = ReverseMap(list(maps_of(m).values()), MachineFrames(m.mem.frames))
    dm = m.layout.page_offset + pa
    assert [(h.space, h.va, h.removed, h.flags) for h in rmap.whereis(pa)] == [
        ("kernel", dm, False, 2), ("A.kernel", dm, False, 2), ("B.kernel", dm, False, 2)]   # kernel rw-
    assert rmap.frame(pa)[2].kind == "free"


def test_whereis_user_data_cli(capsys):
    rc, out, err = run(capsys, "whereis", "--va", "USER_DATA", "--space", "A.user")
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].endswith("(4K), user, owner A, sensitive")
    assert [ln.split()[0] for ln in lines[2:-1]] == ["kernel", "A.kernel", "A.kernel", "A.user", "A.asi", "B.kernel"]
    assert lines[-1] == "6 mappings in 5 spaces"


def test_whereis_kernel_text_json(capsys):
    """The kernel image: at __START_KERNEL_map and in the direct map of every
    kernel table and ASI's (non-sensitive), never in a PTI user table (PCID on)."""
    rc, out, _ = run(capsys, "whereis", "1000000", "--json")
    doc = json.loads(out)
    assert doc["frame"] == {"start": "0x1000000", "size": 4096, "kind": "kernel_text", "owner": "kernel",
                            "sensitivity": "non-sensitive"}
    spaces = ["kernel", "asi.global", "A.kernel", "A.asi", "B.kernel", "B.asi"]
    assert [(x["space"], x["va"], x["executable"], x["page_size"]) for x in doc["mappings"]] == [
        (s, va, x, 1 << 21) for s in spaces for va, x in (("0xffff888001000000", False), ("0xffffffff81000000", True))]
    assert doc["summary"] == {"mappings": 12, "removed": 0, "spaces": 6}


# --- a hand-built image ----------------------------------------------------------------------------
@pytest.fixture
def image(tmp_path):
    """Two roots sharing a frame: at 0x400000 read-only in one, writable in
    the other; a frame only the first maps; an alias of the first at a
    kernel address, executable."""
    mem = PhysMem(32 << 20)
    a = PageTable.create(mem)
    b = PageTable.create(mem)
    a.map(0x400000, 0x200000, 0x2000, PAGE_READONLY)
    b.map(0x400000, 0x200000, 0x2000, PAGE_SHARED)
    a.map(0x600000, 0x300000, 0x1000, PAGE_SHARED)
    a.map(0xFFFFFFFF81000000, 0x200000, 0x1000, PAGE_KERNEL_RX)
    b.map(0xFFFF888000200000, 0x200000, 0x200000, PAGE_KERNEL, page_size=0x200000)
    path = tmp_path / "guest.img"
    path.write_bytes(bytes(mem.buf))
    roots = (a.root, b.root)
    mem.close()
    return str(path), roots


def test_image_diff(capsys, image):
    path, (ra, rb) = image
    rc, out, err = run(capsys, "diff", f"{ra:x}", f"{rb:x}", "--image", path, "--json")
    assert rc == 1
    doc = json.loads(out)
    got = [(r["start"], r["end"], r["diff"], r["a"] and (r["a"]["pa"], r["a"]["writable"], r["a"]["page_size"]),
            r["b"] and (r["b"]["pa"], r["b"]["writable"], r["b"]["page_size"])) for r in doc["ranges"]]
    assert got == [
        ("0x400000", "0x402000", "permissions", ("0x200000", False, 4096), ("0x200000", True, 4096)),
        ("0x600000", "0x601000", "only-a", ("0x300000", True, 4096), None),
        ("0xffff888000200000", "0xffff888000400000", "only-b", None, ("0x200000", True, 1 << 21)),
        ("0xffffffff81000000", "0xffffffff81001000", "only-a", ("0x200000", False, 4096), None),
    ]
    assert doc["ranges"][0]["a"]["frame"] == {"kind": "page", "owner": None, "sensitivity": "unknown"}


def test_image_whereis_aliases(capsys, image):
    path, (ra, rb) = image
    rc, out, _ = run(capsys, "whereis", "200000", "--image", path, "--cr3", f"{ra:x}", "--cr3", f"{rb:x}", "--json")
    assert rc == 0
    doc = json.loads(out)
    assert [(x["space"], x["va"], x["writable"], x["executable"], x["page_size"]) for x in doc["mappings"]] == [
        (f"{ra:#x}", "0x400000", False, False, 4096),
        (f"{ra:#x}", "0xffffffff81000000", False, True, 4096),
        (f"{rb:#x}", "0x400000", True, False, 4096),
        (f"{rb:#x}", "0xffff888000200000", True, False, 1 << 21),
    ]
    # a page-table frame of the walked roots is named so
    rc, out, _ = run(capsys, "whereis", f"{ra:x}", "--image", path, "--cr3", f"{ra:x}", "--json")
    assert json.loads(out)["frame"]["kind"] == "pgtable"


def test_real_kernel_pti_pair(capsys):
    """Linux 6.1's kernel and user PGDs (PTI, PCID): the user half differs
    only by the NX of the kernel's copy of user entries; the kernel half the
    user PGD lacks is everything but the cpu_entry_area, entry text and
    ESPfix; the memfd_secret page is mapped alike in both."""
    fx = Fixture("linux61-4level")
    k, u = fx.pgd, fx.pgd + 0x1000
    rc, out, _ = run(capsys, "diff", f"{k:x}", f"{u:x}", "--image", fx.elf, "--json")
    doc = json.loads(out)
    assert rc == 1
    half = 1 << 63
    for r in doc["ranges"]:
        start = int(r["start"], 16)
        if start < half:
            assert r["diff"] == "permissions" and not r["a"]["executable"] and r["b"]["executable"], r
        else:
            assert r["diff"] == "only-a", r
    secret = fx.probe["memfd_secret page"]
    kernel_text = 0xFFFFFFFF81000000
    cea = 0xFFFFFE0000000000
    for va, want in ((secret, None), (kernel_text, "only-a"), (cea, None)):
        hits = [r["diff"] for r in doc["ranges"] if int(r["start"], 16) <= va < int(r["end"], 16)]
        assert hits == ([want] if want else []), hex(va)


@pytest.mark.parametrize("argv,message", [
    (["diff", "A.user", "A.nope"], "isoemu: unknown space 'A.nope': choose from kernel, kernel.user, asi.global, "
                                   "A.kernel, A.user, A.asi, B.kernel, B.user, B.asi"),
    (["whereis", "10000000"], "isoemu: physical address 0x10000000 is outside RAM (size 0x10000000)"),
    (["whereis", "zz"], "isoemu: bad physical address 'zz': expected a hexadecimal number like 0xffffffff81000000"),
    (["whereis"], "isoemu: whereis: PA (or --va VA) is required"),
    (["whereis", "1000", "--space", "A.user"], "isoemu: --space names the space of --va; a PA is looked up in "
                                               "every space"),
    (["whereis", "--va", "0", "--space", "A.user"], "isoemu: --va 0x0 is not mapped in A.user: "),
    (["diff", "A.user", "A.kernel", "--cr3", "1000"], "isoemu: --cr3: not with diff (the spaces are A and B: CR3 "
                                                      "values with --image)"),
    (["whereis", "1000", "--cr3", "1000"], "isoemu: --cr3 needs --image FILE"),
])
def test_bad_input(capsys, argv, message):
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith(message), err


def test_bad_image_space(capsys, image):
    path, (ra, rb) = image
    rc, out, err = run(capsys, "diff", f"{ra:x}", "1f000000", "--image", path)
    assert rc == 2 and err.count("\n") == 1 and "1f000000" in err, err


def test_frame_kinds_named(paused):
    """Every kind of frame the machine has is named by the diff's frame source."""
    frames = MachineFrames(paused.m.mem.frames)
    kinds = {frames.classify(p).kind for p in range(paused.m.mem.size >> 12)}
    assert kinds >= {k.name.lower() for k in (FrameKind.RESERVED, FrameKind.PGTABLE, FrameKind.KERNEL_TEXT,
                                              FrameKind.KERNEL_DATA, FrameKind.KERNEL_STACK, FrameKind.USER,
                                              FrameKind.SECRET, FrameKind.FREE)}
    assert MachineConfig().pti
