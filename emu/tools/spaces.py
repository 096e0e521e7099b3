"""Named address spaces for the CLI: the built-in layout or a memory image.

A :class:`Space` is what ``walk``, ``ptdump`` and ``check`` need: physical
memory, a page-table root, the control state the CPU would use, the
virtual-address layout (ptdump's section markers), and a symbol table for
addresses given by name (the machine's, or a kernel's with ``--kallsyms``).
An image's space carries its :class:`~emu.tools.image.ImageSetup`: where
each fact came from, and the notes saying what was detected or assumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from emu.errors import ConfigError
from emu.hw.paging import ControlState, translate
from emu.hw.phys import DEFAULT_RAM, PhysView
from emu.linux.layout import Layout, layout_for
from emu.parse import parse_hex, parse_size


@dataclass
class Space:
    name: str
    mem: PhysView
    cr3: int
    ctl: ControlState
    description: str = ""
    symbols: Callable[[str], int | None] | None = field(default=None, repr=False)
    layout: Layout | None = None
    setup: object = field(default=None, repr=False)     # an image's ImageSetup

    def __post_init__(self):
        if self.layout is None:
            self.layout = layout_for(self.ctl.levels)

    def translate(self, va: int, access=0, cpl: int = 0, ctl: ControlState | None = None):
        ctl = ctl or self.ctl
        if self.setup is not None:
            from emu.tools.detect import image_translate
            return image_translate(self.mem, self.cr3, va, ctl, access, cpl)
        return translate(self.mem, self.cr3, va, access, cpl, ctl)


def image_options(args) -> dict:
    """The image options of a command line, read and checked: --cr3 values
    (hexadecimal, emu.parse.parse_hex), --layout and --layout-file merged."""
    from emu.linux.layout import parse_layout_assignments, read_layout_file
    from emu.parse import parse_int

    cr3 = getattr(args, "cr3", None) or []
    if isinstance(cr3, str):
        cr3 = [cr3]
    layout: dict = {}
    if getattr(args, "layout_file", None):
        layout.update(read_layout_file(args.layout_file))
    layout.update(parse_layout_assignments(getattr(args, "layout", None) or []))
    maxphy = getattr(args, "maxphyaddr", None)
    return {
        "cr3": [parse_hex(c, "--cr3 value") for c in cr3] or None,
        "regs": getattr(args, "regs", None),
        "la57": True if getattr(args, "la57", False) else None,
        "maxphyaddr": None if maxphy is None else parse_int(maxphy, "--maxphyaddr", lo=32, hi=52),
        "layout": layout,
        "kallsyms": getattr(args, "kallsyms", None),
        "system_map": getattr(args, "system_map", None),
    }


def image_space(args) -> Space:
    from emu.tools.image import open_image

    opts = image_options(args)
    if opts["cr3"] and len(opts["cr3"]) > 1:
        raise ConfigError("--cr3 given more than once: this command walks one root")
    setup = open_image(args.image, **opts)
    return Space(f"image:{args.image}", setup.mem, setup.root, setup.ctl, setup.mem.description,
                 setup.symbols, setup.layout, setup)


def config_from_args(args):
    """The machine switches common to every command that boots a machine."""
    from emu.linux.config import MachineConfig

    cfg = getattr(args, "machine_config", None)
    if cfg is not None:         # made by the CLI from --set and the flags (emu.cli.common.config_from_args)
        return cfg
    ram = parse_size(args.ram) if getattr(args, "ram", None) else DEFAULT_RAM
    off = {k: "off" for k in ("pti", "pcid", "asi") if getattr(args, f"no_{k}", False)}
    # the switches left alone keep MachineConfig's defaults (pti=auto among them)
    return MachineConfig(ram=ram, la57=bool(getattr(args, "la57", False))).with_switches(off)


_machines: dict = {}


def builtin_spaces(args) -> dict[str, Space]:
    """The default machine's spaces, paused with A's secret page live."""
    from emu.tools.matrix import default_machine

    cfg = config_from_args(args)
    key = repr(cfg)
    m = _machines.get(key)
    if m is None:
        m = _machines[key] = default_machine(cfg)
    ctl = ControlState(wp=True, smep=cfg.smep, smap=cfg.smap, pke=cfg.pke, la57=cfg.la57, nxe=cfg.nx)
    procs = {p.name: p for p in m.processes}
    from emu.linux.program import user_symbols
    layout_names = user_symbols(m.layout)        # USER_DATA, DIRECT_MAP_BASE, ... as programs see them

    def symbols(name: str) -> int | None:
        v = m.kernel.image.symbols.get(name)
        if v is not None:
            return v
        for p in procs.values():
            if name.startswith(p.name + ":"):
                return p.image.symbols.get(name.split(":", 1)[1])
        return layout_names.get(name)

    descriptions = {"kernel": "swapper_pg_dir: the kernel page table of init_mm",
                    "kernel.user": "init_mm's PTI user page table",
                    "asi.global": "ASI's global non-sensitive page table"}
    if cfg.pti:
        user = ""
    elif cfg.asi == "rfc2025":
        user = " (no PTI: asi=rfc2025 runs user code on the restricted table)"
    else:
        user = " (no PTI: its only table)"
    out = {}
    for name, root in m.spaces().items():
        proc, _, kind = name.partition(".")
        desc = descriptions.get(name) or {
            "user": f"process {proc}'s user page table" + user,
            "kernel": f"process {proc}'s kernel page table",
            "asi": f"process {proc}'s ASI restricted page table"
                   + (" (the 2019 RFC's KVM class)" if cfg.asi == "rfc2019" else "")}.get(kind, "")
        out[name] = Space(name, m.mem, root, ctl, desc, symbols)
    return out


DEFAULT_SPACE = "A.kernel"


def resolve_space(args) -> Space:
    if getattr(args, "image", None):
        return image_space(args)
    spaces = builtin_spaces(args)
    name = getattr(args, "space", None) or DEFAULT_SPACE
    if name not in spaces:
        raise ConfigError(f"unknown space {name!r}: choose from {', '.join(sorted(spaces))}")
    return spaces[name]


def list_spaces(args) -> list[Space]:
    if getattr(args, "image", None):
        return [image_space(args)]
    return list(builtin_spaces(args).values())
