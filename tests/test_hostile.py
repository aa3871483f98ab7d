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
