"""Edit and reference-image pipelines (issue 24): FLUX Kontext (+ inpaint), Qwen-Image Edit (+ Plus), FLUX.2 with
`image=`. These append the reference images' tokens after the target's and step on `noise_pred[:, :latents.size(1)]`.

The reference here is the pipeline's own loop with a test-side forward hook on the transformer that replaces each
conditional prediction by `cond + w (cond - perturbed)` on the *full* token sequence (the perturbed pass made with
the engine's `install` and explicit strengths, CFG off); the pipeline then slices it itself. So the reference
shares neither apply()'s row bookkeeping nor its slicing of the guidance term. Tiny random-weight pipelines built
from configs, CPU; prompt embeddings are passed where the text encoder would need downloading.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import headhunter
from headhunter import HeadSet, get_registry
from headhunter.engine.attention import install
from headhunter.plan.strengths import batch_strengths

from tiny_pipes import FLUX_CALL, build_flux

STEPS = 3
W = 2.0
TOL = 1e-5


def headset(pipe, notation: str) -> HeadSet:
    adapter = get_registry().adapter_for(pipe)
    return HeadSet.from_notation(notation, sites=adapter.sites(pipe), architecture=adapter.architecture, name="e")


def picture(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def maxdiff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


@torch.no_grad()
def run(pipe, call, seed: int = 0):
    out = pipe(**call, num_inference_steps=STEPS, output_type="latent", generator=torch.Generator().manual_seed(seed))
    return out.frames if hasattr(out, "frames") else out.images


@torch.no_grad()
def hooked_reference(pipe, hs, call, perturbation="softpag", params=None, scope="joint", cfg=1.0):
    """The pipeline's loop with every transformer output replaced by `cond + W (cond - perturbed)` (no CFG). With
    `cfg = s > 1` (a pipeline running cond and uncond as separate calls) only the calls with the call's
    `prompt_embeds` are replaced, by `cond + (W / s) (cond - perturbed)`, so the pipeline's own
    `uncond + s (cond - uncond)` adds exactly `W (cond - perturbed)`."""
    from headhunter.plan.plan import resolve_perturbation

    pert = resolve_perturbation(perturbation, params)
    adapter = get_registry().adapter_for(pipe)
    installation = install(adapter, pipe, pert, scope)
    busy = []

    def hook(module, args, kwargs, output):
        if busy:
            return None
        if cfg > 1 and not torch.equal(kwargs["encoder_hidden_states"], call["prompt_embeds"]):
            return None  # the unconditional pass: stock
        busy.append(1)
        try:
            rows = kwargs["hidden_states"].shape[0]
            with installation.strengths(batch_strengths([hs], installation.sites, repeat=rows)):
                ptb = module(*args, **kwargs)[0]
        finally:
            busy.clear()
        cond = output[0]
        return (cond + (W / cfg) * (cond - ptb),) + tuple(output[1:])

    handle = pipe.transformer.register_forward_hook(hook, with_kwargs=True)
    try:
        return run(pipe, call)
    finally:
        handle.remove()
        installation.remove()


def site_output(pipe, site, call, hs=None, **apply_kwargs):
    """Attention site `site`'s (image-stream, text-stream) outputs at the first step: stock, or (with `hs`) of the perturbed
    pass (apply(batched=False) runs it as its own forward of the same batch size, right after the stock one)."""
    seen = []
    module = pipe.transformer.get_submodule(site)
    handle = module.register_forward_hook(lambda m, a, o: seen.append(o))
    try:
        if hs is None:
            run(pipe, call)
            return seen[0]
        with headhunter.apply(pipe, hs, scale=W, batched=False, **apply_kwargs):
            run(pipe, call)
        return seen[1]
    finally:
        handle.remove()


# ----- pipelines ------------------------------------------------------------------------------------------------
def kontext():
    from diffusers import FluxKontextPipeline

    pipe = FluxKontextPipeline(**build_flux(num_heads=2).components)
    pipe.set_progress_bar_config(disable=True)
    call = {**FLUX_CALL, "prompt": "a red cat", "image": picture(24, 32), "_auto_resize": False, "max_area": 32 * 32,
            "guidance_scale": 3.5}
    return pipe, call, 64, 48  # target 8 x 8 tokens, reference 6 x 8


def kontext_inpaint():
    from diffusers import FluxKontextInpaintPipeline

    pipe = FluxKontextInpaintPipeline(**build_flux(num_heads=2).components)
    pipe.set_progress_bar_config(disable=True)
    mask = Image.fromarray((np.arange(32 * 32).reshape(32, 32) % 32 > 15).astype(np.uint8) * 255)
    call = {**FLUX_CALL, "prompt": "a red cat", "image": picture(32, 32, 1), "mask_image": mask,
            "image_reference": picture(24, 32, 2), "_auto_resize": False, "max_area": 32 * 32, "guidance_scale": 3.5}
    return pipe, call, 64, 48


def _smaller_reference_area(module):
    """Qwen-Image Edit sizes its reference image to a fixed 1024 x 1024 px area (Edit Plus: also 384 x 384 for the
    VL encoder): for the tiny VAE that is 4096 tokens, so the test divides every target area by 512
    (a 32 x 24 px picture -> a 64 x 32 px reference: 8 x 16 = 128 tokens)."""
    original = module.calculate_dimensions
    return lambda area, ratio: original(max(area // 512, 32 * 32), ratio)


def qwen_edit(plus: bool = False):
    from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit, pipeline_qwenimage_edit_plus
    from tiny_dit_pipes import build_qwenimage, prompt_embeds

    base = build_qwenimage()
    cls, module = ((QwenImageEditPlusPipeline, pipeline_qwenimage_edit_plus) if plus
                   else (QwenImageEditPipeline, pipeline_qwenimage_edit))
    pipe = cls(scheduler=base.scheduler, vae=base.vae, text_encoder=None, tokenizer=None, processor=None,
               transformer=base.transformer)
    pipe.set_progress_bar_config(disable=True)
    module.calculate_dimensions = _smaller_reference_area(module)  # undone by the fixture below
    image = [picture(24, 32), picture(32, 24, 3)] if plus else picture(24, 32)
    call = {"prompt_embeds": prompt_embeds(), "image": image, "height": 32, "width": 32}
    return pipe, call, 64, (128 + 128 if plus else 128)


def flux2_reference_images():
    from tiny_dit_pipes import FLUX2_CALL, build_flux2, prompt_embeds

    pipe = build_flux2()
    # Flux2Pipeline takes reference images of at least 64 x 64 px: 16 x 16 and 16 x 18 tokens here
    call = {**FLUX2_CALL, "prompt_embeds": prompt_embeds(), "image": [picture(64, 64), picture(64, 72, 4)]}
    return pipe, call, 64, 256 + 288  # target 8 x 8 tokens


@pytest.fixture(autouse=True)
def _restore_qwen_sizes():
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit, pipeline_qwenimage_edit_plus

    saved = [(m, m.calculate_dimensions) for m in (pipeline_qwenimage_edit, pipeline_qwenimage_edit_plus)]
    yield
    for module, function in saved:
        module.calculate_dimensions = function


PIPES = {"kontext": kontext, "kontext_inpaint": kontext_inpaint, "qwen_edit": qwen_edit,
         "qwen_edit_plus": lambda: qwen_edit(plus=True), "flux2_image": flux2_reference_images}
NOTATION = "L0H1, L1H0@0.7"


@pytest.mark.parametrize("name", sorted(PIPES))
@pytest.mark.parametrize("perturbation,params,scope", [("softpag", None, "joint"), ("softpag", None, "image"),
                                                       ("blur", {"sigma": 1.0}, "joint")])
def test_edit_pipeline_is_guided_like_the_reference_loop(name, perturbation, params, scope):
    pipe, call, _, _ = PIPES[name]()
    hs = headset(pipe, NOTATION)
    stock = run(pipe, call)
    reference = hooked_reference(pipe, hs, call, perturbation, params, scope)
    kwargs = {"perturbation": perturbation, "scope": scope}
    if params is not None:
        kwargs["perturbation_params"] = params
    with headhunter.apply(pipe, hs, scale=W, **kwargs) as handle:
        out = run(pipe, call)
    assert handle.calls["guided_steps"] == STEPS
    assert maxdiff(out, stock) > 1e-3
    assert maxdiff(out, reference) <= TOL
    assert torch.equal(run(pipe, call), stock)  # removed: bit-identical


@pytest.mark.parametrize("name", sorted(PIPES))
def test_image_scope_and_blur_leave_text_and_reference_rows_as_they_are(name):
    """At the first perturbed site of the first step, the attention output's text rows and reference-image rows
    are bit-identical to stock; only the target's rows change (scope image, and blur in any scope)."""
    pipe, call, target, ref = PIPES[name]()
    site = "transformer_blocks.0.attn"
    hs = headset(pipe, "L0H1")
    stock, stock_text = site_output(pipe, site, call)
    for kwargs in ({"scope": "image"}, {"perturbation": "blur", "perturbation_params": {"sigma": 1.0}}):
        guided, guided_text = site_output(pipe, site, call, hs, **kwargs)
        assert guided.shape[1] == target + ref
        assert torch.equal(guided[:, target:], stock[:, target:]), kwargs  # reference rows untouched
        assert torch.equal(guided_text, stock_text), kwargs  # text rows untouched
        assert maxdiff(guided[:, :target], stock[:, :target]) > 1e-4, kwargs
    joint, _ = site_output(pipe, site, call, hs)
    assert maxdiff(joint[:, target:], stock[:, target:]) > 1e-4  # joint scope perturbs every row


