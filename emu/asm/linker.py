"""The linker: each section assembled by keystone at its final address,
labels of other sections and predefined constants as ``.equ`` lines,
``.align`` padded here, passes until addresses converge."""

from __future__ import annotations

import hashlib
import re
import struct
from types import MappingProxyType

from emu.asm import cache as disk_cache
from emu.asm.data import check_constants, data_bytes, data_size, evaluate_constants
from emu.asm.image import SYM_PREFIX, Image, Section, Stmt
from emu.asm.source import IDENT, SourceParser, demangle
from emu.asm.syntax import keystone_insn_text
from emu.errors import AsmError

_IMAGE_CACHE: dict[str, Image] = {}


def ks_asm(text: str, base: int) -> bytes:
    """keystone's assembly of ``text`` at ``base`` (emu/asm/engines.py), which
    loads keystone: only a link that misses the caches gets here."""
    from emu.asm.engines import ks_asm as assemble

    return assemble(text, base)


#: id of a table made by freeze_symbols -> (the table, its part of link's key)
_FROZEN: dict[int, tuple[MappingProxyType, str | None]] = {}


def freeze_symbols(symbols: dict[str, int]) -> MappingProxyType:
    """A read-only copy of ``symbols`` for :func:`link`'s ``predefined``: its
    part of the cache key (about 500 symbols sorted and printed, most of a
    cached link's time) is made at its first link and reused, since nobody
    can change it."""
    frozen = MappingProxyType(dict(symbols))
    if len(_FROZEN) >= 64:
        _FROZEN.clear()
    _FROZEN[id(frozen)] = (frozen, None)
    return frozen


def _symbols_text(predefined) -> str:
    got = _FROZEN.get(id(predefined))
    if got is None or got[0] is not predefined:
        return repr(sorted(predefined.items()))
    if got[1] is None:
        got = _FROZEN[id(predefined)] = (predefined, repr(sorted(predefined.items())))
    return got[1]


class _Inconsistent(Exception):
    """keystone's output contradicts itself (see :func:`_check_layout`)."""


def link(sources: list[tuple[str, str]], layout: dict[str, int], predefined: dict[str, int] | None = None,
         include_dirs: list[str] | None = None, default_section: str = ".text",
         nobits: tuple[str, ...] = (".bss",), cache: bool = True,
         required_sites: tuple[str, ...] = ()) -> Image:
    """Assemble and link ``sources`` (name, text) into an :class:`Image`.

    ``layout`` maps each section name to its base address.  ``predefined``
    are constants visible to every file (syscall numbers, struct offsets...).
    ``required_sites`` are site kinds (``cr3_write``, ``cr4_write``,
    ``invlpg``) whose instructions must all be declared (the stub contract).
    Identical inputs return the cached image.

    The layout keystone reports is checked against itself after linking;
    keystone 0.9.2 has been seen, rarely and not reproducibly, to report
    statement addresses that do not match the bytes (a 4 KiB-aligned IDT at
    an unaligned address): the link is then redone once with a new engine,
    and a second inconsistency is an error (docs/unicorn-notes.md).
    """
    predefined = predefined or {}
    # the repr of (sources, sorted layout, sorted predefined, include_dirs, ...),
    # with a frozen table's part made once (freeze_symbols)
    key = hashlib.sha256(("(" + ", ".join((repr(sources), repr(sorted(layout.items())), _symbols_text(predefined),
                                           repr(include_dirs), repr(default_section), repr(nobits),
                                           repr(required_sites))) + ")").encode()).hexdigest()
    if cache and key in _IMAGE_CACHE:
        return _IMAGE_CACHE[key]
    predefined = dict(predefined)
    img = disk_cache.load(key) if cache else None
    if img is not None:
        _IMAGE_CACHE[key] = img
        return img
    for attempt in range(2):
        try:
            img, included = _link(sources, layout, predefined, include_dirs, default_section, nobits,
                                  required_sites, key)
            break
        except AsmError as e:
            raise AsmError(demangle(str(e))) from None
        except _Inconsistent as e:
            if attempt:
                raise AsmError(f"keystone produced an inconsistent layout twice: {e}") from None
            from emu.asm.engines import reset_engines
            reset_engines()
    if cache:
        _IMAGE_CACHE[key] = img
        disk_cache.store(key, img, included)
    return img


