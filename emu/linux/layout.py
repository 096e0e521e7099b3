"""The Linux x86-64 virtual address map (Documentation/arch/x86/x86_64/mm.rst) as data.

4-level and 5-level (LA57) layouts differ in the low kernel half; the top
2 GiB are the same.  :func:`layout_for` is the built-in machine's layout
(the stub builder maps its kernel by it); :func:`linux_layout` is a
distribution kernel's, the default for memory images: the same map but
with ``MODULES_VADDR`` where a ``CONFIG_RANDOMIZE_BASE=y`` kernel puts it
(``__START_KERNEL_map + KERNEL_IMAGE_SIZE``, 1 GiB; even booted with
``nokaslr``).

Every base is overridable by name (:data:`LAYOUT_KEYS`, ``--layout KEY=VALUE``
and layout files, docs/images.md): KASLR (CONFIG_RANDOMIZE_MEMORY) moves
``page_offset_base``, ``vmalloc_base`` and ``vmemmap_base``; a marker a
kernel does not have (no CONFIG_MODIFY_LDT_SYSCALL, no CONFIG_EFI) is
``none``, and KASAN's shadow markers exist only when given.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from emu.errors import ConfigError
from emu.parse import parse_hex

TB = 1 << 40
#: VMALLOC_SIZE_TB_L4 / _L5 (arch/x86/include/asm/pgtable_64_types.h)
VMALLOC_SIZE = {4: 32 * TB, 5: 12800 * TB}


@dataclass(frozen=True)
class Layout:
    levels: int
    va_bits: int
    user_end: int               # first non-user address (TASK_SIZE_MAX rounded)
    ldt_base: int | None        # LDT remap for PTI (None: no CONFIG_MODIFY_LDT_SYSCALL)
    page_offset: int            # direct map (page_offset_base)
    direct_map_size: int
    vmalloc_start: int          # vmalloc_base
    vmalloc_end: int
    vmemmap_start: int          # vmemmap_base
    cpu_entry_area: int         # CPU_ENTRY_AREA_BASE
    espfix_base: int | None     # ESPFIX_BASE_ADDR (None: no CONFIG_X86_ESPFIX64)
    efi_va_end: int | None      # EFI_VA_END (None: no CONFIG_EFI)
    kernel_map: int             # __START_KERNEL_map
    kernel_text: int            # __START_KERNEL (physical_start 16 MiB)
    modules_vaddr: int
    modules_end: int
    fixaddr_start: int
    vsyscall: int
    guard_hole_end: int = 0     # GUARD_HOLE_END_ADDR: where ptdump's kernel range starts
    kasan_shadow_start: int | None = None
    kasan_shadow_end: int | None = None

    def __post_init__(self):
        if not self.guard_hole_end:
            # 16 top-level entries from the bottom of the kernel half (pgtable_64_types.h)
            object.__setattr__(self, "guard_hole_end", self.kernel_half + (16 << (self.va_bits - 9)))

    @property
    def kernel_half(self) -> int:
        """Lowest canonical kernel-half address."""
        return (-1 << (self.va_bits - 1)) & 0xFFFFFFFFFFFFFFFF

    def canonical(self, va: int) -> bool:
        top = va >> (self.va_bits - 1)
        return top == 0 or top == (1 << (65 - self.va_bits)) - 1

    def is_user(self, va: int) -> bool:
        return va < self.user_end

    def markers(self) -> list[tuple[int, str]]:
        """ptdump section markers in order (arch/x86/mm/dump_pagetables.c
        address_markers); a marker the kernel does not have is left out."""
        out = [
            (0, "User Space"),
            (1 << 63, "Kernel Space"),
            (self.ldt_base, "LDT remap"),
            (self.page_offset, "Low Kernel Mapping"),
            (self.vmalloc_start, "vmalloc() Area"),
            (self.vmemmap_start, "Vmemmap"),
            (self.kasan_shadow_start, "KASAN shadow"),
            (self.kasan_shadow_end, "KASAN shadow end"),
            (self.cpu_entry_area, "CPU entry Area"),
            (self.espfix_base, "ESPfix Area"),
            (self.efi_va_end, "EFI Runtime Services"),
            (self.kernel_map, "High Kernel Mapping"),
            (self.modules_vaddr, "Modules"),
            (self.modules_end, "End Modules"),
            (self.fixaddr_start, "Fixmap Area"),
        ]
        return [(a, n) for a, n in out if a is not None]

    def values(self) -> dict[str, int | None]:
        """Every overridable base by its key (:data:`LAYOUT_KEYS`)."""
        return {key: getattr(self, attr) for key, (attr, _, _) in LAYOUT_KEYS.items()}

    def with_values(self, values: dict[str, int | None]) -> "Layout":
        """This layout with bases replaced by key; ``vmalloc_end`` follows
        ``vmalloc_base`` (VMALLOC_SIZE_TB after it)."""
        kw = {}
        for key, v in values.items():
            attr, optional, _ = _key(key)
            if v is None and not optional:
                raise ConfigError(f"layout {key}: every {self.levels}-level kernel has one; "
                                  f"'none' is only for {', '.join(k for k, o in LAYOUT_KEYS.items() if o[1])}")
            kw[attr] = v
        if "vmalloc_start" in kw:
            kw["vmalloc_end"] = kw["vmalloc_start"] + VMALLOC_SIZE[self.levels] - 1
        out = replace(self, **kw)
        _check_order(out)
        return out


#: key -> (Layout attribute, may be none, what it is)
LAYOUT_KEYS: dict[str, tuple[str, bool, str]] = {
    "page_offset_base": ("page_offset", False, "the direct map of all RAM (PAGE_OFFSET)"),
    "vmalloc_base": ("vmalloc_start", False, "vmalloc and ioremap space (VMALLOC_START)"),
    "vmemmap_base": ("vmemmap_start", False, "the struct page array (VMEMMAP_START)"),
    "ldt_base": ("ldt_base", True, "the PTI LDT remap (LDT_BASE_ADDR)"),
    "kasan_shadow_start": ("kasan_shadow_start", True, "KASAN shadow (KASAN_SHADOW_START)"),
    "kasan_shadow_end": ("kasan_shadow_end", True, "KASAN shadow end (KASAN_SHADOW_END)"),
    "cpu_entry_area": ("cpu_entry_area", False, "CPU_ENTRY_AREA_BASE"),
    "espfix_base": ("espfix_base", True, "ESPFIX_BASE_ADDR"),
    "efi_va_end": ("efi_va_end", True, "EFI runtime services (EFI_VA_END)"),
    "kernel_map": ("kernel_map", False, "the kernel image mapping (__START_KERNEL_map)"),
    "modules_vaddr": ("modules_vaddr", False, "MODULES_VADDR (__START_KERNEL_map + KERNEL_IMAGE_SIZE)"),
    "modules_end": ("modules_end", False, "MODULES_END"),
    "fixaddr_start": ("fixaddr_start", False, "FIXADDR_START"),
}


def _key(key: str) -> tuple[str, bool, str]:
    try:
        return LAYOUT_KEYS[key]
    except KeyError:
        raise ConfigError(f"unknown layout key {key!r}: use one of {', '.join(LAYOUT_KEYS)}") from None


def _check_order(lay: Layout) -> None:
    """ptdump's markers advance in address order: refuse a layout out of order."""
    prev = None
    for addr, name in lay.markers():
        if prev is not None and addr < prev[0]:
            raise ConfigError(f"layout: {name} at {addr:#x} is below {prev[1]} at {prev[0]:#x}; "
                              f"the regions must be in address order")
        prev = (addr, name)


