"""The SD3 / SD3.5 adapter (`SD3Transformer2DModel`, `JointAttnProcessor2_0`); imports torch and diffusers.

Sites in paper order: `transformer_blocks.{i}.attn` (joint, token order [image | text]) for every block,
then SD3.5-medium's image-only `transformer_blocks.{i}.attn2` (named by `headhunter.plugins.sd3.sites.sd3_sites`,
the same function that describes the published models). Any pipeline whose `.transformer` is an
SD3Transformer2DModel is handled the same way (the digits demo model too). Registered, without importing
this module, by `headhunter.plugins.sd3`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import SD3Transformer2DModel
from diffusers.models.attention_processor import JointAttnProcessor2_0

from headhunter.contracts.adapter import ModelAdapter, TokenLayout
from headhunter.engine.attention import EngineState, PerturbingProcessor
from headhunter.plugin_system.registry import model_of
from headhunter.format.sites import Site

from .sites import sd3_sites


class SD3PerturbingProcessor(PerturbingProcessor):
    """`JointAttnProcessor2_0` with the perturbation added at the attention call (same signature, so
    `Attention.forward` filters keyword arguments exactly as for the stock processor)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        entry = self.strength
        if entry is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        # From here on: JointAttnProcessor2_0.__call__ (diffusers 0.42), with `attend` at the SDPA call.
        residual = hidden_states
        batch_size = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        text_len = 0
        if encoder_hidden_states is not None:
            text_len = encoder_hidden_states.shape[1]
            enc_q = attn.add_q_proj(encoder_hidden_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            enc_k = attn.add_k_proj(encoder_hidden_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            enc_v = attn.add_v_proj(encoder_hidden_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            if attn.norm_added_q is not None:
                enc_q = attn.norm_added_q(enc_q)
            if attn.norm_added_k is not None:
                enc_k = attn.norm_added_k(enc_k)
            query = torch.cat([query, enc_q], dim=2)
            key = torch.cat([key, enc_k], dim=2)
            value = torch.cat([value, enc_v], dim=2)
        layout = TokenLayout(text_len=text_len, image_len=residual.shape[1], text_first=False, grid=self.state.grid)
        hidden_states = self.attend(
            entry, query, key, value, layout,
            lambda: F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False),
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = (
                hidden_states[:, : residual.shape[1]],
                hidden_states[:, residual.shape[1] :],
            )
            if not attn.context_pre_only:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if encoder_hidden_states is not None:
            return hidden_states, encoder_hidden_states
        return hidden_states


class SD3Adapter(ModelAdapter):
    """Stable Diffusion 3 / 3.5 MMDiT (`SD3Transformer2DModel`), and pipelines built on it."""

    name = "sd3"
    architecture = "sd3"

    @classmethod
    def matches(cls, model: Any) -> bool:
        return isinstance(model_of(model), SD3Transformer2DModel)

    def sites(self, model: Any) -> list[Site]:
        t = self.transformer(model)
        dual = tuple(i for i, b in enumerate(t.transformer_blocks) if getattr(b, "attn2", None) is not None)
        return sd3_sites(len(t.transformer_blocks), t.config.num_attention_heads, dual)

    def blocks(self, model: Any) -> list[str]:
        """`transformer_blocks.{i}` in order (each holds the joint `attn` and, on SD3.5-medium, `attn2`)."""
        return [f"transformer_blocks.{i}" for i in range(len(self.transformer(model).transformer_blocks))]

    def make_processor(self, site: Site, module: torch.nn.Module, state: EngineState) -> SD3PerturbingProcessor:
        original = self.original_processor(site, module, JointAttnProcessor2_0, "call transformer.unfuse_qkv_projections(), "
                                           "unload IP adapters, or put JointAttnProcessor2_0 back")
        return SD3PerturbingProcessor(site, original, state)

    def prepare(self, state: EngineState, transformer: torch.nn.Module) -> None:
        state.cache["patch_size"] = int(transformer.config.patch_size)

    def observe(self, state: EngineState, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        latents = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        patch = state.cache["patch_size"]
        state.grid = (latents.shape[-2] // patch, latents.shape[-1] // patch)

    def layout_summary(self, model: Any, height: int | None = None, width: int | None = None) -> list[str]:
        config = self.transformer(model).config
        scale = getattr(model, "vae_scale_factor", 8 if model is self.transformer(model) else 1)
        size = config.sample_size * scale
        height, width = height or size, width or size
        rows, cols = height // scale // config.patch_size, width // scale // config.patch_size
        return [
            "token order: [image | text] (joint sites); attn2 sites see image tokens only",
            f"image grid at {height}x{width} px: {rows} x {cols} = {rows * cols} image tokens "
            f"({scale} px per latent, patch {config.patch_size})",
            "text tokens: as many as the prompt encoder gives (SD3 pipelines: 77 CLIP + 256 T5 = 333 by default)",
        ]
