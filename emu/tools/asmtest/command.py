"""Discovery and ``isoemu test``: one line per configuration, the failure
reports, a summary."""

from __future__ import annotations

import os
import time

from emu.linux.machine import Interrupted
from emu.tools.asmtest.format import AsmTestError
from emu.tools.asmtest.report import summary
from emu.tools.asmtest.runner import run_variants


def discover(paths: list[str]) -> list[str]:
    """Test files under ``paths`` (files as given; directories: every ``*.S``,
    sorted)."""
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            found = []
            for root, dirs, files in os.walk(p):
                dirs.sort()
                found += [os.path.join(root, f) for f in sorted(files) if f.endswith(".S")]
            if not found:
                raise AsmTestError(f"{p}: no .S files in this directory")
            out += found
        elif os.path.exists(p):
            out.append(p)
        else:
            raise AsmTestError(f"{p}: no such file or directory")
    return out


def run_paths(paths: list[str], out, exitfirst: bool = False, overrides: dict[str, str] | None = None,
              budget: int | None = None) -> int:
    """``isoemu test``: a status line per configuration of each test, the
    failure reports, a summary.  Returns 0 when every run passed, else 1.
    Ctrl-C stops the whole run: the summary so far, then Interrupted
    (exit status 130) naming where the guest was."""
    t0 = time.perf_counter()
    files = discover(paths)
    passed = failed = 0
    try:
        for f in files:
            for r in run_variants(f, budget, overrides=overrides):
                out.write(r.report() + "\n")
                out.flush()
                if r.passed:
                    passed += 1
                else:
                    failed += 1
            if failed and exitfirst:
                break
    except Interrupted:
        out.write(summary(passed, failed, time.perf_counter() - t0) + " (interrupted)\n")
        out.flush()
        raise
    out.write(summary(passed, failed, time.perf_counter() - t0) + "\n")
    return 1 if failed else 0
