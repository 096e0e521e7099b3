"""pytest plugin: every assembly isolation test (``.S``) is a test item.

Registered as the ``isoemu`` entry point in ``pytest11``, so with isoemu
installed ``pytest asm/`` collects each ``.S`` file below a directory named
``asm`` (and any ``.S`` file named on the command line) as one item, run by
:func:`emu.tools.asmtest.run_test`.  A failing item shows the runner's report.
Items are plain pytest items: ``-k``, ``-x`` and pytest-xdist work as usual.
"""

from __future__ import annotations

import pytest


def _is_asm_test(file_path, parent) -> bool:
    if file_path.suffix != ".S":
        return False
    if parent.session.isinitpath(file_path):
        return True
    return any(p.name == "asm" for p in file_path.parents)


def pytest_collect_file(file_path, parent):
    if _is_asm_test(file_path, parent):
        return AsmTestFile.from_parent(parent, path=file_path)
    return None


class AsmTestFailed(Exception):
    """Raised by a failing asm test; carries the runner's report."""


class AsmTestFile(pytest.File):
    def collect(self):
        yield AsmTestItem.from_parent(self, name=self.path.stem)


class AsmTestItem(pytest.Item):
    def runtest(self) -> None:
        from emu.tools.asmtest import run_test

        res = run_test(str(self.path), name=self._test_path())
        if not res.passed:
            raise AsmTestFailed("\n".join(res.report_lines()))

    def _test_path(self) -> str:
        """The path as the user would write it: relative to the directory pytest
        was started in when inside it (the rootdir may be elsewhere), else absolute."""
        try:
            return str(self.path.relative_to(self.config.invocation_params.dir))
        except ValueError:
            return str(self.path)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, AsmTestFailed):
            return f"{self._test_path()} failed:\n{excinfo.value}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"asm test {self._test_path()}"
