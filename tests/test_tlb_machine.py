"""The TLB model on the whole machine (docs/tlb.md): Linux's flushes leave
nothing stale in any configuration; each omission the stub can inject is
caught (asm/tlb/*.S run the programs; here the matrix, the runner's reports,
the command line and the limits of what one CPU can show)."""

import json

import pytest

from emu.cli.main import main
from emu.linux.config import MachineConfig
from emu.tools.asmtest import run_test
from emu.tools.matrix import run_matrix

# configurations whose flushes differ: PTI's user PCID and its deferred flush,
# INVPCID or CR4.PGE/CR3 reloads, ASI's CR3 writes, no PCID at all, 5 levels
CLEAN = [
    dict(),
    dict(invpcid=False),
    dict(asi=False),
    dict(asi=False, invpcid=False),
    dict(pcid=False),
    dict(pti=False),
    dict(pti=False, asi=False),
    dict(pti=False, asi=False, pcid=False),
    dict(la57=True),
    dict(unmapped="pmd-cache"),
]


def _id(kw):
    return ",".join(f"{k}={v}" for k, v in kw.items()) or "default"


@pytest.mark.parametrize("kw", CLEAN, ids=[_id(k) for k in CLEAN])
def test_matrix_leaves_nothing_stale(kw):
    r = run_matrix(MachineConfig(**kw))
    assert [f.line() for f in r.findings] == []
    assert r.mismatches == []
    assert not any(c.stale for c in r.cells)


def test_matrix_marks_the_cells_a_stale_translation_serves():
    """secretmem_noflush: the kernel's probes of the secret page's direct-map
    alias are stale accesses (check: the CPU still faults; the cell says so)."""
    cfg = MachineConfig(asi=False, inject=frozenset({"secretmem_noflush"}))
    r = run_matrix(cfg)
    stale = sorted((c.region, c.access, c.space) for c in r.cells if c.stale)
    assert stale == [("secret_direct_map", "r", "A.kernel"), ("secret_direct_map", "w", "A.kernel")]
    # the three probes (read, and the write's read and write), then the release
    # frees the page while the kernel PCID may still cache its alias
    assert [f.finding for f in r.findings] == ["stale-access"] * 3 + ["freed-while-cached"]
    assert r.mismatches == [] and r.failed
    lazy = run_matrix(cfg.replace(tlb="lazy"))
    # lazy: the stale translation serves them, so they no longer fault as expected
    assert sorted((c.region, c.access, c.space, c.got.text()) for c in lazy.mismatches) == [
        ("secret_direct_map", "r", "A.kernel", "ok"), ("secret_direct_map", "w", "A.kernel", "ok")]
    assert all(f.served for f in lazy.findings if f.finding == "stale-access")


def test_asi_unmap_noflush_is_masked_on_one_cpu():
    """ASI's unmap of a non-sensitive page without its flush is invisible on
    one CPU: the page leaves only the restricted tables, whose PCIDs Linux
    invalidates lazily anyway (flush_tlb_one_kernel sets invalidate_other)
    and every asi_enter writes CR3 without NOFLUSH (RFC v2), while the pages
    are freed on the full kernel tables.  With and without the injection the
    restricted PCIDs hold the same stale translations, made by asi_unmap_page,
    and nothing uses them: no finding either way (docs/tlb.md: what needs
    a second CPU)."""
    src = ("_start:\n    mov eax, SYS_getpid\n    syscall\n    mov eax, SYS_exit\n    xor edi, edi\n"
           "    syscall\n")
    from emu.linux.machine import Machine
    from emu.linux.program import assemble_program

    def run(inject):
        m = Machine(MachineConfig(inject=frozenset(inject)), record_events=False)
        m.add_process("A", assemble_program(src, "t.S", m.layout))
        m.boot()
        m.run(5_000_000)
        # translations (not paging-structure-cache entries) the restricted
        # PCIDs hold to frames that went back to the allocator
        return m.findings, [(r.pcid, r.va, m.symbolize(r.write.rip)) for r in m.tlb.model.cached()
                            if r.kind == "tlb" and r.pcid & 0x600 and r.freed is not None]

    findings, residue = run({"asi_unmap_noflush"})
    assert findings == [] and residue
    assert all(w.startswith("asi_unmap_page+") for _, _, w in residue), residue
    assert run(set()) == ([], residue)


