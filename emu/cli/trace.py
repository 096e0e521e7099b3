"""``isoemu trace``: the memory accesses of a user program, one per line."""

from __future__ import annotations

import json
import sys


HEADER = (f"{'SEQ':>7} {'CPL':>3} {'SPACE':<12} {'PCID':>5} K {'VA':<18} {'SIZE':>6} {'PA':<12} "
          f"{'FAULT':<10} {'RIP':<18} SYMBOL")
MAX_BUDGET = 1 << 62          # emu.parse.parse_count's default bound


def format_record(r) -> str:
    """One aligned table row (the symbol last: it is the only free-width column)."""
    from emu.hw.x86 import vector_name

    pcid = f"{r.pcid:#x}" if r.pcid is not None else "-"
    pa = f"{r.pa:#x}" if r.pa is not None else "-"
    fault = "-" if r.fault is None else f"{vector_name(r.fault['vector'])}({r.fault['error_code']:#x})"
    stale = "" if r.fault is None or "stale" not in r.fault else \
        ("  [stale: served by a cached translation]" if r.fault["served"] else "  [stale: a cached translation would serve it]")
    return (f"{r.seq:>7} {r.cpl:>3} {r.space:<12} {pcid:>5} {r.kind} {r.va:#018x} {r.size:>6} {pa:<12} "
            f"{fault:<10} {r.rip:#018x} {r.symbol}{stale}")


def parse_budget(text: str) -> int:
    """``--budget``: a count (``10M``); zero and negative counts are refused
    with the range."""
    from emu.parse import parse_count

    return parse_count(text, "--budget", lo=1, hi=MAX_BUDGET)


def cmd_trace(args) -> int:
    from emu.cli.common import config_from_args, print_notes
    from emu.linux.machine import Interrupted
    from emu.parse import parse_range
    from emu.tools.faults import fatal_report
    from emu.tools.trace import KINDS, Tracer, load_machine, name_resolver, parse_kinds

    kinds = parse_kinds(args.kind) if args.kind else KINDS
    budget = parse_budget(args.budget)
    m = load_machine(args.program, config_from_args(args))
    va_range = None
    if args.range is not None:
        notes: list[str] = []
        va_range = parse_range(args.range, "range", name_resolver(m), notes)
        print_notes(notes)
    tracer = Tracer(m, kinds=kinds, space=args.space, va_range=va_range)
    out = sys.stdout
    try:
        with tracer:
            _write(out, tracer.run(budget), args.jsonl)
    except KeyboardInterrupt:
        # Ctrl-C between two chunks of the run (within one, the run stops
        # itself and raises Interrupted): the same one line
        raise Interrupted(f"interrupted at {m.where()}, after at least {tracer.executed:,} instructions") \
            from None
    finally:
        out.flush()                 # the records made stay printed, before any message
    report = fatal_report(m, m.process("A").pid)
    if report:
        print("isoemu: " + report[0], file=sys.stderr)
        for line in report[1:]:
            print(line, file=sys.stderr)
        return 1
    return 0


def _write(out, records, jsonl: bool) -> None:
    if jsonl:
        for r in records:
            out.write(json.dumps(r.as_dict(hex_addresses=True)) + "\n")
        return
    header = False
    for r in records:
        if not header:
            out.write(HEADER + "\n")
            header = True
        out.write(format_record(r) + "\n")


def add_commands(sub) -> None:
    t = sub.add_parser(
        "trace", help="trace every memory access of a user program",
        description="Assemble PROGRAM.S (Intel syntax, entry _start), run it as process A on the default "
                    "machine and print one record per memory access, kernel code included: sequence "
                    "number, CPL, address space, PCID, kind (r/w/x; x = one record per basic block "
                    "fetched), virtual address, size, physical address or fault, RIP and symbol. Accesses "
                    "crossing a page are split in two; the exception frame written by delivery counts "
                    "as writes of the faulting instruction. If the program is killed by a signal, the "
                    "fault that killed it is reported on stderr and the exit status is 1.")
    t.add_argument("program", metavar="PROGRAM.S", help="user program (Intel syntax, entry _start)")
    t.add_argument("--space", metavar="NAME",
                   help="only accesses through this address space's page tables (e.g. A.user, A.kernel, "
                        "A.asi; see 'isoemu spaces')")
    t.add_argument("--kind", metavar="r|w|x",
                   help="only these access kinds: r (read), w (write), x (instruction fetch) or a "
                        "combination such as rw")
    t.add_argument("--range", metavar="LO-HI",
                   help="only accesses overlapping the virtual range [LO, HI); addresses are hexadecimal "
                        "with or without 0x, or names: 600000-601000, USER_DATA..USER_DATA+1000, "
                        "A:buf..A:buf+40, entry_SYSCALL_64..entry_SYSCALL_64+100 (use .. when an end "
                        "has a -)")
    t.add_argument("--jsonl", action="store_true",
                   help="one JSON object per line: seq, rip, symbol, cpl, cr3, pcid, space, kind, va, size, "
                        "pa, fault (addresses as 0x strings)")
    t.add_argument("--budget", default="10M", metavar="N",
                   help="stop with an error after N instructions (default 10M; 10k, 10M, 3G work; guards "
                        "against runaway programs)")
    from emu.cli.common import add_machine_args

    add_machine_args(t.add_argument_group("machine"))
    t.set_defaults(func=cmd_trace)
