"""The Linux layer: the kernel stub's builder, its ABI and layout, user programs, the machine.

See docs/architecture.md.
"""
