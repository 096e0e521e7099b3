"""Results: what a run found, in the words every report uses.

A failure is a headline (``t.S:2: expected probe fault 14 0x4``, ``unexpected
fault in process A``, ``error: t.S:1: ...``) and detail lines (what happened,
where).  ``isoemu test`` prints a status line per configuration with the
failures indented under it; the pytest plugin shows the failures alone, so
that a failure's first line is its headline.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field


@dataclass
class Failure:
    """One failed expectation or problem: a headline and detail lines."""

    headline: str
    details: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [self.headline] + ["  " + d for d in self.details]


@dataclass
class AsmTestResult:
    """The outcome of one test (one configuration, or every configuration of
    a file): passed when there is no failure."""

    path: str                     # with the configuration: 't.S[pti=off]'
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.failures

    def status_line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'} {self.path}"

    def failure_lines(self) -> list[str]:
        """The failures, headlines flush left (the first line is the first headline)."""
        return [ln for f in self.failures for ln in f.lines()]

    def report_lines(self) -> list[str]:
        """The failure report (empty for a pass), indented under the status line."""
        return ["  " + ln for ln in self.failure_lines()]

    def report(self) -> str:
        return "\n".join([self.status_line()] + self.report_lines())


def error_failure(e: Exception) -> Failure:
    """A test that could not run: one ``error:`` line."""
    return Failure(f"error: {e}")


def internal_failure(e: BaseException) -> Failure:
    """A bug in isoemu: the exception and where it was raised."""
    frame = traceback.extract_tb(e.__traceback__)[-1]
    return Failure(f"internal error (a bug in isoemu): {type(e).__name__}: {e}",
                   [f"raised at {frame.filename}:{frame.lineno} in {frame.name}"])


def summary(passed: int, failed: int, seconds: float) -> str:
    return f"{passed} passed, {failed} failed in {seconds:.2f} s"
