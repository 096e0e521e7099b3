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
