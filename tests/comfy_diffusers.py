"""The same weights in diffusers: a ComfyUI SD3/SD3.5 MMDiT or FLUX model converted with ComfyUI's own key
maps (comfy.utils.mmdit_to_diffusers / flux_to_diffusers: diffusers key -> ComfyUI key, a slice of a
fused ComfyUI tensor, or a ComfyUI tensor through a function such as swap_scale_shift), loaded into
diffusers' SD3Transformer2DModel / FluxTransformer2DModel, plus the input conversions, so one forward of
each can be compared (tests/test_comfyui.py: <= 1e-4).

    dz = diffusers_sd3(patcher)                         # SD3Transformer2DModel, strict load, fp32
    v_comfy = patcher.model.diffusion_model(x, timesteps=t * 1000, context=ctx, y=pooled)
    v_diff = dz(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=pooled,
                timestep=t * 1000, return_dict=False)[0]

Conventions bridged:
  * SD3: both take the latent [B, C, H, W] and t in [0, 1000] (ComfyUI: model_sampling.timestep(sigma) =
    sigma * 1000); both return the velocity. ComfyUI's model call (apply_model) returns
    denoised = x - sigma * v instead.
  * FLUX: diffusers takes the packed latent [B, (H/2)(W/2), C*4] (pack_flux_latent, the same
    "b c (h ph) (w pw) -> b (h w) (c ph pw)" ComfyUI does inside), img_ids [(H/2)(W/2), 3] = (0, row, col),
    txt_ids zeros [T, 3], timestep = sigma and guidance unscaled (both multiply by 1000 inside).
"""

from __future__ import annotations

import torch


def convert_state_dict(comfy_sd: dict, key_map: dict) -> dict:
    """Apply a ComfyUI diffusers->comfy key map in reverse: {diffusers key: tensor} for every mapped key
    whose ComfyUI source exists."""
    out = {}
    for dkey, src in key_map.items():
        if isinstance(src, str):
            if src in comfy_sd:
                out[dkey] = comfy_sd[src]
            continue
        ckey, how = src[0], src[1]
        if ckey not in comfy_sd:
            continue
        t = comfy_sd[ckey]
        if how is not None:  # (dim, offset, length): a slice of a fused tensor (qkv, linear1)
            dim, off, length = how
            t = t.narrow(dim, off, length)
        if len(src) > 2 and src[2] is not None:  # a function, e.g. swap_scale_shift
            t = src[2](t)
        out[dkey] = t.clone()
    return out


def _load_strict(model, sd):
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"diffusers load: missing {missing[:8]}... ({len(missing)}), unexpected {unexpected[:8]} ({len(unexpected)})")
    return model.eval()


def diffusers_sd3(patcher):
    """SD3Transformer2DModel with the ComfyUI MMDiT's weights (SD3 or SD3.5 with qk-norm / attn2)."""
    import comfy.utils
    from diffusers import SD3Transformer2DModel

    dm = patcher.model.diffusion_model
    cfg = patcher.model.model_config.unet_config
    heads = dm.num_heads
    model = SD3Transformer2DModel(
        sample_size=cfg["pos_embed_max_size"], patch_size=dm.patch_size, in_channels=dm.in_channels,
        num_layers=len(dm.joint_blocks), attention_head_dim=dm.hidden_size // heads, num_attention_heads=heads,
        joint_attention_dim=dm.context_embedder.in_features, caption_projection_dim=dm.hidden_size,
        pooled_projection_dim=dm.y_embedder.mlp[0].in_features, out_channels=dm.out_channels,
        pos_embed_max_size=cfg["pos_embed_max_size"],
        dual_attention_layers=tuple(i for i, b in enumerate(dm.joint_blocks) if b.x_block.x_block_self_attn),
        qk_norm="rms_norm" if cfg.get("qk_norm") == "rms" else None,
    )
    key_map = comfy.utils.mmdit_to_diffusers(cfg, output_prefix="")
    return _load_strict(model, convert_state_dict(dm.state_dict(), key_map))


def diffusers_flux(patcher):
    """FluxTransformer2DModel with the ComfyUI Flux's weights."""
    import comfy.utils
    from diffusers import FluxTransformer2DModel

    dm = patcher.model.diffusion_model
    p = dm.params
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=p.in_channels * p.patch_size ** 2, out_channels=None,
        num_layers=p.depth, num_single_layers=p.depth_single_blocks,
        attention_head_dim=p.hidden_size // p.num_heads, num_attention_heads=p.num_heads,
        joint_attention_dim=p.context_in_dim, pooled_projection_dim=p.vec_in_dim,
        guidance_embeds=p.guidance_embed, axes_dims_rope=tuple(p.axes_dim),
    )
    cfg = dict(depth=p.depth, depth_single_blocks=p.depth_single_blocks, hidden_size=p.hidden_size)
    key_map = comfy.utils.flux_to_diffusers(cfg, output_prefix="")
    return _load_strict(model, convert_state_dict(dm.state_dict(), key_map))


def pack_flux_latent(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/2)(W/2), C*4], the packing of FluxPipeline._pack_latents and of ComfyUI's Flux."""
    B, C, H, W = x.shape
    return x.view(B, C, H // 2, 2, W // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(B, (H // 2) * (W // 2), C * 4)


def unpack_flux_latent(x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    B, _, C4 = x.shape
    return x.view(B, H // 2, W // 2, C4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(B, C4 // 4, H, W)


def flux_ids(H: int, W: int, text_len: int):
    """img_ids [(H/2)(W/2), 3] = (0, row, col) and txt_ids zeros [T, 3], as both ComfyUI and diffusers build them."""
    h, w = H // 2, W // 2
    img = torch.zeros(h, w, 3)
    img[..., 1] = torch.arange(h)[:, None]
    img[..., 2] = torch.arange(w)[None, :]
    return img.reshape(h * w, 3), torch.zeros(text_len, 3)
