"""Assembler and linker: keystone underneath, file:line errors on top
(docs/assembler.md).

Sources are Intel syntax; ``;``, ``#`` and ``//`` start comments (keystone
itself would read ``;`` as a statement separator: docs/architecture.md,
Unicorn fact 10).  The
linker reads every statement strictly before keystone sees it
(emu/asm/syntax.py), writes data directives itself (emu/asm/data.py), gives
keystone one call per section with every symbol as ``.equ``, pads
``.align`` itself, and repeats until addresses converge.  Every instruction
is then decoded once and compared with its statement (emu/asm/strict.py):
a statement's bytes are what its source says, or the link fails with
``FILE:LINE: what is wrong: statement``.

Beyond keystone's syntax: ``.include``, ``.section`` and the section
aliases, ``.macro``/``.endm``, ``.extable``, ``.alternative``, constants
(``.equ``/``.set``/``=``) and the stub contract's site declarations
(``.cr0_write``, ``.cr3_write [noflush]``, ``.cr4_write``, ``.invlpg``, ``.hook NAME``).
"""

from emu.asm.image import Image, Insn, Line, Section, Site, Stmt
from emu.asm.linker import freeze_symbols, link, substitute_constants
from emu.asm.source import strip_comment

__all__ = ["Image", "Insn", "Line", "Section", "Site", "Stmt", "freeze_symbols", "link", "strip_comment", "substitute_constants"]
