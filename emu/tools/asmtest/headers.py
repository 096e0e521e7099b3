"""Header lines: which comment lines are headers, which are prose.

A *comment line* is a line whose first non-blank characters are ``;``, ``#``
or ``//`` (repeated markers such as ``;;`` or ``##`` count as one).  What
follows the marker and any blanks decides:

1. A header key (``isoemu``, ``expect``, ``process``; any letter case), then
   optionally ``[CONDITIONS]``, then optional blanks and a colon: a header.
   ``; expect: probe ok``, ``; Expect : probe ok``, ``; expect[pti=off]: ...``.
2. A header key in lowercase followed by anything else: an error (a header
   without its colon): ``; expect probe ok``.
3. Any other lowercase identifier (``[a-z][a-z0-9_]*``), optionally with
   ``[...]``, directly followed by a colon that does not start ``://`` or
   ``::``: an error naming the nearest key (``; expects: ...``, ``; exepct:``,
   ``; note: ...``).  A word of hexadecimal digits only is an address, not a
   header (``; ffffffff81000000: kernel text``).
4. Everything else is prose: a word with a capital letter (``; Note: ...``,
   ``; Process B runs second``), a word followed by anything but a colon
   (``; see arch/x86/mm/pti.c``), a URL (``; https://...``), a number, a
   punctuation mark.

In a header, a blank followed by ``#``, ``;`` or ``//`` starts a trailing
comment, which is dropped (``; expect: exit 0  # the default``); text in
double quotes is never cut (``; expect: output "a # b"``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from emu.linux.config import nearest

KEYS = ("isoemu", "expect", "process")

_COMMENT = re.compile(r"\s*(?:;+|#+|//+)[ \t]*")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_LOWER_WORD = re.compile(r"[a-z][a-z0-9_]*")
_HEX = re.compile(r"[0-9a-f]+")                  # 'ffffffff81000000: ...' is an address


class HeaderError(ValueError):
    """A header-shaped line that is not a valid header (line number, message)."""

    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass(frozen=True)
class Header:
    """One header line: ``; KEY[COND]: BODY  # comment``."""

    line: int                  # 1-based
    key: str                   # isoemu | expect | process
    cond: str | None           # the text between [ and ], or None
    body: str                  # after the colon, trailing comment dropped, stripped
    text: str                  # the whole line, stripped (for messages)


def strip_trailing_comment(body: str) -> str:
    """``body`` up to a blank followed by ``#``, ``;`` or ``//`` outside
    double quotes (a backslash escapes a quote inside them)."""
    quote = False
    i = 0
    while i < len(body):
        c = body[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == '"':
                quote = False
        elif c == '"':
            quote = True
        elif c in " \t" and body.startswith(("#", ";", "//"), i + 1):
            return body[:i].strip()
        i += 1
    return body.strip()


def header_of(raw: str, lineno: int) -> Header | None:
    """The header on one line, None for code and prose; HeaderError for a
    line shaped like a header that is not one."""
    m = _COMMENT.match(raw)
    if not m:
        return None
    rest = raw[m.end():]
    w = _WORD.match(rest)
    if not w:
        return None
    word = w.group(0)
    after = rest[w.end():]
    cond = None
    if after.startswith("["):
        close = after.find("]")
        if close < 0:
            if word.lower() in KEYS:
                raise HeaderError(lineno, f"{word.lower()}[ has no closing ]")
            return None
        cond, after = after[1:close], after[close + 1:]
    key = word.lower()
    if key in KEYS:
        tail = after.lstrip(" \t")
        if tail.startswith(":"):
            return Header(lineno, key, cond, strip_trailing_comment(tail[1:]), raw.strip())
        if word == key:
            if tail.startswith("["):
                raise HeaderError(lineno, f"malformed header: write '{key}[CONDITIONS]: ...' with no blank "
                                          f"before [")
            raise HeaderError(lineno, f"malformed header: write '{key}: ...'")
        return None                          # '; Process B runs second': prose
    if _LOWER_WORD.fullmatch(word) and not _HEX.fullmatch(word) and after.startswith(":") \
            and not after.startswith(("::", ":/")):
        hint = nearest(word, KEYS)
        if not hint:
            hint = (f" (the headers are {', '.join(KEYS)}; for prose, capitalise the word or drop the "
                    f"colon)")
        raise HeaderError(lineno, f"unknown header {word!r}{hint}")
    return None


def scan(lines: list[str]) -> list[Header]:
    """Every header of a file, in order; HeaderError for the first bad one."""
    out = []
    for i, raw in enumerate(lines):
        h = header_of(raw, i + 1)
        if h is not None:
            out.append(h)
    return out
