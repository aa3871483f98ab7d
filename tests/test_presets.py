"""Shipped presets: the index agrees with the files, the files are what the build table makes, loading rules."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import headhunter as hh
from headhunter import HeadSet, HeadSetError, Site, get_plugin_manager, hookimpl
from headhunter.format.presets_build import FLUX1_DEV, PAPER_PRESETS, PRESET_STRENGTH, SD3_MEDIUM, build
from headhunter.cli import make_cli
from headhunter.format.presets import add_preset, headsets_root, list_presets, load_preset

ENTRIES = list_presets()


def _comparable(hs: HeadSet) -> tuple:
    meta = hs.metadata.model_dump()
    meta.pop("library_version")
    return hs.strengths(), meta


@pytest.mark.parametrize("entry", ENTRIES, ids=[p.name for p in ENTRIES])
def test_index_entry_matches_its_file(entry):
    hs = load_preset(entry.name)
    m = hs.metadata
    assert (entry.name, entry.heads) == (m.name, hs.notation())
    assert (entry.model, entry.architecture, entry.origin, entry.source, entry.tags) == (
        m.base_model or m.architecture, m.architecture, m.origin, m.source or "-", m.tags
    )
    assert entry.file.endswith(".safetensors") and len(entry.file.split("/")) <= 2  # covered by package-data globs
    assert hh.load_headset(f"preset:{entry.name}") == hs


def test_shipped_paper_presets_are_what_the_build_table_makes(tmp_path):
    (tmp_path / "index.json").write_text(json.dumps({"format": 1, "presets": []}))
    built = build(tmp_path)
    shipped = {p.name: p for p in list_presets(origin="paper")}
    assert [p.name for p in built] == list(shipped), "run `python -m headhunter.format.presets_build`"
    for entry in built:
        assert entry == shipped[entry.name]
        assert _comparable(HeadSet.from_file(tmp_path / entry.file)) == _comparable(load_preset(entry.name))


def test_paper_presets_carry_the_papers_settings_and_sources():
    paper = list_presets(origin="paper")
    assert len(paper) == len(PAPER_PRESETS) >= 20
    for entry in paper:
        hs = load_preset(entry.name)
        m = hs.metadata
        assert m.origin == "paper" and "paper" in m.tags and "Fig" in m.source
        assert m.perturbation.name == "softpag"
        assert m.guidance.scale == {SD3_MEDIUM: 3.0, FLUX1_DEV: 8.0}[m.base_model]
        assert {h.strength for h in hs} == {PRESET_STRENGTH}
        if m.base_model == FLUX1_DEV:  # paper FLUX layers 19-56 are single-stream blocks
            assert all(h.layer >= 19 and h.site.startswith("single_transformer_blocks.") for h in hs)
    named = {p.name: p.heads.replace("@0.5", "") for p in paper}
    assert named["sd3-dark-lighting"] == "L1H10" and named["sd3-white"] == "L0H15, L1H19"
    assert named["sd3-dark"] == "L1H2, L1H10" and named["flux-golden-hour"] == "L38H18"
    assert named["flux-cool-tone"] == "L52H6" and named["sd3-fine-detail"] == "L14H7"


def test_strength_suffix_and_unknown_names():
    full = load_preset("sd3-dark@1")
    assert full.notation() == "L1H2, L1H10" and full.metadata == load_preset("sd3-dark").metadata
    assert hh.load_headset("preset:sd3-dark@0.25").notation() == "L1H2@0.25, L1H10@0.25"
    with pytest.raises(HeadSetError, match=r"unknown preset 'sd3-drak'; available: .*sd3-dark.*headhunter presets"):
        load_preset("sd3-drak")
    for bad in ("sd3-dark@2", "sd3-dark@0", "sd3-dark@x"):
        with pytest.raises(HeadSetError, match=r"must be a number in \(0, 1\]"):
            load_preset(bad)


def test_filters():
    assert {p.architecture for p in list_presets(model="flux")} == {"flux"}
    sd3_family = list_presets(model="sd3")
    assert {p.architecture for p in sd3_family} == {"sd3"}
    assert list_presets(model=SD3_MEDIUM) == [p for p in sd3_family if p.model == SD3_MEDIUM]
    assert [p.name for p in list_presets(model="digits")] == [p.name for p in ENTRIES if p.model == "digits"]
    assert list_presets(origin="search") == [p for p in ENTRIES if p.origin == "search"]


def test_add_preset_is_one_call_and_keeps_the_index_valid(tmp_path):
    (tmp_path / "index.json").write_text(json.dumps({"format": 1, "presets": []}))
    sites = [Site(name=f"blocks.{i}.attn", num_heads=8) for i in range(4)]
    found = HeadSet.from_heads([(1, 2), (3, 0, 0.5)], sites=sites, architecture="digits", base_model="digits",
                               name="digits-quality", description="sharper digits", origin="search",
                               source="runs/demo (round 2)", search={"objective": "digit-logprob", "rounds": 2})
    entry = add_preset(found, "digits-quality", "digits/quality.safetensors", root=tmp_path)
    assert (entry.origin, entry.effect, entry.model, entry.heads) == ("search", "sharper digits", "digits", "L1H2, L3H0@0.5")
    assert load_preset("digits-quality", root=tmp_path) == found
    assert list_presets(root=tmp_path) == [entry]
    with pytest.raises(HeadSetError, match="exists already.*replace=True"):
        add_preset(found, "digits-quality", "digits/quality.safetensors", root=tmp_path)
    add_preset(found, "digits-quality", "digits/quality.safetensors", root=tmp_path, replace=True, effect="better")
    assert [p.effect for p in list_presets(root=tmp_path)] == ["better"]
    with pytest.raises(HeadSetError, match="already used by preset 'digits-quality'"):
        add_preset(found, "other", "digits/quality.safetensors", root=tmp_path)
    for bad in ("a/b/c.safetensors", "../x.safetensors", "x.json"):
        with pytest.raises(HeadSetError, match="at most one folder deep"):
            add_preset(found, "x", bad, root=tmp_path)
    with pytest.raises(HeadSetError, match="cannot add preset 'Bad Name'"):
        add_preset(found, "Bad Name", "x.safetensors", root=tmp_path)
    build(tmp_path)  # rebuilding the paper presets keeps searched ones
    assert [p.name for p in list_presets(root=tmp_path, origin="search")] == ["digits-quality"]


def test_malformed_index_names_the_entry(tmp_path):
    (tmp_path / "index.json").write_text(json.dumps({"format": 1, "presets": [{"name": "x"}]}))
    with pytest.raises(HeadSetError, match=r"entry 0 \('x'\) is malformed"):
        list_presets(root=tmp_path)
    (tmp_path / "index.json").write_text("[]")
    with pytest.raises(HeadSetError, match="not a preset index of format 1"):
        list_presets(root=tmp_path)


class _PresetsCommand:
    @hookimpl
    def register_commands(self, cli):
        from headhunter.cli.presets import presets

        cli.add_command(presets)


def test_cli_presets_shows_origin_model_effect_source():
    pm = get_plugin_manager(load_entry_points=False, builtins=False)
    pm.register(_PresetsCommand())
    runner = CliRunner()
    out = runner.invoke(make_cli(pm), ["presets"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0] == "stabilityai/stable-diffusion-3-medium-diffusers (sd3)"  # grouped by model, a heading each
    golden = next(line for line in lines if line.startswith("  flux-golden-hour "))
    for text in ("paper", "golden-hour light", "L38H18@0.5"):
        assert text in golden
    assert lines.index(f"{FLUX1_DEV} (flux)") < lines.index(golden)
    assert "presets --json" in lines[-1]  # the sources are there
    out = runner.invoke(make_cli(pm), ["presets", "--model", "flux", "--json"])
    assert {p["architecture"] for p in json.loads(out.output)} == {"flux"}
    assert "no presets match" in runner.invoke(make_cli(pm), ["presets", "--origin", "manual"]).output


def test_presets_live_in_the_package_folder():
    assert (headsets_root() / "index.json").is_file()
    assert all((headsets_root() / p.file).is_file() for p in ENTRIES)


def test_docs_list_every_paper_preset():
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[1] / "docs" / "hub.md").read_text()
    for entry in list_presets(origin="paper"):
        row = next((line for line in guide.splitlines() if line.startswith(f"| `{entry.name}` |")), None)
        assert row is not None, f"{entry.name} missing from the preset table in docs/hub.md"
        assert entry.effect in row and entry.source.split(" (")[0] in row
