"""Hostile input, third round (issue #29): what reaches a terminal or a model card, and guider configs.

One hostile head-set file (escape sequences, OSC title-setting, bidi overrides and newlines in every metadata
string, site names included) drives every verb that prints metadata (`show`, `show --json`, `pull`,
`show user/repo`, `search --details`) and the card writer (`push`): nothing appears raw. A bad
`guider_config.json` of each kind the issue found is a HeadSetError naming the field, never a raw exception.
"""

from __future__ import annotations

import json
import re

import numpy as np
import torch
import pytest
import yaml
from click.testing import CliRunner
from safetensors.numpy import save as st_save

import headhunter as hh
from headhunter import HeadSetError, HeadhunterError
from headhunter.format.text import card_line, card_text, is_safe, safe_line, safe_text

#: Every kind of hostile text: CSI colour, OSC title-setting (BEL- and ST-terminated), C1 CSI, bidi override
#: and isolate, DEL, backspace, CR, a lone LF, a NUL, a BOM, a line separator.
HOSTILE = ("\x1b[31mred\x1b[0m\x1b]0;pwned\x07\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\\x9b2J"
           "\u202eevil\u202c\u2066x\u2069\x7f\x08\r\n\x00\ufeff\u2028")
#: What must never come out raw (LF is allowed only where a field is multi-line).
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
SITES = [{"name": f"blocks.{i}.attn{HOSTILE if i == 1 else ''}", "num_heads": 4, "kind": "joint"} for i in range(2)]


def hostile_metadata() -> dict:
    return {
        "format_version": "1.0", "name": "evil" + HOSTILE + "\n---\nlicense: x\n<script>alert(1)</script>",
        "description": "first line" + HOSTILE + "\n---\ntags: [x]\n# Heading\n<script>alert(2)</script>\n```\n- item",
        "architecture": "toy" + HOSTILE, "base_model": "user/base" + HOSTILE, "sites": SITES,
        "perturbation": {"name": "softpag", "params": {"note": HOSTILE}},
        "origin": "search", "source": "src" + HOSTILE, "license": "mit" + HOSTILE,
        "tags": ["t" + HOSTILE, "u\nx: 1"],
        "search": {"objective": "obj" + HOSTILE, "prompts": ["p" + HOSTILE, "q\n---"], "seeds": [0], "steps": 2,
                   "evaluation": {"k" + HOSTILE: "v" + HOSTILE}},
    }


def hostile_bytes() -> bytes:
    tensors = {site["name"]: np.array([0, 1, 0, 0.5], dtype=np.float32) for site in SITES}
    return st_save(tensors, metadata={"headhunter": json.dumps(hostile_metadata())})


@pytest.fixture
def hostile_file(tmp_path):
    path = tmp_path / "hostile.safetensors"
    path.write_bytes(hostile_bytes())
    return path


def assert_nothing_raw(text: str) -> None:
    found = RAW.findall(text)
    assert not found, f"raw control characters reached the output: {sorted(set(map(ascii, found)))}"


# ----- the sanitizer ---------------------------------------------------------------------------------------
def test_safe_line_escapes_every_control_visibly_and_is_idempotent():
    out = safe_line(HOSTILE)
    assert RAW.search(out) is None and "\n" not in out
    assert "\\x1b]0;pwned\\x07" in out and "\\u202e" in out and "\\x9b" in out and "\\n" in out
    assert safe_line(out) == out and is_safe(out)
    assert safe_line("plain text, ünïcode, emoji 👩‍💻, tab\there") == "plain text, ünïcode, emoji 👩‍💻, tab\there"


def test_safe_text_keeps_newlines_only():
    out = safe_text("a\r\nb\nc\x1b[2Jd\re")
    assert out == "a\nb\nc\\x1b[2Jd\\re" and safe_text(out) == out


def test_card_escapers_leave_no_markup_or_structure():
    line = card_line("x\n---\n<script>alert(1)</script> [a](javascript:x)")
    assert "\n" not in line and "<" not in line and "](" not in line
    text = card_text("ok\n---\n# h\n> q\n- l\n```\n| a |")
    assert text.splitlines() == ["ok", "\\---", "\\# h", "&gt; q", "\\- l", "\\`\\`\\`", "\\| a \\|"]


