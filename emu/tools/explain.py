"""Why a page walk faulted: the rule, in words and as a name.

``explain(fault, ctl, access, cpl)`` reads the walk's result (the entries it
visited, top first, and the error code) with the control state the walk used
and names the rule that refused the access, in the order the reference
walker (emu/hw/paging.py) applies them, which is the SDM's (Vol. 3A 4.5 for
the walk and its reserved bits, 4.6 access rights, 4.6.2 protection keys,
4.7 the error code):

=================  ==========================================================
rule               when
=================  ==========================================================
non_canonical      #GP(0): the address is not canonical (SDM Vol. 1 3.3.7.1)
not_present        an entry with P clear
reserved_bit       a reserved bit set: above MAXPHYADDR, PS in a PML4E/PML5E,
                   low address bits of a large page, XD without EFER.NXE
user_supervisor    a CPL3 access and U/S clear at some level
protection_key     a user page, CR4.PKE, and PKRU's AD (or WD, for a write at
                   CPL3 or with CR0.WP) bit of the page's key
execute_disable    a fetch with XD set at some level (EFER.NXE on)
smep               a supervisor fetch from a user page, CR4.SMEP
smap               a supervisor data access to a user page, CR4.SMAP, RFLAGS.AC
                   clear (implicit supervisor accesses ignore AC)
read_write         a write with R/W clear at some level: at CPL3, or CR0.WP on
=================  ==========================================================

With ``ctl`` None (a caller that does not know the control state) the rule
comes from the error code and the entries alone; the one case they cannot
settle (a supervisor write to a read-only user page: SMAP or R/W) says so.
"""

from __future__ import annotations

from emu.hw.paging import (ADDR_MASK, MAXPHYADDR, NX, PAT_LARGE, PF_P, PF_PK, PF_RSVD, PKEY_SHIFT, PS, RW,
                           US, VEC_GP, ControlState, FIVE_LEVEL, mode_for, rsvd_hi_mask)

RULES = ("non_canonical", "not_present", "reserved_bit", "user_supervisor", "protection_key",
         "execute_disable", "smep", "smap", "read_write", "smap_or_read_write", "unexplained")
_ACCESS_WORDS = {0: "read", 1: "write", 2: "fetch"}
_SDM_ENTRY = {48: "PML5E", 39: "PML4E", 30: "PDPTE", 21: "PDE", 12: "PTE"}


def _shift_of(index: int, levels: int) -> int:
    """The shift of the walk's ``index``-th level, from the mode's description."""
    return mode_for(levels).levels[index].shift


def _large_leaf_level(shift: int) -> bool:
    """A level above the PTE where PS may map a page (PDE, PDPTE)."""
    lv = FIVE_LEVEL.by_shift(shift)
    return lv.leaf_ok and not lv.is_pte


def _where(step, shift: int) -> str:
    return f"{step.level} ({_SDM_ENTRY[shift]})"


def _first(steps, levels: int, test):
    """The first (top-most) step whose entry passes ``test``, with its shift."""
    for i, st in enumerate(steps):
        if test(st.entry):
            return st, _shift_of(i, levels)
    return None, None


def reserved_bits(entry: int, shift: int, ctl: ControlState | None) -> list[str]:
    """Every reason ``entry`` (a present entry at ``shift``) has a reserved bit set."""
    maxphy = ctl.maxphyaddr if ctl is not None else MAXPHYADDR
    out = []
    hi = entry & rsvd_hi_mask(maxphy)
    if hi:
        bit = (hi & -hi).bit_length() - 1
        out.append(f"bit {bit} is above MAXPHYADDR ({maxphy})")
    leaf_large = _large_leaf_level(shift) and entry & PS
    if shift >= 39 and entry & PS:
        out.append(f"bit 7 (PS) in a {_SDM_ENTRY[shift]}")
    if leaf_large:
        low = entry & ((1 << shift) - 1) & ADDR_MASK & ~PAT_LARGE
        if low:
            bit = (low & -low).bit_length() - 1
            size = "1G" if shift == 30 else "2M"
            out.append(f"bit {bit}: an address bit below the {size} page size")
    if entry & NX and (ctl is None and not out or ctl is not None and not ctl.nxe):
        out.append("bit 63 (XD) with EFER.NXE clear")
    return out


def explain(fault, ctl: ControlState | None, access: int, cpl: int) -> tuple[str, str]:
    """``(rule, text)`` for a :class:`~emu.hw.paging.Fault` (see the table above)."""
    rule, text, _ = explain_at(fault, ctl, access, cpl)
    return rule, text


