"""``isoemu debug``: the debugger's REPL, in gdb's idiom.

Commands come from the terminal (with readline history in
~/.isoemu_history), from standard input, or, for scripts and CI, from
``--batch FILE`` and repeated ``-ex CMD`` (run in command-line order, then
exit; the exit status is 1 if any command failed).  A bad command prints
one line on stderr and the session carries on.
"""

from __future__ import annotations

import argparse
import cmd
import os
import re
import sys

from emu.tools.debug import DEFAULT_BUDGET, REGISTER_NAMES, DebugError, Debugger, Stop
from emu.errors import ConfigError, IsoemuError

PROMPT = "(isoemu) "
HISTORY = "~/.isoemu_history"

HELP = [
    ("break cr3 [SPACE]", "stop after a CR3 write (into SPACE: a name or pattern like *.asi)"),
    ("break *ADDR | SYMBOL [process P]", "stop before the instruction at an address (b); only in process P "
                                        "(implied by a P:label address)"),
    ("catch fault [VECTOR]", "stop when an exception is delivered (14, #PF, GP...)"),
    ("catch syscall [N|NAME]", "stop at entry_SYSCALL_64 for a syscall"),
    ("catch asi-exit [fault]", "stop after a CR3 write leaving ASI (only fault-forced ones)"),
    ("info breakpoints", "list breakpoints and their hit counts (i b)"),
    ("delete [N...]", "delete breakpoints (all without N)"),
    ("continue", "run until a breakpoint, the halt, or the budget (c)"),
    ("stepi [N]", "run N instructions (si)"),
    ("x/NFU ADDR [SPACE]", "examine memory: F x|d|u|i, U b|h|w|g (x/4gx $rsp, x/3i $rip)"),
    ("walk ADDR [SPACE] [r|w|x] [cpl3]", "walk the page tables for ADDR (default: current CR3, read, CPL 0)"),
    ("ptdump [SPACE]", "dump page tables in Linux's dump_pagetables format"),
    ("info registers [REG...]", "registers, CR3 with its space and PCID (i r)"),
    ("info spaces", "address-space names and their page-table roots"),
    ("disas [ADDR] [N]", "disassemble N instructions (default: 8 at RIP)"),
    ("help [COMMAND]", "this list"),
    ("quit", "leave (q)"),
]
ADDRESS_HELP = ("ADDR: 0xffffffff81000000, a kernel symbol (do_syscall_64), a program label "
                "(A:_start), a register ($rsp), joined with + and -")

_ALIASES = {"b": "break", "br": "break", "c": "continue", "cont": "continue", "si": "stepi",
            "i": "info", "q": "quit", "exit": "quit", "disassemble": "disas", "d": "delete"}
_UNITS = {"b": 1, "h": 2, "w": 4, "g": 8}
_PER_LINE = {1: 8, 2: 8, 4: 4, 8: 2}
_RFLAGS = [(0, "CF"), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"), (10, "DF"),
           (11, "OF"), (14, "NT"), (16, "RF"), (18, "AC"), (21, "ID")]
_CR0 = [(0, "PE"), (1, "MP"), (4, "ET"), (5, "NE"), (16, "WP"), (18, "AM"), (31, "PG")]
_CR4 = [(5, "PAE"), (7, "PGE"), (9, "OSFXSR"), (10, "OSXMMEXCPT"), (12, "LA57"), (17, "PCIDE"),
        (20, "SMEP"), (21, "SMAP"), (22, "PKE")]
_EFER = [(0, "SCE"), (8, "LME"), (10, "LMA"), (11, "NXE")]


def _bits(value: int, names) -> str:
    return "[ " + " ".join(n for bit, n in names if value >> bit & 1) + " ]"