# ----- every verb that prints metadata ---------------------------------------------------------------------
def _cli():
    from headhunter.cli import make_cli

    return make_cli()


def test_reading_a_hostile_file_makes_every_string_safe(hostile_file):
    hs = hh.load_headset(hostile_file)
    m = hs.metadata
    for value in (m.name, m.architecture, m.base_model, m.source, m.license, *m.tags, m.search.objective,
                  *m.search.prompts, *(s.name for s in m.sites), *m.search.evaluation, *m.search.evaluation.values(),
                  m.perturbation.params["note"]):
        assert is_safe(value), ascii(value)
    assert is_safe(m.description, multiline=True) and "\n" in m.description
    assert len(hs) == 4  # the tensors of the hostile site name still belong to it
    again = hh.load_headset(hs.save(hostile_file.parent / "again.safetensors"))
    assert again == hs  # sanitised text is stable: saved and read back it does not change


@pytest.mark.parametrize("args", [["show"], ["show", "--json"]])
def test_show_prints_nothing_raw(hostile_file, args):
    out = CliRunner().invoke(_cli(), [*args, str(hostile_file)])
    assert out.exit_code == 0, out.output
    assert_nothing_raw(out.output)
    if "--json" not in args:
        name_lines = [line for line in out.output.splitlines() if line.startswith("name:")]
        assert len(name_lines) == 1 and "\\x1b]0;pwned\\x07" in name_lines[0]
        # the multi-line description keeps its lines, indented under its label: none can pose as a field
        labels = [line.split(":")[0] for line in out.output.splitlines() if line and not line.startswith(" ")]
        assert labels == ["name", "description", "architecture", "origin", "perturbation", "guidance", "format",
                          "tags", "search", "heads (4)"]


def test_error_lines_are_safe(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"headhunter": {"format_version": "9\x1b]0;x\x07.0"}, "heads": {}}))
    out = CliRunner().invoke(_cli(), ["show", str(bad)])
    assert out.exit_code == 1 and out.output.startswith("Error:")
    assert_nothing_raw(out.output)


# ----- the Hub: pull, show user/repo, search, push -------------------------------------------------------
@pytest.fixture
def hub(monkeypatch, tmp_path):
    from fakehub import FakeHub
    from test_hub import point_hub_at

    with FakeHub() as fake:
        point_hub_at(monkeypatch, fake.endpoint, tmp_path / "hf-cache")
        yield fake


def test_pull_show_and_search_of_a_hostile_repo_print_nothing_raw(hub, tmp_path):
    hub.create("me/hostile")
    card = "---\n" + yaml.safe_dump({"library_name": "headhunter", "tags": ["headhunter", "x" + HOSTILE]}) + "---\n"
    hub.commit("me/hostile", {"headset.safetensors": hostile_bytes(), "README.md": card.encode()})
    runner = CliRunner()
    for args in (["pull", "me/hostile", "--cache-dir", str(tmp_path / "c")], ["show", "me/hostile"],
                 ["search", "--details"]):
        out = runner.invoke(_cli(), args)
        assert out.exit_code == 0, out.output
        assert_nothing_raw(out.output)
        assert "me/hostile" in out.output or "name:" in out.output


def test_push_writes_a_card_whose_front_matter_and_body_hostile_metadata_cannot_change(hub, hostile_file):
    out = CliRunner().invoke(_cli(), ["push", str(hostile_file), "me/pushed"])
    assert out.exit_code == 0, out.output
    assert_nothing_raw(out.output)
    card = hub.repos["me/pushed"].files("main")["README.md"].decode()
    assert_nothing_raw(card)
    assert "<script" not in card.lower() and "<img" not in card.lower()
    lines = card.splitlines()
    assert lines[0] == "---" and [i for i, line in enumerate(lines) if line.strip() == "---"] == [0, lines.index("---", 1)]
    front = yaml.safe_load("\n".join(lines[1:lines.index("---", 1)]))
    assert set(front) == {"library_name", "license", "model_name", "tags"}  # base_model refused: not a repo id
    assert all("\n" not in str(v) for v in front.values()) and all(is_safe(t) and "\n" not in t for t in front["tags"])
    headings = [line for line in lines if line.startswith("#")]
    assert headings[1:] == ["## Heads", "## Recommended settings", "## How it was found", "## Usage", "## Files"]
    assert headings[0].startswith("# evil") and "\n" not in headings[0]
    # the usage snippet is still one valid Python block: the hostile base model is a quoted literal in it
    code = card.split("```python\n", 1)[1].split("\n```", 1)[0]
    compile(code, "usage", "exec")


