"""What a warm start loads, and the shortcuts it takes (docs/performance.md,
"A new process")."""

from __future__ import annotations

import os
import subprocess
import sys

import emu.hw.microcode.invalid as invalid
from emu.linux.machine import MachineConfig
from emu.tools.matrix import run_matrix

PROBE = ("import sys, io, contextlib\n"
         "from emu.cli.main import main\n"
         "with contextlib.redirect_stdout(io.StringIO()):\n"
         "    rc = main(['matrix'])\n"
         "print(rc, sorted(m for m in ('capstone', 'keystone', 'emu.cli.debug', 'emu.tools.trace', "
         "'emu.tools.pictures', 'matplotlib') if m in sys.modules))\n")


def test_a_warm_matrix_loads_neither_assembler_nor_disassembler():
    """With the image cache warm, `isoemu matrix` links nothing (no keystone),
    decodes nothing with capstone (the stub's INVPCID is read from its bytes)
    and builds only its own command's parser (no debugger, tracer, pictures)."""
    env = {**os.environ}
    for _ in range(2):                                 # the first run may fill the cache
        out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                             check=True).stdout
    assert out == "0 []\n", out


def test_the_stub_invpcid_shortcut_is_what_capstone_decodes(monkeypatch):
    """The matrix with and without the byte-pattern shortcut: the same cells,
    findings and counters (INVPCID flushes are counted by type)."""
    cfgs = (MachineConfig(), MachineConfig(asi=False, inject=frozenset({"secretmem_noflush"})))
    for cfg in cfgs:
        got = []
        for shortcut in (True, False):
            if not shortcut:
                monkeypatch.setattr(invalid, "_STUB_INVPCID", b"\xff" * 6)   # never matches: capstone decodes
            r = run_matrix(cfg)
            got.append(([(c.region, c.access, c.space, c.got.text()) for c in r.cells],
                        [f.line() for f in r.findings], r.stats))
            monkeypatch.undo()
        assert got[0] == got[1]
        assert sum(v for k, v in got[0][2].items() if k.startswith("tlb_flush_invpcid")) > 0