# ----- Wan image-to-video and VACE ------------------------------------------------------------------------------
# Wan image-to-video adds no tokens: the image's latents are concatenated on channels (Wan 2.1, with CLIP image
# embeddings for the cross-attention) or replace the first latent frame (Wan 2.2 TI2V, per-token timesteps). VACE
# prepends one latent frame per reference image to the latents the pipeline denoises and steps on (it drops them
# only after the loop), so they are guided as video frames (docs/compatibility.md).
def wan_i2v(expand_timesteps: bool = False, cfg: float = 1.0):
    from tiny_dit_pipes import WAN_CALL, build_wan_i2v, prompt_embeds

    pipe = build_wan_i2v(expand_timesteps=expand_timesteps)
    call = {**WAN_CALL, "image": picture(32, 48), "prompt_embeds": prompt_embeds(), "guidance_scale": cfg}
    if cfg > 1:
        call["negative_prompt_embeds"] = prompt_embeds(seed=5)
    return pipe, call


def wan_vace():
    from tiny_dit_pipes import WAN_CALL, build_wan_vace, prompt_embeds

    pipe = build_wan_vace()
    call = {**WAN_CALL, "reference_images": [picture(32, 48, 2)], "prompt_embeds": prompt_embeds(), "guidance_scale": 1.0}
    return pipe, call


