"""Assembly isolation tests: the ``.S`` test format and its runner.

A test is a user program (Intel syntax, entry at ``_start``) that runs at
CPL3 as process ``A`` of a freshly booted machine, with its expectations in
comment lines (``;``, ``#`` or ``//``) anywhere in the file::

    ; isoemu: pti=off asi=on budget=200000
    ; expect: probe fault 14 0x5
    ; expect: done rax=-22 rdx=0x0
    ; expect: exit 0
    ; expect: output hello

``; process: B`` starts the program of a second process (and a third...):
the lines after it, up to the next marker, are B's program and B's
expectations.  Processes run round robin (``SYS_sched_yield`` switches).

How a fault is recorded and resumed: the runner links a small runtime after
each program.  It runs first (it is the process's entry point), installs one
SIGSEGV/SIGBUS/SIGILL/SIGFPE/SIGTRAP handler with ``rt_sigaction`` and a
restorer that calls ``rt_sigreturn``, restores the initial registers and
jumps to ``_start``.  Faults are real: the CPU raises the exception, the
stub's handler resolves it (demand paging) or delivers a Linux rt_sigframe.
The handler looks the faulting RIP up in a table of the labelled
instructions and, if found, sets ``uc_mcontext.rip`` to the next instruction
(for a fetch fault at the target of a labelled ``call``: to the return
address, popping it).  An unlisted fault resets the signal to SIG_DFL and
returns, so the fault repeats and kills the process as Linux would.  Python
only watches: a code hook at the handler's decision point reads which entry
matched, and the machine's ``exception`` events supply vector, error code,
CR2, RIP and address space.

Everything a user can get wrong (headers, labels, registers, assembly,
``_start``, a runaway program) becomes a failure with ``file:line`` and
text, never a traceback.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
import traceback
from dataclasses import dataclass, field

from emu.linux import abi
from emu.asm import Image, link
from emu.errors import AsmError, GuestError, IsoemuError
from emu.linux.config import MachineConfig
from emu.linux.layout import layout_for
from emu.linux.machine import BudgetExhausted, Machine
from emu.hw.x86 import ERROR_CODE_VECTORS, USER_REGISTERS, vector_name
from emu.tools.faults import describe_exception
from emu.linux.program import USER_LAYOUT, assemble_program, user_symbols

DEFAULT_BUDGET = 2_000_000
RUNTIME_NAME = "<isoemu asm-test runtime>"

BOOL_SWITCHES = ("pti", "pcid", "asi", "smap", "smep", "la57", "nx", "pke", "invpcid")
SWITCHES = tuple(sorted(BOOL_SWITCHES + ("budget",)))
REGISTERS = USER_REGISTERS
_MASK64 = (1 << 64) - 1

_HEADER = re.compile(r"^\s*(?:;|#|//)\s*(isoemu|expect|process)\s*:\s*(.*?)\s*$", re.I)
# 'expect probe ok' (no colon): a header with a typo, not prose
_ALMOST = re.compile(r"^\s*(?:;|#|//)\s*(isoemu|expect)\s+\S")
_NAME = re.compile(r"^[A-Za-z_.$][\w.$@]*$")
_PROC_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class AsmTestError(IsoemuError):
    """A test file that cannot run: bad header, unknown label, assembly error."""


# --- the format ---------------------------------------------------------------------------
@dataclass
class Expectation:
    """One ``; expect:`` line."""

    file: str
    line: int
    text: str                     # the line as written, stripped
    kind: str                     # ok | fault | regs | exit | output
    label: str | None = None
    vector: int | None = None
    error_code: int | None = None
    regs: dict[str, int] = field(default_factory=dict)
    status: int | None = None
    output: str | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def describe(self) -> str:
        """The expectation in canonical words, e.g. ``probe fault 14 0x4``."""
        if self.kind == "ok":
            return f"{self.label} ok"
        if self.kind == "fault":
            ec = "" if self.error_code is None else f" {self.error_code:#x}"
            return f"{self.label} fault {self.vector}{ec}"
        if self.kind == "regs":
            return f"{self.label} " + " ".join(f"{r}={_fmt_value(v)}" for r, v in self.regs.items())
        if self.kind == "exit":
            return f"exit {self.status}"
        return f"output {self.output}"


@dataclass
class ProcessSpec:
    name: str
    line: int                     # line of the '; process:' marker (0 for A)
    source: str                   # the whole file with other processes' lines blanked
    expectations: list[Expectation] = field(default_factory=list)


@dataclass
class AsmTest:
    path: str
    config: MachineConfig
    budget: int
    processes: list[ProcessSpec]
    lines: list[str]              # the file, for source lines in reports

    @property
    def name(self) -> str:
        return os.path.splitext(os.path.basename(self.path))[0]


def _fmt_value(v: int) -> str:
    """Errno-like and small values in decimal, addresses and masks in hex."""
    return str(v) if -4096 < v < 256 else hex(v & _MASK64)


def _int(text: str) -> int:
    """Decimal, negative decimal or hex (``0x``); ValueError otherwise."""
    if not re.fullmatch(r"-?(0[xX][0-9a-fA-F]+|[0-9]+)", text):
        raise ValueError(text)
    return int(text, 0) if not re.fullmatch(r"-?0[0-9]+", text) else int(text, 10)


def parse_test(text: str, path: str) -> AsmTest:
    """Parse a test file's headers; the program itself is assembled later."""
    lines = text.splitlines()
    cfg: dict[str, object] = {}
    cfg_where: dict[str, int] = {}
    procs = [ProcessSpec("A", 0, "")]
    owner = [0] * len(lines)          # index of the process each line belongs to
    cur = 0
    exits: dict[int, Expectation] = {}

    def err(lineno: int, msg: str) -> AsmTestError:
        return AsmTestError(f"{path}:{lineno}: {msg}: {lines[lineno - 1].strip()}")

    for i, raw in enumerate(lines):
        lineno = i + 1
        m = _HEADER.match(raw)
        if not m:
            a = _ALMOST.match(raw)
            if a:
                raise err(lineno, f"malformed header: write '{a.group(1)}: ...'")
            owner[i] = cur
            continue
        word, rest = m.group(1).lower(), m.group(2)
        if word == "process":
            if not _PROC_NAME.match(rest):
                raise err(lineno, "process needs a name of letters, digits and _ (e.g. 'process: B')")
            for p in procs:
                if p.name == rest:
                    where = f"line {p.line}" if p.line else "the start of the file"
                    raise err(lineno, f"process {rest} is already defined at {where}")
            if len(procs) >= abi.MAX_TASKS:
                raise err(lineno, f"at most {abi.MAX_TASKS} processes")
            procs.append(ProcessSpec(rest, lineno, ""))
            cur = len(procs) - 1
            owner[i] = cur
            continue
        owner[i] = cur
        if word == "isoemu":
            if not rest:
                raise err(lineno, f"isoemu needs KEY=VALUE switches ({', '.join(SWITCHES)})")
            for tok in rest.split():
                key, eq, val = tok.partition("=")
                key = key.lower()
                if not eq or not val:
                    raise err(lineno, f"switch {tok!r}: write KEY=VALUE")
                if key not in SWITCHES:
                    raise err(lineno, f"unknown isoemu switch {key!r} (known: {', '.join(SWITCHES)})")
                if key == "budget":
                    try:
                        value: object = _int(val)
                    except ValueError:
                        value = 0
                    if value <= 0:
                        raise err(lineno, f"budget={val}: a positive number of instructions")
                else:
                    if val.lower() not in ("on", "off"):
                        raise err(lineno, f"{key}={val}: use on or off")
                    value = val.lower() == "on"
                if key in cfg and cfg[key] != value:
                    raise err(lineno, f"{key} is already set differently at line {cfg_where[key]}")
                cfg[key] = value
                cfg_where[key] = lineno
            continue
        # expect
        e = _parse_expect(rest, path, lineno, lines[i].strip(), err)
        if e.kind == "exit":
            if cur in exits:
                raise err(lineno, f"a second exit expectation (the first is at line {exits[cur].line})")
            exits[cur] = e
        procs[cur].expectations.append(e)
    _check_label_conflicts(procs, err)
    for k, p in enumerate(procs):
        p.source = "\n".join(ln if owner[i] == k else "" for i, ln in enumerate(lines)) + "\n"
    budget = int(cfg.pop("budget", DEFAULT_BUDGET))
    config = MachineConfig(**{k: bool(v) for k, v in cfg.items()})
    return AsmTest(path, config, budget, procs, lines)


