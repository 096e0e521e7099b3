"""README's examples stay true (and those of the docs in DOCS): every fenced block whose first line is a
``$ isoemu`` command (or a ``$ cat FILE`` that defines a program a later
``$ isoemu`` line uses, as the hello.S example does) is run in a scratch
directory holding every file README defines that way, and its output
compared with the block.

Normalised: trailing blanks, timings (``in 0.27 s``).  A line ``...`` in a
block stands for any number of lines.  Commands run through bash, stderr
merged into stdout as a terminal shows them.

Blocks known to differ from README today are listed in STALE, by their first
command, and marked xfail (strict: once README is updated the entry must go).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

#: first command of each block that differs today, and why (README is the lead's to update)
STALE: dict[str, str] = {}


def blocks(text: str) -> list[list[str]]:
    """The fenced blocks whose first line starts with ``$ isoemu``, ``$ cat`` or
    ``$ python scripts/``."""
    out = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            body = lines[i + 1:j]
            if body and body[0].startswith(("$ isoemu", "$ cat ", "$ python scripts/")):
                out.append(body)
            i = j + 1
        else:
            i += 1
    return out


def steps(block: list[str]) -> list[tuple[str, list[str]]]:
    """``[(command, expected output lines)]`` of one block."""
    out: list[tuple[str, list[str]]] = []
    for line in block:
        if line.startswith("$ "):
            out.append((line[2:], []))
        else:
            out[-1][1].append(line)
    return out


def normalise(lines: list[str]) -> list[str]:
    return [re.sub(r"\bin \d+(\.\d+)? s\b", "in N s", ln.rstrip()) for ln in lines]


def matches(want: list[str], got: list[str]) -> bool:
    """``want`` against ``got``, a ``...`` line matching any run of lines."""
    if not want:
        return not got
    if want[0] == "...":
        return any(matches(want[1:], got[k:]) for k in range(len(got) + 1))
    return bool(got) and want[0] == got[0] and matches(want[1:], got[1:])


BLOCKS = blocks(README.read_text())


def files(all_blocks) -> dict[str, str]:
    """Every file a ``$ cat FILE`` defines in README: later blocks may use it."""
    out = {}
    for b in all_blocks:
        for cmd, want in steps(b):
            cat = re.fullmatch(r"cat (\S+)", cmd)
            if cat:
                out[cat.group(1)] = "\n".join(want) + "\n"
    return out


def _id(block):
    return block[0][2:]


@pytest.mark.parametrize("block", [
    pytest.param(b, id=_id(b), marks=[pytest.mark.xfail(reason=STALE[_id(b)], strict=True)] if _id(b) in STALE
                 else []) for b in BLOCKS])
def test_readme_block(tmp_path, block, defined=None):
    for name, text in (files(BLOCKS) if defined is None else defined).items():
        (tmp_path / name).write_text(text)
    (tmp_path / "asm").symlink_to(ROOT / "asm")
    (tmp_path / "scripts").symlink_to(ROOT / "scripts")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "NO_COLOR": "1", "COLUMNS": "120"}
    for cmd, want in steps(block):
        cat = re.fullmatch(r"cat (\S+)", cmd)
        if cat:                        # a file README defines (written above): nothing to run
            continue
        p = subprocess.run(["bash", "-c", f"exec 2>&1; {cmd}"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
        got = normalise(p.stdout.splitlines())
        assert matches(normalise(want), got), f"$ {cmd}\n--- README\n" + "\n".join(want) + \
            "\n--- got\n" + "\n".join(got)


#: documents whose examples are checked the same way (each with its own files)
DOCS = sorted((ROOT / "docs").glob("*.md"))
DOC_BLOCKS = [(doc, b) for doc in DOCS for b in blocks(doc.read_text())]


@pytest.mark.parametrize("doc,block", [pytest.param(d, b, id=f"{d.name}: {_id(b)}") for d, b in DOC_BLOCKS])
def test_doc_block(tmp_path, doc, block):
    test_readme_block(tmp_path, block, defined=files([b for d, b in DOC_BLOCKS if d == doc]))


def test_readme_has_the_examples():
    """The parser finds the command examples (a README rewrite that breaks the fences would
    otherwise pass silently)."""
    firsts = [_id(b) for b in BLOCKS]
    assert any(f.startswith("isoemu matrix") for f in firsts)
    assert any(f.startswith("cat ") for f in firsts)
    assert set(STALE) <= set(firsts), "a STALE entry names no README block: remove it"


@pytest.mark.parametrize("want,got,ok", [
    (["a", "...", "z"], ["a", "b", "c", "z"], True),
    (["a", "...", "z"], ["a", "z"], True),
    (["a", "...", "z"], ["a", "b"], False),
    (["a", "b"], ["a", "b", "c"], False),
    (["a", "b"], ["a", "c"], False),
    (["x in 0.27 s"], ["x in 1.5 s"], True),
])
def test_matcher(want, got, ok):
    assert matches(normalise(want), normalise(got)) is ok


def python_blocks(text: str) -> list[str]:
    """README's ```python blocks that are whole programs (the tutorial's,
    which shows part of scripts/cr3_walkthrough.py, is run as that script)."""
    out = re.findall(r"```python\n(.*?)```", text, re.S)
    return [b for b in out if "PROGRAM" not in b]


@pytest.mark.parametrize("code", python_blocks(README.read_text()), ids=lambda c: c.splitlines()[0])
def test_readme_python_block(tmp_path, code):
    for name, text in files(BLOCKS).items():
        (tmp_path / name).write_text(text)
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr


def test_readme_has_python_examples():
    assert len(python_blocks(README.read_text())) == 2
