"""Tiny, offline, random-weight pipelines for the newer DiTs: Flux2Pipeline, QwenImagePipeline, WanPipeline (and Wan
image-to-video, VACE).

Built from configs in memory (tiny transformer + tiny VAE of the pipeline's own class), put in eval() mode.
The heavy text encoders (FLUX.2's Mistral-3, Qwen-Image's Qwen2.5-VL) are not built: the tests pass
`prompt_embeds` (and `negative_prompt_embeds`) directly, which these pipelines accept, so the text encoder
and tokenizer are None; Wan's UMT5 is small enough to build tiny (`build_wan(text_encoder=True)`). For code that passes prompt strings (the search), `with_prompt_table`
gives a pipeline whose `encode_prompt` looks each prompt up in a fixed random table instead (test only).
Sizes: FLUX.2 and Qwen-Image 32x32 px -> 8 x 8 = 64 image tokens (VAE scale 2, 2x2 packing); Wan 5 frames
at 32x48 px -> 3 latent frames x 8 x 12 = 288 video tokens.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKLFlux2,
    AutoencoderKLQwenImage,
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
    WanPipeline,
    WanTransformer3DModel,
)

TEXT_DIM = 32
FLUX2_CALL: dict[str, Any] = {"height": 32, "width": 32}
QWEN_CALL: dict[str, Any] = {"height": 32, "width": 32}
WAN_CALL: dict[str, Any] = {"height": 32, "width": 48, "num_frames": 5}
#: max_sequence_length of the tiny Wan pipeline with a text encoder (WanPipeline pads prompts to it).
WAN_TEXT_LEN = 12


def _eval(pipe: Any) -> Any:
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_flux2(seed: int = 0, num_heads: int = 2, guidance_embeds: bool = True, num_layers: int = 1,
                num_single_layers: int = 1) -> Flux2Pipeline:
    """Flux2Pipeline: 1 double + 1 single block (by default) x `num_heads` x 16 dims; VAE with 4 latent channels
    (-> 16 packed), scale 2."""
    torch.manual_seed(seed)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=16, num_layers=num_layers, num_single_layers=num_single_layers, attention_head_dim=16,
        num_attention_heads=num_heads, joint_attention_dim=TEXT_DIM, timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4), guidance_embeds=guidance_embeds,
    )
    vae = AutoencoderKLFlux2(
        block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4, norm_num_groups=4,
        sample_size=32,
    )
    pipe = Flux2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                         transformer=transformer)
    return _eval(pipe)


def build_flux2_klein(seed: int = 0, num_heads: int = 2) -> Flux2KleinPipeline:
    """Flux2KleinPipeline (not distilled: real CFG, cond and uncond as separate calls): the FLUX.2 transformer
    without guidance embedding, the same tiny VAE."""
    flux2 = build_flux2(seed, num_heads, guidance_embeds=False)
    pipe = Flux2KleinPipeline(scheduler=flux2.scheduler, vae=flux2.vae, text_encoder=None, tokenizer=None,
                              transformer=flux2.transformer, is_distilled=False)
    return _eval(pipe)


def build_qwenimage(seed: int = 0, num_heads: int = 2, num_layers: int = 2) -> QwenImagePipeline:
    """QwenImagePipeline: 2 joint blocks x `num_heads` x 16 dims; Qwen-Image VAE with 4 latent channels, scale 2."""
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=num_layers, attention_head_dim=16,
        num_attention_heads=num_heads, joint_attention_dim=TEXT_DIM, axes_dims_rope=(4, 6, 6),
    )
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
                                 latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                             transformer=transformer)
    return _eval(pipe)


def build_wan(seed: int = 0, num_heads: int = 2, text_encoder: bool = False, num_layers: int = 2) -> WanPipeline:
    """WanPipeline (Wan 2.1 layout: one transformer): 2 blocks x `num_heads` x 12 dims; Wan VAE with 4 latent
    channels, spatial scale 2, temporal scale 2. `text_encoder=True`: a tiny UMT5 encoder (d_model 32) with the
    in-memory T5 tokenizer of tests/tiny_pipes.py, so the pipeline runs from prompt strings."""
    torch.manual_seed(seed)
    tokenizer = encoder = None
    if text_encoder:
        from tiny_pipes import t5_tokenizer
        from transformers import UMT5Config, UMT5EncoderModel

        tokenizer = t5_tokenizer(max_length=WAN_TEXT_LEN)
        encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=8, d_ff=37,
                                              num_layers=2, num_heads=4, relative_attention_num_buckets=8))
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=num_heads, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=TEXT_DIM, freq_dim=32, ffn_dim=32, num_layers=num_layers, rope_max_seq_len=32,
    )
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[True],
                           latents_mean=[0.0] * 4, latents_std=[1.0] * 4, scale_factor_temporal=2,
                           scale_factor_spatial=2)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=encoder, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                       transformer=transformer)
    return _eval(pipe)


def build_wan_i2v(seed: int = 0, expand_timesteps: bool = False) -> Any:
    """WanImageToVideoPipeline on the tiny Wan VAE. Wan 2.1 layout (default): the transformer takes the noise
    latents concatenated on channels with the first-frame mask (2 channels: the VAE's temporal scale) and the
    image's latents (4 + 2 + 4 = 10 in), and image embeddings from a tiny CLIP vision encoder (hidden size 16,
    made in memory; `attn2` then has the added K/V projections). `expand_timesteps=True`: the Wan 2.2 TI2V
    layout, the first latent frame replaced by the image's and a per-token timestep, no image encoder."""
    from diffusers import WanImageToVideoPipeline
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

    base = build_wan(seed)
    torch.manual_seed(seed)
    extra: dict[str, Any] = {}
    if not expand_timesteps:
        extra = {"image_encoder": CLIPVisionModel(CLIPVisionConfig(
                     hidden_size=16, image_size=32, patch_size=8, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32)),
                 "image_processor": CLIPImageProcessorPil(size={"shortest_edge": 32},
                                                          crop_size={"height": 32, "width": 32})}
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4 if expand_timesteps else 10,
        out_channels=4, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
        image_dim=None if expand_timesteps else 16, added_kv_proj_dim=None if expand_timesteps else 24,
    )
    pipe = WanImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=base.vae, scheduler=base.scheduler,
                                   transformer=transformer, expand_timesteps=expand_timesteps, **extra)
    return _eval(pipe)


