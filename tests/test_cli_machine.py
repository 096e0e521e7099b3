"""``isoemu matrix``, ``stats`` and ``run`` from the command line: text, JSON, exit status."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from emu.linux.tlbcheck import STAT_KEYS
from emu.cli.main import main
from emu.cli.render import EVENT_KINDS, HEX_FIELDS, event_line
from emu.linux.config import MachineConfig
from emu.linux.machine import Machine
from emu.tools.faults import fatal_report

HELLO = """_start:
    mov eax, SYS_write
    mov edi, 1
    lea rsi, [rip + msg]
    mov edx, 6
    syscall
    mov eax, SYS_exit
    mov edi, 3
    syscall
.rodata
msg: .ascii "hello\\n"
"""
CRASH = """_start:
    mov rax, KERNEL_TEXT
    mov bl, byte ptr [rax]
    mov eax, SYS_exit
    xor edi, edi
    syscall
"""

# an ASI exit: the restricted table lacks the alias of the program's own data page
ASI_EXIT = """_start:
    mov eax, SYS_direct_map_alias
    mov edi, USER_DATA
    syscall
    mov rdi, rax
    mov eax, SYS_probe
    xor esi, esi
    mov edx, 1
    syscall
    mov eax, SYS_exit
    mov edi, 3
    syscall
"""


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def prog(tmp_path):
    def write(text, name="prog.S"):
        p = tmp_path / name
        p.write_text(text)
        return p
    return write


# --- matrix -----------------------------------------------------------------------------------
def _cell_text(c) -> str:
    """A cell's outcome as the text table writes it."""
    fault = "" if c["vector"] is None else (f"#PF {c['error_code']:#x}" if c["vector"] == 14
                                            else f"#GP({c['error_code']:#x})")
    return {"ok": "ok", "fault": fault, "asi_exit_ok": "asi-exit→ok",
            "asi_exit_fault": "asi-exit→" + fault}[c["outcome"]]


@pytest.fixture(scope="module")
def matrix_json():
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["matrix", "--json"])
    return rc, buf.getvalue()


def test_matrix_json_schema(matrix_json):
    rc, out = matrix_json
    assert out.count("\n") == 1                                   # compact by default
    doc = json.loads(out)
    assert set(doc) == {"config", "spaces", "regions", "cells", "stats", "findings", "asi_findings", "summary"}
    # every machine switch, as a test header or --set writes it
    assert doc["config"] == {"pti": "auto", "pcid": "on", "asi": "on", "smep": "on", "smap": "on", "pke": "off",
                             "nx": "on", "invpcid": "on", "la57": "off", "ram": "256M", "tlb": "check",
                             "inject": "none", "unmapped": "page", "unmapped_pool": "16M", "collapse": "off"}
    assert doc["spaces"] == ["A.user", "A.kernel", "A.asi", "B.user"]
    regions = [r["name"] for r in doc["regions"]]
    assert regions == ["user_text", "user_data", "secret_user", "secret_direct_map", "xpfo_user",
                       "xpfo_direct_map", "direct_map",
                       "direct_map_sensitive", "kernel_text", "kernel_data", "entry_text", "cpu_entry_area",
                       "kernel_stack", "vmalloc", "gmem_private_user", "gmem_direct_map",
                       "gmem_nodm_direct_map", "secret_direct_map_released"]
    assert all(set(r) == {"name", "description"} and r["description"] for r in doc["regions"])
    cpl = {"A.user": 3, "B.user": 3, "A.kernel": 0, "A.asi": 0}
    for c in doc["cells"]:
        assert set(c) == {"region", "va", "space", "cpl", "access", "outcome", "vector", "error_code",
                          "expected", "expected_reason", "pass", "stale"}
        assert c["region"] in regions and c["space"] in doc["spaces"] and c["cpl"] == cpl[c["space"]]
        assert re.fullmatch(r"0x[0-9a-f]+", c["va"]) and c["access"] in ("r", "w", "x")
        assert c["outcome"] in ("ok", "fault", "asi_exit_ok", "asi_exit_fault")
        assert (c["vector"] is None) == c["outcome"].endswith("ok")
        assert (c["error_code"] is None) == (c["vector"] is None)
        assert c["pass"] == (_cell_text(c) == c["expected"])
    assert doc["summary"] == {"cells": len(doc["cells"]),
                              "mismatches": sum(1 for c in doc["cells"] if not c["pass"]),
                              "findings": len(doc["findings"]), "asi_findings": len(doc["asi_findings"])}
    assert rc == (1 if doc["summary"]["mismatches"] or doc["findings"] or doc["asi_findings"] else 0)
    assert set(doc["stats"]) >= {"DirectMap4k", "DirectMap2M", "secret_pages", "asi_exits"}