def _parse_expect(rest: str, path: str, lineno: int, text: str, err) -> Expectation:
    usage = "expect needs 'LABEL ok', 'LABEL fault VECTOR [ERRORCODE]', 'LABEL REG=VALUE', " \
            "'exit STATUS' or 'output TEXT'"
    e = Expectation(path, lineno, text, "")
    if not rest:
        raise err(lineno, usage)
    first, tail = (rest.split(None, 1) + [""])[:2]
    if first == "output":
        e.kind, e.output = "output", tail
        return e
    if first == "exit":
        try:
            e.status = _int(tail)
        except ValueError:
            raise err(lineno, "exit needs a STATUS from 0 to 255") from None
        if not 0 <= e.status <= 255:
            raise err(lineno, "exit needs a STATUS from 0 to 255")
        e.kind = "exit"
        return e
    if not _NAME.match(first):
        raise err(lineno, f"{first!r} is not a label")
    if first.startswith(".L"):
        raise err(lineno, f"local label {first} cannot carry expectations: use a global label")
    e.label = first
    words = tail.split()
    if not words:
        raise err(lineno, usage)
    if words == ["ok"]:
        e.kind = "ok"
        return e
    if words[0] == "fault":
        if len(words) not in (2, 3):
            raise err(lineno, "fault needs VECTOR [ERRORCODE], e.g. 'fault 14 0x4'")
        try:
            e.vector = _int(words[1])
        except ValueError:
            raise err(lineno, f"vector {words[1]!r} is not a number") from None
        if not 0 <= e.vector <= 31:
            raise err(lineno, f"vector {e.vector} is not an exception vector (0-31)")
        if len(words) == 3:
            if e.vector not in ERROR_CODE_VECTORS:
                raise err(lineno, f"vector {e.vector} ({vector_name(e.vector)}) has no error code")
            try:
                e.error_code = _int(words[2])
            except ValueError:
                raise err(lineno, f"error code {words[2]!r} is not a number") from None
            if not 0 <= e.error_code <= 0xFFFFFFFF:
                raise err(lineno, f"error code {words[2]} is out of range")
        elif e.vector in ERROR_CODE_VECTORS:
            raise err(lineno, f"vector {e.vector} ({vector_name(e.vector)}) needs an ERRORCODE")
        e.kind = "fault"
        return e
    for w in words:
        reg, eq, val = w.partition("=")
        if not eq:
            raise err(lineno, usage)
        reg = reg.lower()
        if reg not in REGISTERS:
            raise err(lineno, f"unknown register {reg!r} (use {', '.join(REGISTERS)})")
        try:
            v = _int(val)
        except ValueError:
            raise err(lineno, f"{reg}={val}: VALUE is decimal, negative decimal or hex") from None
        if not -(1 << 63) <= v <= _MASK64:
            raise err(lineno, f"{reg}={val}: does not fit in 64 bits")
        if reg in e.regs:
            raise err(lineno, f"{reg} appears twice")
        e.regs[reg] = v
    e.kind = "regs"
    return e


