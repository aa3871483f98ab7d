"""The full-size GPU bench's arithmetic and report (the GPU run itself is not a test: docs/benchmarks.md)."""

from __future__ import annotations

import pytest

from headhunter.bench.fullsize import StepClock, format_report, ideal_speedup


def test_ideal_speedup_follows_the_issue_formulas():
    assert ideal_speedup(0, 24, cfg=False) == pytest.approx(1.0)
    assert ideal_speedup(12, 24, cfg=False) == pytest.approx(2 / 1.5)
    assert ideal_speedup(18, 24, cfg=True) == pytest.approx(3 / 2.25)
    assert ideal_speedup(24, 24, cfg=False) == pytest.approx(2.0)


def test_step_clock_measures_between_step_ends_only():
    clock = StepClock(cuda=False)
    for _ in range(4):
        clock.callback(None, 0, None, {})
    assert len(clock.ms()) == 3 and all(ms >= 0 for ms in clock.ms())


def test_report_shows_ratios_and_the_sweep_against_the_ideal():
    case = lambda ms: {"median_ms": ms, "min_ms": ms, "max_ms": ms, "n": 1, "peak_gib": 1.0}  # noqa: E731
    data = {"device_name": "X", "torch": "t", "diffusers": "d", "dtype": "bf16",
            "sd3": {"config": {"num_layers": 24}, "tokens": {}, "checks": {"max |a - b|": 0.5},
                    "cases": {"stock forward B=2": case(100.0), "stock forward B=3": case(150.0),
                              "sweep: first perturbed block 12, no CFG (B=2)": case(80.0),
                              "sweep: first perturbed block 12, CFG (B=3)": case(125.0),
                              "sweep (full computation): first perturbed block 12, CFG (B=3)": case(150.0)}},
            "flux": {"error": "RuntimeError: out of memory"}}
    text = format_report(data)
    assert "| 12 | no | 1.250 | 1.333 | 0.94 |  |" in text
    assert "| 12 | yes | 1.200 | 1.200 | 1.00 | 1.000 |" in text
    assert "flux: failed: RuntimeError: out of memory" in text
