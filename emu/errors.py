"""Errors that reach users.

Every error a user can provoke with bad input derives from :class:`IsoemuError`
and carries a one-line message; the CLI prints ``isoemu: <message>`` and exits
non-zero instead of showing a traceback.
"""


class IsoemuError(Exception):
    """Base class of every user-facing isoemu error (one-line message)."""

    exit_status = 2


class ConfigError(IsoemuError):
    """A machine or command option is out of range or inconsistent."""


class AddressError(IsoemuError):
    """A virtual or physical address is malformed, non-canonical or out of range."""


class AllocError(IsoemuError):
    """The frame allocator refused a request (out of memory, double free, ...)."""


class MappingError(IsoemuError):
    """A page-table operation was refused (overlap, misalignment, ...)."""


class TableError(IsoemuError):
    """Page tables in memory are malformed (entry outside RAM, loop, ...)."""


class ImageError(IsoemuError):
    """A physical-memory image file cannot be used."""


class AsmError(IsoemuError):
    """Assembly or linking failed; the message names file, line and text."""


class GuestError(IsoemuError):
    """The guest stopped abnormally (budget, triple fault, unhandled trap)."""

    exit_status = 3