def _check_label_conflicts(procs: list[ProcessSpec], err) -> None:
    for p in procs:
        seen: dict[str, Expectation] = {}
        for e in p.expectations:
            if e.kind not in ("ok", "fault"):
                continue
            o = seen.get(e.label)
            if o is not None:
                raise err(e.line, f"{e.label} already has '{o.describe()}' at line {o.line}")
            seen[e.label] = e


def parse_file(path: str, name: str | None = None) -> AsmTest:
    """Read and parse ``path``; reports call it ``name`` (default: ``path``)."""
    name = name or path
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise AsmTestError(f"{name}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise AsmTestError(f"{name}: not UTF-8 text") from None
    return parse_test(text, name)


# --- the runtime linked after each program -----------------------------------------------
SITE_EXACT, SITE_CALL_TARGET, SITE_TRAP = 0, 1, 2
_SA_SIGINFO, _SA_RESTORER = 0x4, 0x04000000
HANDLED_SIGNALS = ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGTRAP")


def runtime_source(sites: list[tuple[int, int, int]]) -> str:
    """The runtime: entry, signal handler, restorer, and the site table
    (kind, match address, resume address)."""
    uc = abi.UC_MCONTEXT
    sc = abi.SC
    install = "\n".join(f"    mov edi, {s}\n    call __isoemu_rt_sigaction" for s in HANDLED_SIGNALS)
    zero = "\n".join(f"    xor {r}, {r}" for r in ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "r8d",
                                                    "r9d", "r10d", "r11d", "r12d", "r13d", "r14d", "r15d"))
    table = "\n".join(f"    .quad {k}, {m:#x}, {r:#x}" for k, m, r in sites)
    return f"""
.text
# a program that runs past its last instruction lands here
__isoemu_rt_end_of_text:
    ud2
__isoemu_rt_entry:
    sub rsp, 32
    lea rax, [rip + __isoemu_rt_handler]
    mov qword ptr [rsp], rax
    mov rax, {_SA_SIGINFO | _SA_RESTORER:#x}
    mov qword ptr [rsp + 8], rax
    lea rax, [rip + __isoemu_rt_restorer]
    mov qword ptr [rsp + 16], rax
    mov qword ptr [rsp + 24], 0
{install}
    add rsp, 32
{zero}
    push 0x202
    popfq
    jmp _start

# rt_sigaction(edi, the kernel_sigaction above the return address, NULL, 8)
__isoemu_rt_sigaction:
    lea rsi, [rsp + 8]
    xor edx, edx
    mov r10d, 8
    mov eax, SYS_rt_sigaction
    syscall
    test rax, rax
    jnz __isoemu_rt_setup_failed
    ret
__isoemu_rt_setup_failed:
    mov edi, 127
    mov eax, SYS_exit
    syscall

# handler(signo, &info, &uc): find the faulting RIP among the labelled sites
__isoemu_rt_handler:
    lea r13, [rdx + {uc}]
    mov rcx, qword ptr [r13 + {sc['rip']}]
    lea r8, [rip + __isoemu_rt_sites]
    xor ebx, ebx
.Lh_loop:
    cmp rbx, {len(sites)}
    jae .Lh_none
    mov rax, qword ptr [r8]
    cmp rax, {SITE_CALL_TARGET}
    je .Lh_call
    cmp rcx, qword ptr [r8 + 8]
    jne .Lh_next
    cmp rax, {SITE_TRAP}
    jne .Lh_match
    mov rax, qword ptr [r13 + {sc['trapno']}]
    cmp rax, 3
    je .Lh_match
    cmp rax, 4
    je .Lh_match
    jmp .Lh_next
.Lh_call:
    # an instruction fetch at the target of the call: its return address is
    # on top of the stack
    cmp qword ptr [r13 + {sc['trapno']}], 14
    jne .Lh_next
    test qword ptr [r13 + {sc['err']}], 16
    jz .Lh_next
    mov rax, qword ptr [r13 + {sc['rsp']}]
    mov rax, qword ptr [rax]
    cmp rax, qword ptr [r8 + 16]
    jne .Lh_next
    add qword ptr [r13 + {sc['rsp']}], 8
.Lh_match:
    mov rax, qword ptr [r8 + 16]
    mov qword ptr [r13 + {sc['rip']}], rax
    jmp __isoemu_rt_decided
.Lh_next:
    add r8, 24
    inc rbx
    jmp .Lh_loop
.Lh_none:
    # not an expected site: SIG_DFL, so the fault repeats and kills.  A trap
    # (#BP) reports the instruction after int3 / int 3: step back onto it, or
    # the program would run on where Linux's default action (core) kills it.
    cmp qword ptr [r13 + {sc['trapno']}], 3
    jne .Lh_default
    mov rax, qword ptr [r13 + {sc['rip']}]
    cmp byte ptr [rax - 1], 0xcc
    jne .Lh_int_3
    dec qword ptr [r13 + {sc['rip']}]
    jmp .Lh_default
.Lh_int_3:
    cmp word ptr [rax - 2], 0x3cd
    jne .Lh_default
    sub qword ptr [r13 + {sc['rip']}], 2
.Lh_default:
    sub rsp, 32
    xor eax, eax
    mov qword ptr [rsp], rax
    mov qword ptr [rsp + 8], rax
    mov qword ptr [rsp + 16], rax
    mov qword ptr [rsp + 24], rax
    mov rsi, rsp
    xor edx, edx
    mov r10d, 8
    mov eax, SYS_rt_sigaction
    syscall
    add rsp, 32
    mov rcx, qword ptr [r13 + {sc['rip']}]
    mov rbx, -1
# rbx = the matched site (or -1), rcx = the faulting RIP, r13 = &uc_mcontext
__isoemu_rt_decided:
    ret

__isoemu_rt_restorer:
    mov eax, SYS_rt_sigreturn
    syscall
    ud2

.rodata
.align 8
__isoemu_rt_sites:
{table}
"""


