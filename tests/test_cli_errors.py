"""Bad input on the command line: one line on stderr, exit status 2, never a traceback.

Every number the commands take goes through emu/parse.py (README: "Numbers"):
addresses and CR3 values hexadecimal, counts decimal with k/M/G, sizes
K/M/G/T, other values decimal or 0x-hex, each refusal naming the range.
"""

import subprocess
import sys

import pytest

from emu.cli.main import main

HELLO = """_start:
    mov eax, SYS_exit
    mov edi, 3
    syscall
"""

# (argv, the whole stderr line after "isoemu: ")
CASES = [
    # walk VA: hexadecimal, or names and expressions
    (["walk", "zz9"], "bad virtual address 'zz9': unknown name 'zz9'"),
    (["walk", "USER_DATA +"], "bad virtual address 'USER_DATA +': it ends with an operator"),
    (["walk", "--", "-5"], "bad virtual address '-5': an address cannot be negative"),
    (["walk", "1ffffffffffffffff"],
     "virtual address '1ffffffffffffffff' is out of range (0x0 .. 0xffffffffffffffff)"),
    # --cr3: hexadecimal, only with --image
    (["walk", "400000", "--cr3", "1000"],
     "--cr3 needs --image FILE (the built-in machine's roots are named by --space)"),
    # --pkru: 0 .. 0xffffffff
    (["walk", "400000", "--pkru", "-1"], "--pkru value '-1' is out of range (0 .. 4,294,967,295)"),
    (["walk", "400000", "--pkru", "4294967296"], "--pkru value '4294967296' is out of range (0 .. 4,294,967,295)"),
    (["walk", "400000", "--pkru", "0x100000000"], "--pkru value '0x100000000' is out of range (0x0 .. 0xffffffff)"),
    (["walk", "400000", "--pkru", "abc"],
     "bad --pkru value 'abc': expected a decimal number, or hexadecimal with 0x"),
    # --ram: a size, 32M .. 1T in 2 MiB steps
    (["matrix", "--ram", "-1"], "bad --ram '-1': expected a size in 32M .. 1T such as 256M or 4G"),
    (["matrix", "--ram", "32X"], "bad --ram '32X': expected a size in 32M .. 1T such as 256M or 4G"),
    (["matrix", "--ram", "2T"], "--ram '2T' is out of range (32M .. 1T)"),
    (["stats", "--ram", "16M"], "--ram '16M' is out of range (32M .. 1T)"),
    (["walk", "0", "--ram", "33M"], "--ram '33M' is not a multiple of 2 MiB"),
    # --budget: a count
    (["run", "PROG", "--budget", "10X"], "bad --budget '10X': expected a decimal number such as 2000000 or 10M"),
    (["run", "PROG", "--budget", "-5"], "--budget '-5' is out of range (1 .. 4,611,686,018,427,387,904)"),
    (["run", "PROG", "--budget", "1.5"], "bad --budget '1.5': not a whole number"),
    (["run", "PROG", "--budget", "0"], "--budget '0' is out of range (1 .. 4,611,686,018,427,387,904)"),
    # --set, and flags that contradict it
    (["stats", "--set", "pti=maybe"], "pti=maybe: use one of on, off, auto"),
    (["matrix", "--set", "ptii=off"], "unknown machine switch 'ptii' (did you mean 'pti'?); known: pti, pcid, "
                                      "asi, smep, smap, pke, nx, invpcid, la57, ram, tlb, inject, unmapped, unmapped_pool, collapse"),
    (["stats", "--set", "pti"], "--set 'pti': write KEY=VALUE (e.g. pti=off)"),
    (["stats", "--set", "pti=off,pti=on"], "--set: pti is given twice (off and on)"),
    (["stats", "--set", "pti=off", "--set", "pti=on"], "--set: pti is given twice (off and on)"),
    (["stats", "--no-pti", "--set", "pti=on"], "--no-pti contradicts --set pti=on"),
    (["matrix", "--la57", "--set", "la57=off"], "--la57 contradicts --set la57=off"),
    (["spaces", "--ram", "1G", "--set", "ram=64G"], "--ram 1G contradicts --set ram=64G"),
    (["walk", "0", "--no-asi", "--set", "asi=on"], "--no-asi contradicts --set asi=on"),
    (["ptdump", "--no-pcid", "--set", "pcid=on"], "--no-pcid contradicts --set pcid=on"),
    (["check", "--set", "nx=of"], "nx=of: use nx=on or nx=off"),
    (["trace", "PROG", "--set", "nx=maybe"], "nx=maybe: use nx=on or nx=off"),
    (["debug", "--set", "pcid=of", "-ex", "q"], "pcid=of: use pcid=on or pcid=off"),
    # argparse's own errors, with the nearest option or command
    (["matrix", "--jsno"], "matrix: unrecognized argument: --jsno (did you mean --json?)"),
    (["matrx"], "unknown command 'matrx' (did you mean matrix?); commands: matrix, stats, run, walk, ptdump, "
                "check, spaces, diff, whereis, report, frag, image, trace, debug, test, bench"),
    (["walk", "400000", "--acess", "w"],
     "walk: unrecognized arguments: --acess (did you mean --access?), w"),
    (["walk", "400000", "--access", "rw"], "walk: --access: invalid choice 'rw' (did you mean w?); choose from r, w, x"),
    (["walk", "400000", "--cpl", "1"], "walk: --cpl: invalid choice '1'; choose from 0, 3"),
    (["stats", "--prety"], "stats: unrecognized argument: --prety (did you mean --pretty?)"),
    (["--jsno"], "unrecognized argument: --jsno"),
    # run
    (["run"], "run: PROGRAM.S is required"),
    (["run", "PROG", "--events", "faults"],
     "unknown event kind 'faults' (did you mean 'fault'?); kinds: cr3, syscall, fault, interrupt, asi, alloc, "
     "exit, frame, invpcid, port, mmu, triple-fault, stale"),
    (["run", "PROG", "--json", "--jsonl"], "--json and --jsonl: choose one"),
    (["run", "PROG", "--name", "x-y"], "process name 'x-y': use letters, digits and _"),
    (["run", "NOSUCH"], "cannot read NOSUCH: No such file or directory"),
    # test
    (["test", "-j", "0", "PROG"], "--jobs '0': expected a number of processes, 1 or more"),
    (["test", "--jobs", "two", "PROG"], "--jobs 'two': expected a number of processes, 1 or more"),
]


