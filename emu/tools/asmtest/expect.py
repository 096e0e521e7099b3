"""Expectations: the ``; expect:`` kinds, one table row each.

Each row of :data:`KINDS` says how a kind is written (``syntax``), how its
words are read (``parse``), how its values are resolved once the program is
assembled and the machine booted (``prepare``), what the runner records at
the labelled instruction (``records``) and how the outcome is judged
(``check``).  A new kind is a new row: its functions below, and, if it needs
an observation the runner does not make yet, a name in ``records`` that
emu/tools/asmtest/runner.py learns to record.

``check(e, prepared, obs)`` returns None when the expectation holds, else
the lines of the report (what happened, then where).  ``obs`` is the
runner's record of one process in one run (runner.ProcessRun):
``reached(label)``, ``faults(label)``, ``fault_words(sig)``, ``at(label)``,
``captures(label)``, ``roots(label)``, ``space_name(root)``,
``findings_at(label, kind)`` (the TLB model's findings made while the
instruction at the label ran, or while the kernel handled the system call or
exception it raised), ``oops`` (the kernel oops that ended the run while
handling this process's system call or exception, or None), ``tlb_mode``,
``exit``, ``output`` and ``expectations`` (those that apply to this
configuration).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from emu.errors import ConfigError
from emu.hw.x86 import ERROR_CODE_VECTORS, VECTOR_BY_NAME, vector_name
from emu.linux.config import nearest
from emu.parse import parse_int
from emu.tools.asmtest.values import MASK64, BadValue, Expr, RegCheck, fmt_value, parse_check, parse_expr, signed

_LABEL = re.compile(r"^[A-Za-z_.$][\w.$@]*$")
_SPACE = re.compile(r"^[A-Za-z][\w]*(?:\.[A-Za-z][\w]*)?$")


class BadExpectation(ValueError):
    """An expectation that cannot be read: the message, without file:line."""


@dataclass
class Expectation:
    """One ``; expect:`` line."""

    file: str
    line: int
    text: str                     # the line as written, stripped
    kind: str                     # a name in KINDS
    label: str | None = None
    when: dict[str, tuple] = field(default_factory=dict)   # switch -> values it applies to
    when_text: str = ""           # the [conditions] as written
    vector: int | None = None
    error_code: int | None = None
    checks: list[RegCheck] = field(default_factory=list)
    status: Expr | None = None
    output: str | None = None
    space: str | None = None
    finding: str | None = None    # stale, asi: the finding kind, None for any

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file

    @property
    def regs(self) -> dict[str, int]:
        """``{reg: value}`` of plain ``REG=NUMBER`` checks (the common case)."""
        return {c.reg: c.lo.value(lambda n: None) for c in self.checks
                if c.mask is None and c.hi is None and not c.negate and not c.lo.names}

    def applies(self, config) -> bool:
        """True when every condition holds for the machine ``config``."""
        return all(getattr(config, k) in values for k, values in self.when.items())

    def describe(self) -> str:
        """The expectation in canonical words, e.g. ``probe fault 14 0x4``."""
        return KINDS[self.kind].describe(self)


@dataclass(frozen=True)
class Kind:
    name: str
    syntax: str                                      # for messages
    labelled: bool
    parse: Callable[[Expectation, list[str], str], None]
    describe: Callable[[Expectation], str]
    check: Callable[[Expectation, object, object], "list[str] | None"]
    prepare: Callable[[Expectation, object], object] | None = None
    records: tuple[str, ...] = ()                    # what the runner records at the label
    group: str | None = None                         # one expectation per group and label (or process)
    headline: Callable[[Expectation, object, object], str] | None = None   # (e, prepared, obs)


# --- ok, fault ------------------------------------------------------------------------------
def _parse_ok(e: Expectation, words: list[str], rest: str) -> None:
    if words:
        raise BadExpectation(f"'ok' takes nothing after it: {' '.join(words)!r}")


def _check_ok(e: Expectation, prepared, obs) -> list[str] | None:
    if not obs.reached(e.label):
        return ["not reached"] + obs.at(e.label)
    sigs = obs.faults(e.label)
    return ["got " + obs.fault_words(sigs[0])] + obs.at(e.label) if sigs else None


def _parse_fault(e: Expectation, words: list[str], rest: str) -> None:
    if len(words) not in (1, 2):
        raise BadExpectation("fault needs VECTOR [ERRORCODE], e.g. 'fault 14 0x4'")
    name = words[0].upper()
    try:
        e.vector = VECTOR_BY_NAME[name] if name in VECTOR_BY_NAME else \
            parse_int(words[0], "vector", lo=0, hi=31)
        if len(words) == 2:
            if e.vector not in ERROR_CODE_VECTORS:
                raise BadExpectation(f"vector {e.vector} ({vector_name(e.vector)}) has no error code")
            e.error_code = parse_int(words[1], "error code", lo=0, hi=0xFFFFFFFF)
    except ConfigError as err:
        raise BadExpectation(str(err)) from None
    if len(words) == 1 and e.vector in ERROR_CODE_VECTORS:
        raise BadExpectation(f"vector {e.vector} ({vector_name(e.vector)}) needs an ERRORCODE")


def _describe_fault(e: Expectation) -> str:
    ec = "" if e.error_code is None else f" {e.error_code:#x}"
    return f"{e.label} fault {e.vector}{ec}"


def _check_fault(e: Expectation, prepared, obs) -> list[str] | None:
    if not obs.reached(e.label):
        return ["not reached"] + obs.at(e.label)
    sigs = obs.faults(e.label)
    if not sigs:
        return ["got no fault: the instruction completed"] + obs.at(e.label)
    for s in sigs:
        ev = s.event
        if ev is None or ev.vector != e.vector or (e.error_code is not None and ev.error_code != e.error_code):
            return ["got " + obs.fault_words(s)] + obs.at(e.label)
    return None


# --- REG=VALUE ------------------------------------------------------------------------------
def _parse_regs(e: Expectation, words: list[str], rest: str) -> None:
    seen = set()
    for w in words:
        try:
            c = parse_check(w)
        except BadValue as err:
            raise BadExpectation(str(err)) from None
        key = (c.reg, c.mask is not None, c.negate)
        if c.mask is None and not c.negate and key in seen:
            raise BadExpectation(f"{c.reg} appears twice")
        seen.add(key)
        e.checks.append(c)


def _prepare_regs(e: Expectation, ctx) -> list:
    out = []
    for c in e.checks:
        try:
            out.append(c.resolve(ctx.resolve))
        except BadValue as err:
            raise BadExpectation(str(err) + ctx.hint(c.names)) from None
    return out


def _describe_regs(e: Expectation) -> str:
    return f"{e.label} " + " ".join(c.describe() for c in e.checks)


def _regs_headline(e: Expectation, resolved, obs) -> str:
    """The checks as written, with their values where they name symbols."""
    return f"expected {e.label} " + " ".join(r.shown for r in resolved)


def _check_regs(e: Expectation, resolved, obs) -> list[str] | None:
    if not obs.reached(e.label):
        return ["not reached"] + obs.at(e.label)
    sigs = obs.faults(e.label)
    # a fault is unexpected here unless a fault expectation covers it
    if sigs and not any(x.kind == "fault" and x.label == e.label for x in obs.expectations):
        return ["got " + obs.fault_words(sigs[0])] + obs.at(e.label)
    caps = obs.captures(e.label)
    if not caps:
        return ["got no result: execution never reached the next instruction"] + obs.at(e.label)
    for cap in caps:
        bad = [r for r in resolved if not r.holds(cap[r.check.reg])]
        if bad:
            got = []
            for r in bad:
                v = cap[r.check.reg]
                shown = f"{r.check.reg}={fmt_value(signed(v))}"
                if r.mask != MASK64:
                    shown += f" ({r.check.reg}&{r.mask:#x}={v & r.mask:#x})"
                if shown not in got:
                    got.append(shown)
            return ["got " + " ".join(got)] + obs.at(e.label)
    return None


# --- space ----------------------------------------------------------------------------------
def _parse_space(e: Expectation, words: list[str], rest: str) -> None:
    if len(words) != 1 or not _SPACE.match(words[0]):
        raise BadExpectation("space needs one address-space name, e.g. 'space A.user'")
    e.space = words[0]


def _prepare_space(e: Expectation, ctx) -> int:
    spaces = ctx.spaces()
    if e.space not in spaces:
        raise BadExpectation(f"unknown address space {e.space!r}{nearest(e.space, spaces)}; this machine "
                             f"has {', '.join(sorted(spaces))}")
    return spaces[e.space]


def _check_space(e: Expectation, root: int, obs) -> list[str] | None:
    if not obs.reached(e.label):
        return ["not reached"] + obs.at(e.label)
    for got in obs.roots(e.label):
        if got != root:
            return [f"got space {obs.space_name(got)}"] + obs.at(e.label)
    return None


# --- stale ----------------------------------------------------------------------------------
def _parse_stale(e: Expectation, words: list[str], rest: str) -> None:
    from emu.linux.tlbcheck import ALL_FINDINGS

    if len(words) > 1:
        raise BadExpectation("stale takes at most one finding kind, e.g. 'stale stale-access'")
    if words:
        if words[0] not in ALL_FINDINGS:
            raise BadExpectation(f"unknown TLB finding {words[0]!r}{nearest(words[0], ALL_FINDINGS)}; "
                                 f"known: {', '.join(ALL_FINDINGS)}")
        e.finding = words[0]


def _describe_stale(e: Expectation) -> str:
    return f"{e.label} stale" + (f" {e.finding}" if e.finding else "")


def _check_stale(e: Expectation, prepared, obs) -> list[str] | None:
    if not obs.reached(e.label):
        return ["not reached"] + obs.at(e.label)
    if obs.findings_at(e.label, e.finding):
        return None
    other = obs.findings_at(e.label, None)
    if other:
        return [f"got {f.finding}, not {e.finding}: {f.line()}" for f in other] + obs.at(e.label)
    how = "the TLB model is off (tlb=off)" if obs.tlb_mode == "off" else "no TLB finding"
    return [f"got {how}"] + obs.at(e.label)


# --- asi --------------------------------------------------------------------------------------
def _parse_asi(e: Expectation, words: list[str], rest: str) -> None:
    from emu.linux.asicheck import ASI_FINDINGS

    if len(words) > 1:
        raise BadExpectation(f"asi takes at most one finding kind, e.g. 'asi {ASI_FINDINGS[0]}'")
    if words:
        if words[0] not in ASI_FINDINGS:
            raise BadExpectation(f"unknown ASI finding {words[0]!r}{nearest(words[0], ASI_FINDINGS)}; "
                                 f"known: {', '.join(ASI_FINDINGS)}")
        e.finding = words[0]


def _check_asi(e: Expectation, prepared, obs) -> list[str] | None:
    if not obs.reached(e.label):
        return ["not reached"] + obs.at(e.label)
    if obs.asi_findings_at(e.label, e.finding):
        return None
    how = "asi=off: no ASI" if obs.asi_mode == "off" else "no ASI finding"
    return [f"got {how}"] + obs.at(e.label)


# --- oops -----------------------------------------------------------------------------------
def _parse_oops(e: Expectation, words: list[str], rest: str) -> None:
    if len(words) > 2:
        raise BadExpectation("oops takes at most VECTOR [ERRORCODE], e.g. 'oops 14 0x2'")
    if words:
        _parse_fault(e, words, rest)


def _describe_oops(e: Expectation) -> str:
    if e.vector is None:
        return f"{e.label} oops"
    return f"{e.label} oops" + _describe_fault(e)[len(f"{e.label} fault"):]


def _check_oops(e: Expectation, prepared, obs) -> list[str] | None:
    if not obs.reached(e.label):
        return ["not reached"] + obs.at(e.label)
    oops = obs.oops
    if oops is None:
        return ["got no oops: the kernel handled it"] + obs.at(e.label)
    if oops.rip != obs.image.symbols[e.label]:
        return [f"got an oops elsewhere: {oops.message}"] + obs.source_of(oops.rip)
    ev = oops.event
    if e.vector is not None:
        if ev is None:
            return [f"got an oops with no kernel exception before it: {oops.message}"] + obs.at(e.label)
        if ev.vector != e.vector or (e.error_code is not None and ev.error_code != e.error_code):
            return ["got an oops after " + obs.kernel_fault_words(ev)] + obs.at(e.label)
    return None


# --- exit, output ---------------------------------------------------------------------------
def _parse_exit(e: Expectation, words: list[str], rest: str) -> None:
    if len(words) != 1:
        raise BadExpectation("exit needs a STATUS from 0 to 255")
    try:
        e.status = parse_expr(words[0], "exit")
    except BadValue:
        raise BadExpectation("exit needs a STATUS from 0 to 255") from None
    if not e.status.names and not 0 <= e.status.value(lambda n: None) <= 255:
        raise BadExpectation("exit needs a STATUS from 0 to 255")


def _prepare_exit(e: Expectation, ctx) -> int:
    try:
        v = e.status.value(ctx.resolve)
    except BadValue as err:
        raise BadExpectation(f"exit {e.status.text}: {err}{ctx.hint(e.status.names)}") from None
    if not 0 <= v <= 255:
        raise BadExpectation(f"exit {e.status.text} is {v}: a STATUS is from 0 to 255")
    return v


def _describe_exit(e: Expectation) -> str:
    if e.status.names:
        return f"exit {e.status.text}"
    return f"exit {e.status.value(lambda n: None)}"


def _exit_headline(e: Expectation, status: int, obs) -> str:
    return f"expected {_describe_exit(e)}" + (f" ({status})" if e.status.names else "")


def _check_exit(e: Expectation, status: int, obs) -> list[str] | None:
    info = obs.exit
    if info is None:
        return ["got no exit: the process was still running"]
    if info["status"] == status:
        return None
    how = f"got exit {info['status']}"
    if info.get("signal"):
        how += f" (killed by {info['signal']})"
    return [how]


def _parse_output(e: Expectation, words: list[str], rest: str) -> None:
    e.output = _unquote(rest) if rest.startswith('"') else rest


def _unquote(text: str) -> str:
    """``"TEXT"``: the text between the quotes; ``\\"`` and ``\\\\`` are a quote and a backslash."""
    out = []
    i = 1
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in '"\\':
            out.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            if i != len(text) - 1:
                raise BadExpectation(f'output "TEXT": {text[i + 1:]!r} after the closing quote')
            return "".join(out)
        out.append(c)
        i += 1
    raise BadExpectation('output "TEXT" has no closing quote')


