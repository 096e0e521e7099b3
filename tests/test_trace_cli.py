"""``isoemu trace``: output, filters, the number rule of --range and
--budget, crash reports, guest errors and Ctrl-C, each as a table of
inputs with the exact lines and exit status expected."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from emu.cli.main import main
from emu.linux import abi
from emu.tools.trace import FIELDS, load_machine

D = 0x600000            # USER_DATA

PROGRAM = """
_start:
    mov rbx, USER_DATA
    mov qword ptr [rbx + 8], 5
    mov rax, qword ptr [rbx + 8]
    mov eax, SYS_exit
    xor edi, edi
    syscall
"""
LOOP = "_start:\n    jmp _start\n"


@pytest.fixture
def program(tmp_path):
    p = tmp_path / "prog.S"
    p.write_text(PROGRAM)
    return str(p)


def cli(capsys, *argv):
    rc = main(["trace", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def rows_of(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def test_jsonl_keys_and_values(capsys, program):
    rc, out, err = cli(capsys, program, "--jsonl", "--range", "0x600000-0x601000")
    assert rc == 0 and err == ""
    rows = rows_of(out)
    assert all(list(r) == list(FIELDS) for r in rows)
    assert [(r["kind"], r["va"], r["size"], r["cpl"], r["space"], r["symbol"], r["pcid"], r["fault"])
            for r in rows] == [("w", "0x600008", 8, 3, "A.user", "A:_start+0x7", 0x801, None),
                               ("r", "0x600008", 8, 3, "A.user", "A:_start+0xf", 0x801, None)]
    assert rows[0]["pa"] == rows[1]["pa"] and rows[0]["pa"].endswith("008")


@pytest.mark.parametrize("args,check", [
    (["--kind", "w"], lambda r: r["kind"] == "w"),
    (["--kind", "x"], lambda r: r["kind"] == "x"),
    (["--space", "A.user"], lambda r: r["space"] == "A.user"),
    (["--range", "0xfffffe0000000000-0xfffffe8000000000"],
     lambda r: 0xfffffe0000000000 <= int(r["va"], 16) < 0xfffffe8000000000),
])
def test_filters(capsys, program, args, check):
    rc, out, _ = cli(capsys, program, "--jsonl", *args)
    rows = rows_of(out)
    assert rc == 0 and len(rows) > 3 and all(check(r) for r in rows)


def test_table_is_aligned(capsys, program):
    rc, out, _ = cli(capsys, program, "--space", "A.user")
    lines = out.splitlines()
    assert rc == 0 and lines[0].split()[:4] == ["SEQ", "CPL", "SPACE", "PCID"]
    kcol = lines[0].index(" K ") + 1
    vacol = lines[0].index("VA")
    assert all(line[kcol] in "rwx" and line[vacol:vacol + 2] == "0x" for line in lines[1:])
    assert any("A:_start+0x7" in line and " w " in line for line in lines)


# --- --range: the number rule (hexadecimal, names, expressions) -------------------------------------
USER_RW = [("w", D + 8, 8), ("r", D + 8, 8)]      # PROGRAM's two accesses of USER_DATA

RANGE_CASES = [
    # --range, --kind, expected (kind, va, size) of A's user-mode records, notes on stderr
    ("600000-601000", "rw", USER_RW, []),              # hexadecimal without 0x (it once meant decimal)
    ("0x600000-0x601000", "rw", USER_RW, []),
    ("600008-600009", "rw", USER_RW, []),              # overlapping [LO, HI) is enough
    ("600000-600008", "rw", [], []),                   # HI is excluded
    ("600010..0x601000", "rw", [], []),
    ("USER_DATA..USER_DATA+1000", "rw", USER_RW, []),  # layout names; offsets hexadecimal too
    ("USER_DATA + 8 .. USER_DATA + 10", "rw", USER_RW, []),
    ("A:_start..A:_start+1", "x", [("x", 0x400000, 28)], []),      # a label of A's program
    ("EBADF..EBADF+10", "rw", [], ["isoemu: note: 'EBADF' is read as the name EBADF (0x9); write 0xEBADF "
                                   "for the number"]),   # both ends read it: said once
]


@pytest.mark.parametrize("text,kind,expected,notes", RANGE_CASES, ids=[c[0] for c in RANGE_CASES])
def test_range(capsys, program, text, kind, expected, notes):
    rc, out, err = cli(capsys, program, "--jsonl", "--range", text, "--kind", kind)
    user = [(r["kind"], int(r["va"], 16), r["size"]) for r in rows_of(out) if r["cpl"] == 3]
    assert (rc, user, err.splitlines()) == (0, expected, notes)


def test_range_takes_kernel_symbols(capsys, program):
    """entry_SYSCALL_64's first instruction stores RSP through GS: the range of
    its first 8 bytes holds the block's fetch, and nothing else does."""
    rc, out, err = cli(capsys, program, "--jsonl", "--range", "entry_SYSCALL_64..entry_SYSCALL_64+8")
    rows = rows_of(out)
    assert rc == 0 and err == "" and rows
    assert {(r["kind"], r["symbol"]) for r in rows} == {("x", "entry_SYSCALL_64")}


