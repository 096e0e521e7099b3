"""The asm test format, its runner, the ``isoemu test`` command and the pytest plugin
(docs/asm-tests.md)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from emu.cli.main import main
from emu.hw.x86 import selector_error_code_words
from emu.linux.config import MachineConfig
from emu.linux.machine import Interrupted
from emu.tools.asmtest import AsmTestError, discover, parse_test, run_paths, run_test, run_variants
from emu.tools.asmtest.headers import HeaderError, header_of
from emu.tools.faults import describe_exception

PROGRAM = "_start:\n    mov eax, SYS_exit\n    xor edi, edi\n    syscall\n"
KNOWN_SWITCHES = "pti, pcid, asi, smep, smap, pke, nx, invpcid, la57, ram, tlb, inject, unmapped, unmapped_pool, collapse"
USAGE = ("expect needs 'LABEL ok', 'LABEL fault VECTOR [ERRORCODE]', 'LABEL REG=VALUE', 'LABEL space SPACE', "
         "'LABEL stale [FINDING]', 'LABEL asi [FINDING]', 'LABEL oops [VECTOR [ERRORCODE]]', 'exit STATUS' or "
         "'output TEXT'")


def parse_one(header: str):
    return parse_test(header + "\n" + PROGRAM, "t.S")


# --- headers and prose --------------------------------------------------------------------------
HEADER_LINES = [
    # a line -> (key, conditions, body) of the header it is
    ("; expect: probe ok", ("expect", None, "probe ok")),
    ("# expect: probe ok", ("expect", None, "probe ok")),
    ("// expect: probe ok", ("expect", None, "probe ok")),
    (";;expect:probe ok", ("expect", None, "probe ok")),
    ("## isoemu: pti=off", ("isoemu", None, "pti=off")),
    ("\t; process: B", ("process", None, "B")),
    ("; Expect : probe ok", ("expect", None, "probe ok")),
    ("; EXPECT: probe ok", ("expect", None, "probe ok")),
    ("; expect[pti=off]: probe fault 14 0x5", ("expect", "pti=off", "probe fault 14 0x5")),
    ("; expect[pti=off, asi=on] : probe ok", ("expect", "pti=off, asi=on", "probe ok")),
    # trailing comments: a blank, then ;, # or //
    ("; expect: exit 0 # the default, written out", ("expect", None, "exit 0")),
    ("; isoemu: pti=off ; PTI costs a CR3 write", ("isoemu", None, "pti=off")),
    ("; expect: exit 0\t// why", ("expect", None, "exit 0")),
    ("; process: B  # the thief", ("process", None, "B")),
    ('; expect: output "a # b ; c" # comment', ("expect", None, 'output "a # b ; c"')),
    ('; expect: output "say \\"# hi\\"" # comment', ("expect", None, 'output "say \\"# hi\\""')),
    ("; expect: output C#", ("expect", None, "output C#")),
    ("; expect: output a;b", ("expect", None, "output a;b")),
]


@pytest.mark.parametrize("line,header", HEADER_LINES)
def test_header_lines(line, header):
    h = header_of(line, 7)
    assert (h.line, h.key, h.cond, h.body, h.text) == (7, *header, line.strip())


PROSE_LINES = [
    "; Process B expects nothing; isoemu runs it.",       # capitalised key, no colon
    "; Expect probe ok",
    "; Note: the runner resumes after the fault",          # capitalised word and colon
    "; TODO: more cases",
    "; SDM Vol. 3A 4.6: access rights",
    "; see arch/x86/mm/pti.c",                             # lowercase word, no colon
    "; https://docs.kernel.org/arch/x86/pti.html",         # a URL
    "; std::vector",                                       # ::
    "; ffffffff81000000: kernel text",                     # a hexadecimal address
    "; 1: the first step",
    "; - item: thing",
    "; (expect: nothing)",
    "#include <linux/mm.h>",
    ";",
    "//",
    "    mov rax, 1   ; expect: probe ok",                  # a comment after code
    "probe:",
    "",
]


@pytest.mark.parametrize("line", PROSE_LINES)
def test_prose_lines(line):
    assert header_of(line, 1) is None


HEADER_ERRORS = [
    # a header-shaped line -> the message
    ("; expects: probe fault 14 0x4", "unknown header 'expects' (did you mean 'expect'?)"),
    ("; exepct: probe ok", "unknown header 'exepct' (did you mean 'expect'?)"),
    ("; expected: nothing", "unknown header 'expected' (did you mean 'expect'?)"),
    ("; expectation: prose", "unknown header 'expectation' (did you mean 'expect'?)"),
    ("# isoemux: pti=off", "unknown header 'isoemux' (did you mean 'isoemu'?)"),
    ("// proces: B", "unknown header 'proces' (did you mean 'process'?)"),
    ("; expext[pti=off]: probe ok", "unknown header 'expext' (did you mean 'expect'?)"),
    ("; note: the runner resumes", "unknown header 'note' (the headers are isoemu, expect, process; for "
                                   "prose, capitalise the word or drop the colon)"),
    ("; r12: the fd", "unknown header 'r12' (the headers are isoemu, expect, process; for prose, capitalise "
                      "the word or drop the colon)"),
    ("; expect probe ok", "malformed header: write 'expect: ...'"),
    ("; isoemu pti=off", "malformed header: write 'isoemu: ...'"),
    ("; process B", "malformed header: write 'process: ...'"),
    ("; expect[pti=off probe ok", "expect[ has no closing ]"),
    ("; expect [pti=off]: probe ok", "malformed header: write 'expect[CONDITIONS]: ...' with no blank before ["),
]


@pytest.mark.parametrize("line,message", HEADER_ERRORS)
def test_header_errors(line, message):
    with pytest.raises(HeaderError) as ei:
        header_of(line, 1)
    assert ei.value.message == message
    # and in a file: file:line: message: the line
    with pytest.raises(AsmTestError) as ei:
        parse_test("; a test\n" + line + "\n" + PROGRAM, "t.S")
    assert str(ei.value) == f"t.S:2: {message}: {line.strip()}"


def test_prose_comments_do_not_change_a_test():
    prose = "\n".join(ln for ln in PROSE_LINES if ln != "probe:")
    t = parse_test(prose + "\n" + PROGRAM, "t.S")
    assert [(p.name, p.expectations) for p in t.processes] == [("A", [])]
    assert [v.id for v in t.variants()] == [""]


# --- expectations --------------------------------------------------------------------------------
EXPECT_CASES = [
    # header line -> canonical expectation, the parsed fields that are set
    ("; expect: probe ok", "probe ok", dict(kind="ok", label="probe")),
    ("  ;expect:probe ok", "probe ok", dict(kind="ok", label="probe")),
    ("; expect:\tprobe\tok", "probe ok", dict(kind="ok", label="probe")),
    ("; expect: probe fault 14 0x4", "probe fault 14 0x4", dict(kind="fault", label="probe", vector=14,
                                                                error_code=4)),
    ("; expect: probe fault 0xe 4", "probe fault 14 0x4", dict(kind="fault", label="probe", vector=14,
                                                               error_code=4)),
    ("; expect: probe fault PF 4", "probe fault 14 0x4", dict(kind="fault", label="probe", vector=14,
                                                              error_code=4)),
    ("; expect: probe fault gp 0", "probe fault 13 0x0", dict(kind="fault", label="probe", vector=13,
                                                              error_code=0)),
    ("; expect: probe fault 6", "probe fault 6", dict(kind="fault", label="probe", vector=6)),
    ("; expect: probe fault UD", "probe fault 6", dict(kind="fault", label="probe", vector=6)),
    ("; expect: probe fault 3", "probe fault 3", dict(kind="fault", label="probe", vector=3)),
    ("; expect: s rax=-14", "s rax=-14", dict(kind="regs", label="s", regs={"rax": -14})),
    ("; expect: s rax=-14 rdx=0x2 r8=1 r9=14", "s rax=-14 rdx=2 r8=1 r9=14",
     dict(kind="regs", label="s", regs={"rax": -14, "rdx": 2, "r8": 1, "r9": 14})),
    ("; expect: s RAX=0x7f0000000000", "s rax=0x7f0000000000", dict(kind="regs", label="s",
                                                                    regs={"rax": 0x7F0000000000})),
    ("; expect: s rax=0xffffffffffffffff", "s rax=0xffffffffffffffff",
     dict(kind="regs", label="s", regs={"rax": 0xFFFFFFFFFFFFFFFF})),
    ("; expect: s rax=-9223372036854775808", "s rax=0x8000000000000000",
     dict(kind="regs", label="s", regs={"rax": -(1 << 63)})),
    ("; expect: s rip=0x400000 rflags=0x202 rbx=255 rcx=256 rdx=-4095 rsi=-4096",
     "s rip=0x400000 rflags=0x202 rbx=255 rcx=0x100 rdx=-4095 rsi=0xfffffffffffff000",
     dict(kind="regs", label="s",
          regs={"rip": 0x400000, "rflags": 0x202, "rbx": 255, "rcx": 256, "rdx": -4095, "rsi": -4096})),
    ("; expect: s rax=010", "s rax=10", dict(kind="regs", label="s", regs={"rax": 10})),
    ("; expect: s rax=1_000", "s rax=0x3e8", dict(kind="regs", label="s", regs={"rax": 1000})),
    # symbols, expressions, !=, masks, ranges: written as given (numbers canonical)
    ("; expect: s rax=-EFAULT rbx=SYS_getpid", "s rax=-EFAULT rbx=SYS_getpid", dict(kind="regs", label="s")),
    ("; expect: s rax=-EFAULT+0 rcx=USER_DATA+0x10", "s rax=-EFAULT+0 rcx=USER_DATA+0x10",
     dict(kind="regs", label="s")),
    ("; expect: s rax!=0 rbx!=-EINVAL", "s rax!=0 rbx!=-EINVAL", dict(kind="regs", label="s")),
    ("; expect: s rax&0xfff=0 rbx&4095!=0x10", "s rax&0xfff=0 rbx&0xfff!=16", dict(kind="regs", label="s")),
    ("; expect: s rax&PAGE_SIZE-1=0", "s rax&PAGE_SIZE-1=0", dict(kind="regs", label="s")),
    ("; expect: s rax=0x600000..0x601000", "s rax=0x600000..0x601000", dict(kind="regs", label="s")),
    ("; expect: s rax=-4095..0 rbx!=USER_DATA..USER_DATA+PAGE_SIZE",
     "s rax=-4095..0 rbx!=USER_DATA..USER_DATA+PAGE_SIZE", dict(kind="regs", label="s")),
    ("; expect: s rax=1 rax!=2 rax&1=1", "s rax=1 rax!=2 rax&0x1=1", dict(kind="regs", label="s",
                                                                         regs={"rax": 1})),
    ("; expect: s space A.user", "s space A.user", dict(kind="space", label="s", space="A.user")),
    ("; expect: s space kernel", "s space kernel", dict(kind="space", label="s", space="kernel")),
    ("; expect: exit 0", "exit 0", dict(kind="exit")),
    ("; expect: exit 0x8b", "exit 139", dict(kind="exit")),
    ("; expect: exit 128+SIGSEGV", "exit 128+SIGSEGV", dict(kind="exit")),
    ("; expect: exit 0 # and a comment", "exit 0", dict(kind="exit")),
    ("; expect: output hello world", "output hello world", dict(kind="output", output="hello world")),
    ("; expect: output   two  spaces  ", "output two  spaces", dict(kind="output", output="two  spaces")),
    ("; expect: output", "output ", dict(kind="output", output="")),
    ('; expect: output "  padded # not a comment "  # a comment', "output   padded # not a comment ",
     dict(kind="output", output="  padded # not a comment ")),
    ('; expect: output "say \\"hi\\" \\\\o/"', 'output say "hi" \\o/', dict(kind="output",
                                                                            output='say "hi" \\o/')),
    ('; expect: output ""', "output ", dict(kind="output", output="")),
    ("; expect[pti=off]: probe ok", "probe ok", dict(kind="ok", label="probe", when={"pti": ("off",)})),
    ("; expect[pti=off,asi=on|off]: probe ok", "probe ok",
     dict(kind="ok", label="probe", when={"pti": ("off",), "asi": ("on", "off")})),
    ("; expect[pti=off asi=on]: probe ok", "probe ok",
     dict(kind="ok", label="probe", when={"pti": ("off",), "asi": ("on",)})),
    ("; expect: probe asi", "probe asi", dict(kind="asi", label="probe")),
    ("; expect: probe asi sensitive-access-in-critical-section", "probe asi sensitive-access-in-critical-section",
     dict(kind="asi", label="probe")),
    ("; expect[asi=RFC2019|rfc2025]: probe ok", "probe ok",
     dict(kind="ok", label="probe", when={"asi": ("rfc2019", "rfc2025")})),
]
UNSET = dict(label=None, vector=None, error_code=None, regs={}, output=None, space=None, when={})


@pytest.mark.parametrize("header,canonical,fields", EXPECT_CASES)
def test_parse_expectation(header, canonical, fields):
    if "[pti=off" in header:          # a condition must be able to hold
        header = "; isoemu: pti=on|off\n" + header
    if "[asi=RFC" in header:
        header = "; isoemu: asi=rfc2019|rfc2025\n" + header
    t = parse_one(header)
    [e] = t.processes[0].expectations
    got = {k: getattr(e, k) for k in ["kind", *UNSET]}
    line = header.count("\n") + 1
    assert (e.file, e.line, e.text, e.describe(), got) == \
        ("t.S", line, header.splitlines()[-1].strip(), canonical, {**UNSET, **fields})


VARIANT_CASES = [
    # headers, overrides -> [(configuration id, switches that differ from the default machine)], budget
    ("; nothing", None, [("", {})], 2_000_000),
    ("; isoemu: pti=off", None, [("", {"pti": "off"})], 2_000_000),
    ("; isoemu: pti=on pcid=off asi=off smap=off smep=off la57=on", None,        # pti's default is auto
     [("", {"pti": "on", "pcid": False, "asi": "off", "smap": False, "smep": False, "la57": True})], 2_000_000),
    ("# isoemu: nx=off pke=on invpcid=off ram=1G", None,
     [("", {"nx": False, "pke": True, "invpcid": False, "ram": 1 << 30})], 2_000_000),
    ("; isoemu: PTI=OFF budget=5000", None, [("", {"pti": "off"})], 5000),
    ("; isoemu: budget=10M", None, [("", {})], 10_000_000),
    ("; isoemu: budget=300G", None, [("", {})], 300_000_000_000),
    ("; isoemu: budget=2_500k", None, [("", {})], 2_500_000),
    ("; isoemu: pti=off\n; isoemu: pti=off budget=1M\n; isoemu: budget=1000000", None,
     [("", {"pti": "off"})], 1_000_000),
    ("; isoemu: pti=off ; the Meltdown layout", None, [("", {"pti": "off"})], 2_000_000),
    ("; isoemu: pti=on|off", None, [("pti=on", {"pti": "on"}), ("pti=off", {"pti": "off"})], 2_000_000),
    ("; isoemu: pti=on|auto pcid=off", None,
     [("pti=on", {"pti": "on", "pcid": False}), ("pti=auto", {"pcid": False})], 2_000_000),
    ("; isoemu: pti=on|off asi=off|on", None,
     [("pti=on,asi=off", {"pti": "on", "asi": "off"}), ("pti=on,asi=on", {"pti": "on"}),
      ("pti=off,asi=off", {"pti": "off", "asi": "off"}), ("pti=off,asi=on", {"pti": "off"})], 2_000_000),
    # the ASI designs: pti=auto (the default) resolves to off with rfc2025
    ("; isoemu: asi=off|on|RFC2019|rfc2025", None,
     [("asi=off", {"asi": "off"}), ("asi=on", {}), ("asi=rfc2019", {"asi": "rfc2019"}),
      ("asi=rfc2025", {"asi": "rfc2025", "pti": "off"})], 2_000_000),
    ("; isoemu: pti=off asi=on|rfc2025", None,
     [("asi=on", {"pti": "off"}), ("asi=rfc2025", {"asi": "rfc2025", "pti": "off"})], 2_000_000),
    ("; isoemu: asi=rfc2019 pti=on|off", None,
     [("pti=on", {"asi": "rfc2019", "pti": "on"}), ("pti=off", {"asi": "rfc2019", "pti": "off"})], 2_000_000),
    ("; isoemu: ram=256M|1G la57=on", None, [("ram=256M", {"la57": True}), ("ram=1G", {"la57": True,
                                                                                       "ram": 1 << 30})],
     2_000_000),
    ("; isoemu: PTI=On|OFF\n; isoemu: pti=on|off", None, [("pti=on", {"pti": "on"}), ("pti=off", {"pti": "off"})],
     2_000_000),
    # overrides (isoemu test --set, pytest --isoemu-set): an overridden switch multiplies nothing
    ("; isoemu: pti=on|off asi=on|off", {"pti": "off"},
     [("asi=on", {"pti": "off"}), ("asi=off", {"pti": "off", "asi": "off"})], 2_000_000),
    ("; isoemu: pti=on|off asi=on|off", {"pti": "off", "asi": "on"}, [("", {"pti": "off"})], 2_000_000),
    ("; isoemu: pti=on", {"pti": "off"}, [("", {"pti": "off"})], 2_000_000),
    ("; nothing", {"la57": "on", "ram": "512M"}, [("", {"la57": True, "ram": 512 << 20})], 2_000_000),
]


@pytest.mark.parametrize("header,overrides,variants,budget", VARIANT_CASES)
def test_variants(header, overrides, variants, budget):
    t = parse_one(header)
    default = vars(MachineConfig())
    got = [(v.id, {k: x for k, x in vars(v.config).items() if default[k] != x}) for v in t.variants(overrides)]
    assert (got, {v.budget for v in t.variants(overrides)}) == (variants, {budget})


ERROR_CASES = [
    # header line -> the message between "t.S:1: " and ": <the line>"
    ("; isoemu: foo=on", f"unknown switch 'foo'; known: {KNOWN_SWITCHES}, budget"),
    ("; isoemu: ptj=on", f"unknown switch 'ptj' (did you mean 'pti'?); known: {KNOWN_SWITCHES}, budget"),
    ("; isoemu: budgte=1M", f"unknown switch 'budgte' (did you mean 'budget'?); known: {KNOWN_SWITCHES}, budget"),
    ("; isoemu: pti=maybe", "pti=maybe: use one of on, off, auto"),
    ("; isoemu: pti=on,off", "pti=on,off: use one of on, off, auto (did you mean 'off'?) (several values are "
                             "separated by '|': pti=on|off)"),
    ("; isoemu: tlb=off,check", "tlb=off,check: use one of off, check, lazy (did you mean 'check'?) (several "
                                "values are separated by '|': tlb=off|check)"),
    ("; isoemu: pti=on|", "pti=: use one of on, off, auto"),
    ("; isoemu: pti", "setting 'pti': write SWITCH=VALUE (e.g. pti=off)"),
    ("; isoemu: pti=", "setting 'pti=': write SWITCH=VALUE (e.g. pti=off)"),
    ("; isoemu:", f"isoemu needs SWITCH=VALUE settings ({KNOWN_SWITCHES}, budget)"),
    ("; isoemu: ; just a comment", f"isoemu needs SWITCH=VALUE settings ({KNOWN_SWITCHES}, budget)"),
    ("; isoemu: ram=33M", "RAM size 33M is not a multiple of 2 MiB"),
    ("; isoemu: ram=16M", "ram size '16M' is out of range (32M .. 1T)"),
    ("; isoemu: budget=0", "budget '0' is out of range (1 .. 4,611,686,018,427,387,904)"),
    ("; isoemu: budget=lots", "bad budget 'lots': expected a decimal number such as 2000000 or 10M"),
    ("; isoemu: budget=1.5", "bad budget '1.5': not a whole number"),
    ("; isoemu: budget=1M|2M", "budget takes one value"),
    ("; isoemu: pti=on pti=off", "pti is already set differently at line 1"),
    ("; isoemu: pti=on|on", "pti=on|on: on is given twice"),
    ("; isoemu[pti=off]: asi=off", "isoemu takes no [conditions]: only expect does"),
    ("; isoemu: asi=rfc2024", "asi=rfc2024: use one of off, on, rfc2019, rfc2025 (did you mean 'rfc2025'?)"),
    ("; isoemu: asi=maybe", "asi=maybe: use one of off, on, rfc2019, rfc2025"),
    # a combination no single setting refuses: the 2025 RFC runs without PTI
    ("; isoemu: pti=on asi=rfc2025", "asi=rfc2025 runs without PTI (the RFC disables it: 'disabled by ASI'); "
                                     "drop pti=on, or use asi=on for PTI with ASI"),
    ("; isoemu: pti=on|off asi=rfc2025", "asi=rfc2025 runs without PTI (the RFC disables it: 'disabled by "
                                         "ASI'); drop pti=on, or use asi=on for PTI with ASI"),
    ("; process[pti=off]: B", "process takes no [conditions]: only expect does"),
    # conditions
    ("; expect[]: probe ok", "empty [conditions]: write e.g. expect[pti=off]"),
    ("; expect[ptj=off]: probe ok", f"unknown machine switch 'ptj' (did you mean 'pti'?); known: {KNOWN_SWITCHES}"),
    ("; expect[pti=maybe]: probe ok", "pti=maybe: use one of on, off, auto"),
    ("; expect[pti]: probe ok", "condition 'pti': write SWITCH=VALUE (e.g. pti=off)"),
    ("; expect[budget=1]: probe ok", "budget cannot be a condition (only machine switches)"),
    ("; expect[pti=off,pti=on]: probe ok", "pti appears twice in the conditions"),
    ("; expect[pti=off]: probe ok", "never applies: pti is auto in every configuration of this test"),
    ("; expect[la57=on,ram=1G]: probe ok", "never applies: la57 is off in every configuration of this test"),
    # expectations
    ("; expect:", USAGE),
    ("; expect: # only a comment", USAGE),
    ("; expect: probe", USAGE),
    ("; expect: probe okay", "'okay' is not an expectation (did you mean 'ok'?): " + USAGE),
    ("; expect: probe faults 14 0x4", "'faults' is not an expectation (did you mean 'fault'?): " + USAGE),
    ("; expect: probe ok now", "'ok' takes nothing after it: 'now'"),
    ("; expect: probe rax=1 junk", "'junk' is not REG=VALUE"),
    ("; expect: probe fault", "fault needs VECTOR [ERRORCODE], e.g. 'fault 14 0x4'"),
    ("; expect: probe fault 14 0x4 0x5", "fault needs VECTOR [ERRORCODE], e.g. 'fault 14 0x4'"),
    ("; expect: probe fault 14", "vector 14 (#PF) needs an ERRORCODE"),
    ("; expect: probe fault 13", "vector 13 (#GP) needs an ERRORCODE"),
    ("; expect: probe fault 6 0x0", "vector 6 (#UD) has no error code"),
    ("; expect: probe fault 32 0", "vector '32' is out of range (0 .. 31)"),
    ("; expect: probe fault pff 4", "bad vector 'pff': expected a decimal number, or hexadecimal with 0x"),
    ("; expect: probe fault 14 P", "bad error code 'P': expected a decimal number, or hexadecimal with 0x"),
    ("; expect: probe fault 14 0x100000000", "error code '0x100000000' is out of range (0x0 .. 0xffffffff)"),
    ("; expect: probe eax=1", "unknown register 'eax' (use rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8, r9, "
                              "r10, r11, r12, r13, r14, r15, rip, rflags)"),
    ("; expect: probe rax=2*3", "rax=2*3: unexpected '*3' (a value is terms joined by + and -)"),
    ("; expect: probe rax=1.5", "rax=1.5: unexpected '.5' (a value is terms joined by + and -)"),
    ("; expect: probe rax=10M", "rax=10M: '10M' is not a number (decimal, or hexadecimal with 0x)"),
    ("; expect: probe rax=0x10000000000000000", "rax=0x10000000000000000: does not fit in 64 bits"),
    ("; expect: probe rax=-0x8000000000000001", "rax=-0x8000000000000001: does not fit in 64 bits"),
    ("; expect: probe rax=", "rax=: a value is missing"),
    ("; expect: probe rax=-EFAULT+", "rax=-EFAULT+: a term is missing at the end"),
    ("; expect: probe rax=*2", "rax=*2: expected a number or a name at '*2'"),
    ("; expect: probe rax&=1", "'rax&=1' is not REG=VALUE"),
    ("; expect: probe rax&0x10000000000000000=0", "rax&0x10000000000000000=0: does not fit in 64 bits"),
    ("; expect: probe rax==1", "rax==1: expected a number or a name at '=1'"),
    ("; expect: probe rax=1 rax=2", "rax appears twice"),
    ("; expect: probe space", "space needs one address-space name, e.g. 'space A.user'"),
    ("; expect: probe space A.user B.user", "space needs one address-space name, e.g. 'space A.user'"),
    ("; expect: probe space A..user", "space needs one address-space name, e.g. 'space A.user'"),
    ("; expect: probe stale stale-acess", "unknown TLB finding 'stale-acess' (did you mean 'stale-access'?); "
     "known: stale-access, freed-while-cached, table-freed-while-cached, stale-at-user-return, "
     "page-size-conflict, unobserved-write, freed-out-of-direct-map"),
    ("; expect: probe stale stale-access freed-while-cached",
     "stale takes at most one finding kind, e.g. 'stale stale-access'"),
    ("; expect: probe asi sensitive-access", "unknown ASI finding 'sensitive-access' (did you mean "
     "'sensitive-access-in-critical-section'?); known: sensitive-access-in-critical-section, "
     "vm-entry-unrestricted"),
    ("; expect: probe asi sensitive-access-in-critical-section again",
     "asi takes at most one finding kind, e.g. 'asi sensitive-access-in-critical-section'"),
    ("; expect: exit", "exit needs a STATUS from 0 to 255"),
    ("; expect: exit 256", "exit needs a STATUS from 0 to 255"),
    ("; expect: exit -1", "exit needs a STATUS from 0 to 255"),
    ("; expect: exit 0 1", "exit needs a STATUS from 0 to 255"),
    ("; expect: exit 1.5", "exit needs a STATUS from 0 to 255"),
    ('; expect: output "no end', 'output "TEXT" has no closing quote'),
    ('; expect: output "a" b', 'output "TEXT": \' b\' after the closing quote'),
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
    ("; expect: probe space A.user\n; expect: probe space A.kernel",
     "t.S:2: probe already has 'probe space A.user' at line 1: ; expect: probe space A.kernel"),
    ("; expect: exit 0\n; expect: exit 1",
     "t.S:2: a second exit expectation (the first is at line 1): ; expect: exit 1"),
    # conditions: a conflict only where both apply
    ("; isoemu: pti=on|off\n; expect: probe ok\n; expect[pti=off]: probe fault 14 0x5",
     "t.S:3: probe already has 'probe ok' at line 2: ; expect[pti=off]: probe fault 14 0x5"),
    ("; isoemu: pti=on|off asi=on|off\n; expect[asi=on]: exit 0\n; expect[pti=off]: exit 1",
     "t.S:3: a second exit expectation (the first is at line 2): ; expect[pti=off]: exit 1"),
    ("; isoemu: pti=off asi=on|off\n; expect[pti=off,asi=on]: probe ok\n; expect[la57=on]: probe ok",
     "t.S:3: never applies: la57 is off in every configuration of this test: ; expect[la57=on]: probe ok"),
    ("; isoemu: pti=on|off asi=on\n; isoemu: asi=on\n; expect[pti=off]: probe ok\n; expect[asi=off]: x ok",
     "t.S:4: never applies: asi is on in every configuration of this test: ; expect[asi=off]: x ok"),
    ("; isoemu: pti=on|off asi=on|off\n; isoemu: pti=on asi=on",
     "t.S:2: pti is already set differently at line 1: ; isoemu: pti=on asi=on"),
    ("; process: B\n; process: B", "t.S:2: process B is already defined at line 1: ; process: B"),
    ("; isoemu: asi=on\n; isoemu: asi=off", "t.S:2: asi is already set differently at line 1: ; isoemu: asi=off"),
    ("; isoemu: budget=1M\n; isoemu: budget=2M",
     "t.S:2: budget is already set differently at line 1: ; isoemu: budget=2M"),
]


@pytest.mark.parametrize("header,message", MULTI_LINE_ERRORS)
def test_parse_error_across_lines(header, message):
    with pytest.raises(AsmTestError) as ei:
        parse_one(header)
    assert str(ei.value) == message


CONDITIONED = [
    # headers -> for each configuration: its expectations, canonical, with their lines
    ("; isoemu: pti=on|off\n; expect[pti=on]: probe fault 14 0x4\n; expect[pti=off]: probe fault 14 0x5\n"
     "; expect: exit 0",
     {"pti=on": ["2 probe fault 14 0x4", "4 exit 0"], "pti=off": ["3 probe fault 14 0x5", "4 exit 0"]}),
    ("; isoemu: pti=on|off asi=on|off\n; expect[pti=off asi=off]: a ok\n; expect[asi=on|off]: b ok",
     {"pti=on,asi=on": ["3 b ok"], "pti=on,asi=off": ["3 b ok"], "pti=off,asi=on": ["3 b ok"],
      "pti=off,asi=off": ["2 a ok", "3 b ok"]}),
    ("; isoemu: pti=on|off\n; expect[pti=on]: exit 0\n; expect[pti=off]: exit 1",
     {"pti=on": ["2 exit 0"], "pti=off": ["3 exit 1"]}),
]


@pytest.mark.parametrize("header,expected", CONDITIONED)
def test_conditioned_expectations(header, expected):
    t = parse_one(header)
    [a] = t.processes
    assert {v.id: [f"{e.line} {e.describe()}" for e in a.expectations_for(v.config)] for v in t.variants()} \
        == expected


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


# --- the runner ------------------------------------------------------------------------------
def report(tmp_path, src: str, **kw) -> list[str]:
    """Run ``src`` as a test file (read from tmp_path, named t.S in reports)."""
    path = tmp_path / "t.S"
    path.write_text(textwrap.dedent(src).lstrip("\n"))
    return run_test(str(path), name="t.S", **kw).report().splitlines()


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
        "  runaway: the instruction budget of 20,000 ran out",
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
    ("unknown name in a value", """
        ; expect: s rax=-EFAUT
        _start:
        s:  nop
     """ + EXIT0, "error: t.S:1: rax=-EFAUT: unknown name 'EFAUT' (did you mean 'EFAULT'?): ; expect: s rax=-EFAUT"),
    ("unknown name in a mask", """
        ; expect: s rax&PAGESIZE-1=0
        _start:
        s:  nop
     """ + EXIT0, "error: t.S:1: rax&PAGESIZE-1=0: unknown name 'PAGESIZE' (did you mean 'PAGE_SIZE'?): "
                  "; expect: s rax&PAGESIZE-1=0"),
    ("a label of the program as a value", """
        ; expect: s rax=strat
        _start:
        s:  nop
     """ + EXIT0, "error: t.S:1: rax=strat: unknown name 'strat' (did you mean '_start'?): ; expect: s rax=strat"),
    ("a value with bits outside its mask", """
        ; expect: s rax&0xfff=0x1000
        _start:
        s:  nop
     """ + EXIT0, "error: t.S:1: rax&0xfff=0x1000: 0x1000 has bits outside the mask 0xfff, so this can never "
                  "hold: ; expect: s rax&0xfff=0x1000"),
    ("an empty range", """
        ; expect: s rax=USER_DATA+0x1000..USER_DATA
        _start:
        s:  nop
     """ + EXIT0, "error: t.S:1: rax=USER_DATA+0x1000..USER_DATA: the end 0x600000 is not above the start 0x601000: "
                  "; expect: s rax=USER_DATA+0x1000..USER_DATA"),
    ("a symbolic value out of 64 bits", """
        ; expect: s rax=KERNEL_TEXT+KERNEL_TEXT
        _start:
        s:  nop
     """ + EXIT0, "error: t.S:1: rax=KERNEL_TEXT+KERNEL_TEXT: 36893488143157690368 does not fit in 64 bits: "
                  "; expect: s rax=KERNEL_TEXT+KERNEL_TEXT"),
    ("an exit status out of range", """
        ; expect: exit 255+SIGSEGV
        _start:
     """ + EXIT0, "error: t.S:1: exit 255+SIGSEGV is 266: a STATUS is from 0 to 255: ; expect: exit 255+SIGSEGV"),
    ("an unknown address space", """
        ; isoemu: asi=off
        ; expect: s space A.asi
        _start:
        s:  nop
     """ + EXIT0, "error: t.S:2: unknown address space 'A.asi'; this machine has A.kernel, A.user, kernel, "
                  "kernel.user: ; expect: s space A.asi"),
    ("a misspelt address space", """
        ; expect: s space A.usr
        _start:
        s:  nop
     """ + EXIT0, "error: t.S:1: unknown address space 'A.usr' (did you mean 'A.user'?); this machine has "
                  "A.asi, A.kernel, A.user, asi.global, kernel, kernel.user: ; expect: s space A.usr"),
    ("non-ASCII outside a string (a pasted no-break space)", """
        ; the comment may say café, and a string "hé" is its UTF-8 bytes
        _start:
            mov\u00a0eax, 1
     """ + EXIT0, "error: t.S:3: non-ASCII character U+00A0 (NO-BREAK SPACE) outside a string: mov\u00a0eax, 1"),
    ("non-ASCII in a label", "_start:\nsmörgåsbord:\n" + EXIT0,
     "error: t.S:2: non-ASCII character U+00F6 (LATIN SMALL LETTER O WITH DIAERESIS) outside a string: "
     "smörgåsbord:"),
    ("an include file that is not there", """
        .include "nothere.inc"
        _start:
     """ + EXIT0, "error: t.S:1: cannot find include file 'nothere.inc'"),
]


@pytest.mark.parametrize("name,src,message", BROKEN_CASES, ids=[c[0] for c in BROKEN_CASES])
def test_runner_broken_test(tmp_path, name, src, message):
    assert report(tmp_path, src) == ["FAIL t.S", "  " + message]




VALUE_CASES = [
    # symbols, expressions, !=, masks, ranges, spaces: each passing and failing
    ("symbols and labels as values", """
        ; expect: s rax=-EFAULT rbx=SYS_getpid rcx=USER_DATA+8 rdx=_start rsi=s+7 rdi=-EFAULT+0
        _start:
            mov rbx, SYS_getpid
            mov rcx, USER_DATA + 8
            lea rdx, [rip + _start]
            lea rsi, [rip + s + 7]
            mov rdi, -14
        s:
            mov rax, -14
     """ + EXIT0, ["PASS t.S"]),
    ("a symbol that does not match: the report shows its value", """
        ; expect: s rax=-EINVAL rbx=SYS_getpid
        _start:
            mov rbx, SYS_getpid
        s:
            mov rax, -14
     """ + EXIT0, ["FAIL t.S",
                   "  t.S:1: expected s rax=-EINVAL (-22) rbx=SYS_getpid (39)",
                   "    got rax=-14",
                   "    at t.S:5: mov rax, -14"]),
    ("!= holds", """
        ; expect: s rax!=0 rbx!=-EFAULT
        _start:
        s:
            mov eax, 1
     """ + EXIT0, ["PASS t.S"]),
    ("!= fails", """
        ; expect: s rax!=0 rbx!=-EFAULT
        _start:
            mov rbx, -14
        s:
            xor eax, eax
     """ + EXIT0, ["FAIL t.S",
                   "  t.S:1: expected s rax!=0 rbx!=-EFAULT (-14)",
                   "    got rax=0 rbx=-14",
                   "    at t.S:5: xor eax, eax"]),
    ("masks hold", """
        ; expect: s rax&0xfff=0 rbx&PAGE_SIZE-1!=0 rcx&0xff=0x34
        _start:
            mov rbx, USER_DATA + 8
            mov rcx, 0x1234
        s:
            mov rax, USER_DATA
     """ + EXIT0, ["PASS t.S"]),
    ("a mask fails", """
        ; expect: s rax&0xfff=0 rcx&0xff=0x34
        _start:
            mov rcx, 0x1235
        s:
            mov rax, USER_DATA + 0x10
     """ + EXIT0, ["FAIL t.S",
                   "  t.S:1: expected s rax&0xfff=0 rcx&0xff=52",
                   "    got rax=0x600010 (rax&0xfff=0x10) rcx=0x1235 (rcx&0xff=0x35)",
                   "    at t.S:5: mov rax, USER_DATA + 0x10"]),
    ("ranges hold: LO included, HI excluded; a negative LO compares signed", """
        ; expect: a rax=0x600000..0x601000 rbx=USER_DATA..USER_DATA+PAGE_SIZE rcx=-4095..0 rdx!=-4095..0
        _start:
            mov rbx, USER_DATA + 0xfff
            mov rcx, -4095
            mov rdx, 0
        a:
            mov rax, USER_DATA
     """ + EXIT0, ["PASS t.S"]),
    ("ranges fail at HI, below LO, and signed", """
        ; expect: a rax=0x600000..0x601000 rbx=USER_DATA..USER_DATA+PAGE_SIZE rcx=-4095..0 rdx!=-4095..0
        _start:
            mov rbx, USER_DATA - 1
            mov rcx, 0
            mov rdx, -1
        a:
            mov rax, USER_DATA + 0x1000
     """ + EXIT0, ["FAIL t.S",
                   "  t.S:1: expected a rax=0x600000..0x601000 rbx=USER_DATA..USER_DATA+PAGE_SIZE "
                   "(0x600000..0x601000) rcx=-4095..0 rdx!=-4095..0",
                   "    got rax=0x601000 rbx=0x5fffff rcx=0 rdx=-1",
                   "    at t.S:7: mov rax, USER_DATA + 0x1000"]),
    ("the space an instruction ran in: A.user (with PTI)", """
        ; isoemu: pti=on
        ; expect: s space A.user
        _start:
        s:  nop
     """ + EXIT0, ["PASS t.S"]),
    ("the space an instruction ran in: without PTI A.user is A.kernel", """
        ; isoemu: pti=off
        ; expect: s space A.user
        ; expect: t space A.kernel
        _start:
        s:  nop
        t:  nop
     """ + EXIT0, ["PASS t.S"]),
    ("the wrong space", """
        ; isoemu: pti=on
        ; expect: s space A.kernel
        _start:
        s:  nop
     """ + EXIT0, ["FAIL t.S",
                   "  t.S:2: expected s space A.kernel",
                   "    got space A.user",
                   "    at t.S:4: s:  nop"]),
    ("a space expectation not reached", """
        ; expect: s space A.user
        _start:
     """ + EXIT0 + """
        s:  nop
     """, ["FAIL t.S",
           "  t.S:1: expected s space A.user",
           "    not reached",
           "    at t.S:8: s:  nop"]),
    ("a symbolic exit status", """
        ; expect: exit 128+SIGSEGV
        _start:
     """ + EXIT0, ["FAIL t.S",
                   "  t.S:1: expected exit 128+SIGSEGV (139)",
                   "    got exit 0"]),
    ("trailing comments and a quoted output line", """
        ; expect: exit 0   # the default, written out
        ; expect: output "a # b"   // what the program prints
        ; expect: output "  c"
        _start:
            mov eax, SYS_write
            mov edi, 1
            lea rsi, [rip + msg]
            mov edx, 10
            syscall
     """ + EXIT0 + """
        .rodata
        msg: .ascii "a # b\\n  c\\n"
     """, ["PASS t.S"]),
    ("a fault named by its mnemonic", """
        ; expect: bad fault UD
        ; expect: probe fault PF 0x4
        _start:
        bad:
            ud2
            xor eax, eax
        probe:
            mov bl, byte ptr [rax]
     """ + EXIT0, ["PASS t.S"]),
]


@pytest.mark.parametrize("name,src,expected", VALUE_CASES, ids=[c[0] for c in VALUE_CASES])
def test_runner_values(tmp_path, name, src, expected):
    assert report(tmp_path, src) == expected


# --- configurations ------------------------------------------------------------------------------
MATRIX = """
    ; isoemu: pti=on|off
    ; expect: probe fault 14 0x4
    _start:
        mov rax, KERNEL_TEXT
    probe:
        mov bl, byte ptr [rax]
