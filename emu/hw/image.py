"""Physical-memory images of other machines: formats, holes and registers.

The format is detected from the file's first bytes, never from its name
(docs/images.md, "Formats"):

* **raw**: physical memory from address 0, every byte present (QEMU's
  ``pmemsave 0 SIZE FILE``, ``/dev/mem`` copies).
* **ELF core** (``ET_CORE``, x86-64): QEMU's ``dump-guest-memory`` and
  ``virsh dump --memory-only``, kdump's ``/proc/vmcore`` (and
  ``makedumpfile -E``), and ``isoemu image extract`` output.  Memory is the
  ``PT_LOAD`` segments placed at their physical addresses (``p_paddr``);
  an address no segment covers is a hole, and reading it is an error, never
  zeros.  The notes give registers and kernel facts (:class:`ImageNotes`).
* **kdump-compressed** (makedumpfile's default, ``dump-guest-memory -z``):
  refused, naming the conversion (``makedumpfile -E``).

Every format is read on demand: a raw image is mapped read-only; the pages
of an ELF core are copied from the file the first time a reader asks for
them (:meth:`ImageMem.ensure`), into one sparse buffer indexed by physical
address, so the walker reads a core exactly as it reads RAM and the host
memory used is the pages read.  (Segments of a QEMU core are not
page-aligned in the file, so they cannot be mapped in place.)
"""

from __future__ import annotations

import bisect
import mmap
import os
import re
import stat
import struct
import weakref
from array import array
from dataclasses import dataclass, field

from emu.errors import ImageError
from emu.hw.phys import PAGE_SIZE, PhysView

PAGE_MASK = ~(PAGE_SIZE - 1)
ELF_MAGIC = b"\x7fELF"
KDUMP_MAGICS = (b"KDUMP   ", b"DISKDUMP")
ET_CORE, EM_X86_64 = 4, 62
PT_LOAD, PT_NOTE = 1, 4
NT_PRSTATUS = 1
#: the largest physical address space an image may span (MAXPHYADDR 52)
MAX_PHYS = 1 << 52
#: the name of isoemu's own note in ``image extract`` output
ISOEMU_NOTE = "ISOEMU"

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_NHDR = struct.Struct("<III")
# QEMU's QEMUCPUState (target/i386/arch_dump.c): version, size, 16 GPRs,
# rip, rflags, 10 segments of 24 bytes, cr[0..4], kernel_gs_base
_QEMU_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
              "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")
_QEMU_CR_OFFSET = 8 + 8 * len(_QEMU_GPRS) + 24 * 10
# NT_PRSTATUS (struct elf_prstatus, x86-64): 112 bytes of header, then
# user_regs_struct: r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi
# orig_rax rip cs eflags rsp ss fs_base gs_base ds es fs gs
_PRSTATUS_REGS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
                  "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "rflags", "rsp", "ss")


@dataclass
class ImageNotes:
    """What an image says about the machine it came from."""

    cpus: list[dict[str, int]] = field(default_factory=list)   # registers per CPU (CR0/CR3/CR4 from QEMU)
    vmcoreinfo: dict[str, str] = field(default_factory=dict)   # the kernel's VMCOREINFO note
    isoemu: dict[str, str] = field(default_factory=dict)       # image extract's note
    sources: list[str] = field(default_factory=list)           # the notes found, by name


