"""A newcomer's first mistakes: one name for the demo model, the checks that run before a model loads, and
messages that say what a thing is and what is accepted (issue 27, items 2-4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

import headhunter as hh
from headhunter import HeadSet, HeadSetError, ModelError
from headhunter.cli import make_cli
from headhunter.format.preflight import check_before_loading
from headhunter.format.presets import list_presets
from headhunter.plugin_system.registry import get_registry

SD3 = "stabilityai/stable-diffusion-3-medium-diffusers"


# ----- one name: digits --------------------------------------------------------------------------------
def test_the_demo_model_is_digits_in_the_registry_the_head_set_and_the_presets():
    from headhunter.plugins import digits
    from headhunter.plugins.digits.data import ALLOWED_PROMPTS
    from headhunter.plugins.digits.model import TRANSFORMER_CONFIG

    known = get_registry().known_model("digits")
    assert known is not None and known.architecture == "sd3" and known.prompts == ALLOWED_PROMPTS
    assert (digits.LAYERS, digits.HEADS) == (TRANSFORMER_CONFIG["num_layers"], TRANSFORMER_CONFIG["num_attention_heads"])
    hs = HeadSet.from_notation("L1H7, L5H0@0.5", base_model="digits")
    assert hs.metadata.base_model == "digits" and hs.metadata.architecture == "sd3"
    assert "digits-uncond-greedy" in [p.name for p in list_presets(model="digits")]


def test_a_loaded_demo_model_is_named_digits_and_its_table_matches_it():
    from headhunter.search.search import resolve_model

    pipe = hh.load_model("digits")
    assert pipe.name_or_path == "digits"
    assert resolve_model(pipe) == (pipe, "digits")  # the found head set's base model and name: headhunter-digits
    adapter = get_registry().adapter_for(pipe)
    assert adapter.sites(pipe) == list(get_registry().base_model("digits").sites)
    with pytest.raises(HeadSetError, match=rf"head set 'sd3-dark-lighting' is for {SD3}; the model is digits \(site "):
        hh.apply(pipe, hh.load_headset("preset:sd3-dark-lighting"))  # after loading: the same message


def test_presets_by_the_one_name_and_an_unknown_name_lists_the_known_ones():
    runner = CliRunner()
    out = runner.invoke(make_cli(), ["presets", "--model", "digits"], env={"COLUMNS": "100"})
    assert out.exit_code == 0 and "digits-uncond-greedy" in out.output
    out = runner.invoke(make_cli(), ["presets", "--model", "DigitsPipeline"])  # a name nothing knows: an error
    assert out.exit_code == 1 and out.output.startswith("Error: unknown model 'DigitsPipeline' (did you mean 'digits'?)")
    assert "models and families with presets: " in out.output and "digits" in out.output
    # a model headhunter knows that has no presets yet is an empty answer, as `search` finding nothing
    out = runner.invoke(make_cli(), ["presets", "--model", "stabilityai/stable-diffusion-3.5-medium"])
    assert out.exit_code == 0 and "no presets for model 'stabilityai/stable-diffusion-3.5-medium' yet" in out.output
    out = runner.invoke(make_cli(), ["presets", "--model", "digits", "--origin", "paper"])
    assert out.exit_code == 0 and out.output.strip() == "no presets match"


def test_presets_table_fits_100_columns():
    out = CliRunner().invoke(make_cli(), ["presets"], env={"COLUMNS": "100"})
    assert out.exit_code == 0
    lines = out.output.splitlines()
    assert max(map(len, lines)) <= 100, max(lines, key=len)
    assert sum("sd3-dark-lighting" in line for line in lines) == 1 and any(line.startswith(SD3) for line in lines)


# ----- checks before the model loads -------------------------------------------------------------------
def test_checks_need_only_the_name(monkeypatch, tmp_path):
    from huggingface_hub import constants

    import headhunter.format.preflight as preflight

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelError, match=rf"model '{SD3}' is not on this machine: .*`hf download {SD3}`"):
        check_before_loading(SD3, prompts=["a cat"])
    with pytest.raises(ModelError, match=r"model folder ./some/local/folder does not exist; .*registered model \(digits\)"):
        check_before_loading("./some/local/folder", prompts=["anything"])
    check_before_loading(str(tmp_path), prompts=["anything"])  # a folder: not described, checked after loading
    monkeypatch.setattr(preflight, "check_model_available", lambda model: None)  # as if SD3 were cached
    with pytest.raises(ModelError, match=r"""prompt '12' is not one the digits model accepts; allowed: '0', .*'9', "" \(unconditional\)"""):
        check_before_loading("digits", prompts=["3", "12"])
    with pytest.raises(HeadSetError, match=rf"is for {SD3}; the model is digits"):
        check_before_loading("digits", headsets=[hh.load_headset("preset:sd3-dark-lighting")])
    check_before_loading("digits", prompts=["", "7"], headsets=[hh.load_headset("preset:digits-uncond-greedy")])
    check_before_loading(SD3, prompts=["a cat"], headsets=[hh.load_headset("preset:sd3-dark-lighting")])
    with pytest.raises(HeadSetError, match=rf"is for digits; the model is {SD3}"):
        check_before_loading(SD3, headsets=[hh.load_headset("preset:digits-uncond-greedy")])


def test_cli_mistakes_are_refused_before_torch_or_the_model_loads(tmp_path):
    """One fresh interpreter runs each mistake through the CLI and then checks that neither torch nor
    diffusers was imported: the checks ran on the registry's tables alone."""
    csv = tmp_path / "scores.csv"
    csv.write_text("head,score\nL0H1,0.5\n")
    cases = {
        "sd3-on-digits": ["generate", "digits", "--headset", "preset:sd3-dark-lighting", "--prompt", "3",
                          "--out", str(tmp_path / "g")],
        "bad-prompt": ["generate", "--headset", "preset:digits-uncond-greedy", "--prompt", "12", "--out", str(tmp_path / "g")],
        "hunt-prompt": ["hunt", "--prompt", "cat", "--out", str(tmp_path / "h")],
        "atlas-prompt": ["atlas", "--prompt", "11", "--out", str(tmp_path / "a")],
        "notation": ["generate", "--headset", "L0H1,L2H7", "--prompt", "3", "--out", str(tmp_path / "g")],
        "csv": ["generate", "--headset", str(csv), "--prompt", "3", "--out", str(tmp_path / "g")],
        "missing-model": ["hunt", "nobody/nothing", "--out", str(tmp_path / "h")],
        "unknown-model": ["hunt", "nothing", "--out", str(tmp_path / "h")],
    }
    script = textwrap.dedent(f"""
        import json, sys
        from click.testing import CliRunner
        from headhunter.cli import make_cli
        cases = json.loads({json.dumps(json.dumps(cases))})
        out = {{name: (r.exit_code, r.output) for name, r in
               ((name, CliRunner().invoke(make_cli(), args)) for name, args in cases.items())}}
        out["imported"] = sorted(m for m in ("torch", "diffusers") if m in sys.modules)
        print(json.dumps(out))
    """)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True, env=env)
    result = json.loads(done.stdout.splitlines()[-1])
    assert result.pop("imported") == []
    lines = {}
    for name, (code, output) in result.items():
        errors = [x for x in output.splitlines() if x.startswith("Error:")]
        assert code == 1 and len(errors) == 1 and "Traceback" not in output, (name, output)
        lines[name] = errors[0]
    assert f"head set 'sd3-dark-lighting' is for {SD3}; the model is digits" in lines["sd3-on-digits"]
    assert "prompt '12' is not one the digits model accepts" in lines["bad-prompt"]
    assert "prompt 'cat' is not one the digits model accepts" in lines["hunt-prompt"]
    assert "prompt '11' is not one the digits model accepts" in lines["atlas-prompt"]
    assert "reads as heads in paper notation" in lines["notation"] and "HeadSet.from_notation('L0H1,L2H7'" in lines["notation"]
    assert "is not a head set: a .csv file, not a safetensors file (it starts with 'head,score" in lines["csv"]
    assert "header size" not in lines["csv"]
    assert "model 'nobody/nothing' is not on this machine" in lines["missing-model"]
    assert "model 'nothing' not found: not a registered model (digits)" in lines["unknown-model"]


