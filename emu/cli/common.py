"""What the commands share: the machine switches (``--set`` and the flags),
the address space (``--space`` or ``--image``/``--cr3``), the control state,
JSON output, notes, and reading a program's source.

Numbers follow one rule (README: "Numbers", emu/parse.py): addresses and CR3
values are hexadecimal with or without ``0x``; counts are decimal with the SI
suffixes k/M/G; sizes take the binary K/M/G/T; other values are decimal or
``0x``-hexadecimal.
"""

from __future__ import annotations

import argparse
import json
import sys

from emu.errors import ConfigError
from emu.hw.paging import ControlState
from emu.linux.config import INJECTIONS, MAX_RAM, MIN_RAM, SWITCHES, MachineConfig, parse_assignments, parse_switch
from emu.parse import parse_hex, parse_int, parse_size

NUMBERS = ("Numbers: addresses and CR3 values are hexadecimal, 0x optional (400000 is 0x400000; in an "
           "expression such as USER_DATA + 10 every number is hex); counts are decimal with k/M/G "
           "(10M = 10,000,000); sizes take K/M/G/T (4G); other values are decimal or 0x-hex.")


# --- JSON ---------------------------------------------------------------------------------
def add_json_args(p, what: str = "print JSON") -> None:
    """``--json`` and ``--pretty``: every command's JSON comes through :func:`print_json`."""
    p.add_argument("--json", action="store_true", help=what)
    p.add_argument("--pretty", action="store_true", help="indent the JSON (with --json)")


def json_text(doc, pretty: bool = False) -> str:
    """One style for every command: compact on one line, or indented with --pretty."""
    if pretty:
        return json.dumps(doc, indent=2)
    return json.dumps(doc, separators=(",", ":"))


def print_json(doc, args=None, file=None) -> None:
    print(json_text(doc, bool(getattr(args, "pretty", False))), file=file or sys.stdout)


def print_notes(notes: list[str]) -> None:
    """Notes of the number reader (a name that is also a hex number...), on stderr."""
    for n in dict.fromkeys(notes):           # once each (both ends of a range may name the same thing)
        print(f"isoemu: note: {n}", file=sys.stderr)


# --- the machine --------------------------------------------------------------------------
_FLAGS = (("no_pti", "--no-pti", "pti", "off"), ("no_pcid", "--no-pcid", "pcid", "off"),
          ("no_asi", "--no-asi", "asi", "off"), ("la57", "--la57", "la57", "on"))


def add_machine_args(g) -> None:
    """Switches of the built-in machine (every command that boots it; ``trace``
    and ``debug`` call this too).  The CLI turns them into
    ``args.machine_config`` before a command runs (:func:`config_from_args`)."""
    names = ", ".join(SWITCHES)
    g.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help=f"a machine switch (repeatable, or comma-separated: pti=off,ram=4G); "
                        f"switches: {names}; on/off (pti also auto), ram a size, tlb off/check/lazy; "
                        f"docs/cli.md lists every value")
    g.add_argument("--no-pti", action="store_true", help="page-table isolation off (--set pti=off)")
    g.add_argument("--no-pcid", action="store_true", help="PCIDs off: every CR3 write flushes (--set pcid=off)")
    g.add_argument("--no-asi", action="store_true", help="address-space isolation off (--set asi=off)")
    g.add_argument("--la57", action="store_true", help="5-level paging (--set la57=on)")
    g.add_argument("--ram", metavar="SIZE",
                   help=f"guest RAM, {MIN_RAM >> 20}M .. {MAX_RAM >> 40}T in 2 MiB steps (default 256M; "
                        f"binary suffixes: 4G)")
    g.add_argument("--tlb", metavar="MODE", help="the TLB model (--set tlb=MODE): off, check (the default: "
                   "findings, the CPU uses the tables) or lazy (a stale translation serves the access)")
    g.add_argument("--inject", metavar="NAMES", help="omit a flush Linux does, to watch the TLB model catch it "
                   f"(--set inject=NAMES; comma-separated): {', '.join(INJECTIONS)}")
    g.add_argument("--no-cache", action="store_true",
                   help="link the stub and the programs afresh: neither read nor write the cache of linked "
                        "images (docs/assembler.md; also ISOEMU_NO_CACHE=1)")


