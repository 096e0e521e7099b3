"""Rendering shared by the commands and the debugger's REPL: a page walk (text
and JSON, with why it faulted) and the machine's events (one line, or one
JSON object, per event; one formatter per kind)."""

from __future__ import annotations

from emu.errors import ConfigError
from emu.hw.paging import FIVE_LEVEL, error_code_words, fmt_size, mode_for
from emu.hw.x86 import vector_name
from emu.linux import abi
from emu.linux.config import nearest
from emu.linux.pte import inverted_pfn
from emu.tools.explain import control_dict, control_words, explain, explain_at
from emu.tools.faults import describe_exception

ACCESS_WORDS = {0: "read", 1: "write", 2: "fetch"}


# --- page walks -----------------------------------------------------------------------------
def flag_word(entry: int, shift: int, leaf: bool) -> str:
    """Bochs-style flags: set ones upper-case, clear ones lower-case."""
    def f(bit: int, name: str) -> str:
        return name.upper() if entry >> bit & 1 else name.lower()

    words = [f(63, "XD")]
    if leaf and (entry >> 59) & 0xF:
        words.append(f"pk={(entry >> 59) & 0xF}")
    if leaf and not FIVE_LEVEL.by_shift(shift).is_pte:      # a large page: PAT is bit 12
        words.append(f(12, "PAT"))
    words += [f(8, "G"), f(7, "PAT" if FIVE_LEVEL.by_shift(shift).is_pte else "PS"), f(6, "D"), f(5, "A"),
              f(4, "PCD"), f(3, "PWT"), f(2, "U"), f(1, "W"), f(0, "P")]
    return " ".join(words)


def walk_levels(res, levels: int) -> list[dict]:
    """The entry visited at each level of a walk, with Bochs-style flags; a
    non-present entry holding an inverted PFN (L1TF: emu/linux/pte.py) has
    it decoded as ``pfn_inverted``."""
    mode = mode_for(levels)
    out = []
    for st in res.steps:
        level = mode.by_shift(st.shift)
        leaf = not st.entry & 1 or mode.is_leaf(level, st.entry)
        row = {"level": st.level, "index": st.index, "entry": f"{st.entry:#018x}",
               "flags": flag_word(st.entry, st.shift, leaf)}
        pfn = inverted_pfn(st.entry)
        if pfn is not None:
            row["pfn_inverted"] = f"{pfn:#x}"
        out.append(row)
    return out


def walk_text(res, va: int, access: int, cpl: int, space_name: str, cr3: int, levels: int, *,
              ctl=None, cpl_note: str = "") -> list[str]:
    """A walk as ``isoemu walk`` prints it (also the debugger's ``walk``):
    the control state used (when given), every level, then the physical
    address, or the fault with its error code and the rule that refused it."""
    lines = [f"{va:#018x}  {ACCESS_WORDS[access]} at CPL{cpl} in {space_name} (cr3 {cr3:#x})"]
    if ctl is not None:
        lines.append(f"  control  {control_words(ctl)}  CPL{cpl}{cpl_note}")
    for lv in walk_levels(res, levels):
        inv = f"  PFN inverted: {lv['pfn_inverted']}" if "pfn_inverted" in lv else ""
        lines.append(f"  {lv['level']}[{lv['index']:3d}]  {lv['entry']}  {lv['flags']}{inv}")
    if res.fault:
        if res.vector == 13:
            lines.append(f"  -> #GP(0): {va:#x} is not canonical")
        else:
            lines.append(f"  -> #PF error code {res.error_code:#x} ({error_code_words(res.error_code)})")
            _, why = explain(res, ctl, access, cpl)
            lines.append(f"     {why}")
        return lines
    perms = ", ".join(n for n, v in (("user", res.user), ("writable", res.writable),
                                     ("no-execute", res.nx)) if v) or "supervisor, read-only, executable"
    lines.append(f"  -> pa {res.pa:#x}  ({fmt_size(res.size)} page; {perms})")
    return lines


