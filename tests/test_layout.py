"""The kernel's address map as data: overrides by key, layout files, order."""

import pytest

from emu.errors import ConfigError, IsoemuError
from emu.linux.layout import (LAYOUT_4LEVEL, LAYOUT_5LEVEL, LAYOUT_KEYS, format_layout, layout_for, linux_layout,
                              parse_layout_assignments, read_layout_file)


def test_the_built_in_machine_and_a_distribution_kernel_differ_only_in_modules():
    for levels, lay in ((4, LAYOUT_4LEVEL), (5, LAYOUT_5LEVEL)):
        assert layout_for(levels) is lay
        dist = linux_layout(levels)
        diff = {k for k, v in dist.values().items() if v != lay.values()[k]}
        assert diff == {"modules_vaddr"} and dist.modules_vaddr == 0xFFFFFFFFC0000000
        assert lay.modules_vaddr == 0xFFFFFFFFA0000000
    # GUARD_HOLE_END_ADDR: where ptdump's kernel range starts
    assert (LAYOUT_4LEVEL.guard_hole_end, LAYOUT_5LEVEL.guard_hole_end) == (0xFFFF880000000000, 0xFF10000000000000)


@pytest.mark.parametrize("items,want", [
    (["page_offset_base=ffff8d4c40000000"], {"page_offset_base": 0xFFFF8D4C40000000}),
    (["vmalloc_base=0xffffd1f400000000,vmemmap_base=fffff420c0000000"],
     {"vmalloc_base": 0xFFFFD1F400000000, "vmemmap_base": 0xFFFFF420C0000000}),
    (["ldt_base=none", "ldt_base=NONE"], {"ldt_base": None}),
    (["efi_va_end = none"], {"efi_va_end": None}),
])
def test_assignments(items, want):
    assert parse_layout_assignments(items) == want


@pytest.mark.parametrize("items,message", [
    (["vmalloc=1"], "unknown layout key 'vmalloc'"),
    (["vmalloc_base"], "expected KEY=VALUE"),
    (["vmalloc_base=zz"], "bad --layout vmalloc_base value 'zz'"),
    (["kernel_map=none"], "every kernel has a kernel_map"),
    (["ldt_base=1", "ldt_base=2"], "ldt_base given twice (0x1 and 0x2)"),
])
def test_bad_assignments(items, message):
    with pytest.raises(IsoemuError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_layout_assignments(items)


def test_vmalloc_end_follows_vmalloc_base_and_order_is_kept():
    lay = linux_layout(4).with_values({"vmalloc_base": 0xFFFFD1F400000000})
    assert lay.vmalloc_end == 0xFFFFD1F400000000 + (32 << 40) - 1
    lay5 = linux_layout(5).with_values({"vmalloc_base": 0xFF6F3D09C0000000})
    assert lay5.vmalloc_end == 0xFF6F3D09C0000000 + (12800 << 40) - 1
    with pytest.raises(ConfigError, match="Vmemmap at 0xffffc80000000000 is below vmalloc"):
        linux_layout(4).with_values({"vmemmap_base": 0xFFFFC80000000000})
    markers = [n for _, n in linux_layout(4).with_values({"kasan_shadow_start": 0xFFFFEC0000000000,
                                                           "kasan_shadow_end": 0xFFFFFC0000000000}).markers()]
    assert markers.index("KASAN shadow") == markers.index("Vmemmap") + 1


def test_layout_files_read_back(tmp_path):
    lay = linux_layout(5).with_values({"page_offset_base": 0xFF30C7ECC0000000, "ldt_base": None})
    path = tmp_path / "layout"
    path.write_text("# a comment\n\n" + "\n".join(format_layout(lay, {"ldt_base": "given"})) + "\n")
    values = read_layout_file(str(path))
    assert set(values) == set(LAYOUT_KEYS)
    assert linux_layout(5).with_values(values) == lay
    path.write_text("page_offset_base ff11000000000000\nvmalloc_base = = 1\n")
    with pytest.raises(IsoemuError, match=f"bad {path}:2: vmalloc_base value '= 1'"):
        read_layout_file(str(path))
    path.write_text("ldt_base = 1\nldt_base = none\n")
    with pytest.raises(ConfigError, match=f"{path}:2: ldt_base given twice"):
        read_layout_file(str(path))
    path.write_text("one two three\n")
    with pytest.raises(ConfigError, match=f"{path}:1: expected 'KEY = VALUE'"):
        read_layout_file(str(path))
