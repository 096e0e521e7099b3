"""``isoemu bench``: speed figures beside raw-Unicorn baselines, and their targets."""

from __future__ import annotations

from emu.cli.common import add_json_args, print_json


def target_words(fig: dict) -> str:
    """``target >= 1e5, ratio <= 2: missed``."""
    if not fig.get("target"):
        return ""
    return f"   target {fig['target']}: {'met' if fig['met'] else 'missed'}"


def cmd_bench(args) -> int:
    from emu.dev.bench import run_bench

    report = run_bench(quick=args.quick, only=args.only)
    if args.json:
        print_json(report, args)
        return 0
    for fig in report["figures"]:
        base = ""
        if fig.get("baseline") is not None:
            base = f"   baseline {fig['baseline']:.4g} ({fig['baseline_name']}), ratio {fig['ratio']:.3g}"
        print(f"{fig['name']:<34} {fig['value']:>12.4g} {fig['unit']:<10}{base}{target_words(fig)}")
    s = report["summary"]
    print(f"{s['met']} of {s['with_target']} targets met")
    return 0


def add_commands(sub) -> None:
    b = sub.add_parser("bench", help="measure speed against a raw-Unicorn baseline",
                       description="Measure speed; each figure beside a raw-Unicorn baseline measured in the "
                                   "same run (ratio: the slowdown) and its target, met or missed. Exit "
                                   "status 0 whether or not targets are met: compare ratios across runs.")
    add_json_args(b, "print JSON: machine, quick, figures (each with targets: [{of, op, value, met}] and met), "
                     "summary")
    b.add_argument("--quick", action="store_true", help="smaller workloads (for smoke tests)")
    b.add_argument("--only", action="append", metavar="NAME", help="run only the benchmark groups whose name contains NAME (page tables, microcode, machine, tlb, trace, images, frag, startup, secret); repeatable")
    b.set_defaults(func=cmd_bench)
