"""Start-up time of the `headhunter` CLI: each light command run in a fresh interpreter, median of N.

Target (issue 11): `--version`, `--help`, `plugins`, `presets` and `show FILE` under 1 s each (median of 5)
on the project's shared 2-core machine. A bare `python -c pass` and `python -c "import torch"` are timed
in the same interleaved rounds, so figures from a loaded machine can be read as ratios to them. Run it with
`headhunter bench --suite startup`, or `python -m headhunter.bench.startup`.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: Commands timed: label -> arguments after `python -m headhunter.cli` (`{headset}`: a small head-set file).
COMMANDS: dict[str, list[str]] = {
    "--version": ["--version"],
    "--help": ["--help"],
    "plugins": ["plugins"],
    "presets": ["presets"],
    "show": ["show", "{headset}"],
}
#: Reference processes: label -> python arguments.
BASELINES: dict[str, list[str]] = {"python -c pass": ["-c", "pass"], "import torch": ["-c", "import torch"]}


def _time(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    return elapsed


def run(repeats: int = 5, baselines: bool = True) -> dict[str, Any]:
    """Median wall seconds per command (`repeats` interleaved rounds), plus the reference processes."""
    from headhunter.format.headset import HeadSet

    with tempfile.TemporaryDirectory() as tmp:
        headset = Path(tmp) / "bench.safetensors"
        HeadSet.from_notation("L1H10, L13H17@0.5", base_model="stabilityai/stable-diffusion-3-medium-diffusers",
                              name="startup-bench").save(headset)
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        cases = {label: [sys.executable, "-m", "headhunter.cli", *(a.format(headset=headset) for a in args)]
                 for label, args in COMMANDS.items()}
        if baselines:
            cases.update({label: [sys.executable, *args] for label, args in BASELINES.items()})
        times: dict[str, list[float]] = {label: [] for label in cases}
        for _ in range(repeats):  # interleaved, so a busy spell hits every case alike
            for label, argv in cases.items():
                times[label].append(_time(argv, env))
    return {"repeats": repeats, "seconds": {label: statistics.median(t) for label, t in times.items()},
            "all": times}


def format_report(result: dict[str, Any], target: float = 1.0) -> str:
    lines = [f"CLI start-up: median of {result['repeats']} fresh processes (target < {target:g} s per command)"]
    for label, seconds in result["seconds"].items():
        mark = "" if label not in COMMANDS else ("  ok" if seconds < target else "  OVER")
        lines.append(f"  {label:<16} {seconds:6.3f} s{mark}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_report(run()))
