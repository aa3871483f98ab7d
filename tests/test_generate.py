"""`headhunter generate`: PNGs, a sidecar that reproduces them, --compare grid, clean errors."""

from __future__ import annotations

import json
import shlex

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import headhunter
from headhunter import HeadSet, get_registry, hookimpl
from headhunter.cli import make_cli
from headhunter.plugin_system.registry import get_plugin_manager

from tiny_pipes import build_flux, build_sd3


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny SD3 pipeline saved as a diffusers folder, and a head set file for it."""
    root = tmp_path_factory.mktemp("generate")
    pipe = build_sd3(t5=True)
    pipe.save_pretrained(root / "tiny-sd3")
    adapter = get_registry().adapter_for(pipe)
    hs = HeadSet.from_notation("L0H1, L1H2", sites=adapter.sites(pipe), architecture=adapter.architecture,
                               name="tiny", guidance={"scale": 2.0, "cfg": 3.0})
    hs.save(root / "tiny.safetensors")
    flux = build_flux()
    adapter = get_registry().adapter_for(flux)
    HeadSet.from_notation("L0H0", sites=adapter.sites(flux), architecture=adapter.architecture,
                          name="flux").save(root / "flux.safetensors")
    return root, pipe, hs


def invoke(*args: str, pm=None):
    result = CliRunner().invoke(make_cli(pm), ["generate", *args])
    return result


@pytest.mark.slow
def test_generate_writes_pngs_sidecar_and_comparison(saved, tmp_path):
    root, pipe, hs = saved
    out = tmp_path / "out"
    result = invoke(str(root / "tiny-sd3"), "--headset", str(root / "tiny.safetensors"), "--prompt", "a red cat",
                    "--prompt", "a blue dog", "--num-images", "2", "--steps", "3", "--seed", "5", "--height", "32",
                    "--width", "32", "--out", str(out), "--compare")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "generate.json").read_text())
    assert record["seeds"] == [5, 6, 7, 8] and record["cfg"] == 3.0 and record["steps"] == 3
    assert record["headsets"][0]["heads"] == "L0H1, L1H2" and record["headsets"][0]["scale"] == 2.0
    assert record["pipeline_call"]["guidance_scale"] == 3.0
    assert len(record["files"]["guided"]) == 4 and len(record["files"]["unguided"]) == 4
    grid = Image.open(out / record["files"]["grid"])
    assert grid.height >= 4 * 128
    guided = Image.open(out / record["files"]["guided"][2])
    assert guided.size == (32, 32)

    # the PNG is what the Python API makes with the recorded settings (image 2: second prompt, seed 7)
    with headhunter.apply(pipe, hs):
        expected = pipe("a blue dog", num_inference_steps=3, guidance_scale=3.0, height=32, width=32,
                        generator=torch.Generator().manual_seed(7), output_type="pil").images[0]
    assert list(guided.getdata()) == list(expected.getdata())
    assert list(Image.open(out / record["files"]["unguided"][2]).getdata()) != list(guided.getdata())

    # the recorded command reproduces the files byte for byte
    again = tmp_path / "again"
    argv = shlex.split(record["command"])[2:]  # after "headhunter generate"
    assert argv[-2:] == ["--out", str(out)]  # the command names where it wrote (a rerun as printed overwrites it)
    assert invoke(*argv[:-2], "--out", str(again)).exit_code == 0
    for name in record["files"]["guided"] + [record["files"]["grid"]]:
        assert (again / name).read_bytes() == (out / name).read_bytes()


def test_registered_model_is_loaded_by_name(saved, tmp_path):
    root, _, _ = saved

    class TinyModels:
        @hookimpl
        def register_models(self, register):
            register("tiny", lambda: build_sd3(t5=True), description="tiny SD3")

    pm = get_plugin_manager(load_entry_points=False)
    pm.register(TinyModels(), name="tiny-models")
    result = invoke("tiny", "--headset", str(root / "tiny.safetensors"), "--prompt", "a cat", "--steps", "2",
                    "--height", "32", "--width", "32", "--out", str(tmp_path / "o"), "--sequential", pm=pm)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o" / "generate.json").read_text())["batched"] is False


def test_errors_are_clean_and_leave_no_files(saved, tmp_path):
    root, _, _ = saved
    out = tmp_path / "out"
    result = invoke(str(tmp_path / "missing"), "--headset", str(root / "tiny.safetensors"), "--prompt", "x",
                    "--out", str(out))
    assert result.exit_code != 0 and f"model folder {tmp_path / 'missing'} does not exist" in result.output
    assert "local diffusers folder" in result.output  # refused before the model (or torch) loads
    result = invoke("someone/not-cached", "--headset", str(root / "tiny.safetensors"), "--prompt", "x",
                    "--out", str(out))
    assert result.exit_code != 0 and "hf download someone/not-cached" in result.output
    result = invoke(str(root / "tiny-sd3"), "--headset", str(root / "flux.safetensors"), "--prompt", "x",
                    "--out", str(out))
    assert result.exit_code != 0 and "architecture 'flux'" in result.output
    assert "Traceback" not in result.output and not out.exists()


def test_full_disk_leaves_no_partial_file_and_one_error_line(saved, tmp_path, monkeypatch):
    """ENOSPC while writing the outputs: exit 1, one `Error:` line naming the file, no temp file left."""
    import errno

    import headhunter.format.files as _files

    root, pipe, hs = saved
    real_write = _files.os.fsync
    calls = []

    def full_after_one(fd):
        calls.append(fd)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd)

    monkeypatch.setattr(_files.os, "fsync", full_after_one)
    out = tmp_path / "out"
    result = invoke(str(root / "tiny-sd3"), "--headset", str(root / "tiny.safetensors"), "--prompt", "a red cat",
                    "--num-images", "2", "--steps", "2", "--height", "32", "--width", "32", "--out", str(out))
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith(f"Error: {out / 'guided_001_seed1.png'}: No space left on device")
    assert sum(line.startswith("Error:") for line in lines) == 1
    assert sorted(p.name for p in out.iterdir()) == ["guided_000_seed0.png"]  # the first write, whole; no .tmp
