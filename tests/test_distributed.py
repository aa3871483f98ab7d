"""Distributed search on CPU with 2 gloo processes (torchrun): the same head set and bit-identical per-image
scores as 1 process; the job killed with kill -9 mid-run resumes with 1 process and finishes identically."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from test_search import tiny_digits_pipe, Brightness, SETTINGS
    from headhunter import hunt
    from headhunter.search.distributed import context
    r = hunt(tiny_digits_pipe(), Brightness(), rounds=2, out_dir={out!r}, report={report}, batch_size=2,
             schedule="racing", first_pairs=2, **{{**SETTINGS, "seeds": [0, 1, 2, 3]}})
    if context().is_main:
        print("RESULT", r.headset.notation(), repr([sorted(x.scores.items()) for x in r.rounds]))
    """
)


def _env() -> dict[str, str]:
    # one thread per process in both runs: float results do not depend on how many processes there are
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests")}


def _script(out: Path, report: bool = False) -> str:
    return SCRIPT.format(tests=str(ROOT / "tests"), out=str(out), report=report)


def _torchrun(n: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"]


def _result(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("RESULT"))


def _scores(out: Path) -> dict:
    return json.loads((out / "state.json").read_text())["units"]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    one = subprocess.run([sys.executable, "-c", _script(tmp_path / "one", report=True)], capture_output=True,
                         text=True, env=_env(), timeout=600)
    assert one.returncode == 0, one.stderr
    script = tmp_path / "job.py"
    script.write_text(_script(tmp_path / "two", report=True))
    two = subprocess.run(_torchrun(2) + [str(script)], capture_output=True, text=True, env=_env(), timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert _result(two.stdout) == _result(one.stdout)
    assert _scores(tmp_path / "two") == _scores(tmp_path / "one")  # every per-image score, bit for bit
    e1 = json.loads((tmp_path / "one" / "evaluation.json").read_text())["settings"]
    e2 = json.loads((tmp_path / "two" / "evaluation.json").read_text())["settings"]
    assert e1 == e2  # the sharded fresh-seed evaluation too
    assert sorted(p.name for p in (tmp_path / "two").glob("*.tmp")) == []


@pytest.mark.slow
def test_kill_minus_9_of_a_two_process_job_then_resume_with_one(tmp_path):
    straight = subprocess.run([sys.executable, "-c", _script(tmp_path / "straight")], capture_output=True,
                              text=True, env=_env(), timeout=600)
    assert straight.returncode == 0, straight.stderr
    out = tmp_path / "killed"
    script = tmp_path / "job.py"
    script.write_text(_script(out))
    job = subprocess.Popen(_torchrun(2) + [str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=_env(), start_new_session=True)
    state = out / "state.json"
    deadline = time.time() + 300
    done = lambda: sum(len(v) for v in json.loads(state.read_text())["done_batches"].values()) if state.exists() else 0  # noqa: E731
    while time.time() < deadline and done() < 4:
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)  # the launcher and both ranks at once
    job.wait()
    assert done() >= 4
    resumed = subprocess.run([sys.executable, "-c", _script(out)], capture_output=True, text=True, env=_env(), timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert _result(resumed.stdout) == _result(straight.stdout)
    assert _scores(out) == _scores(tmp_path / "straight")