# ----- guider_config.json (issue #29, fault 3) -------------------------------------------------------------
@pytest.fixture(scope="module")
def good_guider_config(tmp_path_factory):
    from headhunter.engine.guider import HeadHunterGuidance

    folder = tmp_path_factory.mktemp("guider")
    HeadHunterGuidance(headsets="preset:digits-uncond-greedy").save_pretrained(folder)
    return json.loads((folder / "guider_config.json").read_text())


BAD_GUIDER_CONFIGS = {
    "empty": ("", "not JSON"),
    "not JSON": ("{headsets", "not JSON"),
    "deeply nested": ("[" * 100_000 + "]" * 100_000, "nested 100000 levels deep; at most 16"),
    "null": ("null", "must hold a JSON object, not null"),
    "headsets null": ({"headsets": None}, "headsets=None"),
    "headsets 5": ({"headsets": 5}, "headsets=5"),
    "headsets a string": ({"headsets": "preset:digits-uncond-greedy"}, "headsets='preset:digits-uncond-greedy'"),
    "perturbation_params list": ({"perturbation_params": [1]}, "perturbation_params=[1]"),
    "CFG start NaN": ('"start": NaN', "NaN"),
    "5,000-character source": ({"headsets": [{"source": "x" * 5000}]}, "at most 1024 characters"),
    "enabled 'no'": ({"enabled": "no"}, "enabled='no'"),
    "scale per branch of the wrong length": ({"perturbed_guidance_scale": [1, 2]}, "2 values for 1 head sets"),
    "negative scale": ({"guidance_scale": -1}, "guidance_scale=-1"),
    "window reversed": ({"start": 0.9, "stop": 0.1}, "start=0.9 is after stop=0.1"),
    "CFG start 1 (diffusers needs start < 1)": ({"start": 1.0, "stop": 1.0}, "start=1.0: Input should be less than 1"),
    "unknown key": ({"headset": []}, "headset="),
}


@pytest.mark.parametrize("kind", list(BAD_GUIDER_CONFIGS))
def test_a_bad_guider_config_is_a_headset_error_naming_the_field(kind, good_guider_config, tmp_path):
    from headhunter.engine.guider import HeadHunterGuidance

    change, expected = BAD_GUIDER_CONFIGS[kind]
    if isinstance(change, dict):
        text = json.dumps({**good_guider_config, **change})
    elif change.startswith('"start"'):
        text = json.dumps(good_guider_config).replace('"start": 0.0', change)
    else:
        text = change
    (tmp_path / "guider_config.json").write_text(text)
    with pytest.raises(HeadSetError) as caught:
        HeadHunterGuidance.from_pretrained(tmp_path)
    assert expected in str(caught.value), str(caught.value)
    assert len(str(caught.value)) < 1000


def test_a_guider_config_that_is_fine_loads_and_a_long_location_is_refused(good_guider_config, tmp_path):
    from headhunter.engine.guider import HeadHunterGuidance

    (tmp_path / "guider_config.json").write_text(json.dumps(good_guider_config))
    assert HeadHunterGuidance.from_pretrained(tmp_path).config.headsets == good_guider_config["headsets"]
    assert HeadHunterGuidance.from_pretrained(tmp_path / "guider_config.json").config.enabled is True
    with pytest.raises(HeadhunterError, match="at most 1024"):
        HeadHunterGuidance.from_pretrained("y" * 5000)
    with pytest.raises(HeadSetError, match="at most 1024"):
        HeadHunterGuidance(headsets="z" * 5000)


# ----- model configs (issue #29, fault 4) ------------------------------------------------------------------
TINY_SD3 = {"_class_name": "SD3Transformer2DModel", "num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 8,
            "joint_attention_dim": 16, "caption_projection_dim": 16, "pooled_projection_dim": 16, "sample_size": 8,
            "patch_size": 2, "in_channels": 4, "out_channels": 4, "pos_embed_max_size": 8}