def parse_ram(text: str) -> int:
    rng = f"{MIN_RAM >> 20}M .. {MAX_RAM >> 40}T"
    try:
        v = parse_size(text, "--ram", lo=MIN_RAM, hi=MAX_RAM)
    except ConfigError as e:
        if "out of range" in str(e):
            raise
        raise ConfigError(f"bad --ram {text!r}: expected a size in {rng} such as 256M or 4G") from None
    if v % (2 << 20):
        raise ConfigError(f"--ram {text!r} is not a multiple of 2 MiB")
    return v


def has_machine_args(args) -> bool:
    return hasattr(args, "set") and hasattr(args, "no_pti")


def machine_settings(args) -> dict[str, str]:
    """``{switch: text}`` from ``--set`` and the flags; a flag that
    contradicts a ``--set`` is refused."""
    settings = parse_assignments(getattr(args, "set", None) or [])
    for attr, flag, key, value in _FLAGS:
        if getattr(args, attr, False):
            if key in settings and parse_switch(key, settings[key])[1] != parse_switch(key, value)[1]:
                raise ConfigError(f"{flag} contradicts --set {key}={settings[key]}")
            settings[key] = value
    for key in ("tlb", "inject"):
        text = getattr(args, key, None)
        if text is not None:
            if key in settings and parse_switch(key, settings[key])[1] != parse_switch(key, text)[1]:
                raise ConfigError(f"--{key} {text} contradicts --set {key}={settings[key]}")
            settings[key] = text
    if getattr(args, "ram", None):
        ram = parse_ram(args.ram)
        if "ram" in settings and parse_switch("ram", settings["ram"])[1] != ram:
            raise ConfigError(f"--ram {args.ram} contradicts --set ram={settings['ram']}")
        settings["ram"] = str(ram)
    return settings


def config_from_args(args) -> MachineConfig:
    """The machine of this command line (cached in ``args.machine_config``)."""
    cfg = getattr(args, "machine_config", None)
    if cfg is None:
        cfg = MachineConfig().with_switches(machine_settings(args))
        args.machine_config = cfg
    return cfg


# --- the address space ----------------------------------------------------------------------
#: the options of a memory image (docs/images.md): (attribute, flag)
IMAGE_OPTIONS = (("regs", "--regs"), ("maxphyaddr", "--maxphyaddr"), ("layout", "--layout"),
                 ("layout_file", "--layout-file"), ("kallsyms", "--kallsyms"), ("system_map", "--system-map"))


def add_image_args(g, *, cr3_help: str, many_roots: bool = False) -> None:
    """The options that say how to read a memory image (``--image`` commands
    and ``isoemu image``)."""
    g.add_argument("--cr3", metavar="ADDR", action="append" if many_roots else None,
                   help=cr3_help)
    g.add_argument("--regs", metavar="FILE",
                   help="the CPU's registers as QEMU's monitor prints them ('info registers'): CR3 is the "
                        "root unless --cr3 is given; LA57, WP, SMEP, SMAP, PKE and NXE come from CR0, CR4 "
                        "and EFER")
    g.add_argument("--maxphyaddr", metavar="N",
                   help="the CPU's physical-address width, 32 .. 52 (default: the image's note, else 52): "
                        "address bits above it are reserved")
    g.add_argument("--layout", metavar="KEY=VALUE", action="append",
                   help="a base of the kernel's address map (repeatable, or comma-separated): "
                        "page_offset_base, vmalloc_base, vmemmap_base, modules_vaddr, fixaddr_start, ... "
                        "(hexadecimal; none for a region the kernel lacks); see 'isoemu image info'")
    g.add_argument("--layout-file", metavar="FILE",
                   help="bases from a file of 'KEY = VALUE' lines ('isoemu image layout' writes one)")
    g.add_argument("--kallsyms", metavar="FILE",
                   help="the kernel's /proc/kallsyms (read as root): symbols for addresses, and the exact "
                        "page_offset_base, vmalloc_base and vmemmap_base read from the image")
    g.add_argument("--system-map", metavar="FILE",
                   help="the kernel's System.map (link-time addresses; the KASLR slide is taken from the "
                        "image): as --kallsyms")


