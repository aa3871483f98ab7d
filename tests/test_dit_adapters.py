"""Adapters for the newer DiTs (issue 18): FLUX.2, Qwen-Image and Wan 2.x.

The invariant suite (tests/test_perturbations.py) runs over them through tests/tiny.py's FAMILIES; here:
site tables of the tiny and full-size configs (meta device, no weights), `inspect`, layouts decided from
each call (non-square, odd sizes, video frames), refusals, Wan's cross-attention left stock, and the
3-D blur's semantics.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from click.testing import CliRunner
from torch.utils._python_dispatch import TorchDispatchMode
from diffusers import Flux2Transformer2DModel, QwenImageTransformer2DModel, WanTransformer3DModel
from tiny import (
    FAMILIES,
    FRAMES,
    GRID,
    TEXT_LEN,
    flux2_inputs,
    forward,
    qwenimage_inputs,
    tiny_flux2,
    tiny_qwenimage,
    tiny_wan,
    wan_inputs,
)

from headhunter import HeadSet
from headhunter.contracts.adapter import TokenLayout
from headhunter.cli import make_cli
from headhunter.errors import ModelError
from headhunter.plugins.flux2.sites import flux2_sites
from headhunter.plugins.qwenimage.sites import qwenimage_sites
from headhunter.plugins.wan.sites import wan_sites
from headhunter.plugin_system.registry import get_registry
from headhunter.engine.attention import install

REGISTRY = get_registry()
NEW = ("flux2", "qwenimage", "wan")
WAN_1_3B = dict(num_attention_heads=12, attention_head_dim=128, num_layers=30, ffn_dim=8960)


def test_tiny_sites_and_paper_order():
    flux2, qwen, wan = tiny_flux2(), tiny_qwenimage(), tiny_wan()
    assert REGISTRY.adapter_for(flux2).sites(flux2) == flux2_sites(2, 2, 4)
    assert REGISTRY.adapter_for(qwen).sites(qwen) == qwenimage_sites(2, 4)
    assert REGISTRY.adapter_for(wan).sites(wan) == wan_sites(2, 4)
    assert [s.name for s in wan_sites(2, 4)] == ["blocks.0.attn1", "blocks.1.attn1"]
    assert [s.kind for s in flux2_sites(2, 2, 4)] == ["joint", "joint", "single", "single"]


@pytest.mark.slow
@pytest.mark.parametrize(("cls", "config", "name", "count", "heads", "last"), [
    (Flux2Transformer2DModel, {}, "flux2", 56, 48, "single_transformer_blocks.47.attn"),
    (QwenImageTransformer2DModel, {}, "qwenimage", 60, 24, "transformer_blocks.59.attn"),
    (WanTransformer3DModel, {}, "wan", 40, 40, "blocks.39.attn1"),
    (WanTransformer3DModel, WAN_1_3B, "wan", 30, 12, "blocks.29.attn1"),
])
def test_full_size_configs_on_the_meta_device(cls, config, name, count, heads, last):
    """The site counts docs/engine.md lists, from diffusers' config defaults (no weights)."""
    with torch.device("meta"):
        model = cls(**config)
    adapter = REGISTRY.adapter_for(model)
    sites = adapter.sites(model)
    assert adapter.name == adapter.architecture == name
    assert len(sites) == count and {s.num_heads for s in sites} == {heads} and sites[-1].name == last


