"""``isoemu matrix --svg`` (emu/tools/pictures.py): the grid's cells carry
exactly what ``isoemu matrix --json`` says, and a regression shows."""

import json
import xml.etree.ElementTree as ET

import pytest

from emu.cli.main import main
from emu.hw.paging.bits import error_code_words
from emu.linux.config import MachineConfig
from emu.tools.matrix import run_matrix
from emu.tools.pictures import MISMATCH_STROKE, OUTCOME_STYLE, matrix_svg

SVG = "{http://www.w3.org/2000/svg}"


def cells_of(svg: str) -> list[ET.Element]:
    root = ET.fromstring(svg)
    assert root.tag == SVG + "svg"
    return [g for g in root.iter(SVG + "g") if g.get("class") == "cell"]


def test_svg_cells_equal_the_json(tmp_path, capsys):
    out = tmp_path / "m.svg"
    assert main(["matrix", "--svg", str(out)]) == 0
    capsys.readouterr()
    assert main(["matrix", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    got = {(g.get("data-region"), g.get("data-access"), g.get("data-space")):
           (g.get("data-va"), g.get("data-outcome"), g.get("data-expected"), g.get("data-pass"))
           for g in cells_of(out.read_text())}
    want = {(c["region"], c["access"], c["space"]):
            (c["va"], c["outcome"], c["expected"], "true" if c["pass"] else "false") for c in doc["cells"]}
    assert got == want and len(got) == doc["summary"]["cells"]


def test_svg_colours_and_tooltips():
    r = run_matrix()
    for g in cells_of(matrix_svg(r)):
        rect = g.find(SVG + "rect")
        assert rect.get("fill") == OUTCOME_STYLE[g.get("data-outcome")][0]
        title = g.find(SVG + "title").text
        assert g.get("data-va") in title and f"expected: {g.get('data-expected')}" in title
        if g.get("data-vector") == "14":                      # the error code in words
            assert f"#PF {g.get('data-error-code')} ({error_code_words(int(g.get('data-error-code'), 16))})" in title


def test_svg_marks_a_regression():
    """The bug injected: SMEP off while Linux's expectations keep it on.
    Every mismatching cell (and only those) is outlined and crossed."""
    want = MachineConfig().with_switches({"pti": "off"})
    r = run_matrix(want.replace(smep=False), expect=want)
    assert r.mismatches
    bad = {(c.region, c.access, c.space) for c in r.mismatches}
    marked = set()
    for g in cells_of(matrix_svg(r)):
        key = (g.get("data-region"), g.get("data-access"), g.get("data-space"))
        crossed = g.get("data-pass") == "false"
        assert crossed == (g.find(SVG + "rect").get("stroke") == MISMATCH_STROKE)
        assert crossed == g.find(SVG + "text").text.endswith("✗")
        if crossed:
            marked.add(key)
    assert marked == bad


@pytest.mark.parametrize("argv, line", [
    (["matrix", "--svg", "/nonexistent-dir/m.svg"], "isoemu: cannot write /nonexistent-dir/m.svg: No such file or directory"),
    (["matrix", "--svg", "m.svg", "--asi-designs"], "isoemu: --svg draws one machine's matrix: leave out --asi-designs"),
])
def test_svg_bad_input(capsys, argv, line):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip() == line


# --- isoemu report ---------------------------------------------------------------------------
import re  # noqa: E402
from html.parser import HTMLParser  # noqa: E402

from .imagekit import Fixture  # noqa: E402


class _Page(HTMLParser):
    """The report's elements of interest, with their attributes."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def of(self, tag: str, cls: str | None = None) -> list[dict]:
        return [a for t, a in self.tags if t == tag and (cls is None or a.get("class") == cls)]


def page_of(text: str) -> _Page:
    p = _Page()
    p.feed(text)
    return p


def test_report_numbers_equal_the_commands(tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", "-o", str(out)]) == 0
    text = out.read_text()
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")     # self-contained
    page = page_of(text)
    capsys.readouterr()
    main(["spaces"])
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert [a["data-space"] for a in page.of("svg", "vamap")] == names
    for pair in (("A.user", "A.kernel"), ("A.kernel", "A.asi")):
        main(["diff", *pair, "--json"])
        want = json.loads(capsys.readouterr().out)["summary"]["ranges"]
        [d] = [a for a in page.of("details", "diff") if (a["data-a"], a["data-b"]) == pair]
        assert int(d["data-ranges"]) == want
    main(["matrix", "--json"])
    cells = json.loads(capsys.readouterr().out)["cells"]
    got = {(a["data-region"], a["data-access"], a["data-space"]): a["data-outcome"] for a in page.of("g", "cell")}
    assert got == {(c["region"], c["access"], c["space"]): c["outcome"] for c in cells}
    # every cell links to a page walk that exists
    ids = {a["id"] for a in page.of("details", "walk")}
    links = [a["href"] for a in page.of("a") if a.get("href", "").startswith("#walk-")]
    assert len(links) == len(cells) and {h[1:] for h in links} == ids
    # the walk behind the secret's removed direct-map alias shows the inverted PFN
    m = re.search(r'id="walk-secret_direct_map-r-A_kernel"><summary>[^<]*#PF 0x0</summary><pre>(.*?)</pre>',
                  text, re.S)
    assert m and "PFN inverted" in m.group(1) and "not present at pte" in m.group(1)
    assert 'class="findings-none"' in text


def test_report_runs_equal_the_maps(tmp_path):
    from emu.tools.addrmap import space_map
    from emu.tools.matrix import MatrixMachine
    from emu.hw.paging import mode_for

    out = tmp_path / "r.html"
    assert main(["report", "-o", str(out), "--diff", "A.user,B.user"]) == 0
    page = page_of(out.read_text())
    mm = MatrixMachine()
    mm.pause_at_yield()
    m = mm.m
    want = {n: len(space_map(n, m.mem, r, mode_for(m.config.levels)).runs) for n, r in m.spaces().items()}
    assert {a["data-space"]: int(a["data-runs"]) for a in page.of("svg", "vamap")} == want
    assert [(a["data-a"], a["data-b"]) for a in page.of("details", "diff")] == [("A.user", "B.user")]
    bands = page.of("rect", "run")               # a band: VA-contiguous runs of one permission and page size
    assert sum(int(b["data-runs"]) for b in bands) == sum(want.values())


def test_report_on_an_image(tmp_path):
    fx = Fixture("linux61-4level")
    out = tmp_path / "r.html"
    assert main(["report", "-o", str(out), "--image", fx.elf, "--cr3", f"{fx.pgd:x}",
                 "--cr3", f"{fx.pgd + 0x1000:x}"]) == 0
    page = page_of(out.read_text())
    assert [a["data-space"] for a in page.of("svg", "vamap")] == [f"{fx.pgd:#x}", f"{fx.pgd + 0x1000:#x}"]
    assert [(a["data-a"], a["data-b"]) for a in page.of("details", "diff")] == [(f"{fx.pgd:#x}", f"{fx.pgd + 0x1000:#x}")]
    assert page.of("g", "cell") == []


@pytest.mark.parametrize("argv, line", [
    (["report"], "isoemu: report needs -o FILE (the HTML page to write)"),
    (["report", "-o", "/nonexistent-dir/r.html"], "isoemu: cannot write /nonexistent-dir/r.html: No such file or directory"),
    (["report", "-o", "r.html", "--diff", "A.user"], "isoemu: --diff 'A.user': expected two spaces, A,B"),
    (["report", "-o", "r.html", "--diff", "A.user,C.user"], "isoemu: --diff: unknown space 'C.user'; choose from "
     "kernel, kernel.user, asi.global, A.kernel, A.user, A.asi, B.kernel, B.user, B.asi"),
])
def test_report_bad_input(capsys, argv, line):
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == line
