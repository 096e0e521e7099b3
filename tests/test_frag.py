"""isoemu frag (emu/tools/frag, docs/frag.md): exact figures on a small
workload per strategy, the invariants catching injected strategy bugs, the
workload format's refusals, and the command line."""

import json
import xml.etree.ElementTree as ET

import pytest

from emu.cli.main import main
from emu.tools.frag import FIGURES, STRATEGIES, InvariantError, parse_workload, preset, run_strategy

# two secret pages of owner a, one of owner b; a's pages freed, b exits
SMALL = """\
alloc k1 4K owner=a
alloc k2 4K owner=a
alloc k3 4K owner=b
free k1
free k2
exit b
"""
RAM, POOL = 64 << 20, 8 << 20          # 32 PMD-size pages of direct map; a 4-PMD reserved pool

# (strategy, collapse) -> the figures at the end, in FIGURES order:
# 4k, 2M, 1G (kB); l2/l3 splits, collapses; full flushes, INVLPGs, entries invalidated; reach;
# stranded, unmovable (kB); failures; unmapped (kB)
END = {
    # mainline: one 2M page split for the first key (a full flush), an INVLPG per key; the
    # keys' pages come back as 4K entries and stay so: 31 + 512 entries to cover the map
    ("page", False): [2048, 63488, 0, 1, 0, 0, 1, 3, 4, 543, 0, 0, 0, 0],
    # ... unless collapsed once the 2M block is whole again (one more full flush)
    ("page", True): [0, 65536, 0, 1, 0, 1, 2, 3, 5, 32, 0, 0, 0, 0],
    # a PMD-size page per file leaves the direct map whole (one flush each); b's goes back at
    # exit, a's stays in a's cache although all its pages are free (a never exits)
    ("pmd-cache", False): [0, 65536, 0, 0, 0, 0, 2, 0, 2, 31, 2048, 2048, 0, 0],
    # the pool leaves the direct map at boot (4 PMDs, one flush) and never comes back
    ("reserved", False): [0, 65536, 0, 0, 0, 0, 1, 0, 4, 28, 8192, 0, 0, 0],
    # one shared block for every user; the last free block is kept in reserve
    ("unmapped-alloc", False): [0, 65536, 0, 0, 0, 0, 1, 0, 1, 31, 2048, 2048, 0, 0],
}


@pytest.mark.parametrize("strategy,collapse", list(END), ids=[f"{s}{'+collapse' if c else ''}" for s, c in END])
def test_small_workload_exact(strategy, collapse):
    r = run_strategy(parse_workload(SMALL, "small"), strategy, ram=RAM, pool=POOL, collapse=collapse,
                     check="full")
    assert [r.total[f] for f in FIGURES] == END[(strategy, collapse)]
    assert r.peak("unmapped_kB") == 12 and len(r.steps) == 7       # boot + 6 steps


def test_page_strategy_step_by_step():
    """Each key costs one INVLPG and removes one 4K entry from the direct map (reach - 1); each free puts one back (reach + 1)."""
    r = run_strategy(parse_workload(SMALL, "small"), "page", ram=RAM, pool=POOL, check="full")
    col = {f: [row[FIGURES.index(f)] for row in r.steps] for f in ("tlb_invlpg", "reach", "unmapped_kB")}
    assert col == {"tlb_invlpg": [0, 1, 2, 3, 3, 3, 3], "reach": [32, 542, 541, 540, 541, 542, 543],
                   "unmapped_kB": [0, 4, 8, 12, 8, 4, 0]}


