"""A full disk and a read-only --out during `hunt` and `atlas` (issue #29): one clear `Error:` line, no
half-written or temporary file, and the checkpoint still loadable: copied to a good disk, the same command
resumes and ends exactly where an uninterrupted run ends.

CI runs as root, where file modes do not stop a write, so the faults are real mounts: a size-limited tmpfs
(the disk fills up mid-run) and a tmpfs remounted read-only mid-run (or a read-only bind mount before the
run). Mounting needs root (CAP_SYS_ADMIN): in CI (CI=1 or HEADHUNTER_CI=1; .ci/run sets the latter) these tests
fail when they cannot mount; elsewhere they skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from headhunter.atlases.atlas import AtlasCheckpoint
from headhunter.search.search import SearchCheckpoint

pytestmark = pytest.mark.slow  # eight CLI runs and their resumes: about 3 minutes on a busy 2-core machine

ROOT = Path(__file__).resolve().parents[1]
IN_CI = any(os.environ.get(name, "").strip() not in ("", "0", "false") for name in ("CI", "HEADHUNTER_CI"))

HUNT = ["hunt", "digits", "--prompt", "3", "--prompt", "7", "--seeds", "0-3", "--steps", "2", "--rounds", "1",
        "--candidates", "0,1", "--batch-size", "4", "--allocation", "exhaustive", "--no-report"]
#: Longer, for the read-only remount while it runs (about 90 batches).
HUNT_LONG = [*HUNT[:7], "0-7", *HUNT[8:]]
ATLAS = ["atlas", "build", "digits", "--prompt", "3", "--seeds", "0-7", "--steps", "2", "--heads", "L0H0,L0H1,L1H2",
         "--layers", "none", "--batch-size", "2"]


def _mount(args: list[str], target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        why = f"cannot mount ({' '.join(['mount', *args])}): {done.stderr.strip() or done.returncode}"
        if IN_CI:
            pytest.fail(f"{why}; CI must run these tests (as root)")
        pytest.skip(why)


@pytest.fixture
def mounts(tmp_path):
    """mount(args, target) for this test; everything mounted is unmounted afterwards."""
    made: list[Path] = []

    def mount(args: list[str], target: Path) -> Path:
        _mount(args, target)
        made.append(target)
        return target

    yield mount
    for target in reversed(made):
        subprocess.run(["umount", str(target)], capture_output=True)
        if subprocess.run(["mountpoint", "-q", str(target)]).returncode == 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _cli(args: list[str], out: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "headhunter.cli", *args, "--out", str(out)], capture_output=True,
                          text=True, env=_env(), timeout=600, **kwargs)


def _lines(text: str) -> list[str]:
    """Output lines as a terminal shows them last (progress bars redraw with CR)."""
    return [line.rsplit("\r", 1)[-1] for line in text.splitlines()]


def _one_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    errors = [line for line in _lines(result.stdout + result.stderr) if "Error:" in line]
    assert len(errors) == 1, result.stderr[-2000:]
    assert errors[0].startswith("Error: "), errors  # on a line of its own, after the progress bar
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def _no_temp_files(folder: Path) -> None:
    assert [p.name for p in folder.rglob("*") if p.name.endswith(".tmp")] == []


def _done(path: Path) -> int:
    data = json.loads(path.read_text())
    done = data.get("done_batches", data.get("done"))
    return sum(len(v) for v in done.values()) if isinstance(done, dict) else len(done)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Uninterrupted runs on a good disk: the result every interrupted run must end with."""
    root = tmp_path_factory.mktemp("straight")
    runs = {}
    for name, args in (("hunt", HUNT), ("hunt_long", HUNT_LONG), ("atlas", ATLAS)):
        result = _cli(args, root / name)
        assert result.returncode == 0, result.stderr[-2000:]
        runs[name] = root / name
    return runs


def _same_hunt(resumed: Path, straight: Path) -> None:
    assert json.loads((resumed / "state.json").read_text())["units"] == json.loads((straight / "state.json").read_text())["units"]
    assert (resumed / "headset.safetensors").read_bytes() == (straight / "headset.safetensors").read_bytes()