def _link(sources, layout, predefined, include_dirs, default_section, nobits, required_sites, key) -> Image:
    # keystone and capstone are loaded on a cache miss only: a warm start never needs them
    from emu.asm.checks import resolve_sites, verify
    p = SourceParser(include_dirs or [])
    for name, text in sources:
        p.parse(name, text, default_section)
    p.finish()
    # group statements by section, in source order
    sections: dict[str, Section] = {}
    for st in p.stmts:
        if st.section not in layout:
            raise AsmError(f"{st.file}:{st.line}: section {st.section} has no place in this "
                           f"program's layout ({', '.join(layout)})")
        sec = sections.setdefault(st.section, Section(st.section, layout[st.section],
                                                      nobits=st.section in nobits))
        st.index = len(sec.stmts)
        sec.stmts.append(st)
    # where each label is defined
    where: dict[str, Stmt] = {}
    for st in p.stmts:
        for lab in st.labels:
            if lab in where:
                o = where[lab]
                raise AsmError(f"{st.file}:{st.line}: label {lab!r} already defined at {o.file}:{o.line}")
            if lab in predefined:
                raise AsmError(f"{st.file}:{st.line}: label {lab!r} shadows a predefined symbol")
            where[lab] = st
    label_section = {lab: st.section for lab, st in where.items()}
    consts = [st for st in p.stmts if st.kind == "const"]
    taken = {lab: "a label" for lab in where}
    taken.update({name: "a predefined symbol" for name in predefined})
    check_constants(consts, taken)
    labels = set(where)
    # pass 1 uses each foreign label's section base; later passes real values
    values: dict[str, int] = {lab: layout[sec] for lab, sec in label_section.items()}
    addrs: dict[str, list[int]] = {}
    # .align is padded by the linker, not keystone: its padding is computed
    # from the statement's address and converges with the labels
    aligns = {(st.section, st.index): n for st in p.stmts if (n := _alignment(st, predefined))}
    pads: dict[tuple[str, int], int] = {k: 0 for k in aligns}
    texts = _KeystoneText()
    for _ in range(8):
        env = dict(predefined)
        env.update(values)
        const_values, const_addresses = evaluate_constants(consts, env, labels)
        new_values = dict(values)
        new_pads = dict(pads)
        for sec in sections.values():
            lines = texts.lines(sec, predefined, const_values)
            stmt_addrs, data = _assemble_section(sec, p, lines, values, env, pads)
            addrs[sec.name] = stmt_addrs
            sec.data = data
            for st in sec.stmts:
                for lab in st.labels:
                    new_values[lab] = stmt_addrs[st.index]
                n = aligns.get((sec.name, st.index))
                if n:
                    new_pads[(sec.name, st.index)] = -stmt_addrs[st.index] % n
        if new_values == values and new_pads == pads:
            break
        values, pads = new_values, new_pads
    else:
        raise AsmError("layout did not converge after 8 passes (instruction sizes keep changing)")
    _check_layout(sections, addrs, aligns)
    symbols = dict(predefined)
    symbols.update(const_values)
    symbols.update(values)
    _write_data(sections, addrs, symbols)
    for sec in sections.values():
        sec.size = len(sec.data)
        if sec.nobits:
            if any(b for b in sec.data):
                st = next(s for s in sec.stmts if s.kind in ("data", "insn"))
                raise AsmError(f"{st.file}:{st.line}: {sec.name} holds only zeros (use .zero/.space)")
            sec.data = b""
    lines, insns = verify(sections, addrs, symbols, labels | const_addresses)
    extable = []
    for f, ln, frm, to, etype in p.extable:
        for sym in (frm, to):
            if sym not in symbols:
                raise AsmError(f"{f}:{ln}: .extable names unknown label {sym!r}")
        try:
            et = symbols[etype] if etype in symbols else int(etype, 0)
        except ValueError:
            raise AsmError(f"{f}:{ln}: .extable type {etype!r} is not a number or symbol") from None
        extable.append((symbols[frm], symbols[to], et))
    extable.sort()
    alternatives = []
    for f, ln, feature, idx in p.alternatives:
        st = p.stmts[idx]
        a = addrs[st.section][st.index]
        target = a + 5 + struct.unpack_from("<i", sections[st.section].data, a - sections[st.section].base + 1)[0]
        if not sections[st.section].base <= target < sections[st.section].base + sections[st.section].size:
            raise AsmError(f"{f}:{ln}: .alternative target must be a label in the same section")
        alternatives.append((a, feature))
    sites = resolve_sites(p.sites, p.stmts, addrs, insns, required_sites)
    # the parsed statements served the link only: an image without them is half
    # the size, and half the time to load from the cache (docs/performance.md)
    for sec in sections.values():
        sec.stmts = []
    return Image(sections, symbols, lines, extable, alternatives, insns, key, frozenset(values), sites), p.included