_COMMON_TOP = dict(
    cpu_entry_area=0xFFFFFE0000000000,
    espfix_base=0xFFFFFF0000000000,
    efi_va_end=0xFFFFFFEF00000000,
    kernel_map=0xFFFFFFFF80000000,
    kernel_text=0xFFFFFFFF81000000,
    modules_vaddr=0xFFFFFFFFA0000000,
    modules_end=0xFFFFFFFFFF000000,
    fixaddr_start=0xFFFFFFFFFF579000,
    vsyscall=0xFFFFFFFFFF600000,
)

LAYOUT_4LEVEL = Layout(
    levels=4, va_bits=48,
    user_end=0x0000800000000000,
    ldt_base=0xFFFF880000000000,
    page_offset=0xFFFF888000000000,
    direct_map_size=64 << 40,
    vmalloc_start=0xFFFFC90000000000,
    vmalloc_end=0xFFFFE8FFFFFFFFFF,
    vmemmap_start=0xFFFFEA0000000000,
    **_COMMON_TOP,
)

LAYOUT_5LEVEL = Layout(
    levels=5, va_bits=57,
    user_end=0x0100000000000000,
    ldt_base=0xFF10000000000000,
    page_offset=0xFF11000000000000,
    direct_map_size=32 << 50,
    vmalloc_start=0xFFA0000000000000,
    vmalloc_end=0xFFD1FFFFFFFFFFFF,
    vmemmap_start=0xFFD4000000000000,
    **_COMMON_TOP,
)

