"""The one number reader (emu/parse.py): the rule of README's "Numbers"."""

from __future__ import annotations

import pytest

from emu.errors import AddressError, ConfigError
from emu.parse import parse_address, parse_count, parse_hex, parse_int, parse_range, parse_size

SYMBOLS = {"USER_DATA": 0x600000, "bad": 0x400010, "A:_start": 0x400000, "KERNEL_TEXT": 0xFFFFFFFF81000000,
           "$rsp": 0x7FFFFFFFEFF8}


@pytest.mark.parametrize("text, value", [
    ("400000", 0x400000),                 # digits only: still hexadecimal
    ("0x400000", 0x400000),
    ("0X1000", 0x1000),
    ("ffffffff81000000", 0xFFFFFFFF81000000),
    ("ffff_ffff_8100_0000", 0xFFFFFFFF81000000),
    ("1_0000_0000", 0x100000000),
    ("1000", 0x1000),                     # --cr3 1000 is 0x1000, not 0x3e8
    ("600000", 0x600000),
    ("123456789abcdef", 0x123456789ABCDEF),   # 15 digits: hexadecimal too
    (" 10 ", 0x10),
])
def test_hex(text, value):
    assert parse_hex(text) == value
    assert parse_address(text) == value


@pytest.mark.parametrize("text, message", [
    ("", "expected a hexadecimal number"),
    ("0x", "expected a hexadecimal number"),
    ("12g", "expected a hexadecimal number"),
    ("-0x1000", "out of range (0x0 .. 0xffffffffffffffff)"),
    ("10000000000000000", "out of range (0x0 .. 0xffffffffffffffff)"),
])
def test_hex_refused(text, message):
    with pytest.raises(AddressError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_hex(text)


@pytest.mark.parametrize("text, value, notes", [
    ("USER_DATA", 0x600000, 0),
    ("USER_DATA + 8", 0x600008, 0),
    ("USER_DATA+10", 0x600010, 0),        # offsets are hexadecimal too
    ("USER_DATA - 0x10 + 8", 0x5FFFF8, 0),
    ("A:_start+0x10", 0x400010, 0),
    ("$rsp + 8", 0x7FFFFFFFF000, 0),
    ("bad", 0x400010, 1),                 # a label and a hex number: the label, with a note
    ("0xbad", 0xBAD, 0),                  # 0x always means the number
    ("KERNEL_TEXT - 1", 0xFFFFFFFF80FFFFFF, 0),
])
def test_expressions(text, value, notes):
    got_notes: list[str] = []
    assert parse_address(text, resolve=SYMBOLS.get, notes=got_notes) == value
    assert len(got_notes) == notes
    if notes:
        assert got_notes[0] == "'bad' is read as the name bad (0x400010); write 0xbad for the number"


@pytest.mark.parametrize("text, message", [
    ("USER_DATA +", "it ends with an operator"),
    ("nosuch", "unknown name 'nosuch'"),
    ("USER_DATA * 2", "expected \\+ or - after 'USER_DATA'"),
    ("-USER_DATA", "an address cannot be negative"),
    ("$nosuch", "unknown register '\\$nosuch'"),
    ("12zz", "'12zz' is not a hexadecimal number or a name"),
])
def test_expressions_refused(text, message):
    with pytest.raises(AddressError, match=message):
        parse_address(text, resolve=SYMBOLS.get)


def test_names_without_a_resolver_are_refused():
    with pytest.raises(AddressError, match="expected a hexadecimal number"):
        parse_address("USER_DATA")


@pytest.mark.parametrize("text, value", [
    ("10", 10), ("-22", -22), ("0x10", 16), ("4096", 4096), ("0", 0), ("010", 10),
])
def test_int(text, value):
    assert parse_int(text) == value


@pytest.mark.parametrize("text, lo, hi, message", [
    ("0x100000000", 0, 0xFFFFFFFF, r"PKRU value '0x100000000' is out of range \(0x0 .. 0xffffffff\)"),
    ("-1", 0, 255, r"PKRU value '-1' is out of range \(0 .. 255\)"),
    ("ten", 0, 9, "expected a decimal number"),
])
def test_int_refused(text, lo, hi, message):
    with pytest.raises(ConfigError, match=message):
        parse_int(text, "PKRU value", lo=lo, hi=hi)


@pytest.mark.parametrize("text, value", [
    ("10M", 10_000_000), ("10m", 10_000_000), ("2000000", 2_000_000), ("3G", 3_000_000_000),
    ("1.5k", 1500), ("10k", 10_000), ("1_000", 1000), (500, 500),
])
def test_count(text, value):
    assert parse_count(text, "budget") == value


@pytest.mark.parametrize("text, message", [
    ("0", r"budget '0' is out of range \(1 .. "),
    ("-5", r"budget '-5' is out of range \(1 .. "),
    ("1.5", "not a whole number"),
    ("10Q", "expected a decimal number"),
])
def test_count_refused(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_count(text, "budget")


@pytest.mark.parametrize("text, value", [
    ("256M", 256 << 20), ("4G", 4 << 30), ("4GiB", 4 << 30), ("4gb", 4 << 30), ("1048576", 1 << 20),
    ("0x1000", 0x1000), ("1T", 1 << 40), ("64K", 64 << 10),
])
def test_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text, message", [
    ("-1", "bad RAM size '-1'"), ("32X", "bad RAM size"), ("2T", r"out of range \(32M .. 1T\)"),
])
def test_size_refused(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_size(text, "RAM size", lo=32 << 20, hi=1 << 40)


@pytest.mark.parametrize("text, lo, hi", [
    ("600000-601000", 0x600000, 0x601000),
    ("0x600000-0x601000", 0x600000, 0x601000),
    ("USER_DATA..USER_DATA+1000", 0x600000, 0x601000),
    ("USER_DATA - 10..USER_DATA", 0x5FFFF0, 0x600000),
])
def test_range(text, lo, hi):
    assert parse_range(text, resolve=SYMBOLS.get) == (lo, hi)


@pytest.mark.parametrize("text, message", [
    ("601000-600000", "is not above the start"),
    ("USER_DATA-8-USER_DATA", "use LO-HI"),
    ("600000", "use LO-HI"),
])
def test_range_refused(text, message):
    with pytest.raises(AddressError, match=message):
        parse_range(text, resolve=SYMBOLS.get)
