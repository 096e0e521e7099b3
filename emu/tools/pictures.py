"""Pictures: the fault matrix as an SVG grid (``isoemu matrix --svg``;
docs/views.md, "Pictures").

Hand-written SVG, no dependency: one ``<g class="cell">`` per probe, its
rectangle coloured by outcome, the outcome as text, and a ``<title>`` (the
browser's tooltip) with the address, what was expected and why.  Each cell
carries its facts as ``data-*`` attributes, so tests (and scripts) read the
numbers back and compare them with ``isoemu matrix --json``.
"""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

from emu.hw.paging.bits import error_code_words
from emu.tools.matrix import REGION_NAMES, MatrixResult
from emu.tools.matrix_model import ACCESSES

#: fill colour per outcome, and the legend's words for it
OUTCOME_STYLE = {
    "ok": ("#c8e6c9", "completed"),
    "fault": ("#ffcdd2", "faulted"),
    "asi_exit_ok": ("#bbdefb", "ASI exit, then completed"),
    "asi_exit_fault": ("#e1bee7", "ASI exit, then faulted"),
}
MISMATCH_STROKE = "#c62828"
STALE_STROKE = "#ef6c00"

_CELL_W, _CELL_H = 150, 22
_LABEL_W, _ACC_W = 230, 24
_TOP = 64


def matrix_svg(result: MatrixResult, link=None) -> str:
    """The matrix of ``result`` as a standalone SVG document; ``link(cell)``,
    when given, makes each cell a link (the report's page walks)."""
    spaces = result.spaces
    cells = {(c.region, c.access, c.space): c for c in result.cells}
    rows = [(r, a) for r in REGION_NAMES for a in ACCESSES
            if any((r, a, s) in cells for s in spaces)]
    describe = result.config.describe()
    # monospace 12 px is about 7.3 px a character: the configuration line fits
    width = max(_LABEL_W + _ACC_W + _CELL_W * len(spaces) + 20, 20 + int(len(describe) * 7.3))
    legend_y = _TOP + _CELL_H * len(rows) + 20
    height = legend_y + 22 * (len(OUTCOME_STYLE) + 3) + 10
    bad = len(result.mismatches)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="monospace" font-size="12" class="isoemu-matrix">',
        f"<title>isoemu fault matrix: {escape(describe)}</title>",
        '<rect width="100%" height="100%" fill="#ffffff"/>',
        f'<text x="10" y="20" font-size="14" font-weight="bold">fault matrix: {len(result.cells)} cells, '
        f'{bad} mismatch{"es" if bad != 1 else ""}</text>',
        f'<text x="10" y="38" fill="#555555">{escape(describe)}</text>',
    ]
    x0 = _LABEL_W + _ACC_W
    for i, s in enumerate(spaces):
        out.append(f'<text x="{x0 + i * _CELL_W + _CELL_W // 2}" y="{_TOP - 8}" text-anchor="middle" '
                   f'font-weight="bold">{escape(s)}</text>')
    for j, (region, acc) in enumerate(rows):
        y = _TOP + j * _CELL_H
        if acc == ACCESSES[0]:
            out.append(f'<line x1="10" y1="{y}" x2="{width - 10}" y2="{y}" stroke="#999999"/>')
            out.append(f'<text x="10" y="{y + 15}">{escape(region)}</text>')
        out.append(f'<text x="{_LABEL_W}" y="{y + 15}" fill="#555555">{acc}</text>')
        for i, s in enumerate(spaces):
            c = cells.get((region, acc, s))
            if c is not None:
                g = _cell(c, x0 + i * _CELL_W, y)
                out.append(f'<a href="{link(c)}">{g}</a>' if link else g)
    out.extend(_legend(legend_y))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _cell(c, x: int, y: int) -> str:
    fill = OUTCOME_STYLE[c.got.outcome][0]
    stroke, sw = ("#ffffff", 1)
    if c.stale:
        stroke, sw = STALE_STROKE, 2
    if not c.ok:
        stroke, sw = MISMATCH_STROKE, 3
    text = c.got.text() + (" stale" if c.stale else "") + ("" if c.ok else " ✗")
    tip = [f"{c.region} {c.access} in {c.space} (CPL {c.cpl}) at {c.va:#x}",
           f"got: {c.got.text()}" + (f" ({error_code_words(c.got.error_code)})" if c.got.vector == 14 else ""),
           f"expected: {c.want.text()}" + (f" ({c.want.reason})" if c.want.reason else "")]
    if c.stale:
        tip.append("the TLB model found a stale translation for this access (docs/tlb.md)")
    attrs = {
        "class": "cell", "data-region": c.region, "data-access": c.access, "data-space": c.space,
        "data-va": f"{c.va:#x}", "data-outcome": c.got.outcome,
        "data-vector": "" if c.got.vector is None else str(c.got.vector),
        "data-error-code": "" if c.got.error_code is None else f"{c.got.error_code:#x}",
        "data-expected": c.want.text(), "data-pass": "true" if c.ok else "false",
        "data-stale": "true" if c.stale else "false",
    }
    a = " ".join(f"{k}={quoteattr(v)}" for k, v in attrs.items())
    return (f"<g {a}><title>{escape(chr(10).join(tip))}</title>"
            f'<rect x="{x + 1}" y="{y + 1}" width="{_CELL_W - 2}" height="{_CELL_H - 2}" rx="3" '
            f'fill="{fill}" stroke="{stroke}" stroke-width="{sw}"/>'
            f'<text x="{x + 6}" y="{y + 15}">{escape(text)}</text></g>')


def _legend(y: int) -> list[str]:
    out = [f'<text x="10" y="{y + 12}" font-weight="bold">legend</text>']
    items = [(fill, "#ffffff", 1, words) for fill, words in OUTCOME_STYLE.values()]
    items += [("#ffffff", MISMATCH_STROKE, 3, "✗ differs from Linux's expected outcome"),
              ("#ffffff", STALE_STROKE, 2, "stale: the TLB model found a stale translation")]
    for k, (fill, stroke, sw, words) in enumerate(items, start=1):
        yy = y + 22 * k
        out.append(f'<rect x="10" y="{yy}" width="30" height="16" rx="3" fill="{fill}" stroke="{stroke}" '
                   f'stroke-width="{sw}"/>')
        out.append(f'<text x="48" y="{yy + 12}">{escape(words)}</text>')
    return out
