"""``isoemu test PATH...``: run assembly isolation tests (see emu.tools.asmtest)."""

from __future__ import annotations

import sys

from emu.cli.common import add_machine_args, machine_settings


def cmd_test(args) -> int:
    from emu.parse import parse_count
    from emu.tools.asmtest import run_paths
    from emu.tools.asmtest.command import default_jobs

    budget = parse_count(args.budget, "--budget") if args.budget is not None else None
    jobs = default_jobs() if args.jobs is None else _jobs(args.jobs)
    return run_paths(args.paths, sys.stdout, exitfirst=args.exitfirst, overrides=machine_settings(args),
                     budget=budget, jobs=jobs)


def _jobs(text: str) -> int:
    from emu.errors import ConfigError

    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"--jobs {text!r}: expected a number of processes, 1 or more")
    return int(text)


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
    t.add_argument("-j", "--jobs", metavar="N",
                   help="run N test files at once in worker processes (default: one per CPU; "
                        "the output is in the same order as with -j 1)")
    t.add_argument("--budget", metavar="COUNT",
                   help="instruction budget of every test, over its headers (e.g. 10M)")
    add_machine_args(t.add_argument_group(
        "machine switches, over every test's headers (a switch set here no longer multiplies a "
        "test's configurations)"))
    t.set_defaults(func=cmd_test)
