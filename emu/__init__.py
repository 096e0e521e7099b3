"""isoemu: an x86-64 paging emulator for kernel isolation experiments."""

__version__ = "0.1.0"
