"""``isoemu bench``: speed figures beside raw-Unicorn baselines."""

from __future__ import annotations

import json


def cmd_bench(args) -> int:
    from emu.dev.bench import run_bench

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


def add_commands(sub) -> None:
    b = sub.add_parser("bench", help="measure speed against a raw-Unicorn baseline")
    b.add_argument("--json", action="store_true", help="print JSON")
    b.add_argument("--quick", action="store_true", help="smaller workloads (for smoke tests)")
    b.add_argument("--only", action="append", metavar="NAME", help="run only the benchmark groups whose name contains NAME (page tables, microcode, machine, trace); repeatable")
    b.set_defaults(func=cmd_bench)
