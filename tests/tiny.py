"""Tiny random-weight transformers and their inputs, shared by every test: SD3, SD3.5-like, FLUX, and the
newer DiTs FLUX.2, Qwen-Image and Wan 2.x (video: 3 latent frames).

Built from configs in memory (no files, no Hub) with fixed seeds and put in eval() mode. Image grids are
non-square on purpose (4 x 6 patches) so layout bugs (rows vs columns) show. Every forward takes about a
millisecond on a CPU.
"""

from __future__ import annotations

import os
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from diffusers import (  # noqa: E402
    Flux2Transformer2DModel,
    FluxTransformer2DModel,
    QwenImageTransformer2DModel,
    SD3Transformer2DModel,
    WanTransformer3DModel,
)

#: Latent grid of the test inputs, in patches (rows, cols), and the text length.
GRID = (4, 6)
TEXT_LEN = 5
#: Latent frames of the video (Wan) test inputs, after temporal patching (odd on purpose).
FRAMES = 3

SD3_CONFIG: dict[str, Any] = dict(
    sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
    num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=32,
    pos_embed_max_size=16,
)
#: SD3.5-like: qk RMSNorm on every attention and an image-only attn2 in the first two of three blocks.
SD35_CONFIG: dict[str, Any] = dict(SD3_CONFIG, num_layers=3, qk_norm="rms_norm", dual_attention_layers=(0, 1))
FLUX_CONFIG: dict[str, Any] = dict(
    patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=4,
    joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=False, axes_dims_rope=(4, 6, 6),
)

FLUX2_CONFIG: dict[str, Any] = dict(
    patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=4,
    joint_attention_dim=32, timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False,
)
QWENIMAGE_CONFIG: dict[str, Any] = dict(
    patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=4,
    joint_attention_dim=32, axes_dims_rope=(4, 6, 6),
)
#: head_dim 12 = Wan's RoPE split (t 4, h 4, w 4).
WAN_CONFIG: dict[str, Any] = dict(
    patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=32,
    freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
)


def _randomise_norms(model: torch.nn.Module, seed: int) -> None:
    """Give RMSNorm weights random values (they start at 1), so a processor that skips qk-norm is caught."""
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".norm_" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.5 * torch.randn(p.shape, generator=g))


def tiny_sd3(seed: int = 0, **overrides: Any) -> SD3Transformer2DModel:
    """SD3: 2 joint blocks x 4 heads x 8 dims, no qk-norm."""
    torch.manual_seed(seed)
    return SD3Transformer2DModel(**{**SD3_CONFIG, **overrides}).eval()


def tiny_sd35(seed: int = 0, **overrides: Any) -> SD3Transformer2DModel:
    """SD3.5-like: 3 joint blocks (qk RMSNorm) + image-only attn2 in blocks 0 and 1."""
    torch.manual_seed(seed)
    model = SD3Transformer2DModel(**{**SD35_CONFIG, **overrides}).eval()
    _randomise_norms(model, seed)
    return model


def tiny_flux(seed: int = 0, **overrides: Any) -> FluxTransformer2DModel:
    """FLUX: 2 double-stream + 2 single-stream blocks x 4 heads x 16 dims, RoPE."""
    torch.manual_seed(seed)
    model = FluxTransformer2DModel(**{**FLUX_CONFIG, **overrides}).eval()
    _randomise_norms(model, seed)
    return model


def tiny_flux2(seed: int = 0, **overrides: Any) -> Flux2Transformer2DModel:
    """FLUX.2: 2 double-stream + 2 single-stream (fused QKV+MLP) blocks x 4 heads x 16 dims, 4-axis RoPE."""
    torch.manual_seed(seed)
    model = Flux2Transformer2DModel(**{**FLUX2_CONFIG, **overrides}).eval()
    _randomise_norms(model, seed)
    return model


def tiny_qwenimage(seed: int = 0, **overrides: Any) -> QwenImageTransformer2DModel:
    """Qwen-Image: 2 joint blocks x 4 heads x 16 dims, qk RMSNorm, complex RoPE."""
    torch.manual_seed(seed)
    model = QwenImageTransformer2DModel(**{**QWENIMAGE_CONFIG, **overrides}).eval()
    _randomise_norms(model, seed)
    return model


def tiny_wan(seed: int = 0, **overrides: Any) -> WanTransformer3DModel:
    """Wan 2.x: 2 blocks (self-attention + text cross-attention) x 4 heads x 12 dims, 3-D RoPE."""
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**{**WAN_CONFIG, **overrides}).eval()
    _randomise_norms(model, seed)
    return model


def sd3_inputs(model: SD3Transformer2DModel, batch: int, seed: int = 1, grid: tuple[int, int] = GRID,
               text_len: int = TEXT_LEN) -> dict[str, torch.Tensor]:
    """Inputs for one SD3 forward: latents [B, C, rows*patch, cols*patch], text [B, T, joint_dim]."""
    g = torch.Generator().manual_seed(seed)
    c = model.config
    rows, cols = grid[0] * c.patch_size, grid[1] * c.patch_size
    return dict(
        hidden_states=torch.randn(batch, c.in_channels, rows, cols, generator=g),
        encoder_hidden_states=torch.randn(batch, text_len, c.joint_attention_dim, generator=g),
        pooled_projections=torch.randn(batch, c.pooled_projection_dim, generator=g),
        timestep=torch.linspace(100.0, 900.0, batch),
    )


