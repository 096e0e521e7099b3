"""Named address spaces for the CLI: the built-in layout or a memory image.

A :class:`Space` is what ``walk``, ``ptdump`` and ``check`` need: physical
memory, a page-table root, the control state the CPU would use, and (on a
machine) a symbol table for addresses given by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from emu.errors import AddressError, ConfigError, ImageError
from emu.hw.paging import ADDR_MASK, ControlState, translate
from emu.hw.phys import DEFAULT_RAM, PAGE_SIZE, ImageMem, PhysView, parse_size


_SYMBOL = re.compile(r"^[A-Za-z_.$][\w.$:]*(\+\w+)?$")


def parse_address(text: str, what: str = "address") -> int:
    """``0xffffffff81000000``, ``ffffffff81000000``, ``4096`` or ``0o17``."""
    t = text.strip().replace("_", "").replace("`", "")
    try:
        if t.lower().startswith(("0x", "0o", "0b")):
            v = int(t, 0)
        elif t.isdigit() and len(t) < 16:
            v = int(t, 10)
        else:
            v = int(t, 16)
    except ValueError:
        raise AddressError(f"bad {what} {text!r}: expected a number like 0xffffffff81000000") from None
    if v < 0 or v >= 1 << 64:
        raise AddressError(f"{what} {text!r} does not fit in 64 bits")
    return v


@dataclass
class Space:
    name: str
    mem: PhysView
    cr3: int
    ctl: ControlState
    description: str = ""
    symbols: Callable[[str], int | None] | None = field(default=None, repr=False)

    def parse_va(self, text: str) -> int:
        if self.symbols is not None and _SYMBOL.match(text) \
                and not all(c in "0123456789abcdefABCDEF" for c in text):
            base, _, off = text.partition("+")
            va = self.symbols(base)
            if va is None:
                raise AddressError(f"unknown symbol {base!r}")
            return va + (parse_address(off, "offset") if off else 0)
        return parse_address(text, "virtual address")

    def translate(self, va: int, access=0, cpl: int = 0, ctl: ControlState | None = None):
        return translate(self.mem, self.cr3, va, access, cpl, ctl or self.ctl)


def image_space(args) -> Space:
    if not args.cr3:
        raise ConfigError("--image needs --cr3 ADDR (the physical address of the top-level table)")
    mem = ImageMem(args.image)
    cr3 = parse_address(args.cr3, "CR3 value")
    root = cr3 & ADDR_MASK
    if not mem.contains(root, PAGE_SIZE):
        raise ImageError(f"CR3 {cr3:#x}: the top-level table at {root:#x} is outside "
                         f"{mem.name} (size {mem.size:#x})")
    if mem.size % PAGE_SIZE:
        raise ImageError(f"{mem.name} is truncated: size {mem.size:#x} is not a whole number of pages")
    ctl = ControlState(la57=bool(args.la57))
    return Space(f"image:{args.image}", mem, root, ctl, "physical-memory image")


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
    out = {}
    for name, root in m.spaces().items():
        proc, _, kind = name.partition(".")
        desc = descriptions.get(name) or {
            "user": f"process {proc}'s user page table" + ("" if cfg.pti else " (no PTI: its only table)"),
            "kernel": f"process {proc}'s kernel page table",
            "asi": f"process {proc}'s ASI restricted page table"}.get(kind, "")
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