def build_wan_vace(seed: int = 0) -> Any:
    """WanVACEPipeline: the tiny Wan VAE and a `WanVACETransformer3DModel` of 2 blocks x 2 heads x 12 dims with one
    VACE block (control channels 2 x 4 latent + 4 mask = 12: the mask is folded by the VAE's spatial scale 2)."""
    from diffusers import WanVACEPipeline, WanVACETransformer3DModel

    base = build_wan(seed)
    torch.manual_seed(seed)
    transformer = WanVACETransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=TEXT_DIM, freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=32, vace_layers=[0],
        vace_in_channels=12,
    )
    pipe = WanVACEPipeline(tokenizer=None, text_encoder=None, vae=base.vae, scheduler=base.scheduler,
                           transformer=transformer)
    return _eval(pipe)


def prompt_embeds(batch: int = 1, length: int = 6, seed: int = 0) -> torch.Tensor:
    """Stand-in text-encoder output [batch, length, TEXT_DIM]."""
    return torch.randn(batch, length, TEXT_DIM, generator=torch.Generator().manual_seed(seed))


def embed_prompts(prompts: str | list[str], length: int = 6) -> torch.Tensor:
    """A stand-in text encoder: each prompt string -> fixed random embeddings seeded by its characters."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    return torch.cat([prompt_embeds(1, length, seed=sum(ord(c) * (i + 1) for i, c in enumerate(p))) for p in prompts])


def with_prompt_table(pipe: Any) -> Any:
    """`pipe` whose `encode_prompt` embeds prompt strings with `embed_prompts` (FLUX.2, Qwen-Image), so the
    pipeline's own loop runs from prompts without a text encoder."""
    original = pipe.encode_prompt

    def encode_prompt(prompt=None, device=None, num_images_per_prompt=1, prompt_embeds=None, *args, **kwargs):
        if prompt_embeds is None:
            prompt_embeds = embed_prompts(prompt if prompt is not None else "")
        return original(None, device, num_images_per_prompt, prompt_embeds, *args, **kwargs)

    pipe.encode_prompt = encode_prompt
    return pipe
