"""Tiny, offline, random-weight diffusers pipelines for tests: StableDiffusion3Pipeline and FluxPipeline.

Everything is built from configs in memory: CLIP and T5 tokenizers from an in-memory vocabulary (no files,
no Hub), tiny text encoders, a two-block VAE (scale factor 2, so 32x32 px -> 16x16 latents) and tiny
transformers. Every component is put in eval() mode: modules built from configs start in train() mode and
T5's dropout would otherwise make two identical calls differ.

Sizes: SD3 32x32 px -> 64 image tokens (patch 2), FLUX 32x32 px -> 64 packed tokens. One 4-step call of
either pipeline takes a few tens of milliseconds on a CPU.
"""

from __future__ import annotations

import os
import string
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from tiny import FLUX_CONFIG, SD3_CONFIG  # noqa: E402 (one home for the tiny transformer configs)
from diffusers import (  # noqa: E402
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import (  # noqa: E402
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

#: Prompts the tiny tokenizers cover word by word (anything else still tokenizes, character by character).
WORDS = "a an the cat dog photo of red blue green on in with painting house tree".split()

#: Call settings that keep the tiny pipelines fast and inside their position-embedding limits.
SD3_CALL: dict[str, Any] = {"height": 32, "width": 32, "max_sequence_length": 16}
FLUX_CALL: dict[str, Any] = {"height": 32, "width": 32, "max_sequence_length": 16}


# ----- tokenizers, built in memory ---------------------------------------------------------------------
def clip_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """A character-level CLIP BPE tokenizer: special tokens, every character alone and word-final."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + string.digits + string.punctuation:
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def t5_tokenizer(max_length: int = 64) -> T5TokenizerFast:
    """A unigram T5 tokenizer over WORDS plus single letters."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -5.0) for w in WORDS] + [(c, -8.0) for c in string.ascii_lowercase]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=max_length)


# ----- components -----------------------------------------------------------------------------------------
def _clip_config(vocab_size: int, hidden: int = 16, projection: int = 16) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=projection,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )


def _t5_encoder(vocab_size: int, d_model: int = 32) -> T5EncoderModel:
    return T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8,
    ))


def tiny_vae(latent_channels: int = 4) -> AutoencoderKL:
    """Two-block VAE (scale factor 2); SD3 and FLUX both need an explicit shift_factor."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=[8, 8],
        layers_per_block=1, norm_num_groups=4, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, sample_size=32, scaling_factor=1.5305, shift_factor=0.0609,
    )


def _eval(pipe: Any) -> Any:
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----- pipelines --------------------------------------------------------------------------------------------
def sd3_transformer(num_layers: int = 2, num_heads: int = 4, head_dim: int = 8, **config: Any) -> SD3Transformer2DModel:
    """A tiny SD3 transformer (SD3.5 features through `qk_norm="rms_norm"`, `dual_attention_layers=(0,)`)."""
    cfg = dict(SD3_CONFIG, num_layers=num_layers, attention_head_dim=head_dim, num_attention_heads=num_heads,
               caption_projection_dim=num_heads * head_dim, pos_embed_max_size=32)  # room for 32x32 px pipelines
    cfg.update(config)
    return SD3Transformer2DModel(**cfg)


def build_sd3(t5: bool = False, seed: int = 0, **transformer_config: Any) -> StableDiffusion3Pipeline:
    """Tiny StableDiffusion3Pipeline: CLIP-L/G stand-ins (16 + 16 pooled = 32), optional T5 (d_model 32)."""
    torch.manual_seed(seed)
    tok, tok2 = clip_tokenizer(), clip_tokenizer()
    te = CLIPTextModelWithProjection(_clip_config(len(tok)))
    te2 = CLIPTextModelWithProjection(_clip_config(len(tok2)))
    tok3 = t5_tokenizer() if t5 else None
    te3 = _t5_encoder(len(tok3)) if t5 else None
    pipe = StableDiffusion3Pipeline(
        transformer=sd3_transformer(**transformer_config), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(4), text_encoder=te, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok2,
        text_encoder_3=te3, tokenizer_3=tok3,
    )
    return _eval(pipe)


def flux_transformer(num_layers: int = 1, num_single_layers: int = 1, num_heads: int = 2,
                     guidance_embeds: bool = False, **config: Any) -> FluxTransformer2DModel:
    """A tiny FLUX transformer (head_dim 16 = sum of the RoPE axes (4, 6, 6))."""
    cfg = dict(FLUX_CONFIG, num_layers=num_layers, num_single_layers=num_single_layers, num_attention_heads=num_heads,
               pooled_projection_dim=16, guidance_embeds=guidance_embeds)  # the tiny CLIP's pooled width
    cfg.update(config)
    return FluxTransformer2DModel(**cfg)


def build_flux(seed: int = 0, **transformer_config: Any) -> FluxPipeline:
    """Tiny FluxPipeline: CLIP (pooled 16) + T5 (d_model 32); 4 latent channels packed 2x2 -> 16."""
    torch.manual_seed(seed)
    tok, tok2 = clip_tokenizer(), t5_tokenizer()
    pipe = FluxPipeline(
        transformer=flux_transformer(**transformer_config), scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=tiny_vae(4), text_encoder=CLIPTextModel(_clip_config(len(tok))), tokenizer=tok,
        text_encoder_2=_t5_encoder(len(tok2)), tokenizer_2=tok2,
    )
    return _eval(pipe)


if __name__ == "__main__":  # smoke run: python tests/tiny_pipes.py
    import time

    for name, build, call in (("sd3", build_sd3, SD3_CALL), ("sd3+t5", lambda: build_sd3(t5=True), SD3_CALL),
                              ("flux", build_flux, FLUX_CALL)):
        pipe = build()
        for _ in range(2):
            t0 = time.perf_counter()
            out = pipe("a photo of a red cat", num_inference_steps=4, guidance_scale=3.5, output_type="pt",
                       generator=torch.Generator().manual_seed(0), **call).images
        print(f"{name}: {time.perf_counter() - t0:.3f}s {tuple(out.shape)}")
