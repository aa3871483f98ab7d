"""Every verb of the CLI with bad arguments: one `Error:` line, never a traceback, exit 2 for usage and 1
for failures; `--debug` / HEADHUNTER_DEBUG=1 show the traceback (issue #13)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save as st_save

from headhunter import HeadSet, Site
from headhunter.cli import make_cli

SITES = [Site(name=f"blocks.{i}.attn", num_heads=4, kind="joint") for i in range(2)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    good = HeadSet.from_heads([(0, 1)], sites=SITES, architecture="toy").save(root / "good.safetensors")
    (root / "lora.safetensors").write_bytes(st_save({"x": np.zeros(2, np.float32)}))
    (root / "deep.json").write_text('{"headhunter": ' + "[" * 10_000 + "]" * 10_000 + ', "heads": {}}')
    (root / "utf16.json").write_bytes(HeadSet.from_file(good).to_json().encode("utf-16"))
    os.mkfifo(root / "fifo.safetensors")
    (root / "corrupt").mkdir()
    (root / "corrupt" / "config.json").write_text('{"_class_name": "SD3Transformer2DModel", "num_layers": ')
    (root / "badclass").mkdir()
    (root / "badclass" / "config.json").write_text('{"_class_name": "SD3Transformer2DModel", "num_layers": -3}')
    (root / "badvalue").mkdir()
    (root / "badvalue" / "config.json").write_text('{"_class_name": "SD3Transformer2DModel", "attention_head_dim": "x"}')
    (root / "a-file").write_text("x")
    (root / "bad-atlas").mkdir()
    (root / "bad-atlas" / "atlas.json").write_text("[" * 1000 + "]" * 1000)
    (root / "edited-atlas").mkdir()
    (root / "edited-atlas" / "atlas.json").write_text('{"format": "headhunter-atlas", "settings": {}}')
    return root


def _cases(root: Path) -> list[tuple[list[str], int, str]]:
    good = str(root / "good.safetensors")
    under_file = str(root / "a-file" / "out")
    cuda = [] if _has_cuda() else [(["generate", "--headset", good, "--prompt", "1", "--device", "cuda"], 2, "CUDA is not available")]
    return cuda + [
        # (arguments, exit code, part of the Error line)
        (["--bogus"], 2, "No such option"),
        (["nosuchverb"], 2, "No such command"),
        (["show"], 2, "Missing argument 'SOURCE'"),
        (["show", "no-such-file"], 1, "not found"),
        (["show", "/dev/zero"], 1, "character device, not a regular file"),
        (["show", str(root / "fifo.safetensors")], 1, "FIFO"),
        (["show", str(root / "lora.safetensors")], 1, "not a head set"),
        (["show", str(root / "deep.json")], 1, "nested 10001 levels deep"),
        (["show", str(root / "utf16.json")], 1, "not UTF-8"),
        (["plugins", "--kind", "banana"], 2, "'banana' is not one of"),
        (["presets", "--origin", "x"], 2, "is not one of"),
        (["presets", "--model", "nope"], 1, "unknown model 'nope'; models and families with presets: "
         "black-forest-labs/FLUX.1-dev, digits, flux, sd3"),
        (["presets", "--model", "SD3", "--json"], 1, "unknown model 'SD3' (did you mean 'sd3'?)"),
        (["presets", "--model", "\x1b]0;title\x07x"], 1, "unknown model '\\x1b]0;title\\x07x'"),
        (["inspect", str(root / "corrupt")], 1, "config.json: its content is not JSON"),
        (["inspect", str(root / "badclass")], 1, "num_layers=-3 layers/blocks is out of range; allowed: [0, 512]"),
        (["inspect", str(root / "badvalue")], 1, "cannot build SD3Transformer2DModel from its config"),
        (["inspect", "digits", "--height", "0"], 2, "out of range; allowed: [8, 16384]"),
        (["inspect", "nobody/nothing"], 1, "not in the local Hugging Face cache"),
        # inspect says what it takes whatever it was given (a file, a folder that is not a model, a typo)
        (["inspect", "a-file"], 1, "a-file is a file, not a model; inspect takes a registered model (digits), a local "
         "diffusers folder (a pipeline with model_index.json, or a transformer with config.json) or a Hub repo id"),
        (["inspect", good], 1, "is a file, not a model (a head-set file? `headhunter show "),
        (["inspect", "corrupt/config.json"], 1, "(give the folder holding it: corrupt)"),
        (["inspect", "bad-atlas"], 1, "bad-atlas is not a diffusers model folder: it holds neither model_index.json"),
        (["inspect", "x.csv"], 1, "model 'x.csv' not found: no such file or folder, and not a Hub repo id 'org/name'; "
         "inspect takes a registered model (digits)"),
        (["inspect", "./nope"], 1, "model folder ./nope does not exist; inspect takes"),  # was an internal error
        (["inspect", "a b/c"], 1, "model 'a b/c' is not a valid Hub repo id"),
        (["generate", "--prompt", "1"], 2, "Missing option '--headset'"),
        (["generate", "--headset", good, "--prompt", "1", "--scale", "nan"], 2, "'nan' is not a finite number; allowed: [0, inf)"),
        (["generate", "--headset", good, "--prompt", "1", "--cfg", "inf"], 2, "not a finite number"),
        (["generate", "--headset", good, "--prompt", "1", "--distilled-guidance", "-inf"], 2, "not a finite number"),
        (["generate", "--headset", good, "--prompt", "1", "--start", "2"], 2, "out of range; allowed: [0, 1]"),
        (["generate", "--headset", good, "--prompt", "1", "--steps", "0"], 2, "out of range; allowed: [1, 10000]"),
        (["generate", "--headset", good, "--prompt", "1", "--seed", "-1"], 2, "out of range"),
        (["generate", "--headset", good, "--prompt", "1", "--num-images", "0"], 2, "out of range"),
        # a huge count is refused when parsed (it used to build the seed list after the model loaded)
        (["generate", "--headset", good, "--prompt", "1", "--num-images", "10" * 10], 2,
         "'10101010101010101010' is out of range; allowed: [1, 100000]"),
        (["generate", "--headset", good, "--prompt", "1", "--prompt", "2", "--num-images", "60000"], 2,
         "60000 images for each of 2 prompts is 120000 images; allowed: at most 100000 in all"),
        # image i uses seed + i: the last seed must still be one torch.Generator takes
        (["generate", "--headset", good, "--prompt", "1", "--num-images", "2", "--seed", str(2**63 - 1)], 2,
         "needs seeds up to 9223372036854775808 (image i uses seed + i); allowed: [0, 9223372036854775806]"),
        (["generate", "--headset", good, "--prompt", "1", "--width", "1e9"], 2, "is not an integer"),
        (["generate", "--headset", good, "--prompt", "1", "--device", "banana"], 2, "'banana' is not a torch device"),
        (["generate", "--headset", good, "--prompt", "1", "--device", "cuda:x"], 2, "not a torch device"),
        (["generate", "--headset", good, "--prompt", "1", "--out", under_file], 2, "is not a folder"),
        (["generate", "--headset", "no-such", "--prompt", "1"], 1, "head set 'no-such' not found"),
        (["hunt", "--strength", "nan"], 2, "'nan' is not a finite number; allowed: (0, 1]"),
        (["hunt", "--strength", "0"], 2, "out of range; allowed: (0, 1]"),
        (["hunt", "--scale", "inf"], 2, "not a finite number"),
        (["hunt", "--cfg", "-1"], 2, "out of range; allowed: [0, inf)"),
        (["hunt", "--rounds", "0"], 2, "out of range; allowed: [1, inf)"),
        (["hunt", "--top-k", "x"], 2, "is not an integer"),
        (["hunt", "--steps", "0"], 2, "out of range"),
        (["hunt", "--batch-size", "0"], 2, "out of range"),
        (["hunt", "--seeds", "5-3"], 2, "is empty"),
        (["hunt", "--seeds", "x"], 2, "cannot read seeds"),
        (["hunt", "--seeds", "-5"], 2, "out of range"),
        (["hunt", "--seeds", "1,1"], 2, "repeat a seed"),
        (["hunt", "--eval-seeds", "0-99999999999"], 2, "more than 100000 seeds"),
        (["hunt", "--scope", "bogus"], 2, "is not one of"),
        (["hunt", "--perturbation", "nope"], 2, "unknown perturbation 'nope'; allowed:"),
        (["hunt", "--out", under_file], 2, "is not a folder"),
        (["hunt", "--prompt", "@" + str(root / "missing.txt")], 2, "does not exist"),
        (["hunt", "--prompt", "@/dev/zero"], 2, "not a regular file"),
        (["push", "no-such", "me/x"], 1, "not found"),
        (["push", "me/x", good], 2, "did you swap them?"),
        (["generate", "--headset", good, "--prompt", "1", "--seed", "-1"], 2, "allowed: [0, 9223372036854775807]"),
        (["push", good, "bad repo id!"], 1, "is not a valid Hub repo id"),
        (["push", good, "me/x", "--weight-name", "a.bin"], 1, "is not a .safetensors file"),
        (["push", good, "me/x", "--image", str(root / "missing.png")], 2, "does not exist"),
        (["pull", "not/a/valid"], 1, "is not a valid Hub repo id"),
        (["pull", "me/x", "--weight-name", "x.bin"], 1, "is not a .safetensors file"),
        (["pull", "me/never-pulled", "--offline"], 1, "is not in the local cache"),
        (["search", "--limit", "0"], 2, "'0' is out of range; allowed: [1, 1000]"),
        (["bench", "--batch", "0"], 2, "0 is out of range; allowed: [1, 4096]"),
        (["bench", "--batch", "1,x"], 2, "'x' is not an integer"),
        (["bench", "--batch", ","], 2, "holds no integers"),
        (["bench", "--device", "banana"], 2, "not a torch device"),
        (["bench", "--min-time", "nan"], 2, "not a finite number; allowed: [0, 60]"),
        (["bench", "--rounds", "0"], 2, "out of range"),
        (["bench", "--threads", "0"], 2, "out of range"),
        (["bench", "--heads", "-1"], 2, "out of range"),
        (["bench", "--suite", "bogus"], 2, "unknown suite bogus"),
        (["atlas", "build", "--strength", "nan"], 2, "not a finite number; allowed: (0, 1]"),
        (["atlas", "build", "--steps", "0"], 2, "out of range"),
        (["atlas", "build", "--perturbation", "nope"], 2, "unknown perturbation 'nope'"),
        (["atlas", "build", "--out", under_file], 2, "is not a folder"),
        (["atlas", "build", "some/model", "--layers", "x"], 2, "cannot read layers 'x'"),
        (["atlas", "build", "some/model", "--prompt", "@/dev/zero"], 2, "not a regular file"),
        (["atlas", "export", str(root / "no-atlas"), "--effect", "x", "-o", "o.json"], 1, "no atlas at"),
        (["atlas", "export", str(root / "bad-atlas"), "--effect", "x", "-o", "o.json"], 1, "nested"),
        (["atlas", "export", str(root / "edited-atlas"), "--effect", "x", "-o", "o.json"], 1, "edited-atlas/atlas.json is damaged: model is required"),
        (["atlas", "export", str(root), "--effect", "x", "-o", "o.json", "--top", "0"], 2, "out of range"),
        (["atlas", "push", str(root / "no-atlas"), "me/x"], 1, "no atlas at"),
        (["comfyui", "install", str(root)], 1, "is not a ComfyUI tree: no comfy/model_patcher.py"),
        (["comfyui", "install", good], 2, "is a file"),
    ]


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _check(result, code: int, fragment: str) -> str:
    text = result.output
    assert "Traceback" not in text, text
    assert result.exit_code == code, text
    errors = [line for line in text.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, text
    assert fragment in errors[0], errors[0]
    assert text.rstrip().splitlines()[-1] == errors[0]  # the Error line is the last thing printed
    if code == 1:
        assert text.strip() == errors[0]  # a failure prints the one line and nothing else
    return errors[0]


def test_every_verb_with_bad_arguments_prints_one_error_line(files, monkeypatch):
    monkeypatch.delenv("HEADHUNTER_DEBUG", raising=False)
    monkeypatch.chdir(files)
    cli = make_cli()
    verbs = set(cli.commands)
    cases = _cases(files)
    covered = {args[0] for args, _, _ in cases if not args[0].startswith("-")}
    assert verbs <= covered, f"verbs without bad-argument cases: {sorted(verbs - covered)}"
    runner = CliRunner()
    for args, code, fragment in cases:
        result = runner.invoke(cli, args, catch_exceptions=False)
        _check(result, code, fragment)


def test_debug_flag_and_env_show_the_traceback(files, monkeypatch):
    runner = CliRunner()
    monkeypatch.delenv("HEADHUNTER_DEBUG", raising=False)
    quiet = runner.invoke(make_cli(), ["show", "/dev/zero"])
    assert quiet.exit_code == 1 and "Traceback" not in quiet.output
    loud = runner.invoke(make_cli(), ["--debug", "show", "/dev/zero"])
    assert loud.exit_code == 1 and "Traceback (most recent call last)" in loud.output
    assert loud.output.rstrip().splitlines()[-1].startswith("Error: head-set file /dev/zero is a character device")
    monkeypatch.setenv("HEADHUNTER_DEBUG", "1")
    assert "Traceback" in runner.invoke(make_cli(), ["show", "/dev/zero"]).output
    monkeypatch.setenv("HEADHUNTER_DEBUG", "0")
    assert "Traceback" not in runner.invoke(make_cli(), ["show", "/dev/zero"]).output
    again = runner.invoke(make_cli(), ["show", "/dev/zero"])  # --debug of an earlier run does not stick
    assert "Traceback" not in again.output


def test_a_bug_is_one_line_too_with_the_way_to_the_traceback(monkeypatch):
    import headhunter.cli.show as show_module

    monkeypatch.delenv("HEADHUNTER_DEBUG", raising=False)
    monkeypatch.setattr("headhunter.load_headset", lambda source: {}["boom"], raising=False)
    result = CliRunner().invoke(make_cli(), ["show", "anything"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.strip().startswith("Error: internal error (KeyError")
    assert "--debug" in result.output and show_module is not None


def test_out_in_a_read_only_folder(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):  # root ignores permissions: simulate what a user sees
            monkeypatch.setattr(os, "access", lambda path, mode: False)
        result = CliRunner().invoke(make_cli(), ["generate", "--headset", "x", "--prompt", "1", "--out", str(folder / "o")])
        _check(result, 2, "is not writable")
        result = CliRunner().invoke(make_cli(), ["hunt", "--out", str(folder / "o")])
        _check(result, 2, "is not writable")
    finally:
        folder.chmod(0o755)


def test_hunt_no_report_does_not_print_a_report_path(monkeypatch, tmp_path):
    import headhunter.cli.hunt as hunt_cli
    import headhunter.workflow.hunt as workflow

    headset = HeadSet.from_heads([(0, 1)], sites=SITES, architecture="toy")
    fake = SimpleNamespace(headset=headset, baseline_score=0.5, best_layer=None, evaluation=None,
                           rounds=[SimpleNamespace(index=0, set_score=0.7, added=["L0H1"], leaders=["L0H1"],
                                                   stability=1.0, images=4)])
    seen = {}
    monkeypatch.setattr(hunt_cli, "_load", lambda model: object())
    monkeypatch.setattr(workflow, "hunt", lambda *a, **kw: seen.update(kw) or fake)
    out = CliRunner().invoke(make_cli(), ["hunt", "--no-report", "--out", str(tmp_path / "run")])
    assert out.exit_code == 0, out.output
    assert seen["report"] is False
    assert "report:" not in out.output and f"head set: {tmp_path / 'run' / 'headset.safetensors'}" in out.output
    out = CliRunner().invoke(make_cli(), ["hunt", "--out", str(tmp_path / "run")])
    assert f"report: {tmp_path / 'run' / 'index.md'}" in out.output


def test_console_script_entry_point_gives_one_line_and_exit_code(tmp_path):
    env = {**os.environ, "HEADHUNTER_DEBUG": ""}
    run = subprocess.run([sys.executable, "-c", "from headhunter.cli import main; main()", "show", "/dev/zero"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip() == "Error: head-set file /dev/zero is a character device, not a regular file; give a file"
    run = subprocess.run([sys.executable, "-c", "from headhunter.cli import main; main()", "bench", "--batch", "0"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 2 and run.stderr.strip().splitlines()[-1].startswith("Error: Invalid value for '--batch'")


def test_warnings_print_as_one_line(tmp_path, monkeypatch):
    import json

    monkeypatch.delenv("HEADHUNTER_DEBUG", raising=False)
    doc = json.loads(HeadSet.from_heads([(0, 1)], sites=SITES, architecture="toy").to_json())
    doc["headhunter"].update(format_version="1.3", colour="blue")
    path = tmp_path / "newer.json"
    path.write_text(json.dumps(doc))
    result = CliRunner().invoke(make_cli(), ["show", str(path)])
    assert result.exit_code == 0
    assert f"Warning: {path}: ignoring metadata keys unknown to headhunter" in result.output
    assert "warnings.warn" not in result.output


def test_quantization_backends_import_chatter_is_held_back_unless_debug():
    """bitsandbytes, torchao and diffusers' quantizers log at import once installed (the test extra installs
    them, as many GPU users have them): below ERROR they print only under --debug, so a mistake stays one
    Error: line (the cases above run with them installed)."""
    import logging

    from headhunter.cli import QUIET_LOGGERS, _quiet_backends

    try:
        _quiet_backends(True)
        for name in QUIET_LOGGERS:
            child = logging.getLogger(f"{name}.some.module")
            assert not child.isEnabledFor(logging.WARNING) and child.isEnabledFor(logging.ERROR)
        _quiet_backends(False)
        assert all(logging.getLogger(f"{name}.x").isEnabledFor(logging.WARNING) for name in QUIET_LOGGERS)
    finally:
        _quiet_backends(False)
