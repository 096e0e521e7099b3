"""A memory image as an address space: its tables, registers, paging mode,
layout and symbols, each with where it came from; and ``image extract``.

Every fact an image command uses is resolved here once, in this order of
precedence (docs/images.md, "Where each fact comes from"):

================ ============================================================================
CR3 (the root)   ``--cr3``; ``--regs``; the image's notes (isoemu's, QEMU's CPU 0,
                 VMCOREINFO's init_top_pgt); else refused
control bits     ``--regs`` (CR0.WP; CR4.SMEP, SMAP, PKE, LA57; EFER.NXE); the notes;
                 else assumed (WP, SMEP, SMAP, NXE set; PKE clear) and said so
paging mode      ``--regs`` or the notes (CR4.LA57, VMCOREINFO); ``--la57``; else
                 detected from the tables; a contradiction is refused
MAXPHYADDR       ``--maxphyaddr``; isoemu's note; else assumed 52 and said so
layout           ``--layout``/``--layout-file``; the kernel's variables through
                 ``--kallsyms``/``--system-map``; isoemu's note; detected; VMCOREINFO
                 (KERNEL_IMAGE_SIZE); else a distribution kernel's, and said so
================ ============================================================================

Notes (:attr:`ImageSetup.notes`) say what was detected and what assumed;
the CLI prints the ones the command depends on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from emu.errors import ConfigError, ImageError
from emu.hw.image import ISOEMU_NOTE, ImageMem, note_bytes, parse_info_registers, write_elf_core
from emu.hw.paging import ADDR_MASK, PS, ControlState, PagingMode, TableVisitor, mode_for
from emu.hw.x86 import CR0_WP, CR4_LA57, CR4_PKE, CR4_SMAP, CR4_SMEP
from emu.linux.layout import LAYOUT_KEYS, Layout, linux_layout, parse_layout_value
from emu.tools.detect import (BASE_VARIABLES, Symbols, bases_from_symbols, detect_bases, detect_mode,
                              image_translate, place_symbols, read_symbols)

EFER_NXE = 1 << 11
START_KERNEL_MAP = 0xFFFFFFFF80000000
ASSUMED_MAXPHYADDR = 52
PAGE = 0x1000


@dataclass
class ImageSetup:
    """What an image command works with, and where each part came from."""

    mem: ImageMem
    root: int
    ctl: ControlState
    layout: Layout
    symbols: Symbols | None
    roots: list[int]
    registers: dict[str, int]              # cr0/cr3/cr4/efer known
    sources: dict[str, str] = field(default_factory=dict)    # fact -> where it came from
    notes: dict[str, list[str]] = field(default_factory=dict)  # topic -> notes

    def notes_for(self, *topics: str) -> list[str]:
        return [n for t in topics for n in self.notes.get(t, [])]

    def note(self, topic: str, text: str) -> None:
        self.notes.setdefault(topic, []).append(text)


def _signed(text: str) -> int:
    v = int(text, 0) if text.lower().startswith(("0x", "-0x")) else int(text, 10)
    return v


def _registers(mem: ImageMem, regs_path: str | None) -> tuple[dict[str, int], str]:
    """The control registers known, and their source."""
    if regs_path:
        try:
            with open(regs_path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError as e:
            raise ConfigError(f"cannot read --regs file {regs_path}: {e.strerror}") from None
        cpus = parse_info_registers(text, f"--regs {regs_path}")
        src = f"--regs {regs_path}"
        if len(cpus) > 1:
            src += f" (CPU 0 of {len(cpus)})"
        return {k: cpus[0][k] for k in ("cr0", "cr3", "cr4", "efer")}, src
    notes = mem.notes
    if notes.isoemu and "cr3" in notes.isoemu:
        regs = {k: int(notes.isoemu[k], 16) for k in ("cr0", "cr3", "cr4", "efer") if k in notes.isoemu}
        return regs, f"the image's {ISOEMU_NOTE} note"
    if notes.cpus:
        regs = {k: notes.cpus[0][k] for k in ("cr0", "cr3", "cr4")}
        n = len(notes.cpus)
        return regs, "the image's QEMU note" + (f" (CPU 0 of {n})" if n > 1 else "")
    return {}, ""


def vmcore_root(mem: ImageMem) -> int | None:
    """swapper_pg_dir's physical address from VMCOREINFO (init_top_pgt and phys_base)."""
    info = mem.notes.vmcoreinfo
    try:
        va = int(info["SYMBOL(init_top_pgt)"], 16)
        phys_base = _signed(info.get("NUMBER(phys_base)", "0"))
    except (KeyError, ValueError):
        return None
    return (va - START_KERNEL_MAP + phys_base) & 0xFFFFFFFFFFFFFFFF


