"""Search cost: the cost model's arithmetic and sources, the fidelities (x0 readout against a float64
reference), and multi-fidelity rounds that end on full-fidelity choices."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import headhunter.bench.searchcost as cost
from headhunter.errors import SearchError
from headhunter.search.allocation import REFERENCE, run_round
from headhunter.search.fidelity import X0Readout, parse_fidelity, run_multi_fidelity

SOURCES = (cost.MEASURED_HERE, cost.MEASURED_GPU, cost.MEASURED_DIGITS, cost.ASSUMED)


def test_exhaustive_projection_is_the_papers_count_times_the_h200_rate():
    recipe = cost.RECIPES["sd3-quality"]
    p = cost.project(recipe, "exhaustive", "optimistic", cost.GPU_RATES["sd3-quality"]["optimistic"],
                     cost.Factor(0.0, cost.ASSUMED))
    assert p.image_steps == (576 * 20 + 20) * 20  # candidates + the reference S, 20 steps each
    assert p.seconds == pytest.approx(230_800 * 41.9 / 1000)
    assert 2.6 < p.seconds / 3600 < 2.8  # the "about 2.7 GPU-hours"


def test_multi_fidelity_projection_by_hand():
    recipe = cost.Recipe("toy", heads=100, pairs=10, steps=20, rounds=1, top_k=1)
    rate, extra = cost.Factor(2.0, cost.ASSUMED), cost.Factor(1.0, cost.ASSUMED)
    p = cost.project(recipe, "multi-fidelity", "pessimistic", rate, extra)
    mf = cost.multi_fidelity("pessimistic", 10)
    screen_images = 100 * mf.screen_pairs.value + mf.screen_pairs.value
    screen_steps = screen_images * 20 * mf.screen_steps.value * mf.resolution.value
    confirm = 100 * 10 * mf.survivors.value * mf.racing.value + 10
    assert p.images == pytest.approx(screen_images + confirm)
    assert p.image_steps == pytest.approx(screen_steps + confirm * 20)
    assert p.seconds == pytest.approx((p.image_steps * 2.0 + p.images * 1.0) / 1000)
    assert set(p.factors) >= {"survivor fraction", "screen resolution cost", "racing fraction (survivors)"}


def test_every_factor_names_its_source_and_bad_names_are_refused():
    result = cost.run(measure=False)
    assert {p.allocation for p in result["projections"]} == set(cost.ALLOCATIONS)
    for p in result["projections"]:
        for f in [p.step_ms, p.extras_ms, *p.factors.values()]:
            assert f.source in SOURCES, f
    text = cost.format_report(result)
    assert "paper SD3-medium general quality" in text and "paper FLUX.1-dev style" in text
    assert "assumed" in text and "measured on a GPU" in text
    with pytest.raises(ValueError, match="unknown allocation 'halving'; allowed: exhaustive, racing"):
        cost.project(cost.RECIPES["sd3-quality"], "halving", "optimistic", cost.Factor(1, cost.ASSUMED),
                     cost.Factor(0, cost.ASSUMED))
    with pytest.raises(ValueError, match="unknown variant 'median'"):
        cost.project(cost.RECIPES["sd3-quality"], "racing", "median", cost.Factor(1, cost.ASSUMED),
                     cost.Factor(0, cost.ASSUMED))


def test_cli_search_cost_measures_here_and_writes_json(tmp_path, monkeypatch):
    from headhunter.cli import make_cli

    small = functools.partial(cost.measure_step_ms, candidates=2, pairs=2, steps=2, batch_size=4, repeats=1)
    monkeypatch.setattr(cost, "measure_step_ms", lambda model, pipe=None: small(model, pipe=pipe))
    out = tmp_path / "cost.json"
    result = CliRunner().invoke(make_cli(), ["bench", "--suite", "search-cost", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "measured here: digits on cpu" in result.output
    assert "digits demo" in result.output
    data = json.loads(out.read_text())
    local = data["measured"]
    assert local["step_ms"] > 0 and local["steps"] == 2
    here = [p for p in data["projections"] if p["step_ms"]["source"] == cost.MEASURED_HERE]
    assert {p["allocation"] for p in here} == set(cost.ALLOCATIONS)
    bad = CliRunner().invoke(make_cli(), ["bench", "--suite", "search-cost", "--search-model", "nope"])
    assert bad.exit_code == 2 and "unknown model 'nope'" in bad.output


# ----- fidelities ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ("x0:1", r"K must be in \[2, 11\]"), ("steps:12", r"K must be in \[1, 11\]"), ("x0", "not one of"),
    ("half", "not one of"), ("x0:-3", "not one of"), ("steps:0", r"\[1, 11\]"),
])
def test_bad_fidelities_name_the_value_and_what_is_allowed(text, message):
    with pytest.raises(SearchError, match=message):
        parse_fidelity(text, 12)


def test_fidelity_costs():
    assert parse_fidelity("full", 12).cost(12) == 1.0
    assert parse_fidelity("x0:3", 12).cost(12) == 0.25
    assert str(parse_fidelity(" steps:6 ", 12)) == "steps:6"


def test_x0_readout_is_the_predicted_clean_sample_of_step_k_against_float64():
    """Stop after step K: the output latents are x_{K-1} - sigma_{K-1} v_{K-1}, with v the model's output at
    step K-1 (recorded by a forward hook) and the reference computed in float64; the later steps never run."""
    from headhunter.plugins.digits.model import build_pipeline, build_transformer

    torch.manual_seed(0)
    pipe = build_pipeline(build_transformer(num_layers=2, num_attention_heads=2, attention_head_dim=8))
    pipe.set_progress_bar_config(disable=True)
    k, steps = 3, 8
    seen_latents, outputs = [], []
    pipe.transformer.register_forward_pre_hook(lambda m, a, kw: seen_latents.append(kw["hidden_states"].clone()),
                                               with_kwargs=True)
    pipe.transformer.register_forward_hook(lambda m, a, out: outputs.append(out[0].clone()))
    with torch.no_grad():
        got = pipe(prompt=["3", "7"], num_inference_steps=steps, generator=torch.Generator().manual_seed(1),
                   output_type="latent", callback_on_step_end=X0Readout(k)).images
    assert len(outputs) == k  # the remaining steps were skipped
    sigma = pipe.scheduler.sigmas[k - 1].double()
    want = seen_latents[k - 1].double() - sigma * outputs[k - 1].double()
    assert (got.double() - want).abs().max().item() <= 1e-5
    # and the readout is not the K-step latents themselves
    assert (got.double() - seen_latents[k - 1].double()).abs().max().item() > 1e-3


def test_x0_readout_refuses_k_below_2():
    with pytest.raises(SearchError, match="needs K >= 2"):
        X0Readout(1)


# ----- multi-fidelity rounds -------------------------------------------------------------------------------
def _matrix_getter(matrix: dict[str, np.ndarray]):
    def get(c: str, n: int) -> np.ndarray:
        return matrix[c][:n, None]
    return get


def test_multi_fidelity_decides_at_full_fidelity_and_never_reports_screen_scores():
    """The screen ranks c1 first (cheap scores), full fidelity ranks c2 first: the pick is c2, its score and
    interval are full-fidelity figures, and a candidate the screen dropped is neither scored nor selected."""
    rng = np.random.default_rng(0)
    pairs = 16
    ref_full, ref_cheap = rng.normal(0, 0.1, pairs), rng.normal(0, 0.1, pairs)
    full = {REFERENCE: ref_full, "c0": ref_full + 0.1, "c1": ref_full + 0.2, "c2": ref_full + 1.0,
            "c3": ref_full + 5.0}
    cheap = {REFERENCE: ref_cheap, "c0": ref_cheap + 0.5, "c1": ref_cheap + 3.0, "c2": ref_cheap + 1.0,
             "c3": ref_cheap - 1.0}
    fetched_full, fetched_cheap = {}, {}
    mf = run_multi_fidelity(["c0", "c1", "c2", "c3"], fetched_cheap.update, _matrix_getter(cheap),
                            fetched_full.update, _matrix_getter(full), total_pairs=pairs, top_k=1,
                            objective="score", leaves=["score"], fidelity="x0:3", screen_pairs=4,
                            survivors=0.5, schedule="exhaustive")
    assert mf.survivors == ["c1", "c2"] and mf.screened_out == ["c0", "c3"]
    assert fetched_cheap == {"c0": 4, "c1": 4, "c2": 4, "c3": 4, REFERENCE: 4}
    assert set(fetched_full) == {"c1", "c2", REFERENCE} and fetched_full["c2"] == pairs
    outcome = mf.outcome
    assert outcome.selected == ["c2"]
    assert outcome.scores["c2"] == pytest.approx(full["c2"].mean())
    assert outcome.vs_set["c2"].mean == pytest.approx(1.0)
    assert "c3" not in outcome.scores and "c0" not in outcome.scores
    assert mf.screen_scores["c1"] == pytest.approx(cheap["c1"][:4].mean())
    # the same round by hand at full fidelity over the survivors
    by_hand = run_round(["c1", "c2"], lambda w: None, _matrix_getter(full), total_pairs=pairs, top_k=1,
                        objective="score", leaves=["score"])
    assert by_hand.selected == outcome.selected and by_hand.scores == outcome.scores
    assert mf.screen_images == 5 * 4 and mf.full_images == 2 * pairs + pairs
    assert mf.image_steps(12) == 20 * 3 + 48 * 12


@pytest.mark.parametrize("kwargs, message", [
    (dict(survivors=0.0), "survivors must be a fraction"), (dict(screen_pairs=0), "screen_pairs=0"),
    (dict(top_k=5), "top_k=5"),
])
def test_multi_fidelity_refuses_impossible_parameters(kwargs, message):
    get = _matrix_getter({REFERENCE: np.zeros(4), "a": np.ones(4)})
    args = dict(total_pairs=4, top_k=1, objective="score", leaves=["score"])
    args.update(kwargs)
    with pytest.raises(SearchError, match=message):
        run_multi_fidelity(["a"], lambda w: None, get, lambda w: None, get, **args)


def test_multi_fidelity_search_ends_on_full_fidelity_choices(tmp_path):
    """A real search on a tiny digits model: the screen's images are x0 readouts on 2 pairs (own checkpoint
    units), the promoted candidates' scores equal full-fidelity images made independently, the pick is the
    full-fidelity best survivor, and no screened-out candidate carries a score."""
    from headhunter import GuidanceSettings, HeadSet, get_registry
    from headhunter.engine.runner import Row, generate_rows
    from headhunter.format.schema import GenerationSettings
    from headhunter.search.search import search, SearchSettings
    from headhunter.plugins.digits.model import build_pipeline, build_transformer

    torch.manual_seed(0)
    pipe = build_pipeline(build_transformer(num_layers=2, num_attention_heads=3, attention_head_dim=8))
    pipe.set_progress_bar_config(disable=True)
    objective = get_registry().objective("sharpness")
    adapter = get_registry().adapter_for(pipe)
    sites = adapter.sites(pipe)
    candidates = [f"L{l}H{h}" for l in range(2) for h in range(3)]
    settings = SearchSettings(model="tiny", objective="sharpness", prompts=["3"], seeds=[0, 1, 2, 3], steps=4,
                              candidates=candidates, guidance=GuidanceSettings(scale=2.0), batch_size=8,
                              layer_baselines=False, schedule="multi-fidelity", screen_pairs=2, survivors=0.5,
                              first_pairs=2, fidelity="x0:2")
    assert settings.model_copy(update={"fidelity": None}).screen_fidelity() == "steps:1"  # the default
    result = search(pipe, settings, objective, out_dir=tmp_path, progress=False)
    r = result.rounds[0]
    assert r.fidelity == "x0:2" and len(r.screened_out) == 3
    promoted = [c for c in candidates if c not in r.screened_out]
    assert set(r.scores) == set(promoted)
    units = json.loads((tmp_path / "state.json").read_text())["units"]
    assert {k for k in units if k.endswith("@x0:2")} == {f"{c}@x0:2" for c in candidates} | {"baseline@x0:2"}
    assert all(len(units[f"{c}@x0:2"]) == 2 for c in candidates)
    gen = GenerationSettings(guidance=GuidanceSettings(scale=2.0), steps=4)
    full = {}
    for c in promoted:
        layer, head = int(c[1]), int(c[3])
        hs = HeadSet.from_heads([(layer, head, 1.0)], sites=sites, architecture=adapter.architecture)
        n = r.pairs[c]
        images = generate_rows(pipe, [Row(hs, "3", s) for s in range(n)], gen)
        full[c] = float(objective(images, ["3"] * n).double().mean())
        assert r.scores[c] == pytest.approx(full[c], abs=1e-6)
    survivors_final = [c for c in promoted if c not in r.dropped]
    assert r.added == [max(survivors_final, key=lambda c: full[c])]


def test_multi_fidelity_settings_are_checked_before_any_image():
    from headhunter.search.search import SearchSettings

    with pytest.raises(ValueError, match=r"fidelity 'x0:9': K must be in \[2, 3\]"):  # pydantic wraps SearchError
        SearchSettings(model="m", objective="o", prompts=["3"], seeds=[0], steps=4, candidates=["L0H0"],
                       batch_size=1, schedule="multi-fidelity", fidelity="x0:9")
