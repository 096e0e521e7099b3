"""``isoemu debug``: the debugger's REPL, in gdb's idiom.

Commands come from the terminal (with readline history in
~/.isoemu_history), from standard input, or, for scripts and CI, from
``--batch FILE`` and repeated ``-ex CMD`` (run in command-line order, then
exit; the exit status is 1 if any command failed, 130 if Ctrl-C stopped
the script).  A bad command prints one line on stderr and the session
carries on; what the address reader noticed (a label read for a
hexadecimal word) prints as ``note: ...`` on stderr.  Numbers follow the
rule of emu/parse.py (docs/debugging.md, "Numbers").

The commands are tables: :data:`COMMANDS` (one ``do_NAME`` method each),
and the subcommands of ``info`` (:data:`INFO`) and ``catch`` (:data:`CATCH`).
"""

from __future__ import annotations

import argparse
import cmd
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable

from emu.errors import ConfigError, IsoemuError
from emu.parse import parse_count, parse_hex, parse_int
from emu.tools.debug import DEFAULT_BUDGET, KINDS, REGISTER_NAMES, DebugError, Debugger, Stop
from emu.tools.debug.registers import canonical_name

PROMPT = "(isoemu) "
HISTORY = "~/.isoemu_history"
DEFAULT_PROCESS = "A"
MAX_EXAMINE = 65536          # units one x/N shows at most
MAX_DISAS = 4096             # instructions one disas shows at most


@dataclass(frozen=True)
class Command:
    """A command: its ``do_NAME`` method, help rows, aliases, and whether an
    empty line repeats it (the commands that move the machine on)."""

    name: str
    rows: tuple[tuple[str, str], ...]
    aliases: tuple[str, ...] = ()
    repeats: bool = False


@dataclass(frozen=True)
class Sub:
    """A subcommand of ``info`` or ``catch``: usage, help, and what it does
    (``run(shell, args)``; for ``catch``, returns the new breakpoint)."""

    usage: str
    help: str
    run: Callable
    max_args: int = 1


def _optional(args: list[str]):
    return args[0] if args else None


def _asi_exit(shell, args: list[str]):
    if args not in ([], ["fault"]):
        raise DebugError("usage: catch asi-exit [fault]")
    return shell.dbg.catch_asi_exit(fault_only=bool(args))


CATCH: dict[str, Sub] = {
    "fault": Sub("catch fault [VECTOR]", "stop when an exception is delivered (14, #PF, GP...)",
                 lambda sh, a: sh.dbg.catch_fault(_optional(a))),
    "syscall": Sub("catch syscall [N|NAME]", "stop at entry_SYSCALL_64 for a syscall",
                   lambda sh, a: sh.dbg.catch_syscall(_optional(a))),
    "asi-exit": Sub("catch asi-exit [fault]", "stop after a CR3 write leaving ASI (only fault-forced ones)",
                    _asi_exit),
    "stale": Sub("catch stale [FINDING]", "stop when the TLB model makes a finding (stale-access, "
                 "freed-while-cached...)", lambda sh, a: sh.dbg.catch_stale(_optional(a))),
}
INFO: dict[str, Sub] = {
    "breakpoints": Sub("info breakpoints", "list breakpoints and their hit counts (i b)",
                       lambda sh, a: sh.info_breakpoints(), max_args=0),
    "registers": Sub("info registers [REG...]", "registers, CR3 with its space and PCID (i r)",
                     lambda sh, a: sh.info_registers(a), max_args=len(REGISTER_NAMES)),
    "spaces": Sub("info spaces", "address-space names and their page-table roots",
                  lambda sh, a: sh.info_spaces(), max_args=0),
    "tlb": Sub("info tlb [PCID]", "what the TLB may hold, per PCID: the spaces it may cache and its "
               "stale entries", lambda sh, a: sh.info_tlb(a)),
}

COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("break", (("break cr3 [SPACE]", "stop after a CR3 write (into SPACE: a name or pattern like *.asi)"),
                      ("break *ADDR | SYMBOL [process P]", "stop before the instruction at an address (b); "
                       "only in process P (implied by a P:label address)")), ("b", "br")),
    Command("catch", tuple((s.usage, s.help) for s in CATCH.values())),
    Command("delete", (("delete [N...]", "delete breakpoints (all without N)"),), ("d",)),
    Command("continue", (("continue", "run until a breakpoint, the halt, Ctrl-C or the budget (c)"),),
            ("c", "cont"), repeats=True),
    Command("stepi", (("stepi [N]", "run N instructions (si)"),), ("si",), repeats=True),
    Command("x", (("x/NFU ADDR [SPACE]", "examine memory: F x|d|u|i, U b|h|w|g (x/4gx $rsp, x/3i $rip)"),)),
    Command("walk", (("walk ADDR [SPACE] [r|w|x] [cpl3]",
                      "walk the page tables for ADDR (default: current CR3, read, CPL 0)"),)),
    Command("ptdump", (("ptdump [SPACE]", "dump page tables in Linux's dump_pagetables format"),)),
    Command("info", tuple((s.usage, s.help) for s in INFO.values()), ("i",)),
    Command("disas", (("disas [ADDR] [N]", "disassemble N instructions (default: 8 at RIP)"),),
            ("disassemble",)),
    Command("help", (("help [COMMAND]", "this list"),)),
    Command("quit", (("quit", "leave (q)"),), ("q", "exit")),
)}
HELP = [row for c in COMMANDS.values() for row in c.rows]
ALIASES = {a: c.name for c in COMMANDS.values() for a in c.aliases}
ADDRESS_HELP = ("ADDR: hexadecimal (600000 is 0x600000), a kernel symbol (do_syscall_64), a program "
                "label (A:_start), a layout name (USER_DATA), a register ($rsp), joined with + and -; "
                "a word both a name and hexadecimal (a label bad) is the name, with a note: 0xbad is the number")
NUMBER_HELP = "N: decimal (si 10 runs ten instructions, x/16gx shows sixteen)"
_UNITS = {"b": 1, "h": 2, "w": 4, "g": 8}
_PER_LINE = {1: 8, 2: 8, 4: 4, 8: 2}


def _count(text: str, what: str, hi: int = 1 << 62) -> int:
    """A decimal count (emu/parse.py's rule), as a debugger error."""
    try:
        return parse_count(text, what, hi=hi)
    except IsoemuError as e:
        raise DebugError(str(e)) from None


