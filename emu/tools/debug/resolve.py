"""Addresses the debugger takes: expressions in the number rule of emu/parse.py.

An address is an expression of terms joined by ``+`` and ``-``; every number
in it is hexadecimal, ``0x`` optional (``600000`` is 0x600000, ``$rsp + 10``
is 16 bytes up).  A name is, in this order:

* a register, ``$rsp`` (``$pc``, ``$sp`` too);
* a kernel symbol, ``do_syscall_64``;
* ``P:label``, a label of process P's program;
* a label of one program, when it has one address among all of them;
* a layout name as the programs see it (emu/linux/program.py:
  ``USER_DATA``, ``DIRECT_MAP_BASE``, ``KERNEL_TEXT``...).

A word that is both a name and a hexadecimal number (a label ``bad``) is the
name, with a note saying so (``0xbad`` is always the number); a kernel
symbol that a program also defines as a label is the kernel's, with a note.
"""

from __future__ import annotations

from emu.errors import ConfigError, IsoemuError
from emu.linux.program import user_symbols
from emu.parse import parse_address
from emu.tools.debug.errors import DebugError
from emu.tools.debug.registers import Registers, canonical_name


def has_label(image, name: str) -> bool:
    """A label of the image (not an ``.equ`` constant)."""
    return name in (image.labels or image.symbols)


class AddressResolver:
    """Turns names and expressions into addresses on one machine."""

    def __init__(self, machine, regs: Registers):
        self.m = machine
        self.regs = regs
        self.layout_names = user_symbols(machine.layout)

    def address(self, text: str, notes: list[str] | None = None, what: str = "address") -> int:
        """The value of an address expression (a leading ``*``, gdb's, is allowed)."""
        if not isinstance(text, str):
            raise DebugError(f"bad {what} {text!r}: expected text")
        t = text.strip()
        t = t[1:] if t.startswith("*") else t
        try:
            return parse_address(t, what, lambda tok: self.name(tok, notes), notes)
        except DebugError:
            raise
        except IsoemuError as e:
            raise DebugError(str(e)) from None

    def name(self, tok: str, notes: list[str] | None = None) -> int | None:
        """The value of one name, None if it names nothing (then a hexadecimal
        word is a number); an ambiguous or half-valid name is refused."""
        if tok.startswith("$"):
            reg = canonical_name(tok[1:])
            return None if reg is None else self.regs[reg]
        if ":" in tok:
            pname, _, label = tok.partition(":")
            p = self.process(pname)
            if not has_label(p.image, label):
                raise DebugError(f"no label {label!r} in process {pname}'s program")
            return p.image.symbols[label]
        kernel = self.m.kernel.image
        owners = [p for p in self.m.processes if has_label(p.image, tok)]
        if has_label(kernel, tok):
            if owners and notes is not None:
                notes.append(f"{tok!r} is the kernel symbol ({kernel.symbols[tok]:#x}); write "
                             f"{owners[0].name}:{tok} for the label of process {owners[0].name}")
            return kernel.symbols[tok]
        found = {p.image.symbols[tok] for p in owners}
        if len(found) == 1:
            return found.pop()
        if found:
            raise DebugError(f"label {tok!r} is ambiguous: write P:{tok} (P one of "
                             f"{', '.join(p.name for p in owners)})")
        return self.layout_names.get(tok)

    def process(self, name: str):
        try:
            return self.m.process(name)
        except ConfigError as e:
            raise DebugError(str(e)) from None
