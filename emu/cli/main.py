"""The ``isoemu`` command line: a thin layer over the Python API.

Every user error ends in one line on stderr (``isoemu: ...``) and a non-zero
exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from emu.version import VERSION
from emu.cli import bench, debug, machine, paging, test, trace
from emu.errors import IsoemuError


# --- entry point ----------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="isoemu",
        description="x86-64 paging emulator: Linux PTI, ASI and memfd_secret in a kernel stub run "
                    "by Unicorn, with a reference page walker.")
    p.add_argument("--version", action="version", version=f"isoemu {VERSION}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    for mod in COMMAND_MODULES:
        mod.add_commands(sub)
    return p


# Modules that add subcommands, in the order 'isoemu --help' lists them.
COMMAND_MODULES = (machine, paging, trace, debug, test, bench)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
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
