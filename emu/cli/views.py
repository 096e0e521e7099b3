"""``isoemu diff``, ``isoemu whereis`` and ``isoemu report``: views of the
address spaces (docs/views.md)."""

from __future__ import annotations

import argparse

from emu.cli.common import (NUMBERS, add_image_args, add_json_args, add_machine_args, check_space_args,
                            config_from_args, print_json, print_notes, write_text)
from emu.errors import ConfigError
from emu.parse import parse_address, parse_hex


def _image_group(p, many_roots: bool) -> None:
    g = p.add_argument_group("a memory image instead of the built-in machine (docs/images.md)")
    g.add_argument("--image", metavar="FILE",
                   help="a QEMU pmemsave raw image, an ELF core (dump-guest-memory, virsh dump, kdump vmcore) or "
                        "'isoemu image extract' output; --la57 applies")
    if many_roots:
        add_image_args(g, many_roots=True,
                       cr3_help="a page-table root in the image, hexadecimal (repeatable: every root is a space); "
                                "default: the image's roots (its notes or --regs)")
    else:
        add_image_args(g, cr3_help=argparse.SUPPRESS)
        g.set_defaults(cr3=None)
    add_machine_args(p.add_argument_group("machine"))


def _check(args) -> None:
    """The image/machine options, as every --image command checks them."""
    cr3 = getattr(args, "cr3", None)
    args.cr3 = None
    try:
        check_space_args(args)
    finally:
        args.cr3 = cr3
    if cr3 and not args.image:
        raise ConfigError("--cr3 needs --image FILE (the built-in machine's spaces have names: 'isoemu spaces')")
    if not args.image:
        config_from_args(args)


def _image_spaces(args, roots: list[int] | None):
    from emu.tools.image import open_image
    from emu.tools.spaces import Space, image_options

    opts = image_options(args)
    opts["cr3"] = roots or opts["cr3"]
    setup = open_image(args.image, **opts)
    print_notes(setup.notes_for("mode", "maxphyaddr"))
    return [Space(f"{r:#x}", setup.mem, r, setup.ctl, setup.mem.description, setup.symbols, setup.layout, setup)
            for r in dict.fromkeys(setup.roots)]


def _machine_spaces(args):
    from emu.tools.spaces import builtin_spaces

    return list(builtin_spaces(args).values())


def _pick(spaces, name: str, image: bool):
    if image:
        root = parse_hex(name, "space (a CR3 value in an image)") & ~0xFFF
        for s in spaces:
            if s.cr3 == root:
                return s
        raise AssertionError(root)
    for s in spaces:
        if s.name == name:
            return s
    raise ConfigError(f"unknown space {name!r}: choose from {', '.join(s.name for s in spaces)}")


def cmd_diff(args) -> int:
    from emu.tools.addrmap import build_maps, diff_spaces, render_diff

    if args.cr3:
        raise ConfigError("--cr3: not with diff (the spaces are A and B: CR3 values with --image)")
    _check(args)
    if args.image:
        roots = [parse_hex(x, "space (a CR3 value in an image)") for x in (args.a, args.b)]
        spaces = _image_spaces(args, roots)
    else:
        spaces = _machine_spaces(args)
    sa, sb = _pick(spaces, args.a, bool(args.image)), _pick(spaces, args.b, bool(args.image))
    maps, frames = build_maps([sa, sb] if sa is not sb else [sa])
    d = diff_spaces(maps[sa.name], maps[sb.name], frames)
    print_notes(d.a.problems + (d.b.problems if d.b is not d.a else []))
    if args.json:
        print_json(d.as_dict(), args)
    else:
        print("\n".join(render_diff(d)))
    return 1 if d.ranges else 0


