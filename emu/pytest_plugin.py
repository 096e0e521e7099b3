"""pytest plugin: every configuration of an assembly isolation test (``.S``)
is a test item.

Registered as the ``isoemu`` entry point in ``pytest11``, so with isoemu
installed pytest collects as asm tests:

* every ``.S`` file below a directory named ``asm`` (under the rootdir);
* every ``.S`` file matched by a glob of the ``isoemu_paths`` ini option
  (relative to the directory of the configuration file, else the rootdir);
* any ``.S`` file named on the command line.

A test with one configuration is one item (``read_kernel_text``); a test
whose headers give a switch several values (``; isoemu: pti=on|off``) is one
item per configuration (``read_kernel_text[pti=off]``).  ``--isoemu-set
pti=off`` sets a switch in every test (it no longer multiplies
configurations).  A failing item shows the runner's report, its headline
first, so that ``-ra`` summaries read ``FAILED path::item - t.S:3: expected
...``.  Ctrl-C stops the session.  Items are plain pytest items: ``-k``,
``-x`` and pytest-xdist work as usual.  docs/asm-tests.md has the details.
"""

from __future__ import annotations

import pytest

_OVERRIDES = pytest.StashKey[dict]()
_GLOBBED = pytest.StashKey[set]()


def pytest_addoption(parser) -> None:
    group = parser.getgroup("isoemu", "isoemu assembly isolation tests")
    group.addoption("--isoemu-set", action="append", default=[], metavar="SWITCH=VALUE",
                    help="set a machine switch in every asm test, over its headers (e.g. pti=off; "
                         "repeatable, or comma-separated)")
    parser.addini("isoemu_paths", type="linelist", default=[],
                  help="glob patterns of .S files to collect as asm tests besides those below a "
                       "directory named asm (relative to the configuration file's directory; ** "
                       "matches any depth)")


def pytest_configure(config) -> None:
    from emu.errors import ConfigError
    from emu.linux.config import parse_assignments

    try:
        config.stash[_OVERRIDES] = parse_assignments(config.getoption("isoemu_set") or [], "--isoemu-set")
    except ConfigError as e:
        raise pytest.UsageError(str(e)) from None
    for pattern in config.getini("isoemu_paths"):
        if pattern.startswith("/"):
            raise pytest.UsageError(f"isoemu_paths: {pattern!r} is absolute; write a pattern relative to "
                                    f"{_base(config)}")


def _base(config):
    """Where ``isoemu_paths`` patterns start: the configuration file's directory, else the rootdir."""
    return config.inipath.parent if config.inipath else config.rootpath


def _globbed(config) -> set:
    """The files the ``isoemu_paths`` patterns match (computed once)."""
    if _GLOBBED not in config.stash:
        base = _base(config)
        found = set()
        for pattern in config.getini("isoemu_paths"):
            found.update(p.resolve() for p in base.glob(pattern) if p.suffix == ".S")
        config.stash[_GLOBBED] = found
    return config.stash[_GLOBBED]


def _is_asm_test(file_path, parent) -> bool:
    if file_path.suffix != ".S":
        return False
    if parent.session.isinitpath(file_path):
        return True
    try:
        rel = file_path.relative_to(parent.config.rootpath)
    except ValueError:
        rel = file_path
    if any(p.name == "asm" for p in rel.parents):
        return True
    return file_path.resolve() in _globbed(parent.config)


def pytest_collect_file(file_path, parent):
    if _is_asm_test(file_path, parent):
        return AsmTestFile.from_parent(parent, path=file_path)
    return None


class AsmTestFailed(Exception):
    """Raised by a failing asm test; its message is the report, headline first."""


def _test_path(node) -> str:
    """The path as the user would write it: relative to the directory pytest
    was started in when inside it (the rootdir may be elsewhere), else absolute."""
    try:
        return str(node.path.relative_to(node.config.invocation_params.dir))
    except ValueError:
        return str(node.path)


class AsmTestFile(pytest.File):
    def collect(self):
        from emu.errors import IsoemuError
        from emu.tools.asmtest import parse_file

        stem = self.path.stem
        try:
            test = parse_file(str(self.path), _test_path(self))
            variants = test.variants(self.config.stash[_OVERRIDES])
        except IsoemuError as e:
            # a broken file is a failing test, as in 'isoemu test', not a collection error
            yield AsmTestItem.from_parent(self, name=stem, test=None, variant=None, error=str(e))
            return
        for v in variants:
            yield AsmTestItem.from_parent(self, name=f"{stem}[{v.id}]" if v.id else stem, test=test,
                                          variant=v)


class AsmTestItem(pytest.Item):
    def __init__(self, *, test, variant, error: str | None = None, **kw):
        super().__init__(**kw)
        self.test, self.variant, self.error = test, variant, error

    def runtest(self) -> None:
        from emu.linux.machine import Interrupted
        from emu.tools.asmtest import run_variant

        if self.error is not None:
            raise AsmTestFailed(f"error: {self.error}")
        try:
            res = run_variant(self.test, self.variant)
        except Interrupted as e:
            raise KeyboardInterrupt(str(e)) from None
        if not res.passed:
            raise AsmTestFailed("\n".join(res.failure_lines()))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, AsmTestFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        where = self.variant.name(_test_path(self)) if self.variant is not None else _test_path(self)
        return self.path, None, f"asm test {where}"
