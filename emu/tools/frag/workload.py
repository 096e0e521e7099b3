"""Workloads of the fragmentation experiment: the file format and the presets.

A workload is a list of steps, one a line (docs/frag.md)::

    # comment
    kernel  ID SIZE [owner=NAME] [life=STEPS]   an ordinary allocation: stays in the direct map
    alloc   ID SIZE [owner=NAME] [life=STEPS]   unmapped memory (secret pages, guest memory)
    free    ID                                  give an allocation back
    exit    OWNER                               the owner goes: its allocations are freed, its
                                                files closed (a per-file cache released)

SIZE is a multiple of 4K (``4K``, ``64K``, ``1G``); ``owner`` defaults to
the ID; ``life=N`` frees the allocation N steps later (a step is a line).
A line that is not one of these is refused with ``FILE:LINE:``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from emu.errors import ConfigError
from emu.hw.phys import PAGE_SIZE
from emu.parse import parse_count, parse_size

OPS = ("kernel", "alloc", "free", "exit")


@dataclass(frozen=True)
class Step:
    op: str                 # kernel | alloc | free | exit
    name: str               # the allocation's ID, or the owner for exit
    pages: int = 0
    owner: str = ""
    life: int = 0           # 0: until freed
    where: str = ""         # FILE:LINE, or the preset's name and step

    def text(self) -> str:
        if self.op in ("free", "exit"):
            return f"{self.op} {self.name}"
        life = f" life={self.life}" if self.life else ""
        return f"{self.op} {self.name} {fmt_pages(self.pages)} owner={self.owner}{life}"


def fmt_pages(n: int) -> str:
    b = n * PAGE_SIZE
    for unit, sh in (("G", 30), ("M", 20)):
        if b % (1 << sh) == 0:
            return f"{b >> sh}{unit}"
    return f"{b >> 10}K"


def parse_workload(text: str, path: str = "<workload>") -> list[Step]:
    """The steps of a workload file; a bad line refused as ``path:line: why``."""
    steps: list[Step] = []
    live: dict[str, tuple[str, str]] = {}     # ID -> (where it was allocated, owner)
    for no, raw in enumerate(text.splitlines(), 1):
        where = f"{path}:{no}"
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        try:
            step = _parse_line(words, where)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        if step.op in ("kernel", "alloc"):
            if step.name in live:
                raise ConfigError(f"{where}: {step.name!r} is already allocated (at {live[step.name][0]}); "
                                  f"free it first or use another ID")
            if not step.life:
                live[step.name] = (where, step.owner)
        elif step.op == "free":
            if step.name not in live:
                raise ConfigError(f"{where}: free {step.name}: no live allocation of that ID "
                                  f"(never allocated, or freed already: by free, its life= or its owner's exit)")
            del live[step.name]
        else:
            for name in [n for n, (_, o) in live.items() if o == step.name]:
                del live[name]
        steps.append(step)
    if not steps:
        raise ConfigError(f"{path}: no steps (lines: kernel|alloc ID SIZE [owner=NAME] [life=STEPS], "
                          f"free ID, exit OWNER)")
    return steps


def _parse_line(words: list[str], where: str) -> Step:
    op = words[0].lower()
    if op not in OPS:
        raise ConfigError(f"unknown step {words[0]!r}; use one of {', '.join(OPS)}")
    if op in ("free", "exit"):
        if len(words) != 2:
            raise ConfigError(f"{op} takes one word: {op} {'ID' if op == 'free' else 'OWNER'}")
        return Step(op, words[1], where=where)
    if len(words) < 3:
        raise ConfigError(f"{op} needs an ID and a size: {op} ID SIZE [owner=NAME] [life=STEPS]")
    name = words[1]
    if "=" in name:
        raise ConfigError(f"{op}: the ID comes first, before {name!r}")
    size = parse_size(words[2], f"{op} size", lo=PAGE_SIZE, hi=1 << 40)
    if size % PAGE_SIZE:
        raise ConfigError(f"{op} size {words[2]!r} is not a multiple of 4K")
    opts = {"owner": name, "life": "0"}
    seen = set()
    for w in words[3:]:
        key, eq, val = w.partition("=")
        if not eq or key not in ("owner", "life") or not val:
            raise ConfigError(f"{op}: unexpected {w!r}; options are owner=NAME and life=STEPS")
        if key in seen:
            raise ConfigError(f"{op}: {key}= given twice")
        seen.add(key)
        opts[key] = val
    life = parse_count(opts["life"], "life", lo=0) if opts["life"] != "0" else 0
    return Step(op, name, size // PAGE_SIZE, opts["owner"], life, where)


# --- presets -----------------------------------------------------------------------------------
def preset_keys(processes: int = 1000) -> list[Step]:
    """One secret key page in each of ``processes`` processes: each starts
    (64 KiB of ordinary kernel memory: its page tables, stacks, mm), takes
    its key, and they all exit at the end."""
    steps = []
    for i in range(processes):
        steps.append(Step("kernel", f"p{i}.mm", 16, f"p{i}", where=f"keys:{len(steps) + 1}"))
        steps.append(Step("alloc", f"p{i}.key", 1, f"p{i}", where=f"keys:{len(steps) + 1}"))
    for i in range(processes):
        steps.append(Step("exit", f"p{i}", where=f"keys:{len(steps) + 1}"))
    return steps


def preset_guest(size_pages: int = (1 << 30) // PAGE_SIZE) -> list[Step]:
    """A 1 GiB guest_memfd guest with NO_DIRECT_MAP (4 KiB folios, as
    guest_memfd allocates them) started and stopped, beside its VMM's
    ordinary memory."""
    return [Step("kernel", "vmm", 4096, "vmm", where="guest:1"),
            Step("alloc", "guest", size_pages, "vm", where="guest:2"),
            Step("kernel", "vmm.io", 256, "vmm", where="guest:3"),
            Step("exit", "vm", where="guest:4"),
            Step("exit", "vmm", where="guest:5")]


def preset_churn(seed: int = 1, allocations: int = 10_000, owners: int = 64) -> list[Step]:
    """Random churn: ``allocations`` unmapped allocations of 1-4 pages by
    ``owners`` processes among ordinary ones of 1-16 pages, random frees,
    and processes that exit and start again; reproducible from ``seed``."""
    rng = random.Random(seed)
    steps: list[Step] = []
    live: list[tuple[str, str]] = []          # (ID, owner)
    gen = {o: 0 for o in range(owners)}
    n = made = 0

    def owner_name(o: int) -> str:
        return f"p{o}.{gen[o]}"

    while made < allocations:
        r = rng.random()
        where = f"churn:{len(steps) + 1}"
        if r < 0.004:
            o = rng.randrange(owners)
            name = owner_name(o)
            steps.append(Step("exit", name, where=where))
            live = [x for x in live if x[1] != name]
            gen[o] += 1
            continue
        if live and r < 0.45:
            i = rng.randrange(len(live))
            live[i], live[-1] = live[-1], live[i]
            steps.append(Step("free", live.pop()[0], where=where))
            continue
        o = owner_name(rng.randrange(owners))
        n += 1
        if r < 0.75:
            steps.append(Step("kernel", f"k{n}", rng.randint(1, 16), o, where=where))
        else:
            steps.append(Step("alloc", f"s{n}", rng.randint(1, 4), o, where=where))
            made += 1
        live.append((f"{steps[-1].name}", o))
    return steps


PRESETS = {"keys": "one secret key page in each of 1,000 processes, then they exit",
           "guest": "a 1 GiB NO_DIRECT_MAP guest_memfd guest started and stopped",
           "churn": "random churn: 10,000 unmapped allocations among ordinary ones (--seed, --allocations)"}


def preset(name: str, seed: int = 1, allocations: int = 10_000) -> list[Step]:
    if name == "keys":
        return preset_keys()
    if name == "guest":
        return preset_guest()
    if name == "churn":
        return preset_churn(seed, allocations)
    raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
