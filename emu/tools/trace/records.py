"""What the tracer hands out: one :class:`Record` per access (piece), and
the names of its fields and kinds."""

from __future__ import annotations

from operator import itemgetter
from typing import Iterable

from emu.errors import ConfigError

KINDS = "rwx"
FIELDS = ("seq", "rip", "symbol", "cpl", "cr3", "pcid", "space", "kind", "va", "size", "pa", "fault")
# the walker's access argument (emu.hw.paging.translate) of each kind
ACCESS = {"r": 0, "w": 1, "x": 2}


class Record(tuple):
    """One access.  ``seq`` numbers the executed blocks and memory-touching
    instructions in order (all records of one instruction share it, its
    exception frame included); ``rip``/``symbol`` name the instruction (for
    ``x``, the block's start); ``cpl`` is the privilege of the access (0 for
    the frame written by exception delivery); ``cr3`` is the page-table base
    and ``pcid`` CR3's low 12 bits when CR4.PCIDE is set (else None);
    ``fault`` is None or ``{"vector": v, "error_code": ec}``, and then ``pa``
    is None.

    The tracer keeps records as plain tuples in the order of :data:`FIELDS`
    until someone looks (see :class:`~emu.tools.trace.tracer.Tracer`)."""

    __slots__ = ()

    seq = property(itemgetter(0))
    rip = property(itemgetter(1))
    symbol = property(itemgetter(2))
    cpl = property(itemgetter(3))
    cr3 = property(itemgetter(4))
    pcid = property(itemgetter(5))
    space = property(itemgetter(6))
    kind = property(itemgetter(7))
    va = property(itemgetter(8))
    size = property(itemgetter(9))
    pa = property(itemgetter(10))
    fault = property(itemgetter(11))

    def as_dict(self, hex_addresses: bool = False) -> dict:
        """Exactly the keys of :data:`FIELDS`; ``hex_addresses`` writes rip,
        cr3, va and pa as ``0x...`` strings (as the CLI's JSON does)."""
        d = dict(zip(FIELDS, self))
        if d["fault"] is not None:
            d["fault"] = dict(d["fault"])
        if hex_addresses:
            for k in ("rip", "cr3", "va", "pa"):
                if d[k] is not None:
                    d[k] = f"{d[k]:#x}"
        return d

    def __repr__(self):
        where = f"pa={self.pa:#x}" if self.fault is None else \
            f"fault=#{self.fault['vector']}({self.fault['error_code']:#x})"
        return (f"Record(#{self.seq} {self.symbol} cpl{self.cpl} {self.space} {self.kind} "
                f"va={self.va:#x}+{self.size} {where})")


def parse_kinds(kinds: str | Iterable[str]) -> str:
    """``"rw"``, ``["r", "x"]``... -> a string of distinct kinds in ``rwx`` order."""
    letters = "".join(kinds) if not isinstance(kinds, str) else kinds
    bad = sorted(set(letters) - set(KINDS))
    if bad or not letters:
        raise ConfigError(f"bad access kind {letters!r}: use r, w, x or a combination such as rw")
    return "".join(k for k in KINDS if k in letters)
