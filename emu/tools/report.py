"""``isoemu report``: one self-contained HTML page (docs/views.md, "The
report").

No network, no script files: inline CSS, inline SVG and ``<details>``
elements.  The sections are
- a map of each address space's canonical VA space: the mapped runs as bands
  in address order, coloured by user/kernel, writable, executable, with the
  page size; each band's width grows with the logarithm of its size, so a
  4 KiB page stays visible beside a 1 GiB one, and the holes between runs are
  marked;
- the diffs between chosen pairs of spaces (as ``isoemu diff``);
- the fault matrix grid (:func:`emu.tools.pictures.matrix_svg`), each cell
  linked to the page walk behind its outcome;
- the TLB model's and ASI's findings;
- any extra sections the caller adds (the fragmentation plots of
  ``isoemu frag``).

The page is built from data computed elsewhere (maps, diffs, walk texts), so
this module knows no Unicorn and no command line.
"""

from __future__ import annotations

import math
from html import escape
from typing import NamedTuple

from emu.hw.paging import fmt_size
from emu.tools.addrmap import GLOBAL, U, W, X, Diff, SpaceMap, perm_text, render_diff
from emu.tools.matrix import MatrixResult
from emu.tools.pictures import matrix_svg

#: band colours: (user?, writable?, executable?) -> fill
BAND_FILL = {
    (True, False, False): "#90caf9", (True, True, False): "#42a5f5", (True, False, True): "#66bb6a",
    (True, True, True): "#e53935",
    (False, False, False): "#ffe082", (False, True, False): "#ffb300", (False, False, True): "#a5d6a7",
    (False, True, True): "#b71c1c",
}
_BAND_H = 26
_MAP_W = 1200

_CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1300px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ccc; }
h3 { font-size: 15px; margin-bottom: 4px; }
pre { background: #f6f6f6; padding: 8px; overflow-x: auto; font-size: 12px; }
.meta { color: #555; font-size: 13px; }
.legend span { display: inline-block; margin-right: 14px; font-size: 12px; }
.legend i { display: inline-block; width: 14px; height: 12px; margin-right: 4px; vertical-align: middle;
            border: 1px solid #888; }
details { margin: 4px 0; } summary { cursor: pointer; font-size: 13px; }
table.findings { border-collapse: collapse; font-size: 12px; }
table.findings td, table.findings th { border: 1px solid #ccc; padding: 3px 6px; text-align: left; }
:target { outline: 3px solid #ef6c00; }
"""


#: the one script: a link to a page walk opens it (and the list around it)
_OPEN_TARGET = """
function openTarget() {
  var el = location.hash && document.getElementById(location.hash.slice(1));
  for (var d = el; d; d = d.parentElement) { if (d.tagName === 'DETAILS') d.open = true; }
  if (el) el.scrollIntoView();
}
window.addEventListener('hashchange', openTarget); openTarget();
"""


class Band(NamedTuple):
    """Runs shown as one band: VA-contiguous, same permissions and page size
    (ESPfix's 65,536 aliases of one page are one band, not 65,536)."""

    va: int
    end: int
    pa: int
    page: int
    flags: int
    runs: int
    sparse: bool = False         # holes inside: runs merged across them (a space of thousands of runs)

    @property
    def size(self) -> int:
        return self.end - self.va


#: more bands than this and runs of one kind are merged across the holes between them
MAX_BANDS = 400


def bands_of(runs) -> list[Band]:
    out = _merge((Band(r.va, r.end, r.pa, r.page, r.flags, 1) for r in runs), across_holes=False)
    return out if len(out) <= MAX_BANDS else _merge(out, across_holes=True)


def _merge(bands, across_holes: bool) -> list[Band]:
    out: list[Band] = []
    for r in bands:
        b = out[-1] if out else None
        if b is not None and b.flags == r.flags and b.page == r.page and (across_holes or b.end == r.va):
            out[-1] = b._replace(end=r.end, runs=b.runs + r.runs, sparse=b.sparse or r.sparse or b.end != r.va)
        else:
            out.append(r)
    return out


def va_map_svg(m: SpaceMap) -> str:
    """One space's runs as bands in VA order, widths growing with log2(size)."""
    if not m.runs:
        return f'<svg xmlns="http://www.w3.org/2000/svg" class="vamap" data-space="{escape(m.name)}" ' \
               f'data-runs="0" width="300" height="30"><text x="4" y="18" font-size="12">nothing mapped</text></svg>'
    bands = bands_of(m.runs)
    weights = [1 + math.log2(b.size >> 12) for b in bands]
    gaps = {i for i in range(1, len(bands)) if bands[i].va != bands[i - 1].end}
    gap_w = 3
    rows: list[list[tuple[int, float]]] = [[]]
    scale = 14.0                                  # px per unit of weight
    x = 0.0
    for i, w in enumerate(weights):
        lead = gap_w if i in gaps else 0
        step = w * scale + lead
        if x + step > _MAP_W and rows[-1]:
            rows.append([])
            x = 0.0
        rows[-1].append((i, x + lead))
        x += step
    height = len(rows) * (_BAND_H + 6) + 4
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="vamap" data-space="{escape(m.name)}" '
           f'data-runs="{len(m.runs)}" data-bands="{len(bands)}" width="{_MAP_W + 10}" height="{height}" '
           f'font-size="10">']
    for r_i, row in enumerate(rows):
        y = 2 + r_i * (_BAND_H + 6)
        for i, x in row:
            b = bands[i]
            w = weights[i] * scale
            fill = BAND_FILL[(bool(b.flags & U), bool(b.flags & W), bool(b.flags & X))]
            where = f"pa {b.pa:#x}" if b.runs == 1 else f"{b.runs} runs from pa {b.pa:#x}" + (
                ", with holes between them" if b.sparse else ", discontiguous frames")
            tip = f"{b.va:#x}-{b.end:#x} ({fmt_size(b.size)}): {perm_text(b.flags)}, {fmt_size(b.page)} pages, {where}"
            if i in gaps:
                prev = bands[i - 1]
                out.append(f'<rect class="hole" x="{x - gap_w:.1f}" y="{y}" width="{gap_w - 1}" '
                           f'height="{_BAND_H}" fill="#ffffff" stroke="#999999" stroke-dasharray="2,2">'
                           f'<title>hole {prev.end:#x}-{b.va:#x} ({fmt_size(b.va - prev.end)})</title></rect>')
            out.append(f'<rect class="run" data-va="{b.va:#x}" data-end="{b.end:#x}" data-page="{b.page}" '
                       f'data-runs="{b.runs}" data-perm="{escape(perm_text(b.flags))}" x="{x:.1f}" y="{y}" '
                       f'width="{w - 1:.1f}" height="{_BAND_H}" fill="{fill}" '
                       f'stroke="{"#000000" if b.flags & GLOBAL else "#ffffff"}"><title>{escape(tip)}</title></rect>')
            if w > 60:
                out.append(f'<text x="{x + 3:.1f}" y="{y + 16}" pointer-events="none">{fmt_size(b.size)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _legend() -> str:
    items = []
    for (user, wr, ex), fill in BAND_FILL.items():
        words = f"{'user' if user else 'kernel'} r{'w' if wr else '-'}{'x' if ex else '-'}"
        items.append(f'<span><i style="background:{fill}"></i>{words}</span>')
    items.append('<span><i style="background:#fff;border:1px dashed #999"></i>hole</span>')
    items.append('<span><i style="background:#fff;border:2px solid #000"></i>global</span>')
    return '<div class="legend">' + "".join(items) + "</div>"


def cell_id(region: str, access: str, space: str) -> str:
    return f"walk-{region}-{access}-{space}".replace(".", "_")


def report_html(*, title: str, config: str, maps: dict[str, SpaceMap], descriptions: dict[str, str],
                diffs: list[Diff], matrix: MatrixResult | None, walks: dict[tuple[str, str, str], str],
                extra_sections: list[tuple[str, str]] = ()) -> str:
    """The page.  ``walks`` maps a matrix cell (region, access, space) to the
    text of its page walk; ``extra_sections`` are (heading, HTML) pairs added
    at the end."""
    body = [f"<h1>{escape(title)}</h1>", f'<p class="meta">{escape(config)}</p>',
            '<nav><a href="#spaces">address spaces</a> · <a href="#diffs">diffs</a> · '
            '<a href="#matrix">fault matrix</a> · <a href="#findings">findings</a>'
            + "".join(f' · <a href="#extra-{i}">{escape(h)}</a>' for i, (h, _) in enumerate(extra_sections))
            + "</nav>"]
    body.append('<h2 id="spaces">Address spaces</h2>')
    body.append('<p class="meta">Every mapped run in VA order; a band\'s width grows with the logarithm of '
                'its size (a 4K page stays visible beside 1G); dashed gaps are holes. Hover for the range, '
                'permissions (effective, all levels), page size and physical address.</p>')
    body.append(_legend())
    for name, m in maps.items():
        desc = descriptions.get(name, "")
        body.append(f'<h3 id="space-{escape(name)}">{escape(name)} <span class="meta">cr3 {m.root:#x}'
                    f'{" · " + escape(desc) if desc else ""} · {len(m.runs)} runs, '
                    f'{fmt_size(m.mapped_bytes())} mapped'
                    f'{f", {len(m.removed)} removed entries" if m.removed else ""}</span></h3>')
        body.append(va_map_svg(m))
    body.append('<h2 id="diffs">Diffs</h2>')
    for d in diffs:
        body.append(f'<details open class="diff" data-a="{escape(d.a.name)}" data-b="{escape(d.b.name)}" '
                    f'data-ranges="{len(d.ranges)}"><summary>{escape(d.a.name)} vs {escape(d.b.name)}: '
                    f'{len(d.ranges)} ranges differ</summary><pre>{escape(chr(10).join(render_diff(d)))}</pre>'
                    f"</details>")
    body.append('<h2 id="matrix">Fault matrix</h2>')
    if matrix is not None:
        body.append('<p class="meta">Click a cell for the page walk behind it.</p>')
        body.append(matrix_svg(matrix, link=lambda c: "#" + cell_id(c.region, c.access, c.space)))
        outcome = {(c.region, c.access, c.space): c.got.text() for c in matrix.cells}
        body.append(f'<details class="walks"><summary>Page walks ({len(walks)})</summary>')
        for key, text in walks.items():
            region, access, space = key
            body.append(f'<details class="walk" id="{cell_id(region, access, space)}"><summary>{escape(region)} '
                        f'{escape(access)} in {escape(space)}: {escape(outcome.get(key, ""))}</summary>'
                        f'<pre>{escape(text)}</pre></details>')
        body.append("</details>")
    body.append('<h2 id="findings">Findings</h2>')
    body.append(_findings(matrix))
    for i, (heading, html) in enumerate(extra_sections):
        body.append(f'<h2 id="extra-{i}">{escape(heading)}</h2>')
        body.append(html)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + f"\n<script>{_OPEN_TARGET}</script>\n</body></html>\n")


def _findings(matrix: MatrixResult | None) -> str:
    if matrix is None:
        return "<p>no matrix run</p>"
    rows = [("TLB (docs/tlb.md)", f.line()) for f in matrix.findings]
    rows += [("ASI (docs/asi.md)", f.line()) for f in matrix.asi_findings]
    if not rows:
        return ('<p class="findings-none">No TLB or ASI finding: no access was served, or could have been, by '
                'a stale translation, and no sensitive access happened inside an ASI critical section.</p>')
    trs = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="findings"><tr><th>model</th><th>finding</th></tr>{trs}</table>'