""" + EXIT0
MATRIX_OFF = ["  t.S:2: expected probe fault 14 0x4",
              "    got #PF error code 0x5 (protection, read, user), CR2 0xffffffff81000000, RIP 0x400007 (A:probe), "
              "space A.kernel",
              "    at t.S:6: mov bl, byte ptr [rax]"]
MATRIX_CASES = [
    # run_test arguments -> the report
    ({}, ["FAIL t.S", "  [pti=off] " + MATRIX_OFF[0].strip()] + MATRIX_OFF[1:]),
    ({"variant": "pti=on"}, ["PASS t.S[pti=on]"]),
    ({"variant": "pti=off"}, ["FAIL t.S[pti=off]"] + MATRIX_OFF),
    ({"overrides": {"pti": "on"}}, ["PASS t.S"]),
    ({"overrides": {"pti": "off"}}, ["FAIL t.S"] + MATRIX_OFF),
    ({"variant": "pti=maybe"}, ["FAIL t.S", "  error: t.S: no configuration 'pti=maybe'; it has 'pti=on', "
                                            "'pti=off'"]),
]


@pytest.mark.parametrize("kwargs,expected", MATRIX_CASES)
def test_matrix_runs(tmp_path, kwargs, expected):
    assert report(tmp_path, MATRIX, **kwargs) == expected


def test_labels_are_checked_in_every_configuration(tmp_path):
    src = """
        ; isoemu: pti=on|off
        ; expect[pti=off]: prob ok
        _start:
        probe:
     """ + EXIT0
    assert report(tmp_path, src, variant="pti=on") == \
        ["FAIL t.S[pti=on]", "  error: t.S:2: unknown label 'prob': ; expect[pti=off]: prob ok"]


def test_conditioned_expectations_run_in_their_configurations(tmp_path):
    src = """
        ; isoemu: pti=on|off asi=on|off
        ; expect[pti=on]: probe fault 14 0x4
        ; expect[pti=off]: probe fault 14 0x5
        ; expect[asi=on]: pid rax=1
        ; expect[asi=off]: pid rax=2
        _start:
            mov rax, KERNEL_TEXT
        probe:
            mov bl, byte ptr [rax]
            mov eax, SYS_getpid
        pid:
            syscall
     """ + EXIT0
    path = tmp_path / "t.S"
    path.write_text(textwrap.dedent(src).lstrip("\n"))
    got = [r.report().splitlines() for r in run_variants(str(path), name="t.S")]
    assert got == [
        ["PASS t.S[pti=on,asi=on]"],
        ["FAIL t.S[pti=on,asi=off]", "  t.S:5: expected pid rax=2", "    got rax=1", "    at t.S:12: syscall"],
        ["PASS t.S[pti=off,asi=on]"],
        ["FAIL t.S[pti=off,asi=off]", "  t.S:5: expected pid rax=2", "    got rax=1", "    at t.S:12: syscall"]]


# --- the include library --------------------------------------------------------------------------
LIBRARY_CASES = [
    ("secret_page, sys_probe, sys_exit", """
        ; isoemu: asi=off
        ; expect: read rax=-EFAULT rdx=0 r8=0 r9=14
        ; expect: write rax=-EFAULT rdx=2 r9=14
        ; expect: own rax=0
        ; expect: exit 7
        .include "isoemu.inc"
        _start:
            secret_page r13
            mov eax, SYS_direct_map_alias
            mov rdi, r13
            syscall
            sys_probe read, rax
            mov eax, SYS_direct_map_alias
            mov rdi, r13
            syscall
            sys_probe write, rax, PROBE_WRITE, PROBE_FULL
            sys_probe own, r13
            sys_exit 7
     """, ["PASS t.S"]),
    ("secret_map leaves the page untouched; secret_fd's fd", """
        ; expect: fd r12=3 r14=4
        ; expect: untouched rax=-EFAULT
        .include "isoemu.inc"
        _start:
            secret_fd r12
            secret_map r13, 8192, 4096, r14
        fd:
            mov eax, SYS_direct_map_alias
            mov rdi, r13
        untouched:
            syscall
            sys_exit
     """, ["PASS t.S"]),
    ("sys_probe in the ASI restricted space", """
        ; isoemu: asi=on
        ; expect: text rax=0 r8=0
        .include "isoemu.inc"
        _start:
            sys_probe text, KERNEL_TEXT, PROBE_READ, PROBE_ASI
            sys_exit
     """, ["PASS t.S"]),
    ("memfd_secret fails: exit 121", """
        .include "isoemu.inc"
        _start:
            mov r15d, 13                # fds 3..15: the table is full
        more:
            mov eax, SYS_memfd_secret
            xor edi, edi
            syscall
            dec r15d
            jnz more
            secret_fd
            sys_exit
     """, ["FAIL t.S", "  t.S: expected exit 0 (the default)", "    got exit 121"]),
    ("ftruncate fails: exit 122", """
        .include "isoemu.inc"
        _start:
            secret_fd r12, 0x100000     # more than a memfd holds
            sys_exit
     """, ["FAIL t.S", "  t.S: expected exit 0 (the default)", "    got exit 122"]),
    ("mmap fails: exit 123", """
        .include "isoemu.inc"
        _start:
            secret_map r13, 4096, 0
            sys_exit
     """, ["FAIL t.S", "  t.S: expected exit 0 (the default)", "    got exit 123"]),
    ("sigaction and restorer: the program's own SIGSEGV handler", """
        ; expect: installed rax=0
        ; expect: exit 42
        .include "isoemu.inc"
        _start:
            sigaction SIGSEGV, handler, back
        installed:
            nop
            xor eax, eax
            mov bl, byte ptr [rax]      # SIGSEGV: the handler exits 42
            sys_exit 1
        handler:
            sys_exit 42
            restorer back
     """, ["PASS t.S"]),
    ("a test's own include file beside it", """
        ; expect: s rax=5
        .include "mine.inc"
        _start:
        s:
            five rax
            sys_exit
     """, ["PASS t.S"]),
]


@pytest.mark.parametrize("name,src,expected", LIBRARY_CASES, ids=[c[0] for c in LIBRARY_CASES])
def test_include_library(tmp_path, name, src, expected):
    (tmp_path / "mine.inc").write_text('.include "isoemu.inc"\n.macro five reg\n    mov \\reg, 5\n.endm\n')
    assert report(tmp_path, src) == expected


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
    """A bug in isoemu (here an injected KeyError) is an internal error of that
    test alone; an IsoemuError (above: AsmError and the like) is never one."""
    import emu.tools.asmtest.runner

    def broken_run(self):
        raise KeyError("boom")
    monkeypatch.setattr(emu.tools.asmtest.runner.Runner, "run", broken_run)
    lines = report(tmp_path, "_start:\n" + EXIT0)
    assert lines[:2] == ["FAIL t.S", "  internal error (a bug in isoemu): KeyError: 'boom'"]
    assert lines[2].startswith(f"    raised at {__file__}:") and lines[2].endswith(" in broken_run")
    assert len(lines) == 3


READ_ERRORS = [
    # file bytes -> the error line
    (None, "error: {d}/t.S: cannot read: No such file or directory"),
    (b"_start:\n    nop\n    .ascii \"\xe9\"\n", "error: t.S:3: not UTF-8 text (byte 0xe9)"),
    (b"\xff\xfe;\x00 \x00", "error: t.S:1: not UTF-8 text (byte 0xff)"),
]


@pytest.mark.parametrize("data,message", READ_ERRORS)
def test_unreadable_files(tmp_path, data, message):
    path = tmp_path / "t.S"
    if data is not None:
        path.write_bytes(data)
        res = run_test(str(path), name="t.S")
    else:
        res = run_test(str(path))
        message = message.replace("{d}/t.S", str(path))
    assert (res.passed, res.report().splitlines()[1:]) == (False, ["  " + message])


# the predefined symbols docs/asm-tests.md lists, with their Linux / layout values
PREDEFINED = [
    ("SYS_read", 0), ("SYS_write", 1), ("SYS_mmap", 9), ("SYS_munmap", 11), ("SYS_getpid", 39),
    ("SYS_exit", 60), ("SYS_ftruncate", 77), ("SYS_memfd_secret", 447),
    ("SYS_probe", 1000), ("SYS_direct_map_alias", 1001), ("SYS_gup_fast_read", 1002),
    ("PROT_NONE", 0), ("PROT_READ", 1), ("PROT_WRITE", 2), ("PROT_EXEC", 4),
    ("MAP_SHARED", 0x1), ("MAP_PRIVATE", 0x2), ("MAP_FIXED", 0x10), ("MAP_ANONYMOUS", 0x20),
    ("MAP_SECRET", 0x200000), ("O_CLOEXEC", 0o2000000),
    ("DIRECT_MAP_BASE", 0xFFFF888000000000), ("KERNEL_TEXT", 0xFFFFFFFF81000000),
    ("KERNEL_DATA", 0xFFFFFFFF81600000), ("ENTRY_TEXT", 0xFFFFFFFF81200000),
    ("CPU_ENTRY_AREA", 0xFFFFFE0000000000), ("USER_DATA", 0x600000),
]


def test_predefined_symbols_reach_the_program(tmp_path):
    """Each symbol assembles to its value (one label per symbol), and reads
    as that value in an expectation."""
    heads = "".join(f"; expect: s{i} rax={v:#x} rbx={name}\n" for i, (name, v) in enumerate(PREDEFINED))
    body = "".join(f"    mov rax, {name}\n    mov rbx, rax\ns{i}:\n    nop\n" for i, (name, _) in enumerate(PREDEFINED))
    assert report(tmp_path, heads + "_start:\n" + body + EXIT0) == ["PASS t.S"]
    # and the value really is checked: a wrong one fails
    got = report(tmp_path, "; expect: s rax=0x600001\n_start:\n    mov rax, USER_DATA\ns:\n    nop\n" + EXIT0)
    assert got == ["FAIL t.S", "  t.S:1: expected s rax=0x600001", "    got rax=0x600000", "    at t.S:5: nop"]


# --- the command --------------------------------------------------------------------------------
PASSING = "; expect: pid rax=1\n_start:\n    mov eax, SYS_getpid\npid:\n    syscall\n" + EXIT0
FAILING = "; expect: exit 1\n_start:\n" + EXIT0
MATRIX_FILE = textwrap.dedent(MATRIX).lstrip("\n")
SPIN = "; isoemu: budget=300G\n_start: jmp _start\n"


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
    ({"m.S": MATRIX_FILE}, ["m.S"], 1,
     ["PASS m.S[pti=on]", "FAIL m.S[pti=off]", "  m.S:2: expected probe fault 14 0x4",
      "    got #PF error code 0x5 (protection, read, user), CR2 0xffffffff81000000, RIP 0x400007 (A:probe), "
      "space A.kernel", "    at m.S:6: mov bl, byte ptr [rax]", "1 passed, 1 failed"], ""),
    ({"m.S": MATRIX_FILE}, ["--set", "pti=on", "m.S"], 0, ["PASS m.S", "1 passed, 0 failed"], ""),
    ({"m.S": MATRIX_FILE, "a.S": PASSING}, ["--set", "pti=off,asi=off", "a.S", "m.S"], 1,
     ["PASS a.S", "FAIL m.S", "  m.S:2: expected probe fault 14 0x4",
      "    got #PF error code 0x5 (protection, read, user), CR2 0xffffffff81000000, RIP 0x400007 (A:probe), "
      "space A.kernel", "    at m.S:6: mov bl, byte ptr [rax]", "1 passed, 1 failed"], ""),
    ({"m.S": MATRIX_FILE}, ["--no-pti", "m.S"], 1,
     ["FAIL m.S", "  m.S:2: expected probe fault 14 0x4",
      "    got #PF error code 0x5 (protection, read, user), CR2 0xffffffff81000000, RIP 0x400007 (A:probe), "
      "space A.kernel", "    at m.S:6: mov bl, byte ptr [rax]", "0 passed, 1 failed"], ""),
    ({"m.S": MATRIX_FILE}, ["--no-pti", "--set", "pti=on", "m.S"], 2, [],
     "isoemu: --no-pti contradicts --set pti=on\n"),
    ({"s.S": SPIN}, ["--budget", "20k", "s.S"], 1,
     ["FAIL s.S", "  runaway: the instruction budget of 20,000 ran out",
      "    stopped at RIP 0x400000 (A:_start), CPL 3, space A.user", "    at s.S:2: _start: jmp _start",
      "0 passed, 1 failed"], ""),
    ({}, ["missing.S"], 2, [], "isoemu: missing.S: no such file or directory\n"),
    ({"empty/notes.txt": "x"}, ["empty"], 2, [], "isoemu: empty: no .S files in this directory\n"),
    ({"a.S": PASSING}, ["--set", "ptj=off", "a.S"], 2, [],
     f"isoemu: unknown machine switch 'ptj' (did you mean 'pti'?); known: {KNOWN_SWITCHES}\n"),
    ({"a.S": PASSING}, ["--set", "pti", "a.S"], 2, [], "isoemu: --set 'pti': write KEY=VALUE (e.g. pti=off)\n"),
    ({"a.S": PASSING}, ["--budget", "lots", "a.S"], 2, [],
     "isoemu: bad --budget 'lots': expected a decimal number such as 2000000 or 10M\n"),
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


def test_interrupted_stops_the_whole_run(tmp_path, monkeypatch, capsys):
    """Interrupted (Ctrl-C in Machine.run) is not a test failure: the runner
    stops every test, prints the summary so far and exits 130 with where."""
    import emu.linux.machine

    def interrupted_run(self, budget):
        raise Interrupted("interrupted at RIP 0x400000 (A:_start), CPL 3, space A.user, after at least "
                          "8,000,000 instructions")
    write(tmp_path / "a.S", PASSING)
    write(tmp_path / "b.S", PASSING)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(emu.linux.machine.Machine, "run", interrupted_run)
    assert main(["test", "a.S", "b.S"]) == 130
    out, err = capsys.readouterr()
    assert re.fullmatch(r"0 passed, 0 failed in [0-9.]+ s \(interrupted\)\n", out), out
    assert err == ("isoemu: interrupted at RIP 0x400000 (A:_start), CPL 3, space A.user, after at least "
                   "8,000,000 instructions, in a.S\n")
    with pytest.raises(Interrupted):
        run_test(str(tmp_path / "a.S"))


def isoemu_script() -> str:
    return os.path.join(os.path.dirname(sys.executable), "isoemu")


def test_console_script_exit_status(tmp_path):
    """The installed ``isoemu`` script: statuses 1 and 2 reach the shell."""
    write(tmp_path / "d" / "a.S", PASSING)
    write(tmp_path / "d" / "b.S", FAILING)
    runs = [subprocess.run([isoemu_script(), "test", *argv], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120) for argv in (["d"], ["nothere"])]
    got = [(p.returncode, p.stdout.splitlines()[:-1], p.stderr) for p in runs]
    assert got == [(1, ["PASS d/a.S", "FAIL d/b.S", "  d/b.S:1: expected exit 1", "    got exit 0"], ""),
                   (2, [], "isoemu: nothere: no such file or directory\n")]
    assert runs[0].stdout.splitlines()[-1].startswith("1 passed, 1 failed in ")


def test_ctrl_c_stops_a_long_run(tmp_path):
    """SIGINT to ``isoemu test`` running a 300G-instruction spin: exit 130
    within 2 s, naming where the guest was and which test it ran."""
    write(tmp_path / "a.S", PASSING)
    write(tmp_path / "spin.S", SPIN)
    status, first, out, err = interrupt(["test", "-j", "1", "a.S", "spin.S"], tmp_path)
    assert (status, first) == (130, "PASS a.S\n")
    assert re.fullmatch(r"1 passed, 0 failed in [0-9.]+ s \(interrupted\)\n", out), out
    assert re.fullmatch(r"isoemu: interrupted at RIP 0x400000 \(A:_start\), CPL 3, space A\.user, after at "
                        r"least [0-9,]+ instructions, in spin\.S\n", err), err


def test_ctrl_c_stops_the_worker_processes(tmp_path):
    """The same with -j 2: the workers are stopped (none left behind), the
    summary says how far the run went, the message names the file."""
    write(tmp_path / "a.S", PASSING)
    write(tmp_path / "spin.S", SPIN)
    write(tmp_path / "z.S", PASSING)
    status, first, out, err = interrupt(["test", "-j", "2", "a.S", "spin.S", "z.S"], tmp_path)
    assert (status, first) == (130, "PASS a.S\n")
    assert re.fullmatch(r"1 passed, 0 failed in [0-9.]+ s \(interrupted\)\n", out), out
    assert err == "isoemu: interrupted, in spin.S (the worker processes stopped)\n"
    leftover = subprocess.run(["pgrep", "-f", f"{isoemu_script()} test -j 2 a.S"], capture_output=True)
    assert leftover.stdout == b""


def interrupt(argv: list[str], cwd) -> tuple[int, str, str, str]:
    """Run isoemu, SIGINT it a second after its first line: (status, first line, the rest, stderr)."""
    p = subprocess.Popen([isoemu_script(), *argv], cwd=cwd, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        first = p.stdout.readline()              # a.S done: spin.S is being built or run
        time.sleep(1.0)
        p.send_signal(signal.SIGINT)
        status = p.wait(timeout=2)
    finally:
        p.kill()
    out, err = p.communicate()
    return status, first, out, err


def test_jobs_give_the_same_lines_in_the_same_order(tmp_path):
    """-j 3 over passing and failing files, with and without -x: exactly the
    lines and the status of -j 1 (the summary's time aside)."""
    import io

    for name, src in (("d/a.S", PASSING), ("d/b.S", FAILING), ("d/c.S", PASSING), ("d/e.S", FAILING),
                      ("d/m.S", MATRIX_FILE)):
        write(tmp_path / name, src)
    runs = {}
    for jobs in (1, 3):
        for exitfirst in (False, True):
            out = io.StringIO()
            status = run_paths([str(tmp_path / "d")], out, exitfirst=exitfirst, jobs=jobs)
            lines = out.getvalue().splitlines()
            runs[jobs, exitfirst] = (status, lines[:-1], re.sub(r" in [0-9.]+ s$", "", lines[-1]))
    assert runs[1, False] == runs[3, False] and runs[1, True] == runs[3, True]
    assert runs[1, False][0] == 1 and runs[1, False][2] == "3 passed, 3 failed"
    assert runs[1, True][2] == "1 passed, 1 failed"


def test_discover_order(tmp_path):
    for name in ("d/z.S", "d/a/b.S", "d/a.S", "d/c.s"):
        write(tmp_path / name, "")
    d = str(tmp_path / "d")
    assert discover([d]) == [f"{d}/a.S", f"{d}/z.S", f"{d}/a/b.S"]


def test_run_paths_counts_configurations(tmp_path):
    import io

    write(tmp_path / "m.S", MATRIX_FILE)
    out = io.StringIO()
    assert run_paths([str(tmp_path / "m.S")], out, overrides={"pti": "on"}) == 0
    assert out.getvalue().splitlines()[:-1] == [f"PASS {tmp_path}/m.S"]


# --- the pytest plugin ----------------------------------------------------------------------------
def pytest_run(tmp_path, *args) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYTEST_") and k not in ("CI", "BUILD_NUMBER")}   # xdist worker vars too
    env["COLUMNS"] = "200"
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
                       cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    return p.returncode, p.stdout + p.stderr


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
WRONG_EXIT_REPORT = "asm/one/wrong_exit.S:1: expected exit 1\n  got exit 0\n"


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


SUMMARY_CASES = [
    # a failing file -> its line in the -ra short summary: the first failure's headline
    ("exit", FAILING, "FAILED asm/exit.S::exit - asm/exit.S:1: expected exit 1"),
    ("asm_error", "_start:\n    movv rax, 1\n",
     "FAILED asm/asm_error.S::asm_error - error: asm/asm_error.S:2: Invalid mnemonic: movv rax, 1"),
    ("header", "; expects: exit 1\n" + PROGRAM,
     "FAILED asm/header.S::header - error: asm/header.S:1: unknown header 'expects' (did you mean 'expect'?): "
     "; expects: exit 1"),
    ("no_exit", "_start:\n    nop\n", "FAILED asm/no_exit.S::no_exit - process A ran past the end of its code "
                                       "(no SYS_exit)"),
    ("matrix", MATRIX_FILE, "FAILED asm/matrix.S::matrix[pti=off] - asm/matrix.S:2: expected probe fault 14 0x4"),
]


def test_plugin_short_summary_is_the_headline(tmp_path):
    for name, text, _ in SUMMARY_CASES:
        write(tmp_path / "asm" / f"{name}.S", text)
    code, out = pytest_run(tmp_path, "-ra", "asm")
    got = sorted(ln for ln in out.splitlines() if ln.startswith("FAILED"))
    assert (code, got) == (1, sorted(line for _, _, line in SUMMARY_CASES)), out


def test_plugin_matrix_items_and_overrides(tmp_path):
    write(tmp_path / "asm" / "m.S", "; isoemu: pti=on|off asi=on|off\n" + PROGRAM)
    runs = [pytest_run(tmp_path, "--collect-only", "asm", *args) for args in
            ([], ["--isoemu-set", "pti=off"], ["--isoemu-set", "pti=off", "--isoemu-set", "asi=on"],
             ["--isoemu-set", "ptj=off"])]
    assert [(code, [ln for ln in out.splitlines() if "::" in ln or "ERROR" in ln]) for code, out in runs] == [
        (0, ["asm/m.S::m[pti=on,asi=on]", "asm/m.S::m[pti=on,asi=off]", "asm/m.S::m[pti=off,asi=on]",
             "asm/m.S::m[pti=off,asi=off]"]),
        (0, ["asm/m.S::m[asi=on]", "asm/m.S::m[asi=off]"]),
        (0, ["asm/m.S::m"]),
        (4, [f"ERROR: unknown machine switch 'ptj' (did you mean 'pti'?); known: {KNOWN_SWITCHES}"])]
    # and an override changes what runs: pti=off fails the PTI expectation of MATRIX
    write(tmp_path / "asm" / "m.S", MATRIX_FILE)
    code, out = pytest_run(tmp_path, "-ra", "asm", "--isoemu-set", "pti=off")
    assert (code, [ln for ln in out.splitlines() if ln.startswith("FAILED")]) == \
        (1, ["FAILED asm/m.S::m - asm/m.S:2: expected probe fault 14 0x4"]), out


def test_plugin_isoemu_paths(tmp_path):
    """``isoemu_paths`` globs (relative to the ini file) add .S files
    anywhere; folders named asm are still collected."""
    write(tmp_path / "pytest.ini", "[pytest]\nisoemu_paths =\n    cases/**/*.S\n    extra/one.S\n")
    write(tmp_path / "cases" / "deep" / "x" / "a.S", PASSING)
    write(tmp_path / "cases" / "b.S", PASSING)
    write(tmp_path / "extra" / "one.S", PASSING)
    write(tmp_path / "extra" / "two.S", PASSING)               # not matched
    write(tmp_path / "asm" / "c.S", PASSING)
    code, out = pytest_run(tmp_path, "--collect-only", ".")
    assert (code, sorted(ln for ln in out.splitlines() if "::" in ln)) == \
        (0, ["asm/c.S::c", "cases/b.S::b", "cases/deep/x/a.S::a", "extra/one.S::one"]), out
    write(tmp_path / "pytest.ini", "[pytest]\nisoemu_paths = /abs/*.S\n")
    code, out = pytest_run(tmp_path, "--collect-only", ".")
    assert (code, [ln for ln in out.splitlines() if "ERROR" in ln]) == \
        (4, [f"ERROR: isoemu_paths: '/abs/*.S' is absolute; write a pattern relative to {tmp_path}"]), out


def test_plugin_failure_reports_name_files_as_the_command_line_does(asm_tree):
    """A file named on the command line is collected wherever it lies.  Reports
    name it relative to the directory pytest runs in, or by its absolute path
    when outside it (pytest's rootdir is then their common ancestor, and the
    runner must still find the file)."""
    write(asm_tree / "here" / "other" / "not_collected.S", FAILING)
    outside = asm_tree / "asm" / "one" / "wrong_exit.S"
    code, out = pytest_run(asm_tree / "here", "other/not_collected.S", str(outside))
    blocks = [out[out.index(f"{name}:1: expected"):].splitlines()[:2] for name in ("other/not_collected.S", outside)]
    assert (code, blocks) == (1, [
        ["other/not_collected.S:1: expected exit 1", "  got exit 0"],
        [f"{outside}:1: expected exit 1", "  got exit 0"]]), out
