"""The fault matrix's expectation model (emu/tools/matrix_model.py) and the
machine, switch by switch.

Sources of the hand-written cells: arch/x86/mm/pti.c (__pti_set_user_pgtbl's
NX on the kernel copy of user PGD entries, pti_clone_kernel_text), Intel SDM
Vol. 3A 4.6 (access rights, SMEP, XD) and 4.7 (the I/D bit is reserved, 0,
unless SMEP or EFER.NXE is on), mm/secretmem.c, the ASI RFCv2's
exit-and-retry (kernel_stub/pgtable.S kernel_access_ok), and the ASI designs
of docs/asi.md (the 2019 RFC's KVM-class table and abort-and-retry, the 2025
RFC's user code on the restricted table).
"""

import functools
import itertools
import json

import pytest

from emu.errors import ConfigError
from emu.linux.config import SWITCHES, MachineConfig, PtiMode
from emu.tools import matrix, matrix_model
from emu.tools.matrix import REGION_NAMES, render, run_matrix
from emu.tools.matrix_model import ACCESSES, MAPPINGS, expected, mapping_row

DEFAULT = MachineConfig()


def cfg_of(text: str) -> MachineConfig:
    """``"pti=off nx=off"`` -> the default machine with those switches."""
    return DEFAULT.with_switches(dict(tok.split("=") for tok in text.split()))


@functools.lru_cache(maxsize=None)
def run(text: str):
    return run_matrix(cfg_of(text))


def cell(result, region, space, access):
    return next(c for c in result.cells if (c.region, c.space, c.access) == (region, space, access))


# --- configurations: the machine agrees with the model in every one ---------------------------
def _flips(name: str) -> list[str]:
    """``name=VALUE`` for every value of a switch but the default's."""
    sw, default = SWITCHES[name], DEFAULT.switches()[name]
    words = sw.choices if sw.kind == "choice" else ("on", "off")
    return [f"{name}={w}" for w in words if w != default]


# every switch flipped from the default (a choice to each of its other
# values; inject takes stub bugs, the TLB model's business, and ram only a
# size) ...
SINGLE = [""] + [t for n, sw in SWITCHES.items() if sw.kind in ("bool", "choice") for t in _flips(n)]
# ... and the product of the switches that change what a probe sees (the 2025
# RFC runs without PTI: pti=on is refused with it, pti=auto is pti=off)
PRODUCT = [f"pti={p} asi={a} pcid={c} smep={s} nx={x}"
           for p, a, c, s, x in itertools.product(("on", "off", "auto"), ("on", "off", "rfc2019", "rfc2025"),
                                                  *[("on", "off")] * 3)
           if a != "rfc2025" or p == "off"]


@pytest.mark.parametrize("text", SINGLE + PRODUCT, ids=lambda t: t or "default")
def test_no_mismatch_in_any_configuration(text):
    r = run(text)
    cfg = cfg_of(text)
    assert r.spaces == ["A.user", "A.kernel"] + (["A.asi"] if cfg.asi else []) + ["B.user"]
    # 18 regions x r/w/x in each of A's spaces; B.user has no released row
    assert len(r.cells) == 54 * (len(r.spaces) - 1) + 51
    assert [(c.region, c.space, c.access, c.got.text(), c.want.text()) for c in r.mismatches] == []


def test_the_product_covers_every_switch_that_changes_a_cell():
    """The switches outside PRODUCT change no expectation: the probes run
    STAC, touch only protection key 0, and neither flushes, addresses, the
    TLB model nor where secret pages come from decide an outcome."""
    for text in [t for n in ("smap", "pke", "invpcid", "la57", "tlb", "collapse") for t in _flips(n)]:
        flipped = cfg_of(text)
        for region, space, acc in itertools.product(REGION_NAMES, matrix_model.USER_SPACES + ("A.kernel", "A.asi"),
                                                    ACCESSES):
            if region == "secret_direct_map_released" and space == "B.user":
                continue
            assert expected(region, space, acc, flipped) == expected(region, space, acc, DEFAULT), \
                (text, region, space, acc)