@pytest.mark.slow
def test_published_tables_equal_the_live_sites():
    from headhunter.plugins.flux2 import sites as flux2
    from headhunter.plugins.qwenimage import sites as qwenimage
    from headhunter.plugins.wan import sites as wan

    with torch.device("meta"):
        f2, qi, w14, w13 = (Flux2Transformer2DModel(), QwenImageTransformer2DModel(), WanTransformer3DModel(),
                            WanTransformer3DModel(**WAN_1_3B))
    assert flux2_sites(*flux2.PUBLISHED["black-forest-labs/FLUX.2-dev"]) == REGISTRY.adapter_for(f2).sites(f2)
    assert qwenimage_sites(*qwenimage.PUBLISHED["Qwen/Qwen-Image"]) == REGISTRY.adapter_for(qi).sites(qi)
    assert wan_sites(*wan.PUBLISHED["Wan-AI/Wan2.1-T2V-14B-Diffusers"]) == REGISTRY.adapter_for(w14).sites(w14)
    assert wan_sites(*wan.PUBLISHED["Wan-AI/Wan2.1-T2V-1.3B-Diffusers"]) == REGISTRY.adapter_for(w13).sites(w13)
    # registered as base models: head sets name them without loading anything
    for repo_id, model in (("black-forest-labs/FLUX.2-dev", f2), ("Qwen/Qwen-Image", qi),
                           ("Wan-AI/Wan2.1-T2V-14B-Diffusers", w14), ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", w13)):
        headset = HeadSet.from_heads([(1, 3)], base_model=repo_id)
        adapter = REGISTRY.adapter_for(model)
        assert headset.metadata.architecture == adapter.architecture
        headset.validate_against(adapter.sites(model), adapter.architecture)


@pytest.mark.slow
@pytest.mark.parametrize(("class_name", "config", "sites", "pattern", "layout"), [
    ("Flux2Transformer2DModel", {}, "56 (2688 heads)", r"L8 +single_transformer_blocks\.0\.attn +48 heads +single",
     "[text | image]"),
    ("QwenImageTransformer2DModel", {}, "60 (1440 heads)", r"L59 +transformer_blocks\.59\.attn +24 heads +joint",
     "[text | image]"),
    ("WanTransformer3DModel", {}, "40 (1600 heads)", r"L39 +blocks\.39\.attn1 +40 heads +image", "attn2 stays stock"),
    ("WanTransformer3DModel", WAN_1_3B, "30 (360 heads)", r"L29 +blocks\.29\.attn1 +12 heads +image",
     "joint = image"),
])
def test_inspect_full_size_configs(tmp_path, class_name, config, sites, pattern, layout):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": class_name, **config}))
    result = CliRunner().invoke(make_cli(), ["inspect", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"sites:        {sites}" in result.output
    assert re.search(pattern, result.output) and layout in result.output


def test_inspect_tiny_configs(tmp_path):
    for name, builder in (("flux2", tiny_flux2), ("qwenimage", tiny_qwenimage), ("wan", tiny_wan)):
        builder().save_pretrained(tmp_path / name)
        result = CliRunner().invoke(make_cli(), ["inspect", str(tmp_path / name), "--json"])
        assert result.exit_code == 0, result.output
        data = json.loads(result.output)
        assert data["adapter"] == name and len(data["sites"]) == (4 if name == "flux2" else 2)


def _one_site(model, name, params, scope, site_index, inputs):
    adapter = REGISTRY.adapter_for(model)
    perturbation = REGISTRY.perturbation(name, **params)
    sites = adapter.sites(model)
    batch = inputs["hidden_states"].shape[0]
    with install(adapter, model, perturbation, scope) as inst, \
            inst.strengths({sites[site_index].name: torch.ones(batch, sites[site_index].num_heads)}):
        out = forward(model, inputs)
        layout = inst.layout
    with install(adapter, model, perturbation, scope, mode="reference") as inst, \
            inst.strengths({sites[site_index].name: torch.ones(batch, sites[site_index].num_heads)}):
        expected = forward(model, inputs)
    return out, expected, layout


@pytest.mark.slow
@pytest.mark.parametrize("grid", [(3, 5), (5, 3), (1, 7)])
@pytest.mark.parametrize("family", NEW)
def test_blur_on_odd_and_non_square_sizes_equals_the_reference(family, grid):
    builder, make = FAMILIES[family]
    model = builder()
    inputs = make(model, 1, grid=grid)
    for params in ({"sigma": 0.8}, {"sigma": 0.8, "temporal_sigma": 0.6}):
        out, expected, layout = _one_site(model, "blur", params, "image", -1, inputs)
        assert layout["grid"] == grid
        assert (out - expected).abs().max() <= 1e-5 * expected.abs().max()
        assert (out - forward(model, inputs)).abs().max() > 1e-4


def test_wan_layout_comes_from_the_video_shape():
    model = tiny_wan()
    adapter = REGISTRY.adapter_for(model)
    site = adapter.sites(model)[0].name
    for frames, grid in ((FRAMES, GRID), (2, (3, 5)), (1, (4, 6))):
        with install(adapter, model, "blur", "image") as inst, inst.strengths({site: torch.ones(1, 4)}):
            forward(model, wan_inputs(model, 1, frames=frames, grid=grid))
            assert inst.layout["grid"] == grid and inst._state.cache["frames"] == frames


def test_wan_cross_attention_stays_stock():
    model = tiny_wan()
    cross = {name: p for name, p in model.attn_processors.items() if ".attn2." in name}
    with install(REGISTRY.adapter_for(model), model, "softpag") as inst:
        assert all(model.attn_processors[name] is p for name, p in cross.items())
        assert all(type(model.get_submodule(s.name).processor).__name__ == "WanPerturbingProcessor" for s in inst.sites)


def test_flux2_grid_is_read_from_each_call_not_cached_on_the_ids_tensor():
    """The FLUX.1 bug (issue 12): a grid cached under the ids tensor's address goes stale when the buffer is
    refilled in place. FLUX.2 reads the ids of every perturbed forward."""
    model = tiny_flux2()
    wide, tall = flux2_inputs(model, 1, grid=(4, 6)), flux2_inputs(model, 1, grid=(6, 4))
    fresh_out, _, fresh_layout = _one_site(model, "blur", {"sigma": 0.8}, "image", -1, tall)
    assert fresh_layout["grid"] == (6, 4)
    adapter = REGISTRY.adapter_for(model)
    site = adapter.sites(model)[-1].name
    ids = wide["img_ids"].clone()
    blur = REGISTRY.perturbation("blur", sigma=0.8)
    with install(adapter, model, blur, "image") as inst, inst.strengths({site: torch.ones(1, 4)}):
        forward(model, {**wide, "img_ids": ids})
        assert inst.layout["grid"] == (4, 6)
        ids.copy_(tall["img_ids"])  # same tensor, same address, new grid
        out = forward(model, {**tall, "img_ids": ids})
        assert inst.layout["grid"] == (6, 4)
    assert torch.equal(out, fresh_out)


def test_flux2_reference_image_tokens_follow_the_target_and_blur_uses_the_targets_grid():
    """An edit appends reference-image tokens (T > 0) after the target's (issue 24): the layout has them as
    `ref_len`, the grid is the target's, and a finite blur runs (it was refused while the grid spanned both)."""
    model = tiny_flux2()
    inputs = flux2_inputs(model, 1)
    target = inputs["img_ids"].shape[-2]
    ref_ids = inputs["img_ids"][..., :6, :].clone()
    ref_ids[..., 0] = 10
    inputs = {**inputs, "img_ids": torch.cat([inputs["img_ids"], ref_ids], dim=-2),
              "hidden_states": torch.cat([inputs["hidden_states"], inputs["hidden_states"][:, :6]], dim=1)}
    adapter = REGISTRY.adapter_for(model)
    site = adapter.sites(model)[0].name
    for perturbation in ("blur", "softpag"):
        with install(adapter, model, perturbation, "image") as inst, inst.strengths({site: torch.ones(1, 4)}):
            forward(model, inputs)
            assert inst._state.ref_len == 6
            grid = inst.layout["grid"]
            assert grid is not None and grid[0] * grid[1] == target


def test_flux2_single_stream_needs_the_text_length():
    model = tiny_flux2()
    site = "single_transformer_blocks.0.attn"
    with install(REGISTRY.adapter_for(model), model, "softpag", "image") as inst, \
            inst.strengths({site: torch.ones(1, 4)}):
        with pytest.raises(ModelError, match="text length"):
            model.get_submodule(site)(hidden_states=torch.randn(1, 10, 64))


def test_qwenimage_text_mask_with_padding_is_refused_and_an_all_valid_one_is_no_mask():
    model = tiny_qwenimage()
    inputs = qwenimage_inputs(model, 2)
    padded = torch.ones(2, TEXT_LEN, dtype=torch.long)
    padded[1, -2:] = 0
    site = REGISTRY.adapter_for(model).sites(model)[0].name
    u = {site: torch.tensor([[0.0] * 4, [1.0] * 4])}
    with install(REGISTRY.adapter_for(model), model, "softpag") as inst:
        stock = forward(model, {**inputs, "encoder_hidden_states_mask": padded})  # not perturbed: stock, mask ok
        with inst.strengths(u):
            with pytest.raises(ModelError, match="text mask that has padding"):
                forward(model, {**inputs, "encoder_hidden_states_mask": padded})
            unmasked = forward(model, inputs)
            all_valid = forward(model, {**inputs, "encoder_hidden_states_mask": torch.ones(2, TEXT_LEN)})
    assert torch.equal(all_valid, unmasked) and torch.equal(all_valid[0], forward(model, inputs)[0])
    assert torch.equal(stock, forward(model, {**inputs, "encoder_hidden_states_mask": padded}))


@pytest.mark.parametrize("family", NEW)
def test_unknown_processors_are_refused_naming_the_site(family):
    model = FAMILIES[family][0]()
    site = REGISTRY.adapter_for(model).sites(model)[-1]

    class Custom:
        _attention_backend = None
        _parallel_config = None

        def __call__(self, *args, **kwargs):
            raise AssertionError("never called")

    module = model.get_submodule(site.name)
    original = module.processor
    module.processor = Custom()
    with pytest.raises(ModelError, match=re.escape(f"{site.name} runs Custom")):
        install(REGISTRY.adapter_for(model), model, "softpag")
    module.processor = original
    assert not any(type(p).__name__.endswith("PerturbingProcessor") for p in model.attn_processors.values())


@pytest.mark.parametrize("family", NEW)
def test_attention_backend_passes_through(family):
    model = FAMILIES[family][0]()
    inputs = FAMILIES[family][1](model, 2)
    model.set_attention_backend("_native_math")
    try:
        stock = forward(model, inputs)
        with install(REGISTRY.adapter_for(model), model, "softpag") as inst:
            processor = model.get_submodule(inst.sites[0].name).processor
            assert processor._attention_backend == processor.original._attention_backend is not None
            with inst.strengths({s.name: torch.tensor([[0.0] * 4, [1.0] * 4]) for s in inst.sites}):
                out = forward(model, inputs)
            assert torch.equal(out[0], stock[0])
    finally:
        model.set_attention_backend("native")  # set_attention_backend also sets diffusers' global active backend
        model.reset_attention_backend()


# ----- the 3-D blur, on the perturbation itself ----------------------------------------------------------------
def _qkv(frames, rows, cols, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = frames * rows * cols
    return [torch.randn(1, 2, n, 8, generator=g, dtype=torch.float64) for _ in range(3)]


def test_temporal_sigma_zero_blurs_each_frame_on_its_own():
    frames, rows, cols = 3, 3, 5
    q, k, v = _qkv(frames, rows, cols)
    blur = REGISTRY.perturbation("blur", sigma=1.3)
    video = TokenLayout(text_len=0, image_len=frames * rows * cols, text_first=False, grid=(rows, cols), frames=frames)
    image = TokenLayout(text_len=0, image_len=rows * cols, text_first=False, grid=(rows, cols))
    blurred = blur._blur(q, video).reshape(1, 2, frames, rows * cols, 8)
    for f in range(frames):
        frame_q = q.reshape(1, 2, frames, rows * cols, 8)[:, :, f]
        assert torch.allclose(blurred[:, :, f], blur._blur(frame_q, image))


def test_infinite_sigmas_are_the_limits():
    frames, rows, cols = 3, 2, 3
    q, k, v = _qkv(frames, rows, cols)
    layout = TokenLayout(text_len=0, image_len=frames * rows * cols, text_first=False, grid=(rows, cols), frames=frames)
    both_inf = REGISTRY.perturbation("blur", sigma=math.inf, temporal_sigma=math.inf).target(q, k, v, layout)
    huge = REGISTRY.perturbation("blur", sigma=1e6, temporal_sigma=1e6).target(q, k, v, layout)
    assert torch.allclose(both_inf, huge, atol=1e-9)
    per_frame = REGISTRY.perturbation("blur", sigma=math.inf).target(q, k, v, layout)
    huge_spatial = REGISTRY.perturbation("blur", sigma=1e6).target(q, k, v, layout)
    assert torch.allclose(per_frame, huge_spatial, atol=1e-9)
    rows_of_frame = per_frame.reshape(1, 2, frames, rows * cols, 8)
    assert torch.equal(rows_of_frame[:, :, :, :1].expand_as(rows_of_frame), rows_of_frame)  # one row per frame
    assert not torch.allclose(rows_of_frame[:, :, 0], rows_of_frame[:, :, 1])


def test_a_grid_that_does_not_cover_the_frames_is_refused():
    q, k, v = _qkv(2, 2, 3)
    bad = TokenLayout(text_len=0, image_len=12, text_first=False, grid=(2, 3), frames=1)
    with pytest.raises(ModelError, match="frames=1"):
        REGISTRY.perturbation("blur", sigma=1.0).target(q, k, v, bad)
    with pytest.raises(Exception, match="temporal_sigma"):
        REGISTRY.perturbation("blur", temporal_sigma=-1.0)


@pytest.mark.parametrize("family", NEW)
@pytest.mark.parametrize("site_index", [0, -1])
def test_whole_layer_identity_equals_diffusers_attention_score_skip(family, site_index):
    """Every head of one site at u = 1 with `identity` and scope `joint` is diffusers' own attention-score skip
    (`AttentionScoreSkipFunctionMode`: scaled_dot_product_attention returns V), the mechanism behind
    `LayerSkipConfig(skip_attention_scores=True)` and block-level STG. diffusers 0.42.1's layer-skip hook
    cannot be installed on these processors (its registry lacks them), so the mode is entered around the
    site's module here, exactly as that hook does."""
    from diffusers.hooks.layer_skip import AttentionScoreSkipFunctionMode

    model = FAMILIES[family][0]()
    inputs = FAMILIES[family][1](model, 2)
    site = REGISTRY.adapter_for(model).sites(model)[site_index]
    with install(REGISTRY.adapter_for(model), model, "identity", "joint") as inst, \
            inst.strengths({site.name: torch.ones(2, site.num_heads)}):
        ours = forward(model, inputs)
    module = model.get_submodule(site.name)
    stock_forward = module.forward

    def skipped(*args, **kwargs):
        with AttentionScoreSkipFunctionMode():
            return stock_forward(*args, **kwargs)

    module.forward = skipped
    try:
        theirs = forward(model, inputs)
    finally:
        del module.forward
    assert (ours - theirs).abs().max() <= 1e-6 * theirs.abs().max()
    assert (ours - forward(model, inputs)).abs().max() > 1e-3


class _CopySpy(TorchDispatchMode):
    """Counts copies to float64 (the FLUX.2 adapter's one host copy of img_ids is one of them)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.__name__.startswith("_to_copy") and kwargs.get("dtype") == torch.float64:
            self.count += 1
        return func(*args, **kwargs)


@pytest.mark.parametrize("num_blocks", [(1, 1), (2, 3)])
def test_flux2_reads_img_ids_once_per_forward_not_per_attention_call(num_blocks):
    """docs/engine.md: when the layout matters (scope image, blur) FLUX.2 copies img_ids to the host once per
    perturbed forward, whatever the number of perturbed sites (grid and reference tokens); joint scope with an
    all-rows target not at all."""
    model = tiny_flux2(num_layers=num_blocks[0], num_single_layers=num_blocks[1])
    inputs = flux2_inputs(model, 1)
    adapter = REGISTRY.adapter_for(model)
    everywhere = {s.name: torch.ones(1, 4) for s in adapter.sites(model)}
    with _CopySpy() as spy:
        forward(model, inputs)
    stock = spy.count
    for name, params, scope, extra in (("blur", {"sigma": 1.0}, "image", 1), ("blur", {"sigma": math.inf}, "joint", 1),
                                       ("softpag", {}, "image", 1), ("softpag", {}, "joint", 0)):
        with install(adapter, model, REGISTRY.perturbation(name, **params), scope) as inst, inst.strengths(everywhere):
            with _CopySpy() as spy:
                forward(model, inputs)
        assert spy.count - stock == extra, (name, params, scope)