def walk_json(res, va: int, access: int, cpl: int, space_name: str, cr3: int, ctl, *,
              cpl_default: bool = False) -> dict:
    """``isoemu walk --json``: va, space, cr3, access, cpl, control, levels, and
    ``result`` {pa, size, user, writable, nx} or ``fault`` {vector, error_code,
    rule, level (the entry the rule names, or null), reason}."""
    doc = {"va": f"{va:#x}", "space": space_name, "cr3": f"{cr3:#x}", "access": "rwx"[access], "cpl": cpl,
           "cpl_default": cpl_default, "control": control_dict(ctl), "levels": walk_levels(res, ctl.levels)}
    if res.fault:
        rule, why, level = explain_at(res, ctl, access, cpl)
        doc["fault"] = {"vector": res.vector, "error_code": res.error_code, "rule": rule, "level": level,
                        "reason": why}
    else:
        doc["result"] = {"pa": f"{res.pa:#x}", "size": res.size, "user": res.user, "writable": res.writable,
                         "nx": res.nx}
    return doc


# --- events ---------------------------------------------------------------------------------
#: the event kinds ``--events`` takes, and the machine's event kinds each covers
EVENT_KINDS = {
    "cr3": ("cr3_write",),
    "syscall": ("syscall", "syscall_return"),
    "fault": ("exception",),
    "interrupt": ("interrupt",),
    "asi": ("asi_exit", "asi_abort", "asi_flush", "asi_finding"),
    "alloc": ("alloc", "alloc_failed", "free", "bad_free", "bad_hypercall"),
    "exit": ("exit",),
    "frame": ("frame_write",),
    "invpcid": ("invpcid",),
    "port": ("port_out",),
    "mmu": ("mmu_disagreement",),
    "triple-fault": ("triple_fault",),
    "stale": ("stale",),
}


def parse_event_kinds(text: str | None) -> frozenset[str]:
    """``cr3,fault,syscall`` (or None / ``all``) as the machine's event kinds."""
    if text is None or text.strip() in ("", "all"):
        return frozenset(k for kinds in EVENT_KINDS.values() for k in kinds)
    out = set()
    for word in text.split(","):
        w = word.strip().lower()
        if not w:
            continue
        if w not in EVENT_KINDS:
            raise ConfigError(f"unknown event kind {word.strip()!r}{nearest(w, EVENT_KINDS)}; "
                              f"kinds: {', '.join(EVENT_KINDS)}")
        out.update(EVENT_KINDS[w])
    return frozenset(out)


def syscall_name(nr: int) -> str:
    for name, n in abi.SYSCALLS.items():
        if n == nr:
            return name
    return "?"


def _ret(v: int) -> str:
    if v < 0 and -v in abi.ERRNO_NAMES:
        return f"{v} ({abi.ERRNO_NAMES[-v]})"
    return f"{v:#x}" if v > 0xFFFF else str(v)


def cr3_line(old: int, new: int, old_space: str, new_space: str, pcid, noflush: bool, symbol: str) -> str:
    """One aligned CR3 write: values, spaces, PCID, NOFLUSH, where (the debugger's format)."""
    spaces = f"{old_space} -> {new_space}"
    pc = "pcid -    " if pcid is None else f"pcid {pcid:#05x}"
    flush = "noflush" if noflush else "       "
    return f"cr3 {old:#018x} -> {new:#018x}  {spaces:<24} {pc} {flush}  {symbol}"


def _exit(d) -> str:
    if d.get("signal"):
        return f"exit {d['process']} killed by {d['signal']}"
    return f"exit {d['process']} status {d['status']}"