# --- cells written out from Linux semantics, checked against the model and the machine --------
# (configuration, region, space, access, outcome, the rule that decides it)
CELLS = [
    # PTI: the kernel's copy of a user PGD entry has NX, and SMEP forbids too
    ("", "user_text", "A.kernel", "x", "#PF 0x11", "XD+SMEP"),
    ("", "user_text", "A.asi", "x", "asi-exit→#PF 0x11", "retried: XD+SMEP"),
    ("", "user_text", "A.user", "x", "ok", ""),
    ("", "user_text", "A.kernel", "w", "#PF 0x3", "R/W"),
    ("", "user_data", "A.user", "x", "#PF 0x15", "XD"),
    ("", "kernel_text", "A.user", "r", "#PF 0x4", "not present"),
    ("", "entry_text", "A.user", "r", "#PF 0x5", "U/S"),
    ("", "cpu_entry_area", "A.kernel", "w", "#PF 0x3", "R/W"),
    ("", "direct_map_sensitive", "A.asi", "r", "asi-exit→ok", "not present, retried: ok"),
    ("", "direct_map_sensitive", "A.asi", "x", "asi-exit→#PF 0x10", "not present, not retried"),
    ("", "secret_direct_map", "A.kernel", "r", "#PF 0x0", "not present"),
    ("", "secret_user", "B.user", "x", "#PF 0x14", "not present"),
    # SMEP off under PTI: the PGD NX still forbids the fetch (it hides SMEP)
    ("smep=off", "user_text", "A.kernel", "x", "#PF 0x11", "XD"),
    ("smep=off", "kernel_text", "A.user", "x", "#PF 0x14", "not present"),    # NXE keeps I/D
    # no PTI: SMEP alone decides the fetch of user text
    ("pti=off", "user_text", "A.kernel", "x", "#PF 0x11", "SMEP"),
    ("pti=off", "user_text", "A.asi", "x", "asi-exit→#PF 0x11", "retried: SMEP"),
    ("pti=off", "user_data", "A.kernel", "x", "#PF 0x11", "XD+SMEP"),
    ("pti=off", "kernel_text", "A.user", "r", "#PF 0x5", "U/S"),          # the Meltdown layout
    ("pti=off", "direct_map", "B.user", "w", "#PF 0x7", "U/S"),
    ("pti=off", "cpu_entry_area", "B.user", "w", "#PF 0x7", "U/S+R/W"),
    ("smep=off pti=off", "user_text", "A.kernel", "x", "ok", ""),
    ("smep=off pti=off", "user_text", "A.asi", "x", "ok", ""),
    # NX off: data is executable; SMEP alone guards user pages
    ("nx=off", "user_data", "A.user", "x", "ok", ""),
    ("nx=off", "secret_user", "A.user", "x", "ok", ""),
    ("nx=off", "user_data", "A.kernel", "x", "#PF 0x11", "SMEP"),
    ("nx=off", "user_text", "A.kernel", "x", "#PF 0x11", "SMEP"),
    ("nx=off", "kernel_data", "A.kernel", "x", "ok", ""),
    ("nx=off", "direct_map", "A.kernel", "x", "ok", ""),
    ("nx=off", "cpu_entry_area", "A.kernel", "x", "ok", ""),
    ("nx=off", "secret_direct_map_released", "A.kernel", "x", "ok", ""),
    ("nx=off", "direct_map_sensitive", "A.asi", "x", "asi-exit→ok", "not present, retried: ok"),
    ("nx=off", "kernel_text", "A.user", "x", "#PF 0x14", "not present"),      # SMEP keeps I/D
    # NX and SMEP off: I/D is reserved (0) in every fetch fault (SDM 4.7)
    ("nx=off smep=off", "kernel_text", "A.user", "x", "#PF 0x4", "not present"),
    ("nx=off smep=off", "entry_text", "B.user", "x", "#PF 0x5", "U/S"),
    ("nx=off smep=off", "secret_direct_map", "A.kernel", "x", "#PF 0x0", "not present"),
    ("nx=off smep=off", "secret_direct_map", "A.asi", "x", "asi-exit→#PF 0x0", "not present, not retried"),
    ("nx=off smep=off", "user_data", "A.kernel", "x", "ok", ""),
    ("nx=off smep=off", "user_text", "A.asi", "x", "ok", ""),
    # pti=auto without PCID maps kernel text into the user tables; pti=on never does
    ("pcid=off", "kernel_text", "A.user", "r", "#PF 0x5", "U/S"),
    ("pcid=off", "kernel_text", "B.user", "x", "#PF 0x15", "U/S"),
    ("pcid=off", "kernel_data", "A.user", "r", "#PF 0x4", "not present"),
    ("pcid=off", "direct_map", "A.user", "r", "#PF 0x4", "not present"),
    ("pti=on pcid=off", "kernel_text", "A.user", "r", "#PF 0x4", "not present"),
    ("pti=on", "kernel_text", "A.user", "r", "#PF 0x4", "not present"),
    # switches that change no outcome
    ("smap=off", "user_data", "A.kernel", "w", "ok", ""),
    ("pke=on", "user_data", "A.user", "w", "ok", ""),
    ("la57=on", "kernel_text", "A.user", "r", "#PF 0x4", "not present"),
    ("invpcid=off", "secret_direct_map_released", "A.kernel", "r", "ok", ""),
    ("asi=off", "direct_map_sensitive", "A.kernel", "x", "#PF 0x11", "XD"),
    # kernel stacks: vmalloc space, PAGE_KERNEL (docs/asi.md: non-sensitive)
    ("", "vmalloc", "A.user", "r", "#PF 0x4", "not present"),
    ("", "vmalloc", "A.asi", "w", "ok", ""),
    ("", "kernel_stack", "A.kernel", "x", "#PF 0x11", "XD"),
    ("pti=off", "kernel_stack", "B.user", "r", "#PF 0x5", "U/S"),
    # the 2019 RFC: a KVM-class table without direct map or user half; a fault
    # aborts the session and the full tables decide the retry
    ("asi=rfc2019", "kernel_stack", "A.asi", "r", "ok", ""),
    ("asi=rfc2019", "vmalloc", "A.asi", "r", "asi-exit→ok", "not present, session aborted, retried: ok"),
    ("asi=rfc2019", "direct_map", "A.asi", "w", "asi-exit→ok", "not present, session aborted, retried: ok"),
    ("asi=rfc2019", "user_data", "A.asi", "r", "asi-exit→ok", "not present, session aborted, retried: ok"),
    ("asi=rfc2019", "direct_map_sensitive", "A.asi", "x", "asi-exit→#PF 0x11",
     "not present, session aborted, retried: XD"),
    ("asi=rfc2019", "user_text", "A.asi", "w", "asi-exit→#PF 0x3", "not present, session aborted, retried: R/W"),
    ("asi=rfc2019", "kernel_text", "A.user", "r", "#PF 0x4", "not present"),          # PTI as configured
    ("asi=rfc2019 pti=off", "kernel_text", "A.user", "r", "#PF 0x5", "U/S"),
    # the 2025 RFC: user code runs on the restricted table (PTI off): the
    # non-sensitive kernel is present, supervisor; sensitive memory is absent
    ("asi=rfc2025", "direct_map", "A.user", "r", "#PF 0x5", "U/S"),
    ("asi=rfc2025", "kernel_text", "B.user", "x", "#PF 0x15", "U/S"),
    ("asi=rfc2025", "vmalloc", "A.user", "w", "#PF 0x7", "U/S"),
    ("asi=rfc2025", "direct_map_sensitive", "A.user", "r", "#PF 0x4", "not present"),
    ("asi=rfc2025", "secret_direct_map_released", "A.user", "r", "#PF 0x4", "not present"),
    ("asi=rfc2025", "user_text", "A.asi", "x", "asi-exit→#PF 0x11", "retried: SMEP"),
    ("asi=rfc2025", "direct_map_sensitive", "A.asi", "x", "asi-exit→#PF 0x10", "not present, not retried"),
    ("asi=rfc2025 pcid=off", "kernel_text", "A.user", "r", "#PF 0x5", "U/S"),
]