class DebugShell(cmd.Cmd):
    """The command interpreter over a :class:`Debugger`."""

    prompt = PROMPT

    def __init__(self, dbg: Debugger, interactive: bool, stdout=None, stderr=None):
        super().__init__(stdout=stdout or sys.stdout)
        self.dbg = dbg
        self.interactive = interactive
        self.use_rawinput = True
        self.err = stderr or sys.stderr
        self.errors = 0
        self._console_seen = len(dbg.m.console)

    # -- plumbing ------------------------------------------------------------------------------
    def out(self, text: str = "") -> None:
        print(text, file=self.stdout)

    def fail(self, message: str) -> None:
        self.errors += 1
        print(f"error: {message}", file=self.err)

    def onecmd(self, line: str) -> bool:
        line = line.strip()
        if not line or line.startswith("#"):
            return self.emptyline() if not line else False
        if line == "EOF":                 # cmd.Cmd's end of input
            return self.do_EOF("")
        name, rest = (line.split(None, 1) + [""])[:2]
        if name.startswith("x/"):
            name, rest = "x", line[1:]
        name = _ALIASES.get(name, name)
        self.lastcmd = line
        fn = getattr(self, f"do_{name}", None) if re.fullmatch(r"[a-z][a-z_]*", name) else None
        if fn is None:
            self.fail(f"unknown command {name!r}: try 'help'")
            return False
        try:
            return bool(fn(rest.strip()))
        except IsoemuError as e:
            self.fail(str(e))
        except KeyboardInterrupt:
            self.fail("interrupted")
        except Exception as e:   # noqa: BLE001 - one line, never a traceback
            self.fail(f"internal error: {type(e).__name__}: {e}")
        return False

    def emptyline(self) -> bool:
        # gdb repeats the last command; only the ones that move the machine on
        if self.interactive and self.lastcmd.split(None, 1)[:1] in (["si"], ["stepi"], ["c"], ["continue"]):
            return self.onecmd(self.lastcmd)
        return False

    def completenames(self, text, *ignored):
        names = [n for n, _ in HELP] + list(_ALIASES)
        words = {n.split()[0].split("/")[0] for n in names}
        return sorted(w for w in words if w.startswith(text))

    def _space_arg(self, args: list[str]) -> tuple[list[str], str | None]:
        """Split a trailing address-space name off the arguments."""
        if len(args) > 1 and args[-1] in self.dbg.spaces():
            return args[:-1], args[-1]
        return args, None

    def _address(self, text: str) -> int:
        if not text:
            raise DebugError(f"an address is needed ({ADDRESS_HELP})")
        return self.dbg.resolve(text)

    def _count(self, text: str, what: str) -> int:
        try:
            n = int(text, 0)
        except ValueError:
            raise DebugError(f"bad {what} {text!r}: expected a number") from None
        if n < 1:
            raise DebugError(f"{what} must be at least 1")
        return n

    # -- breakpoints -------------------------------------------------------------------------
    def do_break(self, arg: str) -> None:
        args = arg.split()
        if not args:
            raise DebugError("break what? 'break cr3 [SPACE]' or 'break *ADDR' / 'break SYMBOL'")
        if args[0] == "cr3":
            if len(args) > 2:
                raise DebugError("usage: break cr3 [SPACE]")
            bp = self.dbg.break_cr3(args[1] if len(args) == 2 else None)
            self.out(f"Breakpoint {bp.num}: {bp.what()}")
            return
        process = None
        if len(args) >= 3 and args[-2] == "process":
            process = args[-1]
            arg = " ".join(args[:-2])
        elif "process" in args:
            raise DebugError("usage: break *ADDR [process P]")
        bp = self.dbg.break_at(arg, process)
        self.out(f"Breakpoint {bp.num} at {bp.what()}")

    def do_catch(self, arg: str) -> None:
        args = arg.split()
        what = args[0] if args else ""
        if what == "fault" and len(args) <= 2:
            bp = self.dbg.catch_fault(args[1] if len(args) == 2 else None)
        elif what == "syscall" and len(args) <= 2:
            bp = self.dbg.catch_syscall(args[1] if len(args) == 2 else None)
        elif what == "asi-exit" and (len(args) == 1 or args[1:] == ["fault"]):
            bp = self.dbg.catch_asi_exit(fault_only=len(args) == 2)
        else:
            raise DebugError("usage: catch fault [VECTOR] | catch syscall [N|NAME] | catch asi-exit [fault]")
        self.out(f"Catchpoint {bp.num}: {bp.what()}")

    def do_delete(self, arg: str) -> None:
        if not arg:
            self.dbg.delete()
            return
        for n in arg.split():
            self.dbg.delete(self._count(n, "breakpoint number"))

    # -- running -----------------------------------------------------------------------------
    def do_continue(self, arg: str) -> None:
        if arg:
            raise DebugError("usage: continue (the budget is set with --budget)")
        self._show(self.dbg.cont())

    def do_stepi(self, arg: str) -> None:
        self._show(self.dbg.stepi(self._count(arg, "instruction count") if arg else 1))

    def _show(self, stop: Stop) -> None:
        console = self.dbg.m.console
        if len(console) > self._console_seen:
            self.stdout.write(bytes(console[self._console_seen:]).decode(errors="replace"))
            if not console.endswith(b"\n"):
                self.out()
            self._console_seen = len(console)
        if stop.reason != "step":
            self.out(str(stop))
        if self.dbg.alive:
            try:
                self._disas(self.dbg.disas(None, 1))
            except DebugError:
                self.out(f"=> {stop.rip:#x} <{stop.symbol}>: (not readable)")

    # -- inspection ----------------------------------------------------------------------------
    def do_info(self, arg: str) -> None:
        args = arg.split()
        what = args[0] if args else ""
        if what and "breakpoints".startswith(what):
            self._info_breakpoints()
        elif what and "registers".startswith(what):
            self._info_registers(args[1:])
        elif what and "spaces".startswith(what):
            current = self.dbg.space
            for name, root in self.dbg.spaces().items():
                mark = "*" if name == current else " "
                self.out(f"{mark} {name:<12} {root:#018x}")
        else:
            raise DebugError("usage: info breakpoints | info registers [REG...] | info spaces")

    def _info_breakpoints(self) -> None:
        bps = self.dbg.breakpoints
        if not bps:
            self.out("No breakpoints.")
            return
        self.out(f"{'Num':<5}{'Type':<16}{'Hits':<6}What")
        for b in bps:
            kind = "breakpoint" if b.kind == "address" else ("cr3" if b.kind == "cr3" else f"catch {b.kind}")
            self.out(f"{b.num:<5}{kind:<16}{b.hits:<6}{b.what()}")

    def _info_registers(self, names: list[str]) -> None:
        regs = self.dbg.regs
        for name in names or REGISTER_NAMES:
            try:
                v = regs[name.lstrip("$")]
            except KeyError:
                raise DebugError(f"unknown register {name!r}") from None
            self.out(f"{name.lstrip('$'):<15}{v:<#20x}{self._reg_note(name.lstrip('$').lower(), v)}".rstrip())

    def _reg_note(self, name: str, v: int) -> str:
        if name in ("rip", "pc"):
            return f"<{self.dbg.symbolize(v)}>"
        if name in ("rflags", "eflags"):
            return _bits(v, _RFLAGS)
        if name == "cr3":
            notes = [self.dbg.space_of(v)]
            if self.dbg.regs["cr4"] >> 17 & 1:
                notes.append(f"pcid {v & 0xFFF:#x}")
            return "[ " + ", ".join(notes) + " ]"
        if name == "cr0":
            return _bits(v, _CR0)
        if name == "cr4":
            return _bits(v, _CR4)
        if name == "efer":
            return _bits(v, _EFER)
        if name in ("cs", "ss", "ds", "es", "fs", "gs"):
            return f"(RPL {v & 3})"
        return str(v if v < 1 << 63 else v - (1 << 64))

    def do_x(self, arg: str) -> None:
        m = re.fullmatch(r"/(\d*)([a-z]*)\s*(.*)", arg)
        if not m:
            raise DebugError("usage: x/NFU ADDR [SPACE], e.g. x/4gx $rsp")
        count = int(m.group(1)) if m.group(1) else 1
        letters = m.group(2)
        bad = set(letters) - set("xdui") - set(_UNITS)
        if bad or count < 1:
            raise DebugError(f"bad format /{m.group(1)}{letters}: N a count, F one of x d u i, "
                             f"U one of b h w g")
        args, space = self._space_arg(m.group(3).split())
        va = self._address(" ".join(args))
        fmt = next((c for c in letters if c in "xdui"), "x")
        if fmt == "i":
            self._disas(self.dbg.disas(va, count, space))
            return
        size = next((_UNITS[c] for c in letters if c in _UNITS), 8)
        data = self.dbg.read_virt(va, count * size, space)
        per = _PER_LINE[size]
        for i in range(0, count, per):
            a = va + i * size
            sym = self.dbg.symbolize(a)
            head = f"{a:#x}" + ("" if sym.startswith("0x") else f" <{sym}>") + ":"
            cells = []
            for j in range(i, min(count, i + per)):
                v = int.from_bytes(data[j * size:(j + 1) * size], "little")
                if fmt == "x":
                    cells.append(f"{v:#0{2 + 2 * size}x}")
                elif fmt == "u":
                    cells.append(str(v))
                else:
                    cells.append(str(v - (1 << (8 * size)) if v >> (8 * size - 1) else v))
            self.out(head + "\t" + "\t".join(cells))

    def do_walk(self, arg: str) -> None:
        from emu.cli.render import walk_text

        args = arg.split()
        access, cpl = "r", 0
        while len(args) > 1 and args[-1] in ("r", "w", "x", "cpl0", "cpl3"):
            last = args.pop()
            if last.startswith("cpl"):
                cpl = int(last[3])
            else:
                access = last
        args, space = self._space_arg(args)
        va = self._address(" ".join(args))
        res = self.dbg.walk(va, space, access, cpl)
        levels = 5 if self.dbg.m.config.la57 else 4
        for line in walk_text(res, va, "rwx".index(access), cpl, space or self.dbg.space,
                              self.dbg.root(space), levels):
            self.out(line)

    def do_ptdump(self, arg: str) -> None:
        args = arg.split()
        if len(args) > 1:
            raise DebugError("usage: ptdump [SPACE]")
        for line in self.dbg.ptdump(args[0] if args else None):
            self.out(line)

    def do_disas(self, arg: str) -> None:
        args, space = self._space_arg(arg.split())
        n = 8
        if len(args) >= 2 and re.fullmatch(r"\d+", args[-1]):
            n = self._count(args.pop(), "instruction count")
        va = self._address(" ".join(args)) if args else None
        self._disas(self.dbg.disas(va, n, space))

    def _disas(self, insns) -> None:
        rip = self.dbg.rip
        for ins in insns:
            mark = "=>" if ins.addr == rip else "  "
            sym = "" if ins.symbol.startswith("0x") else f" <{ins.symbol}>"
            self.out(f"{mark} {ins.addr:#x}{sym}:\t{ins.text}")

    # -- the rest ------------------------------------------------------------------------------
    def do_help(self, arg: str) -> None:
        name = _ALIASES.get(arg.strip(), arg.strip())
        rows = [(c, h) for c, h in HELP if not name or c.split()[0] == name]
        if not rows:
            raise DebugError(f"no command {arg.strip()!r}: try 'help'")
        width = max(len(c) for c, _ in rows)
        for c, h in rows:
            self.out(f"{c:<{width}}  {h}")
        if not name or name in ("break", "x", "walk", "disas"):
            self.out(ADDRESS_HELP)

    def do_quit(self, arg: str) -> bool:
        return True

    def do_EOF(self, arg: str) -> bool:   # noqa: N802 - cmd.Cmd's name for end of input
        self.out()
        return True