#: KERNEL_IMAGE_SIZE with CONFIG_RANDOMIZE_BASE=y (arch/x86/include/asm/page_64_types.h)
KERNEL_IMAGE_SIZE_KASLR = 1 << 30


def layout_for(levels: int) -> Layout:
    """The built-in machine's layout (its stub kernel's modules area at 0xffffffffa0000000)."""
    return LAYOUT_5LEVEL if levels == 5 else LAYOUT_4LEVEL


def linux_layout(levels: int) -> Layout:
    """A distribution kernel's layout before KASLR: the default for memory images."""
    lay = layout_for(levels)
    return replace(lay, modules_vaddr=lay.kernel_map + KERNEL_IMAGE_SIZE_KASLR)


# --- overrides: --layout KEY=VALUE and layout files -----------------------------------------
def parse_layout_value(key: str, text: str, where: str = "--layout") -> int | None:
    _, optional, _ = _key(key)
    t = text.strip()
    if t.lower() == "none":
        if not optional:
            raise ConfigError(f"{where} {key}=none: every kernel has a {key}")
        return None
    return parse_hex(t, f"{where} {key} value")


def parse_layout_assignments(items: list[str], where: str = "--layout") -> dict[str, int | None]:
    """``KEY=VALUE`` items (comma-separated lists too): hexadecimal addresses,
    0x optional, or ``none``.  A key given twice with two values is refused."""
    out: dict[str, int | None] = {}
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or not value.strip():
                raise ConfigError(f"{where} {part!r}: expected KEY=VALUE, e.g. page_offset_base=ffff888000000000")
            v = parse_layout_value(key, value, where)
            if key in out and out[key] != v:
                raise ConfigError(f"{where}: {key} given twice ({_show(out[key])} and {_show(v)})")
            out[key] = v
    return out


def read_layout_file(path: str) -> dict[str, int | None]:
    """A layout file: ``KEY = VALUE`` lines (``=`` or blanks between), ``#``
    comments; the format ``isoemu image info --layout-out`` writes."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read layout file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"layout file {path}: not UTF-8 text") from None
    out: dict[str, int | None] = {}
    for n, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        key, sep, value = text.partition("=")
        if not sep:
            parts = text.split()
            if len(parts) != 2:
                raise ConfigError(f"{path}:{n}: expected 'KEY = VALUE', not {line.strip()!r}")
            key, value = parts
        for k, v in parse_layout_assignments([f"{key.strip()}={value.strip()}"], where=f"{path}:{n}:").items():
            if k in out and out[k] != v:
                raise ConfigError(f"{path}:{n}: {k} given twice ({_show(out[k])} and {_show(v)})")
            out[k] = v
    return out


def _show(v: int | None) -> str:
    return "none" if v is None else f"{v:#x}"


def format_layout(lay: Layout, sources: dict[str, str] | None = None) -> list[str]:
    """``key = value  # source`` lines: a layout file :func:`read_layout_file` reads back."""
    out = []
    for key, v in lay.values().items():
        src = (sources or {}).get(key)
        out.append(f"{key:<19}= {_show(v):<20}" + (f"# {src}" if src else "").rstrip())
    return [line.rstrip() for line in out]
