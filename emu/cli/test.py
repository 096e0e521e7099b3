"""``isoemu test PATH...``: run assembly isolation tests (see emu.tools.asmtest)."""

from __future__ import annotations

import sys


def cmd_test(args) -> int:
    from emu.tools.asmtest import run_paths

    return run_paths(args.paths, sys.stdout, exitfirst=args.exitfirst)


def add_commands(sub) -> None:
    t = sub.add_parser(
        "test", help="run assembly isolation tests (.S files with '; expect:' lines)",
        description="Run assembly isolation tests: each .S file is a user program with its "
                    "expectations in comment lines ('; isoemu: ...', '; expect: ...', "
                    "'; process: NAME').  Prints one line per test and a report for each failure; "
                    "exit status 1 if any test failed, 2 for bad arguments.")
    t.add_argument("paths", nargs="+", metavar="PATH", help="a test file, or a directory searched for *.S")
    t.add_argument("-x", "--exitfirst", action="store_true", help="stop after the first failing test")
    t.set_defaults(func=cmd_test)