# --- results ------------------------------------------------------------------------------
@dataclass
class Failure:
    """One failed expectation or problem: a headline and detail lines."""

    headline: str
    details: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [self.headline] + ["  " + d for d in self.details]


@dataclass
class AsmTestResult:
    """The outcome of one test: passed when there is no failure."""

    path: str
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.failures

    def status_line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'} {self.path}"

    def report_lines(self) -> list[str]:
        """The failure report (empty for a pass), indented under the status line."""
        out = []
        for f in self.failures:
            out += ["  " + ln for ln in f.lines()]
        return out

    def report(self) -> str:
        return "\n".join([self.status_line()] + self.report_lines())


@dataclass
class _Signal:
    site: int                     # index into the site table, -1 if unexpected
    signo: int
    rip: int                      # the faulting RIP (sigcontext)
    event: object | None          # the CPL3 exception event behind it


@dataclass
class _Site:
    kind: int
    match: int
    resume: int
    label: str


class _Proc:
    def __init__(self, spec: ProcessSpec, user_img: Image, image: Image, sites: list[_Site]):
        self.spec = spec
        self.user_img = user_img
        self.image = image
        self.sites = sites
        self.process = None
        self.reached: dict[str, int] = {}
        self.pending: set[str] = set()
        self.captures: dict[str, list[dict[str, int]]] = {}
        self.signals: list[_Signal] = []
        self.last_exc = None
        self.setup_failed: str | None = None


