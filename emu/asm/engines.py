"""The keystone and capstone engines, one of each per process."""

from __future__ import annotations

import capstone
import keystone

_ks = None
_cs = None


def keystone_engine() -> keystone.Ks:
    global _ks
    if _ks is None:
        _ks = keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_64)
    return _ks


def capstone_engine() -> capstone.Cs:
    global _cs
    if _cs is None:
        _cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        _cs.detail = True
    return _cs


def ks_asm(text: str, addr: int) -> bytes:
    enc, _ = keystone_engine().asm(text, addr)
    return bytes(enc or b"")


def ks_message(e: keystone.KsError) -> str:
    msg = str(e)
    return msg.split(" (KS_ERR")[0] if " (KS_ERR" in msg else msg


def reset_engines() -> None:
    """Drop the engines: the next call makes new ones."""
    global _ks, _cs
    _ks = _cs = None
