"""`headhunter.apply` on stock diffusers pipelines, checked against hand-written reference loops.

The reference loops run every pass (uncond, cond, each perturbed branch) as its own transformer forward
and combine them by the formula of DESIGN.md, written out inline:

    pred = uncond + s (cond - uncond) + w (cond - perturbed)     (CFG)
    pred = cond + w (cond - perturbed)                           (no CFG)

They use the engine (`adapter.install` + `batch_strengths`) only for the perturbed pass itself, which the
engine's own tests check against an explicit attention map. Everything runs on tiny random pipelines.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

import headhunter
from headhunter import HeadSet, HeadSetError, ModelError, get_registry
from headhunter.plan.strengths import batch_strengths
from headhunter.engine.attention import install
from headhunter.engine.guidance import (
    cfg_guidance,
    guidance_delta,
    guided_prediction,
    in_window,
    perturbation_guidance,
)

from tiny_pipes import FLUX_CALL, SD3_CALL, build_flux, build_sd3

TOL = 1e-4
PROMPT = "a photo of a red cat"


# ----- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sd3():
    return build_sd3()


@pytest.fixture(scope="module")
def flux():
    return build_flux(num_heads=2)


def make_headset(pipe, notation: str, name: str, **metadata) -> HeadSet:
    adapter = get_registry().adapter_for(pipe)
    return HeadSet.from_notation(notation, sites=adapter.sites(pipe), architecture=adapter.architecture,
                                 name=name, **metadata)


@pytest.fixture(scope="module")
def sd3_sets(sd3):
    return make_headset(sd3, "L0H1, L1H2@0.5", "a"), make_headset(sd3, "L0H3, L1H0", "b")


@pytest.fixture(scope="module")
def flux_set(flux):
    return make_headset(flux, "L0H1, L1H0@0.7", "f")  # L1 is the single-stream block


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class RowCounter:
    """Counts the rows of every real transformer forward (a hook on the patch embedding)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.rows: list[int] = []
        self._hook = module.register_forward_pre_hook(lambda m, args: self.rows.append(args[0].shape[0]))

    def close(self) -> None:
        self._hook.remove()


# ----- reference loops ----------------------------------------------------------------------------------------
def _perturbed(pipe, installation, headset, rows, **inputs):
    strengths = batch_strengths([headset], installation.sites, repeat=rows)
    with installation.strengths(strengths):
        return pipe.transformer(**inputs, return_dict=False)[0]


@torch.no_grad()
def sd3_reference(pipe, prompt, branches, s, steps=4, seed=0, num_images=1, start=0.0, stop=1.0, scope="joint"):
    """StableDiffusion3Pipeline's loop, one pass per forward; branches = [(headset, w), ...]."""
    do_cfg = s > 1  # diffusers' rule
    pe, npe, ppe, nppe = pipe.encode_prompt(prompt, prompt, prompt, do_classifier_free_guidance=do_cfg,
                                            num_images_per_prompt=num_images,
                                            max_sequence_length=SD3_CALL["max_sequence_length"])
    rows = pe.shape[0]
    latents = pipe.prepare_latents(rows, pipe.transformer.config.in_channels, SD3_CALL["height"],
                                   SD3_CALL["width"], pe.dtype, torch.device("cpu"), gen(seed))
    pipe.scheduler.set_timesteps(steps)
    adapter = get_registry().adapter_for(pipe)
    with install(adapter, pipe, get_registry().perturbation("softpag"), scope) as inst:
        for i, t in enumerate(pipe.scheduler.timesteps):
            x = dict(hidden_states=latents, timestep=t.expand(rows))
            cond = pipe.transformer(**x, encoder_hidden_states=pe, pooled_projections=ppe, return_dict=False)[0]
            pred = cond
            if do_cfg:
                uncond = pipe.transformer(**x, encoder_hidden_states=npe, pooled_projections=nppe,
                                          return_dict=False)[0]
                pred = uncond + s * (cond - uncond)
            if start <= i / steps < stop:
                for headset, w in branches:
                    ptb = _perturbed(pipe, inst, headset, rows, **x, encoder_hidden_states=pe, pooled_projections=ppe)
                    pred = pred + w * (cond - ptb)
            latents = pipe.scheduler.step(pred, t, latents, return_dict=False)[0]
    return latents