def explain_at(fault, ctl: ControlState | None, access: int, cpl: int) -> tuple[str, str, str | None]:
    """``(rule, text, level)``: :func:`explain` and the level whose entry the rule
    names (the top-most one with U/S or R/W clear, or XD set; the last one
    walked for P and reserved bits; None for #GP, SMEP, SMAP and keys)."""
    if fault.vector == VEC_GP:
        top = "56" if fault.levels == 5 else "47"
        return "non_canonical", (f"{fault.va:#x} is not canonical: bits 63..{top} must all equal "
                                 f"bit {top} (#GP(0), no walk)"), None
    steps = fault.steps
    levels = fault.levels
    ec = fault.error_code
    what = _ACCESS_WORDS[access]
    last = steps[-1]
    last_shift = _shift_of(len(steps) - 1, levels)
    if not ec & PF_P:
        return "not_present", f"not present at {_where(last, last_shift)}: entry {last.entry:#x} has P clear", \
            last.level
    if ec & PF_RSVD:
        why = reserved_bits(last.entry, last_shift, ctl)
        text = "; ".join(why) if why else "a reserved bit"
        return "reserved_bit", f"reserved bit at {_where(last, last_shift)}: {text}", last.level
    user_page = all(st.entry & US for st in steps)
    if cpl == 3 and not user_page:
        st, sh = _first(steps, levels, lambda e: not e & US)
        return "user_supervisor", f"U/S: CPL3 {what} of a supervisor page; U/S clear at {_where(st, sh)}", \
            st.level
    if ec & PF_PK:
        key = (last.entry >> PKEY_SHIFT) & 0xF
        if ctl is None:
            return "protection_key", f"protection key {key}: PKRU forbids the {what}", None
        bits = ctl.pkru >> (2 * key) & 3
        if bits & 1:
            return "protection_key", f"protection key {key}: PKRU.AD{key} is set (no data access)", None
        why = "at CPL3" if cpl == 3 else "with CR0.WP on"
        return "protection_key", f"protection key {key}: PKRU.WD{key} is set (no write {why})", None
    if access == 2:
        st, sh = _first(steps, levels, lambda e: e & NX)
        if st is not None and (ctl is None or ctl.nxe):
            return "execute_disable", f"XD: fetch from a no-execute page; XD set at {_where(st, sh)}", st.level
        if user_page and cpl < 3 and (ctl is None or ctl.smep):
            return "smep", "SMEP: supervisor fetch from a user page (CR4.SMEP on)", None
        return "unexplained", "the walk faulted but no rule matches the control state given", None
    read_only = not all(st.entry & RW for st in steps)
    rw_text = ""
    if access == 1 and read_only:
        st, sh = _first(steps, levels, lambda e: not e & RW)
        why = "at CPL3" if cpl == 3 else "with CR0.WP on"
        rw_text = f"R/W: write to a read-only page {why}; R/W clear at {_where(st, sh)}"
    if user_page and cpl < 3:
        if ctl is None and rw_text:
            return "smap_or_read_write", (f"SMAP or R/W (the control state was not given): a supervisor "
                                          f"write to a read-only user page; R/W clear at {_where(st, sh)}"), \
                st.level
        if ctl is None or (ctl.smap and not ctl.ac):
            also = "; the page is also read-only" if rw_text and (ctl is None or ctl.wp) else ""
            return "smap", f"SMAP: supervisor {what} of a user page with RFLAGS.AC clear (CR4.SMAP on){also}", None
    if rw_text and (cpl == 3 or ctl is None or ctl.wp):
        return "read_write", rw_text, st.level
    return "unexplained", "the walk faulted but no rule matches the control state given", None


def control_words(ctl: ControlState) -> str:
    """``WP SMEP SMAP NXE pke ac PKRU=0x0 la57``: set bits upper-case, clear ones lower-case."""
    words = [n.upper() if getattr(ctl, n) else n for n in ("wp", "smep", "smap", "nxe", "pke", "ac")]
    words.append(f"PKRU={ctl.pkru:#x}")
    words.append("LA57" if ctl.la57 else "la57")
    return " ".join(words)


def control_dict(ctl: ControlState) -> dict:
    return {"wp": ctl.wp, "smep": ctl.smep, "smap": ctl.smap, "nxe": ctl.nxe, "pke": ctl.pke, "ac": ctl.ac,
            "pkru": f"{ctl.pkru:#x}", "la57": ctl.la57}
