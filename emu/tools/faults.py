"""Faults in words: one format for every report (``isoemu test``, ``run``,
``trace``, the debugger).

``#PF error code 0x4 (not-present, read, user), CR2 0x..., RIP 0x...
(A:probe), space A.user``: the vector, its error code decoded (SDM Vol. 3A
4.7 for #PF, 6.13 for selector error codes), CR2, RIP with its symbol, and
the address space.
"""

from __future__ import annotations

from emu.hw.paging import error_code_words
from emu.hw.x86 import SELECTOR_ERROR_CODE_VECTORS, selector_error_code_words, vector_name


def describe_exception(vector: int, error_code: int | None, cr2: int | None, rip: int, symbol: str,
                       space: str | None) -> str:
    """``#PF error code 0x4 (not-present, read, user), CR2 0x..., RIP 0x... (A:probe), space A.user``"""
    parts = [vector_name(vector)]
    if error_code is not None:
        words = ""
        if vector == 14:
            words = f" ({error_code_words(error_code)})"
        elif vector in SELECTOR_ERROR_CODE_VECTORS and error_code:
            words = f" ({selector_error_code_words(error_code)})"
        parts[0] += f" error code {error_code:#x}{words}"
    if vector == 14 and cr2 is not None:
        parts.append(f"CR2 {cr2:#x}")
    parts.append(f"RIP {rip:#x} ({symbol})")
    if space:
        parts.append(f"space {space}")
    return ", ".join(parts)


def fatal_report(machine, pid: int) -> list[str]:
    """Why process ``pid`` was killed, for ``isoemu run`` and ``trace``:
    the signal, the fault that raised it, and the source line when known.
    Empty if the process exited normally (or has not exited)."""
    info = machine.exits.get(pid)
    if not info or not info.get("signal"):
        return []
    lines = [f"process {info['name']} was killed by {info['signal']}"]
    fault = info.get("fault")
    if fault is not None:
        proc = next((p for p in machine.processes if p.pid == pid), None)
        rip = fault["rip"]
        lines.append(describe_exception(fault["vector"], fault["error_code"], fault["cr2"], rip,
                                        machine.symbolize(rip, proc), machine.space_of(fault["cr3"])))
        line = proc.image.line_at(rip) if proc is not None and rip < machine.layout.kernel_half else None
        if line is not None:
            lines.append(f"at {line.file}:{line.line}: {line.text}")
    return lines
