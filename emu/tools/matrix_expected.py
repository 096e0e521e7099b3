"""What Linux does in each cell of the fault matrix, as tables (docs/asi.md).

The tables are written out from the kernel's semantics, one per page table a
probe can run on, never derived from the machine.  Error codes per the Intel
SDM Vol. 3A 4.7: bit 0 present, 1 write, 2 user, 4 instruction fetch.  A cell
reads ``ok``, ``#PF 0xEC``, or ``asi-exit→...`` when the access first faulted
in the restricted table and ASI exited (then the retry's result, or the
fault the kernel handled).

Which table a cell comes from:

* CPL3 probes (``A.user``, ``B.user``) run on the table user code runs on:
  PTI's user PGD (``pti``: only the entry text, cpu_entry_area, TSS page and
  espfix are mapped, supervisor), the full kernel table without PTI
  (``full``: the Meltdown-exposed layout), or, with the 2025 RFC, the
  restricted table (``restricted``: user memory plus the non-sensitive
  kernel).  B has no secret mapping: its ``secret_user`` row is
  :data:`OTHER_USER`.
* ``A.kernel`` (SYS_probe space 0) runs on the full kernel table in every
  design: :data:`KERNEL`.
* ``A.asi`` (SYS_probe space 1) runs on the restricted table: the userspace
  class of today's model and the 2025 RFC (:data:`ASI_USERSPACE`: the user
  half, and the non-sensitive kernel; a fault exits ASI, then
  kernel_access_ok() decides between a retry and the original error code),
  or the KVM class of the 2019 RFC (:data:`ASI_KVM_2019`: the kernel image,
  the cpu_entry_area and the current stack only; every fault aborts the
  session and is retried on the full tables, so a refused access reports the
  full table's error code).
"""

from __future__ import annotations

import re

ACCESSES = ("r", "w", "x")


def _table(text: str) -> dict[str, tuple[str, str, str]]:
    """``region  r  w  x`` rows (columns two or more blanks apart)."""
    rows = {}
    for line in text.strip().splitlines()[1:]:
        region, *cells = re.split(r"\s{2,}", line.strip())
        if len(cells) != 3:
            raise ValueError(f"matrix table row {line!r}: want a region and 3 cells")
        rows[region] = tuple(cells)
    return rows


# --- CPL3 -----------------------------------------------------------------------------
USER_PTI = _table("""
region                       r             w             x
user_text                    ok            #PF 0x7       ok
user_data                    ok            ok            #PF 0x15
secret_user                  ok            ok            #PF 0x15
secret_direct_map            #PF 0x4       #PF 0x6       #PF 0x14
direct_map                   #PF 0x4       #PF 0x6       #PF 0x14
direct_map_sensitive         #PF 0x4       #PF 0x6       #PF 0x14
kernel_text                  #PF 0x4       #PF 0x6       #PF 0x14
kernel_data                  #PF 0x4       #PF 0x6       #PF 0x14
entry_text                   #PF 0x5       #PF 0x7       #PF 0x15
cpu_entry_area               #PF 0x5       #PF 0x7       #PF 0x15
kernel_stack                 #PF 0x4       #PF 0x6       #PF 0x14
vmalloc                      #PF 0x4       #PF 0x6       #PF 0x14
secret_direct_map_released   #PF 0x4       #PF 0x6       #PF 0x14
""")

USER_FULL = _table("""
region                       r             w             x
user_text                    ok            #PF 0x7       ok
user_data                    ok            ok            #PF 0x15
secret_user                  ok            ok            #PF 0x15
secret_direct_map            #PF 0x4       #PF 0x6       #PF 0x14
direct_map                   #PF 0x5       #PF 0x7       #PF 0x15
direct_map_sensitive         #PF 0x5       #PF 0x7       #PF 0x15
kernel_text                  #PF 0x5       #PF 0x7       #PF 0x15
kernel_data                  #PF 0x5       #PF 0x7       #PF 0x15
entry_text                   #PF 0x5       #PF 0x7       #PF 0x15
cpu_entry_area               #PF 0x5       #PF 0x7       #PF 0x15
kernel_stack                 #PF 0x5       #PF 0x7       #PF 0x15
vmalloc                      #PF 0x5       #PF 0x7       #PF 0x15
secret_direct_map_released   #PF 0x5       #PF 0x7       #PF 0x15
""")

USER_RESTRICTED = _table("""
region                       r             w             x
user_text                    ok            #PF 0x7       ok
user_data                    ok            ok            #PF 0x15
secret_user                  ok            ok            #PF 0x15
secret_direct_map            #PF 0x4       #PF 0x6       #PF 0x14
direct_map                   #PF 0x5       #PF 0x7       #PF 0x15
direct_map_sensitive         #PF 0x4       #PF 0x6       #PF 0x14
kernel_text                  #PF 0x5       #PF 0x7       #PF 0x15
kernel_data                  #PF 0x5       #PF 0x7       #PF 0x15
entry_text                   #PF 0x5       #PF 0x7       #PF 0x15
cpu_entry_area               #PF 0x5       #PF 0x7       #PF 0x15
kernel_stack                 #PF 0x5       #PF 0x7       #PF 0x15
vmalloc                      #PF 0x5       #PF 0x7       #PF 0x15
secret_direct_map_released   #PF 0x4       #PF 0x6       #PF 0x14
""")

