"""The on-disk cache of linked images (docs/assembler.md, "The image cache").

Linking the stub with keystone is most of a cold start (about 1.5 s of a
1.6 s boot in a new process), so a linked :class:`~emu.asm.image.Image` is
kept on disk, keyed by everything that decides its bytes: the sources and
link parameters (the in-process key), isoemu's version, keystone's and
capstone's versions, the Python version, and the linker's own code.  Files
a source ``.include``s are not in the key (they are found while parsing):
an entry records each one's path and hash, and is used only if every one is
unchanged.

Where: ``$ISOEMU_CACHE_DIR``, else ``$XDG_CACHE_HOME/isoemu/images``, else
``~/.cache/isoemu/images``.  ``ISOEMU_NO_CACHE=1`` (or ``--no-cache`` on the
command line) turns it off.  Entries are written to a temporary file and
renamed into place, so concurrent processes (pytest-xdist workers) never see
a partial entry; an entry that cannot be read (truncated, another format) is
a miss, and a cache directory that cannot be written is no cache, never an
error.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import sys
import tempfile
from pathlib import Path

from emu.version import VERSION

#: what this process did with the cache (tests read it)
STATS = {"hits": 0, "misses": 0, "writes": 0, "stale": 0}

_FORMAT = 2                # 2: sections without their parsed statements
_salt: str | None = None


def enabled() -> bool:
    return os.environ.get("ISOEMU_NO_CACHE", "") in ("", "0")


def directory() -> Path:
    d = os.environ.get("ISOEMU_CACHE_DIR")
    if d:
        return Path(d)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "isoemu" / "images"


def salt() -> str:
    """What besides the sources decides an image: versions and the linker's code."""
    global _salt
    if _salt is None:
        h = hashlib.sha256(f"{_FORMAT} {VERSION} {sys.version_info[:3]}".encode())
        # keystone and capstone as installed, without importing them (a warm
        # start never loads them): each package's files, stamped; a new
        # release or a reinstall writes them anew
        for name in ("keystone", "capstone"):
            spec = importlib.util.find_spec(name)
            for f in sorted(Path(spec.origin).parent.iterdir()) if spec and spec.origin else ():
                st = f.stat()
                h.update(f"{name}/{f.name} {st.st_size} {st.st_mtime_ns}".encode())
        for f in sorted(Path(__file__).parent.glob("*.py")):
            h.update(f.name.encode() + f.read_bytes())
        _salt = h.hexdigest()
    return _salt


def file_hash(path: str) -> str | None:
    """As the parser hashes what it includes: the text it reads."""
    try:
        with open(path) as f:
            return hashlib.sha256(f.read().encode()).hexdigest()
    except (OSError, UnicodeDecodeError):
        return None


def _path(key: str) -> Path:
    return directory() / f"{hashlib.sha256((salt() + key).encode()).hexdigest()}.pickle"


def load(key: str):
    """The cached image for ``key``, or None."""
    if not enabled():
        return None
    try:
        with open(_path(key), "rb") as f:
            entry = pickle.load(f)
        fmt, includes, img = entry
        if fmt != _FORMAT:
            raise ValueError("format")
    except Exception:                      # absent, truncated, another format, unreadable: a miss
        STATS["misses"] += 1
        return None
    if any(file_hash(p) != h for p, h in includes.items()):
        STATS["stale"] += 1
        return None
    STATS["hits"] += 1
    return img


def store(key: str, img, includes: dict[str, str]) -> None:
    if not enabled():
        return
    path = _path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                pickle.dump((_FORMAT, includes, img), f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        return                             # a read-only or full disk: no cache
    STATS["writes"] += 1
