"""Bench targets as data: each figure's target text parsed into {of, op, value, met}."""

import json

import pytest

from emu.cli.main import main
from emu.dev.bench import figure, parse_targets


@pytest.mark.parametrize("target,value,ratio,want", [
    (">= 5e6", 6e6, None, [{"of": "value", "op": ">=", "value": 5e6, "met": True}]),
    (">= 5e6", 4.9e6, None, [{"of": "value", "op": ">=", "value": 5e6, "met": False}]),
    (">= 5e6", 5e6, None, [{"of": "value", "op": ">=", "value": 5e6, "met": True}]),      # the bound itself
    ("< 0.05", 0.05, None, [{"of": "value", "op": "<", "value": 0.05, "met": False}]),
    ("< 0.05", 0.01, None, [{"of": "value", "op": "<", "value": 0.05, "met": True}]),
    ("ratio <= 2", 1.0, 2.0, [{"of": "ratio", "op": "<=", "value": 2.0, "met": True}]),
    ("ratio <= 2", 1.0, 2.5, [{"of": "ratio", "op": "<=", "value": 2.0, "met": False}]),
    (">= 1e5, ratio <= 2", 2e5, 3.0, [{"of": "value", "op": ">=", "value": 1e5, "met": True},
                                      {"of": "ratio", "op": "<=", "value": 2.0, "met": False}]),
    (None, 1.0, None, []),
])
def test_parse_targets(target, value, ratio, want):
    assert parse_targets(target, value, ratio) == want


@pytest.mark.parametrize("target", ["about 5", ">= fast", "ratio", "=> 3"])
def test_malformed_target_is_refused(target):
    with pytest.raises(ValueError, match="bench target"):
        parse_targets(target, 1.0, 1.0)


def test_ratio_target_needs_a_baseline():
    with pytest.raises(ValueError, match="needs a baseline"):
        figure("x", 1.0, "1/s", target="ratio <= 2")


@pytest.mark.parametrize("kw,met", [
    ({"target": ">= 1e5, ratio <= 2", "baseline": 1.5e5}, True),        # ratio 1.5
    ({"target": ">= 1e5, ratio <= 2", "baseline": 3e5}, False),         # ratio 3: the ratio misses
    ({"target": None}, None),
])
def test_figure_met_is_all_targets(kw, met):
    assert figure("x", 1e5 * 1.0, "1/s", baseline_name="b", **kw)["met"] is met


def test_cli_json_targets_and_summary(capsys):
    assert main(["bench", "--json", "--quick", "--only", "microcode"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out)
    assert out.count("\n") == 1                                     # compact
    for f in report["figures"]:
        assert f["targets"] and all(set(t) == {"of", "op", "value", "met"} for t in f["targets"])
        assert f["met"] == all(t["met"] for t in f["targets"])
    s = report["summary"]
    assert s["figures"] == 2 and s["with_target"] == 2
    assert s["met"] + len(s["missed"]) == 2
    assert s["missed"] == [f["name"] for f in report["figures"] if not f["met"]]


def test_cli_text_says_met_or_missed(capsys):
    assert main(["bench", "--quick", "--only", "microcode"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(ln.endswith((": met", ": missed")) for ln in lines[:2])
    assert lines[2].endswith("targets met") and lines[2].split()[2] == "2"
