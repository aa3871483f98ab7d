"""`headhunter.apply` on tiny FLUX.2, Qwen-Image and Wan pipelines, checked against hand-written reference loops
(issue 18). As in tests/test_guidance.py, the loops run every pass as its own transformer forward and combine
them by the formula of DESIGN.md written out inline (after the pipeline's own combination, e.g. Qwen-Image's
norm-rescaled true CFG); they use the engine only for the perturbed pass itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu
from diffusers.pipelines.flux2.pipeline_flux2 import retrieve_timesteps as flux2_timesteps
from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift
from diffusers.pipelines.qwenimage.pipeline_qwenimage import retrieve_timesteps as qwen_timesteps
from tiny_dit_pipes import (
    FLUX2_CALL,
    QWEN_CALL,
    WAN_CALL,
    build_flux2,
    build_flux2_klein,
    build_qwenimage,
    build_wan,
    prompt_embeds,
    with_prompt_table,
)

import headhunter
from headhunter import HeadSet, get_registry
from headhunter.plan.strengths import batch_strengths
from headhunter.format.headset import load_headset_file
from headhunter.contracts.objective import Objective, as_tensor_images
from headhunter.workflow.hunt import hunt
from headhunter.engine.attention import install

TOL = 1e-4
STEPS = 3
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def flux2():
    return build_flux2()


@pytest.fixture(scope="module")
def qwen():
    return build_qwenimage()


@pytest.fixture(scope="module")
def wan():
    return build_wan()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_headset(pipe, notation: str) -> HeadSet:
    adapter = get_registry().adapter_for(pipe)
    return HeadSet.from_notation(notation, sites=adapter.sites(pipe), architecture=adapter.architecture, name="t")


def _perturbed(pipe, installation, headset, rows, **inputs):
    with installation.strengths(batch_strengths([headset], installation.sites, repeat=rows)):
        return pipe.transformer(**inputs, return_dict=False)[0]


def assert_close(actual, expected, tol=TOL):
    assert actual.shape == expected.shape
    err = (actual - expected).abs().max().item()
    assert err <= tol, f"max |diff| {err:.3g} > {tol}"


# ----- reference loops ---------------------------------------------------------------------------------------
@torch.no_grad()
def flux2_reference(pipe, pe, branches, guidance_scale=4.0, num_images=1, perturbation="softpag", npe=None):
    """Flux2Pipeline's loop (packed latents, 4-axis ids, embedded guidance, no CFG), one pass per forward; with
    `npe`, Flux2KleinPipeline's (no guidance embedding; CFG `neg + s (cond - neg)` from a separate call)."""
    pe, text_ids = pipe.encode_prompt(None, device=CPU, num_images_per_prompt=num_images, prompt_embeds=pe)
    if npe is not None:
        npe, neg_ids = pipe.encode_prompt(None, device=CPU, num_images_per_prompt=num_images, prompt_embeds=npe)
    rows = pe.shape[0]
    latents, latent_ids = pipe.prepare_latents(rows, pipe.transformer.config.in_channels // 4, FLUX2_CALL["height"],
                                               FLUX2_CALL["width"], pe.dtype, CPU, gen())
    mu = compute_empirical_mu(image_seq_len=latents.shape[1], num_steps=STEPS)
    timesteps, _ = flux2_timesteps(pipe.scheduler, STEPS, CPU, sigmas=np.linspace(1.0, 1 / STEPS, STEPS), mu=mu)
    guidance = torch.full([rows], guidance_scale) if npe is None else None
    with install(get_registry().adapter_for(pipe), pipe, perturbation, "joint") as inst:
        for t in timesteps:
            x = dict(hidden_states=latents, timestep=t.expand(rows) / 1000, guidance=guidance,
                     encoder_hidden_states=pe, txt_ids=text_ids, img_ids=latent_ids)
            cond = pipe.transformer(**x, return_dict=False)[0]
            pred = cond
            if npe is not None:
                neg = pipe.transformer(**{**x, "encoder_hidden_states": npe, "txt_ids": neg_ids}, return_dict=False)[0]
                pred = neg + guidance_scale * (cond - neg)
            for headset, w in branches:
                pred = pred + w * (cond - _perturbed(pipe, inst, headset, rows, **x))
            latents = pipe.scheduler.step(pred, t, latents, return_dict=False)[0]
    if npe is not None:  # Flux2KleinPipeline returns unpacked, de-normalised, unpatchified latents
        side = 2 * (FLUX2_CALL["height"] // (pipe.vae_scale_factor * 2))
        latents = pipe._unpack_latents_with_ids(latents, latent_ids, side // 2, side // 2)
        bn = pipe.vae.bn
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps)
        latents = pipe._unpatchify_latents(latents * std + bn.running_mean.view(1, -1, 1, 1))
    return latents


@torch.no_grad()
def qwen_reference(pipe, pe, branches, true_cfg=1.0, npe=None, num_images=1):
    """QwenImagePipeline's loop: cond under cache_context("cond"); with true CFG the negative pass, then
    `comb = neg + s (cond - neg)` rescaled to the norm of cond (the pipeline's rule); then + w (cond - ptb)."""
    pe, _ = pipe.encode_prompt(None, device=CPU, num_images_per_prompt=num_images, prompt_embeds=pe)
    rows = pe.shape[0]
    height, width = QWEN_CALL["height"], QWEN_CALL["width"]
    latents = pipe.prepare_latents(rows, pipe.transformer.config.in_channels // 4, height, width, pe.dtype, CPU,
                                   gen())
    img_shapes = [[(1, height // pipe.vae_scale_factor // 2, width // pipe.vae_scale_factor // 2)]] * rows
    cfg = pipe.scheduler.config
    mu = calculate_shift(latents.shape[1], cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                         cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
    timesteps, _ = qwen_timesteps(pipe.scheduler, STEPS, CPU, sigmas=np.linspace(1.0, 1 / STEPS, STEPS), mu=mu)
    if npe is not None:
        npe, _ = pipe.encode_prompt(None, device=CPU, num_images_per_prompt=num_images, prompt_embeds=npe)
    with install(get_registry().adapter_for(pipe), pipe, "softpag", "joint") as inst:
        for t in timesteps:
            x = dict(hidden_states=latents, timestep=t.expand(rows) / 1000, img_shapes=img_shapes)
            cond = pipe.transformer(**x, encoder_hidden_states=pe, return_dict=False)[0]
            pred = cond
            if npe is not None and true_cfg > 1:
                neg = pipe.transformer(**x, encoder_hidden_states=npe, return_dict=False)[0]
                comb = neg + true_cfg * (cond - neg)
                pred = comb * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))
            for headset, w in branches:
                pred = pred + w * (cond - _perturbed(pipe, inst, headset, rows, **x, encoder_hidden_states=pe))
            latents = pipe.scheduler.step(pred, t, latents, return_dict=False)[0]
    return latents


@torch.no_grad()
def wan_reference(pipe, pe, branches, s=1.0, npe=None, num_videos=1, perturbation="softpag"):
    """WanPipeline's loop (Wan 2.1: one transformer): cond and uncond as separate calls,
    `uncond + s (cond - uncond)` when s > 1, then + w (cond - ptb)."""
    do_cfg = s > 1.0
    pe, npe = pipe.encode_prompt(None, do_classifier_free_guidance=do_cfg, num_videos_per_prompt=num_videos,
                                 prompt_embeds=pe, negative_prompt_embeds=npe, device=CPU)
    rows = pe.shape[0] * num_videos  # WanPipeline repeats prompt_embeds it computes, not ones it is given
    latents = pipe.prepare_latents(rows, pipe.transformer.config.in_channels, WAN_CALL["height"], WAN_CALL["width"],
                                   WAN_CALL["num_frames"], torch.float32, CPU, gen())
    pipe.scheduler.set_timesteps(STEPS, device=CPU)
    with install(get_registry().adapter_for(pipe), pipe, perturbation, "joint") as inst:
        for t in pipe.scheduler.timesteps:
            x = dict(hidden_states=latents, timestep=t.expand(rows))
            cond = pipe.transformer(**x, encoder_hidden_states=pe, return_dict=False)[0]
            pred = cond
            if do_cfg:
                uncond = pipe.transformer(**x, encoder_hidden_states=npe, return_dict=False)[0]
                pred = uncond + s * (cond - uncond)
            for headset, w in branches:
                pred = pred + w * (cond - _perturbed(pipe, inst, headset, rows, **x, encoder_hidden_states=pe))
            latents = pipe.scheduler.step(pred, t, latents, return_dict=False)[0]
    return latents


def run(pipe, call, **kwargs):
    out = pipe(num_inference_steps=STEPS, generator=gen(), output_type="latent", **call, **kwargs)
    return out.frames if hasattr(out, "frames") else out.images


class RowCounter:
    """Rows of every real transformer forward (a pre-hook on the transformer's first module call)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.rows: list[int] = []
        self._hook = module.register_forward_pre_hook(lambda m, args: self.rows.append(args[0].shape[0]))

    def close(self) -> None:
        self._hook.remove()


# ----- FLUX.2 ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_images", [1, 2])
def test_flux2_matches_reference_loop(flux2, num_images):
    hs = make_headset(flux2, "L0H1, L1H0@0.6")  # L1 is the single-stream block
    pe = prompt_embeds()
    expected = flux2_reference(flux2, pe, [(hs, 2.0)], num_images=num_images)
    with headhunter.apply(flux2, hs, scale=2.0):
        actual = run(flux2, FLUX2_CALL, prompt_embeds=pe, guidance_scale=4.0, num_images_per_prompt=num_images)
    assert_close(actual, expected)
    stock = run(flux2, FLUX2_CALL, prompt_embeds=pe, guidance_scale=4.0, num_images_per_prompt=num_images)
    assert (actual - stock).abs().max() > 1e-3


def test_flux2_blur_reads_the_grid_of_the_pipeline_call(flux2):
    hs = make_headset(flux2, "L0H0, L1H1")
    pe = prompt_embeds()
    blur = get_registry().perturbation("blur", sigma=1.0)
    expected = flux2_reference(flux2, pe, [(hs, 1.5)], perturbation=blur)
    with headhunter.apply(flux2, hs, scale=1.5, perturbation=blur) as handle:
        actual = run(flux2, FLUX2_CALL, prompt_embeds=pe, guidance_scale=4.0)
        assert handle.installation.layout["grid"] == (8, 8)
    assert_close(actual, expected)


def test_flux2_klein_cfg_perturbs_only_the_conditional_pass():
    """Flux2KleinPipeline runs cond and uncond as separate calls under cache_context while its
    do_classifier_free_guidance is true."""
    pipe = build_flux2_klein()
    hs = make_headset(pipe, "L0H1, L1H0")
    pe, npe = prompt_embeds(), prompt_embeds(1, 4, seed=1)
    expected = flux2_reference(pipe, pe, [(hs, 2.0)], guidance_scale=3.0, npe=npe)
    counter = RowCounter(pipe.transformer.x_embedder)
    with headhunter.apply(pipe, hs, scale=2.0) as handle:
        actual = run(pipe, FLUX2_CALL, prompt_embeds=pe, negative_prompt_embeds=npe, guidance_scale=3.0)
    counter.close()
    assert_close(actual, expected)
    assert counter.rows == [2, 1] * STEPS
    assert handle.calls["guided_steps"] == STEPS


# ----- Qwen-Image ------------------------------------------------------------------------------------------------
def test_qwenimage_without_true_cfg_matches_reference_loop(qwen):
    hs = make_headset(qwen, "L0H1, L1H0@0.5")
    pe = prompt_embeds()
    expected = qwen_reference(qwen, pe, [(hs, 2.0)])
    with headhunter.apply(qwen, hs, scale=2.0):
        actual = run(qwen, QWEN_CALL, prompt_embeds=pe)
    assert_close(actual, expected)
    assert (actual - run(qwen, QWEN_CALL, prompt_embeds=pe)).abs().max() > 1e-3


def test_qwenimage_true_cfg_perturbs_only_the_conditional_pass(qwen):
    hs = make_headset(qwen, "L0H0, L1H1")
    pe, npe = prompt_embeds(), prompt_embeds(1, 4, seed=1)
    expected = qwen_reference(qwen, pe, [(hs, 2.0)], true_cfg=3.0, npe=npe)
    counter = RowCounter(qwen.transformer.img_in)
    with headhunter.apply(qwen, hs, scale=2.0) as handle:
        actual = run(qwen, QWEN_CALL, prompt_embeds=pe, negative_prompt_embeds=npe, true_cfg_scale=3.0)
    counter.close()
    assert_close(actual, expected)
    assert counter.rows == [2, 1] * STEPS  # per step: [cond | ptb], then the negative pass alone, stock
    assert handle.calls == {"forwards": 2 * STEPS, "guided_steps": STEPS, "perturbed_rows": STEPS}


# ----- Wan ---------------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("s, num_videos", [(3.0, 1), (1.0, 1), (3.0, 2)])
def test_wan_matches_reference_loop(wan, s, num_videos):
    """WanPipeline runs cond and uncond as separate calls under cache_context("cond"/"uncond") even though its
    do_classifier_free_guidance is true: only the cond call gets the perturbed rows."""
    hs = make_headset(wan, "L0H1, L1H0@0.5")
    pe, npe = prompt_embeds(), prompt_embeds(1, 4, seed=1)
    expected = wan_reference(wan, pe, [(hs, 2.0)], s=s, npe=npe, num_videos=num_videos)
    counter = RowCounter(wan.transformer.patch_embedding)
    with headhunter.apply(wan, hs, scale=2.0) as handle:
        actual = run(wan, WAN_CALL, prompt_embeds=pe, negative_prompt_embeds=npe, guidance_scale=s,
                     num_videos_per_prompt=num_videos)
    counter.close()
    assert_close(actual, expected)
    per_step = [2 * num_videos, num_videos] if s > 1 else [2 * num_videos]
    assert counter.rows == per_step * STEPS
    assert handle.calls["guided_steps"] == STEPS
    stock = run(wan, WAN_CALL, prompt_embeds=pe, negative_prompt_embeds=npe, guidance_scale=s,
                num_videos_per_prompt=num_videos)
    assert (actual - stock).abs().max() > 1e-3


@pytest.mark.slow
def test_wan_block_level_stg_with_temporal_blur_matches_reference_loop(wan):
    """Block-level STG (every head of block 1, identity) and a spatio-temporal blur of single heads."""
    sites = get_registry().adapter_for(wan).sites(wan)
    stg = HeadSet.from_heads([(1, h) for h in range(sites[1].num_heads)], sites=sites, architecture="wan", name="stg")
    pe, npe = prompt_embeds(), prompt_embeds(1, 4, seed=1)
    for perturbation, hs in (("identity", stg), (get_registry().perturbation("blur", sigma=1.0, temporal_sigma=1.0),
                                                 make_headset(wan, "L0H0, L1H1"))):
        expected = wan_reference(wan, pe, [(hs, 1.5)], s=3.0, npe=npe, perturbation=perturbation)
        with headhunter.apply(wan, hs, scale=1.5, perturbation=perturbation):
            actual = run(wan, WAN_CALL, prompt_embeds=pe, negative_prompt_embeds=npe, guidance_scale=3.0)
        assert_close(actual, expected)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["flux2", "qwen", "wan"])
def test_remove_restores_bit_identical_outputs(request, name):
    pipe = request.getfixturevalue(name)
    call = {"flux2": FLUX2_CALL, "qwen": QWEN_CALL, "wan": WAN_CALL}[name]
    extra = {"wan": dict(negative_prompt_embeds=prompt_embeds(1, 4, 1), guidance_scale=3.0)}.get(name, {})
    stock = run(pipe, call, prompt_embeds=prompt_embeds(), **extra)
    handle = headhunter.apply(pipe, make_headset(pipe, "L0H0"), scale=2.0)
    run(pipe, call, prompt_embeds=prompt_embeds(), **extra)
    handle.remove()
    assert torch.equal(run(pipe, call, prompt_embeds=prompt_embeds(), **extra), stock)


class Brightness(Objective):
    """Mean pixel value: a cheap objective every head moves a little."""

    name = "test-brightness"

    def score(self, images, prompts):
        return as_tensor_images(images).mean(dim=(1, 2, 3))


@pytest.mark.slow
@pytest.mark.parametrize("build", [build_flux2, build_qwenimage])
def test_hunt_and_the_head_set_format_work_unchanged(build, tmp_path):
    """The search, head-set files and apply need nothing model-specific beyond the adapter."""
    pipe = with_prompt_table(build())
    adapter = get_registry().adapter_for(pipe)
    result = hunt(pipe, Brightness(), prompts=["a cat", "a dog"], seeds=[0], steps=2, rounds=1, top_k=1, scale=2.0,
                  candidates=["L0H0", "L0H1", "L1H0"], layer_baselines=False, batch_size=8, progress=False,
                  pipeline_kwargs=dict(height=32, width=32))
    scores = result.rounds[0].scores
    assert len(scores) == 3 and len(set(scores.values())) == 3  # every candidate head changed the images
    assert result.headset.metadata.architecture == adapter.architecture and len(result.headset) == 1
    path = result.headset.save(tmp_path / "found.safetensors")
    loaded = load_headset_file(path)
    loaded.validate_against(adapter.sites(pipe), adapter.architecture)
    assert loaded.notation() == result.headset.notation()
    with headhunter.apply(pipe, loaded, scale=2.0):
        guided = pipe(prompt="a cat", num_inference_steps=2, generator=gen(), output_type="latent", height=32,
                      width=32).images
    assert torch.isfinite(guided).all()


def test_wan_from_prompt_strings_with_its_text_encoder_matches_reference_loop():
    """The whole WanPipeline (tiny UMT5 text encoder, negative prompt, CFG) from prompt strings."""
    from tiny_dit_pipes import WAN_TEXT_LEN

    pipe = build_wan(text_encoder=True)
    hs = make_headset(pipe, "L0H0, L1H1@0.5")
    kw = dict(max_sequence_length=WAN_TEXT_LEN, device=CPU)
    pe, npe = pipe.encode_prompt("a photo of a red cat", "a blue dog", do_classifier_free_guidance=True, **kw)
    expected = wan_reference(pipe, pe, [(hs, 2.0)], s=4.0, npe=npe)
    with headhunter.apply(pipe, hs, scale=2.0):
        actual = run(pipe, WAN_CALL, prompt="a photo of a red cat", negative_prompt="a blue dog", guidance_scale=4.0,
                     max_sequence_length=WAN_TEXT_LEN)
    assert_close(actual, expected)
    stock = run(pipe, WAN_CALL, prompt="a photo of a red cat", negative_prompt="a blue dog", guidance_scale=4.0,
                max_sequence_length=WAN_TEXT_LEN)
    assert (actual - stock).abs().max() > 1e-3


def test_a_video_is_scored_as_the_mean_of_its_frames():
    g = torch.Generator().manual_seed(0)
    videos = torch.rand(2, 3, 3, 8, 8, generator=g)
    scores = Brightness()(videos, ["a", "b"])
    assert scores.shape == (2,) and torch.allclose(scores, videos.mean(dim=(1, 2, 3, 4)))
    frame_scores = Brightness()(videos.flatten(0, 1), ["x"])
    assert torch.allclose(scores, frame_scores.view(2, 3).mean(dim=1))


def test_hunt_on_wan_scores_videos_and_writes_its_report(tmp_path):
    """hunt on a video pipeline: each candidate's videos are scored frame by frame (mean over frames), and the
    report shows each video's middle frame."""
    from tiny_dit_pipes import WAN_TEXT_LEN

    pipe = build_wan(text_encoder=True)
    result = hunt(pipe, Brightness(), prompts=["a cat"], seeds=[0], steps=2, rounds=1, top_k=1, scale=2.0,
                  candidates=["L0H0", "L1H1"], layer_baselines=False, batch_size=4, progress=False,
                  out_dir=tmp_path, eval_seeds=[5],
                  pipeline_kwargs=dict(max_sequence_length=WAN_TEXT_LEN, **WAN_CALL))
    scores = result.rounds[0].scores
    assert len(scores) == 2 and scores["L0H0"] != scores["L1H1"]
    assert result.headset.metadata.architecture == "wan"
    assert {"index.md", "grid.png", "headset.safetensors"} <= {p.name for p in tmp_path.iterdir()}


# ----- Wan 2.2 A14B: two experts (issue 24, item 3) -----------------------------------------------------------
def _wan22():
    """WanPipeline with a second, differently seeded expert (`transformer_2`) and `boundary_ratio=0.9`: with
    3 steps (shift 3), step 0 runs `transformer` (t >= 900) and steps 1-2 `transformer_2`."""
    from diffusers import WanPipeline

    first, second = build_wan(seed=0), build_wan(seed=1)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=first.vae, scheduler=first.scheduler,
                       transformer=first.transformer, transformer_2=second.transformer, boundary_ratio=0.9)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_wan22_guides_both_experts_like_a_hooked_reference():
    """A head set naming sites of both experts (`transformer_2.blocks.{i}.attn1` for the second) guides the
    steps of each; equal (CFG off) to the pipeline whose two transformers return cond + w (cond - perturbed)."""
    pipe = _wan22()
    adapter = get_registry().adapter_for(pipe)
    names = [s.name for s in adapter.sites(pipe)]
    assert names == ["blocks.0.attn1", "blocks.1.attn1", "transformer_2.blocks.0.attn1", "transformer_2.blocks.1.attn1"]
    hs = make_headset(pipe, "L0H1, L3H0@0.5")  # one site of each expert
    pe = prompt_embeds()
    call = dict(WAN_CALL, prompt_embeds=pe, guidance_scale=1.0, num_inference_steps=STEPS, output_type="latent")

    def run():
        with torch.no_grad():
            return pipe(**call, generator=gen()).frames

    stock = run()
    installation = install(adapter, pipe, "softpag", "joint")
    seen = []

    def hook(module, args, kwargs, output):
        if seen and seen[-1] == "busy":
            return None
        seen.append("busy")
        with installation.strengths(batch_strengths([hs], installation.sites, repeat=kwargs["hidden_states"].shape[0])):
            ptb = module(*args, **kwargs)[0]
        seen[-1] = module
        cond = output[0]
        return (cond + 2.0 * (cond - ptb),) + tuple(output[1:])

    handles = [t.register_forward_hook(hook, with_kwargs=True) for t in (pipe.transformer, pipe.transformer_2)]
    try:
        reference = run()
    finally:
        for h in handles:
            h.remove()
        installation.remove()
    assert seen == [pipe.transformer, pipe.transformer_2, pipe.transformer_2]  # both experts ran
    with headhunter.apply(pipe, hs, scale=2.0) as handle:
        guided = run()
    assert handle.calls["guided_steps"] == STEPS
    assert_close(guided, reference, 1e-5)
    assert (guided - stock).abs().max().item() > 1e-3
    # each expert's own site is what guides its steps: a head set on the second expert only changes steps 1-2
    only_second = make_headset(pipe, "L3H0")
    with headhunter.apply(pipe, only_second, scale=2.0) as handle:
        second = run()
    assert handle.calls["guided_steps"] == STEPS and (second - stock).abs().max().item() > 1e-4
    assert torch.equal(run(), stock)  # removed: bit-identical