def open_image(path: str, *, cr3: list[int] | None = None, regs: str | None = None, la57: bool | None = None,
               maxphyaddr: int | None = None, layout: dict[str, int | None] | None = None,
               kallsyms: str | None = None, system_map: str | None = None) -> ImageSetup:
    """Open ``path`` and resolve everything an image command needs (the
    module docstring gives the order)."""
    if kallsyms and system_map:
        raise ConfigError("--kallsyms and --system-map: give one symbol table")
    mem = ImageMem(path)
    if mem.format == "raw" and mem.size % PAGE:
        raise ImageError(f"{mem.name} is truncated: size {mem.size:#x} is not a whole number of pages")
    registers, reg_src = _registers(mem, regs)
    sources: dict[str, str] = {}
    notes = mem.notes

    # -- the root(s)
    if cr3:
        roots, sources["cr3"] = list(cr3), "--cr3"
    elif "cr3" in registers:
        roots, sources["cr3"] = [registers["cr3"]], reg_src
        if notes.isoemu.get("roots") and not regs:
            roots = [int(r, 16) for r in notes.isoemu["roots"].split(",")]
    elif vmcore_root(mem) is not None:
        roots, sources["cr3"] = [vmcore_root(mem)], "VMCOREINFO (init_top_pgt, phys_base)"
    else:
        raise ConfigError(f"--image needs --cr3 ADDR or --regs FILE: {os.path.basename(path)} holds no "
                          f"registers (the physical address of the top-level table)")
    roots = [r & ADDR_MASK for r in roots]
    root = roots[0]
    for r in roots:
        if not mem.contains(r, PAGE):
            where = "in a hole of" if 0 <= r < mem.size else "outside"
            raise ImageError(f"CR3 {r:#x}: the top-level table at {r:#x} is {where} {mem.name} "
                             f"(size {mem.size:#x})")

    setup = ImageSetup(mem, root, ControlState(), linux_layout(4), None, roots, registers, sources)

    # -- the paging mode
    reg_la57 = None
    if "cr4" in registers:
        reg_la57, la57_src = bool(registers["cr4"] & CR4_LA57), f"CR4.LA57 from {reg_src}"
    elif "NUMBER(pgtable_l5_enabled)" in notes.vmcoreinfo:
        reg_la57 = notes.vmcoreinfo["NUMBER(pgtable_l5_enabled)"].strip() == "1"
        la57_src = "VMCOREINFO (pgtable_l5_enabled)"
    found, kroot, why = detect_mode(mem, root)
    detected = None if found is None else found.mode.depth == 5
    if reg_la57 is not None:
        if la57 and not reg_la57:
            raise ConfigError(f"--la57 contradicts {la57_src} (clear: 4-level paging)")
        if detected is not None and detected != reg_la57:
            raise ImageError(f"{la57_src} says {5 if reg_la57 else 4}-level paging, but the tables at "
                             f"{root:#x} are {5 if detected else 4}-level ({why}): registers of another "
                             f"machine or another moment?")
        use_la57 = reg_la57
        sources["la57"] = la57_src
    elif la57:
        if detected is False:
            raise ConfigError(f"--la57: the tables at {root:#x} are 4-level ({why}); drop --la57")
        use_la57, sources["la57"] = True, "--la57"
    elif detected is not None:
        use_la57, sources["la57"] = detected, f"detected: {why}"
        if detected:
            setup.note("mode", f"the tables at {root:#x} are 5-level ({why}): read with LA57 "
                               f"(--regs or --la57 to say so)")
    else:
        use_la57, sources["la57"] = False, f"assumed ({why})"
        setup.note("mode", f"paging mode not detected ({why}): assumed 4-level (--la57 or --regs to choose)")
    mode = mode_for(5 if use_la57 else 4)

    # -- MAXPHYADDR and the control bits
    if maxphyaddr is not None:
        maxphy, sources["maxphyaddr"] = maxphyaddr, "--maxphyaddr"
    elif "maxphyaddr" in notes.isoemu:
        maxphy, sources["maxphyaddr"] = int(notes.isoemu["maxphyaddr"]), f"the image's {ISOEMU_NOTE} note"
    else:
        maxphy, sources["maxphyaddr"] = ASSUMED_MAXPHYADDR, "assumed (the architectural maximum)"
        setup.note("maxphyaddr", "MAXPHYADDR unknown: assumed 52, so no address bit is taken for a "
                                 "reserved one (--maxphyaddr N)")
    ctl_kw: dict = {"la57": use_la57, "maxphyaddr": maxphy}
    if "cr0" in registers:
        ctl_kw["wp"] = bool(registers["cr0"] & CR0_WP)
    if "cr4" in registers:
        ctl_kw.update(smep=bool(registers["cr4"] & CR4_SMEP), smap=bool(registers["cr4"] & CR4_SMAP),
                      pke=bool(registers["cr4"] & CR4_PKE))
    if "efer" in registers:
        ctl_kw["nxe"] = bool(registers["efer"] & EFER_NXE)
    if registers:
        sources["control"] = reg_src
        if "efer" not in registers:
            setup.note("control", f"EFER is not in {reg_src}: NXE assumed set (--regs FILE gives it)")
    else:
        sources["control"] = "assumed"
        setup.note("control", "no registers (--regs FILE, or an image with notes): assumed CR0.WP, CR4.SMEP, "
                              "CR4.SMAP and EFER.NXE set, CR4.PKE clear")
    setup.ctl = ControlState(**ctl_kw)

    # -- the layout
    _resolve_layout(setup, mode, found if found and found.mode is mode else None, kroot, layout or {},
                    kallsyms, system_map)
    return setup


