"""The unmapped allocator (kernel_stub/unmapped.S): the unmapped= and collapse=
switches, the figures Machine.stats gives of a stub run, and the stub against
the fragmentation model (emu/tools/frag/crosscheck.py, docs/frag.md)."""

from __future__ import annotations

import json

import pytest

from emu.cli.main import main
from emu.errors import ConfigError
from emu.linux.config import MachineConfig, parse_assignments
from emu.tools.frag import parse_workload, run_strategy
from emu.tools.frag.crosscheck import COMPARED, cross_check

M256, G2 = 256 << 20, 2 << 30

# --- the switches -------------------------------------------------------------------------------
SWITCH_ERRORS = [
    ("secretmem=page", "secretmem= is now unmapped= (page, pmd-cache, reserved, unmapped-alloc): the strategy "
                       "applies to every user of memory taken out of the direct map"),
    ("unmapped=slab", "unmapped=slab: use one of page, pmd-cache, reserved, unmapped-alloc"),
    ("unmapped=pmd_cache", "unmapped=pmd_cache: use one of page, pmd-cache, reserved, unmapped-alloc "
                           "(did you mean 'pmd-cache'?)"),
    ("collapse=yes", "collapse=yes: use collapse=on or collapse=off"),
    ("unmapped_pool=1G", "unmapped_pool size '1G' is out of range (2M .. 128M)"),
]


@pytest.mark.parametrize("text,error", SWITCH_ERRORS, ids=[t for t, _ in SWITCH_ERRORS])
def test_switch_errors(text, error):
    with pytest.raises(ConfigError) as e:
        parse_assignments([text])
    assert str(e.value) == error


@pytest.mark.parametrize("kw,error", [
    (dict(unmapped_pool=3 << 20), "unmapped_pool=3M: use whole 2 MiB blocks, at most 128M and half of RAM (128M)"),
    (dict(unmapped_pool=64 << 20, ram=64 << 20), "unmapped_pool=64M: use whole 2 MiB blocks, at most 128M and "
                                                 "half of RAM (32M)"),
])
def test_pool_refused(kw, error):
    with pytest.raises(ConfigError) as e:
        MachineConfig(**kw)
    assert str(e.value) == error


# --- isoemu stats under each strategy: the allocator's flushes from the TLB model --------------
# (strategy) -> (secret mapped, released): unmapped_tlb_full_flushes, unmapped_tlb_invlpg, unmapped_blocks.
# The stats program takes three pages out of the direct map: a secret page, a NO_DIRECT_MAP
# guest_memfd page (whose file lives on to the end) and a /dev/xpfo page (the device the owner)
STATS = {
    # one split (a full flush) and the secret and guest_memfd pages' INVLPG (xpfo's batch flush
    # is its own, outside the allocator); nothing at release
    "page": ((1, 2, 0), (1, 2, 0)),
    # one PMD-size page per owner out whole: 512 pages > 33, a full flush each; the files' blocks
    # are back by the released column, the xpfo device's stays
    "pmd-cache": ((3, 0, 3), (3, 0, 1)),
    # the pool's 8 blocks left at boot: no flush at all
    "reserved": ((0, 0, 8), (0, 0, 8)),
    # one block out whole (a full flush) for both, kept
    "unmapped-alloc": ((1, 0, 1), (1, 0, 1)),
}


@pytest.mark.parametrize("strategy", list(STATS))
def test_stats_per_strategy(capsys, strategy):
    assert main(["stats", "--json", "--set", f"unmapped={strategy}"]) == 0
    doc = json.loads(capsys.readouterr().out)
    got = tuple(tuple(doc[phase][k] for k in ("unmapped_tlb_full_flushes", "unmapped_tlb_invlpg", "unmapped_blocks"))
                for phase in ("secret_mapped", "secret_released"))
    assert got == STATS[strategy]
    assert all(doc[p]["tlb_finding_stale-access"] == 0 for p in doc)


