"""Memory-access tracing: one record per access of every executed instruction.

A :class:`Tracer` attached to a :class:`~emu.linux.machine.Machine` reports, for
each instruction that touches memory, which virtual address it touched, how
(``r``/``w``/``x``), in which address space, and what the page tables made
of it (the physical address, or the fault)::

    for rec in iter_trace("prog.S", kinds="w"):
        print(rec.as_dict())

How the records are made (docs/tracing.md, "How it works": Unicorn's
memory hooks see physical addresses, so virtual ones come from decoding):

* One Python callback per executed translated block (UC_HOOK_BLOCK), not
  per instruction: it reads every register the addresses need in one C
  batch call.  Each block is decoded once with capstone into access plans
  (:mod:`.decode`; cached by address, physical address and bytes, and
  reused while the bytes are unchanged, :mod:`.blocks`), and the plans of
  a block are compiled (:mod:`.codegen`) into a small Python function that
  computes each access's address from the registers at the block's start,
  following in-block register changes (pushes, moves, adds...:
  :mod:`.dataflow`).
* A block hook fires on entry, also for a block that then runs no
  instruction or only some (an instruction budget, a stop, a fault).  So a
  block's records are made *after* it ran: when the next block starts, at
  an ``exception``/``interrupt`` event (RIP says where it stopped; the
  faulting instruction's accesses are computed from the registers at the
  fault), or when the run stops (RIP again).  The registers read then also
  give values loaded inside the block that later addresses use.  Where
  neither they nor memory can tell such a value, an *anchor* (a code hook
  on that instruction) reads the registers there; a block that needs a new
  anchor is stopped before its first instruction and run again once the
  hook is in (:meth:`~emu.hw.microcode.System.rerun`).
* Each piece of an access (split at page boundaries) is translated with the
  reference walker through the CR3 of the block, with a walk cache
  (:mod:`.recorder`).
* The exception frame written by the microcode arrives as a ``frame_write``
  event and becomes ``w`` records of the faulting instruction (same
  ``seq``); a faulting instruction fetch arrives as an ``exception`` event
  and becomes an ``x`` record with its fault.

Not recorded: the CPU's page walks and A/D-bit updates, the descriptor
reads of IRETQ, the IDT/TSS reads of exception delivery (Python reads them
for the microcode).  Register writes that Python hooks make in the middle of
a block are not followed, except the stub's hypercall result (RAX after
``out``) and the microcode's SYSCALL (RCX, R11).

Tracing off costs nothing: no hook exists until :meth:`Tracer.attach`, and
:meth:`Tracer.detach` removes them and drops the instrumented translations.

The modules, low to high: :mod:`.records` (Record, KINDS, FIELDS),
:mod:`.isa` (registers and instruction tables), :mod:`.plans` (access
plans, StaticInsn), :mod:`.effects` (register effects), :mod:`.decode`
(analyse, decode), :mod:`.dataflow` (the per-segment analysis, anchors),
:mod:`.codegen` (segment functions), :mod:`.recorder` (contexts, walks,
records), :mod:`.blocks` (the block cache), :mod:`.tracer` (Tracer),
:mod:`.api` (load_machine, iter_trace, trace_program, name_resolver).
"""

from emu.tools.trace.api import iter_trace, load_machine, name_resolver, trace_program
from emu.tools.trace.decode import analyse, decode
from emu.tools.trace.plans import MemPlan, StaticInsn, StringPlan
from emu.tools.trace.records import FIELDS, KINDS, Record, parse_kinds
from emu.tools.trace.tracer import DEFAULT_CHUNK, Tracer

__all__ = ["KINDS", "FIELDS", "DEFAULT_CHUNK", "Record", "Tracer", "StaticInsn", "MemPlan", "StringPlan",
           "analyse", "decode", "parse_kinds", "load_machine", "name_resolver", "iter_trace", "trace_program"]
