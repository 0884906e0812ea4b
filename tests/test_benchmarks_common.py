"""The timing protocol shared by the benchmark scripts (benchmarks/_common.py)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from _common import Timing, interleaved, print_table  # noqa: E402


def test_interleaved_warms_up_then_alternates():
    calls = []
    t = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1)
    assert calls == ["a", "b"] * 4               # one warm-up round, then A B A B A B
    assert [len(v.times) for v in t.values()] == [3, 3]
    with pytest.raises(ValueError, match="rounds"):
        interleaved({"a": lambda: None}, rounds=0)


def test_timing_statistics_and_table(capsys):
    t = {"base": Timing("base", [3.0, 1.0, 2.0]), "other": Timing("other", [4.0, 8.0, 6.0])}
    assert (t["base"].min, t["base"].median, t["base"].max) == (1.0, 2.0, 3.0)
    print_table(t, "base", extra={"note": {"other": "x"}})
    rows = capsys.readouterr().out.splitlines()
    assert rows[0] == "| contender | min s | median s | max s | median / base | note |"
    assert rows[3] == "| other | 4.00 | 6.00 | 8.00 | 3.000 | x |"   # ratio of medians 6 / 2
