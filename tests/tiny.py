"""Tiny random-weight transformers and their inputs, shared by every test: SD3, SD3.5-like, FLUX.

Built from configs in memory (no files, no Hub) with fixed seeds and put in eval() mode. Image grids are
non-square on purpose (4 x 6 patches) so layout bugs (rows vs columns) show. Every forward takes about a
millisecond on a CPU.
"""

from __future__ import annotations

import os
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel  # noqa: E402

#: Latent grid of the test inputs, in patches (rows, cols), and the text length.
GRID = (4, 6)
TEXT_LEN = 5

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


#: name -> (builder, inputs); the three model families every engine test runs on.
FAMILIES: dict[str, tuple[Callable[..., torch.nn.Module], Callable[..., dict[str, torch.Tensor]]]] = {
    "sd3": (tiny_sd3, sd3_inputs),
    "sd35": (tiny_sd35, sd3_inputs),
    "flux": (tiny_flux, flux_inputs),
}

#: Inputs that are per sample (sliced when a batch is split); the others are shared.
BATCHED_INPUTS = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep")


def slice_inputs(inputs: dict[str, torch.Tensor], start: int, stop: int) -> dict[str, torch.Tensor]:
    """The inputs of samples start..stop-1 of a batch."""
    return {k: (v[start:stop] if k in BATCHED_INPUTS else v) for k, v in inputs.items()}


def forward(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """One no-grad forward; the denoiser output."""
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]