class ImageMem(PhysView):
    """A physical-memory image, read-only, holes and all.

    ``segments`` are the present ranges ``(start, end)``; ``format`` the
    detected format; ``notes`` the ELF notes (:class:`ImageNotes`).  Readers
    call :meth:`ensure` (or :meth:`page_words`, :meth:`read`) before touching
    ``buf`` directly: it brings the pages in and says whether they exist.
    """

    lazy = False

    def __init__(self, path: str):
        self.path = os.fspath(path)
        self.name = f"image {os.path.basename(self.path)}"
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            raise ImageError(f"cannot open image {self.path}: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) and not stat.S_ISBLK(st.st_mode):
                kind = "a directory" if stat.S_ISDIR(st.st_mode) else \
                    "a FIFO" if stat.S_ISFIFO(st.st_mode) else "not a regular file"
                raise ImageError(f"image {self.path} is {kind}: give a memory image or core file")
            file_size = st.st_size
            if file_size == 0:
                raise ImageError(f"image {self.path} is empty")
            head = os.pread(fd, 64, 0)
            self.notes = ImageNotes()
            if head.startswith(ELF_MAGIC):
                self._open_elf(fd, file_size, head)
                return                           # the descriptor stays open for the lazy reads
            if head[:8] in KDUMP_MAGICS:
                raise ImageError(f"{self.path} is in kdump-compressed format (makedumpfile's default, "
                                 f"dump-guest-memory -z): convert it to an ELF core with "
                                 f"'makedumpfile -E -d 0 {os.path.basename(self.path)} OUT'")
            if head.startswith(b"\x1f\x8b"):
                raise ImageError(f"{self.path} is gzip-compressed: decompress it first")
            self._open_raw(fd, file_size)
        finally:
            if not self.lazy:
                os.close(fd)

    # -- formats ------------------------------------------------------------------------
    def _open_raw(self, fd: int, size: int) -> None:
        self.format = "raw"
        self.buf = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        self.size = size
        self.segments = [(0, size)]

    def _open_elf(self, fd: int, file_size: int, head: bytes) -> None:
        if len(head) < _EHDR.size or head[4] != 2 or head[5] != 1:
            raise ImageError(f"{self.path}: an ELF file, but not 64-bit little-endian")
        (_, e_type, e_machine, _, _, e_phoff, _, _, _, e_phentsize, e_phnum, _, _, _) = _EHDR.unpack(head)
        if e_type != ET_CORE:
            raise ImageError(f"{self.path}: an ELF file of type {e_type}, not a core file (ET_CORE): "
                             f"a kernel binary is not a memory image")
        if e_machine != EM_X86_64:
            raise ImageError(f"{self.path}: an ELF core for machine {e_machine}, not x86-64")
        if e_phentsize != _PHDR.size or e_phnum == 0 or e_phoff + e_phnum * _PHDR.size > file_size:
            raise ImageError(f"{self.path}: malformed ELF program headers")
        phdrs = [_PHDR.unpack_from(os.pread(fd, e_phnum * _PHDR.size, e_phoff), i * _PHDR.size)
                 for i in range(e_phnum)]
        loads = []
        for p_type, _, p_offset, _, p_paddr, p_filesz, p_memsz, _ in phdrs:
            if p_type == PT_NOTE:
                self._read_notes(os.pread(fd, p_filesz, p_offset))
            elif p_type == PT_LOAD and p_memsz:
                if p_offset + p_filesz > file_size:
                    raise ImageError(f"{self.path} is truncated: the segment for physical "
                                     f"{p_paddr:#x}+{p_filesz:#x} ends at file offset "
                                     f"{p_offset + p_filesz:#x}, the file at {file_size:#x}")
                if p_paddr + p_memsz > MAX_PHYS:
                    raise ImageError(f"{self.path}: a segment at physical {p_paddr:#x}+{p_memsz:#x} "
                                     f"is beyond 52-bit physical addresses")
                loads.append((p_paddr, p_paddr + p_memsz, p_offset, p_filesz))
        if not loads:
            raise ImageError(f"{self.path}: an ELF core without memory (no PT_LOAD segment)")
        # Segments may overlap: /proc/vmcore describes the kernel image twice
        # (its own segment, by the kernel's virtual address, and inside the RAM
        # segment).  They are the same memory: each byte is read from the first
        # segment, by start address, that holds it.
        loads.sort()
        pieces = []
        covered = 0
        for start, stop, offset, filesz in loads:
            cur = max(start, covered)       # [start, covered) is already held by an earlier segment
            if cur < stop:
                pieces.append((cur, stop, offset + (cur - start), max(cur, start + filesz)))
            covered = max(covered, stop)
        loads = [(a, b, off, file_end - a) for a, b, off, file_end in pieces]
        self._loads = loads
        self._starts = [seg[0] for seg in loads]
        self.segments = _merge_ranges([(s, e) for s, e, _, _ in loads])
        self.size = (loads[-1][1] + PAGE_SIZE - 1) & PAGE_MASK
        try:
            self.buf = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except OSError as e:
            raise ImageError(f"cannot reserve {self.size:#x} bytes of address space for {self.path}: "
                             f"{e.strerror}") from None
        self._fd = fd
        self._closer = weakref.finalize(self, os.close, fd)
        # which pages are in: a byte per page up to 64 GiB (16 MiB), a set beyond
        self._have = bytearray(self.size >> 12) if self.size <= 1 << 36 else None
        self._have_set: set[int] = set()
        self.format = "elf"
        self.lazy = True

    def _read_notes(self, data: bytes) -> None:
        off = 0
        while off + _NHDR.size <= len(data):
            namesz, descsz, ntype = _NHDR.unpack_from(data, off)
            off += _NHDR.size
            name = data[off:off + namesz].rstrip(b"\0").decode("ascii", "replace")
            off += (namesz + 3) & ~3
            desc = data[off:off + descsz]
            off += (descsz + 3) & ~3
            self.notes.sources.append(name)
            if name == "QEMU" and len(desc) >= _QEMU_CR_OFFSET + 40:
                regs = dict(zip(_QEMU_GPRS, struct.unpack_from(f"<{len(_QEMU_GPRS)}Q", desc, 8)))
                cr = struct.unpack_from("<5Q", desc, _QEMU_CR_OFFSET)
                regs.update(cr0=cr[0], cr2=cr[2], cr3=cr[3], cr4=cr[4])
                self.notes.cpus.append(regs)
            elif name == "VMCOREINFO":
                for line in desc.decode("ascii", "replace").splitlines():
                    k, sep, v = line.partition("=")
                    if sep:
                        self.notes.vmcoreinfo[k.strip()] = v.strip()
            elif name == ISOEMU_NOTE:
                for line in desc.decode("utf-8", "replace").splitlines():
                    k, sep, v = line.partition("=")
                    if sep:
                        self.notes.isoemu[k.strip()] = v.strip()

    @property
    def description(self) -> str:
        if self.format == "raw":
            return "raw physical-memory image"
        if self.notes.isoemu:
            return "ELF core (isoemu image extract)"
        if "QEMU" in self.notes.sources:
            return "ELF core (QEMU dump-guest-memory)"
        if self.notes.vmcoreinfo:
            return "ELF core (kdump vmcore)"
        return "ELF core"

    # -- reading ------------------------------------------------------------------------
    def contains(self, pa: int, n: int = 1) -> bool:
        """Is every byte of [pa, pa+n) present (not outside, not in a hole)?"""
        if pa < 0 or pa + n > self.size:
            return False
        if not self.lazy:
            return True
        i = bisect.bisect_right(self.segments, (pa, 1 << 64)) - 1
        return i >= 0 and self.segments[i][0] <= pa and pa + n <= self.segments[i][1]

    def ensure(self, pa: int, n: int) -> bool:
        """Bring [pa, pa+n) into ``buf``; False if any of it is outside the image or in a hole."""
        if not self.lazy:
            return 0 <= pa and pa + n <= self.size
        if pa < 0 or pa + n > self.size:
            return False
        have = self._have
        first, last = pa >> 12, (pa + n - 1) >> 12
        for pfn in range(first, last + 1):
            if (have[pfn] if have is not None else pfn in self._have_set):
                continue
            if not self._load(pfn):
                return False
        return True

    def _load(self, pfn: int) -> bool:
        pa = pfn << 12
        i = bisect.bisect_right(self._starts, pa) - 1
        # a page may straddle segments (QEMU's are byte ranges): fill it piece by piece
        end = pa + PAGE_SIZE
        covered = 0
        j = max(i, 0)
        while j < len(self._loads) and self._loads[j][0] < end:
            start, stop, offset, filesz = self._loads[j]
            lo, hi = max(start, pa), min(stop, end)
            if lo < hi:
                file_hi = min(hi, start + filesz)
                if file_hi > lo:
                    data = os.pread(self._fd, file_hi - lo, offset + (lo - start))
                    if len(data) != file_hi - lo:
                        raise ImageError(f"{self.path}: short read at physical {lo:#x}")
                    self.buf[lo:file_hi] = data
                covered += hi - lo
            j += 1
        if covered == 0:
            return False
        # a partly covered page is loaded; contains() still refuses its hole bytes
        if self._have is not None:
            self._have[pfn] = 1
        else:
            self._have_set.add(pfn)
        return True

    @property
    def pages_loaded(self) -> int:
        """How many pages have been copied in from the file (0 for a raw image: mapped)."""
        if not self.lazy:
            return 0
        return self._have.count(1) if self._have is not None else len(self._have_set)

    def page_words(self, pa: int):
        """The 512 entries of the table at ``pa`` (page aligned), or None if absent."""
        if not self.contains(pa, PAGE_SIZE) or not self.ensure(pa, PAGE_SIZE):
            return None
        return array("Q", self.buf[pa:pa + PAGE_SIZE])

    def read(self, pa: int, n: int) -> bytes:
        if not self.contains(pa, n) or not self.ensure(pa, n):
            raise self._outside(pa, n)
        return self.buf[pa:pa + n]

    def read_u64(self, pa: int) -> int:
        return struct.unpack("<Q", self.read(pa, 8))[0]

    def _outside(self, pa: int, n: int) -> Exception:
        if 0 <= pa and pa + n <= self.size:
            return ImageError(f"physical address {pa:#x}+{n:#x} is in a hole of {self.name} "
                              f"(no memory there in the image)")
        return super()._outside(pa, n)

    def close(self) -> None:
        self.buf.close()
        if self.lazy:
            self._closer()
            self.lazy = False


def _merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


# --- writing: image extract's output ------------------------------------------------------------
def note_bytes(name: str, ntype: int, desc: bytes) -> bytes:
    nb = name.encode() + b"\0"
    return (_NHDR.pack(len(nb), len(desc), ntype) + nb + b"\0" * (-len(nb) % 4)
            + desc + b"\0" * (-len(desc) % 4))


def write_elf_core(path: str, runs: list[tuple[int, bytes]], notes: bytes) -> int:
    """An x86-64 ELF core: ``notes`` (from :func:`note_bytes`) in a PT_NOTE,
    then one PT_LOAD per run ``(physical address, data)``, each at a
    page-aligned file offset.  Returns the file size."""
    runs = sorted(runs)
    phnum = 1 + len(runs)
    note_off = _EHDR.size + phnum * _PHDR.size
    data_off = (note_off + len(notes) + PAGE_SIZE - 1) & PAGE_MASK
    ehdr = _EHDR.pack(ELF_MAGIC + bytes([2, 1, 1]) + bytes(9), ET_CORE, EM_X86_64, 1, 0, _EHDR.size, 0, 0,
                      _EHDR.size, _PHDR.size, phnum, 0, 0, 0)
    phdrs = [_PHDR.pack(PT_NOTE, 0, note_off, 0, 0, len(notes), 0, 0)]
    off = data_off
    for pa, data in runs:
        phdrs.append(_PHDR.pack(PT_LOAD, 4, off, 0, pa, len(data), len(data), PAGE_SIZE))
        off += (len(data) + PAGE_SIZE - 1) & PAGE_MASK
    try:
        with open(path, "wb") as f:
            f.write(ehdr + b"".join(phdrs) + notes)
            f.write(b"\0" * (data_off - f.tell()))
            for _, data in runs:
                f.write(data)
                f.write(b"\0" * (-len(data) % PAGE_SIZE))
            return f.tell()
    except OSError as e:
        raise ImageError(f"cannot write {path}: {e.strerror}") from None


# --- registers as QEMU's monitor prints them ------------------------------------------------------
_REG = re.compile(r"\b(RAX|RBX|RCX|RDX|RSI|RDI|RBP|RSP|R8 ?|R9 ?|R1[0-5]|RIP|RFL|CR0|CR2|CR3|CR4|EFER)"
                  r"\s*=\s*([0-9a-fA-F]+)")


def parse_info_registers(text: str, what: str = "register dump") -> list[dict[str, int]]:
    """``info registers`` (or ``info registers -a``) output: one dict per CPU,
    keys lower-case (cr0, cr3, cr4, efer, rip, ...).  Refuses text without
    CR3, or a 32-bit dump (EIP/CR3 without EFER's long mode)."""
    cpus: list[dict[str, int]] = []
    cur: dict[str, int] | None = None
    for line in text.splitlines():
        if line.startswith("CPU#") or cur is None and _REG.search(line):
            cur = {}
            cpus.append(cur)
            if line.startswith("CPU#"):
                continue
        for name, value in _REG.findall(line):
            key = name.strip().lower()
            cur[key if key != "rfl" else "rflags"] = int(value, 16)
    cpus = [c for c in cpus if c]
    if not cpus or any("cr3" not in c for c in cpus):
        raise ImageError(f"{what}: no CR3 found; expected QEMU's 'info registers' output "
                         f"(lines such as 'CR0=80050033 CR2=... CR3=000000001fd24000 CR4=00750ef0')")
    for c in cpus:
        missing = [r.upper() for r in ("cr0", "cr4", "efer") if r not in c]
        if missing:
            raise ImageError(f"{what}: no {', '.join(missing)} beside CR3; give the whole "
                             f"'info registers' output")
    return cpus
