import os
import struct
import tempfile

# Linked images are cached on disk (emu/asm/cache.py): the suite keeps its own
# cache out of the user's, shared by the xdist workers and by later runs.
os.environ.setdefault("ISOEMU_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"isoemu-test-cache-{os.getuid()}"))

import pytest

from emu.hw.phys import FrameKind, PhysMem


@pytest.fixture
def mem():
    m = PhysMem(64 << 20)
    yield m
    m.close()


class RawTables:
    """Hand-built page tables: every entry value is chosen by the test."""

    def __init__(self, mem: PhysMem, levels: int = 4):
        self.mem = mem
        self.levels = levels
        self.root = self.table()

    def table(self) -> int:
        return self.mem.frames.alloc(FrameKind.PGTABLE)

    def set(self, table: int, index: int, value: int) -> int:
        struct.pack_into("<Q", self.mem.buf, table + 8 * index, value)
        return table + 8 * index

    def chain(self, va: int, flags: list[int], leaf_pa: int) -> list[int]:
        """Entries from the top down to a leaf: flags[i] for level i.

        Intermediate entries point at fresh tables; the last entry maps
        ``leaf_pa``.  Returns the entry addresses.
        """
        t = self.root
        shift = 12 + 9 * (self.levels - 1)
        out = []
        for i, f in enumerate(flags):
            idx = (va >> shift) & 511
            if i == len(flags) - 1:
                out.append(self.set(t, idx, leaf_pa | f))
            else:
                existing = struct.unpack_from("<Q", self.mem.buf, t + 8 * idx)[0]
                nt = existing & 0x000FFFFFFFFFF000 if existing else self.table()
                out.append(self.set(t, idx, nt | f))
                t = nt
            shift -= 9
        return out


@pytest.fixture
def raw(mem):
    return RawTables(mem)


@pytest.fixture
def summary(record_property):
    """Print a line in the session summary (works under pytest-xdist).

    ``summary("mmu differential: 12345 cases, 0 disagreements")``
    """
    def add(text: str) -> None:
        record_property("summary", text)
    return add


def pytest_terminal_summary(terminalreporter):
    lines = []
    for key in ("passed", "failed"):
        for rep in terminalreporter.stats.get(key, []):
            for name, value in getattr(rep, "user_properties", ()):
                if name == "summary" and rep.when == "call":
                    lines.append(str(value))
    if lines:
        terminalreporter.section("isoemu case counts")
        for line in sorted(lines):
            terminalreporter.write_line(line)
