"""Development harnesses: the benchmarks, a bare system, the MMU oracle, demo tables.

See docs/architecture.md.
"""
