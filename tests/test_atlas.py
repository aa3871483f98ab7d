"""Head atlas: batched per-sample generation equals one image at a time, paired statistics against an
explicit reference, resume after an interruption gives the same numbers, labels/export/candidate filter,
the self-contained page, the CLI, and publishing to a (fake) Hub."""

from __future__ import annotations

import base64
import json
import math
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from headhunter import HeadSet, SearchError
from headhunter.engine.runner import Row, generate_rows
from headhunter.format.schema import GenerationSettings
from headhunter.atlases.atlas import Atlas, AtlasSettings, load_atlas, restrict_candidates, select_heads
from headhunter.atlases.effects import NONE, Measure, analyse, paired_effect
from headhunter.atlases.measures import Measurer
from headhunter.workflow.atlas import atlas
from headhunter.format.sites import Site

SMALL = dict(prompts=["3"], seeds=[0, 1, 2], steps=2, scale=2.0, strength=1.0, progress=False,
             measures=["brightness", "sharpness"], objectives=[])


def tiny_pipe(seed: int = 0):
    from headhunter.plugins.digits.model import build_pipeline, build_transformer

    torch.manual_seed(seed)
    pipe = build_pipeline(build_transformer(num_layers=2, num_attention_heads=2, attention_head_dim=8))
    for module in (pipe.transformer, pipe.label_encoder):
        module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----- generation and measurement ----------------------------------------------------------------------
def test_batched_units_equal_images_made_one_at_a_time():
    pipe = tiny_pipe()
    result = atlas(pipe, heads=["L0H1", "L1H0"], layers=[1], batch_size=4, **SMALL)
    assert result.units == [NONE, "L1", "L0H1", "L1H0"]
    assert result.images == 4 * 3
    from headhunter import get_registry

    adapter = get_registry().adapter_for(pipe)
    sites = adapter.sites(pipe)
    gen = GenerationSettings(guidance={"scale": 2.0}, steps=2)
    units = {NONE: None, "L1": HeadSet.from_heads([(1, 0, 1.0), (1, 1, 1.0)], sites=sites, architecture="sd3"),
             "L0H1": HeadSet.from_heads([(0, 1, 1.0)], sites=sites, architecture="sd3")}
    base = {}
    for unit, hs in units.items():
        for pair, seed in enumerate([0, 1, 2]):
            image = (generate_rows(pipe, [Row(hs, "3", seed)], gen)[0].clamp(0, 1) * 255).round() / 255
            base.setdefault(unit, {})[pair] = image
            got = result.values[unit][pair]
            assert got["brightness"] == pytest.approx(float(image.mean()), abs=2e-3)
            if unit != NONE:
                change = float((image - base[NONE][pair]).abs().mean())
                assert got["change"] == pytest.approx(change, abs=2e-3)
    assert all(v["change"] == 0.0 for v in result.values[NONE])


def test_select_heads_expands_layers_and_refuses_unknown_heads():
    sites = [Site(name=f"b.{i}", num_heads=2) for i in range(3)]
    assert select_heads(sites, None) == ["L0H0", "L0H1", "L1H0", "L1H1", "L2H0", "L2H1"]
    assert select_heads(sites, ["L2", "1", "L0H1", "b.1"]) == ["L2H0", "L2H1", "L1H0", "L1H1", "L0H1"]
    with pytest.raises(SearchError, match="L3H0 does not exist"):
        select_heads(sites, ["L3H0"])
    with pytest.raises(SearchError, match="layer 7 out of range"):
        select_heads(sites, ["7"])


