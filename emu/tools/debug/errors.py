"""The debugger's error: one line, as every user error (emu/errors.py)."""

from __future__ import annotations

from emu.errors import IsoemuError


class DebugError(IsoemuError):
    """A debugger command cannot be done (bad argument, dead machine...)."""