@pytest.mark.parametrize("argv,message", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_is_one_line(tmp_path, capsys, argv, message):
    prog = tmp_path / "prog.S"
    prog.write_text(HELLO)
    nosuch = str(tmp_path / "nosuch.S")
    argv = [str(prog) if a == "PROG" else nosuch if a == "NOSUCH" else a for a in argv]
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2
    assert err == f"isoemu: {message.replace('NOSUCH', nosuch)}\n"


# Sources that keystone would misread are refused, named, in one line.
@pytest.mark.parametrize("data,message", [
    (b"_start: \xff\n", "not UTF-8 text (byte 0xff at line 1)"),
    (b"_start:\n    mov\xc2\xa0eax, 1\n", ":2: non-ASCII character U+00A0 (NO-BREAK SPACE) outside a string"),
    (b"_start:\n    mov eax, \xe2\x80\x9c1\n", ":2: non-ASCII character U+201C (LEFT DOUBLE QUOTATION MARK) "
                                              "outside a string"),
])
def test_unreadable_sources(tmp_path, capsys, data, message):
    prog = tmp_path / "bad.S"
    prog.write_bytes(data)
    assert main(["run", str(prog)]) == 2
    sep = "" if message.startswith(":") else ": "
    assert capsys.readouterr().err == f"isoemu: {prog}{sep}{message}\n"


def test_bom_and_non_ascii_comments_are_fine(tmp_path, capsys):
    prog = tmp_path / "bom.S"
    prog.write_bytes(b"\xef\xbb\xbf; caf\xc3\xa9 \xe2\x80\x94 a comment\n" + HELLO.encode())
    assert main(["run", str(prog)]) == 3
    assert capsys.readouterr().err == ""


def test_usage_error_from_the_console_script():
    """The top-level usage block is gone: one line, exit 2."""
    p = subprocess.run([sys.executable, "-m", "emu.cli", "matrix", "--jsno"], capture_output=True, text=True)
    assert (p.returncode, p.stdout, p.stderr) == \
        (2, "", "isoemu: matrix: unrecognized argument: --jsno (did you mean --json?)\n")


# --help states the number rule wherever numbers are taken
@pytest.mark.parametrize("cmd,words", [
    ("walk", ["hexadecimal (400000 is 0x400000)", "0 .. 0xffffffff", "32M .. 1T", "Numbers:"]),
    ("run", ["decimal count with k/M/G (default 10M)", "Numbers:"]),
    ("ptdump", ["hexadecimal (1c0a000 is 0x1c0a000)", "Numbers:"]),
    ("matrix", ["KEY=VALUE", "Numbers:"]),
])
def test_help_states_the_number_rule(capsys, cmd, words):
    with pytest.raises(SystemExit):
        main([cmd, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for w in words:
        assert w in out


def test_each_command_builds_from_its_own_module():
    """main() builds only the module of the command given (docs/performance.md):
    the table of commands names exactly the full parser's commands, each in
    the module that defines it, and a one-module parser knows that command."""
    import argparse

    from emu.cli.main import COMMANDS, build_parser

    def commands(parser):
        [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        return list(action.choices)

    assert sorted(commands(build_parser())) == sorted(COMMANDS)
    for command, module in COMMANDS.items():
        assert command in commands(build_parser(command)), (command, module)
        others = [c for c, m in COMMANDS.items() if m != module]
        assert not set(others) & set(commands(build_parser(command))), command