def add_space_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("address space (the built-in machine, or a memory image)")
    g.add_argument("--space", metavar="NAME", help="address space of the built-in machine (default A.kernel; "
                                                   "see 'isoemu spaces')")
    g.add_argument("--image", metavar="FILE", help="a memory image instead of the built-in machine: a QEMU "
                                                   "pmemsave raw image, an ELF core (dump-guest-memory, "
                                                   "virsh dump, kdump vmcore) or 'isoemu image extract' "
                                                   "output; --la57 applies")
    add_image_args(g, cr3_help="page-table root in the image, hexadecimal (1c0a000 is 0x1c0a000); "
                               "default: from --regs or the image's notes; only with --image")
    add_machine_args(g)


def check_space_args(args) -> None:
    """Refuse options that mean nothing for the chosen source of tables."""
    image = getattr(args, "image", None)
    if not image:
        if getattr(args, "cr3", None):
            raise ConfigError("--cr3 needs --image FILE (the built-in machine's roots are named by --space)")
        for attr, flag in IMAGE_OPTIONS:
            if getattr(args, attr, None):
                raise ConfigError(f"{flag} needs --image FILE (it describes a memory image)")
        return
    given = [flag for attr, flag, _, _ in _FLAGS if attr != "la57" and getattr(args, attr, False)]
    if getattr(args, "space", None):
        given.insert(0, "--space")
    given += [f"--{key}" for key in ("tlb", "inject") if getattr(args, key, None) is not None]
    if getattr(args, "ram", None):
        given.append("--ram")
    if getattr(args, "set", None):
        given.append("--set")
    if given:
        raise ConfigError(f"{', '.join(given)}: not with --image (an image has its own tables; "
                          f"--cr3, --regs, --la57, --maxphyaddr, --layout and symbols apply)")
    if getattr(args, "cr3", None):
        cr3 = parse_hex(args.cr3, "--cr3 value")
        args.cr3 = f"{cr3:#x}"         # hexadecimal from here on, whatever the reader below assumes


def space_from_args(args):
    """The address space a page-table command works on."""
    from emu.tools.spaces import resolve_space

    check_space_args(args)
    if not getattr(args, "image", None):
        config_from_args(args)
    return resolve_space(args)


# --- the control state ---------------------------------------------------------------------
def add_ctl_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("control state (defaults: the space's own)")
    for name, what in (("wp", "CR0.WP"), ("smep", "CR4.SMEP"), ("smap", "CR4.SMAP"),
                       ("nxe", "EFER.NXE"), ("pke", "CR4.PKE"), ("ac", "RFLAGS.AC")):
        g.add_argument(f"--{name}", dest=name, action="store_true", default=None, help=f"set {what}")
        g.add_argument(f"--no-{name}", dest=name, action="store_false", help=f"clear {what}")
    g.add_argument("--pkru", metavar="VALUE",
                   help="PKRU value, 0 .. 0xffffffff, decimal or 0x-hex (implies --pke)")


def ctl_from_args(args, base: ControlState) -> ControlState:
    kw = {}
    for name in ("wp", "smep", "smap", "nxe", "pke", "ac"):
        v = getattr(args, name, None)
        if v is not None:
            kw[name] = v
    if getattr(args, "pkru", None) is not None:
        kw["pkru"] = parse_int(args.pkru, "--pkru value", lo=0, hi=0xFFFFFFFF)
        kw.setdefault("pke", True)
    return base.replace(**kw) if kw else base


# --- program sources ------------------------------------------------------------------------
def read_source(path) -> str:
    """emu.linux.program.read_source, imported when a command reads a program
    (the assembler stays out of the CLI's start-up)."""
    from emu.linux.program import read_source as read

    return read(path)


def write_text(path: str, text: str) -> None:
    """Write an output file the user named (-o, --svg): an unwritable path is
    one line, not a traceback."""
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror or e}") from None
