"""The TLB model's table graph finds the pointers of a table from the
entries' low bytes (emu/hw/tlb/graph.py, ``_scan``): the same parents, in
the same order, as testing every non-zero entry with ``mode.is_leaf``."""

from __future__ import annotations

import random
import struct
from itertools import compress

import pytest

from emu.hw.paging import ADDR_MASK, P, mode_for
from emu.hw.phys import PhysMem
from emu.hw.tlb.graph import TableGraph
from emu.linux.config import MachineConfig
from emu.linux.machine import Machine


class ReferenceGraph(TableGraph):
    """_scan as it was: every non-zero entry tested in Python."""

    def _scan(self, table, depth):
        if table in self._scanned or depth >= self.mode.depth - 1:
            return
        ents = self.mem.page_words(table)
        if ents is None:
            return
        self._scanned.add(table)
        level = self.mode.levels[depth]
        for i in compress(range(512), ents):
            e = ents[i]
            if e & P and not self.mode.is_leaf(level, e):
                child = e & ADDR_MASK
                self.parents.setdefault(child, set()).add(table + 8 * i)
                self._scan(child, depth + 1)


def _graphs(mem, mode, roots):
    out = []
    for cls in (TableGraph, ReferenceGraph):
        g = cls(mem, mode)
        for r in roots:
            g.add_root(r)
        out.append((list(g.parents.items()), list(g._scanned), sorted(g.roots)))
    return out


@pytest.mark.parametrize("kw", [{}, {"la57": True}, {"pti": False, "asi": "rfc2019"}, {"ram": 4 << 30},
                                {"unmapped": "reserved"}])
def test_the_machines_tables(kw):
    m = Machine(MachineConfig(**kw), programs=[("A", "_start:\n mov eax, SYS_exit\n xor edi, edi\n syscall\n")])
    m.boot()
    new, ref = _graphs(m.mem, mode_for(m.config.levels), m.spaces().values())
    assert new == ref and len(new[0]) > 5
    m.mem.close()


@pytest.mark.parametrize("levels", [4, 5])
def test_random_tables(levels):
    """Tables whose entries have every low byte: P and PS in all four
    combinations and every other bit, at every level, pointing at each other."""
    rng = random.Random(levels)
    mem = PhysMem(32 << 20)
    mode = mode_for(levels)
    tables = [0x100000 + 0x1000 * i for i in range(40)]
    for t in tables:
        words = [0] * 512
        for i in rng.sample(range(512), 60):
            words[i] = rng.choice(tables) | rng.randrange(256) | (rng.randrange(2) << 63)
        mem.write(t, struct.pack("<512Q", *words))
    new, ref = _graphs(mem, mode, tables[:3])
    assert new == ref and len(new[0]) > 10
    mem.close()