# --- the command -----------------------------------------------------------------------------
class _Script(argparse.Action):
    """-ex CMD and --batch FILE, kept in command-line order."""

    def __call__(self, parser, namespace, value, option_string=None):
        items = list(getattr(namespace, self.dest) or [])
        items.append(("file" if option_string == "--batch" else "ex", value))
        setattr(namespace, self.dest, items)


def build_machine(args):
    """The machine to debug: PROGRAM.S as one process, or the default machine."""
    from emu.linux.machine import Machine
    from emu.tools.matrix import MatrixMachine
    from emu.tools.spaces import config_from_args

    cfg = config_from_args(args)
    if not args.program:
        return MatrixMachine(cfg).m, "the default machine (matrix_probe.S as A and B)"
    try:
        with open(args.program) as f:
            src = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {args.program}: {e.strerror}") from None
    stem = os.path.splitext(os.path.basename(args.program))[0]
    name = "".join(c if c.isalnum() else "_" for c in stem) or "P"
    m = Machine(cfg, record_events=False)
    m.add_process(name, src, filename=args.program)
    return m, f"{args.program} as process {name}"


def _script_lines(items) -> list[str]:
    lines = []
    for kind, value in items:
        if kind == "ex":
            lines.append(value)
            continue
        try:
            with open(value) as f:
                lines.extend(f.read().splitlines())
        except OSError as e:
            raise ConfigError(f"cannot read {value}: {e.strerror}") from None
    return lines


