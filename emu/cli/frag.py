"""``isoemu frag``: direct-map fragmentation as an experiment (docs/frag.md)."""

from __future__ import annotations

from emu.cli.common import add_json_args, parse_ram, print_json, read_source
from emu.errors import ConfigError
from emu.parse import parse_count, parse_size


def cmd_frag(args) -> int:
    from emu.tools.frag import DEFAULT_RAM, STRATEGIES, parse_workload, preset, run_all
    from emu.tools.frag.report import describe, plot, step_table, table, to_json

    if args.workload and args.preset:
        raise ConfigError("frag: give --preset or --workload, not both")
    if args.stub:
        return stub_check(args, STRATEGIES)
    ram = parse_ram(args.ram) if args.ram else DEFAULT_RAM
    pool = parse_size(args.pool, "--pool", lo=2 << 20, hi=ram) if args.pool else 0
    if args.workload:
        steps = parse_workload(read_source(args.workload), args.workload)
        name = args.workload
    else:
        name = args.preset or "keys"
        steps = preset(name, seed=parse_count(args.seed, "--seed", lo=0),
                       allocations=parse_count(args.allocations, "--allocations"))
    strategies = []
    for s in args.strategy or list(STRATEGIES):
        for word in s.split(","):
            if word not in STRATEGIES:
                raise ConfigError(f"frag: unknown strategy {word!r}; strategies: {', '.join(STRATEGIES)}")
            strategies.append(word)
    runs = run_all(steps, strategies, ram=ram, collapse=args.collapse, pool=pool,
                   check="full" if args.check else "step")
    texts = [st.text() for st in steps]
    about = describe(name, steps, ram, pool, args.collapse)
    if args.plot:
        plot(runs, about, args.plot)
    if args.json:
        print_json(to_json(runs, about, texts), args)
        return 0
    print(table(runs, about))
    if args.steps:
        for r in runs:
            print()
            print(step_table(r, texts))
    return 0


def stub_check(args, strategies) -> int:
    """--stub: the secret-page workload in the kernel stub and in the model, compared (docs/frag.md)."""
    from emu.tools.frag.crosscheck import cross_check, table, to_json

    for opt in ("preset", "workload", "plot", "pool"):
        if getattr(args, opt):
            raise ConfigError(f"frag --stub: --{opt} does not apply (the workload is --processes x --pages; "
                              f"the pool is 16M)")
    if args.steps or args.check:
        raise ConfigError("frag --stub: --steps and --check do not apply (every step is compared, every "
                          "invariant checked)")
    names = [w for s in (args.strategy or list(strategies)) for w in s.split(",")]
    for word in names:
        if word not in strategies:
            raise ConfigError(f"frag: unknown strategy {word!r}; strategies: {', '.join(strategies)}")
    ram = parse_ram(args.ram) if args.ram else 256 << 20
    checks = [cross_check(n, args.collapse, parse_count(args.processes, "--processes"),
                          parse_count(args.pages, "--pages"), late=parse_count(args.late, "--late", lo=0),
                          ram=ram) for n in names]
    bad = [f"{c.strategy}: {m}" for c in checks for m in c.mismatches()]
    if args.json:
        print_json(to_json(checks), args)
    else:
        c = checks[0]
        print(f"stub against model: {c.processes} processes x {c.pages} secret pages ({c.late} late), ram "
              f"{ram >> 20}M, collapse {'on' if args.collapse else 'off'}")
        print(table(checks))
        for line in bad:
            print(line)
    return 1 if bad else 0


def add_commands(sub) -> None:
    from emu.tools.frag import PRESETS, STRATEGIES

    p = sub.add_parser("frag", help="direct-map fragmentation: workloads against the unmapped-memory strategies",
                       description="Run a workload against a model of the direct map (the page-table object and "
                                   "the TLB model) under each strategy for memory taken out of it, and print "
                                   "DirectMap4k/2M/1G, splits, collapses, TLB flushes, reach, stranded and "
                                   "unmovable memory and failures (docs/frag.md).")
    g = p.add_argument_group("workload")
    g.add_argument("--preset", choices=list(PRESETS), help="a built-in workload: " + "; ".join(
        f"{k}: {v}" for k, v in PRESETS.items()) + " (default: keys)")
    g.add_argument("--workload", metavar="FILE", help="a workload file (docs/frag.md: kernel|alloc ID SIZE "
                                                      "[owner=NAME] [life=STEPS], free ID, exit OWNER)")
    g.add_argument("--seed", default="1", help="the churn preset's random seed (default 1)")
    g.add_argument("--allocations", default="10000", help="the churn preset's unmapped allocations "
                                                          "(default 10000)")
    p.add_argument("--strategy", action="append", metavar="NAME",
                   help=f"only these strategies (repeatable or comma-separated): {', '.join(STRATEGIES)}")
    p.add_argument("--collapse", action="store_true",
                   help="collapse a table back into a large page when its block is whole again (41d88484c71c)")
    p.add_argument("--ram", help="RAM of the model (default 4G)")
    p.add_argument("--pool", help="the reserved strategy's pool (default 512M)")
    p.add_argument("--steps", action="store_true", help="also print every step's figures, per strategy")
    g = p.add_argument_group("the stub against the model")
    g.add_argument("--stub", action="store_true",
                   help="run a secret-page workload in the kernel stub (unmapped=STRATEGY) and in the model on the "
                        "same frames, and compare DirectMap4k/2M/1G, splits, collapses and the TLB flushes step by "
                        "step; exit status 1 on a difference")
    g.add_argument("--processes", default="3", help="--stub: processes, each with one memfd_secret file (default 3)")
    g.add_argument("--pages", default="2", help="--stub: secret pages a process touches (default 2)")
    g.add_argument("--late", default="0", help="--stub: of the processes, how many allocate only after the others "
                                               "have exited, reusing what they freed (default 0)")
    p.add_argument("--check", action="store_true",
                   help="check every invariant after every step (slower): counters against the tables")
    p.add_argument("--plot", metavar="FILE", help="plot the figures over the workload, strategies side by side "
                                                  "(FILE.png or FILE.svg)")
    add_json_args(p, "print JSON: workload, figures, step_names, strategies: {NAME: {total, peak, steps}}")
    p.set_defaults(func=cmd_frag)
