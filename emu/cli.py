"""The ``isoemu`` command line: a thin layer over the Python API.

Every user error ends in one line on stderr (``isoemu: ...``) and a non-zero
exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from . import __version__
from .errors import ConfigError, IsoemuError
from .paging import ControlState, error_code_words, fmt_size, parse_access
from .spaces import parse_address, resolve_space


def _add_space_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("address space")
    g.add_argument("--space", metavar="NAME", help="address space to use (see 'isoemu spaces')")
    g.add_argument("--image", metavar="FILE", help="raw physical-memory image (e.g. QEMU pmemsave)")
    g.add_argument("--cr3", metavar="ADDR", help="page-table root in the image (with --image)")
    add_machine_args(g)


def add_machine_args(g) -> None:
    """Switches of the built-in machine (shared by every command that boots it)."""
    g.add_argument("--no-pti", action="store_true", help="page-table isolation off")
    g.add_argument("--no-pcid", action="store_true", help="PCIDs off (every CR3 write flushes)")
    g.add_argument("--no-asi", action="store_true", help="address-space isolation off")
    g.add_argument("--la57", action="store_true", help="5-level paging")
    g.add_argument("--ram", metavar="SIZE", help="guest RAM (default 256M, e.g. 4G)")


def _add_ctl_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("control state (defaults: the space's own)")
    for name, what in (("wp", "CR0.WP"), ("smep", "CR4.SMEP"), ("smap", "CR4.SMAP"),
                       ("nxe", "EFER.NXE"), ("pke", "CR4.PKE"), ("ac", "RFLAGS.AC")):
        g.add_argument(f"--{name}", dest=name, action="store_true", default=None, help=f"set {what}")
        g.add_argument(f"--no-{name}", dest=name, action="store_false", help=f"clear {what}")
    g.add_argument("--pkru", metavar="VALUE", help="PKRU value (implies --pke)")


def _ctl_from_args(args, base: ControlState) -> ControlState:
    kw = {}
    for name in ("wp", "smep", "smap", "nxe", "pke", "ac"):
        v = getattr(args, name, None)
        if v is not None:
            kw[name] = v
    if getattr(args, "pkru", None) is not None:
        kw["pkru"] = parse_address(args.pkru, "PKRU value")
        kw.setdefault("pke", True)
    return base.replace(**kw) if kw else base


# --- walk -------------------------------------------------------------------------
def flag_word(entry: int, shift: int, leaf: bool) -> str:
    """Bochs-style flags: set ones upper-case, clear ones lower-case."""
    def f(bit: int, name: str) -> str:
        return name.upper() if entry >> bit & 1 else name.lower()

    words = [f(63, "XD")]
    if leaf and (entry >> 59) & 0xF:
        words.append(f"pk={(entry >> 59) & 0xF}")
    if shift in (21, 30) and leaf:
        words.append(f(12, "PAT"))
    words += [f(8, "G"), f(7, "PAT" if shift == 12 else "PS"), f(6, "D"), f(5, "A"),
              f(4, "PCD"), f(3, "PWT"), f(2, "U"), f(1, "W"), f(0, "P")]
    return " ".join(words)


def walk_levels(res, levels: int) -> list[dict]:
    """The entry visited at each level of a walk, with Bochs-style flags."""
    top = 12 + 9 * (levels - 1)
    out = []
    for i, st in enumerate(res.steps):
        shift = top - 9 * i
        leaf = shift == 12 or bool(st.entry & 0x80 and shift in (21, 30)) or not st.entry & 1
        out.append({"level": st.level, "index": st.index, "entry": f"{st.entry:#018x}",
                    "flags": flag_word(st.entry, shift, leaf)})
    return out


def walk_text(res, va: int, access: int, cpl: int, space_name: str, cr3: int, levels: int) -> list[str]:
    """A walk as ``isoemu walk`` prints it (also the debugger's ``walk``)."""
    what = {0: "read", 1: "write", 2: "fetch"}[access]
    lines = [f"{va:#018x}  {what} at CPL{cpl} in {space_name} (cr3 {cr3:#x})"]
    for lv in walk_levels(res, levels):
        lines.append(f"  {lv['level']}[{lv['index']:3d}]  {lv['entry']}  {lv['flags']}")
    if res.fault:
        if res.vector == 13:
            lines.append(f"  -> #GP(0): {va:#x} is not canonical")
        else:
            lines.append(f"  -> #PF error code {res.error_code:#x} ({error_code_words(res.error_code)})")
        return lines
    perms = ", ".join(n for n, v in (("user", res.user), ("writable", res.writable),
                                     ("no-execute", res.nx)) if v) or "supervisor, read-only, executable"
    lines.append(f"  -> pa {res.pa:#x}  ({fmt_size(res.size)} page; {perms})")
    return lines


def cmd_walk(args) -> int:
    space = resolve_space(args)
    va = space.parse_va(args.va)
    access = parse_access(args.access)
    ctl = _ctl_from_args(args, space.ctl)
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
    from .ptdump import ptdump_lines

    space = resolve_space(args)
    out = sys.stdout
    for line in ptdump_lines(space.mem, space.cr3, space.ctl.levels):
        out.write(line + "\n")
    return 0


def cmd_check(args) -> int:
    from .lint import LINTS, check

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
    from .spaces import list_spaces

    rows = list_spaces(args)
    if args.json:
        print(json.dumps([{"name": s.name, "cr3": f"{s.cr3:#x}", "description": s.description}
                          for s in rows]))
    else:
        for s in rows:
            print(f"{s.name:<14} cr3 {s.cr3:#018x}  {s.description}")
    return 0


def cmd_bench(args) -> int:
    from .bench import run_bench

    report = run_bench(quick=args.quick, only=args.only)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for fig in report["figures"]:
            base = ""
            if fig.get("baseline") is not None:
                base = f"   baseline {fig['baseline']:.4g} ({fig['baseline_name']}), ratio {fig['ratio']:.3g}"
            target = f"   target {fig['target']}" if fig.get("target") else ""
            print(f"{fig['name']:<34} {fig['value']:>12.4g} {fig['unit']:<10}{base}{target}")
    return 0


# --- entry point ----------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="isoemu",
        description="x86-64 paging emulator: Linux PTI, ASI and memfd_secret in a kernel stub run "
                    "by Unicorn, with a reference page walker.")
    p.add_argument("--version", action="version", version=f"isoemu {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    w = sub.add_parser("walk", help="walk the page tables for one address",
                       description="Walk the page tables for VA as the CPU would and show every level.")
    w.add_argument("va", metavar="VA", help="virtual address (hex) or, on a machine, a symbol")
    w.add_argument("--access", default="r", choices=["r", "w", "x"], help="access kind (default r)")
    w.add_argument("--cpl", type=int, default=0, choices=[0, 3], help="privilege level (default 0)")
    w.add_argument("--json", action="store_true", help="print JSON")
    _add_space_args(w)
    _add_ctl_args(w)
    w.set_defaults(func=cmd_walk)

    d = sub.add_parser("ptdump", help="dump page tables in Linux dump_pagetables format")
    _add_space_args(d)
    d.set_defaults(func=cmd_ptdump)

    c = sub.add_parser("check", help="lint page tables (exit 1 if a lint fires)",
                       description="Lint page tables: W+X, user-accessible kernel mappings, W/X "
                                   "aliases, reserved bits, page-table ownership, L1TF PFN inversion.")
    c.add_argument("--lint", action="append", metavar="NAME", help="run only this lint (repeatable)")
    c.add_argument("--json", action="store_true", help="print JSON")
    _add_space_args(c)
    c.set_defaults(func=cmd_check)

    s = sub.add_parser("spaces", help="list the address spaces of the built-in machine")
    s.add_argument("--json", action="store_true", help="print JSON")
    _add_space_args(s)
    s.set_defaults(func=cmd_spaces)

    b = sub.add_parser("bench", help="measure speed against a raw-Unicorn baseline")
    b.add_argument("--json", action="store_true", help="print JSON")
    b.add_argument("--quick", action="store_true", help="smaller workloads (for smoke tests)")
    b.add_argument("--only", action="append", metavar="NAME", help="run only the benchmark groups whose name contains NAME (page tables, microcode, machine, trace); repeatable")
    b.set_defaults(func=cmd_bench)
    for modname in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f".{modname}", __package__)
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{modname}":
                raise
            continue
        mod.add_commands(sub)
    return p


# Modules that add subcommands: each has add_commands(subparsers).
COMMAND_MODULES = ("cli_machine", "cli_trace", "cli_debug", "cli_asmtest")


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