#: where a base comes from when nothing says otherwise
DEFAULT_SOURCES = {
    "page_offset_base": "assumed: KASLR off (not detected)",
    "vmalloc_base": "assumed: KASLR off (not detected)",
    "vmemmap_base": "assumed: KASLR off (not detected)",
    "ldt_base": "assumed: CONFIG_MODIFY_LDT_SYSCALL=y",
    "kasan_shadow_start": "assumed: no CONFIG_KASAN",
    "kasan_shadow_end": "assumed: no CONFIG_KASAN",
    "cpu_entry_area": "Linux's fixed address",
    "espfix_base": "Linux's fixed address",
    "efi_va_end": "assumed: CONFIG_EFI=y",
    "kernel_map": "Linux's fixed address",
    "modules_vaddr": "assumed: CONFIG_RANDOMIZE_BASE=y (KERNEL_IMAGE_SIZE 1 GiB)",
    "modules_end": "assumed: no CONFIG_DEBUG_KMAP_LOCAL_FORCE_MAP",
    "fixaddr_start": "assumed: Debian 6.1's configuration (FIXADDR_START depends on it)",
}


def _resolve_layout(setup: ImageSetup, mode: PagingMode, found, kroot: int, given: dict[str, int | None],
                    kallsyms: str | None, system_map: str | None) -> None:
    mem, notes = setup.mem, setup.mem.notes
    lay = linux_layout(mode.depth)
    values: dict[str, int | None] = {}
    src: dict[str, str] = dict(DEFAULT_SOURCES)
    size = notes.vmcoreinfo.get("NUMBER(KERNEL_IMAGE_SIZE)")
    if size and size.isdigit():
        values["modules_vaddr"] = lay.kernel_map + int(size)
        src["modules_vaddr"] = "VMCOREINFO (KERNEL_IMAGE_SIZE)"
    if found is not None:
        values["page_offset_base"] = found.page_offset
        src["page_offset_base"] = f"detected: {found.evidence}"
        for key, (v, why) in detect_bases(mem, kroot, mode, found.page_offset).items():
            values[key], src[key] = v, f"detected: {why}"
    for key, text in notes.isoemu.items():
        if key.startswith("layout."):
            name = key[len("layout."):]
            values[name] = parse_layout_value(name, text, f"{ISOEMU_NOTE} note")
            src[name] = notes.isoemu.get(f"source.{name}", f"the image's {ISOEMU_NOTE} note")
    syms = None
    if kallsyms or system_map:
        syms = read_symbols(kallsyms or system_map, "kallsyms" if kallsyms else "System.map")
        offset = notes.vmcoreinfo.get("KERNELOFFSET")
        kaslr = (int(offset, 16), "VMCOREINFO (KERNELOFFSET)") if offset else None
        place_symbols(syms, mem, kroot, mode, lay.with_values(values), kaslr)
        for key, (v, why) in bases_from_symbols(syms, mem, kroot, setup.ctl).items():
            values[key], src[key] = v, why
    for key, v in given.items():
        values[key], src[key] = v, "given (--layout)"
    setup.layout = lay.with_values(values)
    setup.symbols = syms
    for key in LAYOUT_KEYS:
        setup.sources[f"layout.{key}"] = src[key]
    detected = [k for k in LAYOUT_KEYS if src[k].startswith("detected")]
    assumed = [k for k in LAYOUT_KEYS if src[k].startswith("assumed")]
    vals = setup.layout.values()
    if detected:
        setup.note("layout", "layout detected: " + ", ".join(f"{k} {vals[k]:#x}" for k in detected))
    if assumed:
        setup.note("layout", f"layout assumed: {', '.join(assumed)} ('isoemu image info' says why; "
                             f"--layout KEY=VALUE, --layout-file or --kallsyms FILE to give them)")


