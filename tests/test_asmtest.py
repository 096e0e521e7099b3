"""The asm test format, its runner, the ``isoemu test`` command and the pytest plugin."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from emu.hw.x86 import selector_error_code_words
from emu.tools.asmtest import AsmTestError, discover, parse_test, run_test
from emu.tools.faults import describe_exception
from emu.cli.main import main

PROGRAM = "_start:\n    mov eax, SYS_exit\n    xor edi, edi\n    syscall\n"


def parse_one(header: str):
    return parse_test(header + "\n" + PROGRAM, "t.S")


# --- the parser ------------------------------------------------------------------------------
EXPECT_CASES = [
    # header line                -> canonical expectation, the parsed fields that are set
    ("; expect: probe ok", "probe ok", dict(kind="ok", label="probe")),
    ("# expect: probe ok", "probe ok", dict(kind="ok", label="probe")),
    ("// expect: probe ok", "probe ok", dict(kind="ok", label="probe")),
    ("  ;expect:probe ok", "probe ok", dict(kind="ok", label="probe")),
    ("; Expect: probe ok", "probe ok", dict(kind="ok", label="probe")),
    ("; expect:\tprobe\tok", "probe ok", dict(kind="ok", label="probe")),
    ("; expect: probe fault 14 0x4", "probe fault 14 0x4",
     dict(kind="fault", label="probe", vector=14, error_code=4)),
    ("; expect: probe fault 0xe 4", "probe fault 14 0x4",
     dict(kind="fault", label="probe", vector=14, error_code=4)),
    ("; expect: probe fault 13 0", "probe fault 13 0x0",
     dict(kind="fault", label="probe", vector=13, error_code=0)),
    ("; expect: probe fault 6", "probe fault 6", dict(kind="fault", label="probe", vector=6)),
    ("; expect: probe fault 3", "probe fault 3", dict(kind="fault", label="probe", vector=3)),
    ("; expect: s rax=-14", "s rax=-14", dict(kind="regs", label="s", regs={"rax": -14})),
    ("; expect: s rax=-14 rdx=0x2 r8=1 r9=14", "s rax=-14 rdx=2 r8=1 r9=14",
     dict(kind="regs", label="s", regs={"rax": -14, "rdx": 2, "r8": 1, "r9": 14})),
    ("; expect: s RAX=0x7f0000000000", "s rax=0x7f0000000000",
     dict(kind="regs", label="s", regs={"rax": 0x7F0000000000})),
    ("; expect: s rax=0xffffffffffffffff", "s rax=0xffffffffffffffff",
     dict(kind="regs", label="s", regs={"rax": 0xFFFFFFFFFFFFFFFF})),
    ("; expect: s rax=-9223372036854775808", "s rax=0x8000000000000000",
     dict(kind="regs", label="s", regs={"rax": -(1 << 63)})),
    ("; expect: s rip=0x400000 rflags=0x202 rbx=255 rcx=256 rdx=-4095 rsi=-4096",
     "s rip=0x400000 rflags=0x202 rbx=255 rcx=0x100 rdx=-4095 rsi=0xfffffffffffff000",
     dict(kind="regs", label="s",
          regs={"rip": 0x400000, "rflags": 0x202, "rbx": 255, "rcx": 256, "rdx": -4095, "rsi": -4096})),
    ("; expect: s rax=010", "s rax=10", dict(kind="regs", label="s", regs={"rax": 10})),
    ("; expect: exit 0", "exit 0", dict(kind="exit", status=0)),
    ("; expect: exit 0x8b", "exit 139", dict(kind="exit", status=139)),
    ("; expect: output hello world", "output hello world", dict(kind="output", output="hello world")),
    ("; expect: output   two  spaces  ", "output two  spaces", dict(kind="output", output="two  spaces")),
    ("; expect: output", "output ", dict(kind="output", output="")),
]
UNSET = dict(label=None, vector=None, error_code=None, regs={}, status=None, output=None)


@pytest.mark.parametrize("header,canonical,fields", EXPECT_CASES)
def test_parse_expectation(header, canonical, fields):
    t = parse_one(header)
    [e] = t.processes[0].expectations
    got = {k: getattr(e, k) for k in ["kind", *UNSET]}
    assert (e.file, e.line, e.text, e.describe(), got) == \
        ("t.S", 1, header.strip(), canonical, {**UNSET, **fields})


CONFIG_CASES = [
    ("; nothing", {}, 2_000_000),
    ("; isoemu: pti=off", {"pti": False}, 2_000_000),
    ("; isoemu: pti=on pcid=off asi=off smap=off smep=off la57=on",
     {"pcid": False, "asi": False, "smap": False, "smep": False, "la57": True}, 2_000_000),
    ("# isoemu: nx=off pke=on invpcid=off", {"nx": False, "pke": True, "invpcid": False}, 2_000_000),
    ("; isoemu: PTI=OFF budget=5000", {"pti": False}, 5000),
    ("; isoemu: budget=0x100", {}, 256),
    ("; isoemu: pti=off\n; isoemu: pti=off", {"pti": False}, 2_000_000),
]


@pytest.mark.parametrize("header,changed,budget", CONFIG_CASES)
def test_parse_config(header, changed, budget):
    from emu.linux.machine import MachineConfig

    t = parse_one(header)
    default = MachineConfig()
    got = {k: v for k, v in vars(t.config).items() if vars(default)[k] != v}
    assert (got, t.budget) == (changed, budget)


ERROR_CASES = [
    # header line -> the message between "t.S:1: " and ": <the line>"
    ("; isoemu: foo=on",
     "unknown isoemu switch 'foo' (known: asi, budget, invpcid, la57, nx, pcid, pke, pti, smap, smep)"),
    ("; isoemu: pti=maybe", "pti=maybe: use on or off"),
    ("; isoemu: pti", "switch 'pti': write KEY=VALUE"),
    ("; isoemu: pti=", "switch 'pti=': write KEY=VALUE"),
    ("; isoemu:", "isoemu needs KEY=VALUE switches (asi, budget, invpcid, la57, nx, pcid, pke, pti, smap, smep)"),
    ("; isoemu: budget=0", "budget=0: a positive number of instructions"),
    ("; isoemu: budget=lots", "budget=lots: a positive number of instructions"),
    ("; isoemu: pti=on pti=off", "pti is already set differently at line 1"),
    ("; expect probe ok", "malformed header: write 'expect: ...'"),
    ("; isoemu pti=off", "malformed header: write 'isoemu: ...'"),
    ("; expect:", "expect needs 'LABEL ok', 'LABEL fault VECTOR [ERRORCODE]', 'LABEL REG=VALUE', "
                  "'exit STATUS' or 'output TEXT'"),
    ("; expect: probe", "expect needs 'LABEL ok', 'LABEL fault VECTOR [ERRORCODE]', 'LABEL REG=VALUE', "
                        "'exit STATUS' or 'output TEXT'"),
    ("; expect: probe okay", "expect needs 'LABEL ok', 'LABEL fault VECTOR [ERRORCODE]', 'LABEL REG=VALUE', "
                             "'exit STATUS' or 'output TEXT'"),
    ("; expect: probe rax=1 junk", "expect needs 'LABEL ok', 'LABEL fault VECTOR [ERRORCODE]', "
                                   "'LABEL REG=VALUE', 'exit STATUS' or 'output TEXT'"),
    ("; expect: probe fault", "fault needs VECTOR [ERRORCODE], e.g. 'fault 14 0x4'"),
    ("; expect: probe fault 14 0x4 0x5", "fault needs VECTOR [ERRORCODE], e.g. 'fault 14 0x4'"),
    ("; expect: probe fault 14", "vector 14 (#PF) needs an ERRORCODE"),
    ("; expect: probe fault 13", "vector 13 (#GP) needs an ERRORCODE"),
    ("; expect: probe fault 6 0x0", "vector 6 (#UD) has no error code"),
    ("; expect: probe fault 32 0", "vector 32 is not an exception vector (0-31)"),
    ("; expect: probe fault pf 4", "vector 'pf' is not a number"),
    ("; expect: probe fault 14 P", "error code 'P' is not a number"),
    ("; expect: probe fault 14 0x100000000", "error code 0x100000000 is out of range"),
    ("; expect: probe eax=1", "unknown register 'eax' (use rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8, r9, "
                              "r10, r11, r12, r13, r14, r15, rip, rflags)"),
    ("; expect: probe rax=abc", "rax=abc: VALUE is decimal, negative decimal or hex"),
    ("; expect: probe rax=1.5", "rax=1.5: VALUE is decimal, negative decimal or hex"),
    ("; expect: probe rax=0x10000000000000000", "rax=0x10000000000000000: does not fit in 64 bits"),
    ("; expect: probe rax=1 rax=2", "rax appears twice"),
    ("; expect: exit", "exit needs a STATUS from 0 to 255"),
    ("; expect: exit 256", "exit needs a STATUS from 0 to 255"),
    ("; expect: exit -1", "exit needs a STATUS from 0 to 255"),
    ("; expect: exit zero", "exit needs a STATUS from 0 to 255"),
    ("; expect: .Lprobe ok", "local label .Lprobe cannot carry expectations: use a global label"),
    ("; expect: 1probe ok", "'1probe' is not a label"),
    ("; process: 2nd", "process needs a name of letters, digits and _ (e.g. 'process: B')"),
    ("; process:", "process needs a name of letters, digits and _ (e.g. 'process: B')"),
    ("; process: A", "process A is already defined at the start of the file"),
]


@pytest.mark.parametrize("header,message", ERROR_CASES)
def test_parse_error(header, message):
    with pytest.raises(AsmTestError) as ei:
        parse_one(header)
    assert str(ei.value) == f"t.S:1: {message}: {header.strip()}"


MULTI_LINE_ERRORS = [
    ("; expect: probe ok\n; expect: probe fault 14 0x4",
     "t.S:2: probe already has 'probe ok' at line 1: ; expect: probe fault 14 0x4"),
    ("; expect: probe fault 14 0x4\n; expect: probe fault 14 0x5",
     "t.S:2: probe already has 'probe fault 14 0x4' at line 1: ; expect: probe fault 14 0x5"),
    ("; expect: exit 0\n; expect: exit 1",
     "t.S:2: a second exit expectation (the first is at line 1): ; expect: exit 1"),
    ("; process: B\n; process: B", "t.S:2: process B is already defined at line 1: ; process: B"),
    ("; isoemu: asi=on\n; isoemu: asi=off", "t.S:2: asi is already set differently at line 1: ; isoemu: asi=off"),
]


@pytest.mark.parametrize("header,message", MULTI_LINE_ERRORS)
def test_parse_error_across_lines(header, message):
    with pytest.raises(AsmTestError) as ei:
        parse_one(header)
    assert str(ei.value) == message


def test_parse_processes_split_the_file_keeping_line_numbers():
    text = ("; expect: a ok\n_start:\na:  nop\n"
            "; process: B\n; expect: b fault 14 0x4\n_start:\nb:  nop\n")
    t = parse_test(text, "t.S")
    a, b = t.processes
    assert [(p.name, p.line, [e.describe() for e in p.expectations]) for p in t.processes] == \
        [("A", 0, ["a ok"]), ("B", 4, ["b fault 14 0x4"])]
    assert a.source.splitlines() == ["; expect: a ok", "_start:", "a:  nop", "", "", "", ""]
    assert b.source.splitlines() == ["", "", "", "; process: B", "; expect: b fault 14 0x4", "_start:",
                                     "b:  nop"]
    assert b.expectations[0].line == 5


def test_prose_comments_are_not_headers():
    t = parse_one("; Process B expects nothing; isoemu runs it.\n; expected: nothing")
    assert [p.name for p in t.processes] == ["A"] and t.processes[0].expectations == []


# --- the runner ------------------------------------------------------------------------------
def report(tmp_path, src: str) -> list[str]:
    """Run ``src`` as a test file (read from tmp_path, named t.S in reports)."""
    path = tmp_path / "t.S"
    path.write_text(textwrap.dedent(src).lstrip("\n"))
    return run_test(str(path), name="t.S").report().splitlines()


EXIT0 = """
            mov eax, SYS_exit
            xor edi, edi
            syscall
     """

RUNNER_CASES = [
    ("pass", """
        ; isoemu: pti=on
        ; expect: probe fault 14 0x4
        ; expect: pid rax=1
        _start:
            mov rax, KERNEL_TEXT
        probe:
            mov bl, byte ptr [rax]
            mov eax, SYS_getpid
        pid:
            syscall
     """ + EXIT0, ["PASS t.S"]),
    ("wrong error code", """
        ; isoemu: pti=off
        ; expect: probe fault 14 0x4
        _start:
            mov rax, KERNEL_TEXT
        probe:
            mov bl, byte ptr [rax]
     """ + EXIT0, [
        "FAIL t.S",
        "  t.S:2: expected probe fault 14 0x4",
        "    got #PF error code 0x5 (protection, read, user), CR2 0xffffffff81000000, RIP 0x400007 (A:probe), "
        "space A.kernel",
        "    at t.S:6: mov bl, byte ptr [rax]"]),
    ("wrong vector", """
        ; expect: probe fault 14 0x4
        _start:
            mov rax, 0x8000000000000000
        probe:
            mov bl, byte ptr [rax]
     """ + EXIT0, [
        "FAIL t.S",
        "  t.S:1: expected probe fault 14 0x4",
        "    got #GP error code 0x0, RIP 0x40000a (A:probe), space A.user",
        "    at t.S:5: mov bl, byte ptr [rax]"]),
    ("expected fault, none", """
        ; expect: probe fault 14 0x4
        _start:
        probe:
            mov rbx, qword ptr [rsp]
     """ + EXIT0, [
        "FAIL t.S",
        "  t.S:1: expected probe fault 14 0x4",
        "    got no fault: the instruction completed",
        "    at t.S:4: mov rbx, qword ptr [rsp]"]),
    ("fault at an ok label: recorded, resumed", """
        ; expect: probe ok
        ; expect: after ok
        _start:
            xor eax, eax
        probe:
            mov bl, byte ptr [rax]
        after:
            nop
     """ + EXIT0, [
        "FAIL t.S",
        "  t.S:1: expected probe ok",
        "    got #PF error code 0x4 (not-present, read, user), CR2 0x0, RIP 0x400002 (A:probe), space A.user",
        "    at t.S:6: mov bl, byte ptr [rax]"]),
    ("not reached", """
        ; expect: never ok
        _start:
     """ + EXIT0 + """
        never:
            nop
     """, [
        "FAIL t.S",
        "  t.S:1: expected never ok",
        "    not reached",
        "    at t.S:9: nop"]),
    ("register mismatch", """
        ; expect: pid rax=2 rdx=0 rcx=-1
        _start:
            mov eax, SYS_getpid
        pid:
            syscall
     """ + EXIT0, [
        "FAIL t.S",
        "  t.S:1: expected pid rax=2 rdx=0 rcx=-1",
        "    got rax=1 rcx=0x400007",
        "    at t.S:5: syscall"]),
    ("register after a call", """
        ; expect: c rax=7
        _start:
        c:
            call seven
     """ + EXIT0 + """
        seven:
            mov eax, 7
            ret
     """, ["PASS t.S"]),
    ("unexpected fault kills", """
        _start:
            xor eax, eax
            mov bl, byte ptr [rax + 8]
     """ + EXIT0, [
        "FAIL t.S",
        "  unexpected fault in process A",
        "    #PF error code 0x4 (not-present, read, user), CR2 0x8, RIP 0x400002 (A:_start+0x2), space A.user",
        "    at t.S:3: mov bl, byte ptr [rax + 8]",
        "  t.S: expected exit 0 (the default)",
        "    got exit 139 (killed by SIGSEGV)"]),
    ("exit status", """
        ; expect: exit 4
        _start:
            mov eax, SYS_exit
            mov edi, 3
            syscall
     """, [
        "FAIL t.S",
        "  t.S:1: expected exit 4",
        "    got exit 3"]),
    ("output", """
        ; expect: output hello
        ; expect: output world
        _start:
            mov eax, SYS_write
            mov edi, 1
            lea rsi, [rip + msg]
            mov edx, 9
            syscall
     """ + EXIT0 + """
        .rodata
        msg: .ascii "hello\\nwho"
     """, [
        "FAIL t.S",
        "  t.S:1: expected output 'hello' / 'world'",
        "    got output 'hello\\nwho'"]),
    ("runaway", """
        ; isoemu: budget=20000
        _start:
        spin:
            jmp spin
     """, [
        "FAIL t.S",
        "  runaway: the instruction budget of 20000 ran out",
        "    stopped at RIP 0x400000 (A:spin), CPL 3, space A.user",
        "    at t.S:4: jmp spin"]),
    ("runs off the end of its code", """
        _start:
            nop
     """, [
        "FAIL t.S",
        "  process A ran past the end of its code (no SYS_exit)",
        "  t.S: expected exit 0 (the default)",
        "    got exit 132 (killed by SIGILL)"]),
    ("fetch fault at a call's target", """
        ; isoemu: pti=on
        ; expect: plant ok
        ; expect: data fault 14 0x15
        ; expect: kernel fault 14 0x14
        ; expect: back rsp=0x7ffffffff000
        _start:
            mov rax, USER_DATA
        plant:
            mov byte ptr [rax], 0xc3
        data:
            call rax
            mov rax, KERNEL_TEXT
        kernel:
            call rax
            lea rax, [rsp + 8]
        back:
            mov rsp, rax
     """ + EXIT0, ["PASS t.S"]),
    ("traps: int3, #UD, #DE", """
        ; expect: brk fault 3
        ; expect: bad fault 6
        ; expect: div fault 0
        ; expect: after rax=5
        _start:
        brk:
            int3
        bad:
            ud2
            xor ecx, ecx
        div:
            div ecx
            mov eax, 5
        after:
            nop
     """ + EXIT0, ["PASS t.S"]),
    ("second process", """
        ; expect: me rax=1
        _start:
            mov eax, SYS_getpid
        me:
            syscall
     """ + EXIT0 + """
        ; process: B
        ; expect: me rax=1
        ; expect: probe ok
        ; expect: exit 2
        _start:
            mov eax, SYS_getpid
        me:
            syscall
            xor eax, eax
        probe:
            mov bl, byte ptr [rax]
     """ + EXIT0, [
        "FAIL t.S",
        "  t.S:12: expected me rax=1",
        "    got rax=2",
        "    at t.S:18: syscall",
        "  t.S:13: expected probe ok",
        "    got #PF error code 0x4 (not-present, read, user), CR2 0x0, RIP 0x400009 (B:probe), space B.user",
        "    at t.S:21: mov bl, byte ptr [rax]",
        "  t.S:14: expected exit 2",
        "    got exit 0"]),
    ("unexpected int3: reported at the int3, SIGTRAP kills", """
        _start:
            nop
            int3
     """ + EXIT0, [
        "FAIL t.S",
        "  unexpected fault in process A",
        "    #BP, RIP 0x400002 (A:_start+0x2), space A.user",
        "    at t.S:3: int3",
        "  t.S: expected exit 0 (the default)",
        "    got exit 133 (killed by SIGTRAP)"]),
    ("unexpected int 3 (two bytes)", """
        _start:
            int 3
     """ + EXIT0, [
        "FAIL t.S",
        "  unexpected fault in process A",
        "    #BP, RIP 0x400002 (A:_start+0x2), space A.user",
        "    at t.S:2: int 3",
        "  t.S: expected exit 0 (the default)",
        "    got exit 133 (killed by SIGTRAP)"]),
    ("#GP error code decoded as a selector", """
        _start:
            int 0x80
     """ + EXIT0, [
        "FAIL t.S",
        "  unexpected fault in process A",
        "    #GP error code 0x402 (IDT vector 0x80), RIP 0x400000 (A:_start), space A.user",
        "    at t.S:2: int 0x80",
        "  t.S: expected exit 0 (the default)",
        "    got exit 139 (killed by SIGSEGV)"]),
    ("no stack for the signal frame: the handler never runs", """
        _start:
            xor esp, esp
            push rax
     """ + EXIT0, [
        "FAIL t.S",
        "  unexpected fault in process A",
        "    #PF error code 0x6 (not-present, write, user), CR2 0xfffffffffffffff8, RIP 0x400002 "
        "(A:_start+0x2), space A.user",
        "    at t.S:3: push rax",
        "    SIGSEGV was not delivered to the runtime's handler",
        "  t.S: expected exit 0 (the default)",
        "    got exit 139 (killed by SIGSEGV)"]),
    ("the program resets the runtime's handler", """
        _start:
            mov eax, SYS_rt_sigaction
            mov edi, SIGSEGV
            mov rsi, USER_DATA
            xor edx, edx
            mov r10d, 8
            syscall
            xor eax, eax
            mov bl, byte ptr [rax]
     """ + EXIT0, [
        "FAIL t.S",
        "  unexpected fault in process A",
        "    #PF error code 0x4 (not-present, read, user), CR2 0x0, RIP 0x40001d (A:_start+0x1d), space A.user",
        "    at t.S:9: mov bl, byte ptr [rax]",
        "    SIGSEGV was not delivered to the runtime's handler",
        "  t.S: expected exit 0 (the default)",
        "    got exit 139 (killed by SIGSEGV)"]),
]


@pytest.mark.parametrize("name,src,expected", RUNNER_CASES, ids=[c[0] for c in RUNNER_CASES])
def test_runner_report(tmp_path, name, src, expected):
    assert report(tmp_path, src) == expected


BROKEN_CASES = [
    ("malformed header", """
        ; expect probe ok
        _start:
     """ + EXIT0, "error: t.S:1: malformed header: write 'expect: ...': ; expect probe ok"),
    ("unknown register", """
        ; expect: _start eax=1
        _start:
     """ + EXIT0, "error: t.S:1: unknown register 'eax' (use rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8, r9, "
                  "r10, r11, r12, r13, r14, r15, rip, rflags): ; expect: _start eax=1"),
    ("unterminated string (keystone would hang)", """
        _start:
     """ + EXIT0 + """
        .rodata
        msg: .ascii "no end
     """, 'error: t.S:8: unterminated string literal: .ascii "no end'),
    ("control character", "_start:\n    nop\x01\n" + EXIT0,
     "error: t.S:2: control character U+0001 in the source: nop\\x01"),
    ("assembly error", """
        _start:
            nop
            movv rax, 1
     """, "error: t.S:3: Invalid mnemonic: movv rax, 1"),
    ("unknown symbol", """
        _start:
            mov rax, NO_SUCH_THING
     """, "error: t.S:2: unknown symbol 'NO_SUCH_THING': mov rax, NO_SUCH_THING"),
    ("no _start", """
        start:
            nop
     """, "error: t.S: no _start label (the entry point)"),
    ("no _start in the second process", """
        _start:
     """ + EXIT0 + """
        ; process: B
        begin:
            nop
     """, "error: t.S:7: process B has no _start label (the entry point)"),
    ("unknown label", """
        ; expect: prob ok
        _start:
        probe:
     """ + EXIT0, "error: t.S:1: unknown label 'prob': ; expect: prob ok"),
    ("a constant is not a label", """
        ; expect: SYS_exit ok
        _start:
     """ + EXIT0, "error: t.S:1: unknown label 'SYS_exit': ; expect: SYS_exit ok"),
    ("label on data", """
        ; expect: value ok
        _start:
     """ + EXIT0 + """
        .data
        value: .quad 1
     """, "error: t.S:1: label 'value' is not an instruction (in .data): ; expect: value ok"),
    ("label of the other process", """
        ; expect: theirs ok
        _start:
     """ + EXIT0 + """
        ; process: B
        _start:
        theirs:
     """ + EXIT0, "error: t.S:1: unknown label 'theirs': ; expect: theirs ok"),
]


@pytest.mark.parametrize("name,src,message", BROKEN_CASES, ids=[c[0] for c in BROKEN_CASES])
def test_runner_broken_test(tmp_path, name, src, message):
    assert report(tmp_path, src) == ["FAIL t.S", "  " + message]


DESCRIBE_CASES = [
    # vector, error code, CR2, RIP, symbol, space -> the words of a failure report
    (14, 0x4, 0xFFFFFFFF81000000, 0x400007, "A:probe", "A.user",
     "#PF error code 0x4 (not-present, read, user), CR2 0xffffffff81000000, RIP 0x400007 (A:probe), space A.user"),
    (14, 0x15, 0x600000, 0x400010, "A:x", "A.user",
     "#PF error code 0x15 (protection, fetch, user), CR2 0x600000, RIP 0x400010 (A:x), space A.user"),
    (14, 0x7, 0x400000, 0x400003, "A:w", None,
     "#PF error code 0x7 (protection, write, user), CR2 0x400000, RIP 0x400003 (A:w)"),
    (13, 0x0, None, 0x40000A, "A:probe", "A.user", "#GP error code 0x0, RIP 0x40000a (A:probe), space A.user"),
    (13, 0x402, None, 0x400000, "A:_start", "A.user",
     "#GP error code 0x402 (IDT vector 0x80), RIP 0x400000 (A:_start), space A.user"),
    (6, None, None, 0x400000, "A:bad", "A.user", "#UD, RIP 0x400000 (A:bad), space A.user"),
    (3, None, None, 0x400001, "A:brk", "A.user", "#BP, RIP 0x400001 (A:brk), space A.user"),
]


@pytest.mark.parametrize("vector,ec,cr2,rip,symbol,space,words", DESCRIBE_CASES)
def test_describe_exception(vector, ec, cr2, rip, symbol, space, words):
    assert describe_exception(vector, ec, cr2, rip, symbol, space) == words


SELECTOR_CASES = [
    # a #GP/#NP/#SS/#TS error code (SDM Vol. 3A 6.13) -> its words
    (0x402, "IDT vector 0x80"),
    (0x403, "external, IDT vector 0x80"),
    (0x6A, "IDT vector 0xd"),
    (0x28, "GDT selector 0x28"),
    (0x2C, "LDT selector 0x28"),
    (0x29, "external, GDT selector 0x28"),
]


@pytest.mark.parametrize("ec,words", SELECTOR_CASES)
def test_selector_error_code_words(ec, words):
    assert selector_error_code_words(ec) == words


def test_an_internal_error_fails_the_test_not_the_run(tmp_path, monkeypatch):
    import emu.tools.asmtest

    def broken_run(self):
        raise KeyError("boom")
    monkeypatch.setattr(emu.tools.asmtest._Runner, "run", broken_run)
    lines = report(tmp_path, "_start:\n" + EXIT0)
    assert lines[:2] == ["FAIL t.S", "  internal error (a bug in isoemu): KeyError: 'boom'"]
    assert lines[2].startswith(f"    raised at {__file__}:") and lines[2].endswith(" in broken_run")
    assert len(lines) == 3


def test_run_test_on_a_missing_file(tmp_path):
    res = run_test(str(tmp_path / "nope.S"))
    assert (res.passed, res.report()) == \
        (False, f"FAIL {tmp_path}/nope.S\n  error: {tmp_path}/nope.S: cannot read: No such file or directory")


# the predefined symbols issue 6 promises, with their Linux / layout values
PREDEFINED = [
    ("SYS_read", 0), ("SYS_write", 1), ("SYS_mmap", 9), ("SYS_munmap", 11), ("SYS_getpid", 39),
    ("SYS_exit", 60), ("SYS_ftruncate", 77), ("SYS_memfd_secret", 447),
    ("SYS_probe", 1000), ("SYS_direct_map_alias", 1001),
    ("PROT_NONE", 0), ("PROT_READ", 1), ("PROT_WRITE", 2), ("PROT_EXEC", 4),
    ("MAP_SHARED", 0x1), ("MAP_PRIVATE", 0x2), ("MAP_FIXED", 0x10), ("MAP_ANONYMOUS", 0x20),
    ("O_CLOEXEC", 0o2000000),
    ("DIRECT_MAP_BASE", 0xFFFF888000000000), ("KERNEL_TEXT", 0xFFFFFFFF81000000),
    ("KERNEL_DATA", 0xFFFFFFFF81600000), ("ENTRY_TEXT", 0xFFFFFFFF81200000),
    ("CPU_ENTRY_AREA", 0xFFFFFE0000000000), ("USER_DATA", 0x600000),
]


def test_predefined_symbols_reach_the_program(tmp_path):
    """Each symbol assembles to its value: one program, one label per symbol."""
    heads = "".join(f"; expect: s{i} rax={v:#x}\n" for i, (_, v) in enumerate(PREDEFINED))
    body = "".join(f"    mov rax, {name}\ns{i}:\n    nop\n" for i, (name, _) in enumerate(PREDEFINED))
    assert report(tmp_path, heads + "_start:\n" + body + EXIT0) == ["PASS t.S"]
    # and the value really is checked: a wrong one fails
    got = report(tmp_path, "; expect: s rax=0x600001\n_start:\n    mov rax, USER_DATA\ns:\n    nop\n" + EXIT0)
    assert got == ["FAIL t.S", "  t.S:1: expected s rax=0x600001", "    got rax=0x600000", "    at t.S:5: nop"]


# --- the command --------------------------------------------------------------------------------
PASSING = "; expect: pid rax=1\n_start:\n    mov eax, SYS_getpid\npid:\n    syscall\n" + EXIT0
FAILING = "; expect: exit 1\n_start:\n" + EXIT0


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


CLI_CASES = [
    # files to create, arguments, exit status, stdout lines (the summary's time dropped), stderr
    ({"a.S": PASSING}, ["a.S"], 0, ["PASS a.S", "1 passed, 0 failed"], ""),
    ({"a.S": PASSING, "b.S": FAILING}, ["a.S", "b.S"], 1,
     ["PASS a.S", "FAIL b.S", "  b.S:1: expected exit 1", "    got exit 0", "1 passed, 1 failed"], ""),
    ({"d/x/b.S": FAILING, "d/a.S": PASSING, "d/notes.txt": "x"}, ["d"], 1,
     ["PASS d/a.S", "FAIL d/x/b.S", "  d/x/b.S:1: expected exit 1", "    got exit 0", "1 passed, 1 failed"], ""),
    ({"b.S": FAILING, "a.S": PASSING}, ["-x", "b.S", "a.S"], 1,
     ["FAIL b.S", "  b.S:1: expected exit 1", "    got exit 0", "0 passed, 1 failed"], ""),
    ({}, ["missing.S"], 2, [], "isoemu: missing.S: no such file or directory\n"),
    ({"empty/notes.txt": "x"}, ["empty"], 2, [], "isoemu: empty: no .S files in this directory\n"),
]


@pytest.mark.parametrize("files,argv,status,stdout,stderr", CLI_CASES)
def test_cli(tmp_path, monkeypatch, capsys, files, argv, status, stdout, stderr):
    for name, text in files.items():
        write(tmp_path / name, text)
    monkeypatch.chdir(tmp_path)
    assert main(["test"] + argv) == status
    out, err = capsys.readouterr()
    lines = out.splitlines()
    if lines:
        assert lines[-1].endswith(" s")
        lines[-1] = lines[-1].rsplit(" in ", 1)[0]
    assert (lines, err) == (stdout, stderr)


def test_console_script_exit_status(tmp_path):
    """The installed ``isoemu`` script: statuses 1 and 2 reach the shell."""
    isoemu = os.path.join(os.path.dirname(sys.executable), "isoemu")
    write(tmp_path / "d" / "a.S", PASSING)
    write(tmp_path / "d" / "b.S", FAILING)
    runs = [subprocess.run([isoemu, "test", *argv], cwd=tmp_path, capture_output=True, text=True, timeout=120)
            for argv in (["d"], ["nothere"])]
    got = [(p.returncode, p.stdout.splitlines()[:-1], p.stderr) for p in runs]
    assert got == [(1, ["PASS d/a.S", "FAIL d/b.S", "  d/b.S:1: expected exit 1", "    got exit 0"], ""),
                   (2, [], "isoemu: nothere: no such file or directory\n")]
    assert runs[0].stdout.splitlines()[-1].startswith("1 passed, 1 failed in ")


def test_discover_order(tmp_path):
    for name in ("d/z.S", "d/a/b.S", "d/a.S", "d/c.s"):
        write(tmp_path / name, "")
    d = str(tmp_path / "d")
    assert discover([d]) == [f"{d}/a.S", f"{d}/z.S", f"{d}/a/b.S"]


# --- the pytest plugin ----------------------------------------------------------------------------
def pytest_run(tmp_path, *args) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}   # xdist worker vars too
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
                       cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    return p.returncode, p.stdout


@pytest.fixture
def asm_tree(tmp_path):
    write(tmp_path / "asm" / "one" / "good_probe.S",
          "; isoemu: pti=on\n; expect: probe fault 14 0x4\n_start:\n    mov rax, KERNEL_TEXT\n"
          "probe:\n    mov bl, byte ptr [rax]\n" + EXIT0)
    write(tmp_path / "asm" / "one" / "wrong_exit.S", FAILING)
    write(tmp_path / "asm" / "two" / "good_pid.S", PASSING)
    write(tmp_path / "other" / "not_collected.S", FAILING)       # not below a directory named asm
    return tmp_path


GOOD_PROBE, WRONG_EXIT, GOOD_PID = ("asm/one/good_probe.S::good_probe", "asm/one/wrong_exit.S::wrong_exit",
                                    "asm/two/good_pid.S::good_pid")
WRONG_EXIT_REPORT = "asm/one/wrong_exit.S failed:\n  asm/one/wrong_exit.S:1: expected exit 1\n    got exit 0\n"


def test_plugin_collects_each_S_file_below_asm(asm_tree):
    code, out = pytest_run(asm_tree, "--collect-only", ".")
    assert (code, out.splitlines()[:3]) == (0, [GOOD_PROBE, WRONG_EXIT, GOOD_PID]), out
    assert "not_collected" not in out
PLUGIN_CASES = [
    # arguments, exit status, the summary's counts, items passed, items failed
    # (other/not_collected.S is not below a directory named asm: never collected)
    (["-k", "good"], 0, "2 passed, 1 deselected", [GOOD_PROBE, GOOD_PID], []),
    (["-x"], 1, "1 failed, 1 passed", [GOOD_PROBE], [WRONG_EXIT]),
    (["-n", "2"], 1, "1 failed, 2 passed", [GOOD_PROBE, GOOD_PID], [WRONG_EXIT]),
]


@pytest.mark.parametrize("args,status,counts,passed,failed", PLUGIN_CASES)
def test_plugin_runs(asm_tree, args, status, counts, passed, failed):
    code, out = pytest_run(asm_tree, "-rA", ".", *args)
    last = out.strip().splitlines()[-1]
    outcomes = {"PASSED": [], "FAILED": []}
    for ln in out.splitlines():
        word, _, rest = ln.partition(" ")
        if word in outcomes and "::" in rest:
            outcomes[word].append(rest.split(" ")[0])
    assert (code, last.rsplit(" in ", 1)[0], sorted(outcomes["PASSED"]), outcomes["FAILED"]) == \
        (status, counts, passed, failed), out
    assert (WRONG_EXIT_REPORT in out) == bool(failed), out


def test_plugin_failure_reports_name_files_as_the_command_line_does(asm_tree):
    """A file named on the command line is collected wherever it lies.  Reports
    name it relative to the directory pytest runs in, or by its absolute path
    when outside it (pytest's rootdir is then their common ancestor, and the
    runner must still find the file)."""
    write(asm_tree / "here" / "other" / "not_collected.S", FAILING)
    outside = asm_tree / "asm" / "one" / "wrong_exit.S"
    code, out = pytest_run(asm_tree / "here", "other/not_collected.S", str(outside))
    blocks = [out[out.index(f"{name} failed:"):].splitlines()[:3] for name in ("other/not_collected.S", outside)]
    assert (code, blocks) == (1, [
        ["other/not_collected.S failed:", "  other/not_collected.S:1: expected exit 1", "    got exit 0"],
        [f"{outside} failed:", f"  {outside}:1: expected exit 1", "    got exit 0"]]), out