def _write_data(sections: dict[str, Section], addrs: dict[str, list[int]], symbols: dict[str, int]) -> None:
    """Data statements' bytes, written over keystone's ``.zero`` placeholders."""
    for sec in sections.values():
        buf = None
        for st in sec.stmts:
            if st.kind != "data" or st.syntax is None:
                continue
            a, b = addrs[sec.name][st.index], addrs[sec.name][st.index + 1]
            out = data_bytes(st, symbols, a)
            if len(out) != b - a:
                raise AsmError(f"{st.file}:{st.line}: {len(out)} bytes where the layout has {b - a} "
                               f"(a count that depends on the layout?): {st.text}")
            if buf is None:
                buf = bytearray(sec.data)
            buf[a - sec.base:b - sec.base] = out
        if buf is not None:
            sec.data = bytes(buf)


class _KeystoneText:
    """Each statement's line for keystone, built once: constants become
    numbers; data statements become ``.zero SIZE`` (their bytes are written
    by the linker); constant definitions vanish (they are substituted)."""

    def __init__(self):
        self._consts: dict[str, int] | None = None
        self._lines: dict[str, list[str | None]] = {}

    def lines(self, sec: Section, predefined: dict[str, int], consts: dict[str, int]) -> list[str | None]:
        if consts != self._consts:
            self._consts, self._lines = dict(consts), {}
        if sec.name not in self._lines:
            constants = dict(predefined)
            constants.update(consts)
            self._lines[sec.name] = [keystone_line(st, constants) for st in sec.stmts]
        return self._lines[sec.name]


def keystone_line(st: Stmt, constants: dict[str, int]) -> str | None:
    """The statement for keystone, without labels; None for a data statement
    (sized per pass) or an .align (padded per pass)."""
    if st.kind == "insn":
        return substitute_constants(keystone_insn_text(st.text, st.syntax), constants)
    if st.kind == "data":
        return None
    return ""


def _check_layout(sections: dict[str, Section], addrs: dict[str, list[int]],
                  aligns: dict[tuple[str, int], int]) -> None:
    """The statement addresses keystone reported must add up to its bytes,
    in order, and every ``.align`` target must be aligned."""
    for sec in sections.values():
        a = addrs[sec.name]
        if a[0] != sec.base or a[-1] - sec.base != len(sec.data) or any(x > y for x, y in zip(a, a[1:])):
            raise _Inconsistent(f"section {sec.name}: statement addresses do not match its "
                                f"{len(sec.data):#x} bytes")
        for st in sec.stmts:
            n = aligns.get((sec.name, st.index))
            if n and a[st.index + 1] % n:
                raise _Inconsistent(f"{st.file}:{st.line}: {st.text} left the next statement at "
                                    f"{a[st.index + 1]:#x}, not a multiple of {n:#x}")


