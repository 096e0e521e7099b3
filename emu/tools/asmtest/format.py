"""The test file: headers, processes and configurations (docs/asm-tests.md).

``parse_test(text, path)`` reads a test's headers into an :class:`AsmTest`;
the program itself is assembled later, by the runner.  Which comment lines
are headers is decided in :mod:`emu.tools.asmtest.headers`; the expectation
kinds are rows of :data:`emu.tools.asmtest.expect.KINDS`.

Machine switches come from the one switch table, emu.linux.config.SWITCHES
(shared with ``--set`` on the command line).  A switch given several values
separated by ``|`` (``; isoemu: pti=on|off asi=on|off``) runs the test once
per combination: its *configurations* (:class:`Variant`).
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field

from emu.errors import ConfigError, IsoemuError
from emu.linux import abi
from emu.linux.config import SWITCHES, MachineConfig, nearest, parse_switch
from emu.parse import parse_count
from emu.tools.asmtest.expect import KINDS, BadExpectation, Expectation, parse_expectation
from emu.tools.asmtest.headers import HeaderError, scan

DEFAULT_BUDGET = 2_000_000
#: header switches that are not machine switches
TEST_SWITCHES = ("budget",)
_PROC_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_COND_SPLIT = re.compile(r"[,\s]+(?=[A-Za-z_]\w*\s*=)")


class AsmTestError(IsoemuError):
    """A test file that cannot run: bad header, unknown label, assembly error."""


@dataclass
class ProcessSpec:
    name: str
    line: int                     # line of the '; process:' marker (0 for A)
    source: str                   # the whole file with other processes' lines blanked
    expectations: list[Expectation] = field(default_factory=list)

    def expectations_for(self, config: MachineConfig) -> list[Expectation]:
        return [e for e in self.expectations if e.applies(config)]


@dataclass
class Setting:
    """A switch as the headers set it: one value, or several (a matrix)."""

    name: str
    values: list[tuple[str, object]]      # (canonical text, value)
    line: int


@dataclass(frozen=True)
class Variant:
    """One configuration of a test: the machine and the budget it runs with."""

    id: str                       # 'pti=off,asi=on'; '' for a test with one configuration
    config: MachineConfig
    budget: int

    def name(self, path: str) -> str:
        """``path[pti=off,asi=on]``, or ``path`` alone."""
        return f"{path}[{self.id}]" if self.id else path


@dataclass
class AsmTest:
    path: str
    settings: dict[str, Setting]
    budget: int
    processes: list[ProcessSpec]
    lines: list[str]              # the file, for source lines in reports
    real_path: str | None = None  # where the file is (its includes are found beside it)

    @property
    def name(self) -> str:
        return os.path.splitext(os.path.basename(self.path))[0]

    def variants(self, overrides: dict[str, str] | None = None) -> list[Variant]:
        """Every configuration, in header order.  ``overrides`` (``{'pti':
        'off'}``, as emu.linux.config.parse_assignments returns) replace the
        file's settings: an overridden switch no longer multiplies them."""
        overrides = dict(overrides or {})
        fixed: dict[str, str] = {}
        dims: list[Setting] = []
        for s in self.settings.values():
            if s.name in overrides:
                continue
            if len(s.values) > 1:
                dims.append(s)
            else:
                fixed[s.name] = s.values[0][0]
        fixed.update(overrides)
        out = []
        for combo in itertools.product(*[s.values for s in dims]):
            chosen = {s.name: text for s, (text, _) in zip(dims, combo)}
            config = MachineConfig().with_switches({**fixed, **chosen})
            out.append(Variant(",".join(f"{k}={v}" for k, v in chosen.items()), config, self.budget))
        return out

    def variant(self, vid: str, overrides: dict[str, str] | None = None) -> Variant:
        """The configuration named ``vid`` (``'pti=off,asi=on'``)."""
        vs = self.variants(overrides)
        for v in vs:
            if v.id == vid:
                return v
        raise AsmTestError(f"{self.path}: no configuration {vid!r}; it has "
                           f"{', '.join(repr(v.id) for v in vs)}")


def parse_test(text: str, path: str) -> AsmTest:
    """Parse a test file's headers; the program itself is assembled later."""
    lines = text.splitlines()

    def err(lineno: int, msg: str) -> AsmTestError:
        return AsmTestError(f"{path}:{lineno}: {msg}: {lines[lineno - 1].strip()}")

    try:
        headers = scan(lines)
    except HeaderError as e:
        raise err(e.line, e.message) from None
    settings: dict[str, Setting] = {}
    budget: tuple[int, int] | None = None          # (value, line)
    procs = [ProcessSpec("A", 0, "")]
    for h in headers:                              # in line order: the first error is reported
        if h.cond is not None and h.key != "expect":
            raise err(h.line, f"{h.key} takes no [conditions]: only expect does")
        if h.key == "process":
            procs.append(_process(h, procs, err))
        elif h.key == "isoemu":
            budget = _isoemu(h, settings, budget, err)
        else:
            e = Expectation(path, h.line, h.text, "")
            try:
                if h.cond is not None:
                    e.when, e.when_text = _conditions(h.cond), h.cond
                parse_expectation(e, h.body)
            except (BadExpectation, ConfigError) as x:
                raise err(h.line, str(x)) from None
            procs[-1].expectations.append(e)
    owner = []                                     # the process each line belongs to
    for i in range(len(lines)):
        owner.append(max(k for k, p in enumerate(procs) if p.line <= i + 1))
    for k, p in enumerate(procs):
        p.source = "\n".join(ln if owner[i] == k else "" for i, ln in enumerate(lines)) + "\n"
    t = AsmTest(path, settings, DEFAULT_BUDGET if budget is None else budget[0], procs, lines)
    try:
        variants = t.variants()
    except ConfigError as x:              # a combination no single setting refused
        raise err(min(s.line for s in settings.values()), str(x)) from None
    _check_conditions(t, variants, err)
    _check_conflicts(t, variants, err)
    return t


