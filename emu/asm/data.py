"""Constants and data directives, evaluated by the linker itself.

Keystone 0.9.2 truncates ``.long 0xffffffff81000000`` and ``.space 4,
0x1ff``, emits nothing for ``.word 0x10000`` and hangs on ``.word 0x10000,
5``, ``.byte 1,,2``, ``.zero -1`` and ``.quad 2**64`` (docs/assembler.md).
So keystone only ever sees ``.zero SIZE`` for a data statement, and the
linker writes the bytes once the layout has converged, refusing any value
that does not fit.  ``.equ``/``.set``/``NAME = value`` constants are
evaluated here too and reach keystone as numbers, like the predefined
constants (keystone mis-assembles a symbol under unary minus).
"""

from __future__ import annotations

from emu.asm.expr import ExprError, evaluate, fits, hexs, symbols_of
from emu.asm.image import Stmt
from emu.asm.syntax import DataSyntax
from emu.errors import AsmError

SELF = "@SELF@"


def _fail(st: Stmt, what: str) -> AsmError:
    return AsmError(f"{st.file}:{st.line}: {what}: {st.text}")


def value_of(st: Stmt, node: tuple, env) -> int:
    try:
        return evaluate(node, env)
    except KeyError as e:
        raise _fail(st, f"unknown symbol {e.args[0]!r}") from None
    except ExprError as e:
        raise _fail(st, str(e)) from None


def check_constants(consts: list[Stmt], taken: dict[str, str]) -> None:
    """Each constant is defined once and names no label or predefined symbol."""
    seen: dict[str, Stmt] = {}
    for st in consts:
        name = st.syntax.name
        if name in seen:
            o = seen[name]
            raise AsmError(f"{st.file}:{st.line}: constant {name!r} already defined at {o.file}:{o.line}")
        if name in taken:
            raise AsmError(f"{st.file}:{st.line}: constant {name!r} is already {taken[name]}")
        seen[name] = st


def evaluate_constants(consts: list[Stmt], env: dict[str, int], labels: set[str]) -> tuple[dict[str, int], set[str]]:
    """Values of the constants in source order (each may use the ones
    before it and any label); also the constants that stand for addresses
    (their value involves a label)."""
    values: dict[str, int] = {}
    addresses: set[str] = set()
    for st in consts:
        c = st.syntax
        values[c.name] = env[c.name] = value_of(st, c.node, env)
        if symbols_of(c.node) & (labels | addresses):
            addresses.add(c.name)
    return values, addresses


def data_size(st: Stmt, env) -> int:
    """Bytes the statement occupies; during the passes a count that is not
    yet right (labels still moving) counts as 0 until the final check."""
    total = 0
    for chunk in st.syntax.chunks:
        if chunk[0] == "bytes":
            total += len(chunk[1])
        elif chunk[0] == "int":
            total += chunk[1]
        else:
            total += max(0, value_of(st, chunk[1], env)) * chunk[2]
    return total


def data_bytes(st: Stmt, env, addr: int) -> bytes:
    """The statement's bytes with final symbol values; a value that does not
    fit its field is an error (never truncated)."""
    syntax: DataSyntax = st.syntax
    env = _WithSelf(env, addr)
    out = bytearray()
    for chunk in syntax.chunks:
        if chunk[0] == "bytes":
            out += chunk[1]
        elif chunk[0] == "int":
            size = chunk[1]
            v = value_of(st, chunk[2], env)
            if not fits(v, 8 * size):
                raise _fail(st, f"{hexs(v)} does not fit in {8 * size} bits")
            out += (v & ((1 << 8 * size) - 1)).to_bytes(size, "little")
        else:
            _, count_node, size, value_node = chunk
            count = value_of(st, count_node, env)
            if count < 0:
                raise _fail(st, f"negative count {count}")
            v = value_of(st, value_node, env)
            if size and not fits(v, 8 * size):
                raise _fail(st, f"fill value {hexs(v)} does not fit in {8 * size} bits")
            out += (v & ((1 << 8 * size) - 1)).to_bytes(size, "little") * count if size else b""
    return bytes(out)


class _WithSelf(dict):
    """``env`` plus @SELF@, the statement's own address (for .alternative)."""

    def __init__(self, env, addr: int):
        super().__init__()
        self.env, self.addr = env, addr

    def __missing__(self, key):
        if key == SELF:
            return self.addr
        return self.env[key]
