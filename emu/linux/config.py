"""The machine's switches: one table for the asm test headers, ``--set`` and the API.

Each switch has a name, a kind (on/off, one of a few words, a list of
names, or a size), a default (the default machine: pti=auto on a
Meltdown-affected CPU, so PTI is on; PCID, ASI, SMEP, SMAP and NX on, 4-level
paging, 256 MiB) and one line of help.  ``; isoemu: pti=off`` in a test,
``isoemu matrix --set pti=off`` and ``MachineConfig(pti=False)`` mean the
same thing.  An unknown switch or value is refused with the nearest known one.

``asi`` chooses the address-space isolation design (docs/asi.md): ``off``,
``on`` (today's model: PTI and ASI together), ``rfc2019`` (the 2019 Oracle
RFC: PTI's two tables plus a restricted space entered for a class) and
``rfc2025`` (the 2025 Google RFC v2: PTI disabled, user code on the
restricted table).  With ``asi=rfc2025``, ``pti=auto`` resolves to ``off``
as the RFC's pti_check_boottime_disable() does ("disabled by ASI"), and an
explicit ``pti=on`` is refused.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import re
from dataclasses import dataclass

from emu.errors import ConfigError
from emu.parse import parse_size

MIN_RAM = 32 << 20
#: the CPU models in use have a 40-bit physical address width (1 TiB)
MAX_RAM = 1 << 40
#: unmapped=reserved: the largest pool (the stub's table of 2 MiB blocks, abi.UNMAPPED_MAX_BLOCKS)
MAX_POOL = 128 << 20


class PtiMode(enum.StrEnum):
    """Linux's ``pti=`` boot option (arch/x86/mm/pti.c: ``pti_mode``).

    The machine's CPU is Meltdown-affected (X86_BUG_CPU_MELTDOWN), so both
    ``on`` and ``auto`` enable PTI (X86_FEATURE_PTI): a mode is true exactly
    when PTI is enabled, and ``if cfg.pti`` asks that.  They differ in
    ``pti_kernel_image_global_ok()``: with ``auto`` and no PCID, Linux maps
    kernel text and rodata into the user page tables, Global
    (``pti_clone_kernel_text``); see :attr:`MachineConfig.pti_global_text`.
    A mode equals its word (``PtiMode.AUTO == "auto"``).
    """

    ON = "on"
    OFF = "off"
    AUTO = "auto"

    def __bool__(self) -> bool:
        return self is not PtiMode.OFF


@dataclass(frozen=True)
class Switch:
    name: str
    kind: str          # "bool" | "size" | "choice" | "names"
    help: str
    choices: tuple[str, ...] = ()


#: what each injection leaves out (docs/tlb.md): the flush or ordering Linux gets right
INJECTIONS = {
    "secretmem_noflush": "secretmem's pages leave the direct map without flush_tlb_kernel_range (the "
                         "unmapped allocator's flush of the page, or of the block with a cache)",
    "munmap_noflush": "munmap and mprotect change user PTEs without flushing the range",
    "pti_user_noflush": "SWITCH_TO_USER_CR3 always sets NOFLUSH: the user PCID's pending flush is never honoured",
    "secretmem_free_before_restore": "the unmapped allocator's page strategy frees a page before its "
                                     "direct-map entry is restored (the order 6f86d0534fdd fixed in secretmem)",
    "asi_unmap_noflush": "ASI's unmap of a non-sensitive page skips its flush",
    "asi_exit_noflush": "asi_exit loads the full kernel CR3 with NOFLUSH: the kernel PCID keeps what it "
                        "cached before ASI was entered (asi=on, rfc2025; the RFC never sets NOFLUSH on a "
                        "transition)",
    "gmem_noflush": "guest_memfd's NO_DIRECT_MAP pages leave the direct map without flush_tlb_kernel_range "
                    "(the unmapped allocator's flush of the page, or of the block with a cache)",
    "collapse_noflush": "collapse=on: a page table folded back into a large page is freed without "
                        "flush_tlb_all (41d88484c71c flushes before the tables go back)",
    "gmem_kunmap_noflush": "the temporary kernel mapping of a page out of the direct map is unmapped "
                           "without its flush",
    "xpfo_noflush": "/dev/xpfo's fallocate removes its batch of pages from the direct map without the "
                    "batch's one flush (the block's refill flush under unmapped=pmd-cache/unmapped-alloc)",
    "asi_enter_noflush": "the 2019 RFC's asi_enter loads the restricted CR3 with NOFLUSH: PCID 0, shared by "
                         "every restricted table, keeps another session's translations (asi=rfc2019)",
    "gup_fast_secretmem": "GUP-fast takes a secret page without the folio_is_secretmem check (CVE-2024-35872, "
                          "fixed by 'mm/secretmem: fix GUP-fast succeeding on secretmem folios'): its user then "
                          "reads the page through its removed direct-map entry",
    "secretmem_resize": "ftruncate resizes a secretmem file whose size is set, and zeroes the partial page at "
                        "the new size through its removed direct-map entry (the panic 84ac013046cc fixed)",
    "asi_kvm_no_enter": "KVM_RUN enters the guest without entering the KVM class's restricted space: the "
                        "guest runs beside the whole kernel mapped (asi=on, rfc2025, rfc2019)",
    "asi_kvm_late_relax": "KVM_RUN relaxes only after the VM exit is handled: the exit handlers run in the "
                          "KVM class's critical section (asi=on, rfc2025)",
}

#: the unmapped allocator's strategies (kernel_stub/unmapped.S, docs/frag.md), in the stub's numbering
UNMAPPED_STRATEGIES = ("page", "pmd-cache", "reserved", "unmapped-alloc")

#: the ASI designs (docs/asi.md), as the ``asi`` switch names them
ASI_DESIGNS = {
    "off": "no address-space isolation",
    "on": "today's model: PTI's user/kernel tables, and a restricted table entered in every syscall "
          "(RFC v2 mechanics)",
    "rfc2019": "the 2019 RFC (Chartre): PTI's user/kernel tables, and a restricted kernel space entered "
               "for a class (KVM): three spaces",
    "rfc2025": "the 2025 RFC v2 (Jackman): PTI disabled, user code runs on the restricted table (user "
               "mappings and non-sensitive kernel memory): two spaces",
}

SWITCHES: dict[str, Switch] = {s.name: s for s in (
    Switch("pti", "choice", "page-table isolation (arch/x86/mm/pti.c); auto: as on, and without PCID "
           "kernel text is mapped in the user tables (pti_clone_kernel_text)", tuple(m.value for m in PtiMode)),
    Switch("pcid", "bool", "process-context identifiers: CR4.PCIDE, tagged CR3 writes"),
    Switch("asi", "choice", "address-space isolation: off, on (today's model: PTI and ASI together), rfc2019 "
           "(three spaces: user, restricted kernel, full kernel) or rfc2025 (PTI off, user code on the "
           "restricted table); docs/asi.md", tuple(ASI_DESIGNS)),
    Switch("smep", "bool", "CR4.SMEP: no supervisor fetch from user pages"),
    Switch("smap", "bool", "CR4.SMAP: no supervisor data access to user pages unless RFLAGS.AC"),
    Switch("pke", "bool", "CR4.PKE: protection keys for user pages"),
    Switch("nx", "bool", "EFER.NXE: the XD bit (off: __supported_pte_mask lacks _PAGE_NX)"),
    Switch("invpcid", "bool", "the INVPCID instruction (off: flushes through CR4.PGE and CR3)"),
    Switch("la57", "bool", "5-level paging"),
    Switch("ram", "size", f"guest RAM, {MIN_RAM >> 20}M .. {MAX_RAM >> 40}T in 2 MiB steps (e.g. 4G)"),
    Switch("tlb", "choice", "the TLB model: off, check (findings; the CPU uses the tables) or lazy (an "
           "access the tables refuse goes through a stale translation)", ("off", "check", "lazy")),
    Switch("inject", "names", "omissions injected in the stub, comma-separated, or none: "
           + ", ".join(INJECTIONS), tuple(INJECTIONS)),
    Switch("unmapped", "choice", "where pages taken out of the direct map come from (memfd_secret, guest_memfd "
           "NO_DIRECT_MAP): page (mainline mm/secretmem.c: split on demand), pmd-cache (memfd_secret v6: a "
           "per-file cache of whole 2 MiB pages), reserved (a pool set aside at boot), unmapped-alloc "
           "(Rapoport's unmapped_alloc: one cache of whole 2 MiB blocks); docs/frag.md", UNMAPPED_STRATEGIES),
    Switch("unmapped_pool", "size", f"unmapped=reserved: the pool set aside at boot, whole 2 MiB blocks, at most "
           f"{MAX_POOL >> 20}M and half of RAM (e.g. 16M)"),
    Switch("collapse", "bool", "fold a direct-map table back into a large page when its block is whole "
           "again (x86's 41d88484c71c)"),
)}

_ON = {"on": True, "off": False}
#: switches that were renamed: a header or --set naming one is refused with the new name
RENAMED = {"secretmem": "secretmem= is now unmapped= (page, pmd-cache, reserved, unmapped-alloc): the "
                        "strategy applies to every user of memory taken out of the direct map"}


class AsiDesign(str):
    """The ``asi`` switch's value: a name of ASI_DESIGNS, true when some
    design is in.  ``if cfg.asi:`` keeps the meaning it had when the switch
    was on/off; ``cfg.asi == "rfc2025"`` names the design."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return self != "off"


