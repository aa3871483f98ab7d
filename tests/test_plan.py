"""The execution plan: settings validated once at the boundary (schema types), head sets compiled once into
per-site, per-row strengths, branches with their own settings, and each row's first perturbed block."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import headhunter
from headhunter import GuidanceSettings, HeadSet, HeadSetError, SearchError, get_registry
from headhunter.plan.strengths import batch_strengths
from headhunter.plan.plan import compile_plan
from tiny_pipes import build_sd3


@pytest.fixture(scope="module")
def sd3():
    return build_sd3()


def headset(pipe, notation, name="hs", **metadata):
    adapter = get_registry().adapter_for(pipe)
    return HeadSet.from_notation(notation, sites=adapter.sites(pipe), architecture=adapter.architecture,
                                 name=name, **metadata)


def test_settings_carry_from_headset_and_overrides_into_branches(sd3):
    a = headset(sd3, "L0H1", "a", guidance={"scale": 1.5, "start": 0.25, "cfg": 4.0})
    b = headset(sd3, "L1H0@0.5", "b", guidance={"scale": 2.0, "stop": 0.5})
    plan = compile_plan(sd3, [a, b], scale=[None, 3.0])
    ga, gb = (br.guidance for br in plan.branches)
    assert isinstance(ga, GuidanceSettings)
    assert (ga.scale, ga.start, ga.stop, ga.cfg) == (1.5, 0.25, 1.0, 4.0)
    assert (gb.scale, gb.start, gb.stop) == (3.0, 0.0, 0.5)
    whole = compile_plan(sd3, [a, b], settings=GuidanceSettings(scale=0.5, scope="image"))
    assert [br.scale for br in whole.branches] == [0.5, 0.5] and whole.scope == "image"
    # active branches by step: a in [0.25, 1), b in [0, 0.5)
    assert [plan.active(i, 4) for i in range(4)] == [(1,), (0, 1), (0,), (0,)]


def test_plan_strengths_equal_batch_strengths_and_are_built_once(sd3):
    a, b = headset(sd3, "L0H1, L1H2@0.5", "a"), headset(sd3, "L1H0", "b")
    plan = compile_plan(sd3, [a, b])
    strengths = plan.strengths((-1, -1, 0, 1), 2)
    expected = batch_strengths([None, None, a, b], plan.sites, repeat=2)
    assert set(strengths) == set(expected)
    for site in expected:
        assert torch.equal(strengths[site], expected[site])
        assert strengths.heads[site] == expected.heads[site] and strengths.samples[site] == expected.samples[site]
    assert plan.strengths((-1, -1, 0, 1), 2) is strengths  # cached per layout


def test_per_sample_rows_and_scales(sd3):
    a = headset(sd3, "L1H3", "a")
    plan = compile_plan(sd3, [a, None, a], per_sample=True, scale=2.0)
    (branch,) = plan.branches
    assert branch.per_row == (a, None, a)
    like = torch.zeros(3, 4, 8, 8)
    assert plan.row_scale(0, 3, like).flatten().tolist() == [2.0, 0.0, 2.0]
    s = plan.strengths((-1, 0), 3)
    assert s.samples["transformer_blocks.1.attn"] == [3, 5]


def test_first_block_from_declared_blocks(sd3):
    plan = compile_plan(sd3, [headset(sd3, "L1H0")])
    assert plan.blocks == tuple(f"transformer_blocks.{i}" for i in range(len(sd3.transformer.transformer_blocks)))
    assert plan.first_block(headset(sd3, "L1H0, L0H2@0.5")) == 0
    assert plan.first_block(headset(sd3, "L1H0")) == 1
    assert plan.first_block(None) == len(plan.blocks)


@pytest.mark.parametrize("kwargs, message", [
    (dict(scale=math.nan), r"scale=nan.*finite"),
    (dict(scale=math.inf), r"scale=inf.*allowed: \[0, inf\), finite"),
    (dict(scale=-1.0), r"scale=-1\.0.*allowed: \[0, inf\)"),
    (dict(start=1.5), r"start=1\.5.*allowed: \[0, 1\]"),
    (dict(start=0.8, stop=0.2), r"start=0\.8 is after stop=0\.2"),
    (dict(scope="bogus"), r"scope='bogus'.*'joint', 'image', 'pag_mask'"),
])
def test_apply_refuses_bad_settings_naming_value_and_range(sd3, kwargs, message):
    with pytest.raises(HeadSetError, match=message):
        headhunter.apply(sd3, headset(sd3, "L0H1"), **kwargs)
    assert "forward" not in sd3.transformer.__dict__  # nothing installed


def test_hunt_refuses_bad_scope_at_once_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(SearchError, match=r"scope='bogus'.*'joint', 'image', 'pag_mask'"):
        headhunter.hunt("no-such-model-is-ever-loaded", "digit-logprob", ["1"], [0], scope="bogus", out_dir=out,
                        progress=False)
    with pytest.raises(SearchError, match=r"scale=nan.*finite"):
        headhunter.hunt("no-such-model-is-ever-loaded", "digit-logprob", ["1"], [0], scale=float("nan"),
                        out_dir=out, progress=False)
    assert not out.exists()


def test_schema_refuses_non_finite_numbers():
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError):
            GuidanceSettings(scale=bad)
        with pytest.raises(ValueError):
            GuidanceSettings(cfg=bad)
    assert np.isfinite(GuidanceSettings().scale)
