"""``isoemu image``: what a memory image holds, and a small copy of its page tables.

``info``     the format, the memory present, the registers, the paging mode,
             MAXPHYADDR and every base of the layout, each with its source
``layout``   the layout as a file ``--layout-file`` reads back
``extract``  the page-table pages reachable from the roots, as a small ELF
             core every ``--image`` command reads (docs/images.md)
"""

from __future__ import annotations

import sys

from emu.cli.common import NUMBERS, add_image_args, add_json_args, print_json, print_notes
from emu.errors import ConfigError


def _setup(args):
    from emu.tools.image import open_image
    from emu.tools.spaces import image_options

    return open_image(args.image, **image_options(args))


def cmd_info(args) -> int:
    from emu.tools.image import describe

    setup = _setup(args)
    doc = describe(setup)
    if args.json:
        print_json(doc, args)
        return 0
    src = doc["sources"]
    mem = doc["memory"]
    if len(mem) <= 6:
        ranges = ", ".join(f"{m['start']}-{m['end']}" for m in mem)
    else:
        size = sum(int(m["end"], 16) - int(m["start"], 16) for m in mem)
        ranges = f"{len(mem)} ranges, {size >> 10} KiB, from {mem[0]['start']} to {mem[-1]['end']}"
    out = [f"image     {doc['image']}: {doc['format']}",
           f"memory    {ranges}",
           "notes     " + (", ".join(doc["notes"]) or "none"),
           f"roots     {', '.join(doc['roots'])}  ({src['cr3']})"]
    if doc["registers"]:
        out.append("registers " + " ".join(f"{k.upper()}={v}" for k, v in doc["registers"].items())
                   + f"  ({src['control']})")
    c = doc["control"]
    words = " ".join(n.upper() if c[n] else n for n in ("wp", "smep", "smap", "nxe", "pke"))
    out.append(f"control   {words}  ({src['control']})")
    out.append(f"paging    {5 if c['la57'] else 4}-level  ({src['la57']})")
    out.append(f"maxphyaddr {c['maxphyaddr']}  ({src['maxphyaddr']})")
    if doc["symbols"]:
        s = doc["symbols"]
        slide = f", slide {s['slide']} ({s['slide_source']})" if s["kind"] == "System.map" else ""
        out.append(f"symbols   {s['count']} from {s['kind']} {s['file']}{slide}")
    out.append("layout")
    for key, v in doc["layout"].items():
        out.append(f"  {key:<19} {v or 'none':<20} {src['layout.' + key]}")
    print("\n".join(out))
    return 0


def cmd_layout(args) -> int:
    from emu.linux.layout import format_layout

    setup = _setup(args)
    print(f"# layout of {args.image} ({setup.ctl.levels}-level); 'isoemu ... --layout-file' reads it back")
    sources = {k[len("layout."):]: v for k, v in setup.sources.items() if k.startswith("layout.")}
    for line in format_layout(setup.layout, sources):
        print(line)
    return 0


def cmd_extract(args) -> int:
    from emu.tools.image import extract

    if not args.output:
        raise ConfigError("image extract needs -o OUT (the file to write)")
    setup = _setup(args)
    summary = extract(setup, args.output)
    if args.json:
        print_json(summary, args)
    else:
        print_notes([f"{p} (not kept)" for p in summary["problems"]])
        print(f"{summary['output']}: {summary['tables']} page-table pages"
              + (f" and {summary['pages'] - summary['tables']} pages of kernel variables"
                 if summary["pages"] > summary["tables"] else "")
              + f" reachable from {', '.join(summary['roots'])}, {summary['bytes']} bytes", file=sys.stderr)
    return 1 if summary["problems"] else 0


def add_commands(sub) -> None:
    img = sub.add_parser("image", help="a memory image: what it holds (info, layout), and extract its tables",
                         description="Memory images and core dumps of real machines: QEMU pmemsave raw "
                                     "images, ELF cores (dump-guest-memory, virsh dump, kdump vmcore) and "
                                     "'image extract' output. Every --image command (walk, ptdump, check) "
                                     "takes the same options.",
                         epilog=NUMBERS)
    isub = img.add_subparsers(dest="image_command", metavar="SUBCOMMAND")
    for name, func, help_, desc in (
        ("info", cmd_info, "the image, its registers, paging mode and layout, each with its source",
         "Print the image's format, the memory it holds, its notes, the page-table root, the control "
         "registers, the paging mode, MAXPHYADDR and every base of the kernel's layout, each with where "
         "it came from: given, the image's notes, the kernel's variables (--kallsyms), detected from the "
         "tables, or assumed."),
        ("layout", cmd_layout, "the layout as a file --layout-file reads back",
         "Print the kernel's layout as 'KEY = VALUE  # source' lines: edit it and give it back with "
         "--layout-file."),
        ("extract", cmd_extract, "keep only the page tables: a small file for a bug report",
         "Write the page-table pages reachable from the roots (every --cr3, or the root from --regs or "
         "the image's notes) as an ELF core that every --image command reads: a file of a few hundred "
         "KiB instead of all RAM. It also keeps, with --kallsyms/--system-map, the pages holding "
         "page_offset_base, vmalloc_base and vmemmap_base, and a note with the roots, the registers "
         "and the layout facts given or read from the kernel. No other memory (no user or kernel "
         "data) is kept. Exit status 1 if a table could not be followed."),
    ):
        p = isub.add_parser(name, help=help_, description=desc, epilog=NUMBERS)
        p.add_argument("image", metavar="IMAGE", help="the memory image or core dump")
        g = p.add_argument_group("reading the image")
        if name == "extract":
            p.add_argument("-o", "--output", metavar="OUT", help="the file to write")
            add_image_args(g, many_roots=True,
                           cr3_help="a page-table root to keep, hexadecimal (repeatable: the kernel's and "
                                    "the PTI user table, 0x1000 above it); default: from --regs or the "
                                    "image's notes")
        else:
            add_image_args(g, many_roots=True, cr3_help="the page-table root, hexadecimal; default: from "
                                                        "--regs or the image's notes")
        g.add_argument("--la57", action="store_true", help="5-level paging (default: the registers, else "
                                                           "detected from the tables)")
        add_json_args(p)
        p.set_defaults(func=func)
    img.set_defaults(func=lambda args: _no_subcommand(img))


def _no_subcommand(parser) -> int:
    parser.print_help(sys.stderr)
    return 2
