"""``isoemu test PATH...``: run assembly isolation tests (see emu.tools.asmtest)."""

from __future__ import annotations

import sys


def cmd_test(args) -> int:
    from emu.linux.config import parse_assignments
    from emu.parse import parse_count
    from emu.tools.asmtest import run_paths

    overrides = parse_assignments(args.set or [])
    budget = parse_count(args.budget, "--budget") if args.budget is not None else None
    return run_paths(args.paths, sys.stdout, exitfirst=args.exitfirst, overrides=overrides, budget=budget)


def add_commands(sub) -> None:
    t = sub.add_parser(
        "test", help="run assembly isolation tests (.S files with '; expect:' lines)",
        description="Run assembly isolation tests: each .S file is a user program with its "
                    "expectations in comment lines ('; isoemu: ...', '; expect: ...', "
                    "'; process: NAME').  Prints one line per test configuration and a report for "
                    "each failure; exit status 1 if any failed, 2 for bad arguments, 130 when "
                    "interrupted (Ctrl-C).  Reference: docs/asm-tests.md.")
    t.add_argument("paths", nargs="+", metavar="PATH", help="a test file, or a directory searched for *.S")
    t.add_argument("-x", "--exitfirst", action="store_true", help="stop after the first failing test")
    t.add_argument("--set", action="append", metavar="SWITCH=VALUE",
                   help="set a machine switch in every test, over its headers (e.g. pti=off; "
                        "repeatable, or comma-separated); a switch set here no longer multiplies "
                        "a test's configurations")
    t.add_argument("--budget", metavar="COUNT",
                   help="instruction budget of every test, over its headers (e.g. 10M)")
    t.set_defaults(func=cmd_test)