@pytest.mark.parametrize("inject,strategy,why", [
    ("noflush", "page", "the TLB may still hold .*0xffff888000004000\\+4K.*a removal was not flushed"),
    ("noflush", "pmd-cache", "the TLB may still hold .*0xffff888000200000\\+2M.*a removal was not flushed"),
    ("mapped", "page", "direct map"),      # a page handed out while still in the direct map
])
def test_invariants_catch_injected_bugs(inject, strategy, why):
    steps = parse_workload(SMALL, "small")
    run_strategy(steps, strategy, ram=RAM, pool=POOL, check="full")               # clean without it
    with pytest.raises(InvariantError, match=why):
        run_strategy(steps, strategy, ram=RAM, pool=POOL, check="full", inject=frozenset({inject}))


def test_reserved_pool_exhausted_is_a_failure():
    text = "".join(f"alloc k{i} 4K\n" for i in range(3))
    r = run_strategy(parse_workload(text, "w"), "reserved", ram=RAM, pool=2 << 20, check="full")
    assert r.total["alloc_failures"] == 0
    big = "alloc g 4M\n"
    r = run_strategy(parse_workload(big, "w"), "reserved", ram=RAM, pool=2 << 20, check="full")
    assert r.total["alloc_failures"] == 1


@pytest.mark.parametrize("text,error", [
    ("alloc k1 5K", "w.txt:1: alloc size '5K' is not a multiple of 4K"),
    ("bogus x", "w.txt:1: unknown step 'bogus'; use one of kernel, alloc, free, exit"),
    ("alloc k1 4K\nalloc k1 4K", "w.txt:2: 'k1' is already allocated (at w.txt:1); free it first or use another ID"),
    ("alloc k1 4K foo=1", "w.txt:1: alloc: unexpected 'foo=1'; options are owner=NAME and life=STEPS"),
    ("alloc", "w.txt:1: alloc needs an ID and a size: alloc ID SIZE [owner=NAME] [life=STEPS]"),
    ("exit", "w.txt:1: exit takes one word: exit OWNER"),
    ("kernel k 4K owner=a owner=b", "w.txt:1: kernel: owner= given twice"),
    ("# nothing\n", "w.txt: no steps (lines: kernel|alloc ID SIZE [owner=NAME] [life=STEPS], free ID, exit OWNER)"),
])
def test_workload_refusals(text, error):
    with pytest.raises(Exception) as e:
        parse_workload(text, "w.txt")
    assert str(e.value) == error


def test_presets_shape():
    keys = preset("keys")
    assert sum(s.op == "alloc" for s in keys) == 1000 and sum(s.op == "exit" for s in keys) == 1000
    churn = preset("churn", seed=7, allocations=500)
    assert sum(s.op == "alloc" for s in churn) == 500
    assert churn == preset("churn", seed=7, allocations=500)      # the seed decides
    assert churn != preset("churn", seed=8, allocations=500)


def test_cli_json_and_plot(tmp_path, capsys):
    w = tmp_path / "w.txt"
    w.write_text(SMALL)
    svg = tmp_path / "f.svg"
    assert main(["frag", "--workload", str(w), "--ram", "64M", "--pool", "8M", "--json", "--plot", str(svg)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc["strategies"]) == set(STRATEGIES)
    for (s, c), want in END.items():
        if not c:
            assert [doc["strategies"][s]["total"][f] for f in FIGURES] == want
    root = ET.fromstring(svg.read_text())
    assert root.tag.endswith("svg")
    text = " ".join(t.text or "" for t in root.iter() if t.tag.endswith("text"))
    for s in STRATEGIES:
        assert s in text


@pytest.mark.parametrize("argv,line", [
    (["frag", "--strategy", "buddy"], "isoemu: frag: unknown strategy 'buddy'; strategies: " + ", ".join(STRATEGIES)),
    (["frag", "--plot", "f.gif"], "isoemu: --plot f.gif: the file name must end in .png or .svg"),
    (["frag", "--preset", "keys", "--workload", "w.txt"], "isoemu: frag: give --preset or --workload, not both"),
    (["frag", "--workload", "/nonexistent/w.txt"], None),
])
def test_cli_errors(capsys, argv, line):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("isoemu: ")
    if line:
        assert err == line