def test_matrix_text_matches_json(capsys, matrix_json):
    doc = json.loads(matrix_json[1])
    rc, out, _ = run(capsys, "matrix", "--color", "never")
    lines = out.splitlines()
    cfg = doc["config"]
    assert lines[0] == "fault matrix: " + " ".join(f"{k}={v}" for k, v in cfg.items())
    assert lines[1].split() == ["region"] + doc["spaces"]
    cells = {(c["region"], c["access"], c["space"]): _cell_text(c) for c in doc["cells"]}
    rows = lines[3:lines.index("", 3)]                          # the table ends with an empty line
    seen = 0
    for ln in rows:
        region, access, *texts = re.split(r" {2,}", ln.strip())
        spaces = [s for s in doc["spaces"] if (region, access, s) in cells]
        assert texts == [cells[(region, access, s)] for s in spaces], ln
        seen += len(spaces)
    assert seen == len(doc["cells"])
    assert f"{doc['summary']['cells']} cells, {doc['summary']['mismatches']} mismatches" in lines
    assert rc == matrix_json[0]


def test_matrix_pretty(capsys):
    rc, out, _ = run(capsys, "matrix", "--json", "--pretty", "--set", "pti=off")
    doc = json.loads(out)
    assert out.count("\n") > 100 and doc["config"]["pti"] == "off"


def test_matrix_set_is_the_flag(capsys):
    _, by_flag, _ = run(capsys, "matrix", "--json", "--no-pti", "--no-asi")
    _, by_set, _ = run(capsys, "matrix", "--json", "--set", "pti=off,asi=off")
    assert json.loads(by_flag) == json.loads(by_set)
    assert json.loads(by_set)["config"]["pti"] == "off"


def test_matrix_set_nx_off_runs(capsys):
    """The machine boots without NX and every cell is probed; whether the expectation model
    knows nx=off is the matrix's business (the exit status says)."""
    rc, out, err = run(capsys, "matrix", "--json", "--set", "nx=off")
    doc = json.loads(out)
    assert err == "" and doc["summary"]["cells"] == len(doc["cells"]) > 100
    assert rc == (1 if doc["summary"]["mismatches"] else 0)
    # without XD the user data page is executable: a CPL3 fetch there no longer faults
    cell = next(c for c in doc["cells"] if (c["region"], c["access"], c["space"]) == ("user_data", "x", "A.user"))
    assert cell["outcome"] == "ok"


# --- stats ------------------------------------------------------------------------------------
def test_stats_text_and_json(capsys):
    rc, out, _ = run(capsys, "stats", "--json")
    doc = json.loads(out)
    assert rc == 0 and set(doc) == {"boot", "secret_mapped", "secret_released"}
    names = list(doc["boot"])
    assert names == ["DirectMap4k", "DirectMap2M", "DirectMap1G", "direct_map_level2_splits",
                     "direct_map_level3_splits", "direct_map_level2_collapses", "direct_map_level3_collapses",
                     "unmapped_blocks", "secret_pages", "guest_memfd_pages",
                     "guest_memfd_unmapped_pages", "guest_memfd_conversions", "xpfo_pages",
                     "xpfo_pages_removed", "xpfo_flushes", "xpfo_cache_hits", "xpfo_cached_pages",
                     "xpfo_pages_restored", "kernel_tlb_flushes", "asi_exits", "asi_fault_exits",
                     "asi_user_return_exits", "asi_context_switch_exits", "asi_tlb_flush_exits",
                     "asi_other_exits", "asi_flush_ibpb", "asi_flush_rsb", "asi_flush_l1d",
                     "asi_critical_findings", "asi_kvm_entries"] + [f"tlb_{k}" for k in STAT_KEYS] + \
        ["unmapped_tlb_full_flushes", "unmapped_tlb_cr4_flushes", "unmapped_tlb_invlpg",
         "unmapped_tlb_entries_invalidated"]
    assert all(list(doc[p]) == names for p in doc)
    assert [doc[p]["secret_pages"] for p in ("boot", "secret_mapped", "secret_released")] == [0, 1, 0]
    rc, out, _ = run(capsys, "stats")
    lines = out.splitlines()
    assert lines[0].split() == ["counter", "boot", "secret", "mapped", "released"]
    for ln, name in zip(lines[1:], names):
        cols = ln.replace(" kB", "").split()
        assert cols == [name] + [str(doc[p][name]) for p in ("boot", "secret_mapped", "secret_released")]
        assert ln == ln.rstrip()
    assert len(lines) == 1 + len(names)