RANGE_ERRORS = [
    ("zz", "bad range 'zz': use LO-HI (e.g. 600000-601000), or LO..HI when an end is an expression"),
    ("", "bad range '': use LO-HI (e.g. 600000-601000), or LO..HI when an end is an expression"),
    ("1-2-3", "bad range '1-2-3': use LO-HI (e.g. 600000-601000), or LO..HI when an end is an expression"),
    ("0x10-0x5", "bad range '0x10-0x5': the end 0x5 is not above the start 0x10"),
    ("601000-600000", "bad range '601000-600000': the end 0x600000 is not above the start 0x601000"),
    ("600000-600000", "bad range '600000-600000': the end 0x600000 is not above the start 0x600000"),
    ("600000-", "bad range end '': empty"),
    ("600000-6g", "bad range end '6g': '6g' is not a hexadecimal number or a name"),
    ("0-10000000000000000",
     "range end '10000000000000000' is out of range (0x0 .. 0xffffffffffffffff)"),
    ("A:nope..A:nope+1", "bad range start 'A:nope': unknown name 'A:nope'"),
    ("B:_start..B:_start+1", "bad range start 'B:_start': unknown name 'B:_start'"),
    ("USER_DATA+..1", "bad range start 'USER_DATA+': it ends with an operator"),
]


@pytest.mark.parametrize("text,message", RANGE_ERRORS, ids=[c[0] or "empty" for c in RANGE_ERRORS])
def test_range_refused(capsys, program, text, message):
    rc, out, err = cli(capsys, program, "--range", text)
    assert (rc, out, err) == (2, "", f"isoemu: {message}\n")


# --- --budget: a count -----------------------------------------------------------------------
BUDGET_CASES = [("3000", "3,000"), ("3k", "3,000"), ("2_500", "2,500"), ("1.5k", "1,500"), ("0.004M", "4,000")]


@pytest.mark.parametrize("text,shown", BUDGET_CASES, ids=[c[0] for c in BUDGET_CASES])
def test_budget(capsys, tmp_path, text, shown):
    p = tmp_path / "loop.S"
    p.write_text(LOOP)
    rc, out, err = cli(capsys, str(p), "--kind", "x", "--budget", text)
    assert rc == 3 and out
    assert err == (f"isoemu: instruction budget of {shown} exhausted at RIP 0x400000 (A:_start), CPL 3, "
                   f"space A.user\n")


BUDGET_ERRORS = [
    ("0", "--budget '0' is out of range (1 .. 4,611,686,018,427,387,904)"),
    ("-5", "--budget '-5' is out of range (1 .. 4,611,686,018,427,387,904)"),
    ("-10M", "--budget '-10M' is out of range (1 .. 4,611,686,018,427,387,904)"),
    ("99999999999999999999", "--budget '99999999999999999999' is out of range (1 .. 4,611,686,018,427,387,904)"),
    ("10x", "bad --budget '10x': expected a decimal number such as 2000000 or 10M"),
    ("-x", "bad --budget '-x': expected a decimal number such as 2000000 or 10M"),
    ("0x100", "bad --budget '0x100': expected a decimal number such as 2000000 or 10M"),
    ("1.5", "bad --budget '1.5': not a whole number"),
    ("", "bad --budget '': expected a decimal number such as 2000000 or 10M"),
]