def test_inspect_of_a_config_claiming_100000_layers_is_refused_at_once(tmp_path):
    import time

    (tmp_path / "config.json").write_text(json.dumps({**TINY_SD3, "num_layers": 100_000}))
    start = time.perf_counter()
    out = CliRunner().invoke(_cli(), ["inspect", str(tmp_path)])
    assert time.perf_counter() - start < 5
    assert out.exit_code == 1
    assert "num_layers=100000 layers/blocks is out of range; allowed: [0, 512]" in out.output


@pytest.mark.parametrize(("change", "expected"), [
    ({"num_layers": 300, "num_single_layers": 300}, "600 transformer layers/blocks in all; at most 512"),
    ({"num_attention_heads": 10**6}, "num_attention_heads=1000000 heads is out of range; allowed: [1, 4096]"),
    ({"num_attention_heads": 0}, "allowed: [1, 4096]"),
    ({"num_layers": True}, "num_layers=True must be a whole number"),
    ({"num_layers": 2.5}, "num_layers=2.5 must be a whole number"),
    ({"num_layers": "24"}, "num_layers='24' must be a whole number"),
    ({"sample_size": 10**9}, "sample_size=1000000000 is out of range; allowed: [-2147483648, 65536]"),
    ({"axes_dims_rope": list(range(1000))}, "a list of 1000 items; at most 256"),
    ({"_class_name": "x" * 5000}, "a string of 5000 characters"),
])
def test_model_config_bounds_name_the_key_and_what_is_allowed(change, expected):
    from headhunter.errors import ModelError
    from headhunter.format.model_config import check_model_config

    assert check_model_config(TINY_SD3, "c") == TINY_SD3
    with pytest.raises(ModelError) as caught:
        check_model_config({**TINY_SD3, **change}, "c")
    assert expected in str(caught.value)


def test_the_shipped_digits_config_and_published_shapes_pass_the_bounds():
    from headhunter.format.model_config import check_model_config, read_model_config
    from headhunter.plugins.digits.model import CONFIG_FILE, WEIGHTS_DIR

    read_model_config(WEIGHTS_DIR / CONFIG_FILE)
    flux = {"_class_name": "FluxTransformer2DModel", "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
            "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
            "axes_dims_rope": [16, 56, 56], "in_channels": 64, "patch_size": 1, "guidance_embeds": True}
    qwen = {"_class_name": "QwenImageTransformer2DModel", "num_layers": 60, "num_attention_heads": 24,
            "attention_head_dim": 128, "joint_attention_dim": 3584, "axes_dims_rope": [16, 56, 56]}
    check_model_config(flux, "flux")
    check_model_config(qwen, "qwen")


# ----- plugin outputs where they enter (issue #29, fault 6) ------------------------------------------------
def _objective(name, fn):
    from headhunter import Objective

    return type("Hostile", (Objective,), {"name": name, "score": lambda self, images, prompts: fn(images)})()


@pytest.mark.parametrize(("name", "fn", "expected"), [
    ("all-nan", lambda x: torch.full((len(x),), float("nan")), "returned nan for 4 of 4 images (every one of them)"),
    ("one-inf", lambda x: torch.tensor([0.0, float("inf"), 0.0, 0.0]), "returned inf for 1 of 4 images (images 1)"),
    ("too-few", lambda x: torch.zeros(len(x) - 1), "returned 3 scores for 4 images; expected one per image, shape [4]"),
    ("too-many", lambda x: torch.zeros(len(x) + 2), "returned 6 scores for 4 images"),
    ("matrix", lambda x: torch.zeros(len(x), 2), "returned shape [4, 2] scores for 4 images"),
    ("a-list", lambda x: [0.0] * len(x), "returned list; an objective returns a float tensor of shape [4]"),
])
def test_a_bad_objective_output_is_a_search_error_naming_the_objective(name, fn, expected):
    from headhunter import SearchError
    from headhunter.errors import ObjectiveError

    with pytest.raises(SearchError) as caught:
        _objective(name, fn)(torch.rand(4, 1, 8, 8), ["p"] * 4)
    assert isinstance(caught.value, ObjectiveError)
    assert f"objective {name!r} {expected}" in str(caught.value), str(caught.value)