WAN_PIPES = {"wan_i2v": wan_i2v, "wan_i2v_cfg": lambda: wan_i2v(cfg=2.0), "wan_ti2v": lambda: wan_i2v(True),
             "wan_vace": wan_vace}


@pytest.mark.parametrize("name", sorted(WAN_PIPES))
@pytest.mark.parametrize("perturbation,params,scope", [("softpag", None, "joint"), ("softpag", None, "image"),
                                                       ("blur", {"sigma": 1.0, "temporal_sigma": 1.0}, "joint")])
def test_wan_conditioned_pipeline_is_guided_like_the_reference_loop(name, perturbation, params, scope):
    pipe, call = WAN_PIPES[name]()
    hs = headset(pipe, "L0H1, L1H0@0.7")
    stock = run(pipe, call)
    reference = hooked_reference(pipe, hs, call, perturbation, params, scope, cfg=call["guidance_scale"])
    kwargs = {"perturbation": perturbation, "scope": scope}
    if params is not None:
        kwargs["perturbation_params"] = params
    with headhunter.apply(pipe, hs, scale=W, **kwargs) as handle:
        out = run(pipe, call)
    assert handle.calls["guided_steps"] == STEPS
    if name == "wan_vace":  # the reference frame is part of what the pipeline steps on: 1 + 3 latent frames
        assert out.shape[2] == 4
    assert maxdiff(out, stock) > 1e-3
    assert maxdiff(out, reference) <= TOL, maxdiff(out, reference)
    assert torch.equal(run(pipe, call), stock)  # removed: bit-identical


def test_wan_vace_blur_grid_is_the_wan_adapters():
    """The declared Wan VACE grid (frames x rows x cols from the latent and patch_size) is not trusted: the same
    weights in a `WanTransformer3DModel` (the copied wan adapter, its own grid) give the same blurred forward, with
    the VACE hints scaled by 0 (they are then added as exact zeros)."""
    from diffusers import WanTransformer3DModel
    from tiny_dit_pipes import build_wan_vace

    from headhunter.plan.plan import resolve_perturbation

    vace = build_wan_vace().transformer
    keys = ("patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim",
            "freq_dim", "ffn_dim", "num_layers", "rope_max_seq_len", "cross_attn_norm", "qk_norm", "eps")
    wan = WanTransformer3DModel(**{k: vace.config[k] for k in keys}).eval()
    assert not wan.load_state_dict(vace.state_dict(), strict=False).missing_keys
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 4, 3, 8, 12, generator=g), torch.randn(2, 6, 32, generator=g)
    control = torch.randn(2, 12, 3, 8, 12, generator=g)
    blur = resolve_perturbation("blur", {"sigma": 1.0, "temporal_sigma": 1.0})
    outs = []
    for model, extra in ((wan, {}), (vace, {"control_hidden_states": control,
                                            "control_hidden_states_scale": torch.zeros(1)})):
        adapter = get_registry().adapter_for(model)
        hs = HeadSet.from_notation(NOTATION, sites=adapter.sites(model), architecture=adapter.architecture, name="t")
        with install(adapter, model, blur, "joint") as inst, inst.strengths(inst.batch_strengths([None, hs])), \
                torch.no_grad():
            outs.append(model(hidden_states=x, timestep=torch.tensor([500, 500]), encoder_hidden_states=text,
                              return_dict=False, **extra)[0])
    assert get_registry().adapter_for(vace).name == "wan_vace" and get_registry().adapter_for(wan).name == "wan"
    assert maxdiff(outs[0][1], outs[0][0]) > 1e-3  # blurred
    assert maxdiff(outs[0], outs[1]) <= 1e-6