# ----- statistics -------------------------------------------------------------------------------------
def test_paired_effect_matches_the_t_formula():
    from scipy import stats

    x = np.array([0.3, 0.1, 0.4, 0.2, 0.25, 0.35])
    mean, low, high, d, p, sig = paired_effect(x, base_sd=0.5, tests=10, alpha=0.05, min_effect=0.2)
    se = x.std(ddof=1) / math.sqrt(len(x))
    t = stats.t.ppf(0.975, len(x) - 1)
    assert mean == pytest.approx(x.mean())
    assert (low, high) == pytest.approx((x.mean() - t * se, x.mean() + t * se))
    assert p == pytest.approx(stats.ttest_1samp(x, 0.0).pvalue)
    assert d == pytest.approx(x.mean() / 0.5)
    assert sig  # p ~ 2e-4 < 0.05 / 10 and d = 0.53
    assert not paired_effect(x, base_sd=0.5, tests=10_000, alpha=0.05, min_effect=0.2)[5]  # Bonferroni
    assert not paired_effect(x, base_sd=5.0, tests=10, alpha=0.05, min_effect=0.2)[5]  # tiny: d = 0.05
    assert paired_effect([0.0, 0.0, 0.0], 1.0, 1, 0.05, 0.2)[4] == 1.0
    flips = paired_effect([1.0, 1.0, 1.0, 1.0], 0.0, 1, 0.05, 0.2, min_abs=0.2)
    assert flips[4] == 0.0 and flips[5] and math.isnan(flips[3])


def synthetic(sites=None, effect=-0.1, seeds=8) -> Atlas:
    """An atlas whose L0H0 and L1H1 darken (by `effect`), L0H1 sharpens, and the rest do nothing."""
    sites = sites or [Site(name=f"transformer_blocks.{i}.attn", num_heads=2) for i in range(2)]
    rng = np.random.default_rng(0)
    heads = [f"L{i}H{h}" for i in range(len(sites)) for h in range(sites[i].num_heads)]
    settings = AtlasSettings(model="tiny", prompts=[""], seeds=list(range(seeds)), heads=heads, layers=[0],
                             measures=["brightness", "sharpness"], batch_size=4)
    base = [{"brightness": 0.3 + 0.05 * rng.standard_normal(), "sharpness": 0.5 + 0.05 * rng.standard_normal(),
             "change": 0.0} for _ in range(seeds)]
    values = {NONE: base}
    shifts = {"L0H0": ("brightness", effect), "L1H1": ("brightness", 2 * effect), "L0H1": ("sharpness", 0.1)}
    for unit in ["L0", *heads]:
        measure, shift = shifts.get(unit, ("brightness", 0.0))
        rows = []
        for b in base:
            row = {k: v + 1e-3 * rng.standard_normal() for k, v in b.items()}
            row[measure] += shift
            row["change"] = abs(shift) + 0.01
            rows.append(row)
        values[unit] = rows
    measures = [Measure("brightness", "stat", ("brighter", "darker")), Measure("sharpness", "stat", ("sharper", "blurrier")),
                Measure("change", "paired", (None, None))]
    return analyse(Atlas(settings, sites, "sd3", measures, values))


def test_labels_groups_and_export():
    a = synthetic()
    assert a.labels("L0H0") == ["darker"] and a.labels("L1H1") == ["darker"] and a.labels("L0H1") == ["sharper"]
    assert a.labels("L1H0") == []
    assert a.heads_with("darker") == ["L1H1", "L0H0"]  # strongest first
    e = a.effects["L0H0"]["brightness"]
    assert e.low < -0.1 < e.high and e.significant
    assert [g.heads for g in a.groups][-1] == ["L1H0"] and a.groups[-1].name == "no significant effect"
    assert {tuple(g.heads) for g in a.groups[:-1]} == {("L0H0", "L1H1"), ("L0H1",)}
    hs = a.export("darker", top=1)
    assert hs.notation() == "L1H1" and hs.metadata.origin == "atlas" and "atlas" in hs.metadata.tags
    assert hs.metadata.search.evaluation["atlas_effects"]["L1H1"]["mean"] == pytest.approx(-0.2, abs=0.01)
    with pytest.raises(SearchError, match="effects it knows: blurrier, brighter, darker, sharper"):
        a.export("greener")
    with pytest.raises(SearchError, match=r"labels present \(heads\): darker \(2\), sharper \(1\)"):
        a.export("blurrier")