# --- the runner ------------------------------------------------------------------------------------
LEAK = """; isoemu: asi=off inject=secretmem_noflush tlb=TLB
.include "isoemu.inc"
.text
_start:
    secret_map r13
    mov byte ptr [r13], 0x5a
    mov eax, SYS_direct_map_alias
    mov rdi, r13
    syscall
    mov r14, rax
    sys_probe probe_read, r14, PROBE_READ, PROBE_FULL
    mov eax, SYS_exit
    xor edi, edi
exit_call:
    syscall
"""


@pytest.mark.parametrize("tlb,expect,headlines", [
    # no expectation: both findings fail the test, each with the finding and where
    ("check", "", ["unexpected TLB finding in process A", "unexpected TLB finding in process A"]),
    # expected where they happen: passes
    ("check", "; expect: probe_read stale stale-access\n; expect: exit_call stale\n", []),
    # the wrong kind at the right place: the finding made there is unexpected,
    # and the expectation names what it got instead
    ("check", "; expect: probe_read stale freed-while-cached\n; expect: exit_call stale\n",
     ["unexpected TLB finding in process A", "t.S:2: expected probe_read stale freed-while-cached"]),
    # with the model off there is nothing to see, and the report says why
    ("off", "; expect: probe_read stale\n", ["t.S:2: expected probe_read stale"]),
])
def test_runner_reports_findings(tmp_path, tlb, expect, headlines):
    t = tmp_path / "t.S"
    src = LEAK.replace("tlb=TLB", f"tlb={tlb}")
    t.write_text(src.replace(".include", expect + ".include", 1))
    res = run_test(str(t), name="t.S")
    assert [f.headline for f in res.failures] == headlines
    if tlb == "off":
        assert res.failures[0].details[0] == "got the TLB model is off (tlb=off)"
    elif len(headlines) == 2 and headlines[1].startswith("unexpected"):
        kinds = sorted(f.details[0].split()[0] for f in res.failures)
        assert kinds == ["freed-while-cached", "stale-access"]
        assert any("sys_probe probe_read" in d for f in res.failures for d in f.details)
    elif headlines:
        assert res.failures[0].details[0].startswith("stale-access pcid 0x001 va ")
        assert res.failures[1].details[0].startswith("got stale-access, not freed-while-cached: stale-access ")


