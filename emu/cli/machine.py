"""``isoemu matrix``, ``isoemu stats`` and ``isoemu run``: the machine's commands."""

from __future__ import annotations

import json
import os
import sys

from emu.cli.common import (NUMBERS, add_json_args, add_machine_args, config_from_args, machine_settings,
                            print_json, read_source, write_text)
from emu.cli.render import EVENT_KINDS, event_json, event_line, parse_event_kinds
from emu.errors import ConfigError, GuestError
from emu.parse import parse_count

DEFAULT_BUDGET = "10M"


def cmd_matrix(args) -> int:
    from emu.tools.matrix import render, run_matrix

    if args.asi_designs:
        if args.svg:
            raise ConfigError("--svg draws one machine's matrix: leave out --asi-designs")
        return _asi_designs(args)
    result = run_matrix(config_from_args(args))
    if args.svg:
        from emu.tools.pictures import matrix_svg

        write_text(args.svg, matrix_svg(result))
        print(f"wrote {args.svg}: {len(result.cells)} cells, {len(result.mismatches)} mismatches",
              file=sys.stderr)
    if args.json:
        print_json(result.as_dict(), args)
    else:
        color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty()
                                           and not os.environ.get("NO_COLOR"))
        print(render(result, color=color))
    return 1 if result.failed else 0


def _asi_designs(args) -> int:
    """``isoemu matrix --asi-designs``: every design of asi= side by side."""
    from emu.tools import asi_designs

    if "asi" in machine_settings(args):
        raise ConfigError("--asi-designs runs every design of asi=: leave asi unset")
    c = asi_designs.compare(config_from_args(args))
    if args.json:
        print_json(asi_designs.as_dict(c), args)
    else:
        print(asi_designs.render(c, only_differing=not args.all_rows))
    return 1 if c.failed else 0


def cmd_stats(args) -> int:
    from emu.tools.matrix import MatrixMachine

    mm = MatrixMachine(config_from_args(args))
    boot = mm.m.stats()
    mm.pause_at_yield()
    live = mm.m.stats()
    mm.finish()
    released = mm.m.stats()
    phases = {"boot": boot, "secret_mapped": live, "secret_released": released}
    if args.json:
        print_json(phases, args)
        return 0
    w = max(26, *(len(n) for n in boot))
    print(f"{'counter':<{w}} {'boot':>12} {'secret mapped':>14} {'released':>12}")
    for n in boot:
        unit = " kB" if n.startswith("DirectMap") else ""
        print(f"{n:<{w}} {boot[n]:>9}{unit:3} {live[n]:>11}{unit:3} {released[n]:>9}{unit:3}".rstrip())
    return 0


# --- run --------------------------------------------------------------------------------------
def _signal_number(name: str | None) -> int:
    from emu.linux import abi

    return abi.SIGNALS.get(name, 0) if name else 0


def cmd_run(args) -> int:
    from emu.linux.machine import Machine
    from emu.tools.faults import fatal_report

    check_run_args(args)
    budget = parse_count(args.budget, "--budget")
    kinds = parse_event_kinds(args.events) if (args.events is not None or args.jsonl) else frozenset()
    src = read_source(args.program)
    m = Machine(config_from_args(args), record_events=False)
    p = m.add_process(args.name, src, filename=args.program)
    out = sys.stdout
    events = []

    def on_event(ev) -> None:
        if ev.kind not in kinds:
            return
        if args.jsonl:
            out.write(json.dumps(event_json(ev), separators=(",", ":")) + "\n")
        elif args.json:
            events.append(event_json(ev))
        else:
            out.write(event_line(ev) + "\n")

    if kinds:
        m.on_event(on_event)
    try:
        m.run(budget=budget)
    except GuestError:
        # what the program wrote before the machine stopped, then the one-line error
        if not (args.json or args.jsonl):
            out.write(bytes(m.output[p.pid]).decode(errors="replace"))
            out.flush()
        raise
    info = m.exits.get(p.pid, {})
    status = int(info.get("status", 0)) & 0xFF
    signal = info.get("signal")
    code = 128 + _signal_number(signal) if signal else status
    text = bytes(m.output[p.pid]).decode(errors="replace")
    if args.json or args.jsonl:
        fault = info.get("fault")
        doc = {"process": p.name, "pid": p.pid, "output": text, "status": None if signal else status,
               "signal": signal, "exit_status": code, "findings": [f.as_dict() for f in m.findings],
               "fault": None if fault is None else {
                   "vector": fault["vector"], "error_code": fault["error_code"],
                   "cr2": None if fault["cr2"] is None else f"{fault['cr2']:#x}", "rip": f"{fault['rip']:#x}",
                   "cr3": f"{fault['cr3']:#x}", "space": m.space_of(fault["cr3"]),
                   "symbol": m.symbolize(fault["rip"], p)}}
        if args.jsonl:
            doc = {"kind": "result", **doc}
            out.write(json.dumps(doc, separators=(",", ":")) + "\n")
        else:
            if args.events is not None:
                doc["events"] = events
            print_json(doc, args)
    else:
        out.write(text)
    out.flush()
    report = fatal_report(m, p.pid)
    for i, line in enumerate(report):   # as isoemu test reports it
        print(("isoemu: " if i == 0 else "") + line, file=sys.stderr)
    if m.findings and "stale" not in kinds and not (args.json or args.jsonl):
        # never silent: the TLB model found something (docs/tlb.md)
        for f in m.findings:
            print(f"isoemu: TLB finding: {f.line()}", file=sys.stderr)
    return code