# --- image extract ---------------------------------------------------------------------------------
class _Frames(TableVisitor):
    """Every page-table page reachable from a root, each (frame, level) once."""

    def __init__(self, mem, root, mode, seen: set, problems: list[str]):
        super().__init__(mem, root, mode)
        self.seen = seen
        self.problems = problems
        self.depth_of = {lv.name: i for i, lv in enumerate(mode.levels)}

    def table(self, va, level, entry, entry_pa, eff, nx):
        if level.ps_reserved and entry & PS:
            return False
        key = (entry & ADDR_MASK, self.depth_of[level.name] + 1)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True

    def broken(self, error):
        self.problems.append(str(error))


def reachable_tables(setup: ImageSetup) -> tuple[list[int], list[str]]:
    """The page-table pages reachable from every root, and what could not be followed."""
    seen: set = set()
    problems: list[str] = []
    for r in setup.roots:
        seen.add((r, 0))
        _Frames(setup.mem, r, setup.ctl.mode, seen, problems).walk()
    return sorted({f for f, _ in seen}), problems


def extract(setup: ImageSetup, out_path: str) -> dict:
    """Write the page-table pages reachable from the roots as an ELF core
    (and, with symbols, the pages holding the base variables), with a note
    holding the roots, registers and the layout facts that detection would
    not find again.  Returns a summary."""
    mem = setup.mem
    frames, problems = reachable_tables(setup)
    keep = set(frames)
    if setup.symbols is not None:
        for name in BASE_VARIABLES:
            va = setup.symbols(name)
            if va is None:
                continue
            t = image_translate(mem, setup.roots[0], va, setup.ctl.replace(smap=False))
            if not t.fault and mem.contains(t.pa & ~0xFFF, PAGE):
                keep.add(t.pa & ~0xFFF)
    pages = sorted(keep)
    runs: list[tuple[int, bytearray]] = []
    for pa in pages:
        data = mem.read(pa, PAGE)
        if runs and runs[-1][0] + len(runs[-1][1]) == pa:
            runs[-1][1].extend(data)
        else:
            runs.append((pa, bytearray(data)))
    info = {"format": "1", "source": f"{os.path.basename(mem.path)} ({mem.description})",
            "roots": ",".join(f"{r:#x}" for r in setup.roots)}
    for k in ("cr0", "cr3", "cr4", "efer"):
        if k in setup.registers:
            info[k] = f"{setup.registers[k]:#x}"
    if "cr3" not in info:
        info["cr3"] = f"{setup.roots[0]:#x}"
    if "cr4" not in info and setup.ctl.la57:
        info["cr4"] = f"{CR4_LA57:#x}"
    if not setup.sources.get("maxphyaddr", "").startswith("assumed"):
        info["maxphyaddr"] = str(setup.ctl.maxphyaddr)
    vals = setup.layout.values()
    for key in LAYOUT_KEYS:
        src = setup.sources[f"layout.{key}"]
        if src.startswith(("given", "the kernel's", "the image's")):
            v = vals[key]
            info[f"layout.{key}"] = "none" if v is None else f"{v:#x}"
            info[f"source.{key}"] = src
    text = "".join(f"{k}={v}\n" for k, v in info.items()).encode()
    notes = note_bytes(ISOEMU_NOTE, 0, text)
    if mem.notes.vmcoreinfo:
        vmci = "".join(f"{k}={v}\n" for k, v in mem.notes.vmcoreinfo.items()).encode()
        notes += note_bytes("VMCOREINFO", 0, vmci)
    size = write_elf_core(out_path, [(pa, bytes(d)) for pa, d in runs], notes)
    return {"output": out_path, "bytes": size, "tables": len(frames), "pages": len(pages),
            "segments": len(runs), "roots": [f"{r:#x}" for r in setup.roots], "problems": problems}


def describe(setup: ImageSetup) -> dict:
    """``isoemu image info``: the image and every fact with its source."""
    mem, ctl = setup.mem, setup.ctl
    doc = {
        "image": mem.path, "format": mem.description,
        "memory": [{"start": f"{s:#x}", "end": f"{e:#x}"} for s, e in mem.segments],
        "notes": sorted(set(mem.notes.sources)),
        "roots": [f"{r:#x}" for r in setup.roots],
        "registers": {k: f"{v:#x}" for k, v in setup.registers.items()},
        "control": {"wp": ctl.wp, "smep": ctl.smep, "smap": ctl.smap, "pke": ctl.pke, "nxe": ctl.nxe,
                    "la57": ctl.la57, "maxphyaddr": ctl.maxphyaddr},
        "layout": {k: (None if v is None else f"{v:#x}") for k, v in setup.layout.values().items()},
        "sources": dict(setup.sources),
        "symbols": None if setup.symbols is None else {
            "file": setup.symbols.path, "kind": setup.symbols.kind, "count": len(setup.symbols.table),
            "slide": f"{setup.symbols.slide:#x}", "slide_source": setup.symbols.slide_source},
        "notes_text": setup.notes_for("mode", "control", "maxphyaddr", "layout"),
    }
    return doc

