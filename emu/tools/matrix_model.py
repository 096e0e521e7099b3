"""The fault matrix's expectations: what Linux maps, and what the CPU allows.

Written out from Linux's sources and the Intel SDM, never derived from the
machine.  Four tables and the rule that combines them:

:data:`MAPPINGS`      where each probed region is mapped in each address
                      space, with which rights, under which machine switches
                      (arch/x86/mm/pti.c, mm/secretmem.c, and the ASI design
                      of ``asi=``: docs/asi.md);
:data:`ACCESS_RULES`  the SDM's access-rights checks (Vol. 3A 4.6), one row
                      per check: a present mapping that violates a row
                      faults with P=1, and the rows it violates are the
                      reason;
:data:`ERROR_CODE`    the #PF error-code bits (SDM Vol. 3A 4.7), including
                      I/D, which the CPU sets only when SMEP or EFER.NXE is
                      on (with both off a fetch reports 0x4, not 0x14);
:data:`KERNEL_ACCESS_OK`  what ASI's exit-and-retry checks on the full page
                      tables before retrying (kernel_stub/pgtable.S
                      ``kernel_access_ok``: present, R/W for a write, no NX in
                      the leaf for a fetch);
:data:`ASI_FAULTS`    per ASI design, what a fault in the restricted table
                      leads to: the 2025 RFC's check above (today's model
                      shares it), or the 2019 RFC's abort-and-retry.

:func:`expected` gives one cell.  Every switch of the machine is read:
``pti``, ``pcid`` and ``asi`` are conditions of :data:`MAPPINGS` rows (``asi``
also decides whether the ``A.asi`` space exists, and with ``rfc2025`` the
user spaces are the restricted table), ``smep``, ``smap``, ``nx`` and ``pke``
are inputs of the rules; ``invpcid``, ``la57`` and ``ram`` change how the
kernel gets there (flushes, addresses), not what a probe sees, and the
matrix runs with them flipped to check that too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from emu.linux.config import MachineConfig, parse_switch

ACCESSES = ("r", "w", "x")
USER_SPACES = ("A.user", "B.user")


# --- outcomes -------------------------------------------------------------------------------
@dataclass
class Outcome:
    """ok | fault | asi_exit_ok | asi_exit_fault, with vector/error code.

    ``reason`` (expectations only) names what decides the cell: the
    violated :data:`ACCESS_RULES` (``XD+SMEP``), ``not present``, and for
    ASI whether the fault was retried on the full tables.
    """

    outcome: str
    vector: int | None = None
    error_code: int | None = None
    reason: str = ""

    def text(self) -> str:
        if self.outcome == "ok":
            return "ok"
        if self.outcome == "asi_exit_ok":
            return "asi-exit→ok"
        if self.vector == 14:
            f = f"#PF {self.error_code:#x}"
        elif self.vector == 13:
            f = f"#GP({self.error_code:#x})"
        else:
            f = f"vector {self.vector}"
        return ("asi-exit→" if self.outcome == "asi_exit_fault" else "") + f

    def key(self):
        return (self.outcome, self.vector, self.error_code)

    @property
    def faulted(self) -> bool:
        return self.outcome in ("fault", "asi_exit_fault")


def ok(reason: str = "") -> Outcome:
    return Outcome("ok", reason=reason)


def pf(ec: int, asi_exit: bool = False, reason: str = "") -> Outcome:
    return Outcome("asi_exit_fault" if asi_exit else "fault", 14, ec, reason)


# --- what Linux maps --------------------------------------------------------------------------
@dataclass(frozen=True)
class Mapping:
    """A present mapping's rights, every level combined, as Linux asks for
    them.  NX is what the kernel writes before ``__supported_pte_mask``:
    with nx=off Linux drops every _PAGE_NX, so the XD rule reads
    ``cfg.nx and (nx or pgd_nx)``."""

    text: str
    user: bool                 # U/S=1 at every level
    writable: bool             # R/W=1 at every level
    nx: bool                   # _PAGE_NX in the leaf
    pgd_nx: bool = False       # _PAGE_NX in the kernel's copy of a user PGD entry (PTI)
    pkey: int = 0              # protection key (user pages)

    def kernel_copy(self) -> "Mapping":
        """The kernel page table's view of a user mapping under PTI:
        ``__pti_set_user_pgtbl`` sets NX on the kernel copy of every present
        user PGD entry (arch/x86/mm/pti.c), so that returning to user mode
        on the kernel CR3 faults."""
        return replace(self, text=self.text + ", PGD NX", pgd_nx=True)


USER_RX = Mapping("user r-x", user=True, writable=False, nx=False)
USER_RW = Mapping("user rw- NX", user=True, writable=True, nx=True)
KERNEL_RX = Mapping("kernel r-x", user=False, writable=False, nx=False)       # PAGE_KERNEL_RX
KERNEL_RO = Mapping("kernel r-- NX", user=False, writable=False, nx=True)     # PAGE_KERNEL_RO
KERNEL_RW = Mapping("kernel rw- NX", user=False, writable=True, nx=True)      # PAGE_KERNEL
ABSENT: Mapping | None = None                                                 # not present


@dataclass(frozen=True)
class When:
    """A condition on switches: ``When.parse("pti=on|auto pcid=off")``."""

    text: str
    values: tuple[tuple[str, tuple], ...]

    @classmethod
    def parse(cls, text: str) -> "When":
        conds = []
        for tok in text.split():
            key, _, vals = tok.partition("=")
            conds.append((key, tuple(parse_switch(key, v)[1] for v in vals.split("|"))))
        return cls(text or "always", tuple(conds))

    def holds(self, cfg: MachineConfig) -> bool:
        return all(getattr(cfg, key) in vals for key, vals in self.values)


@dataclass(frozen=True)
class MapRow:
    region: str
    spaces: tuple[str, ...]
    when: When
    mapping: Mapping | None
    source: str                # why (Linux source, the ASI RFC)


def _rows(region: str, *rows) -> list[MapRow]:
    return [MapRow(region, spaces, When.parse(when), m, src) for spaces, when, m, src in rows]


U, K, ASI, B = USER_SPACES, ("A.kernel",), ("A.asi",), ("B.user",)
KA = K + ASI
PTI = "pti=on|auto"
# Where user code runs without PTI: one page table per process (the Meltdown
# layout: kernel regions present, supervisor-only), or, with the 2025 RFC, the
# restricted table (user memory plus the non-sensitive kernel; PTI is off).
FULL = "pti=off asi=off|on|rfc2019"
R25 = "asi=rfc2025"
# A.asi: the userspace class of today's model and the 2025 RFC (asi.global's
# kernel half and the process's user half), or the 2019 RFC's KVM class (the
# kernel image, the cpu_entry_area and the current stack: no direct map, no
# user half)
V2 = "asi=on|rfc2025"
R19 = "asi=rfc2019"
# a released secret page: back in the direct map, or kept out by a shared cache (kernel_stub/unmapped.S)
RESTORED = "unmapped=page|pmd-cache"
KEPT = "unmapped=reserved|unmapped-alloc"


def _user_mapping_in_kernel_tables(prot: Mapping) -> tuple:
    """How a user mapping with ``prot`` looks from A's kernel-side tables: the
    rows every user region shares."""
    return ((K, "pti=off", prot, "one page table"),
            (K, PTI, prot.kernel_copy(), "pti.c __pti_set_user_pgtbl"),
            (ASI, "pti=off " + V2, prot, "asi_clone_user_pgtbl: the userspace class maps user addresses"),
            (ASI, PTI + " asi=on", prot.kernel_copy(), "asi_clone_user_pgtbl of the kernel PGD's entries"),
            (ASI, R19, ABSENT, "the 2019 RFC's KVM-class table has no user half"))


# With PTI the user PGD maps only what pti.c clones.
MAPPINGS: list[MapRow] = [
    *_rows("user_text",
           (U, "", USER_RX, "the program's text: PROT_READ|PROT_EXEC"),
           *_user_mapping_in_kernel_tables(USER_RX)),
    *_rows("user_data",
           (U, "", USER_RW, "the program's data: PROT_READ|PROT_WRITE"),
           *_user_mapping_in_kernel_tables(USER_RW)),
    *_rows("secret_user",
           (("A.user",), "", USER_RW, "memfd_secret + mmap(MAP_SHARED), PROT_READ|PROT_WRITE"),
           (B, "", ABSENT, "A's mapping; B never mapped it"),
           *_user_mapping_in_kernel_tables(USER_RW)),
    *_rows("secret_direct_map",
           (U + KA, "", ABSENT, "secretmem.c: set_direct_map_invalid_noflush")),
    *_rows("xpfo_user",
           (("A.user",), "", USER_RW, "/dev/xpfo + fallocate + mmap(MAP_SHARED), PROT_READ|PROT_WRITE"),
           (B, "", ABSENT, "A's mapping; B never mapped it"),
           *_user_mapping_in_kernel_tables(USER_RW)),
    *_rows("xpfo_direct_map",
           (U + KA, "", ABSENT, "/dev/xpfo (Lutomirski's proposal): the fallocate batch removes it from the "
                                "direct map")),
    *_rows("direct_map",
           (U, FULL, KERNEL_RW, "one page table"),
           (U, PTI, ABSENT, "pti.c clones no direct map"),
           (U, R25, KERNEL_RW, "the restricted table: non-sensitive, in ASI's global table"),
           (K, "", KERNEL_RW, "the direct map (init_64.c)"),
           (ASI, V2, KERNEL_RW, "non-sensitive: in ASI's global table"),
           (ASI, R19, ABSENT, "the 2019 RFC's table has no direct map")),
    *_rows("direct_map_sensitive",
           (U, FULL, KERNEL_RW, "one page table"),
           (U, PTI, ABSENT, "pti.c clones no direct map"),
           (U, R25, ABSENT, "the restricted table: a user frame is sensitive (GFP_USER)"),
           (K, "", KERNEL_RW, "the direct map"),
           (ASI, "", ABSENT, "a user frame is sensitive: not in ASI's tables (the 2019 RFC's has no "
                             "direct map)")),
    *_rows("kernel_text",
           (U, FULL, KERNEL_RX, "one page table"),
           (U, "pti=on", ABSENT, "pti.c: pti=on never clones kernel text"),
           (U, "pti=auto pcid=on", ABSENT, "pti.c pti_kernel_image_global_ok: false with PCID"),
           (U, "pti=auto pcid=off", KERNEL_RX, "pti.c pti_clone_kernel_text (Global)"),
           (U, R25, KERNEL_RX, "the restricted table: the kernel image is non-sensitive"),
           (KA, "", KERNEL_RX, "the kernel image, PAGE_KERNEL_RX (the 2019 RFC maps the whole image)")),
    *_rows("kernel_data",
           (U, FULL, KERNEL_RW, "one page table"),
           (U, PTI, ABSENT, "pti.c clones nothing past __end_rodata_aligned"),
           (U, R25, KERNEL_RW, "the restricted table: static data is non-sensitive"),
           (KA, "", KERNEL_RW, "the kernel image, PAGE_KERNEL")),
    *_rows("entry_text",
           (U, FULL, KERNEL_RX, "one page table"),
           (U, PTI, KERNEL_RX, "pti.c pti_clone_entry_text"),
           (U, R25, KERNEL_RX, "the restricted table: the kernel image"),
           (KA, "", KERNEL_RX, "the kernel image, PAGE_KERNEL_RX")),
    *_rows("cpu_entry_area",
           (U, FULL, KERNEL_RO, "one page table"),
           (U, PTI, KERNEL_RO, "pti.c pti_clone_user_shared"),
           (U, R25, KERNEL_RO, "the restricted table: the cpu_entry_area"),
           (KA, "", KERNEL_RO, "cpu_entry_area.c: the GDT's read-only alias")),
    *_rows("kernel_stack",
           (U, FULL, KERNEL_RW, "one page table"),
           (U, PTI, ABSENT, "pti.c clones no vmalloc space"),
           (U, R25, KERNEL_RW, "the restricted table: vmalloc space is non-sensitive"),
           (K, "", KERNEL_RW, "VMAP_STACK: THREAD_SIZE in vmalloc space, PAGE_KERNEL"),
           (ASI, V2, KERNEL_RW, "ASI's global table shares vmalloc space ('Map vmalloc/vmap data as "
                                "nonsensitive')"),
           (ASI, R19, KERNEL_RW, "the 2019 RFC maps the current stack at asi_enter")),
    *_rows("vmalloc",
           (U, FULL, KERNEL_RW, "one page table"),
           (U, PTI, ABSENT, "pti.c clones no vmalloc space"),
           (U, R25, KERNEL_RW, "the restricted table: vmalloc space is non-sensitive"),
           (K, "", KERNEL_RW, "VMAP_STACK: another task's stack, PAGE_KERNEL"),
           (ASI, V2, KERNEL_RW, "ASI's global table shares vmalloc space"),
           (ASI, R19, ABSENT, "the 2019 RFC maps only the current stack")),
    # guest_memfd (docs/guest_memfd.md): a page made private leaves every
    # user mapping; its direct-map alias stays unless the guest_memfd is
    # NO_DIRECT_MAP (the direct-map-removal series); guest memory is sensitive
    *_rows("gmem_private_user",
           (U + KA, "", ABSENT, "guest_memfd conversion to private: unmap_mapping_range zaps A's "
                                "mapping (B never mapped it)")),
    *_rows("gmem_direct_map",
           (U, FULL, KERNEL_RW, "one page table"),
           (U, PTI, ABSENT, "pti.c clones no direct map"),
           (U, R25, ABSENT, "the restricted table: guest memory is sensitive"),
           (K, "", KERNEL_RW, "the direct map: guest_memfd pages stay in it without NO_DIRECT_MAP"),
           (ASI, "", ABSENT, "guest memory is sensitive: not in ASI's tables (the 2019 RFC's has no "
                             "direct map)")),
    *_rows("gmem_nodm_direct_map",
           (U + KA, "", ABSENT, "the direct-map-removal series: the page left the direct map when "
                                "allocated (kvm_gmem_folio_zap_direct_map)")),
    *_rows("secret_direct_map_released",
           (("A.user",), f"{FULL} {RESTORED}", KERNEL_RW, "one page table"),
           (("A.user",), f"{PTI} {RESTORED}", ABSENT, "pti.c clones no direct map"),
           (("A.user",), f"{R25} {RESTORED}", ABSENT, "the restricted table: the frame stays sensitive"),
           (K, RESTORED, KERNEL_RW, "secretmem.c secretmem_free_folio: set_direct_map_default_noflush "
                                    "(pmd-cache: the file's blocks restored at release)"),
           (("A.user",) + K, KEPT, ABSENT, "unmapped.S: a shared cache keeps the released page out of the direct map"),
           (ASI, "", ABSENT, "the frame stays sensitive (the ASI RFC); the 2019 RFC's table has no "
                             "direct map")),
]
REGIONS = list(dict.fromkeys(r.region for r in MAPPINGS))


def mapping_row(region: str, space: str, cfg: MachineConfig) -> MapRow:
    """The one row of :data:`MAPPINGS` that applies (a KeyError if none)."""
    rows = [r for r in MAPPINGS if r.region == region and space in r.spaces and r.when.holds(cfg)]
    if len(rows) != 1:
        raise KeyError(f"{len(rows)} mapping rows for {region} in {space} under {cfg.describe()}")
    return rows[0]


# --- what the CPU allows (SDM Vol. 3A 4.6, 4.7) -----------------------------------------------
#: the probes touch user addresses with RFLAGS.AC set (STAC, as copy_from_user)
PROBE_AC = True
#: PKRU as Linux leaves it for a new process (arch/x86/kernel/fpu: init_pkru_value:
#: access-disable for every key but 0)
INIT_PKRU = 0x55555554


def pkru_denies(pkru: int, key: int, access: str) -> bool:
    """SDM 4.6.2: AD forbids data access, WD forbids writes."""
    ad, wd = (pkru >> 2 * key) & 1, (pkru >> (2 * key + 1)) & 1
    return bool(ad or (wd and access == "w"))


@dataclass(frozen=True)
class Rule:
    name: str
    cpls: tuple[int, ...]
    accesses: str
    violated: Callable[[Mapping, MachineConfig, str], bool]
    sdm: str


ACCESS_RULES: tuple[Rule, ...] = (
    Rule("U/S", (3,), "rwx", lambda m, c, a: not m.user,
         "4.6.1: CPL3 may access only user-mode addresses"),
    Rule("R/W", (0, 3), "w", lambda m, c, a: not m.writable,
         "4.6.1: a write needs R/W=1 at every level (CR0.WP=1: at CPL0 too)"),
    Rule("XD", (0, 3), "x", lambda m, c, a: c.nx and (m.nx or m.pgd_nx),
         "4.6.1: with IA32_EFER.NXE=1 a fetch needs XD=0 at every level"),
    Rule("SMEP", (0,), "x", lambda m, c, a: c.smep and m.user,
         "4.6.1: CR4.SMEP=1: no supervisor fetch from a user-mode address"),
    Rule("SMAP", (0,), "rw", lambda m, c, a: c.smap and m.user and not PROBE_AC,
         "4.6.1: CR4.SMAP=1: a supervisor data access to a user-mode address needs RFLAGS.AC=1"),
    Rule("PK", (0, 3), "rw", lambda m, c, a: c.pke and m.user and pkru_denies(INIT_PKRU, m.pkey, a),
         "4.6.2: CR4.PKE=1: PKRU's AD/WD bits of the page's key"),
)


@dataclass(frozen=True)
class Access:
    """One access as the error-code table sees it."""

    present: bool
    access: str
    cpl: int
    cfg: MachineConfig
    rules: tuple[str, ...]


ERROR_CODE: tuple[tuple[str, int, Callable[[Access], bool]], ...] = (
    ("P", 0x1, lambda f: f.present),                 # 0: not present; 1: a protection violation
    ("W/R", 0x2, lambda f: f.access == "w"),
    ("U/S", 0x4, lambda f: f.cpl == 3),
    ("RSVD", 0x8, lambda f: False),                  # Linux never sets a reserved bit here
    # I/D: "the access was an instruction fetch and either CR4.SMEP=1 or
    # (PAE and IA32_EFER.NXE=1)"; otherwise reserved and 0
    ("I/D", 0x10, lambda f: f.access == "x" and (f.cfg.smep or f.cfg.nx)),
    ("PK", 0x20, lambda f: "PK" in f.rules),
)

#: kernel_stub/pgtable.S kernel_access_ok: the ASI exit retries the access
#: only if the full tables' leaf allows it
KERNEL_ACCESS_OK: tuple[tuple[str, str, Callable[[Mapping | None, MachineConfig], bool]], ...] = (
    ("present", "rwx", lambda m, c: m is not None),
    ("R/W for a write", "w", lambda m, c: m is not None and m.writable),
    ("no NX in the leaf for a fetch", "x", lambda m, c: m is not None and not (c.nx and m.nx)),
)


def violated_rules(m: Mapping, cpl: int, access: str, cfg: MachineConfig) -> tuple[str, ...]:
    return tuple(r.name for r in ACCESS_RULES
                 if cpl in r.cpls and access in r.accesses and r.violated(m, cfg, access))


def error_code(present: bool, access: str, cpl: int, cfg: MachineConfig, rules: tuple[str, ...] = ()) -> int:
    f = Access(present, access, cpl, cfg, rules)
    return sum(bit for _, bit, test in ERROR_CODE if test(f))


def access(m: Mapping | None, cpl: int, acc: str, cfg: MachineConfig) -> Outcome:
    """One access on one page table, as the CPU decides it."""
    if m is None:
        return pf(error_code(False, acc, cpl, cfg), reason="not present")
    rules = violated_rules(m, cpl, acc, cfg)
    if rules:
        return pf(error_code(True, acc, cpl, cfg, rules), reason="+".join(rules))
    return ok()


def kernel_access_ok(m: Mapping | None, acc: str, cfg: MachineConfig) -> bool:
    return all(test(m, cfg) for _, accs, test in KERNEL_ACCESS_OK if acc in accs)


#: what a fault in the restricted table leads to, per design (docs/asi.md)
ASI_FAULTS = {
    # RFC v2 "asi_exit() on PF, skip handling if address is accessible": exit,
    # then retry only if kernel_access_ok(); otherwise the original fault is handled
    "on": "check",
    "rfc2025": "check",
    # RFC (2019) 02-03/26: the exception entry aborts the session and
    # asi_fault() reports the fault handled: the access is retried on the full
    # tables, which decide it
    "rfc2019": "retry",
}


def expected(region: str, space: str, acc: str, cfg: MachineConfig) -> Outcome:
    """What Linux on this machine does for one cell."""
    cpl = 3 if space in USER_SPACES else 0
    here = access(mapping_row(region, space, cfg).mapping, cpl, acc, cfg)
    if space != "A.asi" or not here.faulted:
        return here
    # A kernel #PF on ASI's restricted tables exits ASI; the stub retries on
    # the full tables when kernel_access_ok() says the access would succeed
    # there (the ASI RFCv2: "asi_exit() on PF, skip handling if address is
    # accessible"), and otherwise handles the original fault.
    full_map = mapping_row(region, "A.kernel", cfg).mapping
    if ASI_FAULTS[cfg.asi] == "retry":
        full = access(full_map, cpl, acc, cfg)
        if full.faulted:
            return pf(full.error_code, asi_exit=True, reason=f"{here.reason}, session aborted, retried: "
                                                             f"{full.reason}")
        return Outcome("asi_exit_ok", reason=f"{here.reason}, session aborted, retried: ok")
    if not kernel_access_ok(full_map, acc, cfg):
        return pf(here.error_code, asi_exit=True, reason=f"{here.reason}, not retried")
    full = access(full_map, cpl, acc, cfg)
    if full.faulted:
        return pf(full.error_code, asi_exit=True, reason=f"retried: {full.reason}")
    return Outcome("asi_exit_ok", reason=f"{here.reason}, retried: ok")
