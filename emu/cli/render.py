"""Rendering shared by the commands and the debugger's REPL: a page walk as text and JSON."""

from __future__ import annotations

from emu.hw.paging import error_code_words, fmt_size


def flag_word(entry: int, shift: int, leaf: bool) -> str:
    """Bochs-style flags: set ones upper-case, clear ones lower-case."""
    def f(bit: int, name: str) -> str:
        return name.upper() if entry >> bit & 1 else name.lower()

    words = [f(63, "XD")]
    if leaf and (entry >> 59) & 0xF:
        words.append(f"pk={(entry >> 59) & 0xF}")
    if shift in (21, 30) and leaf:
        words.append(f(12, "PAT"))
    words += [f(8, "G"), f(7, "PAT" if shift == 12 else "PS"), f(6, "D"), f(5, "A"),
              f(4, "PCD"), f(3, "PWT"), f(2, "U"), f(1, "W"), f(0, "P")]
    return " ".join(words)


def walk_levels(res, levels: int) -> list[dict]:
    """The entry visited at each level of a walk, with Bochs-style flags."""
    top = 12 + 9 * (levels - 1)
    out = []
    for i, st in enumerate(res.steps):
        shift = top - 9 * i
        leaf = shift == 12 or bool(st.entry & 0x80 and shift in (21, 30)) or not st.entry & 1
        out.append({"level": st.level, "index": st.index, "entry": f"{st.entry:#018x}",
                    "flags": flag_word(st.entry, shift, leaf)})
    return out


def walk_text(res, va: int, access: int, cpl: int, space_name: str, cr3: int, levels: int) -> list[str]:
    """A walk as ``isoemu walk`` prints it (also the debugger's ``walk``)."""
    what = {0: "read", 1: "write", 2: "fetch"}[access]
    lines = [f"{va:#018x}  {what} at CPL{cpl} in {space_name} (cr3 {cr3:#x})"]
    for lv in walk_levels(res, levels):
        lines.append(f"  {lv['level']}[{lv['index']:3d}]  {lv['entry']}  {lv['flags']}")
    if res.fault:
        if res.vector == 13:
            lines.append(f"  -> #GP(0): {va:#x} is not canonical")
        else:
            lines.append(f"  -> #PF error code {res.error_code:#x} ({error_code_words(res.error_code)})")
        return lines
    perms = ", ".join(n for n, v in (("user", res.user), ("writable", res.writable),
                                     ("no-execute", res.nx)) if v) or "supervisor, read-only, executable"
    lines.append(f"  -> pa {res.pa:#x}  ({fmt_size(res.size)} page; {perms})")
    return lines
