"""isoemu: an x86-64 paging emulator for kernel isolation experiments.

The public API, importable from here (each name is loaded on first use, so
``import emu`` costs nothing)::

    from emu import Machine, MachineConfig, run_matrix, Debugger, Tracer

The layers behind it are described in docs/architecture.md.
"""

from __future__ import annotations

import importlib

from emu.version import VERSION as __version__

_API = {
    "Machine": "emu.linux.machine", "MachineConfig": "emu.linux.config",
    "BudgetExhausted": "emu.linux.machine", "Interrupted": "emu.linux.machine",
    "KernelPanic": "emu.linux.machine",
    "run_matrix": "emu.tools.matrix", "Debugger": "emu.tools.debug", "Tracer": "emu.tools.trace",
    "trace_program": "emu.tools.trace", "iter_trace": "emu.tools.trace", "run_test": "emu.tools.asmtest",
    "PhysMem": "emu.hw.phys", "FrameKind": "emu.hw.phys", "PageTable": "emu.hw.paging",
    "ControlState": "emu.hw.paging", "translate": "emu.hw.paging",
    "ptdump_lines": "emu.tools.ptdump", "check": "emu.tools.lint",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'emu' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
