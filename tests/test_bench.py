"""``isoemu bench``: the shape of the report (never the speed)."""

import json

import pytest

from emu.dev.bench import figure, run_bench
from emu.cli.main import main


@pytest.mark.parametrize("value,baseline,higher,ratio", [
    (100.0, 400.0, True, 4.0),       # a rate four times below the baseline: slowdown 4
    (2.0, 0.5, False, 4.0),          # a time four times the baseline: slowdown 4
    (10.0, 5.0, True, 0.5),          # faster than the baseline
])
def test_ratio_is_the_slowdown(value, baseline, higher, ratio):
    fig = figure("x", value, "1/s", baseline=baseline, baseline_name="b", higher_is_better=higher)
    assert fig["ratio"] == pytest.approx(ratio)
    assert fig["ratio_meaning"].startswith("slowdown")


def test_figure_without_baseline_has_no_ratio():
    fig = figure("t", 0.01, "s", target="< 0.05")
    assert "ratio" not in fig and fig["target"] == "< 0.05"


def test_microcode_figures_have_same_run_baselines():
    report = run_bench(quick=True, only=["microcode"])
    figs = report["figures"]
    assert [f["name"].split(" ")[0] for f in figs] == ["bare_syscall_round_trips_per_s", "bare_faults_per_s"]
    for f in figs:
        assert f["value"] > 0 and f["baseline"] > 0
        assert f["ratio"] == pytest.approx(f["baseline"] / f["value"])
        assert "raw Unicorn" in f["baseline_name"]
    assert set(report["machine"]) == {"python", "unicorn", "cpu"} and report["quick"] is True


def test_cli_json_is_parseable_and_filtered(capsys):
    assert main(["bench", "--json", "--quick", "--only", "microcode"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["figures"]) == 2
    assert all(set(f) >= {"name", "value", "unit", "target"} for f in report["figures"])


def test_unknown_only_filter_is_an_error(capsys):
    assert main(["bench", "--only", "no-such-figure"]) == 2
    assert "no-such-figure" in capsys.readouterr().err


def test_image_figures_beside_the_unmemoized_walk():
    """The images group: ptdump, check and walk of a committed real-kernel
    fixture, ptdump and check beside the same walks without memoization."""
    report = run_bench(quick=True, only=["images"])
    figs = {f["name"].split(" ")[0]: f for f in report["figures"]}
    assert set(figs) == {"image_ptdump_seconds", "image_check_seconds", "image_walk_seconds"}
    assert figs["image_ptdump_seconds"]["target"] == "<= 0.05"
    assert figs["image_check_seconds"]["target"] == "<= 0.1"
    for name in ("image_ptdump_seconds", "image_check_seconds"):
        f = figs[name]
        assert f["value"] > 0 and f["baseline"] > 0 and "without memoization" in f["baseline_name"]
        assert f["ratio"] == pytest.approx(f["value"] / f["baseline"])
    assert "pwndbg" in figs["image_ptdump_seconds"]["note"]


def test_the_startup_groups_boot_figure_boots_a_machine():
    # the boot figure's machine needs a process (it used to raise "the machine has no process to run")
    from emu.dev.bench.startup import _boot_once

    assert _boot_once() == 1