def cmd_debug(args) -> int:
    if args.budget < 1:
        raise ConfigError("--budget must be at least 1")
    script = _script_lines(args.script or [])
    machine, what = build_machine(args)
    dbg = Debugger(machine, budget=args.budget)
    interactive = not script and sys.stdin.isatty()
    shell = DebugShell(dbg, interactive)
    if script:
        for line in script:
            if shell.onecmd(line):
                break
        return 1 if shell.errors else 0
    if not interactive:
        for line in sys.stdin:
            if shell.onecmd(line):
                break
        return 1 if shell.errors else 0
    _repl(shell, f"isoemu debug: {what}; stopped at {dbg.rip:#x} <{dbg.symbolize(dbg.rip)}>. "
                 f"Type 'help' for commands.")
    return 0


def _repl(shell: DebugShell, intro: str) -> None:
    try:
        import readline
    except ImportError:          # pragma: no cover - readline is absent on some platforms
        readline = None
    hist = os.path.expanduser(HISTORY)
    if readline is not None:
        try:
            readline.read_history_file(hist)
        except OSError:
            pass
        readline.set_history_length(1000)
    try:
        while True:
            try:
                shell.cmdloop(intro)
                break
            except KeyboardInterrupt:
                shell.out("^C")
                intro = None
    finally:
        if readline is not None:
            try:
                readline.write_history_file(hist)
            except OSError:
                pass