@torch.no_grad()
def flux_reference(pipe, prompt, branches, steps=4, seed=0, num_images=1, true_cfg=1.0, negative=None,
                   guidance_scale=3.5):
    """FluxPipeline's loop (packed latents), one pass per forward; true CFG when true_cfg > 1 with a negative."""
    kw = dict(num_images_per_prompt=num_images, max_sequence_length=FLUX_CALL["max_sequence_length"])
    pe, ppe, text_ids = pipe.encode_prompt(prompt, None, **kw)
    rows = pe.shape[0]
    latents, image_ids = pipe.prepare_latents(rows, pipe.transformer.config.in_channels // 4, FLUX_CALL["height"],
                                              FLUX_CALL["width"], pe.dtype, torch.device("cpu"), gen(seed))
    cfg = pipe.scheduler.config
    mu = calculate_shift(latents.shape[1], cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                         cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
    timesteps, _ = retrieve_timesteps(pipe.scheduler, steps, "cpu", sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    guidance = torch.full([rows], guidance_scale) if pipe.transformer.config.guidance_embeds else None
    adapter = get_registry().adapter_for(pipe)
    do_true_cfg = true_cfg > 1 and negative is not None
    if do_true_cfg:
        npe, nppe, neg_ids = pipe.encode_prompt(negative, None, **kw)
    with install(adapter, pipe, get_registry().perturbation("softpag"), "joint") as inst:
        for t in timesteps:
            x = dict(hidden_states=latents, timestep=t.expand(rows) / 1000, guidance=guidance, img_ids=image_ids)
            cond = pipe.transformer(**x, encoder_hidden_states=pe, pooled_projections=ppe, txt_ids=text_ids,
                                    return_dict=False)[0]
            pred = cond
            if do_true_cfg:
                uncond = pipe.transformer(**x, encoder_hidden_states=npe, pooled_projections=nppe, txt_ids=neg_ids,
                                          return_dict=False)[0]
                pred = uncond + true_cfg * (cond - uncond)
            for headset, w in branches:
                ptb = _perturbed(pipe, inst, headset, rows, **x, encoder_hidden_states=pe, pooled_projections=ppe,
                                 txt_ids=text_ids)
                pred = pred + w * (cond - ptb)
            latents = pipe.scheduler.step(pred, t, latents, return_dict=False)[0]
    return latents


def run_sd3(pipe, prompt=PROMPT, s=3.5, steps=4, seed=0, num_images=1, **extra):
    return pipe(prompt, num_inference_steps=steps, guidance_scale=s, num_images_per_prompt=num_images,
                generator=gen(seed), output_type="latent", **SD3_CALL, **extra).images


def run_flux(pipe, prompt=PROMPT, steps=4, seed=0, num_images=1, **extra):
    return pipe(prompt, num_inference_steps=steps, num_images_per_prompt=num_images, generator=gen(seed),
                output_type="latent", **FLUX_CALL, **extra).images


def assert_close(actual, expected, tol=TOL):
    assert actual.shape == expected.shape
    err = (actual - expected).abs().max().item()
    assert err <= tol, f"max |diff| {err:.3g} > {tol}"


# ----- the math -----------------------------------------------------------------------------------------------
def test_combination_functions_follow_the_equations():
    g = torch.Generator().manual_seed(0)
    uncond, cond, ptb, ptb2 = (torch.randn(2, 3, generator=g) for _ in range(4))
    assert torch.allclose(cfg_guidance(uncond, cond, 4.0), uncond + 4.0 * (cond - uncond))
    assert torch.allclose(perturbation_guidance(cond, ptb, 3.0), cond + 3.0 * (cond - ptb))
    assert torch.allclose(guided_prediction(cond, [ptb], [3.0]), perturbation_guidance(cond, ptb, 3.0))
    assert torch.allclose(guided_prediction(cond, [ptb, ptb2], [3.0, 1.5], uncond, 4.0),
                          uncond + 4.0 * (cond - uncond) + 3.0 * (cond - ptb) + 1.5 * (cond - ptb2))
    assert torch.equal(guidance_delta(cond, [ptb], [0.0]), torch.zeros_like(cond))
    with pytest.raises(ValueError):
        guidance_delta(cond, [ptb], [1.0, 2.0])


def test_window_is_inclusive_start_exclusive_stop():
    assert [i for i in range(10) if in_window(i, 10, 0.3, 0.5)] == [3, 4]
    assert [i for i in range(10) if in_window(i, 10, 0.0, 1.0)] == list(range(10))
    assert [i for i in range(4) if in_window(i, 4, 0.5, 0.5)] == []
    assert [i for i in range(3) if in_window(i, 3, 1 / 3, 1.0)] == [1, 2]


# ----- equality with the reference loops ---------------------------------------------------------------------
@pytest.mark.parametrize("s, prompt, num_images", [
    (3.5, PROMPT, 1),                          # CFG: [uncond | cond | ptb] in one forward
    (1.0, PROMPT, 1),                          # s <= 1: no CFG in diffusers, cond + w (cond - ptb)
    (3.5, [PROMPT, "a blue dog"], 2),          # batch of prompts x num_images_per_prompt
])
def test_sd3_matches_reference_loop(sd3, sd3_sets, s, prompt, num_images):
    a, _ = sd3_sets
    expected = sd3_reference(sd3, prompt, [(a, 2.0)], s, num_images=num_images)
    with headhunter.apply(sd3, a, scale=2.0):
        actual = run_sd3(sd3, prompt, s, num_images=num_images)
    assert_close(actual, expected)
    assert (actual - run_sd3(sd3, prompt, s, num_images=num_images)).abs().max() > 1e-3  # guidance did something


@pytest.mark.slow
def test_sd3_with_t5_matches_reference_loop():
    pipe = build_sd3(t5=True)
    hs = make_headset(pipe, "L0H0, L1H3", "t5")
    expected = sd3_reference(pipe, PROMPT, [(hs, 1.5)], 3.0)
    with headhunter.apply(pipe, hs, scale=1.5):
        assert_close(run_sd3(pipe, s=3.0), expected)


def test_flux_without_true_cfg_matches_reference_loop(flux, flux_set):
    expected = flux_reference(flux, PROMPT, [(flux_set, 2.0)], num_images=2)
    with headhunter.apply(flux, flux_set, scale=2.0):
        actual = run_flux(flux, num_images=2)
    assert_close(actual, expected)
    assert (actual - run_flux(flux, num_images=2)).abs().max() > 1e-3


def test_flux_true_cfg_perturbs_only_the_conditional_pass(flux_set):
    pipe = build_flux(num_heads=2, guidance_embeds=True)
    expected = flux_reference(pipe, PROMPT, [(flux_set, 2.0)], true_cfg=2.0, negative="a blue dog")
    counter = RowCounter(pipe.transformer.x_embedder)
    with headhunter.apply(pipe, flux_set, scale=2.0) as handle:
        actual = run_flux(pipe, negative_prompt="a blue dog", true_cfg_scale=2.0)
    counter.close()
    assert_close(actual, expected)
    assert counter.rows == [2, 1] * 4  # per step: [cond | ptb], then the negative pass alone, stock
    assert handle.calls == {"forwards": 8, "guided_steps": 4, "perturbed_rows": 4}


def test_several_headsets_are_separate_branches_in_one_forward(sd3, sd3_sets):
    a, b = sd3_sets
    expected = sd3_reference(sd3, PROMPT, [(a, 2.0), (b, 0.5)], 3.5)
    counter = RowCounter(sd3.transformer.pos_embed)
    with headhunter.apply(sd3, [a, b], scale=[2.0, 0.5]):
        actual = run_sd3(sd3)
    counter.close()
    assert_close(actual, expected)
    assert counter.rows == [4] * 4  # uncond, cond, ptb a, ptb b

    merged = a | b
    expected = sd3_reference(sd3, PROMPT, [(merged, 2.0)], 3.5)
    with headhunter.apply(sd3, merged, scale=2.0):
        assert_close(run_sd3(sd3), expected)


@pytest.mark.parametrize("model", ["sd3", "flux"])
def test_sequential_equals_batched(request, model, sd3_sets, flux_set):
    pipe = request.getfixturevalue(model)
    hs, run = (sd3_sets[0], run_sd3) if model == "sd3" else (flux_set, run_flux)
    with headhunter.apply(pipe, hs, scale=2.0, batched=True):
        batched = run(pipe, num_images=2)
    counter = RowCounter(pipe.transformer.pos_embed if model == "sd3" else pipe.transformer.x_embedder)
    with headhunter.apply(pipe, hs, scale=2.0, batched=False):
        sequential = run(pipe, num_images=2)
    counter.close()
    assert_close(sequential, batched)
    assert counter.rows == ([4, 2] if model == "sd3" else [2, 2]) * 4  # stock call, then the perturbed rows


def test_per_sample_headsets_guide_their_own_rows(sd3, sd3_sets):
    a, _ = sd3_sets
    expected_a = sd3_reference(sd3, PROMPT, [(a, 2.0)], 3.5)
    plain = run_sd3(sd3)
    with headhunter.apply(sd3, [a, None], scale=2.0, per_sample=True):
        rows = run_sd3(sd3, num_images=2)
    assert_close(rows[:1], expected_a)
    assert_close(rows[1:], sd3_reference(sd3, PROMPT, [], 3.5, num_images=2)[1:])
    assert (rows[1:] - plain).abs().max() > 0  # a different noise draw than the single-image call
    with headhunter.apply(sd3, [a, None], per_sample=True), pytest.raises(ModelError, match="per_sample"):
        run_sd3(sd3, num_images=3)


# ----- the step window, remove(), refusals ------------------------------------------------------------------
@pytest.mark.parametrize("start, stop, guided", [(0.2, 0.6, [2, 3, 4, 5]), (0.0, 0.1, [0]), (0.5, 0.5, [])])
def test_step_window_is_honoured(sd3, sd3_sets, start, stop, guided):
    a, _ = sd3_sets
    counter = RowCounter(sd3.transformer.pos_embed)
    with headhunter.apply(sd3, a, scale=2.0, start=start, stop=stop) as handle:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            actual = run_sd3(sd3, steps=10)
    counter.close()
    # a window that guides none of the steps says so (once per apply)
    assert len([w for w in caught if str(w.message).startswith("the step window")]) == (0 if guided else 1)
    assert counter.rows == [3 if i in guided else 2 for i in range(10)]  # no perturbed rows outside the window
    assert handle.calls["guided_steps"] == len(guided)
    assert_close(actual, sd3_reference(sd3, PROMPT, [(a, 2.0)], 3.5, steps=10, start=start, stop=stop))


def test_window_and_scale_default_to_the_headset_recommendation(sd3):
    hs = make_headset(sd3, "L1H1", "rec", guidance={"scale": 1.25, "start": 0.25, "stop": 0.75})
    with headhunter.apply(sd3, hs) as handle:
        actual = run_sd3(sd3)
    branch = handle.branches[0]
    assert (branch.scale, branch.start, branch.stop) == (1.25, 0.25, 0.75)
    assert handle.calls["guided_steps"] == 2
    assert_close(actual, sd3_reference(sd3, PROMPT, [(hs, 1.25)], 3.5, start=0.25, stop=0.75))


def test_remove_restores_bit_identical_outputs(sd3, sd3_sets):
    transformer, scheduler = sd3.transformer, sd3.scheduler
    processors = dict(transformer.attn_processors)
    before = run_sd3(sd3)
    handle = headhunter.apply(sd3, list(sd3_sets), scale=2.0)
    assert not torch.equal(run_sd3(sd3), before)
    handle.remove()
    handle.remove()  # idempotent
    assert torch.equal(run_sd3(sd3), before)
    assert "forward" not in transformer.__dict__ and "cache_context" not in transformer.__dict__
    assert "step" not in scheduler.__dict__
    assert all(transformer.attn_processors[k] is v for k, v in processors.items())


def test_context_manager_removes_on_exit_and_on_error(sd3, sd3_sets):
    before = run_sd3(sd3, steps=2)
    with headhunter.apply(sd3, sd3_sets[0]) as handle:
        assert handle.active
    assert not handle.active
    with pytest.raises(RuntimeError, match="boom"), headhunter.apply(sd3, sd3_sets[0]):
        raise RuntimeError("boom")
    assert torch.equal(run_sd3(sd3, steps=2), before)


def test_wrong_architecture_is_refused_before_any_forward(sd3, flux, flux_set):
    counter = RowCounter(sd3.transformer.pos_embed)
    with pytest.raises(HeadSetError, match="architecture 'flux'"):
        headhunter.apply(sd3, flux_set)
    wide = HeadSet.from_notation("L0H5", sites=[{"name": "transformer_blocks.0.attn", "num_heads": 8},
                                                {"name": "transformer_blocks.1.attn", "num_heads": 8}],
                                 architecture="sd3", name="wide")
    with pytest.raises(HeadSetError, match="8"):
        headhunter.apply(sd3, wide)
    counter.close()
    assert counter.rows == []
    assert "forward" not in sd3.transformer.__dict__  # nothing was installed
    assert not any("Perturbing" in type(p).__name__ for p in sd3.transformer.attn_processors.values())


def test_bad_settings_name_the_value(sd3, sd3_sets):
    a, b = sd3_sets
    with pytest.raises(HeadSetError, match="start=0.8 is after stop=0.2"):
        headhunter.apply(sd3, a, start=0.8, stop=0.2)
    with pytest.raises(HeadSetError, match="scale= has 1 values for 2 head sets"):
        headhunter.apply(sd3, [a, b], scale=[1.0])
    with pytest.raises(HeadSetError, match="scope='diagonal'"):
        headhunter.apply(sd3, a, scope="diagonal")
    with pytest.raises(HeadSetError, match="different perturbation"):
        headhunter.apply(sd3, [a, b.with_metadata(perturbation={"name": "uniform"})])
    with headhunter.apply(sd3, a), pytest.raises(ModelError, match="already guided"):
        headhunter.apply(sd3, b)
    assert "forward" not in sd3.transformer.__dict__


# ----- the pipeline's own features keep working ----------------------------------------------------------------
def test_user_joint_attention_kwargs_and_callbacks_still_work(sd3, sd3_sets):
    a, _ = sd3_sets
    seen = []

    def callback(pipe, i, t, kwargs):
        seen.append(i)
        return {}

    with headhunter.apply(sd3, a, scale=2.0):
        plain = run_sd3(sd3)
        with_kwargs = run_sd3(sd3, joint_attention_kwargs={"scale": 1.0}, callback_on_step_end=callback)
    assert torch.equal(plain, with_kwargs)
    assert seen == [0, 1, 2, 3]


def test_scheduler_swapped_after_apply_is_still_guided(sd3_sets):
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe = build_sd3()
    a, _ = sd3_sets
    with headhunter.apply(pipe, a, scale=2.0):
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
        actual = run_sd3(pipe)
    assert_close(actual, sd3_reference(pipe, PROMPT, [(a, 2.0)], 3.5))


def test_lora_on_the_transformer_still_works(sd3_sets):
    peft = pytest.importorskip("peft")
    pipe = build_sd3()
    without = run_sd3(pipe)
    torch.manual_seed(1)
    pipe.transformer.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                                 target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    assert (run_sd3(pipe) - without).abs().max() > 1e-3  # the LoRA is live
    a, _ = sd3_sets
    with headhunter.apply(pipe, a, scale=2.0):
        actual = run_sd3(pipe)
        half = run_sd3(pipe, joint_attention_kwargs={"scale": 0.5})
    assert_close(actual, sd3_reference(pipe, PROMPT, [(a, 2.0)], 3.5))
    assert (half - actual).abs().max() > 1e-4  # the LoRA scale still reaches the LoRA layers


def test_images_decode_through_the_vae(sd3, sd3_sets):
    with headhunter.apply(sd3, sd3_sets[0], scale=2.0):
        images = sd3(PROMPT, num_inference_steps=2, guidance_scale=3.5, generator=gen(), output_type="pt",
                     **SD3_CALL).images
    assert images.shape == (1, 3, 32, 32) and 0.0 <= images.min() <= images.max() <= 1.0


@pytest.mark.parametrize("s", [3.5, 1.0])
def test_layer_level_setting_equals_diffusers_pag_pipeline(sd3, s):
    """Every head of layer 1, u = 1, identity with scope pag_mask is diffusers' PAG on "blocks.1"."""
    from diffusers import StableDiffusion3PAGPipeline

    parts = {k: v for k, v in sd3.components.items() if k not in ("image_encoder", "feature_extractor")}
    pag = StableDiffusion3PAGPipeline(**parts, pag_applied_layers=["blocks.1"])
    pag.set_progress_bar_config(disable=True)
    expected = pag(PROMPT, num_inference_steps=4, guidance_scale=s, pag_scale=2.0, generator=gen(),
                   output_type="latent", **SD3_CALL).images
    layer = make_headset(sd3, ", ".join(f"L1H{h}" for h in range(4)), "layer1")
    with headhunter.apply(sd3, layer, scale=2.0, scope="pag_mask", perturbation="identity"):
        assert_close(run_sd3(sd3, s=s), expected)


def test_digits_pipeline_is_guided_with_no_special_case():
    from headhunter.plugins.digits.model import build_pipeline

    torch.manual_seed(0)
    pipe = build_pipeline()
    for module in (pipe.transformer, pipe.label_encoder):
        module.eval()
    pipe.set_progress_bar_config(disable=True)
    hs = make_headset(pipe, "L2H3, L4H0@0.5", "digits")
    with torch.no_grad():
        pe, npe, ppe, nppe = pipe.encode_prompt("3", torch.device("cpu"), 1, True)
        latents = pipe.prepare_latents(1, 1, 16, 16, pe.dtype, torch.device("cpu"), gen())
        pipe.scheduler.set_timesteps(4)
        with install(get_registry().adapter_for(pipe), pipe, get_registry().perturbation("softpag")) as inst:
            for t in pipe.scheduler.timesteps:
                x = dict(hidden_states=latents, timestep=t.expand(1))
                cond = pipe.transformer(**x, encoder_hidden_states=pe, pooled_projections=ppe, return_dict=False)[0]
                uncond = pipe.transformer(**x, encoder_hidden_states=npe, pooled_projections=nppe,
                                          return_dict=False)[0]
                ptb = _perturbed(pipe, inst, hs, 1, **x, encoder_hidden_states=pe, pooled_projections=ppe)
                pred = uncond + 2.0 * (cond - uncond) + 3.0 * (cond - ptb)
                latents = pipe.scheduler.step(pred, t, latents, return_dict=False)[0]
    with headhunter.apply(pipe, hs, scale=3.0):
        actual = pipe("3", num_inference_steps=4, guidance_scale=2.0, generator=gen(), output_type="latent").images
    assert_close(actual, latents)


def test_docs_example_runs(sd3, sd3_sets):
    import re
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[1] / "docs" / "guidance.md").read_text()
    example = re.findall(r"```python\n(.*?)```", guide, flags=re.S)[0]
    scope = {"pipe": sd3, "headset": sd3_sets[0]}
    torch.manual_seed(0)
    exec(example, scope)
    assert not scope["handle"].active
    assert len(scope["guided"]) == len(scope["plain"]) == 1
    assert scope["guided"][0].size == scope["plain"][0].size == (32, 32)
