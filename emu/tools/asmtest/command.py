"""Discovery and ``isoemu test``: one line per configuration, the failure
reports, a summary."""

from __future__ import annotations

import os
import signal
import time

from emu.linux.machine import Interrupted
from emu.tools.asmtest.format import AsmTestError
from emu.tools.asmtest.report import summary
from emu.tools.asmtest.runner import run_variants


def discover(paths: list[str]) -> list[str]:
    """Test files under ``paths`` (files as given; directories: every ``*.S``,
    sorted)."""
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            found = []
            for root, dirs, files in os.walk(p):
                dirs.sort()
                found += [os.path.join(root, f) for f in sorted(files) if f.endswith(".S")]
            if not found:
                raise AsmTestError(f"{p}: no .S files in this directory")
            out += found
        elif os.path.exists(p):
            out.append(p)
        else:
            raise AsmTestError(f"{p}: no such file or directory")
    return out


def default_jobs() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                      # not on Linux
        return os.cpu_count() or 1


def run_paths(paths: list[str], out, exitfirst: bool = False, overrides: dict[str, str] | None = None,
              budget: int | None = None, jobs: int = 1) -> int:
    """``isoemu test``: a status line per configuration of each test, the
    failure reports, a summary.  Returns 0 when every run passed, else 1.
    ``jobs`` > 1 runs that many files at once in worker processes; the
    lines come in the same order as with one.  Ctrl-C stops the whole run:
    the summary so far, then Interrupted (exit status 130) naming where the
    guest was."""
    t0 = time.perf_counter()
    files = discover(paths)
    passed = failed = 0
    work = [(f, budget, overrides) for f in files]
    results = _in_workers(work, jobs) if jobs > 1 and len(files) > 1 else map(_run_file, work)
    done = 0                            # files whose results are out
    try:
        for reports in results:
            done += 1
            for text, ok in reports:
                out.write(text + "\n")
                out.flush()
                if ok:
                    passed += 1
                else:
                    failed += 1
            if failed and exitfirst:
                break
    except (Interrupted, KeyboardInterrupt) as e:
        out.write(summary(passed, failed, time.perf_counter() - t0) + " (interrupted)\n")
        out.flush()
        if isinstance(e, Interrupted):
            raise
        # (worker processes: where each guest was is not known here)
        raise Interrupted(f"interrupted, in {files[min(done, len(files) - 1)]} (the worker processes stopped)") \
            from None
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()                     # the workers stop (a break, Ctrl-C, an error)
    out.write(summary(passed, failed, time.perf_counter() - t0) + "\n")
    return 1 if failed else 0


def _worker_init() -> None:
    # Ctrl-C reaches every process of the terminal's group: the parent alone
    # handles it, and terminates the workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_file(job: tuple) -> list[tuple[str, bool]]:
    path, budget, overrides = job
    return [(r.report(), r.passed) for r in run_variants(path, budget, overrides=overrides)]


def _in_workers(work: list[tuple], jobs: int):
    """:func:`_run_file` of each of ``work``, in their order, from ``jobs``
    worker processes (forked where the platform can: no machine has run in
    this process yet, so no thread is forked)."""
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    pool = ctx.Pool(min(jobs, len(work)), initializer=_worker_init)
    try:
        yield from pool.imap(_run_file, work, chunksize=1)
        pool.close()
        pool.join()
    finally:
        pool.terminate()