def test_constant_measures_are_skipped_not_labelled():
    a = synthetic()
    for unit in a.values:
        for row in a.values[unit]:
            row["saturation"] = 0.0
    a.measures.append(Measure("saturation", "stat", ("more saturated", "less saturated")))
    analyse(a)
    assert a.skipped == ["saturation"] and "saturation" not in a.effects["L0H0"]


def test_restrict_candidates_keeps_the_labelled_heads_in_pool_order():
    a = synthetic()
    assert restrict_candidates(["L0H0", "L0H1", "L1H1"], a, "darker", a.sites) == ["L0H0", "L1H1"]
    with pytest.raises(SearchError, match="no candidate head is labelled 'darker'"):
        restrict_candidates(["L0H1"], a, "darker", a.sites)
    other = [Site(name="x", num_heads=2)]
    with pytest.raises(SearchError, match="sites differ"):
        restrict_candidates(["L0H0"], a, "darker", other)


def test_hunt_candidates_from_an_atlas(tmp_path):
    from headhunter import get_registry
    from headhunter.workflow.hunt import hunt

    pipe = tiny_pipe()
    sites = get_registry().adapter_for(pipe).sites(pipe)
    a = synthetic(sites=sites)
    a.save(tmp_path / "atlas")
    result = hunt(pipe, "brightness", prompts=["3"], seeds=[0], steps=2, rounds=1, progress=False,
                  layer_baselines=False, candidates_from=tmp_path / "atlas", effect="darker")
    assert set(result.rounds[0].scores) == {"L0H0", "L1H1"}