def _outputs(obs) -> list[Expectation]:
    return [x for x in obs.expectations if x.kind == "output"]


def _check_output(e: Expectation, prepared, obs) -> list[str] | None:
    outs = _outputs(obs)
    if e is not outs[0]:
        return None                       # the output lines are checked together, at the first
    want = [x.output for x in outs]
    got = obs.output.split("\n")
    if got and got[-1] == "":
        got.pop()
    return None if got == want else [f"got output {obs.output!r}"]


def _output_headline(e: Expectation, prepared, obs) -> str:
    return "expected output " + " / ".join(repr(x.output) for x in _outputs(obs))


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("ok", "LABEL ok", True, _parse_ok, lambda e: f"{e.label} ok", _check_ok, group="outcome"),
    Kind("fault", "LABEL fault VECTOR [ERRORCODE]", True, _parse_fault, _describe_fault, _check_fault,
         group="outcome"),
    Kind("regs", "LABEL REG=VALUE", True, _parse_regs, _describe_regs, _check_regs, _prepare_regs,
         records=("regs",), headline=_regs_headline),
    Kind("space", "LABEL space SPACE", True, _parse_space, lambda e: f"{e.label} space {e.space}",
         _check_space, _prepare_space, records=("space",), group="space"),
    Kind("stale", "LABEL stale [FINDING]", True, _parse_stale, _describe_stale, _check_stale),
    Kind("asi", "LABEL asi [FINDING]", True, _parse_asi,
         lambda e: f"{e.label} asi" + (f" {e.finding}" if e.finding else ""), _check_asi),
    Kind("oops", "LABEL oops [VECTOR [ERRORCODE]]", True, _parse_oops, _describe_oops, _check_oops,
         group="oops"),
    Kind("exit", "exit STATUS", False, _parse_exit, _describe_exit, _check_exit, _prepare_exit, group="exit",
         headline=_exit_headline),
    Kind("output", "output TEXT", False, _parse_output, lambda e: f"output {e.output}", _check_output,
         headline=_output_headline),
)}
#: the kind written as a word after LABEL (``regs`` has none: ``LABEL rax=1``)
_LABELLED = {name: k for name, k in KINDS.items() if k.labelled and name != "regs"}
USAGE = "expect needs " + ", ".join(f"'{k.syntax}'" for k in list(KINDS.values())[:-1]) + \
    f" or '{list(KINDS.values())[-1].syntax}'"


def parse_expectation(e: Expectation, rest: str) -> Expectation:
    """Fill ``e`` from the text after ``expect:``; BadExpectation otherwise."""
    words = rest.split()
    if not words:
        raise BadExpectation(USAGE)
    first = words[0]
    kind = KINDS.get(first)
    if kind is not None and not kind.labelled:
        e.kind = kind.name
        kind.parse(e, words[1:], rest[len(first):].strip())
        return e
    if not _LABEL.match(first):
        raise BadExpectation(f"{first!r} is not a label")
    if first.startswith(".L"):
        raise BadExpectation(f"local label {first} cannot carry expectations: use a global label")
    e.label = first
    if len(words) < 2:
        raise BadExpectation(USAGE)
    second = words[1]
    kind = _LABELLED.get(second)
    if kind is None:
        if "=" not in second:
            raise BadExpectation(f"{second!r} is not an expectation{nearest(second, _LABELLED)}: {USAGE}")
        kind = KINDS["regs"]
        args = words[1:]
    else:
        args = words[2:]
    e.kind = kind.name
    kind.parse(e, args, "")
    return e