def flux_inputs(model: FluxTransformer2DModel, batch: int, seed: int = 1, grid: tuple[int, int] = GRID,
                text_len: int = TEXT_LEN) -> dict[str, torch.Tensor]:
    """Inputs for one FLUX forward: packed latents [B, rows*cols, C] with their img_ids (0, row, col)."""
    g = torch.Generator().manual_seed(seed)
    c = model.config
    rows, cols = grid
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(cols)[None, :]
    return dict(
        hidden_states=torch.randn(batch, rows * cols, c.in_channels, generator=g),
        encoder_hidden_states=torch.randn(batch, text_len, c.joint_attention_dim, generator=g),
        pooled_projections=torch.randn(batch, c.pooled_projection_dim, generator=g),
        timestep=torch.linspace(0.1, 0.9, batch),
        img_ids=ids.reshape(-1, 3),
        txt_ids=torch.zeros(text_len, 3),
    )


def flux2_inputs(model: Flux2Transformer2DModel, batch: int, seed: int = 1, grid: tuple[int, int] = GRID,
                 text_len: int = TEXT_LEN) -> dict[str, Any]:
    """Inputs for one FLUX.2 forward: packed latents [B, rows*cols, C], img_ids (T, H, W, L) = (0, row, col, 0)
    and txt_ids (0, 0, 0, position), as Flux2Pipeline builds them."""
    g = torch.Generator().manual_seed(seed)
    c = model.config
    rows, cols = grid
    zero = torch.arange(1)
    return dict(
        hidden_states=torch.randn(batch, rows * cols, c.in_channels, generator=g),
        encoder_hidden_states=torch.randn(batch, text_len, c.joint_attention_dim, generator=g),
        timestep=torch.linspace(0.1, 0.9, batch),
        img_ids=torch.cartesian_prod(zero, torch.arange(rows), torch.arange(cols), zero),
        txt_ids=torch.cartesian_prod(zero, zero, zero, torch.arange(text_len)),
    )


def qwenimage_inputs(model: QwenImageTransformer2DModel, batch: int, seed: int = 1, grid: tuple[int, int] = GRID,
                     text_len: int = TEXT_LEN) -> dict[str, Any]:
    """Inputs for one Qwen-Image forward: packed latents [B, rows*cols, C] and img_shapes [[(1, rows, cols)]] * B
    (host integers, as QwenImagePipeline passes them)."""
    g = torch.Generator().manual_seed(seed)
    c = model.config
    rows, cols = grid
    return dict(
        hidden_states=torch.randn(batch, rows * cols, c.in_channels, generator=g),
        encoder_hidden_states=torch.randn(batch, text_len, c.joint_attention_dim, generator=g),
        timestep=torch.linspace(0.1, 0.9, batch),
        img_shapes=[[(1, rows, cols)]] * batch,
    )


def wan_inputs(model: WanTransformer3DModel, batch: int, seed: int = 1, grid: tuple[int, int] = GRID,
               text_len: int = TEXT_LEN, frames: int = FRAMES) -> dict[str, Any]:
    """Inputs for one Wan forward: video latents [B, C, frames, rows*2, cols*2] (patch (1, 2, 2))."""
    g = torch.Generator().manual_seed(seed)
    c = model.config
    p_t, p_h, p_w = c.patch_size
    return dict(
        hidden_states=torch.randn(batch, c.in_channels, frames * p_t, grid[0] * p_h, grid[1] * p_w, generator=g),
        encoder_hidden_states=torch.randn(batch, text_len, c.text_dim, generator=g),
        timestep=torch.linspace(100.0, 900.0, batch),
    )


#: name -> (builder, inputs); the model families every engine test runs on.
FAMILIES: dict[str, tuple[Callable[..., torch.nn.Module], Callable[..., dict[str, Any]]]] = {
    "sd3": (tiny_sd3, sd3_inputs),
    "sd35": (tiny_sd35, sd3_inputs),
    "flux": (tiny_flux, flux_inputs),
    "flux2": (tiny_flux2, flux2_inputs),
    "qwenimage": (tiny_qwenimage, qwenimage_inputs),
    "wan": (tiny_wan, wan_inputs),
}


def attention_lengths(family: str) -> set[int]:
    """The sequence lengths of the family's attention calls with the default test inputs (image tokens, and
    image + text tokens where the sites are joint)."""
    image = GRID[0] * GRID[1] * (FRAMES if family == "wan" else 1)
    return {image} if family == "wan" else {image, image + TEXT_LEN}

#: Inputs that are per sample (sliced when a batch is split); the others are shared.
BATCHED_INPUTS = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep")


def slice_inputs(inputs: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    """The inputs of samples start..stop-1 of a batch."""
    return {k: (v[start:stop] if k in BATCHED_INPUTS else v) for k, v in inputs.items()}


def to_dtype(inputs: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """Floating-point per-sample inputs cast to `dtype` (position ids and host lists kept as they are)."""
    return {k: (v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() and k not in ("img_ids", "txt_ids")
                else v) for k, v in inputs.items()}


def forward(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """One no-grad forward; the denoiser output."""
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]
