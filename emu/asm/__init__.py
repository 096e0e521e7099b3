"""Assembler and linker: keystone underneath, file:line errors on top.

Sources are Intel syntax.  ``;``, ``#`` and ``//`` start comments (keystone
itself would read ``;`` as a statement separator, docs/architecture.md, Unicorn fact 10).
On top of what keystone accepts, the preprocessor handles:

``.include "file"``         textual include (relative to the including file)
``.section NAME``           also ``.text``, ``.data``, ``.rodata``, ``.bss``
``.macro`` / ``.endm``      expanded here (``\\arg``, ``arg=default``, ``\\@``),
                            usable from every file; errors name the invocation
``.extable FROM, TO[, T]``  an exception-table entry (as Linux's _ASM_EXTABLE)
``.alternative FEATURE, TARGET``
                            a 5-byte ``jmp TARGET`` (a label of the same
                            section) that the loader turns into a NOP when
                            FEATURE is on, as Linux's
                            ``ALTERNATIVE "jmp TARGET", "", FEATURE``

Every label is a global symbol except ``.L`` labels, which are local to
their file.  Each section is assembled in one keystone call at its final
address; labels of other sections and predefined constants reach it as
``.equ`` definitions.  Keystone's symbol-resolver callback is not used: it
encodes PC-relative references to resolved symbols 4 bytes off.

After assembly every instruction is checked: keystone silently turns an
absolute memory operand into a RIP-relative one (only right within ±2 GiB),
and encodes ``[rip + SYM]`` with a symbol from another section as an
absolute displacement.  Both are reported as errors with file and line.
"""

from emu.asm.image import Image, Insn, Line, Section, Site, Stmt
from emu.asm.linker import link, substitute_constants
from emu.asm.source import strip_comment

__all__ = ["Image", "Insn", "Line", "Section", "Site", "Stmt", "link", "strip_comment", "substitute_constants"]