# --- the stub against the model -------------------------------------------------------------------
Z = dict.fromkeys(COMPARED, 0)
# (strategy, collapse, processes, late, pages, ram) -> the figures at the end (changes from boot), the
# same on both sides; 'late' processes allocate after the others have exited
CASES = [
    # mainline: the first key splits its 2M page (one full flush), each key an INVLPG; nothing joins
    # the pieces again
    ("page", False, 3, 0, 2, M256, dict(Z, DirectMap4k=2048, DirectMap2M=-2048, level2_splits=1,
                                        tlb_full_flushes=1, tlb_invlpg=6)),
    # ... unless collapsed when the last key goes: one more full flush, before the table is freed;
    # a late process splits and collapses again
    ("page", True, 3, 0, 2, M256, dict(Z, level2_splits=1, collapses=1, tlb_full_flushes=2, tlb_invlpg=6)),
    ("page", True, 4, 1, 3, M256, dict(Z, level2_splits=2, collapses=2, tlb_full_flushes=4, tlb_invlpg=12)),
    ("page", True, 4, 0, 5, G2, dict(Z, level2_splits=1, collapses=1, tlb_full_flushes=2, tlb_invlpg=20)),
    # v6: a PMD-size page per file, out whole with one full flush; restored at the file's release
    ("pmd-cache", False, 3, 0, 2, M256, dict(Z, tlb_full_flushes=3)),
    ("pmd-cache", False, 4, 1, 3, M256, dict(Z, tlb_full_flushes=4)),
    ("pmd-cache", True, 2, 0, 3, G2, dict(Z, tlb_full_flushes=2)),
    # the pool left at boot: no flush for a fresh page; a page another process freed is cleared
    # through the temporary mapping when it is handed out again (an INVLPG)
    ("reserved", False, 3, 0, 2, M256, Z),
    ("reserved", False, 4, 1, 3, M256, dict(Z, tlb_invlpg=3)),
    ("reserved", False, 2, 0, 3, G2, Z),
    # one block for everyone: one full flush, kept at the end; reused pages cleared
    ("unmapped-alloc", False, 3, 0, 2, M256, dict(Z, tlb_full_flushes=1)),
    ("unmapped-alloc", False, 5, 2, 4, M256, dict(Z, tlb_full_flushes=1, tlb_invlpg=8)),
    ("unmapped-alloc", True, 6, 0, 8, M256, dict(Z, tlb_full_flushes=1)),
]


@pytest.mark.parametrize("strategy,collapse,processes,late,pages,ram,end", CASES,
                         ids=[f"{c[0]}{'+collapse' if c[1] else ''}-{c[2]}({c[3]} late)x{c[4]}-{c[5] >> 20}M"
                              for c in CASES])
def test_stub_against_model(strategy, collapse, processes, late, pages, ram, end):
    c = cross_check(strategy, collapse, processes, pages, late=late, ram=ram, pool=16 << 20)
    assert c.mismatches() == []
    assert c.end == (end, end)
    assert len(c.steps) == processes * pages + processes


@pytest.mark.parametrize("strategy,collapse,inject,first", [
    # the removal's flush left out: the TLB model's finding, and the stub's flush count
    ("page", False, "secretmem_noflush", "stub TLB finding: freed-while-cached"),
    ("pmd-cache", False, "secretmem_noflush", "stub TLB finding: freed-while-cached"),
    # the collapse's flush left out: the table freed while the TLB may cache it
    ("page", True, "collapse_noflush", "stub TLB finding: table-freed-while-cached"),
])
def test_a_stub_bug_is_a_difference(strategy, collapse, inject, first):
    c = cross_check(strategy, collapse, 3, 2, inject=frozenset({inject}))
    bad = c.mismatches()
    assert bad[0].startswith(first)
    assert any(": tlb_" in m and " stub " in m for m in bad)


@pytest.mark.parametrize("strategy,invlpg", [("page", 2), ("pmd-cache", 0), ("reserved", 1), ("unmapped-alloc", 1)])
def test_model_clears_a_reused_page_of_a_shared_cache(strategy, invlpg):
    """The model's side of the stub's clearing: a page y gets after x freed it
    costs the shared caches one INVLPG (the temporary mapping); page pays an
    INVLPG per removal, pmd-cache gives y its own block."""
    steps = parse_workload("alloc a 4K owner=x\nexit x\nalloc b 4K owner=y\n", "reuse")
    assert run_strategy(steps, strategy, ram=M256, pool=16 << 20, check="full").total["tlb_invlpg"] == invlpg


def test_cli_stub_table_and_json(capsys):
    assert main(["frag", "--stub", "--strategy", "page,reserved", "--processes", "2", "--pages", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "stub against model: 2 processes x 1 secret pages (0 late), ram 256M, collapse off"
    assert out[-1].split() == ["steps", "that", "differ", "0", "0"]
    assert main(["frag", "--stub", "--json", "--strategy", "pmd-cache", "--pages", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (c,) = doc["checks"]
    assert doc["figures"] == list(COMPARED) and c["mismatches"] == [] and c["stub"] == c["model"]
    assert c["steps"][-1] == "p2 exits" and c["stub"][-1]["tlb_full_flushes"] == 3


@pytest.mark.parametrize("argv,error", [
    (["--stub", "--preset", "keys"], "frag --stub: --preset does not apply (the workload is --processes x --pages; "
                                     "the pool is 16M)"),
    (["--stub", "--steps"], "frag --stub: --steps and --check do not apply (every step is compared, every "
                            "invariant checked)"),
    (["--stub", "--processes", "7"], "frag --stub: 7 processes: use 1 .. 6"),
    (["--stub", "--late", "3"], "frag --stub: 3 late processes of 3: use 0 .. 2"),
    (["--stub", "--pages", "65"], "frag --stub: 65 pages a process: use 1 .. 64 (a memfd's limit here)"),
    (["--stub", "--strategy", "slab"], "frag: unknown strategy 'slab'; strategies: page, pmd-cache, reserved, "
                                       "unmapped-alloc"),
])
def test_cli_stub_errors(capsys, argv, error):
    assert main(["frag", *argv]) == 2
    assert capsys.readouterr().err.strip() == f"isoemu: {error}"