@pytest.mark.parametrize("text,region,space,access,want,reason", CELLS,
                         ids=[f"{c[0] or 'default'}:{c[1]}-{c[2]}-{c[3]}" for c in CELLS])
def test_cell(text, region, space, access, want, reason):
    model = expected(region, space, access, cfg_of(text))
    assert (model.text(), model.reason) == (want, reason)
    assert cell(run(text), region, space, access).got.text() == want


# --- the model's tables ---------------------------------------------------------------------------
def _domains():
    """Every value of every switch a mapping row names."""
    keys = sorted({k for row in MAPPINGS for k, _ in row.when.values})
    doms = [list(SWITCHES[k].choices) if SWITCHES[k].kind == "choice" else [True, False] for k in keys]
    return [dict(zip(keys, vals)) for vals in itertools.product(*doms)]


def test_every_cell_has_exactly_one_mapping_row():
    used = set()
    for kw in _domains():
        try:
            cfg = DEFAULT.replace(**kw)
        except ConfigError:             # pti=on with asi=rfc2025: no such machine
            continue
        for region in REGION_NAMES:
            for space in ("A.user", "A.kernel", "A.asi", "B.user"):
                if region == "secret_direct_map_released" and space == "B.user":
                    continue
                if space == "A.asi" and not cfg.asi:
                    continue
                used.add(id(mapping_row(region, space, cfg)))
    assert sorted(r.region for r in MAPPINGS if id(r) not in used) == []     # no dead row
    assert list(matrix_model.REGIONS) == REGION_NAMES


