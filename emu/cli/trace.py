"""``isoemu trace``: the memory accesses of a user program, one per line."""

from __future__ import annotations

import json
import sys

from emu.errors import ConfigError

HEADER = (f"{'SEQ':>7} {'CPL':>3} {'SPACE':<12} {'PCID':>5} K {'VA':<18} {'SIZE':>6} {'PA':<12} "
          f"{'FAULT':<10} {'RIP':<18} SYMBOL")


def format_record(r) -> str:
    """One aligned table row (the symbol last: it is the only free-width column)."""
    from emu.hw.x86 import vector_name

    pcid = f"{r.pcid:#x}" if r.pcid is not None else "-"
    pa = f"{r.pa:#x}" if r.pa is not None else "-"
    fault = "-" if r.fault is None else f"{vector_name(r.fault['vector'])}({r.fault['error_code']:#x})"
    return (f"{r.seq:>7} {r.cpl:>3} {r.space:<12} {pcid:>5} {r.kind} {r.va:#018x} {r.size:>6} {pa:<12} "
            f"{fault:<10} {r.rip:#018x} {r.symbol}")


def cmd_trace(args) -> int:
    from emu.tools.spaces import config_from_args
    from emu.tools.trace import iter_trace, parse_kinds, parse_range

    kinds = parse_kinds(args.kind) if args.kind else "rwx"
    va_range = parse_range(args.range) if args.range else None
    if args.budget <= 0:
        raise ConfigError(f"--budget must be a positive number of instructions, not {args.budget}")
    records = iter_trace(args.program, config_from_args(args), kinds=kinds, space=args.space,
                         va_range=va_range, budget=args.budget)
    out = sys.stdout
    if args.jsonl:
        for r in records:
            out.write(json.dumps(r.as_dict(hex_addresses=True)) + "\n")
    else:
        header = False
        for r in records:
            if not header:
                out.write(HEADER + "\n")
                header = True
            out.write(format_record(r) + "\n")
    return 0


def add_commands(sub) -> None:
    t = sub.add_parser(
        "trace", help="trace every memory access of a user program",
        description="Assemble PROGRAM.S (Intel syntax, entry _start), run it as process A on the default "
                    "machine and print one record per memory access, kernel code included: sequence "
                    "number, CPL, address space, PCID, kind (r/w/x; x = one record per basic block "
                    "fetched), virtual address, size, physical address or fault, RIP and symbol. Accesses "
                    "crossing a page are split in two; the exception frame written by delivery counts "
                    "as writes of the faulting instruction.")
    t.add_argument("program", metavar="PROGRAM.S", help="user program (Intel syntax, entry _start)")
    t.add_argument("--space", metavar="NAME",
                   help="only accesses through this address space's page tables (e.g. A.user, A.kernel, "
                        "A.asi; see 'isoemu spaces')")
    t.add_argument("--kind", metavar="r|w|x",
                   help="only these access kinds: r (read), w (write), x (instruction fetch) or a "
                        "combination such as rw")
    t.add_argument("--range", metavar="LO-HI",
                   help="only accesses overlapping the virtual range [LO, HI), e.g. 0x600000-0x601000")
    t.add_argument("--jsonl", action="store_true",
                   help="one JSON object per line: seq, rip, symbol, cpl, cr3, pcid, space, kind, va, size, "
                        "pa, fault (addresses as 0x strings)")
    t.add_argument("--budget", type=int, default=10_000_000, metavar="N",
                   help="stop with an error after N instructions (default 10M; guards against runaway "
                        "programs)")
    from emu.cli.common import add_machine_args

    add_machine_args(t.add_argument_group("machine"))
    t.set_defaults(func=cmd_trace)
