"""What the CPU-MMU oracle reports, and how a report is compared with the walker.

Shared by the oracle's one-case path (:meth:`MmuOracle.access`) and its
batch path (:mod:`emu.dev.mmu_batch`): both yield an :class:`Outcome` and
the physical address the access touched, and :func:`agrees` is the one
comparison with the reference walker's verdict.
"""

from __future__ import annotations

from typing import NamedTuple

from emu.errors import GuestError
from emu.hw.paging import ACCESS_NAMES, VEC_PF, ControlState, Fault, Translation

__all__ = ["HarnessError", "Outcome", "Disagreement", "describe_ctl", "agrees"]

MASK64 = 0xFFFFFFFFFFFFFFFF


class HarnessError(GuestError):
    """The oracle's own machinery misbehaved (not a verdict about the tables)."""


class Outcome(NamedTuple):
    """What the CPU did with one executed access.

    ``vector`` is None when the access got through the MMU (the instruction
    completed, or touched physical memory beyond RAM); 14 (#PF) or 13 (#GP)
    otherwise.  ``cr2`` is CR2 after the access (the snapshot's CR2, see
    :attr:`MmuOracle.CR2_SENTINEL`, if no #PF wrote it).  ``error_code`` is
    the CPU's own error code for a fault, None for no fault or when the
    error-code offset could not be calibrated.
    """

    vector: int | None
    cr2: int
    error_code: int | None


def describe_ctl(ctl: ControlState) -> str:
    """``WP=1 SMEP=1 SMAP=0 AC=0 NXE=1 PKE=1 PKRU=0x4``: the state a case ran under."""
    return (f"WP={ctl.wp:d} SMEP={ctl.smep:d} SMAP={ctl.smap:d} AC={ctl.ac:d} NXE={ctl.nxe:d} "
            f"PKE={ctl.pke:d} PKRU={ctl.pkru:#x}")


def _walker_verdict(w: Translation | Fault) -> str:
    if w.fault is None:
        return f"translation to {w.pa:#x} ({w.size >> 10} KiB page)"
    return w.describe()


def agrees(w: Translation | Fault, o: Outcome, pa: int | None, va: int, cr2_sentinel: int) -> bool:
    """The walker's verdict ``w`` against what the CPU did: fault or not,
    vector, CR2 and the CPU's error code (when calibrated), and the physical
    address the access touched (``pa``, when the memory hooks saw it)."""
    if w.fault is None:
        return o.vector is None and (pa is None or pa == w.pa)
    if w.vector == VEC_PF:
        return (o.vector == VEC_PF and o.cr2 == va & MASK64
                and (o.error_code is None or o.error_code == w.error_code))
    # #GP(0) for a non-canonical address: CR2 keeps its old value
    return o.vector == w.vector and o.cr2 == cr2_sentinel and (o.error_code is None or o.error_code == 0)


class Disagreement(NamedTuple):
    """One case where the walker and the CPU differ, with everything to replay it."""

    how: str                    # "hw_translate", "access" or "batch"
    root: int
    va: int
    access: int
    cpl: int
    ctl: ControlState
    walker: Translation | Fault
    cpu: object                 # hw_translate's address (or None), or an Outcome
    cpu_pa: int | None = None   # physical address the executed access touched, if seen

    def describe(self) -> str:
        steps = "  ".join(f"{s.level}[{s.index}]@{s.entry_pa:#x}={s.entry:#018x}" for s in self.walker.steps)
        if self.how == "hw_translate":
            cpu = "fault" if self.cpu is None else f"translation to {self.cpu:#x}"
        else:
            o = self.cpu
            if o.vector is None:
                cpu = "no fault" + (f" (touched {self.cpu_pa:#x})" if self.cpu_pa is not None else "")
            else:
                ec = "?" if o.error_code is None else f"{o.error_code:#x}"
                cpu = f"vector {o.vector}, error code {ec}, CR2 {o.cr2:#x}"
        return (f"{self.how}: {ACCESS_NAMES[self.access]} {self.va:#x} at CPL{self.cpl}, "
                f"{describe_ctl(self.ctl)}, {self.walker.levels}-level root {self.root:#x}\n"
                f"  walk:   {steps or '(none: not canonical)'}\n"
                f"  walker: {_walker_verdict(self.walker)}\n"
                f"  cpu:    {cpu}")