def _pick(table: dict[str, Sub], word: str, usage: str) -> Sub:
    """A subcommand by name or unique prefix (``i r``)."""
    hits = [k for k in table if k.startswith(word)] if word else []
    if word in table:
        hits = [word]
    if len(hits) != 1:
        raise DebugError(usage)
    return table[hits[0]]


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
        self.interrupted = False          # Ctrl-C stopped a command (a script ends there)
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
        name = ALIASES.get(name, name)
        self.lastcmd = line
        if name not in COMMANDS:
            self.fail(f"unknown command {name!r}: try 'help'")
            return False
        error = None
        try:
            # a script ends where Ctrl-C stopped it (self.interrupted)
            return bool(getattr(self, f"do_{name}")(rest.strip())) or self.interrupted
        except IsoemuError as e:
            error = str(e)
        except KeyboardInterrupt:
            if not self.interactive:
                self.interrupted = True
                return True
            error = "interrupted"
        except BrokenPipeError:
            raise                # the reader went away (| head): the command ends quietly
        except Exception as e:   # noqa: BLE001 - one line, never a traceback
            error = f"internal error: {type(e).__name__}: {e}"
        finally:
            self._flush_notes()
        self.fail(error)
        return False

    def _flush_notes(self) -> None:
        for note in self.dbg.notes:
            print(f"note: {note}", file=self.err)
        self.dbg.notes.clear()

    def emptyline(self) -> bool:
        # gdb repeats the last command; only the ones that move the machine on
        if not self.interactive or not self.lastcmd:
            return False
        last = ALIASES.get(self.lastcmd.split()[0], self.lastcmd.split()[0])
        return self.onecmd(self.lastcmd) if COMMANDS.get(last, Command("", ())).repeats else False

    def completenames(self, text, *ignored):
        return sorted(w for w in list(COMMANDS) + list(ALIASES) if w.startswith(text))

    def _space_arg(self, args: list[str]) -> tuple[list[str], str | None]:
        """Split a trailing address-space name off the arguments."""
        if len(args) > 1 and args[-1] in self.dbg.spaces():
            return args[:-1], args[-1]
        return args, None

    def _address(self, text: str) -> int:
        if not text:
            raise DebugError(f"an address is needed ({ADDRESS_HELP})")
        return self.dbg.resolve(text)

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
        usage = "usage: " + " | ".join(s.usage for s in CATCH.values())
        sub = CATCH.get(args[0] if args else "")
        if sub is None or len(args) - 1 > sub.max_args:
            raise DebugError(usage)
        bp = sub.run(self, args[1:])
        self.out(f"{bp.noun} {bp.num}: {bp.what()}")

    def do_delete(self, arg: str) -> None:
        if not arg:
            self.dbg.delete()
            return
        nums = []
        for n in arg.split():
            try:
                nums.append(parse_int(n, "breakpoint number", lo=1))
            except IsoemuError as e:
                raise DebugError(str(e)) from None
        for n in nums:
            self.dbg.delete(n)

    # -- running -----------------------------------------------------------------------------
    def do_continue(self, arg: str) -> None:
        if arg:
            raise DebugError("usage: continue (the budget is set with --budget)")
        self._show(self.dbg.cont())

    def do_stepi(self, arg: str) -> None:
        self._show(self.dbg.stepi(_count(arg, "instruction count") if arg else 1))

    def _show(self, stop: Stop) -> None:
        console = self.dbg.m.console
        if len(console) > self._console_seen:
            self.stdout.write(bytes(console[self._console_seen:]).decode(errors="replace"))
            if not console.endswith(b"\n"):
                self.out()
            self._console_seen = len(console)
        if stop.reason != "step":
            self.out(str(stop))
        if stop.reason == "interrupted" and not self.interactive:
            self.interrupted = True
        if self.dbg.alive:
            try:
                self._disas(self.dbg.disas(None, 1))
            except DebugError:
                self.out(f"=> {stop.rip:#x} <{stop.symbol}>: (not readable)")

    # -- inspection ----------------------------------------------------------------------------
    def do_info(self, arg: str) -> None:
        args = arg.split()
        usage = "usage: " + " | ".join(s.usage for s in INFO.values())
        sub = _pick(INFO, args[0] if args else "", usage)
        if len(args) - 1 > sub.max_args:
            raise DebugError(f"usage: {sub.usage}")
        sub.run(self, args[1:])

    def info_spaces(self) -> None:
        current = self.dbg.space
        for name, root in self.dbg.spaces().items():
            mark = "*" if name == current else " "
            self.out(f"{mark} {name:<12} {root:#018x}")

    def info_tlb(self, args: list[str]) -> None:
        pcid = None
        if args:
            try:
                pcid = parse_hex(args[0], "PCID", lo=0, hi=0xFFF)      # hexadecimal, as CR3 values
            except IsoemuError as e:
                raise DebugError(str(e)) from None
        for h in self.dbg.tlb(pcid):
            who = "global    " if h["pcid"] is None else f"pcid {h['pcid']:#05x}"
            mark = "*" if h["current"] else " "
            spaces = ", ".join(h["spaces"]) or "nothing valid (flushed since its tables were current)"
            self.out(f"{mark} {who} may cache: {spaces}")
            for line in h["stale"]:
                self.out(f"    stale: {line}")

    def info_breakpoints(self) -> None:
        bps = self.dbg.breakpoints
        if not bps:
            self.out("No breakpoints.")
            return
        self.out(f"{'Num':<5}{'Type':<16}{'Hits':<6}What")
        for b in bps:
            self.out(f"{b.num:<5}{KINDS[b.kind].listing:<16}{b.hits:<6}{b.what()}")

    def info_registers(self, names: list[str]) -> None:
        regs = self.dbg.regs
        for name in names or REGISTER_NAMES:
            shown = name.lstrip("$")
            if canonical_name(shown) is None:
                raise DebugError(f"unknown register {name!r}")
            v = regs[shown]
            self.out(f"{shown:<15}{v:<#20x}{self.dbg.register_note(shown, v)}".rstrip())

    def do_x(self, arg: str) -> None:
        fmt_word, rest = (arg.split(None, 1) + [""])[:2] if arg.startswith("/") else ("/", arg)
        m = re.fullmatch(r"/(\d*)([a-z]*)", fmt_word)
        letters = m.group(2) if m else ""
        if not m or set(letters) - set("xdui") - set(_UNITS):
            raise DebugError(f"bad format {fmt_word}: x/NFU with N a decimal count, F one of x d u i, "
                             f"U one of b h w g")
        count = _count(m.group(1), "count", hi=MAX_EXAMINE) if m.group(1) else 1
        args, space = self._space_arg(rest.split())
        va = self._address(" ".join(args))
        fmt = next((c for c in letters if c in "xdui"), "x")
        if fmt == "i":
            self._disas(self.dbg.disas(va, count, space))
            return
        size = next((_UNITS[c] for c in letters if c in _UNITS), 8)
        data = self.dbg.read_virt(va, count * size, space)
        per = _PER_LINE[size]
        for i in range(0, count, per):
            a = (va + i * size) & ((1 << 64) - 1)
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
        # a trailing decimal word is the count, unless it ends an expression (disas _start + 10)
        if len(args) >= 2 and args[-1].isdigit() and args[-2] not in ("+", "-") \
                and not args[-2].endswith(("+", "-")):
            n = _count(args.pop(), "instruction count", hi=MAX_DISAS)
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
        name = ALIASES.get(arg.strip(), arg.strip())
        if name and name not in COMMANDS:
            raise DebugError(f"no command {arg.strip()!r}: try 'help'")
        rows = COMMANDS[name].rows if name else HELP
        width = max(len(c) for c, _ in rows)
        for c, h in rows:
            self.out(f"{c:<{width}}  {h}")
        if not name or name in ("break", "x", "walk", "disas"):
            self.out(ADDRESS_HELP)
        if not name or name in ("stepi", "x", "disas", "delete"):
            self.out(NUMBER_HELP)

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