def test_stats_set_ram(capsys):
    rc, out, _ = run(capsys, "stats", "--json", "--set", "ram=1G")
    boot = json.loads(out)["boot"]
    assert boot["DirectMap2M"] + boot["DirectMap4k"] + boot["DirectMap1G"] == 1 << 20       # kB


# --- run --------------------------------------------------------------------------------------
@pytest.mark.parametrize("body,status", [
    ("    mov eax, SYS_exit\n    xor edi, edi\n    syscall\n", 0),
    ("    mov eax, SYS_exit\n    mov edi, 3\n    syscall\n", 3),
    ("    mov eax, SYS_exit\n    mov edi, 300\n    syscall\n", 300 & 0xFF),
    ("    mov rax, KERNEL_TEXT\n    mov bl, byte ptr [rax]\n", 128 + 11),     # SIGSEGV
    ("    ud2\n", 128 + 4),                                                     # SIGILL
])
def test_run_exit_status(capsys, prog, body, status):
    rc, out, _ = run(capsys, "run", prog("_start:\n" + body))
    assert rc == status


def test_run_output(capsys, prog):
    rc, out, err = run(capsys, "run", prog(HELLO))
    assert (rc, out, err) == (3, "hello\n", "")


def test_run_crash_report_is_fatal_report(capsys, prog):
    path = prog(CRASH)
    rc, out, err = run(capsys, "run", path)
    m = Machine(MachineConfig(), record_events=False)
    p = m.add_process("A", CRASH, filename=str(path))
    m.run(budget=10_000_000)
    want = fatal_report(m, p.pid)
    assert rc == 139 and out == ""
    assert err.splitlines() == ["isoemu: " + want[0]] + want[1:]
    assert err.splitlines()[0] == "isoemu: process A was killed by SIGSEGV"
    assert err.splitlines()[-1] == "at " + str(path) + ":3: mov bl, byte ptr [rax]"


@pytest.mark.parametrize("argv,name", [([], "A"), (["--name", "B"], "B"), (["--name", "probe_1"], "probe_1")])
def test_run_process_name(capsys, prog, argv, name):
    rc, out, _ = run(capsys, "run", prog(HELLO, "my-prog.S"), "--events", "exit", *argv)
    assert out.splitlines() == [f"exit {name} status 3", "hello"]
    rc, _, err = run(capsys, "run", prog(CRASH), *argv)
    assert err.startswith(f"isoemu: process {name} was killed by SIGSEGV\n")


def _api_events(src, kinds):
    m = Machine(MachineConfig())
    m.add_process("A", src)
    m.run(budget=10_000_000)
    return [e for e in m.events if e.kind in kinds]


@pytest.mark.parametrize("spec,src,status", [
    (None, CRASH, 139), ("cr3", CRASH, 139), ("cr3,fault,syscall", CRASH, 139), ("alloc,exit", CRASH, 139),
    ("asi", ASI_EXIT, 3), ("all", HELLO, 3),
])
def test_run_events_are_the_machine_events(capsys, prog, spec, src, status):
    argv = ["--events"] if spec is None else [f"--events={spec}"]
    rc, out, _ = run(capsys, "run", prog(src), *argv)
    words = ",".join(EVENT_KINDS) if spec in (None, "all") else spec
    kinds = {k for w in words.split(",") for k in EVENT_KINDS[w]}
    want = [event_line(e) for e in _api_events(src, kinds)]
    output = ["hello"] if src is HELLO else []
    assert want and out.splitlines() == want + output
    assert rc == status


def test_run_event_lines(capsys, prog):
    rc, out, _ = run(capsys, "run", prog(CRASH), "--events", "cr3,fault,syscall,exit")
    lines = out.splitlines()
    assert re.fullmatch(r"cr3 0x[0-9a-f]{16} -> 0x[0-9a-f]{16}  A\.kernel -> A\.user +pcid 0x801 noflush  "
                        r"swapgs_restore_regs_and_return_to_usermode\+0x[0-9a-f]+", lines[0])
    assert "fault #PF error code 0x4 (not-present, read, user), CR2 0xffffffff81000000, RIP 0x400007 " \
           "(A:_start+0x7), space A.user" in lines
    assert [ln for ln in lines if ln.startswith("exit ")] == ["exit A killed by SIGSEGV"]
    # the exit's own CR3 write follows it: free_pgtables flushes the mm before freeing its tables
    assert lines[-1].startswith("cr3 ") and re.search(r" flush_tlb_mm_local\+0x[0-9a-f]+$", lines[-1])


