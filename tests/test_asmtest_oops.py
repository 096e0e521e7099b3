"""The ``LABEL oops [VECTOR [ERRORCODE]]`` expectation (docs/asm-tests.md): a
kernel oops that ends the run, charged to the system call it was handling.
The oopses come from the injections that bring back a fixed secretmem bug
(docs/secretmem.md, "Bug classes"); without the injection the same program
runs to its exit."""

from __future__ import annotations

import textwrap

import pytest

from emu.tools.asmtest import AsmTestError, parse_test, run_test

PROGRAM = "_start:\n    mov eax, SYS_exit\n    xor edi, edi\n    syscall\n"


def parse_one(header: str):
    return parse_test(header + "\n" + PROGRAM, "t.S")


def report(tmp_path, src: str) -> list[str]:
    path = tmp_path / "t.S"
    path.write_text(textwrap.dedent(src).lstrip("\n"))
    return run_test(str(path), name="t.S").report().splitlines()


PARSE_CASES = [
    # header -> canonical, vector, error code
    ("; expect: grow oops", "grow oops", None, None),
    ("; expect: grow oops 14 0x2", "grow oops 14 0x2", 14, 2),
    ("; expect: grow oops PF 2", "grow oops 14 0x2", 14, 2),
    ("; expect: grow oops UD", "grow oops 6", 6, None),
]


@pytest.mark.parametrize("header,canonical,vector,error_code", PARSE_CASES)
def test_parse_oops(header, canonical, vector, error_code):
    [e] = parse_one(header).processes[0].expectations
    assert (e.kind, e.label, e.describe(), e.vector, e.error_code) == ("oops", "grow", canonical, vector,
                                                                        error_code)


PARSE_ERRORS = [
    ("; expect: grow oops 14", "vector 14 (#PF) needs an ERRORCODE"),
    ("; expect: grow oops 6 0x0", "vector 6 (#UD) has no error code"),
    ("; expect: grow oops 14 0x2 0x3", "oops takes at most VECTOR [ERRORCODE], e.g. 'oops 14 0x2'"),
    ("; expect: grow oops 40 0", "vector '40' is out of range (0 .. 31)"),
]


@pytest.mark.parametrize("header,message", PARSE_ERRORS)
def test_parse_oops_errors(header, message):
    with pytest.raises(AsmTestError) as ei:
        parse_one(header)
    assert str(ei.value) == f"t.S:1: {message}: {header}"


def test_two_oops_on_one_label_conflict():
    with pytest.raises(AsmTestError) as ei:
        parse_one("; expect: grow oops\n; expect: grow oops 14 0x2")
    assert str(ei.value) == "t.S:2: grow already has 'grow oops' at line 1: ; expect: grow oops 14 0x2"


# the commit's reproducer of 84ac013046cc: size 10, map, write, unmap, grow to 20
GROW = """
    _start:
        mov eax, SYS_memfd_secret
        xor edi, edi
        syscall
        mov r12, rax
        mov eax, SYS_ftruncate
        mov rdi, r12
        mov esi, 10
    size:
        syscall
        mov eax, SYS_mmap
        xor edi, edi
        mov esi, 10
        mov edx, PROT_READ | PROT_WRITE
        mov r10d, MAP_SHARED
        mov r8, r12
        xor r9d, r9d
        syscall
        mov r13, rax
        mov byte ptr [r13], 1
        mov eax, SYS_munmap
        mov rdi, r13
        mov esi, 10
        syscall
        mov eax, SYS_ftruncate
        mov rdi, r12
        mov esi, 20
    grow:
        syscall
    after:
        mov eax, SYS_exit
        xor edi, edi
        syscall
"""
PANIC = ("kernel panic: BUG: unable to handle page fault for address: {cr2} / #PF: "
         "error_code(0x0000000000000002) RIP: {rip} / Kernel panic - not syncing: Oops")

RUN_CASES = [
    ("expected oops, any", "; isoemu: inject=secretmem_resize\n; expect: grow oops\n", ["PASS t.S"]),
    ("expected oops, its exception", "; isoemu: inject=secretmem_resize\n; expect: grow oops 14 0x2\n",
     ["PASS t.S"]),
    ("the labels after it are never reached",
     "; isoemu: inject=secretmem_resize\n; expect: grow oops 14 0x2\n; expect: after ok\n",
     ["FAIL t.S", "  t.S:3: expected after ok", "    not reached", "    at t.S:{after}: mov eax, SYS_exit"]),
    ("another exception", "; isoemu: inject=secretmem_resize\n; expect: grow oops 14 0x0\n",
     ["FAIL t.S", "  t.S:2: expected grow oops 14 0x0",
      "    got an oops after #PF error code 0x2 (not-present, write, supervisor), CR2 {cr2}, RIP {rip} "
      "(secretmem_resize_zero), space A.asi",
      "    at t.S:{grow}: syscall"]),
    ("charged to another instruction", "; isoemu: inject=secretmem_resize\n; expect: size oops\n",
     ["FAIL t.S", "  t.S:2: expected size oops",
      "    got an oops elsewhere: " + PANIC, "    at t.S:{grow}: syscall"]),
    ("no oops without the injection", "; expect: grow oops\n",
     ["FAIL t.S", "  t.S:1: expected grow oops", "    got no oops: the kernel handled it", "    at t.S:{grow}: syscall"]),
    ("an oops nobody expects stops the machine", "; isoemu: inject=secretmem_resize\n; expect: size rax=0\n",
     ["FAIL t.S", "  the machine stopped: " + PANIC]),
    ("without the injection: -EINVAL and the exit", "; expect: grow rax=-EINVAL\n; expect: after ok\n",
     ["PASS t.S"]),
]


@pytest.mark.parametrize("name,head,expected", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_oops_runs(tmp_path, name, head, expected):
    got = report(tmp_path, head + textwrap.dedent(GROW))
    # the page's direct-map address and the stub's RIP come from the run
    cr2 = rip = None
    for line in got:
        if "CR2 " in line:
            cr2, rip = line.split("CR2 ")[1].split(",")[0], line.split("RIP ")[1].split(" ")[0]
        elif "for address: " in line:
            cr2 = line.split("for address: ")[1].split(" ")[0]
            rip = line.split("RIP: ")[1].split(" ")[0]
    lines = (head + textwrap.dedent(GROW)).splitlines()
    grow = lines.index("grow:") + 2
    want = [x.format(cr2=cr2, rip=rip, grow=grow, after=grow + 2) for x in expected]
    assert got[:len(expected)] == want


def test_an_oops_in_another_process_is_unexpected_there(tmp_path):
    """B oopses where A expected it: A's expectation fails, and B's oops is
    reported against B; neither process is held to the default exit."""
    src = ("; isoemu: inject=secretmem_resize\n; expect: yield oops\n_start:\n    mov eax, SYS_sched_yield\n"
           "yield:\n    syscall\n    mov eax, SYS_exit\n    xor edi, edi\n    syscall\n"
           "; process: B\n" + textwrap.dedent(GROW))
    got = report(tmp_path, src)
    assert got[0] == "FAIL t.S"
    assert "  t.S:2: expected yield oops" in got and "    got no oops: the kernel handled it" in got
    assert any(line.startswith("  unexpected oops in process B: kernel panic: BUG: unable to handle page fault")
               for line in got)
    assert not any("expected exit" in line for line in got)