def add_commands(sub) -> None:
    from emu.cli.common import add_machine_args

    p = sub.add_parser(
        "debug", help="step through CR3 switches: breakpoints, stepping, memory and page tables",
        description="Debug a program (or, without one, the default machine: matrix_probe.S as "
                    "processes A and B) in gdb's idiom: break cr3 [SPACE], break *ADDR, catch "
                    "fault/syscall/asi-exit, continue, stepi, x/4gx, walk, ptdump, info "
                    "registers/spaces, disas. Commands come from the terminal, standard input, "
                    "--batch FILE or -ex CMD.",
        epilog="example: isoemu debug -ex 'break cr3' -ex c -ex 'info registers cr3'")
    p.add_argument("program", metavar="PROGRAM.S", nargs="?", help="user program (entry _start)")
    p.add_argument("--batch", metavar="FILE", dest="script", action=_Script,
                   help="run the commands in FILE, then exit")
    p.add_argument("-ex", metavar="CMD", dest="script", action=_Script,
                   help="run CMD (repeatable; with --batch, in command-line order), then exit")
    p.add_argument("--budget", type=int, default=DEFAULT_BUDGET, metavar="N",
                   help=f"instructions per 'continue' at most (default {DEFAULT_BUDGET:,})")
    add_machine_args(p.add_argument_group("machine"))
    p.set_defaults(func=cmd_debug)
