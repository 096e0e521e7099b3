"""What the linker produces: sections, symbols, the line table, decoded
instructions, and the stub's declared sites (docs/architecture.md)."""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

#: names the linker gives its own statement labels (never symbolised)
SYM_PREFIX = "__isoemu_s"


@dataclass
class Stmt:
    file: str
    line: int
    text: str           # the statement without labels and comments
    labels: list[str]
    kind: str           # insn | data | const | empty
    section: str
    index: int = 0      # position within its section
    syntax: object = None   # what emu/asm/syntax.py read (InsnSyntax, DataSyntax, ConstSyntax)


@dataclass
class Section:
    name: str
    base: int
    stmts: list[Stmt] = field(default_factory=list)
    data: bytes = b""
    size: int = 0        # bytes occupied (a .bss section has size but no data)
    nobits: bool = False


@dataclass(frozen=True)
class Line:
    addr: int
    size: int
    file: str
    line: int
    text: str


@dataclass(frozen=True)
class Insn:
    addr: int
    size: int
    mnemonic: str
    op_str: str
    bytes: bytes


@dataclass(frozen=True)
class Site:
    """A place in the stub that Python observes, declared in the source
    (docs/architecture.md, "The stub contract")."""

    kind: str            # cr0_write | cr3_write | cr4_write | invlpg | hook
    name: str            # the hook's name; for the others the instruction's text
    addr: int
    size: int            # of the instruction
    operand: str         # the register written to CR3/CR4, or the invlpg memory operand
    noflush: bool        # cr3_write: the value may carry NOFLUSH (CR3 bit 63)
    after: str           # the instruction just before it ('' at a section start, '?' after
                         # other bytes): the CPU layer decides from it whether every arrival
                         # starts a translated block
    file: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class Image:
    """A linked program: section bytes at their addresses, symbols, tables."""

    sections: dict[str, Section]
    symbols: dict[str, int]
    lines: list[Line]
    extable: list[tuple[int, int, int]]          # (insn, fixup, type), sorted
    alternatives: list[tuple[int, str]]          # (address of a 5-byte jmp, feature)
    insns: list[Insn]                            # every decoded instruction of code sections
    digest: str = ""
    labels: frozenset[str] = frozenset()         # the names that are labels (not constants)
    sites: list[Site] = field(default_factory=list)   # declared sites, in address order
    _sym_sorted: list[tuple[int, str]] = field(default_factory=list, repr=False)
    _line_addrs: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self):
        names = self.labels or self.symbols.keys()
        self._sym_sorted = sorted((self.symbols[n], n) for n in names
                                  if not n.startswith(".L") and not n.startswith(SYM_PREFIX))
        self.lines.sort(key=lambda ln: ln.addr)
        self._line_addrs = [ln.addr for ln in self.lines]

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_derived", None)        # derived values and memos: not part of the image
        return state

    def derived(self, name: str, fn):
        """``fn(self)``, computed once per image and kept with it (a scan of
        the instructions that every boot of a machine would otherwise make)."""
        memo = self.__dict__.setdefault("_derived", {})
        try:
            return memo[name]
        except KeyError:
            v = memo[name] = fn(self)
            return v

    def symbolize(self, addr: int, limit: int = 1 << 20) -> str | None:
        """``name+0xoff`` for an address inside the image, else None."""
        if limit == 1 << 20:
            memo = self.derived("symbolize", _new_memo)        # every event symbolizes its RIP
            try:
                return memo[addr]
            except KeyError:
                if len(memo) >= 1 << 16:       # a tracer's data addresses: bounded
                    memo.clear()
                s = memo[addr] = self._symbolize(addr, limit)
                return s
        return self._symbolize(addr, limit)

    def _symbolize(self, addr: int, limit: int) -> str | None:
        i = bisect_right(self._sym_sorted, (addr, "\uffff")) - 1
        if i < 0:
            return None
        a, name = self._sym_sorted[i]
        if addr - a > limit or not self.contains(addr):
            return None
        return name if addr == a else f"{name}+{addr - a:#x}"

    def contains(self, addr: int) -> bool:
        return any(s.base <= addr < s.base + s.size for s in self.sections.values())

    def line_at(self, addr: int) -> Line | None:
        i = bisect_right(self._line_addrs, addr) - 1
        if i >= 0 and addr < self.lines[i].addr + max(self.lines[i].size, 1):
            return self.lines[i]
        return None

    def sites_of(self, kind: str) -> list[Site]:
        return [s for s in self.sites if s.kind == kind]

    def site(self, kind: str, name: str) -> Site | None:
        """The declared site of ``kind`` named ``name`` (a hook), or None."""
        return next((s for s in self.sites if s.kind == kind and s.name == name), None)

    def section_of(self, addr: int) -> Section | None:
        for s in self.sections.values():
            if s.base <= addr < s.base + s.size:
                return s
        return None


def _new_memo(img: Image) -> dict:
    """A fresh memo for :meth:`Image.derived` (symbolize's)."""
    return {}


# --- parsing ---------------------------------------------------------------------
