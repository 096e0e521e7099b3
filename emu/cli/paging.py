"""``isoemu walk``, ``ptdump``, ``check`` and ``spaces``: the page-table commands."""

from __future__ import annotations

import json
import sys

from emu.cli.common import add_ctl_args, add_space_args, ctl_from_args
from emu.cli.render import walk_levels, walk_text
from emu.errors import ConfigError
from emu.hw.paging import parse_access
from emu.tools.spaces import resolve_space


def cmd_walk(args) -> int:
    space = resolve_space(args)
    va = space.parse_va(args.va)
    access = parse_access(args.access)
    ctl = ctl_from_args(args, space.ctl)
    res = space.translate(va, access, args.cpl, ctl)
    if args.json:
        doc = {"va": f"{va:#x}", "space": space.name, "access": args.access, "cpl": args.cpl,
               "levels": walk_levels(res, ctl.levels)}
        if res.fault:
            doc["fault"] = {"vector": res.vector, "error_code": res.error_code}
        else:
            doc["result"] = {"pa": f"{res.pa:#x}", "size": res.size}
        print(json.dumps(doc))
        return 0 if not res.fault else 1
    for line in walk_text(res, va, access, args.cpl, space.name, space.cr3, ctl.levels):
        print(line)
    return 1 if res.fault else 0


# --- ptdump / check ---------------------------------------------------------------
def cmd_ptdump(args) -> int:
    from emu.tools.ptdump import ptdump_lines

    space = resolve_space(args)
    out = sys.stdout
    for line in ptdump_lines(space.mem, space.cr3, space.ctl.levels):
        out.write(line + "\n")
    return 0


def cmd_check(args) -> int:
    from emu.tools.lint import LINTS, check

    space = resolve_space(args)
    only = tuple(args.lint) if args.lint else LINTS
    for name in only:
        if name not in LINTS:
            raise ConfigError(f"unknown lint {name!r}: choose from {', '.join(LINTS)}")
    findings = check(space.mem, space.cr3, space.ctl.levels, space.ctl.maxphyaddr, only)
    if args.json:
        print(json.dumps({"space": space.name, "cr3": f"{space.cr3:#x}",
                          "findings": [f.as_dict() for f in findings]}))
    else:
        for f in findings:
            print(f.line())
        print(f"{len(findings)} finding{'s' if len(findings) != 1 else ''} in {space.name}",
              file=sys.stderr)
    return 1 if findings else 0


def cmd_spaces(args) -> int:
    from emu.tools.spaces import list_spaces

    rows = list_spaces(args)
    if args.json:
        print(json.dumps([{"name": s.name, "cr3": f"{s.cr3:#x}", "description": s.description}
                          for s in rows]))
    else:
        for s in rows:
            print(f"{s.name:<14} cr3 {s.cr3:#018x}  {s.description}")
    return 0




def add_commands(sub) -> None:
    w = sub.add_parser("walk", help="walk the page tables for one address",
                       description="Walk the page tables for VA as the CPU would and show every level.")
    w.add_argument("va", metavar="VA", help="virtual address (hex) or, on a machine, a symbol")
    w.add_argument("--access", default="r", choices=["r", "w", "x"], help="access kind (default r)")
    w.add_argument("--cpl", type=int, default=0, choices=[0, 3], help="privilege level (default 0)")
    w.add_argument("--json", action="store_true", help="print JSON")
    add_space_args(w)
    add_ctl_args(w)
    w.set_defaults(func=cmd_walk)

    d = sub.add_parser("ptdump", help="dump page tables in Linux dump_pagetables format")
    add_space_args(d)
    d.set_defaults(func=cmd_ptdump)

    c = sub.add_parser("check", help="lint page tables (exit 1 if a lint fires)",
                       description="Lint page tables: W+X, user-accessible kernel mappings, W/X "
                                   "aliases, reserved bits, page-table ownership, L1TF PFN inversion.")
    c.add_argument("--lint", action="append", metavar="NAME", help="run only this lint (repeatable)")
    c.add_argument("--json", action="store_true", help="print JSON")
    add_space_args(c)
    c.set_defaults(func=cmd_check)

    s = sub.add_parser("spaces", help="list the address spaces of the built-in machine")
    s.add_argument("--json", action="store_true", help="print JSON")
    add_space_args(s)
    s.set_defaults(func=cmd_spaces)