def cmd_whereis(args) -> int:
    from emu.tools.addrmap import ReverseMap, build_maps, render_whereis, whereis_dict

    _check(args)
    if args.image:
        if args.space:
            raise ConfigError("--space: not with --image (an image's spaces are its roots: --cr3)")
        spaces = _image_spaces(args, None)
    else:
        spaces = _machine_spaces(args)
    notes: list[str] = []
    if args.va is not None:
        if args.pa is not None:
            raise ConfigError("give PA or --va VA, not both")
        space = _pick(spaces, args.space or "A.kernel", False) if not args.image else spaces[0]
        va = parse_address(args.va, "virtual address", space.symbols, notes)
        t = space.translate(va, 0, 0, space.ctl.replace(smap=False))     # the frame, whoever may read it
        if t.fault:
            raise ConfigError(f"--va {va:#x} is not mapped in {space.name}: {t.describe()}")
        pa = t.pa
    elif args.pa is None:
        raise ConfigError("whereis: PA (or --va VA) is required")
    else:
        if args.space:
            raise ConfigError("--space names the space of --va; a PA is looked up in every space")
        pa = parse_address(args.pa, "physical address")
    print_notes(notes)
    maps, frames = build_maps(spaces)
    rmap = ReverseMap(list(maps.values()), frames)
    hits = rmap.whereis(pa)
    if args.json:
        print_json(whereis_dict(rmap, pa, hits), args)
    else:
        print("\n".join(render_whereis(rmap, pa, hits)))
    return 0


DEFAULT_PAIRS = ("A.user,A.kernel", "A.kernel,A.asi")


def cmd_report(args) -> int:
    """``isoemu report -o FILE``: the self-contained HTML page."""
    import sys

    from emu.tools.addrmap import build_maps, diff_spaces
    from emu.tools.report import report_html

    if not args.output:
        raise ConfigError("report needs -o FILE (the HTML page to write)")
    _check(args)
    if args.image:
        spaces = _image_spaces(args, None)
        matrix, config = None, f"image {args.image}"
    else:
        from emu.tools.matrix import run_matrix

        spaces = _machine_spaces(args)
        matrix = run_matrix(config_from_args(args))
        config = "machine: " + matrix.config.describe()
    by_name = {s.name: s for s in spaces}
    pairs = _report_pairs(args, by_name)
    maps, frames = build_maps(spaces)
    diffs = [diff_spaces(maps[a], maps[b], frames) for a, b in pairs]
    walks = _cell_walks(matrix, by_name) if matrix is not None else {}
    extra = [_frag_section(args.frag)] if args.frag else []
    html = report_html(title="isoemu report", config=config, maps=maps,
                       descriptions={s.name: s.description for s in spaces}, diffs=diffs, matrix=matrix,
                       walks=walks, extra_sections=extra)
    write_text(args.output, html)
    print(f"wrote {args.output}: {len(maps)} spaces, {len(diffs)} diffs"
          + (f", {len(matrix.cells)} matrix cells ({len(matrix.mismatches)} mismatches)" if matrix else "")
          + (", fragmentation" if extra else ""), file=sys.stderr)
    return 1 if matrix is not None and matrix.failed else 0


def _report_pairs(args, by_name) -> list[tuple[str, str]]:
    if args.diff:
        words = [w for d in args.diff for w in d.split(";")]
    elif args.image:
        roots = list(by_name)
        return [(roots[0], roots[1])] if len(roots) > 1 else []
    else:
        words = [p for p in DEFAULT_PAIRS if all(n in by_name for n in p.split(","))]
    pairs = []
    for w in words:
        names = w.split(",")
        if len(names) != 2:
            raise ConfigError(f"--diff {w!r}: expected two spaces, A,B")
        if args.image:
            names = [f"{parse_hex(n, 'space (a CR3 value in an image)') & ~0xFFF:#x}" for n in names]
        for n in names:
            if n not in by_name:
                raise ConfigError(f"--diff: unknown space {n!r}; choose from {', '.join(by_name)}")
        pairs.append((names[0], names[1]))
    return pairs


def _cell_walks(matrix, by_name) -> dict:
    """Each cell's page walk in its space, at the moment the matrix's
    inspection commands show (A's secret live); the rows probed after the
    secret's release are walked then by the matrix, not here."""
    from emu.cli.render import walk_text
    from emu.hw.paging import parse_access

    walks = {}
    for c in matrix.cells:
        sp = by_name.get(c.space)
        if sp is None:
            continue
        key = (c.region, c.access, c.space)
        if c.region.endswith("_released"):
            walks[key] = ("probed after A's munmap and close: the walk at A's yield would show the page "
                          "still mapped; see 'isoemu stats' and the matrix's row")
            continue
        access = parse_access(c.access)
        res = sp.translate(c.va, access, c.cpl)
        walks[key] = "\n".join(walk_text(res, c.va, access, c.cpl, sp.name, sp.cr3, sp.ctl.levels, ctl=sp.ctl))
    return walks