@pytest.mark.parametrize("text,message", BUDGET_ERRORS, ids=[c[0] or "empty" for c in BUDGET_ERRORS])
def test_budget_refused(capsys, program, text, message):
    rc, out, err = cli(capsys, program, f"--budget={text}")
    assert (rc, out, err) == (2, "", f"isoemu: {message}\n")


# --- other bad input: one line, exit status 2 ---------------------------------------------------
@pytest.mark.parametrize("args,source,message", [
    (["--space", "Q.user"], PROGRAM, "unknown space 'Q.user': choose from A.asi, A.kernel, A.user, asi.global, "
                                     "kernel, kernel.user"),
    (["--kind", "rq"], PROGRAM, "bad access kind 'rq': use r, w, x or a combination such as rw"),
    ([], "_start:\n    mov rax, [[rbx]\n", "{path}:2: "),
    ([], b"_start:\n    nop\n.ascii \"\xe9\"\n", "{path}: not UTF-8 text (byte 0xe9 at line 3)"),
    ([], "_start:\n    mov\u00a0rax, 1\n",
     "{path}:2: non-ASCII character U+00A0 (NO-BREAK SPACE) outside a string"),
])
def test_bad_input_is_one_line(capsys, tmp_path, args, source, message):
    p = tmp_path / "prog.S"
    p.write_bytes(source if isinstance(source, bytes) else source.encode())
    rc, out, err = cli(capsys, str(p), *args)
    assert (rc, out) == (2, "") and err.count("\n") == 1
    assert err.startswith("isoemu: " + message.format(path=p))


def test_missing_file(capsys, tmp_path):
    path = tmp_path / "nope.S"
    assert cli(capsys, str(path)) == (2, "", f"isoemu: cannot read {path}: No such file or directory\n")


# --- crash reports: the process killed by a signal ----------------------------------------------
CRASHES = [
    # name, body after 'nop', the report's lines after the first ({at}: the faulting instruction's address)
    ("user read of kernel text", "mov rbx, KERNEL_TEXT\nat: mov al, byte ptr [rbx]", "SIGSEGV",
     ["#PF error code 0x4 (not-present, read, user), CR2 0xffffffff81000000, RIP {at} (A:at), space A.user",
      "at {path}:4: mov al, byte ptr [rbx]"]),
    ("write to read-only text", "lea rbx, [rip + _start]\nat: mov byte ptr [rbx], 0", "SIGSEGV",
     ["#PF error code 0x7 (protection, write, user), CR2 0x400000, RIP {at} (A:at), space A.user",
      "at {path}:4: mov byte ptr [rbx], 0"]),
    ("non-canonical load", "mov rbx, 0x800000000000\nat: mov al, byte ptr [rbx]", "SIGSEGV",
     ["#GP error code 0x0, RIP {at} (A:at), space A.user", "at {path}:4: mov al, byte ptr [rbx]"]),
    ("ud2", "at: ud2", "SIGILL", ["#UD, RIP {at} (A:at), space A.user", "at {path}:3: ud2"]),
]


@pytest.mark.parametrize("jsonl", [False, True])
@pytest.mark.parametrize("name,body,signal_name,lines", CRASHES, ids=[c[0] for c in CRASHES])
def test_crash_report(capsys, tmp_path, jsonl, name, body, signal_name, lines):
    p = tmp_path / "crash.S"
    p.write_text(f"_start:\n    nop\n{body}\n")
    at = load_machine(str(p)).process("A").image.symbols["at"]
    rc, out, err = cli(capsys, str(p), "--space", "A.user", *(["--jsonl"] if jsonl else []))
    assert rc == 1
    assert err.splitlines() == [f"isoemu: process A was killed by {signal_name}"] + \
        [line.format(at=f"{at:#x}", path=p) for line in lines]
    # the records made before the report stay printed, the faulting access among them
    if not jsonl:
        assert out.startswith("    SEQ CPL") and f"{at:#018x} A:at" in out
        return
    faulted = [int(r["rip"], 16) for r in rows_of(out) if r["fault"] is not None]
    assert faulted == ([] if name == "ud2" else [at])      # ud2 accesses no memory


