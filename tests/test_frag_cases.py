"""isoemu frag (docs/frag.md), beside tests/test_frag.py: figures worked by
hand on 1 GiB of RAM (one 1G page at boot, so level-3 splits and two-level
collapses show), failures and shrinking, the invariants over churn for every
strategy, injected bugs caught at the step that has them, more workload and
CLI refusals, the table against --json, PNG output and the bench group."""

import json

import pytest

from emu.cli.main import main
from emu.errors import ConfigError
from emu.tools.frag import FIGURES, Experiment, InvariantError, parse_workload, preset, run_strategy

G1 = 1 << 30
ONE = "alloc a 4K owner=f\nfree a\nexit f\n"
TWO = "alloc a 4K owner=f\nalloc b 4K owner=f\nfree a\nfree b\nexit f\n"

# (strategy, collapse, workload, step index (0 = boot), {figure: value}); RAM 1G (one 1G page at
# boot), reserved pool 4M.  Worked by hand in docs/frag.md ("A worked example on 1 GiB").
CASES = [
    # page: the 1G page splits (level 3), then the 2M page (level 2), each with flush_tlb_all;
    # the page itself is one INVLPG (flush_tlb_kernel_range of one page)
    ("page", False, ONE, 1, dict(DirectMap4k=2048, DirectMap2M=1046528, DirectMap1G=0, level3_splits=1,
                                 level2_splits=1, tlb_full_flushes=2, tlb_invlpg=1, reach=511 + 511,
                                 unmapped_kB=4, unmovable_kB=4, stranded_kB=0)),
    # freed: set_direct_map_default_noflush, no flush, nothing collapses: 512 + 511 leaves
    ("page", False, ONE, 3, dict(DirectMap4k=2048, DirectMap1G=0, reach=1023, collapses=0, tlb_full_flushes=2,
                                 unmapped_kB=0, unmovable_kB=0)),
    # a second page of the same block: no new split, one more INVLPG
    ("page", False, TWO, 2, dict(level2_splits=1, level3_splits=1, tlb_full_flushes=2, tlb_invlpg=2,
                                 reach=1021, unmapped_kB=8)),
    # --collapse: the PTE table back to 2M, then the PMD table back to 1G, a flush each
    ("page", True, ONE, 2, dict(DirectMap4k=0, DirectMap2M=0, DirectMap1G=1048576, collapses=2,
                                tlb_full_flushes=4, reach=1)),
    # pmd-cache: one 2M page out whole (its PMD cleared, no 2M split), 512 pages > 33: flush_tlb_all
    ("pmd-cache", False, ONE, 1, dict(DirectMap4k=0, DirectMap2M=1048576, DirectMap1G=0, level2_splits=0,
                                      level3_splits=1, tlb_full_flushes=2, tlb_invlpg=0, reach=511,
                                      stranded_kB=2044, unmovable_kB=2048)),
    # freed: back to the file's cache; closed: the block back to the allocator, mapped again
    ("pmd-cache", False, ONE, 2, dict(stranded_kB=2048, unmovable_kB=2048, reach=511)),
    ("pmd-cache", False, ONE, 3, dict(stranded_kB=0, unmovable_kB=0, reach=512, DirectMap2M=1048576)),
    ("pmd-cache", True, ONE, 3, dict(DirectMap2M=0, DirectMap1G=1048576, collapses=1, tlb_full_flushes=3,
                                     reach=1)),
    # reserved: at boot the 1G page splits once and the pool's 2 PMDs go (one flush_tlb_all)
    ("reserved", False, ONE, 0, dict(DirectMap2M=1048576, DirectMap1G=0, level3_splits=1, tlb_full_flushes=2,
                                     reach=510, stranded_kB=4096, unmovable_kB=0)),
    ("reserved", False, ONE, 1, dict(level3_splits=1, tlb_full_flushes=2, tlb_invlpg=0, reach=510,
                                     stranded_kB=4092, unmapped_kB=4, unmovable_kB=0)),
    ("reserved", True, ONE, 3, dict(collapses=0, reach=510, stranded_kB=4096)),
    # unmapped-alloc: as pmd-cache, but the empty block stays cached for everyone after the exit
    ("unmapped-alloc", False, ONE, 1, dict(DirectMap2M=1048576, level3_splits=1, tlb_full_flushes=2, reach=511,
                                           stranded_kB=2044, unmovable_kB=2048)),
    ("unmapped-alloc", False, ONE, 3, dict(stranded_kB=2048, unmovable_kB=2048, reach=511)),
    ("unmapped-alloc", True, ONE, 3, dict(collapses=0, stranded_kB=2048, reach=511)),
]


