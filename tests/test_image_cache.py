"""The on-disk cache of linked images (emu/asm/cache.py, docs/assembler.md):
a second link is served from disk, byte for byte the same; a changed include,
a corrupt entry and ISOEMU_NO_CACHE each lead to a fresh link."""

import os

import pytest

from emu.asm import cache, linker
from emu.asm.linker import link
from emu.cli.main import main

LAYOUT = {".text": 0x400000}


@pytest.fixture
def disk(tmp_path, monkeypatch):
    monkeypatch.setenv("ISOEMU_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("ISOEMU_NO_CACHE", raising=False)
    return tmp_path / "cache"


def fresh(img):
    """Forget the in-process copy, as a new process would not have it."""
    linker._IMAGE_CACHE.pop(img.digest, None)


def delta(before):
    return {k: cache.STATS[k] - before[k] for k in before}


def test_second_link_served_from_disk(disk):
    src = [("t.S", "mov eax, 0x1234\nret\n")]
    s0 = dict(cache.STATS)
    a = link(src, LAYOUT)
    assert delta(s0) == {"hits": 0, "misses": 1, "writes": 1, "stale": 0}
    assert len(list(disk.glob("*.pickle"))) == 1
    fresh(a)
    s1 = dict(cache.STATS)
    b = link(src, LAYOUT)
    assert delta(s1) == {"hits": 1, "misses": 0, "writes": 0, "stale": 0}
    assert b is not a and b.digest == a.digest
    assert {n: s.data for n, s in b.sections.items()} == {n: s.data for n, s in a.sections.items()}
    assert b.symbols == a.symbols and len(b.insns) == len(a.insns)


def test_changed_include_relinks(disk, tmp_path):
    inc = tmp_path / "v.inc"
    inc.write_text("VALUE = 0x11\n")
    src = [("t.S", '.include "v.inc"\nmov eax, VALUE\nret\n')]
    a = link(src, LAYOUT, include_dirs=[str(tmp_path)])
    inc.write_text("VALUE = 0x22\n")
    fresh(a)
    s0 = dict(cache.STATS)
    b = link(src, LAYOUT, include_dirs=[str(tmp_path)])
    assert delta(s0) == {"hits": 0, "misses": 0, "writes": 1, "stale": 1}
    assert a.sections[".text"].data[:5] == bytes([0xB8, 0x11, 0, 0, 0])
    assert b.sections[".text"].data[:5] == bytes([0xB8, 0x22, 0, 0, 0])


def test_corrupt_entry_is_a_miss(disk):
    src = [("t.S", "mov ebx, 0x77\nret\n")]
    a = link(src, LAYOUT)
    [entry] = disk.glob("*.pickle")
    entry.write_bytes(entry.read_bytes()[:40])          # truncated, as by a crash mid-write elsewhere
    fresh(a)
    s0 = dict(cache.STATS)
    b = link(src, LAYOUT)
    assert delta(s0) == {"hits": 0, "misses": 1, "writes": 1, "stale": 0}
    assert b.sections[".text"].data == a.sections[".text"].data


@pytest.mark.parametrize("how", ["env", "cli"])
def test_no_cache(disk, monkeypatch, capsys, how):
    if how == "env":
        monkeypatch.setenv("ISOEMU_NO_CACHE", "1")
        a = link([("t.S", "mov ecx, 0x99\nret\n")], LAYOUT)
        fresh(a)
    else:
        monkeypatch.setattr(os, "environ", dict(os.environ))     # main() sets ISOEMU_NO_CACHE for its run
        linker._IMAGE_CACHE.clear()
        assert main(["spaces", "--no-cache"]) == 0
        capsys.readouterr()
    assert not disk.exists() or not list(disk.glob("*.pickle"))


def test_unwritable_directory_is_no_cache(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("ISOEMU_CACHE_DIR", str(blocker / "sub"))       # a path under a file
    monkeypatch.delenv("ISOEMU_NO_CACHE", raising=False)
    s0 = dict(cache.STATS)
    a = link([("t.S", "mov edx, 0x55\nret\n")], LAYOUT)
    fresh(a)
    assert delta(s0)["writes"] == 0 and a.sections[".text"].data[:1] == b"\xba"


def test_kernel_stub_served_from_disk(disk, monkeypatch):
    """The stub itself, not only a toy source: an earlier cache refused every
    stub entry (a validation that never matched) and no test noticed."""
    from emu.linux import kernel
    from emu.linux.config import MachineConfig
    from emu.linux.layout import layout_for

    lay = layout_for(MachineConfig())
    monkeypatch.setattr(kernel, "_LINKED", {})
    monkeypatch.setattr(linker, "_IMAGE_CACHE", {})   # linked into this test's directory
    a = kernel.link_kernel(lay)
    fresh(a)
    monkeypatch.setattr(kernel, "_LINKED", {})    # as a new process
    s0 = dict(cache.STATS)
    b = kernel.link_kernel(lay)
    assert delta(s0) == {"hits": 1, "misses": 0, "writes": 0, "stale": 0}
    assert b.digest == a.digest
    assert {n: s.data for n, s in b.sections.items()} == {n: s.data for n, s in a.sections.items()}
    assert b.symbols == a.symbols and b.sites == a.sites and b.alternatives == a.alternatives


def test_edited_stub_source_relinks(disk, tmp_path, monkeypatch):
    """A stub file edited between boots: neither link_kernel's per-process
    reuse nor the disk serves the old image."""
    import shutil

    from emu.linux import kernel
    from emu.linux.config import MachineConfig
    from emu.linux.layout import layout_for

    monkeypatch.setattr(kernel, "_LINKED", {})
    stub = tmp_path / "kernel_stub"
    shutil.copytree(kernel.STUB_DIR, stub)
    monkeypatch.setattr(kernel, "STUB_DIR", str(stub))
    lay = layout_for(MachineConfig())
    a = kernel.link_kernel(lay)
    assert kernel.link_kernel(lay) is a
    with open(stub / "lib.S", "a") as f:
        f.write("\n; an edit\n    .text\n    nop\n")
    s0 = dict(cache.STATS)
    b = kernel.link_kernel(lay)
    assert b.digest != a.digest and delta(s0)["hits"] == 0
    assert b.sections[".text"].data != a.sections[".text"].data


def test_a_frozen_symbol_table_keys_the_link_as_its_dict_does(disk):
    """freeze_symbols: the same cache key (the repr of the inputs, hashed) as
    the plain dict, the same image; the frozen copy does not follow later
    changes of the dict it was made from."""
    import hashlib
    from types import MappingProxyType

    from emu.asm import freeze_symbols

    src = [("t.S", "mov eax, VALUE\nmov ebx, OTHER\nret\n")]
    syms = {"VALUE": 0x1234, "OTHER": 7, "ANOTHER": -1}
    frozen = freeze_symbols(syms)
    assert isinstance(frozen, MappingProxyType) and dict(frozen) == syms
    want = hashlib.sha256(repr((src, sorted(LAYOUT.items()), sorted(syms.items()), None, ".text", (".bss",),
                                ())).encode()).hexdigest()
    a = link(src, LAYOUT, syms)
    assert a.digest == want and linker._IMAGE_CACHE[want] is a       # the key as it always was
    for _ in range(2):                               # the frozen text made, then reused
        assert link(src, LAYOUT, frozen) is a
    syms["VALUE"] = 0x5678
    b = link(src, LAYOUT, syms)
    assert b is not a and link(src, LAYOUT, frozen) is a
    assert link(src, LAYOUT, MappingProxyType(syms)) is b      # a proxy it did not make: read each time