def test_a_search_with_an_objective_returning_nan_for_every_image_stops_with_a_clear_error(tmp_path):
    from test_search import SETTINGS, tiny_digits_pipe

    from headhunter import SearchError, hunt

    nan = _objective("always-nan", lambda x: torch.full((len(x),), float("nan")))
    with pytest.raises(SearchError, match=r"objective 'always-nan' returned nan for (\d+) of \1 images \(every one of them\)"):
        hunt(tiny_digits_pipe(), nan, rounds=1, out_dir=tmp_path / "run", report=False, **SETTINGS)
    short = _objective("one-short", lambda x: torch.zeros(len(x) - 1))
    with pytest.raises(SearchError, match=r"objective 'one-short' returned (\d+) scores for \d+ images; expected one per image"):
        hunt(tiny_digits_pipe(), short, rounds=1, report=False, **SETTINGS)


# ----- prompt files: one bounded reader (issue #29, fault 6) -----------------------------------------------
@pytest.mark.parametrize(("content", "expected"), [
    (b"a cat\n" * 1_000_000, "at most 4194304 bytes are read"),
    (b"a cat\n" * 10_001, "more than 10000 prompts"),
    (b"\x00" * (16 * 1024 * 1024), "at most 4194304 bytes"),
    (b"ok\n" + b"\x00" * 100 + b"\n", "line 2, holds a NUL byte at character 1"),
    (b"ok\n" + b"x" * 5000 + b"\n", "line 2, is 5000 bytes long; a prompt is at most 4096 bytes"),
    (b"ok\nred \x1b[31m\n", "line 2, holds the control character '\\x1b' at character 5"),
    (b"\xff\xfe", "is not UTF-8 text"),
    (b"\n  \n\n", "holds no prompts"),
])
def test_a_bad_prompt_file_is_refused_by_hunt_and_atlas_before_any_work(tmp_path, content, expected):
    (tmp_path / "p.txt").write_bytes(content)
    for verb in ("hunt", "atlas"):
        out = CliRunner().invoke(_cli(), [verb, "digits", "--prompt", f"@{tmp_path / 'p.txt'}", "--out", str(tmp_path / verb)])
        assert out.exit_code == 2, out.output
        assert expected in out.output, out.output
        assert not (tmp_path / verb / "state.json").exists()


def test_a_good_prompt_file_gives_its_prompts():
    from headhunter.errors import HeadhunterError
    from headhunter.format.files import read_prompt_file
    import tempfile, pathlib

    path = pathlib.Path(tempfile.mkdtemp()) / "p.txt"
    path.write_bytes("a cat\r\n\n  a dog\twith a hat  \n3\n".encode())
    assert read_prompt_file(path, error=HeadhunterError) == ["a cat", "a dog\twith a hat", "3"]


@pytest.mark.parametrize(("change", "expected"), [
    ({"done": "0,2"}, "done: Input should be a valid list"),
    ({"done": [0, 0]}, "must list distinct batch starts >= 0"),
    ({"done": [-4]}, "must list distinct batch starts >= 0"),
    ({"done": [True]}, "done.0: Input should be a valid integer"),
    ({"values": {"base": {"0": {"brightness": "x"}}}}, "values.base.0.brightness"),
    ({"timing": None}, "timing: Input should be a valid dictionary"),
])
def test_a_damaged_atlas_checkpoint_is_refused_naming_the_field(tmp_path, change, expected):
    from headhunter import SearchError
    from headhunter.atlases.atlas import AtlasCheckpoint

    good = {"settings": {"model": "digits"}, "library_version": "0.1.0", "values": {}, "done": [0, 2],
            "timing": {"images": 4, "seconds": 1.5, "cpu_seconds": 1.0}}
    (tmp_path / "state.json").write_text(json.dumps(good))
    assert AtlasCheckpoint.read(tmp_path / "state.json")["done"] == [0, 2]
    (tmp_path / "state.json").write_text(json.dumps({**good, **change}))
    with pytest.raises(SearchError, match="atlas checkpoint .* is damaged") as caught:
        AtlasCheckpoint.read(tmp_path / "state.json")
    assert expected in str(caught.value)
    for key in good:  # every key is required
        (tmp_path / "state.json").write_text(json.dumps({k: v for k, v in good.items() if k != key}))
        with pytest.raises(SearchError, match=f"{key}: Field required"):
            AtlasCheckpoint.read(tmp_path / "state.json")