@pytest.mark.parametrize("strategy,collapse,workload,step,want", CASES)
def test_figures_by_hand(strategy, collapse, workload, step, want):
    run = run_strategy(parse_workload(workload), strategy, ram=G1, collapse=collapse, pool=4 << 20,
                       check="full")
    got = dict(zip(FIGURES, run.steps[step]))
    assert {k: got[k] for k in want} == want


def test_allocation_failures_all_or_nothing():
    # a 4M pool cannot hold 6M: the allocation fails whole and the pool is as it was
    run = run_strategy(parse_workload("alloc g 6M\nalloc k 4K\n"), "reserved", ram=G1, pool=4 << 20,
                       check="full")
    assert [dict(zip(FIGURES, r))["alloc_failures"] for r in run.steps] == [0, 1, 1]
    assert run.total["stranded_kB"] == 4092


def test_unmapped_alloc_shrinks_under_pressure():
    # 32M of RAM, 7,676 pages free beside the cached block: 30M of ordinary memory needs it back
    steps = parse_workload("alloc s 4K\nfree s\nkernel big 30M\n")
    run = run_strategy(steps, "unmapped-alloc", ram=32 << 20, check="full")
    got = [dict(zip(FIGURES, r)) for r in run.steps]
    assert [g["stranded_kB"] for g in got] == [0, 2044, 2048, 0]
    assert got[-1]["alloc_failures"] == 0


@pytest.mark.parametrize("strategy", ["page", "pmd-cache", "reserved", "unmapped-alloc"])
@pytest.mark.parametrize("collapse", [False, True])
def test_churn_keeps_the_invariants(strategy, collapse):
    run = run_strategy(preset("churn", seed=7, allocations=60), strategy, ram=128 << 20, collapse=collapse,
                       pool=32 << 20, check="full")
    assert run.allocations == 60


# --- injected bugs, caught ------------------------------------------------------------------------
INJECTED = [
    ("noflush", "page", "keys:2 (alloc p0.key 4K owner=p0)", "a removal was not flushed"),
    ("noflush", "pmd-cache", "keys:2 (alloc p0.key 4K owner=p0)", "a removal was not flushed"),
    ("mapped", "page", "keys:2 (alloc p0.key 4K owner=p0)",
     "is handed out as unmapped but is in the direct map"),
]


@pytest.mark.parametrize("inject,strategy,where,why", INJECTED)
def test_injected_bug_is_caught(inject, strategy, where, why):
    ex = Experiment(strategy, ram=G1, inject=frozenset({inject}))
    with pytest.raises(InvariantError) as e:
        for i, st in enumerate(preset("keys"), 1):
            ex.step(i, st)
    msg = str(e.value)
    assert msg.startswith(f"frag {strategy}: invariant broken at {where}: ") and why in msg


def test_without_injection_the_same_run_passes():
    ex = Experiment("page", ram=G1, check="full")
    for i, st in enumerate(preset("keys")[:20], 1):
        ex.step(i, st)


# --- workload files -------------------------------------------------------------------------------
BAD_LINES = [
    ("alloc a 4K\nmmap x\n", "w.txt:2: unknown step 'mmap'; use one of kernel, alloc, free, exit"),
    ("alloc a 5000\n", "w.txt:1: alloc size '5000' is not a multiple of 4K"),
    ("free a\n", "w.txt:1: free a: no live allocation of that ID (never allocated, or freed already: "
                 "by free, its life= or its owner's exit)"),
    ("alloc a 4K owner=o\nexit o\nfree a\n", "w.txt:3: free a: no live allocation of that ID (never allocated, "
                                            "or freed already: by free, its life= or its owner's exit)"),
    ("free x y\n", "w.txt:1: free takes one word: free ID"),
    ("alloc owner=o 4K\n", "w.txt:1: alloc: the ID comes first, before 'owner=o'"),
]