def test_an_ambiguous_table_is_refused(monkeypatch):
    """Inject a second row for one cell: the model refuses, it does not pick."""
    dup = MAPPINGS[0]
    monkeypatch.setattr(matrix_model, "MAPPINGS", MAPPINGS + [dup])
    with pytest.raises(KeyError, match=r"2 mapping rows for user_text in A.user"):
        expected("user_text", "A.user", "r", DEFAULT)


@pytest.mark.parametrize("present,access,cpl,switches,code", [
    # SDM 4.7: P, W/R, U/S, I/D (I/D only with SMEP or NXE)
    (False, "r", 3, "", 0x4),
    (True, "w", 3, "", 0x7),
    (False, "x", 0, "", 0x10),
    (False, "x", 3, "smep=off", 0x14),
    (False, "x", 3, "nx=off", 0x14),
    (False, "x", 3, "nx=off smep=off", 0x4),
    (True, "x", 0, "nx=off smep=off", 0x1),
    (True, "w", 0, "nx=off smep=off", 0x3),
])
def test_error_code_bits(present, access, cpl, switches, code):
    assert matrix_model.error_code(present, access, cpl, cfg_of(switches)) == code


# --- a SMEP regression shows where SMEP alone decides ---------------------------------------------
# (configuration, the cells that change when the machine runs without SMEP
# but the expectations keep it: got, expected, the rule)
SMEP_REGRESSION = [
    # PTI (on or auto): the PGD NX forbids every kernel fetch from a user page
    # first, so the matrix cannot see SMEP: a blind spot, stated
    ("", []),
    ("pti=on", []),
    ("pti=off", [("user_text", "x", "A.kernel", "ok", "#PF 0x11", "SMEP"),
                 ("user_text", "x", "A.asi", "ok", "asi-exit→#PF 0x11", "retried: SMEP")]),
    ("pti=off asi=off", [("user_text", "x", "A.kernel", "ok", "#PF 0x11", "SMEP")]),
    # no NX: SMEP decides every user page, and every fetch fault loses I/D
    ("pti=on nx=off",
     [(r, "x", s, "ok", w, why) for r in ("user_text", "user_data", "secret_user", "xpfo_user")
      for s, w, why in (("A.kernel", "#PF 0x11", "SMEP"), ("A.asi", "asi-exit→#PF 0x11", "retried: SMEP"))]
     + [(r, "x", "B.user", "#PF 0x4", "#PF 0x14", "not present") for r in ("secret_user", "xpfo_user")]
     + [(r, "x", s, "#PF 0x4", "#PF 0x14", "not present")
        for r in ("secret_direct_map", "xpfo_direct_map", "direct_map", "direct_map_sensitive", "kernel_text",
                  "kernel_data", "kernel_stack", "vmalloc", "gmem_private_user", "gmem_direct_map",
                  "gmem_nodm_direct_map")
        for s in ("A.user", "B.user")]
     + [(r, "x", s, g, w, why) for r in ("secret_direct_map", "xpfo_direct_map", "gmem_private_user",
                                        "gmem_nodm_direct_map")
        for s, g, w, why in (("A.kernel", "#PF 0x0", "#PF 0x10", "not present"),
                             ("A.asi", "asi-exit→#PF 0x0", "asi-exit→#PF 0x10", "not present, not retried"))]
     + [(r, "x", s, "#PF 0x5", "#PF 0x15", "U/S") for r in ("entry_text", "cpu_entry_area")
        for s in ("A.user", "B.user")]
     + [("secret_direct_map_released", "x", "A.user", "#PF 0x4", "#PF 0x14", "not present")]),
    # the ASI designs: with PTI (rfc2019) the blind spot stays, even for the
    # 2019 RFC's retry on the full tables; without it SMEP decides, in the
    # restricted table too
    ("asi=rfc2019", []),
    ("asi=rfc2019 pti=off", [("user_text", "x", "A.kernel", "ok", "#PF 0x11", "SMEP"),
                             ("user_text", "x", "A.asi", "asi-exit→ok", "asi-exit→#PF 0x11",
                              "not present, session aborted, retried: SMEP")]),
    ("asi=rfc2025", [("user_text", "x", "A.kernel", "ok", "#PF 0x11", "SMEP"),
                     ("user_text", "x", "A.asi", "ok", "asi-exit→#PF 0x11", "retried: SMEP")]),
]