# --- the runner -----------------------------------------------------------------------------
def run_test(test: AsmTest | str, budget: int | None = None, name: str | None = None) -> AsmTestResult:
    """Run one test (a parsed :class:`AsmTest` or a path, which reports call
    ``name`` if given); never raises for a broken test: every problem is a
    :class:`Failure` in the result."""
    t0 = time.perf_counter()
    path = (name or test) if isinstance(test, str) else test.path
    res = AsmTestResult(path)
    try:
        if isinstance(test, str):
            test = parse_file(test, name)
        _Runner(test, budget or test.budget, res).run()
    except IsoemuError as e:
        res.failures.append(Failure(f"error: {e}"))
    except Exception as e:  # noqa: BLE001 - a bug in isoemu fails this test, not the whole run
        frame = traceback.extract_tb(e.__traceback__)[-1]
        res.failures.append(Failure(f"internal error (a bug in isoemu): {type(e).__name__}: {e}",
                                    [f"raised at {frame.filename}:{frame.lineno} in {frame.name}"]))
    res.seconds = time.perf_counter() - t0
    return res


def build_machine(test: AsmTest | str) -> Machine:
    """The machine a test (parsed, or a path) runs on, booted but not run:
    for tracing or stepping through a test.  Raises for a broken test."""
    if isinstance(test, str):
        test = parse_file(test)
    return _Runner(test, test.budget, AsmTestResult(test.path)).build()


