"""User programs: assembled at fixed user addresses, entry at ``_start``.

Programs are Intel syntax.  They see the Linux syscall numbers (``SYS_write``
...), ``PROT_*``, ``MAP_*``, ``O_CLOEXEC``, errno and signal numbers, and the
layout addresses of the machine they run on (``DIRECT_MAP_BASE``,
``KERNEL_TEXT``, ``KERNEL_DATA``, ``ENTRY_TEXT``, ``CPU_ENTRY_AREA``,
``USER_DATA``...).  ``.data`` starts at ``USER_DATA``; a program without
one still gets a writable page there.
"""

from __future__ import annotations

import os
from typing import Mapping

from emu.linux import abi, kvm_abi
from emu.asm import Image, freeze_symbols, link
from emu.asm.syntax import non_ascii_problem
from emu.errors import AsmError, ConfigError
from emu.linux.layout import Layout

USER_LAYOUT = {".text": abi.USER_TEXT, ".rodata": abi.USER_RODATA, ".data": abi.USER_DATA,
               ".bss": abi.USER_BSS}
_SECTION_LIMIT = 0x100000


def user_symbols(layout: Layout) -> dict[str, int]:
    s: dict[str, int] = {}
    s.update({f"SYS_{k}": v for k, v in abi.SYSCALLS.items()})
    s.update(abi.ERRNO)
    s.update(abi.SIGNALS)
    s.update(abi.PROT)
    s.update(abi.MAP)
    s["O_CLOEXEC"] = abi.O_CLOEXEC
    s.update({k: i for i, k in enumerate(abi.RLIMITS)})
    s.update(abi.PTRACE)
    s.update({"RLIM_INFINITY": abi.RLIM_INFINITY, "MLOCK_LIMIT": abi.MLOCK_LIMIT,
              "XPFO_MAX_BYTES": abi.XPFO_MAX_BYTES})
    s.update(kvm_abi.stub_symbols())
    s["GMEM_KMAP_VA"] = layout.vmalloc_start + kvm_abi.GMEM_KMAP_OFFSET
    s.update({
        "DIRECT_MAP_BASE": layout.page_offset,
        "KERNEL_TEXT": layout.kernel_text,
        "ENTRY_TEXT": layout.kernel_text + abi.KSECTIONS[".entry.text"],
        "KERNEL_RODATA": layout.kernel_text + abi.KSECTIONS[".rodata"],
        "KERNEL_DATA": layout.kernel_text + abi.KSECTIONS[".data"],
        "CPU_ENTRY_AREA": layout.cpu_entry_area,
        # physical addresses of the image, for direct-map aliases:
        # DIRECT_MAP_BASE + KERNEL_DATA_PHYS is KERNEL_DATA's alias
        "KERNEL_PHYS": abi.KERNEL_PHYS,
        "KERNEL_DATA_PHYS": abi.KERNEL_PHYS + abi.KSECTIONS[".data"],
        "VMALLOC_START": layout.vmalloc_start,
        # task i's kernel stack (VMAP_STACK) is THREAD_SIZE at VMALLOC_START + i * VMAP_STACK_STRIDE
        "VMAP_STACK_STRIDE": abi.VMAP_STACK_STRIDE,
        "USER_TEXT": abi.USER_TEXT,
        "USER_DATA": abi.USER_DATA,
        "USER_STACK_TOP": abi.USER_STACK_TOP,
        "MMAP_BASE": abi.MMAP_BASE,
        "PAGE_SIZE": 4096,
    })
    return s


def read_source(path) -> str:
    """The text of the assembly source file ``path``, for every command that
    reads one.  The file must be UTF-8 (a byte-order mark is accepted and
    dropped), and ASCII outside string literals and comments: a no-break
    space or a typographic quote pasted into an instruction is refused,
    named, rather than left for keystone to misread.  String literals and
    comments are as the assembler sees them (``emu.asm.strip_comment``):
    ``"..."`` and ``'...'`` with backslash escapes; ``;``, ``#``, ``//``."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise AsmError(f"{path}: not UTF-8 text (byte {data[e.start]:#04x} at line {line})") from None
    text = text.removeprefix("\ufeff")
    if text.isascii():
        return text
    # lines as a text editor shows them (str.splitlines would also break at
    # U+2028 and U+0085, which must be refused, not taken for line ends)
    for lineno, line in enumerate(text.split("\n"), 1):
        problem = non_ascii_problem(line)
        if problem:
            raise AsmError(f"{path}:{lineno}: {problem}")
    return text


#: isoemu.inc, the macro library of Linux's syscall ABI for user programs
#: (docs/asm-tests.md): on every program's include path
LIBRARY_INCLUDE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "include")


#: layout -> its user symbols, read-only: the linker makes their part of its key once
_FROZEN_SYMBOLS: dict[Layout, Mapping[str, int]] = {}


def _frozen_user_symbols(layout: Layout) -> Mapping[str, int]:
    got = _FROZEN_SYMBOLS.get(layout)
    if got is None:
        got = _FROZEN_SYMBOLS[layout] = freeze_symbols(user_symbols(layout))
    return got


def assemble_program(source: str, name: str, layout: Layout, extra_symbols: dict[str, int] | None = None,
                     include_dirs: list[str] | None = None) -> Image:
    """Assemble a user program; errors name ``name:line``.  ``.include``
    looks in ``include_dirs`` (default: the directory of ``name`` when it is
    a file) and then in the library (isoemu.inc)."""
    syms = {**user_symbols(layout), **extra_symbols} if extra_symbols else _frozen_user_symbols(layout)
    if include_dirs is None:
        include_dirs = [os.path.dirname(os.path.abspath(name))] if os.path.isfile(name) else []
    if LIBRARY_INCLUDE not in include_dirs:
        include_dirs = [*include_dirs, LIBRARY_INCLUDE]
    img = link([(name, source)], USER_LAYOUT, syms, include_dirs=include_dirs, nobits=(".bss",))
    if "_start" not in img.symbols:
        raise AsmError(f"{name}: no _start label (the entry point)")
    for sec in img.sections.values():
        if sec.size > _SECTION_LIMIT:
            raise AsmError(f"{name}: section {sec.name} is {sec.size:#x} bytes; at most {_SECTION_LIMIT:#x}")
    return img
