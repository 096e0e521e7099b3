"""``isoemu matrix``, ``isoemu stats`` and ``isoemu run``: the machine's commands."""

from __future__ import annotations

import json
import os
import sys

from emu.errors import ConfigError


def _machine_args(p) -> None:
    from emu.cli.common import add_machine_args

    add_machine_args(p.add_argument_group("machine"))


def cmd_matrix(args) -> int:
    from emu.tools.matrix import render, run_matrix
    from emu.tools.spaces import config_from_args

    result = run_matrix(config_from_args(args))
    if args.json:
        print(json.dumps(result.as_dict(), indent=2 if args.pretty else None))
    else:
        color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty()
                                           and not os.environ.get("NO_COLOR"))
        print(render(result, color=color))
    return 1 if result.mismatches else 0


def cmd_stats(args) -> int:
    from emu.tools.matrix import MatrixMachine
    from emu.tools.spaces import config_from_args

    mm = MatrixMachine(config_from_args(args))
    boot = mm.m.stats()
    mm.pause_at_yield()
    live = mm.m.stats()
    mm.finish()
    released = mm.m.stats()
    phases = {"boot": boot, "secret_mapped": live, "secret_released": released}
    if args.json:
        print(json.dumps(phases, indent=2))
        return 0
    names = list(boot)
    print(f"{'counter':<26} {'boot':>12} {'secret mapped':>14} {'released':>12}")
    for n in names:
        unit = " kB" if n.startswith("DirectMap") else ""
        print(f"{n:<26} {boot[n]:>9}{unit:3} {live[n]:>11}{unit:3} {released[n]:>9}{unit:3}")
    return 0


def cmd_run(args) -> int:
    from emu.linux.machine import Machine
    from emu.tools.spaces import config_from_args

    try:
        with open(args.program) as f:
            src = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {args.program}: {e.strerror}") from None
    m = Machine(config_from_args(args), record_events=args.events)
    name = os.path.splitext(os.path.basename(args.program))[0]
    proc_name = "".join(c if c.isalnum() else "_" for c in name) or "P"
    p = m.add_process(proc_name, src, filename=args.program)
    m.run(budget=args.budget)
    if args.events:
        for ev in m.events:
            print(ev)
    sys.stdout.write(bytes(m.output[p.pid]).decode(errors="replace"))
    info = m.exits.get(p.pid, {})
    if info.get("signal"):
        print(f"isoemu: {args.program}: killed by {info['signal']}", file=sys.stderr)
    return int(info.get("status", 0)) & 0xFF


def add_commands(sub) -> None:
    p = sub.add_parser("matrix", help="probe every region in every address space (the main job)",
                       description="Boot the default machine (PTI, PCID, ASI, SMEP, SMAP; processes A "
                                   "and B; one secret page owned by A) and probe standard regions in "
                                   "A.user, A.kernel, A.asi and B.user. Exit 1 on any mismatch "
                                   "with Linux's expected behaviour.")
    p.add_argument("--json", action="store_true", help="print {config, spaces, regions, cells, summary}")
    p.add_argument("--pretty", action="store_true", help="indent the JSON")
    p.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    _machine_args(p)
    p.set_defaults(func=cmd_matrix)

    s = sub.add_parser("stats", help="direct-map and isolation counters (Linux's names)",
                       description="DirectMap4k/2M/1G (kB), direct_map_level2/3_splits, secret pages "
                                   "and ASI exits of the default machine: after boot, with A's secret "
                                   "page mapped, and after its release.")
    s.add_argument("--json", action="store_true")
    _machine_args(s)
    s.set_defaults(func=cmd_stats)

    r = sub.add_parser("run", help="run a user program on the default machine",
                       description="Assemble PROGRAM.S (Intel syntax, entry _start), run it as a process "
                                   "and print what it wrote; the exit status is the program's.")
    r.add_argument("program", metavar="PROGRAM.S")
    r.add_argument("--budget", type=int, default=10_000_000, help="instruction budget (default 10M)")
    r.add_argument("--events", action="store_true", help="print every event (CR3 writes, faults...)")
    _machine_args(r)
    r.set_defaults(func=cmd_run)