class _Runner:
    def __init__(self, test: AsmTest, budget: int, res: AsmTestResult):
        self.t, self.budget, self.res = test, budget, res
        self.procs: list[_Proc] = []
        self.m = None

    # -- build -----------------------------------------------------------------------------
    def _build(self, spec: ProcessSpec, layout) -> _Proc:
        t = self.t
        try:
            user = assemble_program(spec.source, t.path, layout)
        except AsmError as e:
            if spec.line and str(e).endswith("no _start label (the entry point)"):
                raise AsmTestError(f"{t.path}:{spec.line}: process {spec.name} has no _start label "
                                   f"(the entry point)") from None
            raise
        insns = {i.addr: i for i in user.insns}
        sites: list[_Site] = []
        labels_done = set()
        for e in spec.expectations:
            if e.label is None:
                continue
            if e.label not in user.labels:
                raise AsmTestError(f"{e.where}: unknown label {e.label!r}: {e.text}")
            addr = user.symbols[e.label]
            ins = insns.get(addr)
            if ins is None:
                sec = user.section_of(addr)
                what = f"in {sec.name}" if sec else f"at {addr:#x}"
                raise AsmTestError(f"{e.where}: label {e.label!r} is not an instruction ({what}): {e.text}")
            if e.label in labels_done:
                continue
            labels_done.add(e.label)
            nxt = addr + ins.size
            sites.append(_Site(SITE_EXACT, addr, nxt, e.label))
            if ins.mnemonic == "call":
                sites.append(_Site(SITE_CALL_TARGET, addr, nxt, e.label))
            if ins.mnemonic in ("int3", "into"):
                sites.append(_Site(SITE_TRAP, nxt, nxt, e.label))
        rt = runtime_source([(s.kind, s.match, s.resume) for s in sites])
        full = link([(t.path, spec.source), (RUNTIME_NAME, rt)], USER_LAYOUT, user_symbols(layout),
                    nobits=(".bss",))
        for name in user.labels:
            if full.symbols.get(name) != user.symbols[name]:     # the runtime comes after the program
                raise AsmTestError(f"{t.path}: internal error: the runtime moved {name}")
        return _Proc(spec, user, full, sites)

    def build(self) -> Machine:
        """The test's machine: every process loaded (program and runtime)
        and booted, the label hooks in; not yet run."""
        t = self.t
        layout = layout_for(t.config.levels)
        self.procs = [self._build(spec, layout) for spec in t.processes]
        m = self.m = Machine(t.config, record_events=False)
        m.on_event(self._on_event)
        for pr in self.procs:
            entry = pr.image.symbols["__isoemu_rt_entry"]
            # the runtime is the entry point (as crt1 runs before main);
            # symbols stay the program's own, with _start where the test put it
            img = dataclasses.replace(pr.image, symbols={**pr.image.symbols, "_start": entry})
            pr.process = m.add_process(pr.spec.name, img, filename=t.path)
            pr.process.image = pr.image
        m.boot()
        self._install_hooks()
        return m

    def run(self) -> None:
        m = self.build()
        try:
            m.run(self.budget)
        except BudgetExhausted:
            self._machine_failure(f"runaway: the instruction budget of {self.budget} ran out")
            return
        except GuestError as e:
            self._machine_failure(f"the machine stopped: {e}")
            return
        for pr in self.procs:
            self._evaluate(pr)

    # -- hooks ----------------------------------------------------------------------------------
    def _install_hooks(self) -> None:
        m = self.m
        by_addr: dict[int, list] = {}
        for pr in self.procs:
            img = pr.image
            by_addr.setdefault(img.symbols["__isoemu_rt_decided"], []).append((pr, self._on_decided))
            by_addr.setdefault(img.symbols["__isoemu_rt_setup_failed"], []).append((pr, self._on_setup_failed))
            insns = {i.addr: i for i in pr.user_img.insns}
            for label in {e.label for e in pr.spec.expectations if e.label}:
                addr = img.symbols[label]
                by_addr.setdefault(addr, []).append((pr, self._reach(label)))
                if any(e.kind == "regs" and e.label == label for e in pr.spec.expectations):
                    by_addr.setdefault(addr + insns[addr].size, []).append((pr, self._capture(label)))
        for addr, cbs in by_addr.items():
            m.cpu.add_code_hook(addr, self._dispatch(cbs))

    def _dispatch(self, cbs):
        m = self.m

        def hook(addr: int) -> None:
            if m.cpu.reg("cs") & 3 != 3:
                return
            p = m.current_process()
            for pr, fn in cbs:
                if pr.process is p:
                    fn(pr)
        return hook

    @staticmethod
    def _reach(label: str):
        def fn(pr: _Proc) -> None:
            pr.reached[label] = pr.reached.get(label, 0) + 1
            pr.pending.add(label)
        return fn

    def _capture(self, label: str):
        def fn(pr: _Proc) -> None:
            if label in pr.pending:
                pr.pending.discard(label)
                pr.captures.setdefault(label, []).append({r: self.m.cpu.reg(r) for r in REGISTERS})
        return fn

    def _on_decided(self, pr: _Proc) -> None:
        cpu = self.m.cpu
        idx = cpu.reg("rbx")
        idx = -1 if idx >= 1 << 63 else idx
        ev = pr.last_exc
        pr.last_exc = None
        pr.signals.append(_Signal(idx, cpu.reg("rdi"), cpu.reg("rcx"), ev))

    def _on_setup_failed(self, pr: _Proc) -> None:
        rax = self.m.cpu.reg("rax")
        pr.setup_failed = f"rt_sigaction(signal {self.m.cpu.reg('rdi')}) returned {_signed(rax)}"

    def _on_event(self, ev) -> None:
        if ev.kind == "exception" and ev.get("cpl") == 3:
            for pr in self.procs:
                if pr.process is not None and pr.process.pid == ev.get("pid"):
                    pr.last_exc = ev

    # -- reports ----------------------------------------------------------------------------------
    def _source(self, pr: _Proc | None, addr: int) -> str | None:
        """``file:line: text`` of the instruction at a user address."""
        if pr is None or not pr.user_img.contains(addr):
            return None
        ln = pr.image.line_at(addr)
        if ln is None:
            return None
        text = ln.text
        if ln.file == self.t.path and 0 < ln.line <= len(self.t.lines):
            text = self.t.lines[ln.line - 1].strip()
        return f"at {ln.file}:{ln.line}: {text}"

    def _symbol(self, pr: _Proc | None, addr: int) -> str:
        if addr >= self.m.layout.kernel_half:
            return self.m.symbolize(addr)
        if pr is not None:
            s = pr.image.symbolize(addr)
            if s:
                return f"{pr.spec.name}:{s}"
        return f"{addr:#x}"

    def _fault_words(self, pr: _Proc, sig: _Signal) -> str:
        ev = sig.event
        if ev is None:
            return f"{abi.SIGNAL_NAMES.get(sig.signo, sig.signo)} at RIP {sig.rip:#x} ({self._symbol(pr, sig.rip)})"
        return describe_exception(ev.vector, ev.error_code, ev.cr2, ev.rip, self._symbol(pr, ev.rip),
                                  ev.space)

    def _machine_failure(self, msg: str) -> None:
        m = self.m
        rip = m.cpu.reg("rip")
        pr = self._proc_of(m.current_process())
        details = [f"stopped at RIP {rip:#x} ({self._symbol(pr, rip)}), CPL {m.cpu.reg('cs') & 3}, "
                   f"space {m.space_of(m.cpu.reg('cr3'))}"]
        src = self._source(pr, rip)
        if src:
            details.append(src)
        self.res.failures.append(Failure(msg, details))
        for pr in self.procs:
            self._unexpected(pr)

    def _proc_of(self, p) -> _Proc | None:
        for pr in self.procs:
            if pr.process is p and p is not None:
                return pr
        return None

    def _insn_addr(self, pr: _Proc, ev) -> int:
        """The address of the instruction behind an exception: its RIP, except
        for traps (#BP, #OF), which report the instruction after it."""
        if ev.vector in (3, 4):
            for ins in pr.user_img.insns:
                if ins.addr + ins.size == ev.rip:
                    return ins.addr
        return ev.rip

    def _unexpected(self, pr: _Proc) -> None:
        for sig in pr.signals:
            if sig.site >= 0:
                continue
            rip = self._insn_addr(pr, sig.event) if sig.event is not None else sig.rip
            if rip == pr.image.symbols["__isoemu_rt_end_of_text"]:
                head = f"process {pr.spec.name} ran past the end of its code (no SYS_exit)"
                self.res.failures.append(Failure(head))
                continue
            details = [self._fault_words(pr, sig)]
            src = self._source(pr, rip)
            if src:
                details.append(src)
            self.res.failures.append(Failure(f"unexpected fault in process {pr.spec.name}", details))
        # a fault whose signal never reached the runtime's handler (the program
        # replaced it, or the signal frame could not be written: a bad stack)
        ev = pr.last_exc
        info = self.m.exits.get(pr.process.pid) if pr.process is not None else None
        if ev is not None and info is not None and info.get("signal") and \
                not any(s.site < 0 for s in pr.signals):
            details = [describe_exception(ev.vector, ev.error_code, ev.cr2, ev.rip, self._symbol(pr, ev.rip),
                                          ev.space)]
            src = self._source(pr, self._insn_addr(pr, ev))
            if src:
                details.append(src)
            details.append(f"{info['signal']} was not delivered to the runtime's handler")
            self.res.failures.append(Failure(f"unexpected fault in process {pr.spec.name}", details))

    def _evaluate(self, pr: _Proc) -> None:
        fail = self.res.failures
        if pr.setup_failed:
            fail.append(Failure(f"the runtime of process {pr.spec.name} could not start: {pr.setup_failed}"))
            return
        self._unexpected(pr)
        by_label: dict[str, list[_Signal]] = {}
        for sig in pr.signals:
            if sig.site >= 0:
                by_label.setdefault(pr.sites[sig.site].label, []).append(sig)
        exp = pr.spec.expectations
        if not any(e.kind == "exit" for e in exp):
            exp = exp + [Expectation(self.t.path, 0, "", "exit", status=0)]
        first_output = next((e for e in exp if e.kind == "output"), None)
        for e in exp:
            if e.kind == "output" and e is not first_output:
                continue                        # the output lines are checked together
            got = self._check(pr, e, by_label)
            if got is None:
                continue
            if not e.line:
                head = f"{self.t.path}: expected exit 0 (the default)"
            elif e.kind == "output":
                head = f"{e.where}: expected output " + " / ".join(
                    repr(x.output) for x in exp if x.kind == "output")
            else:
                head = f"{e.where}: expected {e.describe()}"
            fail.append(Failure(head, got))

    def _check(self, pr: _Proc, e: Expectation, by_label) -> list[str] | None:
        """None if ``e`` holds, else [what happened, source line...]."""
        if e.kind in ("ok", "fault", "regs"):
            src = self._source(pr, pr.image.symbols[e.label])
            at = [src] if src else []
            if not pr.reached.get(e.label):
                return ["not reached"] + at
            sigs = by_label.get(e.label, [])
            if e.kind == "fault":
                if not sigs:
                    return ["got no fault: the instruction completed"] + at
                for s in sigs:
                    ev = s.event
                    if ev is None or ev.vector != e.vector or \
                            (e.error_code is not None and ev.error_code != e.error_code):
                        return ["got " + self._fault_words(pr, s)] + at
                return None
            if e.kind == "ok":
                return ["got " + self._fault_words(pr, sigs[0])] + at if sigs else None
            # REG=VALUE: a fault is unexpected unless a fault expectation covers it
            if sigs and not any(x.kind == "fault" and x.label == e.label for x in pr.spec.expectations):
                return ["got " + self._fault_words(pr, sigs[0])] + at
            caps = pr.captures.get(e.label, [])
            if not caps:
                return ["got no result: execution never reached the next instruction"] + at
            for cap in caps:
                bad = [f"{r}={_fmt_value(_signed(cap[r]))}" for r, v in e.regs.items()
                       if cap[r] != v & _MASK64]
                if bad:
                    return ["got " + " ".join(bad)] + at
            return None
        if e.kind == "exit":
            info = self.m.exits.get(pr.process.pid)
            if info is None:
                return ["got no exit: the process was still running"]
            if info["status"] == e.status:
                return None
            how = f"got exit {info['status']}"
            if info.get("signal"):
                how += f" (killed by {info['signal']})"
            return [how]
        want = [x.output for x in pr.spec.expectations if x.kind == "output"]
        out = bytes(self.m.output.get(pr.process.pid, b"")).decode("utf-8", errors="replace")
        got = out.split("\n")
        if got and got[-1] == "":
            got.pop()
        return None if got == want else [f"got output {out!r}"]


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


# --- discovery and the command ----------------------------------------------------------------
def discover(paths: list[str]) -> list[str]:
    """Test files under ``paths`` (files as given; directories: every ``*.S``,
    sorted)."""
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            found = []
            for root, dirs, files in os.walk(p):
                dirs.sort()
                found += [os.path.join(root, f) for f in sorted(files) if f.endswith(".S")]
            if not found:
                raise AsmTestError(f"{p}: no .S files in this directory")
            out += found
        elif os.path.exists(p):
            out.append(p)
        else:
            raise AsmTestError(f"{p}: no such file or directory")
    return out


def run_paths(paths: list[str], out, exitfirst: bool = False) -> int:
    """``isoemu test``: one line per test, the failure reports, a summary.
    Returns 0 when every test passed, else 1."""
    t0 = time.perf_counter()
    files = discover(paths)
    passed = failed = 0
    for f in files:
        r = run_test(f)
        out.write(r.report() + "\n")
        out.flush()
        if r.passed:
            passed += 1
        else:
            failed += 1
            if exitfirst:
                break
    out.write(f"{passed} passed, {failed} failed in {time.perf_counter() - t0:.2f} s\n")
    return 1 if failed else 0