def _foreign_equs(text: str, own: set[str], values: dict[str, int]) -> list[str]:
    """``.equ`` lines for the labels of other sections that ``text`` uses."""
    return [f".equ {tok}, {values[tok]:#x}" for tok in set(IDENT.findall(text))
            if tok not in own and tok in values]


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def substitute_constants(text: str, constants: dict[str, int]) -> str:
    """Replace predefined constants by their numbers, outside string literals.

    Keystone mis-assembles a symbol under unary minus: ``mov rax, -EFAULT``
    becomes a load from address 14 and ``push -ENOSYS`` a RIP-relative push.
    Numbers are safe.
    """
    if not constants:
        return text

    def repl(m: re.Match) -> str:
        v = constants.get(m.group(0))
        if v is None:
            return m.group(0)
        return str(v) if -(1 << 31) <= v < (1 << 31) else hex(v & 0xFFFFFFFFFFFFFFFF)

    parts = _STRING.split(text)
    strings = _STRING.findall(text)
    out = []
    for i, part in enumerate(parts):
        out.append(IDENT.sub(repl, part))
        if i < len(strings):
            out.append(strings[i])
    return "".join(out)


_ALIGN_RE = re.compile(r"^\.(align|balign|p2align)\s+(.*)$", re.I)


def _alignment(st: Stmt, predefined: dict[str, int]) -> int | None:
    """The byte alignment an .align/.balign/.p2align statement asks for."""
    m = _ALIGN_RE.match(st.text.strip())
    if not m:
        return None
    arg = substitute_constants(m.group(2).split(",")[0].strip(), predefined)
    try:
        v = int(arg, 0)
    except ValueError:
        raise AsmError(f"{st.file}:{st.line}: alignment must be a number: {st.text}") from None
    n = 1 << v if m.group(1).lower() == "p2align" and 0 <= v < 32 else v
    if n <= 0 or n & (n - 1):
        raise AsmError(f"{st.file}:{st.line}: alignment must be a power of two: {st.text}")
    return n


def _assemble_section(sec: Section, p: SourceParser, lines: list[str | None], values: dict[str, int],
                      env: dict[str, int], pads: dict[tuple[str, int], int]) -> tuple[list[int], bytes]:
    import keystone

    own = {lab for st in sec.stmts for lab in st.labels}
    body = []
    fill = ".fill {}, 1, 0x90" if "text" in sec.name else ".zero {}"     # NOPs in code, as gas does
    for st, line in zip(sec.stmts, lines):
        labels = "".join(f"{lab}: " for lab in st.labels)
        pad = pads.get((sec.name, st.index))
        if pad is not None:
            line = fill.format(pad)
        elif line is None:
            line = f".zero {data_size(st, env)}"
        body.append(f"{SYM_PREFIX}{st.index}: {labels}{line}")
    n = len(sec.stmts)
    body.append(f"{SYM_PREFIX}{n}:")
    text_body = "\n".join(body)
    equs = _foreign_equs(text_body, own, values)
    trailer = "\n".join(f".quad {SYM_PREFIX}{i}" for i in range(n + 1))
    full = "\n".join(equs + [text_body, trailer])
    try:
        out = ks_asm(full, sec.base)
    except keystone.KsError as e:
        raise _locate_error(sec, lines, values, env, own, e) from None
    tail = 8 * (n + 1)
    if len(out) < tail:
        raise AsmError(f"{sec.name}: keystone returned too few bytes")
    stmt_addrs = list(struct.unpack_from(f"<{n + 1}Q", out, len(out) - tail))
    data = out[:len(out) - tail]
    end = stmt_addrs[-1] - sec.base
    return stmt_addrs, data[:end]


def _locate_error(sec: Section, lines: list[str | None], values, env, own, err) -> AsmError:
    """Find the statement keystone choked on by assembling the instructions
    one at a time, and say what is wrong with it (emu/asm/diagnose.py)."""
    import keystone

    from emu.asm.diagnose import diagnose

    placeholder = {lab: values.get(lab, sec.base) for lab in own}
    for st, line in zip(sec.stmts, lines):
        if st.kind != "insn":
            continue
        equs = [f".equ {t}, {placeholder[t]:#x}" for t in set(IDENT.findall(line)) if t in placeholder]
        equs += _foreign_equs(line, own, values)
        try:
            ks_asm("\n".join(equs + [line]), sec.base)
        except keystone.KsError as e:
            return diagnose(st, line, e, env, lambda text: ks_asm("\n".join(equs + [text]), sec.base))
    first = next((st for st in sec.stmts if st.kind != "empty"), None)
    where = f"{first.file}" if first else sec.name
    return AsmError(f"{where}: keystone: {err} in section {sec.name}")


# --- verification ---------------------------------------------------------------------
