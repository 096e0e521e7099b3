"""Real-kernel images (docs/images.md, "Speed")."""

from __future__ import annotations


from emu.errors import ConfigError
from emu.dev.bench.core import bench, best, figure


# --- real-kernel images (docs/images.md, "Speed") ---------------------------------------------
#: pwndbg's page-table scanner on the same extracted fixture, measured by hand
#: (docs/images.md, "Speed": how); not run here, pwndbg is not a dependency
PWNDBG_NOTE = ("pwndbg's page-table scanner (gdb-pt-dump's parse_tables) on the same fixture: "
               "0.042 s quiet, 0.076 s loaded (docs/images.md, \"Speed\")")


def image_fixtures() -> list:
    """The committed real-kernel fixtures (tests/fixtures/linux61-*.elf), in a checkout."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[3] / "tests" / "fixtures"
    return sorted(root.glob("linux61-*.elf"))


@bench("images")
def bench_images(quick: bool) -> list[dict]:
    """ptdump, walk and check of a real Linux 6.1 kernel's tables (an
    extracted fixture, a fresh read of the file each time), each beside the
    same work without the visitor's memoization in this run (ESPfix's
    65,536 aliases walked one by one)."""
    from emu.hw.image import ImageMem
    from emu.tools import lint, ptdump
    from emu.tools.detect import image_translate
    from emu.tools.image import open_image

    fixtures = image_fixtures()
    if not fixtures:
        raise ConfigError("the images benchmarks need the repository's tests/fixtures/linux61-*.elf "
                          "(run isoemu bench from a checkout, or --only another group)")
    figs = []
    for path in fixtures[:1] if quick else fixtures:
        name = path.stem
        setup = open_image(str(path))
        layout, root, ctl = setup.layout, setup.root, setup.ctl

        def fresh():
            return ImageMem(str(path))          # the tables read from the file again

        def do_ptdump(memoize: bool = True) -> int:
            return len(ptdump.ptdump_lines(fresh(), root, ctl.mode, layout, memoize=memoize))

        def do_check(memoize: bool = True) -> int:
            return len(lint.check(fresh(), root, ctl.mode, ctl.maxphyaddr, lint.LINTS, layout, ctl.nxe,
                                  memoize=memoize))

        def do_walk() -> int:
            s = open_image(str(path))               # the whole command: open, detect, walk
            image_translate(s.mem, s.root, s.layout.kernel_text, s.ctl)
            return 1

        lines = do_ptdump()
        t_pt, _ = best(do_ptdump, 5)
        t_check, _ = best(do_check, 5)
        t_walk, _ = best(do_walk, 5)
        # the baseline: the same walks, every subtree walked each time it is referenced
        t_pt0, _ = best(lambda: do_ptdump(False), 1)
        t_check0, _ = best(lambda: do_check(False), 1)
        base = "the same without memoization (every ESPfix alias walked)"
        figs.append(figure(f"image_ptdump_seconds ({name}, {lines} lines)", t_pt, "s", baseline=t_pt0,
                           baseline_name=base, higher_is_better=False, target="<= 0.05", note=PWNDBG_NOTE))
        figs.append(figure(f"image_check_seconds ({name})", t_check, "s", baseline=t_check0,
                           baseline_name=base, higher_is_better=False, target="<= 0.1"))
        figs.append(figure(f"image_walk_seconds ({name}: open, detect, one walk)", t_walk, "s",
                           target="<= 0.05"))
    return figs