@pytest.mark.parametrize("text,message", BAD_LINES)
def test_bad_workload_lines(text, message):
    with pytest.raises(ConfigError) as e:
        parse_workload(text, "w.txt")
    assert str(e.value) == message


def test_life_frees_later():
    run = run_strategy(parse_workload("alloc a 4K life=2\nkernel k 4K\nkernel l 4K\n"), "page", ram=G1)
    assert [dict(zip(FIGURES, r))["unmapped_kB"] for r in run.steps] == [0, 4, 4, 0]


# --- the command ----------------------------------------------------------------------------------
CLI_ERRORS = [
    (["frag", "--strategy", "page,slab"],
     "frag: unknown strategy 'slab'; strategies: page, pmd-cache, reserved, unmapped-alloc"),
    (["frag", "--workload", "WL", "--strategy", "reserved", "--ram", "64M", "--pool", "48M"],
     "reserved pool of 48 MiB: use whole 2 MiB blocks, at most half of RAM (32 MiB)"),
    (["frag", "--workload", "BAD"], "BAD:1: unknown step 'mmap'; use one of kernel, alloc, free, exit"),
]


@pytest.mark.parametrize("argv,message", CLI_ERRORS)
def test_cli_errors(tmp_path, capsys, argv, message):
    (tmp_path / "wl").write_text(ONE)
    (tmp_path / "bad").write_text("mmap x 4K\n")
    subst = {"WL": str(tmp_path / "wl"), "BAD": str(tmp_path / "bad"), "out.gif": str(tmp_path / "out.gif")}
    argv = [subst.get(a, a) for a in argv]
    message = message.replace("BAD", str(tmp_path / "bad")).replace("out.gif", str(tmp_path / "out.gif"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"isoemu: {message}\n"


def test_cli_json_and_table_agree(tmp_path, capsys):
    wl = tmp_path / "wl"
    wl.write_text(TWO)
    assert main(["frag", "--workload", str(wl), "--ram", "1G", "--pool", "4M", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["figures"] == list(FIGURES) and len(doc["step_names"]) == 6
    assert list(doc["strategies"]) == ["page", "pmd-cache", "reserved", "unmapped-alloc"]
    assert doc["strategies"]["page"]["total"]["DirectMap4k"] == 2048
    assert main(["frag", "--workload", str(wl), "--ram", "1G", "--pool", "4M"]) == 0
    lines = capsys.readouterr().out.splitlines()
    end = [line.strip() for line in lines].index("peak")
    rows = {line.split()[0]: line.split()[-4:] for line in lines[2:end]}
    for name in FIGURES:
        assert rows[name] == [str(s["total"][name]) for s in doc["strategies"].values()], name


@pytest.mark.parametrize("ext", ["svg", "png"])
def test_cli_plot_formats(tmp_path, capsys, ext):
    wl = tmp_path / "wl"
    wl.write_text(TWO)
    out = tmp_path / f"frag.{ext}"
    assert main(["frag", "--workload", str(wl), "--ram", "1G", "--pool", "4M", "--plot", str(out)]) == 0
    data = out.read_bytes()
    if ext == "svg":
        assert data.lstrip().startswith(b"<?xml") and b"<svg" in data
        for s in (b"page", b"pmd-cache", b"reserved", b"unmapped-alloc", b"DirectMap4k", b"reach", b"stranded"):
            assert s in data
    else:
        assert data[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_group_shape():
    from emu.dev.bench import run_bench

    figs = run_bench(quick=True, only=["frag"])["figures"]
    assert [f["name"].split(" (")[1].split(",")[0] for f in figs] == ["page", "pmd-cache", "reserved",
                                                                       "unmapped-alloc"]
    for f in figs:
        assert f["unit"] == "s" and f["value"] > 0 and f["baseline"] > 0 and f["target"] == "<= 5"