@dataclass(frozen=True)
class MachineConfig:
    """Switches of the built-in machine (defaults: the default machine)."""

    ram: int = 256 << 20
    la57: bool = False
    pti: PtiMode = PtiMode.AUTO       # True/False and "on"/"off"/"auto" are accepted too
    pcid: bool = True
    asi: str = "on"              # a name of ASI_DESIGNS; True and False mean "on" and "off"
    smep: bool = True
    smap: bool = True
    pke: bool = False
    nx: bool = True
    invpcid: bool = True
    tlb: str = "check"
    inject: frozenset = frozenset()
    unmapped: str = "page"
    unmapped_pool: int = 16 << 20
    collapse: bool = False

    def __post_init__(self):
        object.__setattr__(self, "pti", _pti_mode(self.pti))
        object.__setattr__(self, "inject", frozenset(self.inject))
        if isinstance(self.asi, bool):               # MachineConfig(asi=False): the API's on/off
            object.__setattr__(self, "asi", "on" if self.asi else "off")
        if self.asi not in ASI_DESIGNS:
            raise ConfigError(f"asi={self.asi}: use one of {', '.join(ASI_DESIGNS)}"
                              f"{nearest(str(self.asi), ASI_DESIGNS)}")
        object.__setattr__(self, "asi", AsiDesign(self.asi))
        if self.asi == "rfc2025" and self.pti is PtiMode.AUTO:
            # x86/pti: "Disable PTI when ASI is on" (RFC v2 28/29)
            object.__setattr__(self, "pti", PtiMode.OFF)
        elif self.asi == "rfc2025" and self.pti:
            # the RFC boots with PTI off whatever pti= says; a machine that claims
            # both would be a guess
            raise ConfigError("asi=rfc2025 runs without PTI (the RFC disables it: 'disabled by ASI'); "
                              "drop pti=on, or use asi=on for PTI with ASI")
        for name in self.inject:
            if name not in INJECTIONS:
                raise ConfigError(f"unknown injection {name!r}{nearest(name, INJECTIONS)}; "
                                  f"known: {', '.join(INJECTIONS)}")
        for key in ("tlb", "unmapped"):
            if getattr(self, key) not in SWITCHES[key].choices:
                raise ConfigError(f"{key}={getattr(self, key)}: use one of {', '.join(SWITCHES[key].choices)}")
        if self.unmapped_pool % (2 << 20) or not 2 << 20 <= self.unmapped_pool <= min(MAX_POOL, self.ram // 2):
            raise ConfigError(f"unmapped_pool={_fmt_size(self.unmapped_pool)}: use whole 2 MiB blocks, at most "
                              f"{MAX_POOL >> 20}M and half of RAM ({_fmt_size(self.ram // 2)})")
        if self.ram % (2 << 20):
            raise ConfigError(f"RAM size {_fmt_size(self.ram)} is not a multiple of 2 MiB")
        if not MIN_RAM <= self.ram <= MAX_RAM:
            raise ConfigError(f"RAM size {_fmt_size(self.ram)} is out of range ({MIN_RAM >> 20}M .. "
                              f"{MAX_RAM >> 40}T)")

    @property
    def levels(self) -> int:
        return 5 if self.la57 else 4

    @property
    def asi_on(self) -> bool:
        """Some ASI design is in (``asi`` is not ``off``)."""
        return self.asi != "off"

    @property
    def asi_nonsensitive(self) -> bool:
        """The design keeps a global non-sensitive page table (asi.global) whose
        direct map holds the non-sensitive pages: today's model and rfc2025.
        The 2019 RFC's restricted table copies chosen kernel ranges instead."""
        return self.asi in ("on", "rfc2025")

    @property
    def pti_global_text(self) -> bool:
        """``pti_kernel_image_global_ok()`` (arch/x86/mm/pti.c): pti=auto and
        no PCID (the CPU is not a K8 and RANDSTRUCT is off).  Then
        ``pti_clone_kernel_text()`` clones the PMDs of kernel text and rodata
        into the user page tables and sets Global on them."""
        return self.pti is PtiMode.AUTO and not self.pcid

    @property
    def global_pages(self) -> bool:
        """PTI clears _PAGE_GLOBAL from __default_kernel_pte_mask, and so does
        the 2025 RFC's ASI (today's model follows it); the 2019 RFC's did not."""
        return not self.pti and not self.asi_nonsensitive

    def features(self) -> dict[str, bool]:
        """The stub's patchable features (``.alternative FEATURE``): the
        hardware and configuration ones, and one INJECT_NAME per injection."""
        feats = {"PTI": bool(self.pti), "PCID": self.pcid, "ASI": self.asi_on, "LA57": self.la57,
                 "ASI_RFC2019": self.asi == "rfc2019", "ASI_RFC2025": self.asi == "rfc2025"}
        feats.update({f"INJECT_{n.upper()}": n in self.inject for n in INJECTIONS})
        return feats

    def replace(self, **changes) -> "MachineConfig":
        """This config with ``changes``.  Leaving ``asi=rfc2025`` without a
        ``pti`` change gives PTI back its default mode, ``auto`` (the design had
        turned it off)."""
        if "pti" not in changes and self.asi == "rfc2025" and changes.get("asi", "rfc2025") != "rfc2025":
            changes["pti"] = PtiMode.AUTO
        return dataclasses.replace(self, **changes)

    def with_switches(self, settings: dict[str, str]) -> "MachineConfig":
        """This config with ``{name: text}`` switches applied (``pti``: ``off``)."""
        return self.replace(**{k: parse_switch(k, v)[1] for k, v in settings.items()})

    def switches(self) -> dict[str, str]:
        """Every switch as text, as a test header would write it."""
        out = {}
        for name, sw in SWITCHES.items():
            v = getattr(self, name)
            if sw.kind == "bool":
                out[name] = "on" if v else "off"
            elif sw.kind == "size":
                out[name] = _fmt_size(v)
            elif sw.kind == "names":
                out[name] = ",".join(sorted(v)) or "none"
            else:
                out[name] = str(v)
        return out

    def describe(self) -> str:
        """``pti=on pcid=on asi=on ... ram=256M``."""
        return " ".join(f"{k}={v}" for k, v in self.switches().items())


def _pti_mode(v) -> PtiMode:
    """True/False (on/off) or a word, as a :class:`PtiMode`."""
    if isinstance(v, PtiMode):
        return v
    if isinstance(v, bool):
        return PtiMode.ON if v else PtiMode.OFF
    try:
        return PtiMode(str(v).strip().lower())
    except ValueError:
        raise ConfigError(f"pti={v}: use one of {', '.join(m.value for m in PtiMode)}") from None


def _fmt_size(v: int) -> str:
    for unit, sh in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if v % (1 << sh) == 0:
            return f"{v >> sh}{unit}"
    return str(v)


def nearest(word: str, choices) -> str:
    """`` (did you mean 'pti'?)`` or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_switch(name: str, text: str) -> tuple[str, object]:
    """(switch name, value) from ``name`` and its text; refused with the
    nearest known switch or the values it takes."""
    key = name.strip().lower()
    sw = SWITCHES.get(key)
    if key in RENAMED:
        raise ConfigError(RENAMED[key])
    if sw is None:
        raise ConfigError(f"unknown machine switch {name!r}{nearest(key, SWITCHES)}; "
                          f"known: {', '.join(SWITCHES)}")
    t = text.strip()
    if sw.kind == "bool":
        if t.lower() not in _ON:
            raise ConfigError(f"{key}={text}: use {key}=on or {key}=off")
        return key, _ON[t.lower()]
    if sw.kind == "choice":
        if t.lower() not in sw.choices:
            raise ConfigError(f"{key}={text}: use one of {', '.join(sw.choices)}{nearest(t.lower(), sw.choices)}")
        return key, _pti_mode(t) if key == "pti" else t.lower()
    if sw.kind == "names":
        names = [n.strip().lower() for n in t.split(",") if n.strip()]
        if names == ["none"]:
            return key, frozenset()
        for n in names:
            if n not in sw.choices:
                raise ConfigError(f"{key}={text}: unknown name {n!r}{nearest(n, sw.choices)}; "
                                  f"known: {', '.join(sw.choices)}")
        return key, frozenset(names)
    lo, hi = (MIN_RAM, MAX_RAM) if key == "ram" else (2 << 20, MAX_POOL)
    return key, parse_size(t, f"{key} size", lo=lo, hi=hi)


def parse_assignments(items, what: str = "--set") -> dict[str, str]:
    """``["pti=off", "ram=4G"]`` (or ``"pti=off,ram=4G"`` items) as
    ``{name: text}``; each checked, a name given twice refused."""
    out: dict[str, str] = {}
    for item in items:
        # a comma starts another KEY=VALUE only before a 'KEY=': 'inject=a,b' is one list
        for tok in re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", str(item)):
            tok = tok.strip()
            if not tok:
                continue
            key, eq, val = tok.partition("=")
            if not eq or not val.strip():
                raise ConfigError(f"{what} {tok!r}: write KEY=VALUE (e.g. pti=off)")
            k, _ = parse_switch(key, val)
            if k in out and out[k] != val.strip():
                raise ConfigError(f"{what}: {k} is given twice ({out[k]} and {val.strip()})")
            out[k] = val.strip()
    return out
