"""Tracing a whole program: a machine running it, its records as a stream
or a list, and the names its address expressions may use."""

from __future__ import annotations

import os
from typing import Callable, Iterator

from emu.errors import ConfigError
from emu.linux.machine import DEFAULT_BUDGET, Machine, MachineConfig
from emu.linux.program import read_source, user_symbols
from emu.tools.trace.records import KINDS, Record
from emu.tools.trace.tracer import DEFAULT_CHUNK, Tracer


def load_machine(program, config: MachineConfig | None = None, *, name: str = "A",
                 record_events: bool = False) -> Machine:
    """A machine running one user program, process ``name`` (so its spaces
    are ``A.user``, ``A.kernel``, ``A.asi``): source text (it contains a
    newline) or the path of a ``.S`` file (read with
    :func:`~emu.linux.program.read_source`)."""
    path = None
    if isinstance(program, os.PathLike) or (isinstance(program, str) and "\n" not in program):
        path = os.fspath(program)
        source = read_source(path)
    elif isinstance(program, str):
        source = program
    else:
        raise ConfigError(f"a program is source text or a path, not {type(program).__name__}")
    m = Machine(config or MachineConfig(), record_events=record_events)
    m.add_process(name, source, filename=path or "<program>")
    return m


def name_resolver(machine: Machine) -> Callable[[str], int | None]:
    """The names an address expression (:func:`emu.parse.parse_address`)
    may use on ``machine``: kernel symbols (``entry_SYSCALL_64``), labels of
    a process's program as ``A:label``, and the layout names programs see
    (``USER_DATA``, ``DIRECT_MAP_BASE``, ``KERNEL_TEXT``...).  None for
    any other name."""
    kernel = machine.kernel.image.symbols
    programs = {p.name: p.image.symbols for p in machine.processes}
    layout = user_symbols(machine.layout)

    def resolve(name: str) -> int | None:
        value = kernel.get(name)
        if value is not None:
            return value
        proc, sep, label = name.partition(":")
        if sep:
            return programs.get(proc, {}).get(label)
        return layout.get(name)
    return resolve


def iter_trace(program, config: MachineConfig | None = None, *, kinds: str = KINDS, space: str | None = None,
               va_range: tuple[int, int] | None = None, budget: int = DEFAULT_BUDGET,
               name: str = "A", chunk: int = DEFAULT_CHUNK) -> Iterator[Record]:
    """Run a user program (source or path) on a fresh machine, yielding its
    records as they are made (see :class:`~emu.tools.trace.tracer.Tracer`
    for the filters, and :meth:`~emu.tools.trace.tracer.Tracer.run` for
    the errors that end a run)."""
    m = load_machine(program, config, name=name)
    tracer = Tracer(m, kinds=kinds, space=space, va_range=va_range)
    with tracer:
        yield from tracer.run(budget, chunk)


def trace_program(program, config: MachineConfig | None = None, **options) -> list[Record]:
    """:func:`iter_trace` as a list."""
    return list(iter_trace(program, config, **options))
