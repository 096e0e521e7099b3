"""Arguments shared by the commands: the machine switches, the address space, the control state."""

from __future__ import annotations

import argparse

from emu.hw.paging import ControlState
from emu.tools.spaces import parse_address


def add_space_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("address space")
    g.add_argument("--space", metavar="NAME", help="address space to use (see 'isoemu spaces')")
    g.add_argument("--image", metavar="FILE", help="raw physical-memory image (e.g. QEMU pmemsave)")
    g.add_argument("--cr3", metavar="ADDR", help="page-table root in the image (with --image)")
    add_machine_args(g)


def add_machine_args(g) -> None:
    """Switches of the built-in machine (shared by every command that boots it)."""
    g.add_argument("--no-pti", action="store_true", help="page-table isolation off")
    g.add_argument("--no-pcid", action="store_true", help="PCIDs off (every CR3 write flushes)")
    g.add_argument("--no-asi", action="store_true", help="address-space isolation off")
    g.add_argument("--la57", action="store_true", help="5-level paging")
    g.add_argument("--ram", metavar="SIZE", help="guest RAM (default 256M, e.g. 4G)")


def add_ctl_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("control state (defaults: the space's own)")
    for name, what in (("wp", "CR0.WP"), ("smep", "CR4.SMEP"), ("smap", "CR4.SMAP"),
                       ("nxe", "EFER.NXE"), ("pke", "CR4.PKE"), ("ac", "RFLAGS.AC")):
        g.add_argument(f"--{name}", dest=name, action="store_true", default=None, help=f"set {what}")
        g.add_argument(f"--no-{name}", dest=name, action="store_false", help=f"clear {what}")
    g.add_argument("--pkru", metavar="VALUE", help="PKRU value (implies --pke)")


def ctl_from_args(args, base: ControlState) -> ControlState:
    kw = {}
    for name in ("wp", "smep", "smap", "nxe", "pke", "ac"):
        v = getattr(args, name, None)
        if v is not None:
            kw[name] = v
    if getattr(args, "pkru", None) is not None:
        kw["pkru"] = parse_address(args.pkru, "PKRU value")
        kw.setdefault("pke", True)
    return base.replace(**kw) if kw else base
