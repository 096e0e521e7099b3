"""The ``isoemu`` command line: a thin layer over the Python API.

Every user error ends in one line on stderr (``isoemu: ...``) and a non-zero
exit status, never a traceback: argparse's own errors too (one line, with
the nearest option or command for a mistyped one, exit status 2).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import re
import sys

from emu.version import VERSION
from emu.cli.common import config_from_args, has_machine_args
from emu.errors import IsoemuError


class UsageError(Exception):
    """An argparse error, as one line."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``isoemu: matrix: unrecognized argument:
    --jsno (did you mean --json?)``.  Subcommand parsers are of this class too."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        # a negative number, hexadecimal too, is a value, not an option:
        # '--cr3 -0x1000' gets its range message, not "expected one argument"
        self._negative_number_matcher = re.compile(r"^-(0[xX][0-9a-fA-F_]+|\d[\d_]*(\.\d+)?)$")

    def error(self, message: str):
        raise UsageError(_prefixed(self.prog, self._suggest(message)))

    def _suggest(self, message: str) -> str:
        m = re.match(r"argument (\S+): invalid choice: '?([^' ]*)'? \(", message)
        if m:
            choices = self._choices_of(m.group(1))
            close = difflib.get_close_matches(m.group(2), choices, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            if m.group(1) == "COMMAND":
                return f"unknown command {m.group(2)!r}{hint}; commands: {', '.join(choices)}"
            return (f"{m.group(1).lower()}: invalid choice {m.group(2)!r}{hint}; choose from "
                    f"{', '.join(choices)}")
        return message

    def _choices_of(self, dest: str) -> list[str]:
        for a in self._actions:
            if a.choices and (a.metavar == dest or dest in a.option_strings
                              or dest == "/".join(a.option_strings)):
                return [str(c) for c in a.choices]
        return []


def unrecognized(parser: Parser, command: str | None, extras: list[str]) -> str:
    """``matrix: unrecognized argument: --jsno (did you mean --json?)``."""
    sub = _subparser(parser, command)
    target = sub or parser
    options = [o for a in target._actions for o in a.option_strings]
    words = []
    for x in extras:
        word = x
        if x.startswith("-"):
            close = difflib.get_close_matches(x.split("=", 1)[0], options, n=1, cutoff=0.6)
            if close:
                word += f" (did you mean {close[0]}?)"
        words.append(word)
    what = "argument" if len(extras) == 1 else "arguments"
    return _prefixed(target.prog, f"unrecognized {what}: {', '.join(words)}")


def _prefixed(prog: str, message: str) -> str:
    """``matrix: message`` for a command's parser, ``message`` for the top level."""
    cmd = prog.removeprefix("isoemu").strip()
    return f"{cmd}: {message}" if cmd else message


def _subparser(parser: Parser, command: str | None):
    if not command:
        return None
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            return a.choices.get(command)
    return None


# --- entry point ----------------------------------------------------------------
def build_parser(command: str | None = None) -> Parser:
    """The whole command line, or (``command``, one of :data:`COMMANDS`) only
    the module that defines it: a command imports what it needs and no more
    (the debugger's, the tracer's and the pictures' modules stay unloaded for
    ``isoemu matrix``; docs/performance.md)."""
    p = Parser(
        prog="isoemu",
        description="x86-64 paging emulator: Linux PTI, ASI and memfd_secret in a kernel stub run "
                    "by Unicorn, with a reference page walker.",
        epilog="Numbers: addresses and CR3 values are hexadecimal, 0x optional (400000 is 0x400000); "
               "counts are decimal with k/M/G (--budget 10M); sizes take K/M/G/T (--ram 4G).")
    p.add_argument("--version", action="version", version=f"isoemu {VERSION}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    names = (COMMANDS[command],) if command in COMMANDS else COMMAND_MODULES
    for name in names:
        importlib.import_module(f"emu.cli.{name}").add_commands(sub)
    return p


# Modules (emu.cli.NAME) that add subcommands, in the order 'isoemu --help' lists them.
COMMAND_MODULES = ("machine", "paging", "views", "frag", "image", "trace", "debug", "test", "bench")
# each command's module (tests/test_cli_errors.py checks it against the full parser)
COMMANDS = {"matrix": "machine", "stats": "machine", "run": "machine", "walk": "paging", "ptdump": "paging",
            "check": "paging", "spaces": "paging", "diff": "views", "whereis": "views", "report": "views",
            "frag": "frag", "image": "image", "trace": "trace", "debug": "debug", "test": "test",
            "bench": "bench"}


def _command_of(argv: list[str]) -> str | None:
    """The command word, if it comes first (as every command's usage has it)."""
    return argv[0] if argv and argv[0] in COMMANDS else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(_command_of(argv))
    try:
        args, extras = parser.parse_known_args(argv)
        if extras:
            raise UsageError(unrecognized(parser, getattr(args, "command", None), extras))
    except UsageError as e:
        print(f"isoemu: {e}", file=sys.stderr)
        return 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "no_cache", False):
        os.environ["ISOEMU_NO_CACHE"] = "1"        # read by emu.asm.cache when a link is asked for
    try:
        if has_machine_args(args) and not getattr(args, "image", None):
            config_from_args(args)       # --set and the flags, checked once for every command
        return args.func(args)
    except IsoemuError as e:
        print(f"isoemu: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print("isoemu: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