# ----- checkpoint and resume ----------------------------------------------------------------------------
@pytest.mark.slow
def test_interrupted_atlas_resumes_to_the_same_numbers(tmp_path, monkeypatch, capsys):
    import headhunter.atlases.atlas as atlas_module

    pipe = tiny_pipe()
    whole = atlas(pipe, heads=["L0H0", "L1H1"], layers=[], batch_size=2, out_dir=tmp_path / "a", render=False, **SMALL)
    calls = {"n": 0}
    real = Measurer.__call__

    def flaky(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(Measurer, "__call__", flaky)
    with pytest.raises(KeyboardInterrupt):
        atlas(pipe, heads=["L0H0", "L1H1"], layers=[], batch_size=2, out_dir=tmp_path / "b", render=False, **SMALL)
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert sorted(state["done"]) == [0, 2]
    monkeypatch.setattr(Measurer, "__call__", real)
    generated = []
    real_generate = atlas_module.run_batches

    def counting(pipe_, rows, gen, batch_size, on_batch, skip):
        return real_generate(pipe_, rows, gen, batch_size, lambda s, im: (generated.append(s), on_batch(s, im)), skip)

    monkeypatch.setattr(atlas_module, "run_batches", counting)
    capsys.readouterr()
    resumed = atlas(pipe, heads=["L0H0", "L1H1"], layers=[], batch_size=2, out_dir=tmp_path / "b", render=False,
                    **{**SMALL, "progress": True})
    assert f"resuming the atlas in {tmp_path / 'b'}: 4 of " in capsys.readouterr().err  # a rerun says it resumed
    assert generated == [4, 6, 8]  # only the slices not checkpointed
    assert resumed.values == whole.values
    assert set(resumed.thumbs) == set(whole.thumbs)
    with pytest.raises(SearchError, match=r"holds an atlas with guidance.scale=2.0, but this one has guidance.scale=3.0"):
        atlas(pipe, heads=["L0H0", "L1H1"], layers=[], batch_size=2, out_dir=tmp_path / "b", render=False,
              **{**SMALL, "scale": 3.0})


# ----- the page ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_page_is_self_contained_and_numbers_round_trip(tmp_path):
    pipe = tiny_pipe()
    result = atlas(pipe, heads=["L0", "L1H1"], layers=[0], batch_size=8, out_dir=tmp_path, **SMALL)
    html = (tmp_path / "index.html").read_text()
    assert not re.search(r'(src|href)="https?:|url\(|@import', html)  # nothing fetched from a network
    sources = re.findall(r'src="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert base64.b64decode(sources[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<link" not in html and "<script" not in html
    for name in ("contact_L0.png", "contact_L1.png", "heatmaps.png", "heatmap_brightness.png", "effects.csv",
                 "values.csv", "atlas.json"):
        assert (tmp_path / name).is_file(), name
    from PIL import Image

    sheet = Image.open(tmp_path / "contact_L0.png")
    assert sheet.height == 18 + 4 * (64 + 3)  # no guidance, whole layer, 2 heads
    loaded = load_atlas(tmp_path)
    assert loaded.values == result.values
    assert {u: loaded.labels(u) for u in loaded.units} == {u: result.labels(u) for u in result.units}
    rows = (tmp_path / "effects.csv").read_text().splitlines()
    assert rows[0].startswith("unit,layer,head,measure,mean,ci_low,ci_high,d,p,n,significant,label")
    assert len(rows) == 1 + 4 * 3  # (L0, L0H0, L0H1, L1H1) x (brightness, sharpness, change)


def test_load_atlas_refuses_what_is_not_an_atlas(tmp_path):
    with pytest.raises(SearchError, match="no atlas at"):
        load_atlas(tmp_path)
    (tmp_path / "atlas.json").write_text('{"format": "something"}')
    with pytest.raises(SearchError, match="not a headhunter atlas"):
        load_atlas(tmp_path)


# ----- CLI --------------------------------------------------------------------------------------------
def test_cli_export_and_errors(tmp_path):
    from headhunter.cli import make_cli

    synthetic().save(tmp_path / "atlas")
    runner = CliRunner()
    out = tmp_path / "dark.safetensors"
    result = runner.invoke(make_cli(), ["atlas", "export", str(tmp_path / "atlas"), "--effect", "darker", "--top", "3",
                                        "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "L1H1, L0H0 (2 of 2 heads labelled 'darker')" in result.output or "(2 of 2 heads" in result.output
    from headhunter import load_headset

    hs = load_headset(str(out))
    assert hs.notation() == "L0H0, L1H1" and hs.metadata.origin == "atlas"
    bad = runner.invoke(make_cli(), ["atlas", "export", str(tmp_path / "atlas"), "--effect", "greener", "-o", str(out)])
    assert bad.exit_code != 0 and bad.output.count("Error:") == 1 and "Traceback" not in bad.output
    assert "effects it knows" in bad.output
    missing = runner.invoke(make_cli(), ["atlas", "export", str(tmp_path / "nothing"), "--effect", "darker", "-o", str(out)])
    assert missing.exit_code != 0 and "no atlas at" in missing.output
    helped = runner.invoke(make_cli(), ["atlas", "--help"])
    assert helped.exit_code == 0 and "export" in helped.output and "build" in helped.output


@pytest.mark.slow
def test_cli_builds_on_a_registered_model(tmp_path):
    from headhunter import hookimpl
    from headhunter.cli import make_cli
    from headhunter.plugin_system.registry import get_plugin_manager

    class Models:
        @hookimpl
        def register_models(self, register):
            register("tiny-atlas", tiny_pipe)

    pm = get_plugin_manager(load_entry_points=False)
    pm.register(Models(), name="tiny-atlas-models")
    result = CliRunner().invoke(make_cli(pm), ["atlas", "tiny-atlas", "--prompt", "3", "--seeds", "0-2", "--steps", "2",
                                               "--heads", "L1", "--layers", "none", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "images: 9 (2 heads + 0 layers + no guidance) x 3 prompt-seed pairs" in result.output
    assert (tmp_path / "index.html").is_file()


# ----- Hub --------------------------------------------------------------------------------------------
def test_push_atlas_and_find_it(monkeypatch, tmp_path):
    from fakehub import FakeHub
    from test_hub import point_hub_at

    from headhunter.atlases.publish import push_atlas
    from headhunter.format.hub import ATLAS_TAG, search_hub

    a = synthetic()
    a.settings = a.settings.model_copy(update={"model": "someone/tiny-dit"})
    a.save(tmp_path / "atlas")
    (tmp_path / "atlas" / "state.json").write_text("{}")
    with FakeHub() as fake:
        point_hub_at(monkeypatch, fake.endpoint, tmp_path / "cache")
        push_atlas(tmp_path / "atlas", "me/tiny-atlas")
        files = fake.repos["me/tiny-atlas"].files("main")
        assert {"README.md", "atlas.json", "effects.csv", "values.csv"} <= set(files)
        assert "state.json" not in files
        card = files["README.md"].decode()
        assert "base_model: someone/tiny-dit" in card and "L1H1" in card and "darker" in card
        found = search_hub(tags=[ATLAS_TAG])
        assert [r.repo_id for r in found] == ["me/tiny-atlas"] and found[0].is_atlas
        assert found[0].base_model == "someone/tiny-dit"
        from headhunter.cli import make_cli

        listed = CliRunner().invoke(make_cli(), ["search", "--atlas"])
        assert listed.exit_code == 0 and "me/tiny-atlas" in listed.output and "(atlas)" in listed.output


def test_class_change_measure_compares_with_the_unguided_image():
    def classify(images):  # "class" = whether the image is mostly bright
        return (images.mean(dim=(1, 2, 3)) > 0.5).long()

    measurer = Measurer({}, {}, classify, "digit changed")
    base = torch.tensor([0.2, 0.8, 0.2]).view(3, 1, 1, 1).expand(3, 1, 4, 4)
    images = torch.tensor([0.7, 0.9, 0.1]).view(3, 1, 1, 1).expand(3, 1, 4, 4)
    values = measurer(images, ["", "", ""], base)
    assert [v["digit changed"] for v in values] == [1.0, 0.0, 0.0]
    assert [v["change"] for v in values] == pytest.approx([0.5, 0.1, 0.1])


def test_hunt_cli_needs_both_atlas_options():
    from headhunter.cli import make_cli

    result = CliRunner().invoke(make_cli(), ["hunt", "--effect", "darker"])
    assert result.exit_code != 0 and "--candidates-from and --effect go together" in result.output


def test_model_atlas_defaults_come_from_the_search_defaults_hook(tmp_path):
    from headhunter import hookimpl
    from headhunter.errors import PluginError
    from headhunter.plugin_system.registry import Registry, get_plugin_manager, use_registry

    answers = {"atlas": {"prompts": ["7"], "seeds": [4, 5], "words": {"brightness": ("inkier", "paler")}}}

    class Defaults:
        @hookimpl
        def search_defaults(self, model):
            return answers

    pm = get_plugin_manager(load_entry_points=False)
    pm.register(Defaults(), name="tiny-atlas-defaults")
    with use_registry(Registry(pm)):
        result = atlas(tiny_pipe(), heads=["L0H0"], layers=[], steps=2, progress=False, measures=["brightness"])
        assert result.settings.prompts == ["7"] and result.settings.seeds == [4, 5]
        assert result.measures[0].words == ("inkier", "paler") and result.measures[0].generic == ("brighter", "darker")
        answers["atlas"] = {"colour": 1}
        with pytest.raises(PluginError, match=r"atlas.colour=1: not a setting; allowed: prompts, seeds, objectives"):
            atlas(tiny_pipe(), heads=["L0H0"], layers=[], steps=2, progress=False)


def test_effect_words_match_a_relabelled_direction_by_its_words():
    a = synthetic()
    a.measures[0] = Measure("brightness", "stat", ("brighter (thicker strokes)", "darker (thinner strokes)"),
                            ("brighter", "darker"))
    analyse(a)
    assert a.labels("L0H0") == ["darker (thinner strokes)"]
    assert a.heads_with("thinner") == a.heads_with("darker") == a.heads_with("thinner strokes") == ["L1H1", "L0H0"]
    with pytest.raises(SearchError, match="matches several labels"):
        a.heads_with("strokes")
    with pytest.raises(SearchError, match="not measured"):
        a.heads_with("thin")  # whole words only


# ----- per noise interval (issue 26) ----------------------------------------------------------------------------
def test_atlas_per_noise_interval_measures_each_unit_inside_each_interval(tmp_path):
    """intervals=2: every unit is also generated acting only for sigma in [0, 0.5) and in [0.5, 1]; its values
    equal the restricted head set made alone; the effects share one Bonferroni family with the units; the
    between-interval differences are paired t statistics of the two restricted runs; a saved atlas loads back
    to the same figures; an atlas without intervals writes no 'intervals' setting (old checkpoints resume)."""
    pipe = tiny_pipe()
    steps = 4
    result = atlas(pipe, heads=["L0H1"], layers=[1], batch_size=5, intervals=2, out_dir=tmp_path / "a",
                   **{**SMALL, "steps": steps})
    names = [name for _, _, name in result.interval_units]
    assert names == ["L1@[0,0.5)", "L1@[0.5,1]", "L0H1@[0,0.5)", "L0H1@[0.5,1]"]
    assert result.images == (3 + 4) * 3 and set(result.interval_effects) == set(names)
    from headhunter import get_registry

    sites = get_registry().adapter_for(pipe).sites(pipe)
    gen = GenerationSettings(guidance={"scale": 2.0}, steps=steps)
    head = HeadSet.from_heads([(0, 1, 1.0)], sites=sites, architecture="sd3")
    for name, (lo, hi) in (("L0H1@[0,0.5)", (0.0, 0.5)), ("L0H1@[0.5,1]", (0.5, 1.0))):
        image = (generate_rows(pipe, [Row(head.restricted(lo, hi), "3", 1)], gen)[0].clamp(0, 1) * 255).round() / 255
        assert result.values[name][1]["brightness"] == pytest.approx(float(image.mean()), abs=2e-3)
    assert result.values["L0H1@[0,0.5)"] != result.values["L0H1@[0.5,1]"]
    live = [m for m in result.measures if m.name not in result.skipped]
    tests = len(live) * (len(result.units) - 1 + len(names))
    for per in [*result.effects.values(), *result.interval_effects.values()]:
        for e in per.values():
            assert not e.significant or e.p < result.alpha / tests
    diffs = [d for d in result.interval_differences if d.unit == "L0H1" and d.measure == "brightness"]
    assert len(diffs) == 1 and (diffs[0].a, diffs[0].b) == (0, 1)
    x = np.array([v["brightness"] for v in result.values["L0H1@[0,0.5)"]])
    y = np.array([v["brightness"] for v in result.values["L0H1@[0.5,1]"]])
    mean, low, high, _, p, _ = paired_effect(x - y, 1.0, 1, 0.05, 0.0)
    assert (diffs[0].mean, diffs[0].low, diffs[0].high, diffs[0].p) == pytest.approx((mean, low, high, p))
    assert len(result.interval_differences) == len(live) * 2  # 2 units x 1 pair of intervals x measures
    back = load_atlas(tmp_path / "a")
    assert back.interval_differences == result.interval_differences
    assert json.loads((tmp_path / "a" / "atlas.json").read_text())["settings"]["intervals"] == [[0, 0.5], [0.5, 1]]
    assert "L0H1@[0.5,1]" in (tmp_path / "a" / "effects.csv").read_text()
    assert "intervals" not in AtlasSettings(model="m", prompts=["3"], seeds=[0], heads=[], layers=[], measures=[],
                                            batch_size=1).model_dump()
    for bad in (1, [[0, 0.4], [0.5, 1]], [[0, 1]]):
        with pytest.raises(SearchError, match="intervals"):
            atlas(pipe, heads=["L0H1"], layers=[], intervals=bad, **SMALL)
