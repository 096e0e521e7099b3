"""Building a test process: the program, the runtime after it, the site table.

The runtime is ``runtime.S`` beside this file (package data).  Its
constants come from emu/linux/abi.py as predefined ``__isoemu_rt_*``
symbols; the per-test site table is generated as data, a small ``.rodata``
file of ``.quad KIND, MATCH, RESUME`` lines linked after the runtime.
Test programs find ``isoemu.inc`` (include/ beside this file) and the files
beside the test on their include path.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from emu.asm import Image, link
from emu.errors import AsmError
from emu.linux import abi
from emu.linux.layout import Layout
from emu.linux.program import LIBRARY_INCLUDE, USER_LAYOUT, assemble_program, user_symbols
from emu.tools.asmtest.format import AsmTestError

HERE = os.path.dirname(os.path.abspath(__file__))
RUNTIME_FILE = os.path.join(HERE, "runtime.S")
INCLUDE_DIR = LIBRARY_INCLUDE                  # isoemu.inc (emu/linux/include)
RUNTIME_NAME = "<isoemu asm-test runtime>"
SITES_NAME = "<isoemu asm-test sites>"

# the kinds of site-table entries (the handler in runtime.S reads them)
SITE_EXACT = 0          # the fault is at the labelled instruction: resume after it
SITE_CALL_TARGET = 1    # a fetch fault at the target of a labelled call: pop, resume after the call
SITE_TRAP = 2           # #BP/#OF reported after a labelled int3/into: resume there
HANDLED_SIGNALS = ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGTRAP")
# include/uapi/asm-generic/signal-defs.h, arch/x86/include/uapi/asm/signal.h
SA_SIGINFO, SA_RESTORER = 0x4, 0x04000000


@dataclass(frozen=True)
class Site:
    kind: int
    match: int
    resume: int
    label: str


@functools.lru_cache(maxsize=1)
def runtime_source() -> str:
    with open(RUNTIME_FILE, encoding="ascii") as f:
        return f.read()


def runtime_symbols() -> dict[str, int]:
    """The constants runtime.S uses, by their ``__isoemu_rt_`` names."""
    return {
        "__isoemu_rt_UC_MCONTEXT": abi.UC_MCONTEXT,
        "__isoemu_rt_SC_RIP": abi.SC["rip"],
        "__isoemu_rt_SC_RSP": abi.SC["rsp"],
        "__isoemu_rt_SC_TRAPNO": abi.SC["trapno"],
        "__isoemu_rt_SC_ERR": abi.SC["err"],
        "__isoemu_rt_SA_FLAGS": SA_SIGINFO | SA_RESTORER,
        "__isoemu_rt_SITE_CALL_TARGET": SITE_CALL_TARGET,
        "__isoemu_rt_SITE_TRAP": SITE_TRAP,
    }


def site_table(sites: list[Site]) -> str:
    """The generated data: one ``.quad KIND, MATCH, RESUME`` per site."""
    rows = "".join(f".quad {s.kind}, {s.match:#x}, {s.resume:#x}\n" for s in sites)
    return f".rodata\n.align 8\n__isoemu_rt_sites:\n{rows}__isoemu_rt_sites_end:\n"


def include_dirs(real_path: str | None) -> list[str]:
    """The test's own directory, then the library (isoemu.inc)."""
    return ([os.path.dirname(os.path.abspath(real_path))] if real_path else []) + [INCLUDE_DIR]


def assemble_user(source: str, path: str, layout: Layout, dirs: list[str], line: int = 0,
                  process: str = "A") -> Image:
    """The program alone (its own addresses and labels)."""
    try:
        return assemble_program(source, path, layout, include_dirs=dirs)
    except AsmError as e:
        if line and str(e).endswith("no _start label (the entry point)"):
            raise AsmTestError(f"{path}:{line}: process {process} has no _start label "
                               f"(the entry point)") from None
        raise


def sites_for(user: Image, labels: list[str]) -> list[Site]:
    """Site-table entries for the labelled instructions, in label order."""
    insns = {i.addr: i for i in user.insns}
    sites = []
    for label in labels:
        addr = user.symbols[label]
        ins = insns[addr]
        nxt = addr + ins.size
        sites.append(Site(SITE_EXACT, addr, nxt, label))
        if ins.mnemonic == "call":
            sites.append(Site(SITE_CALL_TARGET, addr, nxt, label))
        if ins.mnemonic in ("int3", "into"):
            sites.append(Site(SITE_TRAP, nxt, nxt, label))
    return sites


def link_process(source: str, path: str, layout: Layout, user: Image, sites: list[Site],
                 dirs: list[str]) -> Image:
    """Program, runtime and site table in one image; the program's own
    addresses unchanged (the runtime only ever comes after it)."""
    full = link([(path, source), (RUNTIME_NAME, runtime_source()), (SITES_NAME, site_table(sites))],
                USER_LAYOUT, {**user_symbols(layout), **runtime_symbols()}, include_dirs=dirs,
                nobits=(".bss",))
    for name in user.labels:
        if full.symbols.get(name) != user.symbols[name]:
            raise RuntimeError(f"{path}: the runtime moved the label {name}")
    return full
