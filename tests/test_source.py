"""Source files (emu.linux.program.read_source): UTF-8, a byte-order mark
dropped, ASCII outside string literals and comments; every refusal one
line naming the file and, where there is one, the line."""

import os

import pytest

from emu.errors import AsmError, ConfigError, IsoemuError
from emu.linux.machine import Machine
from emu.linux.program import read_source

ACCEPTED = [
    # name, file bytes, the text read
    ("ascii", b"_start:\n    nop\n", "_start:\n    nop\n"),
    ("byte-order mark", b"\xef\xbb\xbf_start:\n    nop\n", "_start:\n    nop\n"),
    ("in a string", '.ascii "café"\n'.encode(), '.ascii "café"\n'),
    ("in a character literal", "mov al, 'é'\n".encode(), "mov al, 'é'\n"),
    ("escaped quote in a string", '.ascii "a\\"é"\n'.encode(), '.ascii "a\\"é"\n'),
    ("# comment", "    nop # café\n".encode(), "    nop # café\n"),
    ("; comment", "    nop ; ’\n".encode(), "    nop ; ’\n"),
    ("// comment", "// é\n".encode(), "// é\n"),
    ("comment after a string with #", '.ascii "#" # é\n'.encode(), '.ascii "#" # é\n'),
    ("CRLF", b"_start:\r\n    nop\r\n", "_start:\r\n    nop\r\n"),
]


@pytest.mark.parametrize("name,data,text", ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_accepted(tmp_path, name, data, text):
    p = tmp_path / "prog.S"
    p.write_bytes(data)
    assert read_source(p) == text


REFUSED = [
    # name, file bytes, error class, message ({path}: the file's path)
    ("latin-1", b"_start:\n    nop\n.ascii \"h\xe9\"\n", AsmError, "{path}: not UTF-8 text (byte 0xe9 at line 3)"),
    ("truncated sequence", b"nop\n\xc3", AsmError, "{path}: not UTF-8 text (byte 0xc3 at line 2)"),
    ("UTF-16", "_start:\n".encode("utf-16"), AsmError, "{path}: not UTF-8 text (byte 0xff at line 1)"),
    ("no-break space", "_start:\n    mov\u00a0rax, 1\n".encode(), AsmError,
     "{path}:2: non-ASCII character U+00A0 (NO-BREAK SPACE) outside a string"),
    ("typographic quotes", "_start:\n.ascii \u201chi\u201d\n".encode(), AsmError,
     "{path}:2: non-ASCII character U+201C (LEFT DOUBLE QUOTATION MARK) outside a string"),
    ("after a string", '.ascii "a\\"b" é\n'.encode(), AsmError,
     "{path}:1: non-ASCII character U+00E9 (LATIN SMALL LETTER E WITH ACUTE) outside a string"),
    ("a control character without a name", "nop\u0085\n".encode(), AsmError,
     "{path}:1: non-ASCII character U+0085 outside a string"),
    ("line separator", "nop\n\n\nnop\u2028\n".encode(), AsmError,
     "{path}:4: non-ASCII character U+2028 (LINE SEPARATOR) outside a string"),
    ("a second byte-order mark", b"\xef\xbb\xbf\xef\xbb\xbfnop\n", AsmError,
     "{path}:1: non-ASCII character U+FEFF (ZERO WIDTH NO-BREAK SPACE) outside a string"),
]


@pytest.mark.parametrize("name,data,error,message", REFUSED, ids=[c[0] for c in REFUSED])
def test_refused(tmp_path, name, data, error, message):
    p = tmp_path / "prog.S"
    p.write_bytes(data)
    with pytest.raises(error) as e:
        read_source(p)
    assert str(e.value) == message.format(path=p)
    assert issubclass(error, IsoemuError) and e.value.exit_status == 2


def test_missing_file(tmp_path):
    p = tmp_path / "nope.S"
    with pytest.raises(ConfigError) as e:
        read_source(str(p))
    assert str(e.value) == f"cannot read {p}: No such file or directory"


def test_directory(tmp_path):
    with pytest.raises(ConfigError) as e:
        read_source(tmp_path)
    assert str(e.value) == f"cannot read {tmp_path}: Is a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path):
    p = tmp_path / "secret.S"
    p.write_text("nop\n")
    p.chmod(0)
    with pytest.raises(ConfigError) as e:
        read_source(p)
    assert str(e.value) == f"cannot read {p}: Permission denied"


def test_text_read_assembles_as_written(tmp_path):
    """The byte-order mark is gone before the assembler sees the text: the
    program assembles, and _start is its first byte."""
    p = tmp_path / "prog.S"
    p.write_bytes(b"\xef\xbb\xbf_start:\n    nop\n    jmp _start\n")
    m = Machine(programs=[("A", read_source(p))])
    img = m.process("A").image
    assert img.symbols["_start"] == img.sections[".text"].base
