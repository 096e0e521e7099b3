"""``isoemu walk``, ``ptdump``, ``check`` and ``spaces``: the page-table commands."""

from __future__ import annotations

import sys

from emu.cli.common import (NUMBERS, add_ctl_args, add_json_args, add_machine_args, add_space_args,
                            config_from_args, ctl_from_args, print_json, print_notes, space_from_args)
from emu.cli.render import walk_json, walk_text
from emu.errors import ConfigError
from emu.hw.paging import parse_access
from emu.parse import parse_address


def default_cpl(space_name: str) -> int:
    """A user page table is walked as CPL3 would use it; every other at CPL0."""
    return 3 if space_name.endswith(".user") else 0


def image_notes(space, *topics: str) -> list[str]:
    """What an image command assumed or detected (emu/tools/image.py), for stderr."""
    return space.setup.notes_for(*topics) if space.setup is not None else []


def layout_json(space) -> dict:
    src = space.setup.sources if space.setup is not None else {}
    return {k: {"value": None if v is None else f"{v:#x}", "source": src.get(f"layout.{k}", "the built-in machine")}
            for k, v in space.layout.values().items()}


def cmd_walk(args) -> int:
    space = space_from_args(args)
    notes: list[str] = []
    va = parse_address(args.va, "virtual address", space.symbols, notes)
    print_notes(image_notes(space, "mode", "control", "maxphyaddr") + notes)
    access = parse_access(args.access)
    ctl = ctl_from_args(args, space.ctl)
    cpl = default_cpl(space.name) if args.cpl is None else args.cpl
    res = space.translate(va, access, cpl, ctl)
    if args.json:
        print_json(walk_json(res, va, access, cpl, space.name, space.cr3, ctl, cpl_default=args.cpl is None),
                   args)
    else:
        note = f" (the default in {space.name}; --cpl to choose)" if args.cpl is None else ""
        for line in walk_text(res, va, access, cpl, space.name, space.cr3, ctl.levels, ctl=ctl, cpl_note=note):
            print(line)
    return 1 if res.fault else 0


# --- ptdump / check ---------------------------------------------------------------
def cmd_ptdump(args) -> int:
    from emu.tools.ptdump import ptdump_lines

    space = space_from_args(args)
    notes = image_notes(space, "mode", "layout")
    problems: list[str] = []
    lines = ptdump_lines(space.mem, space.cr3, space.ctl.mode, space.layout, problems, entries=args.entries)
    status = 1 if problems else 0
    if args.json:
        doc = {"space": space.name, "cr3": f"{space.cr3:#x}", "lines": lines}
        if space.setup is not None:
            doc.update(layout=layout_json(space), notes=notes, problems=problems)
        print_json(doc, args)
        return status
    print_notes(notes + problems)
    out = sys.stdout
    for line in lines:
        out.write(line + "\n")
    return status


def cmd_check(args) -> int:
    from emu.tools.lint import LINTS, check
    from emu.linux.config import nearest

    only = tuple(args.lint) if args.lint else LINTS
    for name in only:
        if name not in LINTS:
            raise ConfigError(f"unknown lint {name!r}{nearest(name, LINTS)}: choose from {', '.join(LINTS)}")
    space = space_from_args(args)
    notes = image_notes(space, "mode", "control", "maxphyaddr")
    findings = check(space.mem, space.cr3, space.ctl.mode, space.ctl.maxphyaddr, only, space.layout,
                     space.ctl.nxe)
    if args.json:
        doc = {"space": space.name, "cr3": f"{space.cr3:#x}", "findings": [f.as_dict() for f in findings]}
        if space.setup is not None:
            doc["notes"] = notes
        print_json(doc, args)
    else:
        print_notes(notes)
        for f in findings:
            print(f.line())
        print(f"{len(findings)} finding{'s' if len(findings) != 1 else ''} in {space.name}",
              file=sys.stderr)
    return 1 if findings else 0


def cmd_spaces(args) -> int:
    from emu.tools.spaces import list_spaces

    config_from_args(args)
    rows = list_spaces(args)
    if args.json:
        print_json([{"name": s.name, "cr3": f"{s.cr3:#x}", "description": s.description} for s in rows], args)
    else:
        for s in rows:
            print(f"{s.name:<14} cr3 {s.cr3:#018x}  {s.description}")
    return 0


def add_commands(sub) -> None:
    w = sub.add_parser(
        "walk", help="walk the page tables for one address, and say why it faults",
        description="Walk the page tables for VA as the CPU would: every level's entry, then the physical "
                    "address, or the fault with its error code and the rule that refused it (not present, "
                    "a reserved bit, U/S, R/W, XD, SMEP, SMAP, a protection key). Prints the control state "
                    "used (WP SMEP SMAP NXE PKE AC PKRU LA57: upper-case set, lower-case clear) and the CPL. "
                    "Exit status 0 for a translation, 1 for a fault, 2 for bad input.",
        epilog=NUMBERS)
    w.add_argument("va", metavar="VA",
                   help="virtual address, hexadecimal (400000 is 0x400000); on the built-in machine also a "
                        "kernel symbol (entry_SYSCALL_64), a program label (A:_start), a layout name "
                        "(USER_DATA), or an expression of them: 'USER_DATA + 8' (every number hex)")
    w.add_argument("--access", default="r", choices=["r", "w", "x"], help="access kind (default r)")
    w.add_argument("--cpl", type=int, choices=[0, 3],
                   help="privilege level (default: 3 in a *.user space, 0 in every other)")
    add_json_args(w, "print JSON: va, space, cr3, access, cpl, control, levels, and result or fault "
                     "{vector, error_code, level, rule, reason}")
    add_space_args(w)
    add_ctl_args(w)
    w.set_defaults(func=cmd_walk)

    d = sub.add_parser("ptdump", help="dump page tables in Linux dump_pagetables format",
                       description="Dump page tables as Linux's dump_pagetables prints them (arch/x86/mm/"
                                   "dump_pagetables.c), section markers from the space's layout (on an "
                                   "image: detected, given or assumed, and said so on stderr). A table "
                                   "outside memory or a loop is skipped and named on stderr, the rest "
                                   "dumped: exit status 1.",
                       epilog=NUMBERS)
    d.add_argument("--entries", action="store_true",
                   help="end each line with its run's first raw entry; an inverted PFN (L1TF) decoded "
                        "(the lines then differ from Linux's)")
    add_json_args(d, "print JSON: space, cr3, lines (on an image also layout {key: {value, source}}, "
                     "notes, problems)")
    add_space_args(d)
    d.set_defaults(func=cmd_ptdump)

    c = sub.add_parser("check", help="lint page tables (exit 1 if a lint fires)",
                       description="Lint page tables: W+X, user-accessible kernel mappings, W/X "
                                   "aliases, reserved bits, page-table ownership, L1TF PFN inversion.",
                       epilog=NUMBERS)
    c.add_argument("--lint", action="append", metavar="NAME", help="run only this lint (repeatable)")
    add_json_args(c, "print JSON: space, cr3, findings")
    add_space_args(c)
    c.set_defaults(func=cmd_check)

    s = sub.add_parser("spaces", help="list the address spaces of the built-in machine",
                       description="List the built-in machine's address spaces: name, page-table root and "
                                   "what it is. (A memory image has one space, the root given with --cr3 "
                                   "to walk, ptdump and check; there is nothing to list.)",
                       epilog=NUMBERS)
    add_json_args(s, "print JSON: a list of {name, cr3, description}")
    add_machine_args(s.add_argument_group("machine"))
    s.set_defaults(func=cmd_spaces)