# --- the command line ------------------------------------------------------------------------------
def _cli(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_matrix_with_findings_fails(capsys):
    rc, out, _ = _cli(capsys, "matrix", "--inject", "secretmem_noflush", "--no-asi")
    assert rc == 1
    assert "159 cells, 0 mismatches\n4 TLB findings (docs/tlb.md):\n  stale-access pcid 0x001 va " in out
    assert "#PF 0x0 stale" in out
    rc, out, _ = _cli(capsys, "matrix", "--json", "--inject", "secretmem_noflush", "--no-asi")
    d = json.loads(out)
    assert rc == 1 and d["summary"]["findings"] == 4
    assert {f["finding"] for f in d["findings"]} == {"stale-access", "freed-while-cached"}
    assert {f["cpu"] for f in d["findings"]} == {0}           # the CPU whose TLB holds it (one CPU)
    assert sum(c["stale"] for c in d["cells"]) == 2


@pytest.mark.parametrize("argv,message", [
    (["stats", "--tlb", "eager"], "isoemu: tlb=eager: use one of off, check, lazy"),
    (["stats", "--inject", "munmap_nofush"], "isoemu: inject=munmap_nofush: unknown name 'munmap_nofush'"),
    (["stats", "--tlb", "lazy", "--set", "tlb=check"], "isoemu: --tlb lazy contradicts --set tlb=check"),
    (["walk", "0", "--image", "/dev/null", "--cr3", "1000", "--tlb", "off"], "isoemu: --tlb: not with --image"),
])
def test_cli_tlb_flags_refuse_bad_input(capsys, argv, message):
    rc, out, err = _cli(capsys, *argv)
    assert rc == 2 and out == ""
    assert err.startswith(message), err
    assert err.count("\n") == 1


def test_cli_tlb_flag_is_the_switch(capsys):
    _, by_flag, _ = _cli(capsys, "stats", "--json", "--tlb", "off")
    _, by_set, _ = _cli(capsys, "stats", "--json", "--set", "tlb=off")
    assert by_flag == by_set
    assert not any(k.startswith("tlb_") for k in json.loads(by_flag)["boot"])
    _, default, _ = _cli(capsys, "stats", "--json")
    assert "tlb_flush_cr3" in json.loads(default)["secret_released"]


# --- the debugger ----------------------------------------------------------------------------------
def _leak_debugger(tlb="check"):
    from emu.linux.machine import Machine
    from emu.linux.program import assemble_program
    from emu.tools.debug import Debugger

    src = LEAK.split("\n", 1)[1]                       # without the header line
    m = Machine(MachineConfig(asi=False, tlb=tlb, inject=frozenset({"secretmem_noflush"})))
    m.add_process("A", assemble_program(src, "leak.S", m.layout))
    m.boot()
    return Debugger(m)


@pytest.mark.parametrize("kind,stops", [
    (None, ["stale-access", "freed-while-cached"]),
    ("freed-while-cached", ["freed-while-cached"]),
    ("table-freed-while-cached", []),
])
def test_debugger_catch_stale(kind, stops):
    d = _leak_debugger()
    d.catch_stale(kind)
    seen = []
    while True:
        stop = d.cont()
        if stop.reason != "breakpoint":
            assert stop.reason == "halt"
            break
        seen.append(stop.event.finding)
        assert str(stop).startswith(f"Catchpoint 1: {stop.event.finding} pcid 0x001 va 0xffff888")
    assert seen == stops


def test_debugger_info_tlb():
    d = _leak_debugger()
    d.catch_stale("stale-access")
    d.cont()
    held = d.tlb()
    assert [h["pcid"] for h in held] == [0x001, 0x801, None]
    assert held[0]["current"] and held[0]["spaces"] == ["A.kernel"]
    assert held[1]["spaces"] == ["A.user"] and held[1]["stale"] == []
    (line,) = held[0]["stale"]
    assert "(supervisor RW, pte) made stale by entry at " in line and "set_direct_map_invalid_noflush+" in line
    assert d.tlb(0x801) == [held[1]]


@pytest.mark.parametrize("call,message", [
    (lambda d: d.catch_stale("stale-acces"), "unknown TLB finding 'stale-acces' (did you mean 'stale-access'?)"),
    (lambda d: d.tlb(0x123), "pcid 0x123 holds nothing; known: 0x1"),        # before it runs
])
def test_debugger_tlb_errors(call, message):
    from emu.tools.debug import DebugError

    with pytest.raises(DebugError) as e:
        call(_leak_debugger())
    assert str(e.value).startswith(message)


def test_debugger_tlb_off():
    from emu.tools.debug import DebugError

    d = _leak_debugger(tlb="off")
    for call in (lambda: d.catch_stale(), lambda: d.tlb()):
        with pytest.raises(DebugError, match=r"^the TLB model is off \(tlb=off\)"):
            call()


def test_repl_info_tlb(capsys):
    rc = main(["debug", "--set", "asi=off", "--inject", "secretmem_noflush", "-ex", "catch stale stale-access",
               "-ex", "c", "-ex", "info tlb 801", "-ex", "info tlb 1000"])
    out, err = capsys.readouterr()
    assert rc == 1                                   # a command failed (info tlb 1000)
    lines = out.splitlines()
    assert lines[0] == "Catchpoint 1: TLB finding stale-access"
    assert lines[1].startswith("Catchpoint 1: stale-access pcid 0x001 va 0xffff888")
    assert "  pcid 0x801 may cache: A.user" in lines
    assert "error: PCID '1000' is out of range (0x0 .. 0xfff)" in err.splitlines()


# --- the tracer ------------------------------------------------------------------------------------
@pytest.mark.parametrize("tlb,served", [("check", False), ("lazy", True)])
def test_trace_marks_the_access_a_stale_translation_serves(tmp_path, tlb, served):
    from emu.tools.trace import trace_program

    path = tmp_path / "leak.S"
    path.write_text(LEAK.split("\n", 1)[1])
    cfg = MachineConfig(asi=False, tlb=tlb, inject=frozenset({"secretmem_noflush"}))
    recs = trace_program(str(path), cfg, kinds="r")
    marked = [r for r in recs if r.fault is not None and "stale" in r.fault]
    assert [(r.symbol, r.space, r.cpl, r.fault["vector"], r.fault["error_code"], r.fault["served"])
            for r in marked] == [("probe_read_insn", "A.kernel", 0, 14, 0, served)]
    assert marked[0].fault["stale"].startswith("pcid 0x001 0xffff888")
    # without the injection nothing is marked
    clean = trace_program(str(path), cfg.replace(inject=frozenset()), kinds="r")
    assert not any(r.fault is not None and "stale" in r.fault for r in clean)
