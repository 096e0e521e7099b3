"""The hardware layer: guest RAM, paging, the Unicorn CPU and the microcode.

Knows the x86 architecture (Intel SDM) and no Linux policy; see docs/architecture.md.
"""
