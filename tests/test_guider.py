"""HeadHunterGuidance: diffusers' guider API in modular pipelines, checked against `headhunter.apply` on the
matching stock pipeline, against diffusers' own PerturbedAttentionGuidance, and its config round trip
(local folders and the fake Hub)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from diffusers.configuration_utils import FrozenDict
from diffusers.guiders import ClassifierFreeGuidance, PerturbedAttentionGuidance
from diffusers.guiders.guider_utils import BaseGuidance
from diffusers.modular_pipelines import FluxAutoBlocks, StableDiffusion3AutoBlocks
from diffusers.modular_pipelines.flux.denoise import FluxLoopDenoiser
from diffusers.modular_pipelines.modular_pipeline_utils import ComponentSpec, InputParam
from tiny_pipes import FLUX_CALL, SD3_CALL, build_flux, build_sd3

import headhunter
from headhunter import HeadSet, HeadSetError, HubError, ModelError, PluginError
from headhunter.engine.attention import PerturbingProcessor
from headhunter.engine.guider import HeadHunterGuidance
from headhunter.engine.attention import install

PROMPT = "a photo of a red cat"
STEPS = 4
TOL = 1e-5


def make_headset(pipe, notation: str, name: str) -> HeadSet:
    adapter = headhunter.get_registry().adapter_for(pipe)
    return HeadSet.from_notation(notation, sites=adapter.sites(pipe), architecture=adapter.architecture, name=name)


@pytest.fixture(scope="module")
def sd3():
    return build_sd3()


@pytest.fixture(scope="module")
def flux():
    return build_flux(num_heads=2)


@pytest.fixture(scope="module")
def sd3_sets(sd3):
    return make_headset(sd3, "L0H1, L1H3@0.5", "a"), make_headset(sd3, "L1H0", "b")


# ----- modular pipelines from the tiny stock pipelines' components -------------------------------------
def modular(blocks, pipe, guider=None):
    components = {k: v for k, v in pipe.components.items() if v is not None}
    if guider is not None:
        components["guider"] = guider
    mp = blocks.init_pipeline()
    mp.update_components(**components)
    mp.set_progress_bar_config(disable=True)
    return mp


def run_modular_sd3(pipe, guider, cfg: bool, prompt: str = PROMPT) -> torch.Tensor:
    extra = {"negative_prompt": ""} if cfg else {}  # the modular SD3 encoder makes negatives only when asked
    mp = modular(StableDiffusion3AutoBlocks(), pipe, guider)
    return mp(prompt=prompt, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
              output="latents", **extra, **SD3_CALL)


def run_stock_sd3(pipe, s: float, prompt: str = PROMPT) -> torch.Tensor:
    return pipe(prompt, guidance_scale=s, num_inference_steps=STEPS, output_type="latent",
                generator=torch.Generator().manual_seed(0), **SD3_CALL).images


class GuidedFluxLoopDenoiser(FluxLoopDenoiser):
    """FLUX.1's loop denoiser with the guider contract of diffusers' SD3 loop (`StableDiffusion3LoopDenoiser`).

    diffusers 0.42.1's modular FLUX.1 pipeline calls the transformer once per step and has no guider, so
    the FLUX tests swap this block in; it has no negative prompt (FLUX.1's modular encoder makes none).
    """

    @property
    def expected_components(self):
        return [ComponentSpec("guider", ClassifierFreeGuidance, config=FrozenDict({"guidance_scale": 1.0}),
                              default_creation_method="from_config"), *super().expected_components]

    @property
    def inputs(self):
        return [*super().inputs, InputParam("num_inference_steps", type_hint=int)]

    @torch.no_grad()
    def __call__(self, components, block_state, i, t):
        guider = components.guider
        guider.set_state(step=i, num_inference_steps=block_state.num_inference_steps, timestep=t)
        batches = guider.prepare_inputs({"hidden_states": block_state.latents,
                                         "encoder_hidden_states": block_state.prompt_embeds,
                                         "pooled_projections": block_state.pooled_prompt_embeds})
        for batch in batches:
            guider.prepare_models(components.transformer)
            rows = batch.hidden_states.shape[0]
            batch.noise_pred = components.transformer(
                hidden_states=batch.hidden_states, timestep=t.expand(rows) / 1000, guidance=block_state.guidance,
                encoder_hidden_states=batch.encoder_hidden_states, pooled_projections=batch.pooled_projections,
                joint_attention_kwargs=block_state.joint_attention_kwargs, txt_ids=block_state.txt_ids,
                img_ids=block_state.img_ids, return_dict=False)[0]
            guider.cleanup_models(components.transformer)
        block_state.noise_pred = guider(batches).pred
        return components, block_state


def guided_flux_blocks():
    blocks = FluxAutoBlocks()
    blocks.sub_blocks["denoise"].sub_blocks["denoise"].sub_blocks["denoiser"] = GuidedFluxLoopDenoiser()
    return blocks


def run_modular_flux(pipe, guider, prompt=PROMPT) -> torch.Tensor:
    mp = modular(guided_flux_blocks(), pipe, guider)
    return mp(prompt=prompt, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output="latents",
              **FLUX_CALL)


def run_stock_flux(pipe) -> torch.Tensor:
    packed = pipe(PROMPT, num_inference_steps=STEPS, output_type="latent", generator=torch.Generator().manual_seed(0),
                  **FLUX_CALL).images
    return pipe._unpack_latents(packed, FLUX_CALL["height"], FLUX_CALL["width"], pipe.vae_scale_factor)


def assert_stock_processors(transformer) -> None:
    processors = transformer.attn_processors.values()
    assert not any(isinstance(p, PerturbingProcessor) for p in processors)


# ----- equality with apply() ----------------------------------------------------------------------------
@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("s", [4.5, 1.0])
def test_sd3_modular_equals_apply_on_the_stock_pipeline(sd3, sd3_sets, s, batched):
    a, b = sd3_sets
    guider = HeadHunterGuidance(headsets=[a, b], perturbed_guidance_scale=[2.0, 1.5], perturbed_guidance_stop=[1.0, 0.5],
                                guidance_scale=s, batched=batched)
    got = run_modular_sd3(sd3, guider, cfg=s > 1)
    with headhunter.apply(sd3, [a, b], scale=[2.0, 1.5], stop=[1.0, 0.5]):
        expected = run_stock_sd3(sd3, s)
    plain = run_stock_sd3(sd3, s)
    assert (got - expected).abs().max().item() < TOL
    assert (got - plain).abs().max().item() > 1e-2  # the guidance did something
    assert_stock_processors(sd3.transformer)


@pytest.mark.parametrize("batched", [False, True])
def test_sd3_prompt_batches_and_images_per_prompt(sd3, sd3_sets, batched):
    """Two prompts x 2 images: the per-row strengths repeat over the 4 rows of every block."""
    a, b = sd3_sets
    prompts = ["a photo of a red cat", "a blue dog"]
    guider = HeadHunterGuidance(headsets=[a, b], perturbed_guidance_scale=[2.0, 1.5], guidance_scale=4.5,
                                batched=batched)
    got = modular(StableDiffusion3AutoBlocks(), sd3, guider)(
        prompt=prompts, negative_prompt="", num_images_per_prompt=2, num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(0), output="latents", **SD3_CALL)
    with headhunter.apply(sd3, [a, b], scale=[2.0, 1.5]):
        expected = sd3(prompts, guidance_scale=4.5, num_images_per_prompt=2, num_inference_steps=STEPS,
                       output_type="latent", generator=torch.Generator().manual_seed(0), **SD3_CALL).images
    assert got.shape == expected.shape == (4, 4, 16, 16)
    assert (got - expected).abs().max().item() < TOL


def test_sd35_like_model_equals_apply():
    """qk RMSNorm and the image-only attn2 site of SD3.5-medium."""
    pipe = build_sd3(qk_norm="rms_norm", dual_attention_layers=(0,))
    hs = make_headset(pipe, "L0H1, L2H3", "c")  # L2 = transformer_blocks.0.attn2
    got = run_modular_sd3(pipe, HeadHunterGuidance(headsets=hs, perturbed_guidance_scale=2.0, guidance_scale=4.5),
                          cfg=True)
    with headhunter.apply(pipe, hs, scale=2.0):
        expected = run_stock_sd3(pipe, 4.5)
    assert (got - expected).abs().max().item() < TOL


@pytest.mark.parametrize("extra", [{}, {"guidance_rescale": 0.7, "use_original_formulation": True}])
def test_nothing_guided_is_bit_identical_to_diffusers_cfg_guider(sd3, sd3_sets, extra):
    """w = 0, or every branch outside its window: no perturbed pass, the stock CFG guider's output bit for bit
    (its rescale and original formulation included)."""
    stock = run_modular_sd3(sd3, ClassifierFreeGuidance(guidance_scale=4.5, **extra), cfg=True)
    for guider in (HeadHunterGuidance(headsets=sd3_sets[0], perturbed_guidance_scale=0.0, guidance_scale=4.5, **extra),
                   HeadHunterGuidance(headsets=sd3_sets[0], perturbed_guidance_start=0.0, perturbed_guidance_stop=0.0,
                                      guidance_scale=4.5, **extra)):
        assert torch.equal(run_modular_sd3(sd3, guider, cfg=True), stock)


def test_sd3_batch_layout_and_model_state(sd3, sd3_sets):
    """Separate mode: one forward per prediction, processors installed only around the perturbed ones."""
    a, b = sd3_sets
    guider = HeadHunterGuidance(headsets=[a, b], perturbed_guidance_scale=2.0, perturbed_guidance_start=[0.0, 0.5],
                                guidance_scale=3.0)
    seen = []
    hook = sd3.transformer.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((kwargs["hidden_states"].shape[0], any(
            isinstance(p, PerturbingProcessor) for p in m.attn_processors.values()))), with_kwargs=True)
    try:
        run_modular_sd3(sd3, guider, cfg=True)
    finally:
        hook.remove()
    # steps 0, 1: cond, uncond, a; steps 2, 3 (b's window [0.5, 1)): cond, uncond, a, b
    assert seen == [(1, False), (1, False), (1, True)] * 2 + [(1, False), (1, False), (1, True), (1, True)] * 2
    batched = guider.new(batched=True)
    assert batched.config.batched and batched.config.perturbed_guidance_start == [0.0, 0.5]
    seen.clear()
    hook = sd3.transformer.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["hidden_states"].shape[0]), with_kwargs=True)
    try:
        run_modular_sd3(sd3, batched, cfg=True)
    finally:
        hook.remove()
    assert seen == [3, 3, 4, 4]
    assert_stock_processors(sd3.transformer)


def test_flux_modular_loop_equals_apply_on_the_stock_pipeline(flux):
    hs = make_headset(flux, "L0H1, L1H0@0.7", "f")  # L1 is the single-stream block
    guider = HeadHunterGuidance(headsets=hs, perturbed_guidance_scale=2.0)
    got = run_modular_flux(flux, guider)
    with headhunter.apply(flux, hs, scale=2.0):
        expected = run_stock_flux(flux)
    assert (got - expected).abs().max().item() < TOL
    assert (got - run_stock_flux(flux)).abs().max().item() > 1e-3
    assert_stock_processors(flux.transformer)


# ----- the newer families: diffusers' own modular loops with a guider (Wan 2.1, FLUX.2 Klein) -------------------
@pytest.fixture(scope="module")
def wan():
    from tiny_dit_pipes import build_wan

    return build_wan()


@pytest.fixture(scope="module")
def klein():
    """Flux2KleinPipeline (FLUX.2 Klein base: CFG, no guidance embedding) on the tiny FLUX.2 transformer."""
    from diffusers import Flux2KleinPipeline
    from tiny_dit_pipes import build_flux2

    f2 = build_flux2(guidance_embeds=False)
    pipe = Flux2KleinPipeline(scheduler=f2.scheduler, vae=f2.vae, text_encoder=None, tokenizer=None,
                              transformer=f2.transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def embeds():
    from tiny_dit_pipes import prompt_embeds

    return prompt_embeds(), prompt_embeds(1, 6, seed=1)  # the modular loops want equal lengths


def run_modular_wan(pipe, guider, pe=None, npe=None) -> torch.Tensor:
    """diffusers' WanBlocks without the text encoder (the tiny pipeline has none; embeddings are passed)."""
    from diffusers.modular_pipelines.wan.modular_blocks_wan import WanBlocks
    from tiny_dit_pipes import WAN_CALL

    blocks = WanBlocks()
    blocks.sub_blocks.pop("text_encoder")
    mp = blocks.init_pipeline()
    mp.update_components(transformer=pipe.transformer, scheduler=pipe.scheduler, vae=pipe.vae, guider=guider)
    mp.set_progress_bar_config(disable=True)
    if pe is None:
        pe, npe = embeds()
    return mp(prompt_embeds=pe, negative_prompt_embeds=npe, num_inference_steps=STEPS,
              generator=torch.Generator().manual_seed(0), output="latents", **WAN_CALL)


def run_stock_wan(pipe, s: float) -> torch.Tensor:
    from tiny_dit_pipes import WAN_CALL

    pe, npe = embeds()
    return pipe(prompt_embeds=pe, negative_prompt_embeds=npe, guidance_scale=s, num_inference_steps=STEPS,
                generator=torch.Generator().manual_seed(0), output_type="latent", **WAN_CALL).frames


def run_modular_klein(pipe, guider, pe=None, npe=None) -> torch.Tensor:
    """diffusers' Flux2KleinBaseAutoBlocks without the text encoder; its latents brought to the stock
    pipeline's latent output (batch-norm statistics undone, 2x2 patches unpacked, as Flux2KleinPipeline does)."""
    from diffusers.modular_pipelines.flux2.modular_blocks_flux2_klein_base import Flux2KleinBaseAutoBlocks
    from tiny_dit_pipes import FLUX2_CALL

    blocks = Flux2KleinBaseAutoBlocks()
    blocks.sub_blocks.pop("text_encoder")
    mp = blocks.init_pipeline()
    mp.update_components(transformer=pipe.transformer, scheduler=pipe.scheduler, vae=pipe.vae, guider=guider)
    mp.set_progress_bar_config(disable=True)
    if pe is None:
        pe, npe = embeds()
    x = mp(prompt_embeds=pe, negative_prompt_embeds=npe, num_inference_steps=STEPS,
           generator=torch.Generator().manual_seed(0), output="latents", **FLUX2_CALL)
    mean = pipe.vae.bn.running_mean.view(1, -1, 1, 1)
    std = torch.sqrt(pipe.vae.bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps)
    return pipe._unpatchify_latents(x * std + mean)


def run_stock_klein(pipe, s: float) -> torch.Tensor:
    from tiny_dit_pipes import FLUX2_CALL

    pe, npe = embeds()
    return pipe(prompt_embeds=pe, negative_prompt_embeds=npe, guidance_scale=s, num_inference_steps=STEPS,
                generator=torch.Generator().manual_seed(0), output_type="latent", **FLUX2_CALL).images


@pytest.mark.slow
@pytest.mark.parametrize("family", ["wan", "klein"])
@pytest.mark.parametrize("s", [4.0, 1.0])
def test_newer_families_modular_equals_apply(request, family, s):
    pipe = request.getfixturevalue(family)
    run_modular, run_stock = {"wan": (run_modular_wan, run_stock_wan),
                              "klein": (run_modular_klein, run_stock_klein)}[family]
    hs = make_headset(pipe, "L0H1, L1H0@0.5", family)
    assert torch.equal(run_modular(pipe, ClassifierFreeGuidance(guidance_scale=s)), run_stock(pipe, s))  # same loop
    got = run_modular(pipe, HeadHunterGuidance(headsets=hs, perturbed_guidance_scale=2.0, guidance_scale=s))
    with headhunter.apply(pipe, hs, scale=2.0):
        expected = run_stock(pipe, s)
    assert (got - expected).abs().max().item() < TOL
    assert (got - run_stock(pipe, s)).abs().max().item() > 1e-3
    assert_stock_processors(pipe.transformer)


@pytest.mark.parametrize("family", ["wan", "klein"])
def test_batched_where_the_loop_passes_hidden_states_around_the_guider(request, family):
    """diffusers' Wan and FLUX.2 Klein loops pass the latents to the transformer themselves, one copy, while the
    guider concatenates its own inputs (issue 24, item 5): the latents are repeated once per prediction, and the
    one batched forward equals the guider's one-forward-per-prediction result (and so apply())."""
    pipe = request.getfixturevalue(family)
    run_modular = {"wan": run_modular_wan, "klein": run_modular_klein}[family]
    hs = make_headset(pipe, "L0H1, L1H0@0.5", family)
    make = lambda batched: HeadHunterGuidance(headsets=hs, perturbed_guidance_scale=2.0, guidance_scale=4.0,  # noqa: E731
                                              batched=batched)
    separate = run_modular(pipe, make(False))
    counter = {"n": 0}
    handle = pipe.transformer.register_forward_pre_hook(lambda m, a: counter.__setitem__("n", counter["n"] + 1))
    try:
        together = run_modular(pipe, make(True))
    finally:
        handle.remove()
    assert counter["n"] == STEPS  # one forward per step: cond, uncond and perturbed rows together
    assert (together - separate).abs().max().item() < 1e-5
    assert_stock_processors(pipe.transformer)


def test_qwenimage_modular_loop_runs_with_an_all_valid_mask_and_refuses_padding():
    """diffusers' modular Qwen-Image loop always passes a text mask (`prompt_embeds_mask` is a required input;
    the stock QwenImagePipeline drops an all-ones mask, the modular one does not). The Qwen-Image adapter treats
    an all-valid mask as no mask (one host read per perturbed forward that carries a mask) and refuses a mask
    with padding: the error reaches the caller, and the model is stock after either."""
    from diffusers.modular_pipelines.qwenimage.modular_blocks_qwenimage import QwenImageAutoBlocks
    from tiny_dit_pipes import QWEN_CALL, build_qwenimage

    pipe = build_qwenimage()
    blocks = QwenImageAutoBlocks()
    blocks.sub_blocks.pop("text_encoder")
    mp = blocks.init_pipeline()
    hs = make_headset(pipe, "L0H1", "q")
    mp.update_components(transformer=pipe.transformer, scheduler=pipe.scheduler, vae=pipe.vae)
    mp.set_progress_bar_config(disable=True)
    pe, _ = embeds()

    def run(w, mask):
        mp.update_components(guider=HeadHunterGuidance(headsets=hs, perturbed_guidance_scale=w))
        return mp(prompt_embeds=pe, prompt_embeds_mask=mask, num_inference_steps=STEPS,
                  generator=torch.Generator().manual_seed(0), output="latents", **QWEN_CALL)

    ones = torch.ones(pe.shape[:2], dtype=torch.long)
    guided, unguided = run(2.0, ones), run(0.0, ones)
    assert torch.isfinite(guided).all() and (guided - unguided).abs().max() > 1e-3
    assert_stock_processors(pipe.transformer)
    padded = ones.clone()
    padded[:, -2:] = 0
    with pytest.raises(ModelError, match="text mask that has padding is not supported"):
        run(2.0, padded)
    assert_stock_processors(pipe.transformer)


class ReferenceGuidance(BaseGuidance):
    """An explicit reference guider: one batch each for cond, uncond (s != 1) and perturbed; the perturbed pass
    runs the engine's float64 reference (materialised attention maps, `install(..., mode="reference")`);
    pred = uncond + s (cond - uncond) + w (cond - perturbed), written out. For loops with no stock counterpart."""

    _input_predictions = ["pred_cond", "pred_uncond", "pred_ptb"]

    def __init__(self, headset, w: float, s: float):
        super().__init__()
        self.register_to_config(w=w, s=s)
        self.headset, self.w, self.s = headset, w, s
        self._inst = None

    @property
    def num_conditions(self) -> int:
        return 3 if self.s != 1.0 else 2

    def prepare_inputs(self, data):
        names = [("pred_cond", 0), ("pred_uncond", 1), ("pred_ptb", 0)] if self.s != 1.0 else \
            [("pred_cond", 0), ("pred_ptb", 0)]
        self._rows = data["encoder_hidden_states"][0].shape[0]
        return [self._prepare_batch(data, index, name) for name, index in names]

    def prepare_models(self, denoiser):
        self._count_prepared += 1
        if self._count_prepared == self.num_conditions:  # the perturbed batch is the last
            from headhunter.plan.strengths import batch_strengths

            self._inst = install(headhunter.get_registry().adapter_for(denoiser), denoiser, "softpag", "joint",
                                                                                  mode="reference")
            self._inst.set_strengths(batch_strengths([self.headset], self._inst.sites, repeat=self._rows))

    def cleanup_models(self, denoiser):
        if self._inst is not None:
            self._inst.remove()
            self._inst = None

    def forward(self, pred_cond, pred_uncond=None, pred_ptb=None):
        from diffusers.guiders.guider_utils import GuiderOutput

        base = pred_cond if pred_uncond is None else pred_uncond + self.s * (pred_cond - pred_uncond)
        return GuiderOutput(pred=base + self.w * (pred_cond - pred_ptb), pred_cond=pred_cond, pred_uncond=pred_uncond)


@pytest.mark.parametrize("s", [4.0, 1.0])
def test_qwenimage_modular_equals_the_explicit_reference_guider(s):
    """Qwen-Image has no stock pipeline with the modular loop's rule (it rescales the whole guided prediction,
    perturbation term included, to the conditional norm), so the reference is an explicit guider in the same
    loop: separate passes, float64 materialised attention for the perturbed one, the equation written out."""
    from diffusers.modular_pipelines.qwenimage.modular_blocks_qwenimage import QwenImageAutoBlocks
    from tiny_dit_pipes import QWEN_CALL, build_qwenimage

    pipe = build_qwenimage()
    hs = make_headset(pipe, "L0H1, L1H0@0.5", "q")
    pe, npe = embeds()
    ones = torch.ones(pe.shape[:2], dtype=torch.long)

    def run(guider):
        blocks = QwenImageAutoBlocks()
        blocks.sub_blocks.pop("text_encoder")
        mp = blocks.init_pipeline()
        mp.update_components(transformer=pipe.transformer, scheduler=pipe.scheduler, vae=pipe.vae, guider=guider)
        mp.set_progress_bar_config(disable=True)
        negatives = {"negative_prompt_embeds": npe, "negative_prompt_embeds_mask": ones} if s != 1.0 else {}
        return mp(prompt_embeds=pe, prompt_embeds_mask=ones, num_inference_steps=STEPS,
                  generator=torch.Generator().manual_seed(0), output="latents", **negatives, **QWEN_CALL)

    got = run(HeadHunterGuidance(headsets=hs, perturbed_guidance_scale=2.0, guidance_scale=s))
    expected = run(ReferenceGuidance(hs, w=2.0, s=s))
    assert (got - expected).abs().max().item() < TOL
    assert (got - run(ClassifierFreeGuidance(guidance_scale=s))).abs().max().item() > 1e-3
    assert_stock_processors(pipe.transformer)


# ----- per-sample head sets -------------------------------------------------------------------------------------
def run_modular_qwen(pipe, guider, pe, npe) -> torch.Tensor:
    from diffusers.modular_pipelines.qwenimage.modular_blocks_qwenimage import QwenImageAutoBlocks
    from tiny_dit_pipes import QWEN_CALL

    blocks = QwenImageAutoBlocks()
    blocks.sub_blocks.pop("text_encoder")
    mp = blocks.init_pipeline()
    mp.update_components(transformer=pipe.transformer, scheduler=pipe.scheduler, vae=pipe.vae, guider=guider)
    mp.set_progress_bar_config(disable=True)
    ones = torch.ones(pe.shape[:2], dtype=torch.long)
    return mp(prompt_embeds=pe, prompt_embeds_mask=ones, negative_prompt_embeds=npe, negative_prompt_embeds_mask=ones,
              num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output="latents", **QWEN_CALL)


def _two_rows(family):
    """(pipe, run(guider) over a batch of 2 conditional rows, CFG scale s) for every modular loop the guider runs
    in: SD3 (two prompts), FLUX.1 (the swapped-in guider loop; no negative prompt, so CFG off), Wan, FLUX.2 Klein
    and Qwen-Image (two prompt embeddings of one length)."""
    from tiny_dit_pipes import build_flux2_klein, build_qwenimage, build_wan, prompt_embeds

    prompts = ["a photo of a red cat", "a blue dog"]
    pe = torch.cat([prompt_embeds(seed=0), prompt_embeds(seed=3)])
    npe = torch.cat([prompt_embeds(seed=1), prompt_embeds(seed=1)])
    if family == "sd3":
        pipe = build_sd3()
        return pipe, lambda g: run_modular_sd3(pipe, g, cfg=True, prompt=prompts), 4.0
    if family == "flux":
        pipe = build_flux(num_heads=2)
        return pipe, lambda g: run_modular_flux(pipe, g, prompt=prompts), 1.0
    pipe = {"wan": build_wan, "klein": build_flux2_klein, "qwenimage": build_qwenimage}[family]()
    run = {"wan": run_modular_wan, "klein": run_modular_klein, "qwenimage": run_modular_qwen}[family]
    return pipe, lambda g: run(pipe, g, pe, npe), 4.0


@pytest.mark.parametrize("family", ["sd3", "flux", "wan", "klein", "qwenimage"])
def test_per_sample_head_sets_in_every_modular_loop(family):
    """`per_sample=True`: conditional row i is perturbed by headsets[i] (None: unguided), as apply(per_sample=True).
    Row by row, the result equals the plain guider with that row's head set on the same two-row batch (None: the
    CFG guider); batched (one forward per step) equals one forward per prediction; within 1e-5."""
    pipe, run, s = _two_rows(family)
    a, b = make_headset(pipe, "L0H1, L1H0@0.5", "a"), make_headset(pipe, "L1H1", "b")
    make = lambda hs, **kw: HeadHunterGuidance(headsets=hs, perturbed_guidance_scale=2.0, guidance_scale=s, **kw)  # noqa: E731
    only_a, only_b, plain = run(make(a)), run(make(b)), run(ClassifierFreeGuidance(guidance_scale=s))
    for rows, expected in (([a, b], (only_a[0], only_b[1])), ([a, None], (only_a[0], plain[1]))):
        separate = run(make(rows, per_sample=True))
        together = run(make(rows, per_sample=True, batched=True))
        assert (together - separate).abs().max().item() < TOL, rows
        for i, want in enumerate(expected):
            assert (separate[i] - want).abs().max().item() < TOL, (rows, i)
    assert (only_a[0] - plain[0]).abs().max().item() > 1e-3 and (only_b[1] - plain[1]).abs().max().item() > 1e-3
    assert_stock_processors(pipe.transformer)


def test_per_sample_rows_must_match_the_batch_and_the_config_round_trips(sd3, sd3_sets, tmp_path):
    a, b = sd3_sets
    guider = HeadHunterGuidance(headsets=[a, None, b], per_sample=True, perturbed_guidance_scale=2.0, guidance_scale=4.5)
    with pytest.raises(ModelError, match="per_sample=True was given 3 head sets but the pipeline call has 2"):
        run_modular_sd3(sd3, guider, cfg=True, prompt=["one", "two"])
    assert_stock_processors(sd3.transformer)
    with pytest.raises(HeadSetError, match="None marks an unguided row only with per_sample=True"):
        HeadHunterGuidance(headsets=[a, None])
    with pytest.raises(HeadSetError, match="every entry is None"):
        HeadHunterGuidance(headsets=[None, None], per_sample=True)
    with pytest.raises(HeadSetError, match="one branch: pass one number"):
        HeadHunterGuidance(headsets=[a, b], per_sample=True, perturbed_guidance_scale=[1.0, 2.0])
    path = tmp_path / "a.safetensors"
    a.save(path)
    saved = HeadHunterGuidance(headsets=[str(path), None], per_sample=True, perturbed_guidance_scale=2.0)
    saved.save_pretrained(tmp_path / "g")
    config = json.loads((tmp_path / "g" / "guider_config.json").read_text())
    assert config["per_sample"] is True and config["headsets"][1] is None
    again = HeadHunterGuidance.from_pretrained(tmp_path / "g")
    assert again.per_sample and again.headsets[1] is None and again.headsets[0].name == a.name
    assert again.new(batched=True).headsets[1] is None
    config["per_sample"] = False
    (tmp_path / "g" / "guider_config.json").write_text(json.dumps(config))
    with pytest.raises(HeadSetError, match="only with per_sample true"):
        HeadHunterGuidance.from_pretrained(tmp_path / "g")


# ----- where diffusers' PerturbedAttentionGuidance fails ------------------------------------------------------
def test_sd3_stock_pag_guider_raises_where_ours_works(sd3):
    pag = PerturbedAttentionGuidance(guidance_scale=4.5, perturbed_guidance_scale=2.0, perturbed_guidance_layers=[1],
                                     perturbed_guidance_start=0.0, perturbed_guidance_stop=1.0)
    with pytest.raises(ValueError, match="JointAttnProcessor2_0'> not registered"):
        run_modular_sd3(sd3, pag, cfg=True)
    assert not any(hasattr(m, "_diffusers_hook") for m in sd3.transformer.transformer_blocks[1].modules())
    # ours on the same layer: every head of layer 1 with identity (PAG) and diffusers' joint identity scope
    sites = headhunter.get_registry().adapter_for(sd3).sites(sd3)
    layer = HeadSet.from_heads([(1, h) for h in range(sites[1].num_heads)], sites=sites, architecture="sd3", name="L1")
    ours = HeadHunterGuidance(headsets=layer, perturbed_guidance_scale=2.0, guidance_scale=4.5, perturbation="identity")
    got = run_modular_sd3(sd3, ours, cfg=True)
    with headhunter.apply(sd3, layer, scale=2.0, perturbation="identity"):
        expected = run_stock_sd3(sd3, 4.5)
    assert (got - expected).abs().max().item() < TOL


def test_flux_stock_pag_guider_raises_where_ours_works(flux):
    pag = PerturbedAttentionGuidance(guidance_scale=3.0, perturbed_guidance_scale=2.0, perturbed_guidance_layers=[0],
                                     perturbed_guidance_start=0.0, perturbed_guidance_stop=1.0)
    with pytest.raises(AttributeError, match="'FluxAttention' object has no attribute 'is_cross_attention'"):
        run_modular_flux(flux, pag)
    # without CFG it does not raise, but never perturbs either: its hook goes on at the third prepared batch only
    no_cfg = pag.new(guidance_scale=1.0)
    plain = run_modular_flux(flux, ClassifierFreeGuidance(guidance_scale=1.0))
    assert torch.equal(run_modular_flux(flux, no_cfg), plain)
    sites = headhunter.get_registry().adapter_for(flux).sites(flux)
    layer = HeadSet.from_heads([(0, h) for h in range(sites[0].num_heads)], sites=sites, architecture="flux", name="L0")
    ours = HeadHunterGuidance(headsets=layer, perturbed_guidance_scale=2.0, perturbation="identity")
    got = run_modular_flux(flux, ours)
    with headhunter.apply(flux, layer, scale=2.0, perturbation="identity"):
        expected = run_stock_flux(flux)
    assert (got - expected).abs().max().item() < TOL
    assert (got - plain).abs().max().item() > 1e-3


# ----- settings and errors ------------------------------------------------------------------------------------
def test_defaults_come_from_the_headset_metadata(sd3):
    hs = make_headset(sd3, "L0H1", "rec").with_metadata(
        guidance={"scale": 2.5, "cfg": 5.0, "start": 0.25, "stop": 0.75, "scope": "image"},
        perturbation={"name": "uniform", "params": {}})
    guider = HeadHunterGuidance(headsets=hs)
    cfg = guider.config
    assert (cfg.perturbed_guidance_scale, cfg.perturbed_guidance_start, cfg.perturbed_guidance_stop) == ([2.5], [0.25], [0.75])
    assert (cfg.guidance_scale, cfg.scope, cfg.perturbation) == (5.0, "image", "uniform")
    assert HeadHunterGuidance(headsets=make_headset(sd3, "L0H1", "plain")).config.guidance_scale == 1.0  # CFG off
    assert "scope" not in cfg["_use_default_values"]  # resolved values are config, not defaults to re-derive
    assert guider.new(batched=True).config.perturbed_guidance_start == [0.25]
    guider.set_state(step=0, num_inference_steps=4, timestep=torch.tensor(1.0))
    assert guider.num_conditions == 2  # cond, uncond: the branch starts at step 1
    guider.set_state(step=1, num_inference_steps=4, timestep=torch.tensor(1.0))
    assert guider.num_conditions == 3


def test_forward_is_the_guidance_equation(sd3, sd3_sets):
    a, b = sd3_sets
    guider = HeadHunterGuidance(headsets=[a, b], perturbed_guidance_scale=[2.0, 0.5], guidance_scale=4.0,
                                guidance_rescale=0.0)
    g = torch.Generator().manual_seed(0)
    cond, uncond, p0, p1 = (torch.randn(1, 4, 2, 2, generator=g, dtype=torch.float64) for _ in range(4))
    out = guider.forward(cond, uncond, pred_cond_perturbed_0=p0, pred_cond_perturbed_1=p1).pred
    assert torch.allclose(out, uncond + 4.0 * (cond - uncond) + 2.0 * (cond - p0) + 0.5 * (cond - p1), atol=1e-12)
    assert torch.allclose(guider.forward(cond, pred_cond_perturbed_1=p1).pred, cond + 0.5 * (cond - p1), atol=1e-12)


def test_bad_settings_are_refused_by_name(sd3, sd3_sets, flux):
    a, b = sd3_sets
    with pytest.raises(HeadSetError, match="at least one head set"):
        HeadHunterGuidance(headsets=[])
    with pytest.raises(HeadSetError, match="perturbed_guidance_scale= has 3 values for 2 head sets"):
        HeadHunterGuidance(headsets=[a, b], perturbed_guidance_scale=[1.0, 2.0, 3.0])
    with pytest.raises(HeadSetError, match="scope='everything' is not allowed"):
        HeadHunterGuidance(headsets=a, scope="everything")
    with pytest.raises(PluginError, match="perturbation 'uniform' does not define scope 'pag_mask'"):
        HeadHunterGuidance(headsets=a, perturbation="uniform", scope="pag_mask")  # at construction, not mid-run
    with pytest.raises(HeadSetError, match="guidance_scale=-1"):
        HeadHunterGuidance(headsets=a, guidance_scale=-1)
    with pytest.raises(HeadSetError, match="not found"):
        HeadHunterGuidance(headsets="no/such/file.safetensors")
    with pytest.raises(HeadSetError, match="unknown keys"):
        HeadHunterGuidance(headsets={"source": "x/y", "sha": "1"})
    # a head set for another model: refused before anything is installed, the model left stock
    flux_set = make_headset(flux, "L0H1", "f")
    with pytest.raises(HeadSetError, match="architecture 'flux'"):
        run_modular_sd3(sd3, HeadHunterGuidance(headsets=flux_set, guidance_scale=1.0), cfg=False)
    assert_stock_processors(sd3.transformer)


def test_a_forward_that_raised_leaves_nothing_behind_for_the_next_step(sd3, sd3_sets):
    guider = HeadHunterGuidance(headsets=sd3_sets[0], perturbed_guidance_scale=2.0)
    guider.set_state(step=0, num_inference_steps=4, timestep=torch.tensor(1.0))
    guider.prepare_inputs({"hidden_states": torch.zeros(1, 4, 16, 16)})
    guider.prepare_models(sd3.transformer)  # cond: nothing installed
    assert_stock_processors(sd3.transformer)
    guider.prepare_models(sd3.transformer)  # perturbed: installed; suppose the forward raised, no cleanup_models
    assert any(isinstance(p, PerturbingProcessor) for p in sd3.transformer.attn_processors.values())
    guider.set_state(step=1, num_inference_steps=4, timestep=torch.tensor(1.0))
    guider.prepare_inputs({"hidden_states": torch.zeros(1, 4, 16, 16)})
    guider.prepare_models(sd3.transformer)  # the next prepare removes the leftover
    assert_stock_processors(sd3.transformer)
    batched = guider.new(batched=True)
    batched.set_state(step=0, num_inference_steps=4, timestep=torch.tensor(1.0))
    batched.prepare_inputs({"hidden_states": torch.zeros(1, 4, 16, 16)})
    batched.prepare_models(sd3.transformer)
    with pytest.raises(ModelError, match="prepared 2 rows but the transformer got hidden_states with 3"):
        sd3.transformer(hidden_states=torch.zeros(3, 4, 16, 16), timestep=torch.ones(3),
                        encoder_hidden_states=torch.zeros(3, 8, 32), pooled_projections=torch.zeros(3, 32))
    # refused before the forward ran: already stock, without waiting for cleanup_models
    assert_stock_processors(sd3.transformer)


# ----- the config: guider_config.json round trips -------------------------------------------------------------
def test_local_round_trip_references_the_file(sd3, sd3_sets, tmp_path):
    a, b = sd3_sets
    a.save(tmp_path / "a.safetensors")
    guider = HeadHunterGuidance(headsets=[str(tmp_path / "a.safetensors")], perturbed_guidance_scale=2.0,
                                guidance_scale=3.0, perturbation="softpag", scope="image")
    guider.save_pretrained(tmp_path / "repo" / "guider")
    saved = json.loads((tmp_path / "repo" / "guider" / "guider_config.json").read_text())
    assert saved["_class_name"] == "HeadHunterGuidance"
    assert saved["headsets"] == [{"source": str(tmp_path / "a.safetensors"), "revision": None, "weight_name": None}]
    assert "L0H1" not in json.dumps(saved)  # referenced, not embedded
    loaded = HeadHunterGuidance.from_pretrained(tmp_path / "repo", subfolder="guider")
    assert loaded.headsets == [a]
    keep = ("headsets", "perturbed_guidance_scale", "guidance_scale", "scope", "perturbation", "perturbation_params")
    assert {k: loaded.config[k] for k in keep} == {k: guider.config[k] for k in keep}
    assert torch.equal(run_modular_sd3(sd3, loaded, cfg=True), run_modular_sd3(sd3, guider, cfg=True))


def test_a_saved_modular_pipeline_reloads_the_guider_through_diffusers(sd3, sd3_sets, tmp_path):
    """modular_model_index.json records the guider as (headhunter.engine.guider, HeadHunterGuidance): diffusers' own
    ModularPipeline.from_pretrained + load_components rebuild it from guider/guider_config.json."""
    from diffusers.modular_pipelines import ComponentSpec, ModularPipeline

    sd3_sets[0].save(tmp_path / "a.safetensors")
    HeadHunterGuidance(headsets=str(tmp_path / "a.safetensors"), perturbed_guidance_scale=2.0,
                       guidance_scale=4.5).save_pretrained(tmp_path / "repo" / "guider")
    mp = modular(StableDiffusion3AutoBlocks(), sd3)
    mp.update_components(guider=ComponentSpec("guider", HeadHunterGuidance, pretrained_model_name_or_path=str(
        tmp_path / "repo"), subfolder="guider").load())
    mp.save_pretrained(str(tmp_path / "repo"), overwrite_modular_index=True)
    index = json.loads((tmp_path / "repo" / "modular_model_index.json").read_text())
    assert index["guider"][:2] == ["headhunter.engine.guider", "HeadHunterGuidance"]
    again = ModularPipeline.from_pretrained(str(tmp_path / "repo"))
    again.load_components(torch_dtype=torch.float32)
    again.set_progress_bar_config(disable=True)
    assert isinstance(again.guider, HeadHunterGuidance)
    call = dict(prompt=PROMPT, negative_prompt="", num_inference_steps=STEPS, output="latents", **SD3_CALL)
    assert torch.equal(again(generator=torch.Generator().manual_seed(0), **call),
                       mp(generator=torch.Generator().manual_seed(0), **call))


def test_presets_are_referenced_by_name_and_objects_cannot_be_saved(sd3_sets, tmp_path):
    guider = HeadHunterGuidance(headsets="preset:digits-uncond-greedy")
    guider.save_pretrained(tmp_path / "g")
    assert HeadHunterGuidance.from_pretrained(tmp_path / "g").config.headsets == [
        {"source": "preset:digits-uncond-greedy", "revision": None, "weight_name": None}]
    with pytest.raises(HeadSetError, match="head set 'a' was given as an object"):
        HeadHunterGuidance(headsets=sd3_sets[0]).save_pretrained(tmp_path / "h")
    assert not (tmp_path / "h").exists()


# ----- the Hub (tests/fakehub.py) ------------------------------------------------------------------------------
@pytest.fixture
def hub(monkeypatch, tmp_path):
    from fakehub import FakeHub
    from test_hub import point_hub_at

    with FakeHub() as fake:
        point_hub_at(monkeypatch, fake.endpoint, tmp_path / "hf-cache")
        # diffusers' push_to_hub calls huggingface_hub's module-level create_repo/upload_folder, bound to an HfApi
        # made at import time (its endpoint read then)
        from huggingface_hub import hf_api

        monkeypatch.setattr(hf_api.api, "endpoint", fake.endpoint)
        yield fake


@pytest.mark.slow
def test_hub_round_trip_pins_the_headset_commit(hub, sd3, sd3_sets, tmp_path, monkeypatch):
    a, b = sd3_sets
    a.push_to_hub("me/heads")
    first = hub.repos["me/heads"].refs["main"]
    guider = HeadHunterGuidance(headsets="me/heads", perturbed_guidance_scale=2.0, guidance_scale=3.0)
    assert guider.config.headsets == [{"source": "me/heads", "revision": first, "weight_name": "headset.safetensors"}]
    guider.push_to_hub("me/sd3-headhunter", subfolder="guider")
    assert "guider/guider_config.json" in hub.repos["me/sd3-headhunter"].files("main")
    b.push_to_hub("me/heads")  # the head-set repo moves on; the guider config still points at the first commit
    assert hub.repos["me/heads"].refs["main"] != first
    loaded = HeadHunterGuidance.from_pretrained("me/sd3-headhunter", subfolder="guider")
    assert loaded.headsets == [a] and loaded.config.headsets == guider.config.headsets
    assert torch.equal(run_modular_sd3(sd3, loaded, cfg=True), run_modular_sd3(sd3, guider, cfg=True))
    assert HeadHunterGuidance(headsets="me/heads").headsets == [b]  # unpinned: the newest
    from huggingface_hub import constants  # offline: guider config and pinned head set come from the cache

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    requests = len(hub.requests)
    offline = HeadHunterGuidance.from_pretrained("me/sd3-headhunter", subfolder="guider")
    assert offline.headsets == [a] and len(hub.requests) == requests


def test_push_refuses_headsets_others_cannot_fetch(hub, sd3_sets, tmp_path):
    path = sd3_sets[0].save(tmp_path / "a.safetensors")
    with pytest.raises(HubError, match="is a local file"):
        HeadHunterGuidance(headsets=str(path)).push_to_hub("me/guider", subfolder="guider")
    with pytest.raises(HeadSetError, match="given as an object"):
        HeadHunterGuidance(headsets=sd3_sets[0]).push_to_hub("me/guider", subfolder="guider")
    assert "me/guider" not in hub.repos


# ----- export and docs ---------------------------------------------------------------------------------------
def test_exported_from_the_package():
    assert headhunter.HeadHunterGuidance is HeadHunterGuidance
    assert "HeadHunterGuidance" in headhunter.__all__


def test_guidance_docs_modular_example_runs(sd3, sd3_sets, tmp_path, monkeypatch):
    guide = (Path(__file__).resolve().parents[1] / "docs" / "guidance.md").read_text()
    section = guide.split("## Modular diffusers", 1)[1]
    example = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    monkeypatch.chdir(tmp_path)
    sd3_sets[0].save(tmp_path / "my-headset.safetensors")
    scope = {"pipe": sd3}
    exec(example, scope)
    assert scope["image"].size == (32, 32)
    assert scope["same"].config.headsets == scope["guider"].config.headsets
    assert (tmp_path / "my-sd3-guider" / "guider" / "guider_config.json").is_file()