def test_run_events_before_the_program(capsys, prog, monkeypatch):
    """`run --events PROGRAM.S`: the optional KINDS cannot be a file name."""
    path = prog(HELLO)
    monkeypatch.chdir(path.parent)
    rc, out, _ = run(capsys, "run", "--events", path.name)
    assert rc == 3 and out.splitlines()[-1] == "hello" and out.splitlines()[0].startswith("cr3 ")


def test_run_jsonl(capsys, prog):
    rc, out, _ = run(capsys, "run", prog(HELLO), "--jsonl", "--events", "cr3,syscall")
    objs = [json.loads(ln) for ln in out.splitlines()]
    events, result = objs[:-1], objs[-1]
    assert events and {e["kind"] for e in events} == {"cr3_write", "syscall", "syscall_return"}
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    for e in events:
        for k, v in e.items():
            if k in HEX_FIELDS and v is not None and not isinstance(v, bool):
                vals = v if isinstance(v, list) else [v]
                assert all(re.fullmatch(r"0x[0-9a-f]+", x) for x in vals), (k, v)
    cr3 = next(e for e in events if e["kind"] == "cr3_write")
    assert cr3["pcid"] == "0x801" and cr3["new_space"] == "A.user"
    assert result == {"kind": "result", "process": "A", "pid": 1, "output": "hello\n", "status": 3,
                      "signal": None, "exit_status": 3, "findings": [], "fault": None}
    assert rc == 3


def test_run_json_crash(capsys, prog):
    rc, out, err = run(capsys, "run", prog(CRASH), "--json")
    doc = json.loads(out)
    assert rc == 139 and err.startswith("isoemu: process A was killed by SIGSEGV")
    assert doc == {"process": "A", "pid": 1, "output": "", "status": None, "signal": "SIGSEGV",
                   "exit_status": 139, "findings": [],
                   "fault": {"vector": 14, "error_code": 4, "cr2": "0xffffffff81000000", "rip": "0x400007",
                             "cr3": doc["fault"]["cr3"], "space": "A.user", "symbol": "A:_start+0x7"}}
    assert re.fullmatch(r"0x[0-9a-f]+", doc["fault"]["cr3"])


def test_run_json_with_events(capsys, prog):
    rc, out, _ = run(capsys, "run", prog(HELLO), "--json", "--events", "exit")
    doc = json.loads(out)
    assert [e["kind"] for e in doc["events"]] == ["exit"] and doc["events"][0]["process"] == "A"


@pytest.mark.parametrize("budget,shown", [("1k", "1,000"), ("2000", "2,000"), ("0.5M", "500,000")])
def test_run_budget_is_a_count(capsys, prog, budget, shown):
    rc, out, err = run(capsys, "run", prog("_start: jmp _start\n"), "--budget", budget)
    assert rc == 3
    assert err == (f"isoemu: instruction budget of {shown} exhausted at RIP 0x400000 (A:_start), CPL 3, "
                   f"space A.user\n")


def test_run_output_before_a_stop_is_kept(capsys, prog):
    src = HELLO.replace("    mov eax, SYS_exit\n    mov edi, 3\n    syscall\n", "spin: jmp spin\n")
    rc, out, err = run(capsys, "run", prog(src), "--budget", "100k")
    assert (rc, out) == (3, "hello\n") and err.startswith("isoemu: instruction budget of 100,000 exhausted")


def test_run_ctrl_c(tmp_path):
    """SIGINT stops a runaway run: one line naming where, exit status 130, promptly."""
    path = tmp_path / "spin.S"
    path.write_text("_start: jmp _start\n")
    # --events cr3, unbuffered: the first line says the program is about to run (not still starting up)
    p = subprocess.Popen([sys.executable, "-m", "emu.cli", "run", str(path), "--budget", "300G", "--events", "cr3"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    first = p.stdout.readline()
    assert first.startswith("cr3 ") and "-> A.user" in first
    time.sleep(1.0)
    assert p.poll() is None
    p.send_signal(signal.SIGINT)
    try:
        out, err = p.communicate(timeout=2)
    except subprocess.TimeoutExpired:
        p.kill()
        pytest.fail("isoemu run did not stop within 2 s of SIGINT")
    assert p.returncode == 130 and out == ""
    assert err.count("\n") == 1
    assert re.fullmatch(r"isoemu: interrupted at RIP 0x400000 \(A:_start\), CPL 3, space A\.user, after at least "
                        r"[0-9,]+ instructions\n", err), err