def read_text(path: str) -> str:
    """A UTF-8 text file (a byte-order mark dropped); anything else is one line."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"cannot read {path}: not UTF-8 text (byte {data[e.start]:#04x} at line {line})"
                          ) from None


def build_machine(args):
    """The machine to debug: PROGRAM.S as one process (A, or --name), or the default machine."""
    from emu.linux.machine import Machine
    from emu.tools.matrix import MatrixMachine
    from emu.tools.spaces import config_from_args

    if args.name is not None and not args.program:
        raise ConfigError("--name names the process of PROGRAM.S: give a program")
    cfg = config_from_args(args)
    if not args.program:
        return MatrixMachine(cfg).m, "the default machine (matrix_probe.S as A and B)"
    src = read_text(args.program)
    name = args.name if args.name is not None else DEFAULT_PROCESS
    m = Machine(cfg, record_events=False)
    m.add_process(name, src, filename=args.program)
    return m, f"{args.program} as process {name}"


def _script_lines(items) -> list[str]:
    lines = []
    for kind, value in items:
        lines.extend([value] if kind == "ex" else read_text(value).splitlines())
    return lines


def cmd_debug(args) -> int:
    budget = parse_count(args.budget, "--budget")
    script = _script_lines(args.script or [])
    machine, what = build_machine(args)
    dbg = Debugger(machine, budget=budget)
    interactive = not script and sys.stdin.isatty()
    shell = DebugShell(dbg, interactive)
    if interactive:
        _repl(shell, f"isoemu debug: {what}; stopped at {dbg.rip:#x} <{dbg.symbolize(dbg.rip)}>. "
                     f"Type 'help' for commands.")
        return 0
    left = len(script)
    for line in script or sys.stdin:
        left -= 1
        if shell.onecmd(line):
            break
    if shell.interrupted:
        more = f"; {left} more command{'s' * (left != 1)} not run" if script and left > 0 else ""
        print(f"isoemu: interrupted{more}", file=sys.stderr)
        return 130
    return 1 if shell.errors else 0


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
            except KeyboardInterrupt:     # Ctrl-C at the prompt (a running command stops itself)
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
        description="Debug a program (as process A, or --name) or, without one, the default machine "
                    "(matrix_probe.S as processes A and B) in gdb's idiom: break cr3 [SPACE], break "
                    "*ADDR, catch fault/syscall/asi-exit/stale, continue, stepi, x/4gx, walk, ptdump, "
                    "info registers/spaces/tlb, disas. Commands come from the terminal, standard input, "
                    "--batch FILE or -ex CMD. Addresses are hexadecimal (600000 is 0x600000), counts "
                    "decimal; Ctrl-C stops a running command.",
        epilog="example: isoemu debug -ex 'break cr3' -ex c -ex 'info registers cr3'")
    p.add_argument("program", metavar="PROGRAM.S", nargs="?", help="user program (entry _start)")
    p.add_argument("--name", metavar="NAME",
                   help=f"the process name of PROGRAM.S (default {DEFAULT_PROCESS}): break *{DEFAULT_PROCESS}:label")
    p.add_argument("--batch", metavar="FILE", dest="script", action=_Script,
                   help="run the commands in FILE, then exit")
    p.add_argument("-ex", metavar="CMD", dest="script", action=_Script,
                   help="run CMD (repeatable; with --batch, in command-line order), then exit")
    p.add_argument("--budget", default=str(DEFAULT_BUDGET), metavar="N",
                   help=f"instructions per 'continue' at most, decimal with k/M/G (default "
                        f"{DEFAULT_BUDGET:,}, i.e. 10M)")
    add_machine_args(p.add_argument_group("machine"))
    p.set_defaults(func=cmd_debug)