_FORMATS = {
    "cr3_write": lambda d: cr3_line(d["old"], d["new"], d["old_space"], d["new_space"], d.get("pcid"),
                                    bool(d.get("noflush")), d["symbol"]),
    "syscall": lambda d: f"syscall {d['nr']} ({syscall_name(d['nr'])}) from {d['symbol']}",
    "syscall_return": lambda d: f"sysret {d['nr']} ({syscall_name(d['nr'])}) = {_ret(d['ret'])}",
    "exception": lambda d: "fault " + describe_exception(d["vector"], d.get("error_code"), d.get("cr2"), d["rip"],
                                                         d["symbol"], d.get("space"))
                           + (" (software)" if d.get("software") else "") + (" (nested)" if d.get("nested") else ""),
    "interrupt": lambda d: f"interrupt {vector_name(d['vector'])} at RIP {d['rip']:#x} ({d['symbol']}), "
                           f"space {d.get('space')}",
    "asi_exit": lambda d: "asi-exit forced by " + describe_exception(14, d["error_code"], d["address"], d["rip"],
                                                                     d["symbol"], d.get("space")),
    "asi_abort": lambda d: f"asi-abort at {d['symbol']}",
    "asi_flush": lambda d: f"asi-flush {d['flush']} at {d['symbol']} (taints: {', '.join(d['taints']) or 'none'})",
    "asi_finding": lambda d: (f"asi-finding {d['finding']}: {d['address']:#x} "
                              f"({error_code_words(d['error_code'])}) at {d['symbol']}, not mapped in "
                              f"{d['restricted']}"),
    "alloc": lambda d: (f"alloc {d['pa']:#x} order {d['order']} {d['frame_kind']}"
                        + (" sensitive" if d.get("sensitive") else "")),
    "alloc_failed": lambda d: f"alloc-failed order {d['order']} kind {d['frame_kind']}: {d['reason']}",
    "free": lambda d: f"free {d['pa']:#x}",
    "bad_free": lambda d: f"bad-free {d['pa']:#x}: {d['reason']}",
    "bad_hypercall": lambda d: f"bad-hypercall op {d['op']}",
    "exit": _exit,
    "frame_write": lambda d: (f"frame-write {d['size']} bytes at {d['va']:#x} (pa {d['pa']:#x}) for "
                              f"{vector_name(d['vector'])}, space {d.get('space')}"),
    "invpcid": lambda d: f"invpcid type {d['type']} pcid {d['pcid']:#05x} addr {d['addr']:#x} at {d['symbol']}",
    "port_out": lambda d: f"port-out {d['port']:#x} <- {d['value']:#x} ({d['size']} bytes)",
    "mmu_disagreement": lambda d: (f"mmu-disagreement at {d['va']:#x}: the CPU raised #PF "
                                   f"{d['cpu_error_code']:#x}, the walker {d['walker']}"),
    "stale": lambda d: stale_line(d),
    "triple_fault": lambda d: "triple-fault: " + " -> ".join(
        vector_name(c[0]) + (f"({c[1]:#x})" if c[1] is not None else "") for c in d["chain"]),
}


def stale_line(d) -> str:
    """A TLB-model finding (the data of a ``stale`` event; docs/tlb.md)."""
    from emu.linux.tlbcheck import TlbFinding

    return "stale " + TlbFinding(**{k: d[k] for k in TlbFinding.__dataclass_fields__}).line()


def event_line(ev) -> str:
    """One line for a machine event (``isoemu run --events``, the tracer, the debugger)."""
    fmt = _FORMATS.get(ev.kind)
    d = ev.data
    if fmt is None:
        return f"{ev.kind} " + " ".join(f"{k}={_hex(k, v)}" for k, v in d.items())
    return fmt(d)


#: event fields that are addresses or register values: 0x strings in JSON
HEX_FIELDS = frozenset({"rip", "old", "new", "cr2", "cr3", "va", "pa", "address", "addr", "pcid", "value",
                        "port", "args"})


def _hex(key: str, v):
    if key in HEX_FIELDS:
        if isinstance(v, bool) or v is None:
            return v
        if isinstance(v, int):
            return f"{v:#x}"
        if isinstance(v, (tuple, list)):
            return [f"{x:#x}" if isinstance(x, int) else x for x in v]
    if isinstance(v, tuple):
        return [list(x) if isinstance(x, tuple) else x for x in v]
    return v


def event_json(ev) -> dict:
    """A machine event as JSON: seq, kind and its fields, addresses as 0x strings."""
    out = {"seq": ev.seq, "kind": ev.kind}
    for k, v in ev.data.items():
        out[k] = _hex(k, v)
    return out
