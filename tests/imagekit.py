"""Helpers for the image tests: the committed real-kernel fixtures
(tests/fixtures/linux61-*, made by scripts/make_fixtures.py), and other
image formats built from them (raw, QEMU-style and kdump-style ELF cores)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from emu.hw.image import ImageMem, note_bytes

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NAMES = ("linux61-4level", "linux61-4level-kaslr", "linux61-5level-kaslr", "linux61-4level-3g")


@dataclass(frozen=True)
class Fixture:
    name: str

    def path(self, ext: str) -> Path:
        return FIXTURES / f"{self.name}.{ext}"

    @property
    def elf(self) -> str:
        return str(self.path("elf"))

    @property
    def info(self) -> dict[str, int]:
        out = {}
        for line in self.path("info.txt").read_text().splitlines():
            k, v = line.split(None, 1)
            out[k] = int(v, 0)
        return out

    @property
    def probe(self) -> dict[str, int]:
        """``memfd_secret page``, ``THP range``, ... -> the probe's address."""
        out = {}
        for line in self.path("probe.txt").read_text().splitlines():
            if " at 0x" in line:
                what, _, addr = line.removeprefix("probe: ").rpartition(" at ")
                out[what] = int(addr, 16)
        return out

    @property
    def pgd(self) -> int:
        return self.info["pgd"]

    def dump(self, which: str) -> str:
        return self.path(f"{which}.txt").read_text()

    @property
    def la57(self) -> bool:
        return bool(self.info["la57"])


FIXTURE_LIST = [Fixture(n) for n in NAMES]


def pages_of(path: str) -> list[tuple[int, bytes]]:
    """Every page present in an image, (physical address, 4 KiB)."""
    mem = ImageMem(path)
    out = []
    for start, end in mem.segments:
        for pa in range(start, end, 4096):
            out.append((pa, mem.read(pa, 4096)))
    mem.close()
    return out


def write_raw(path: Path, pages: list[tuple[int, bytes]]) -> None:
    """A pmemsave-style raw image: the pages at their physical addresses, zeros between (sparse)."""
    with open(path, "wb") as f:
        end = 0
        for pa, data in pages:
            f.seek(pa)
            f.write(data)
            end = max(end, pa + len(data))
        f.truncate(end)


_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")


def qemu_cpu_note(cr0: int, cr3: int, cr4: int) -> bytes:
    """QEMU's QEMUCPUState note (target/i386/arch_dump.c): version 1, GPRs zero."""
    desc = struct.pack("<II", 1, 0x1B8) + bytes(8 * 18 + 24 * 10) + struct.pack("<5QQ", cr0, 0, 0, cr3, cr4, 0)
    return note_bytes("QEMU", 0, desc)


def write_elf(path: Path, segments: list[tuple[int, bytes]], notes: bytes, *, misalign: int = 0) -> None:
    """An ELF core with one PT_LOAD per (physical address, data); ``misalign``
    shifts the data off page alignment in the file, as QEMU's cores are."""
    phnum = 1 + len(segments)
    note_off = 64 + phnum * 56
    off = note_off + len(notes) + misalign
    phdrs = [_PHDR.pack(4, 0, note_off, 0, 0, len(notes), len(notes), 0)]
    for pa, data in segments:
        phdrs.append(_PHDR.pack(1, 7, off, 0, pa, len(data), len(data), 0))
        off += len(data)
    ehdr = _EHDR.pack(b"\x7fELF\x02\x01\x01" + bytes(9), 4, 62, 1, 0, 64, 0, 0, 64, 56, phnum, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(ehdr + b"".join(phdrs) + notes + bytes(misalign))
        for _, data in segments:
            f.write(data)


def runs(pages: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """Physically contiguous pages joined into segments."""
    out: list[tuple[int, bytearray]] = []
    for pa, data in pages:
        if out and out[-1][0] + len(out[-1][1]) == pa:
            out[-1][1].extend(data)
        else:
            out.append((pa, bytearray(data)))
    return [(pa, bytes(d)) for pa, d in out]