# ----- messages that mislead ---------------------------------------------------------------------------
def test_a_file_that_is_not_safetensors_says_so_and_a_truncated_one_says_truncated(tmp_path):
    png = tmp_path / "heatmap.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(HeadSetError, match=r"heatmap.png is not a head set: a .png file, not a safetensors file \(it "
                                           r"starts with '.PNG.*a head set is a .safetensors file written by headhunter"):
        hh.load_headset(png)
    good = hh.HeadSet.from_notation("L1H7", base_model="digits").save(tmp_path / "hs.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:100])
    with pytest.raises(HeadSetError, match=r"cut.safetensors is truncated: header needs \d+ bytes, file has 92"):
        hh.load_headset(cut)


def test_a_model_that_is_not_on_this_machine_says_so_in_whole_words(monkeypatch, tmp_path):
    from huggingface_hub import constants

    from headhunter import load_pipeline

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelError) as err:
        load_pipeline(SD3)
    text = str(err.value)
    assert text.startswith(f"model '{SD3}' is not on this machine: headhunter loads a diffusers model only from a local "
                           "folder or the local Hugging Face cache")
    assert f"`hf download {SD3}`" in text and text.endswith("(registered models: digits)")
    assert "local_files_o." not in text


def test_inspect_digits_reads_the_registered_table_without_loading():
    """`inspect digits` is a light command: the table its plugin registered, no torch; and the table is what
    the loaded model says (sites; image tokens; the label encoder's two text tokens)."""
    script = ("import sys; from click.testing import CliRunner; from headhunter.cli import make_cli; "
              "r = CliRunner().invoke(make_cli(), ['inspect', 'digits', '--json']); print(r.output); "
              "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    *body, imported = done.stdout.strip().splitlines()
    assert imported == "False"
    shown = json.loads("\n".join(body))
    pipe = hh.load_model("digits")
    adapter = get_registry().adapter_for(pipe)
    assert [s["name"] for s in shown["sites"]] == [s.name for s in adapter.sites(pipe)]
    live = adapter.layout_summary(pipe, None, None)
    assert shown["layout"][1] in live  # the image-token line is the adapter's own
    assert f"text tokens: {pipe.label_encoder.config.num_tokens} " in shown["layout"][2]


def test_a_missing_head_set_file_says_it_does_not_exist_and_how_it_is_made(tmp_path):
    with pytest.raises(HeadSetError, match=r"head-set file .*runs/demo/headset.safetensors does not exist \(a hunt writes "
                                           r"it: `headhunter hunt --out runs/demo`, or `make demo`\)"):
        hh.load_headset(str(tmp_path / "runs/demo/headset.safetensors"))
    with pytest.raises(HeadSetError, match=r"head-set file .*mine.json does not exist$"):
        hh.load_headset(str(tmp_path / "mine.json"))