# --- guest errors: one line, exit status 3 -------------------------------------------------------------
def _panic(m):
    """ud2 in sys_getpid: an unhandled trap in kernel mode."""
    getpid = m.kernel.sym("sys_getpid")
    m.mem.write(getpid - m.layout.kernel_map, b"\x0f\x0b")


def _triple(m):
    """TSS.sp0 and IST1 unmapped just before A faults: #PF -> #DF -> triple fault."""
    k = m.kernel
    tss = k.percpu_va("cpu_tss_rw")

    def hook(addr):
        k.write_q(tss + abi.TSS_sp0, 0xFFFFFE0000100000)
        k.write_q(tss + abi.TSS_ist, 0xFFFFFE0000200000)
    m.boot()
    m.cpu.add_code_hook(m.process("A").image.symbols["fault_here"], hook)


@pytest.mark.parametrize("source,breaks,message", [
    ("_start:\n    mov eax, SYS_getpid\n    syscall\n    mov eax, SYS_exit\n    xor edi, edi\n    syscall\n", _panic,
     "kernel panic: BUG: unhandled trap in kernel mode: vector(0x0000000000000006) RIP: {getpid_ud2} / "
     "Kernel panic - not syncing: Oops"),
    ("_start:\n    mov rax, KERNEL_TEXT\nfault_here:\n    mov al, byte ptr [rax]\n", _triple,
     "triple fault: #PF(0x4) -> #PF(0x2) -> #DF(0x0) -> #PF(0x2) while delivering #DF (RIP 0x400007, CPL 3, "
     "CR3 {user_cr3})"),
], ids=["kernel panic", "triple fault"])
def test_guest_errors_are_one_line(capsys, tmp_path, monkeypatch, source, breaks, message):
    import emu.tools.trace as trace

    p = tmp_path / "prog.S"
    p.write_text(source)
    made = []

    def load_broken(*args, **kw):
        m = real(*args, **kw)
        breaks(m)
        made.append(m)
        return m
    real = trace.load_machine
    monkeypatch.setattr(trace, "load_machine", load_broken)
    rc, out, err = cli(capsys, str(p), "--jsonl")
    m = made[0]
    expected = message.format(getpid_ud2=f"{m.kernel.sym('sys_getpid'):#x}",
                              user_cr3=f"{m.spaces()['A.user'] | 0x801:#x}")
    assert (rc, err) == (3, f"isoemu: {expected}\n") and out


# --- Ctrl-C -------------------------------------------------------------------------------------
def test_ctrl_c_stops_a_trace(tmp_path):
    """SIGINT about 1 s into a runaway trace: exit status 130 within 2 s,
    one line on stderr.  The range keeps the output to the kernel blocks
    run before the loop: their arrival says the trace has started."""
    p = tmp_path / "loop.S"
    p.write_text(LOOP)
    out_path, err_path = tmp_path / "out", tmp_path / "err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "emu.cli.main", "trace", str(p), "--budget", "300G",
                                 "--kind", "x", "--range", "KERNEL_TEXT..KERNEL_TEXT+1000000"],
                                stdout=out, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            deadline = time.monotonic() + 60
            while not out_path.read_bytes() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)
            assert proc.poll() is None, "the trace ended before Ctrl-C"
            proc.send_signal(signal.SIGINT)
            sent = time.monotonic()
            rc = proc.wait(timeout=10)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = err_path.read_text().splitlines()
    assert rc == 130 and took < 2.0, (rc, took)
    assert len(lines) == 1 and lines[0].startswith("isoemu: interrupted at RIP 0x400000 (A:_start), CPL 3, "
                                                   "space A.user, after at least "), lines