def _same_atlas(resumed: Path, straight: Path) -> None:
    assert json.loads((resumed / "state.json").read_text())["values"] == json.loads((straight / "state.json").read_text())["values"]
    assert (resumed / "values.csv").read_text() == (straight / "values.csv").read_text()


def _resume_elsewhere(out: Path, args: list[str], tmp_path: Path) -> Path:
    """Copy an interrupted run's folder to a good disk and run the same command there."""
    copy = tmp_path / "resumed"
    shutil.copytree(out, copy)
    result = _cli(args, copy)
    assert result.returncode == 0, result.stderr[-2000:]
    _no_temp_files(copy)
    return copy


# ----- full disk ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("verb", "size"), [("hunt", "16k"), ("atlas", "48k")])
def test_a_disk_that_fills_up_mid_run(verb, size, mounts, straight, tmp_path):
    args = HUNT if verb == "hunt" else ATLAS
    disk = mounts(["-t", "tmpfs", "-o", f"size={size}", "tmpfs"], tmp_path / "disk")
    out = disk / "run"
    result = _cli(args, out)
    assert result.returncode == 1, result.stderr[-2000:]
    _one_error(result, "No space left on device", str(out), "rerun the same command")
    _no_temp_files(out)
    checkpoint = SearchCheckpoint if verb == "hunt" else AtlasCheckpoint
    checkpoint.read(out / "state.json")  # still a valid checkpoint
    assert _done(out / "state.json") > 0, "the disk filled up before the first batch: make the tmpfs bigger"
    resumed = _resume_elsewhere(out, args, tmp_path)
    (_same_hunt if verb == "hunt" else _same_atlas)(resumed, straight[verb])


# ----- read-only -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("verb", ["hunt", "atlas"])
def test_out_turning_read_only_mid_run(verb, mounts, straight, tmp_path):
    args = HUNT_LONG if verb == "hunt" else ATLAS
    disk = mounts(["-t", "tmpfs", "-o", "size=8m", "tmpfs"], tmp_path / "disk")
    out = disk / "run"
    job = subprocess.Popen([sys.executable, "-m", "headhunter.cli", *args, "--out", str(out)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=_env())
    state, deadline, remounted = out / "state.json", time.time() + 300, False
    while time.time() < deadline and job.poll() is None and not remounted:
        if state.exists() and _done(state) >= 2:
            # refused (EBUSY) while a file is open for writing: retried until it lands between two writes
            remounted = subprocess.run(["mount", "-o", "remount,ro", str(disk)], capture_output=True).returncode == 0
        time.sleep(0.01)
    stdout, stderr = job.communicate(timeout=600)
    assert remounted, "the run ended before the folder could be made read-only"
    result = subprocess.CompletedProcess(job.args, job.returncode, stdout, stderr)
    assert result.returncode == 1, stderr[-2000:]
    _one_error(result, "Read-only file system", "pass an --out folder you can write to")
    _no_temp_files(out)
    checkpoint = SearchCheckpoint if verb == "hunt" else AtlasCheckpoint
    checkpoint.read(state)
    resumed = _resume_elsewhere(out, args, tmp_path)
    (_same_hunt if verb == "hunt" else _same_atlas)(resumed, straight["hunt_long" if verb == "hunt" else "atlas"])


@pytest.mark.parametrize("verb", ["hunt", "atlas"])
def test_a_read_only_out_with_a_checkpoint_is_refused_before_any_work_and_left_as_it_was(verb, mounts, straight, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(straight[verb], source / "run")
    before = {p.relative_to(source): p.read_bytes() for p in source.rglob("*") if p.is_file()}
    ro = mounts(["--bind", str(source)], tmp_path / "ro")
    done = subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True, text=True)
    if done.returncode != 0:
        (pytest.fail if IN_CI else pytest.skip)(f"cannot remount read-only: {done.stderr.strip()}")
    args = HUNT if verb == "hunt" else ATLAS
    for extra in ([], ["--no-resume"]):
        result = _cli([*args, *extra], ro / "run")
        assert result.returncode == 2, result.stderr[-2000:]
        _one_error(result, "is not writable")
    after = {p.relative_to(source): p.read_bytes() for p in source.rglob("*") if p.is_file()}
    assert after == before
    (SearchCheckpoint if verb == "hunt" else AtlasCheckpoint).read(ro / "run" / "state.json")