def _events_help() -> str:
    return ", ".join(EVENT_KINDS)


def add_commands(sub) -> None:
    p = sub.add_parser("matrix", help="probe every region in every address space (the main job)",
                       description="Boot the default machine (PTI, PCID, ASI, SMEP, SMAP; processes A "
                                   "and B; one secret page owned by A) and probe standard regions in "
                                   "A.user, A.kernel, A.asi and B.user. Exit 1 on any mismatch "
                                   "with Linux's expected behaviour.",
                       epilog=NUMBERS)
    add_json_args(p, "print {config, spaces, regions, cells, stats, summary}")
    p.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                   help="mark mismatches in colour (auto: on a terminal, unless NO_COLOR is set)")
    p.add_argument("--asi-designs", action="store_true",
                   help="run the matrix under every ASI design (asi=off, on, rfc2019, rfc2025) and print "
                        "A.user and A.asi side by side, the rows that differ, then the CR3 writes, ASI exits "
                        "and taint-policy flushes of getpid, a probe of sensitive memory and sched_yield "
                        "(docs/asi.md)")
    p.add_argument("--all-rows", action="store_true", help="with --asi-designs: every row, also those "
                                                           "where the designs agree")
    p.add_argument("--svg", metavar="FILE", help="also draw the matrix as an SVG grid in FILE: cells coloured "
                                                 "by outcome, mismatches outlined, the walk's facts in each "
                                                 "cell's tooltip (docs/views.md)")
    add_machine_args(p.add_argument_group("machine"))
    p.set_defaults(func=cmd_matrix)

    s = sub.add_parser("stats", help="direct-map and isolation counters (Linux's names)",
                       description="DirectMap4k/2M/1G (kB), direct_map_level2/3_splits, secret, guest_memfd "
                                   "and /dev/xpfo pages, kernel TLB flushes and ASI exits of the default machine: after boot, with A's secret "
                                   "page mapped, and after its release.",
                       epilog=NUMBERS)
    add_json_args(s, "print {boot, secret_mapped, secret_released}, each {counter: value}")
    add_machine_args(s.add_argument_group("machine"))
    s.set_defaults(func=cmd_stats)

    r = sub.add_parser("run", help="run a user program on the default machine",
                       description="Assemble PROGRAM.S (Intel syntax, entry _start), run it as process A "
                                   "(--name to choose) and print what it wrote. The exit status is the "
                                   "program's; a program killed by a signal prints the fault that killed it "
                                   "on stderr and exits with 128 + the signal's number. Ctrl-C stops the "
                                   "run (exit status 130).",
                       epilog=NUMBERS)
    r.add_argument("program", metavar="PROGRAM.S", nargs="?", help="user program (UTF-8, ASCII outside strings and comments)")
    r.add_argument("--name", default="A", metavar="NAME",
                   help="the process's name (default A): letters, digits and _")
    r.add_argument("--budget", default=DEFAULT_BUDGET, metavar="N",
                   help="instruction budget, a decimal count with k/M/G (default 10M): the run stops with "
                        "an error (exit status 3) when the program has not exited after N instructions")
    r.add_argument("--events", nargs="?", const="all", metavar="KINDS",
                   help=f"print events as they happen, one line each; KINDS filters, comma-separated: "
                        f"{_events_help()} (default all)")
    r.add_argument("--jsonl", action="store_true",
                   help="events as one JSON object per line (addresses as 0x strings; all kinds unless "
                        "--events KINDS), then a last object of kind 'result'")
    add_json_args(r, "print {process, pid, output, status, signal, exit_status, fault} "
                     "(and events with --events)")
    add_machine_args(r.add_argument_group("machine"))
    r.set_defaults(func=cmd_run)


def check_run_args(args) -> None:
    if args.program is None:
        # 'run --events PROGRAM.S': the optional KINDS took the program (a kind has no '.' or '/')
        if args.events is not None and ("." in args.events or "/" in args.events):
            args.program, args.events = args.events, "all"
        else:
            raise ConfigError("run: PROGRAM.S is required")
    if args.json and args.jsonl:
        raise ConfigError("--json and --jsonl: choose one")
