"""Fixed costs (docs/performance.md): a machine boot in this process, and
``isoemu matrix`` and ``isoemu test asm/`` in a new process with the image
cache warm against the same run without it (docs/assembler.md, "The image
cache")."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time

from emu.dev.bench.core import asm_root, bench, best, figure


_PROGRAM = """
_start:
    mov eax, SYS_exit
    xor edi, edi
    syscall
"""


def _boot_once() -> int:
    from emu.linux.machine import Machine

    m = Machine(programs=[("A", _PROGRAM)])
    m.boot()
    m.mem.close()
    return 1


def _raw_unicorn(ram: int) -> int:
    from unicorn import UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL, Uc

    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, ram, UC_PROT_ALL)
    return 1


def _matrix_process(env: dict) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "emu.cli", "matrix"], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def _asm_process(env: dict, paths: list[str]) -> tuple[float, int]:
    """Seconds of one ``isoemu test PATHS`` process, and the configurations it ran."""
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "emu.cli", "test", *paths], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, text=True)
    dt = time.perf_counter() - t
    m = re.search(r"^(\d+) passed, (\d+) failed", p.stdout, re.M)
    if p.returncode != 0 or m is None:
        raise RuntimeError(f"isoemu test {' '.join(paths)}: exit status {p.returncode}, "
                           f"{(p.stdout.strip().splitlines() or ['no output'])[-1]}")
    return dt, int(m.group(1)) + int(m.group(2))


@bench("startup")
def bench_startup(quick: bool) -> list[dict]:
    from emu.linux.config import MachineConfig
    from emu.tools.asmtest.command import default_jobs

    _boot_once()                                   # the images linked and cached in this process
    t_boot, _ = best(_boot_once, 3 if quick else 10)
    t_uc, _ = best(lambda: _raw_unicorn(MachineConfig().ram), 3 if quick else 10)
    figs = [figure("boot_ms (Machine: tables built, images linked in memory, CPU set up)", t_boot * 1e3, "ms",
                   baseline=t_uc * 1e3, baseline_name="a bare Unicorn instance with the same RAM mapped",
                   higher_is_better=False, target="<= 3")]
    with tempfile.TemporaryDirectory() as d:
        # as a user's machine has it: Python's bytecode cached too (hosts that set
        # PYTHONDONTWRITEBYTECODE would otherwise compile every module each time)
        env = {**os.environ, "ISOEMU_CACHE_DIR": d, "PYTHONPYCACHEPREFIX": os.path.join(d, "pycache")}
        env.pop("ISOEMU_NO_CACHE", None)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        cold = _matrix_process(env)                # fills the cache
        warm = min(_matrix_process(env) for _ in range(1 if quick else 3))
        none = min(_matrix_process({**env, "ISOEMU_NO_CACHE": "1"}) for _ in range(1 if quick else 3))
        figs.append(figure("matrix_new_process_seconds (isoemu matrix, image cache warm)", warm, "s",
                           baseline=none, baseline_name="the same with --no-cache", higher_is_better=False,
                           target="<= 0.2", note=f"first run, filling the cache: {cold:.3f} s"))
        root = asm_root()
        if root is not None:
            # the whole suite (a quick run: one directory of it), as a user runs it
            paths = [os.path.join(root, "pti")] if quick else [root]
            _asm_process(env, paths)               # fills the cache
            warm, n = min(_asm_process(env, paths) for _ in range(1 if quick else 2))
            serial, _ = _asm_process(env, ["-j", "1", *paths])
            none, _ = _asm_process({**env, "ISOEMU_NO_CACHE": "1"}, paths)
            figs.append(figure(f"asm_tests_per_s (isoemu test {'asm/pti' if quick else 'asm/'}, {n} configurations, "
                               f"new process, image cache warm, -j {default_jobs()})", n / warm, "1/s",
                               baseline=n / none, baseline_name="the same with --no-cache", target=">= 70",
                               note=f"-j 1: {n / serial:.1f}/s"))
    return figs
