"""Assembly isolation tests: the ``.S`` test format and its runner.

A test is a user program (Intel syntax, entry at ``_start``) that runs at
CPL3 as process ``A`` of a freshly booted machine, with its expectations in
comment lines (``;``, ``#`` or ``//``) anywhere in the file::

    ; isoemu: pti=on|off budget=10M
    ; expect: probe fault 14 0x4                # a trailing comment
    ; expect[pti=off]: probe fault 14 0x5
    ; expect: done rax=-EFAULT rdx!=0 rbx&0xfff=0 rsi=USER_DATA..USER_DATA+0x1000
    ; expect: probe space A.user
    ; expect: exit 0
    ; expect: output hello

docs/asm-tests.md is the reference.  The modules, one job each:

* :mod:`.headers`: which comment lines are headers, which are prose;
* :mod:`.values`: numbers, names and expressions in expected values;
* :mod:`.expect`: the expectation kinds, one table row each;
* :mod:`.format`: the file (processes, switches, configurations);
* :mod:`.runtime` and ``runtime.S``: the code linked after each program
  that records and resumes faults; ``include/isoemu.inc``, the macro library;
* :mod:`.runner`: one configuration on a fresh machine, and its judgement;
* :mod:`.report`: results and failures;
* :mod:`.command`: discovery and ``isoemu test``.
"""

from emu.tools.asmtest.command import discover, run_paths
from emu.tools.asmtest.expect import KINDS, Expectation
from emu.tools.asmtest.format import (DEFAULT_BUDGET, AsmTest, AsmTestError, ProcessSpec, Variant, parse_file,
                                      parse_test)
from emu.tools.asmtest.report import AsmTestResult, Failure
from emu.tools.asmtest.runner import Runner, build_machine, run_test, run_variant, run_variants
from emu.tools.asmtest.runtime import INCLUDE_DIR, RUNTIME_FILE

__all__ = ["AsmTest", "AsmTestError", "AsmTestResult", "DEFAULT_BUDGET", "Expectation", "Failure",
           "INCLUDE_DIR", "KINDS", "ProcessSpec", "RUNTIME_FILE", "Runner", "Variant", "build_machine",
           "discover", "parse_file", "parse_test", "run_paths", "run_test", "run_variant", "run_variants"]