def _process(h, procs: list[ProcessSpec], err) -> ProcessSpec:
    name = h.body
    if not _PROC_NAME.match(name):
        raise err(h.line, "process needs a name of letters, digits and _ (e.g. 'process: B')")
    for p in procs:
        if p.name == name:
            where = f"line {p.line}" if p.line else "the start of the file"
            raise err(h.line, f"process {name} is already defined at {where}")
    if len(procs) >= abi.MAX_TASKS:
        raise err(h.line, f"at most {abi.MAX_TASKS} processes")
    return ProcessSpec(name, h.line, "")


def _isoemu(h, settings: dict[str, Setting], budget, err):
    names = list(SWITCHES) + list(TEST_SWITCHES)
    if not h.body:
        raise err(h.line, f"isoemu needs SWITCH=VALUE settings ({', '.join(names)})")
    for tok in h.body.split():
        key, eq, val = tok.partition("=")
        key = key.lower()
        if not eq or not val:
            raise err(h.line, f"setting {tok!r}: write SWITCH=VALUE (e.g. pti=off)")
        if key not in names:
            raise err(h.line, f"unknown switch {key!r}{nearest(key, names)}; known: {', '.join(names)}")
        if key == "budget":
            if "|" in val:
                raise err(h.line, "budget takes one value")
            try:
                value = parse_count(val, "budget")
            except ConfigError as x:
                raise err(h.line, str(x)) from None
            if budget is not None and budget[0] != value:
                raise err(h.line, f"budget is already set differently at line {budget[1]}")
            budget = (value, h.line)
            continue
        values = []
        for text in val.split("|"):
            try:
                _, v = parse_switch(key, text)
                MachineConfig().with_switches({key: text})
            except ConfigError as x:
                sw = SWITCHES[key]
                two = "|".join(sw.choices[:2]) if sw.kind == "choice" else "on|off"
                hint = f" (several values are separated by '|': {key}={two})" \
                    if "," in text and sw.kind in ("bool", "choice") else ""
                raise err(h.line, f"{x}{hint}") from None
            # the canonical word: pti=On is pti=on (a choice's value is its word)
            canon = ("on" if v else "off") if isinstance(v, bool) else \
                (str(v) if SWITCHES[key].kind == "choice" else text)
            if any(c == canon for c, _ in values):
                raise err(h.line, f"{key}={val}: {canon} is given twice")
            values.append((canon, v))
        old = settings.get(key)
        if old is not None and [c for c, _ in old.values] != [c for c, _ in values]:
            raise err(h.line, f"{key} is already set differently at line {old.line}")
        settings[key] = Setting(key, values, h.line)
    return budget


def _conditions(text: str) -> dict[str, tuple]:
    """``pti=off,asi=on`` (or blanks between them; ``|`` between values)."""
    out: dict[str, tuple] = {}
    if not text.strip():
        raise ConfigError("empty [conditions]: write e.g. expect[pti=off]")
    for part in _COND_SPLIT.split(text.strip()):
        key, eq, val = part.partition("=")
        key = key.strip().lower()
        if not eq or not val.strip():
            raise ConfigError(f"condition {part!r}: write SWITCH=VALUE (e.g. pti=off)")
        if key in TEST_SWITCHES:
            raise ConfigError(f"{key} cannot be a condition (only machine switches)")
        values = tuple(parse_switch(key, v)[1] for v in val.strip().split("|"))
        if key in out:
            raise ConfigError(f"{key} appears twice in the conditions")
        out[key] = values
    return out


def _check_conditions(t: AsmTest, variants: list[Variant], err) -> None:
    """An expectation whose conditions hold in no configuration of the file
    is a mistake (a typo, or a switch the headers set otherwise)."""
    for p in t.processes:
        for e in p.expectations:
            if not e.when or any(e.applies(v.config) for v in variants):
                continue
            for key, values in e.when.items():
                if not any(getattr(v.config, key) in values for v in variants):
                    have = sorted({v.config.switches()[key] for v in variants})
                    raise err(e.line, f"never applies: {key} is {' or '.join(have)} in every configuration "
                                      f"of this test")
            raise err(e.line, f"never applies: no configuration of this test has all of [{e.when_text}]")


def _check_conflicts(t: AsmTest, variants: list[Variant], err) -> None:
    """Two expectations of one group (ok/fault, exit, ...) on one label (or
    process) that apply to the same configuration contradict each other."""
    for v in variants:
        for p in t.processes:
            seen: dict[tuple[str, str | None], Expectation] = {}
            for e in p.expectations_for(v.config):
                group = KINDS[e.kind].group
                if group is None:
                    continue
                o = seen.get((group, e.label))
                if o is None:
                    seen[(group, e.label)] = e
                elif e.label is None:
                    raise err(e.line, f"a second {e.kind} expectation (the first is at line {o.line})")
                else:
                    raise err(e.line, f"{e.label} already has '{o.describe()}' at line {o.line}")


def read_source(path: str, name: str) -> str:
    """A test file's text; AsmTestError for a file that cannot be read or is
    not UTF-8 (naming the line of the first bad byte)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise AsmTestError(f"{name}: cannot read: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise AsmTestError(f"{name}:{line}: not UTF-8 text (byte {data[e.start]:#04x})") from None


def parse_file(path: str, name: str | None = None) -> AsmTest:
    """Read and parse ``path``; reports call it ``name`` (default: ``path``)."""
    name = name or path
    t = parse_test(read_source(path, name), name)
    t.real_path = path
    return t