@pytest.mark.parametrize("text,cells", SMEP_REGRESSION, ids=[t or "default" for t, _ in SMEP_REGRESSION])
def test_a_smep_regression_is_reported_by_name(text, cells):
    """Boot the machine with CR4.SMEP off and hold it to the expectations
    of a machine with SMEP on."""
    want_cfg = cfg_of(text)
    r = run_matrix(want_cfg.replace(smep=False), expect=want_cfg)
    got = [(c.region, c.access, c.space, c.got.text(), c.want.text(), c.want.reason) for c in r.mismatches]
    assert sorted(got) == sorted(cells)
    out = render(r)
    assert out.splitlines()[1] == "expectations for: smep=on (not the machine's)"
    for region, access, space, g, w, why in cells:
        assert f"MISMATCH {region} {access} in {space} at " in out
    assert f"{len(r.cells)} cells, {len(cells)} mismatch{'es' if len(cells) != 1 else ''}" in out


# --- fixtures: a 'ret' at every execute target ------------------------------------------------------
def test_without_the_released_page_fixture_the_fetch_runs_zeros(monkeypatch):
    """secretmem zeroes a released page; the matrix writes a 'ret' there.
    Without it the kernel's fetch (allowed: NX off) runs 00 00 (add [rax],
    al) and the cell reports that, not 'ok': the fixture is what makes
    "fetched and returned" visible."""
    monkeypatch.setattr(matrix.MatrixMachine, "_plant_released_ret", lambda self, addr: None)
    r = run_matrix(cfg_of("nx=off"))
    bad = [(c.region, c.space, c.access, c.got.outcome, c.want.text()) for c in r.mismatches]
    assert bad == [("secret_direct_map_released", "A.kernel", "x", "fault", "ok"),
                   ("secret_direct_map_released", "A.asi", "x", "asi_exit_fault", "asi-exit→ok")]


def test_every_execute_target_holds_a_ret():
    mm = matrix.MatrixMachine()
    m = mm.pause_at_yield()
    seen = {}
    # mapped nowhere: the secret's alias (checked by its own tests), A's
    # mapping of the private guest_memfd page (its alias is gmem_direct_map)
    # and the NO_DIRECT_MAP page's alias (read through its frame)
    unmapped = ("secret_direct_map", "xpfo_direct_map", "secret_direct_map_released", "gmem_private_user")
    for region, space, acc in mm.plans["A"]:
        if acc != "x" or region in unmapped:
            continue
        kind, va = matrix.region_addresses(m)[region]
        if kind != matrix.K_ABS:
            va = m.read_u64(mm.a.image.symbols["va_secret"] + 8 * (kind - 1), "A.kernel")
        elif isinstance(va, str):
            va = mm.a.image.symbols[va]
        if region == "gmem_nodm_direct_map":
            seen[region] = m.mem.read(va - m.layout.page_offset, 1)
        else:
            seen[region] = m.read_virt(va, 1, "A.kernel")
    assert seen == {r: b"\xc3" for r in REGION_NAMES if r not in unmapped}


# --- the header and --json show every switch -----------------------------------------------------------
@pytest.mark.parametrize("text", ["", "pti=off nx=off", "pcid=off la57=on pke=on", "smep=off smap=off invpcid=off"])
def test_header_and_json_show_every_switch(text):
    r = run(text)
    cfg = cfg_of(text)
    assert render(r).splitlines()[0] == "fault matrix: " + cfg.describe()
    doc = json.loads(json.dumps(r.as_dict()))
    assert doc["config"] == cfg.switches()
    assert list(doc["config"]) == list(SWITCHES)
    assert "expected_config" not in doc


def test_json_names_the_expectations_config_when_it_differs():
    r = run_matrix(cfg_of("pti=off smep=off"), expect=cfg_of("pti=off"))
    doc = r.as_dict()
    assert (doc["config"]["smep"], doc["expected_config"]["smep"]) == ("off", "on")
    assert {k for k in SWITCHES if doc["config"][k] != doc["expected_config"][k]} == {"smep"}
    assert [(c["region"], c["space"], c["expected_reason"]) for c in doc["cells"] if not c["pass"]] == \
        [("user_text", "A.kernel", "SMEP"), ("user_text", "A.asi", "retried: SMEP")]


def test_pti_mode_is_true_when_pti_is_enabled():
    assert [bool(m) for m in PtiMode] == [True, False, True]
    assert [MachineConfig(pti=v).pti for v in (True, False, "auto", "ON")] == \
        [PtiMode.ON, PtiMode.OFF, PtiMode.AUTO, PtiMode.ON]
    assert DEFAULT.pti is PtiMode.AUTO
