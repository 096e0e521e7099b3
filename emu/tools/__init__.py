"""The tools: the fault matrix, asm tests, the tracer, the debugger, ptdump, lints, named spaces.

See docs/architecture.md.
"""