#: B's rows that differ from A's: it has no mapping of A's secret
OTHER_USER = _table("""
region                       r             w             x
secret_user                  #PF 0x4       #PF 0x6       #PF 0x14
""")

# --- CPL0, the full kernel table ------------------------------------------------------
KERNEL = _table("""
region                       r             w             x
user_text                    ok            #PF 0x3       #PF 0x11
user_data                    ok            ok            #PF 0x11
secret_user                  ok            ok            #PF 0x11
secret_direct_map            #PF 0x0       #PF 0x2       #PF 0x10
direct_map                   ok            ok            #PF 0x11
direct_map_sensitive         ok            ok            #PF 0x11
kernel_text                  ok            #PF 0x3       ok
kernel_data                  ok            ok            #PF 0x11
entry_text                   ok            #PF 0x3       ok
cpu_entry_area               ok            #PF 0x3       #PF 0x11
kernel_stack                 ok            ok            #PF 0x11
vmalloc                      ok            ok            #PF 0x11
secret_direct_map_released   ok            ok            #PF 0x11
""")

# --- CPL0, the restricted tables -------------------------------------------------------
ASI_USERSPACE = _table("""
region                       r                  w                  x
user_text                    ok                 asi-exit→#PF 0x3   asi-exit→#PF 0x11
user_data                    ok                 ok                 asi-exit→#PF 0x11
secret_user                  ok                 ok                 asi-exit→#PF 0x11
secret_direct_map            asi-exit→#PF 0x0   asi-exit→#PF 0x2   asi-exit→#PF 0x10
direct_map                   ok                 ok                 asi-exit→#PF 0x11
direct_map_sensitive         asi-exit→ok        asi-exit→ok        asi-exit→#PF 0x10
kernel_text                  ok                 asi-exit→#PF 0x3   ok
kernel_data                  ok                 ok                 asi-exit→#PF 0x11
entry_text                   ok                 asi-exit→#PF 0x3   ok
cpu_entry_area               ok                 asi-exit→#PF 0x3   asi-exit→#PF 0x11
kernel_stack                 ok                 ok                 asi-exit→#PF 0x11
vmalloc                      ok                 ok                 asi-exit→#PF 0x11
secret_direct_map_released   asi-exit→ok        asi-exit→ok        asi-exit→#PF 0x10
""")

ASI_KVM_2019 = _table("""
region                       r                  w                  x
user_text                    asi-exit→ok        asi-exit→#PF 0x3   asi-exit→#PF 0x11
user_data                    asi-exit→ok        asi-exit→ok        asi-exit→#PF 0x11
secret_user                  asi-exit→ok        asi-exit→ok        asi-exit→#PF 0x11
secret_direct_map            asi-exit→#PF 0x0   asi-exit→#PF 0x2   asi-exit→#PF 0x10
direct_map                   asi-exit→ok        asi-exit→ok        asi-exit→#PF 0x11
direct_map_sensitive         asi-exit→ok        asi-exit→ok        asi-exit→#PF 0x11
kernel_text                  ok                 asi-exit→#PF 0x3   ok
kernel_data                  ok                 ok                 asi-exit→#PF 0x11
entry_text                   ok                 asi-exit→#PF 0x3   ok
cpu_entry_area               ok                 asi-exit→#PF 0x3   asi-exit→#PF 0x11
kernel_stack                 ok                 ok                 asi-exit→#PF 0x11
vmalloc                      asi-exit→ok        asi-exit→ok        asi-exit→#PF 0x11
secret_direct_map_released   asi-exit→ok        asi-exit→ok        asi-exit→#PF 0x11
""")

#: the tables by name (user layouts, then the kernel and restricted tables)
TABLES = {"user.pti": USER_PTI, "user.full": USER_FULL, "user.restricted": USER_RESTRICTED,
          "kernel": KERNEL, "asi.userspace": ASI_USERSPACE, "asi.kvm-2019": ASI_KVM_2019}


def user_layout(cfg) -> str:
    """The table user code runs on: ``pti``, ``full`` or ``restricted``."""
    if cfg.asi == "rfc2025":
        return "restricted"
    return "pti" if cfg.pti else "full"


def table_for(space: str, cfg) -> str:
    """The name of the table a cell of ``space`` reads (a key of :data:`TABLES`)."""
    if space.endswith(".user"):
        return f"user.{user_layout(cfg)}"
    if space == "A.kernel":
        return "kernel"
    if space == "A.asi":
        return "asi.kvm-2019" if cfg.asi == "rfc2019" else "asi.userspace"
    raise KeyError(space)


def expected_text(region: str, space: str, access: str, cfg) -> str:
    """The cell as the tables write it (``ok``, ``#PF 0x4``, ``asi-exit→ok``...)."""
    col = ACCESSES.index(access)
    if space == "B.user" and region in OTHER_USER:
        return OTHER_USER[region][col]
    return TABLES[table_for(space, cfg)][region][col]