def _frag_section(preset_name: str) -> tuple[str, str]:
    import base64
    from html import escape

    from emu.tools.frag import DEFAULT_RAM, preset, run_all
    from emu.tools.frag.report import describe, plot_bytes, table

    steps = preset(preset_name)
    runs = run_all(steps)
    about = describe(preset_name, steps, DEFAULT_RAM, 0, False)
    png = base64.b64encode(plot_bytes(runs, about, "png")).decode("ascii")   # a PNG: thousands of steps make a large SVG
    return (f"Direct-map fragmentation: {preset_name}",
            f'<pre>{escape(table(runs, about))}</pre><img class="frag-plot" alt="isoemu frag --preset '
            f'{preset_name} --plot" style="max-width:100%" src="data:image/png;base64,{png}">')


def add_commands(sub) -> None:
    d = sub.add_parser(
        "diff", help="what one address space maps that another does not, or maps otherwise",
        description="Every virtual range that space A maps and B does not (or B and not A), or that both map "
                    "with other effective permissions (U/S, R/W, XD) or to other frames; ranges coalesced, "
                    "then split where the frames change kind, owner or sensitivity. Exit status 0 when the "
                    "spaces map the same, 1 when they differ, 2 for bad input.",
        epilog=NUMBERS)
    d.add_argument("a", metavar="A", help="a space of the built-in machine ('isoemu spaces'), or with --image "
                                          "a CR3 value (hexadecimal)")
    d.add_argument("b", metavar="B", help="the other space")
    add_json_args(d, "print JSON: a, b {name, cr3}, ranges [{start, end, size, diff, a, b}] (a side: pa, "
                     "page_size, user, writable, executable, global, frame {kind, owner, sensitivity}), summary")
    _image_group(d, many_roots=False)
    d.set_defaults(func=cmd_diff)

    w = sub.add_parser(
        "whereis", help="every virtual address of every space that maps a physical address",
        description="Every virtual address, in every address space, that maps the physical address PA: "
                    "permissions and page size (aliases at a glance); a non-present entry that still holds the "
                    "frame's PFN inverted (a page taken out of the direct map, L1TF) is listed as removed.",
        epilog=NUMBERS)
    w.add_argument("pa", metavar="PA", nargs="?", help="physical address, hexadecimal (43000 is 0x43000)")
    w.add_argument("--va", metavar="VA", help="instead of PA: the frame that VA maps in --space (default "
                                              "A.kernel; on an image its first root); a name or expression as "
                                              "'isoemu walk' takes")
    w.add_argument("--space", metavar="NAME", help="the space of --va")
    add_json_args(w, "print JSON: pa, frame {start, size, kind, owner, sensitivity}, mappings [{space, va, "
                     "page_size, present, user, writable, executable, global}], summary")
    _image_group(w, many_roots=True)
    w.set_defaults(func=cmd_whereis)

    r = sub.add_parser(
        "report", help="one self-contained HTML page: VA maps, diffs, the fault matrix, findings",
        description="Write one self-contained HTML page (no network): a map of each address space's VA space, "
                    "the diffs between chosen pairs of spaces, the fault matrix as a grid whose cells open the "
                    "page walk behind them, the TLB and ASI findings, and (--frag) the fragmentation plots. "
                    "Exit status 1 when the matrix has a mismatch or a finding (docs/views.md).",
        epilog=NUMBERS)
    r.add_argument("-o", "--output", metavar="FILE", help="the HTML file to write (required)")
    r.add_argument("--diff", action="append", metavar="A,B",
                   help="a pair of spaces to diff (repeatable; default: A.user,A.kernel and A.kernel,A.asi; "
                        "with --image the first two roots)")
    from emu.tools.frag.workload import PRESETS

    r.add_argument("--frag", metavar="PRESET", choices=list(PRESETS),
                   help="add the fragmentation experiment on this preset (keys, guest, churn: 'isoemu frag')")
    _image_group(r, many_roots=True)
    r.set_defaults(func=cmd_report)
