"""The Wan 2.x adapter (`WanTransformer3DModel`, `WanAttnProcessor`): perturbs the video self-attention.

Each Wan block has a self-attention `attn1` over the video tokens (frames x rows x cols, frame-major, as the
3-D patch embedding flattens them) and a cross-attention `attn2` from video tokens to the text (and, for
image-to-video, CLIP image) tokens. The sites are the `attn1` modules only (kind `image`): spatio-temporal
skip guidance perturbs self-attention; `attn2` keeps the stock processor object.

The perturbing processor is a copy of `WanAttnProcessor.__call__` (diffusers 0.42.1) for self-attention:
projections (fused or not, through diffusers' own helper), qk RMSNorm across heads (before the head split),
Wan's 3-D RoPE, then `dispatch_attention_fn` with the original processor's backend; the attention call is
routed through the engine's `attend`. Layout, decided from shapes per forward: the transformer's
`hidden_states` [B, C, F, H, W] and `patch_size` (p_t, p_h, p_w) give frames F/p_t and the grid
(H/p_h, W/p_w); there is no text in the sequence (text_len = 0), so scopes `joint` and `image` coincide
and `pag_mask` is the identity.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from headhunter.contracts.adapter import ModelAdapter, TokenLayout
from headhunter.engine.attention import EngineState, PerturbingProcessor
from headhunter.errors import ModelError
from headhunter.plugin_system.registry import model_of
from headhunter.format.sites import Site

from .sites import wan_sites


class WanPerturbingProcessor(PerturbingProcessor):
    """`WanAttnProcessor` on a self-attention module, with the perturbation added at the attention call."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        entry = self.strength
        if entry is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if encoder_hidden_states is not None or attn.add_k_proj is not None:
            raise ModelError(
                f"{self.site_name}: the wan adapter perturbs self-attention only (got a cross-attention call)"
            )
        if attention_mask is not None:
            raise ModelError(f"{self.site_name}: perturbing attention with an attention_mask is not supported")
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections

        # From here on: WanAttnProcessor.__call__ (diffusers 0.42.1), self-attention path, `attend` at the call.
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = _apply_rotary_emb(query, *rotary_emb)
            key = _apply_rotary_emb(key, *rotary_emb)
        frames, grid = self.state.cache.get("frames", 1), self.state.grid
        layout = TokenLayout(text_len=0, image_len=query.shape[1], text_first=False, grid=grid, frames=frames)
        original = self.original
        out = self.attend(
            entry, query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), layout,
            lambda: dispatch_attention_fn(
                query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                backend=original._attention_backend, parallel_config=original._parallel_config,
            ).transpose(1, 2),
        )
        hidden_states = out.transpose(1, 2).flatten(2, 3)
        hidden_states = hidden_states.type_as(query)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        return hidden_states


def _apply_rotary_emb(hidden_states: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """WanAttnProcessor's inner `apply_rotary_emb` (diffusers 0.42.1), verbatim."""
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(hidden_states)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden_states)


#: Site-name prefix of Wan 2.2 A14B's second (low-noise) expert, `pipe.transformer_2`.
SECOND_EXPERT = "transformer_2."


class WanAdapter(ModelAdapter):
    """Wan 2.1 / 2.2 (`WanTransformer3DModel`), and pipelines built on it (WanPipeline, image-to-video); with
    Wan 2.2 A14B's two experts (`transformer_2`, `boundary_ratio`) both are guided: one head set names sites of
    either, the second's as `transformer_2.blocks.{i}.attn1` (layers L{n}... after the first expert's n)."""

    name = "wan"
    architecture = "wan"
    #: WanTransformerBlock.forward(hidden_states, encoder_hidden_states, temb, rotary_emb) -> hidden_states;
    #: rotary_emb is shared by every row (rows computed once: docs/engine.md).
    row_inputs = ("hidden_states", "encoder_hidden_states", "temb")
    block_outputs = ("hidden_states",)

    @classmethod
    def matches(cls, model: Any) -> bool:
        from diffusers import WanTransformer3DModel

        return isinstance(model_of(model), WanTransformer3DModel)

    def experts(self, model: Any) -> dict[str, torch.nn.Module]:
        """`{"": transformer}`, plus `{"transformer_2.": transformer_2}` for a Wan 2.2 A14B pipeline (high-noise
        `transformer`, low-noise `transformer_2`, switched at `boundary_ratio`): the second expert's sites are
        named `transformer_2.blocks.{i}.attn1` and come after the first's in paper order."""
        experts = {"": self.transformer(model)}
        second = getattr(model, "transformer_2", None)
        if isinstance(second, torch.nn.Module):
            from headhunter.plugin_system.registry import unwrap

            experts[SECOND_EXPERT] = unwrap(second)
        return experts

    def sites(self, model: Any) -> list[Site]:
        sites = []
        for prefix, expert in self.experts(model).items():
            heads = {b.attn1.heads for b in expert.blocks}
            if len(heads) != 1:
                raise ModelError(f"Wan blocks with different head counts {sorted(heads)}; expected one")
            sites += [Site(name=prefix + s.name, num_heads=s.num_heads, kind=s.kind)
                      for s in wan_sites(len(expert.blocks), heads.pop())]
        return sites

    def blocks(self, model: Any) -> list[str]:
        """`blocks.{i}` in order (each holds one site, its self-attention `attn1`). None with two experts (Wan
        2.2 A14B): rows computed once runs on one transformer, so both experts compute every row in full."""
        if len(self.experts(model)) > 1:
            return []
        return [f"blocks.{i}" for i in range(len(self.transformer(model).blocks))]

    def make_processor(self, site: Site, module: torch.nn.Module, state: EngineState) -> PerturbingProcessor:
        from diffusers.models.transformers.transformer_wan import WanAttnProcessor

        original = self.original_processor(site, module, WanAttnProcessor, "put it back")
        return WanPerturbingProcessor(site, original, state)

    def prepare(self, state: EngineState, transformer: torch.nn.Module) -> None:
        state.cache["patch_size"] = tuple(int(p) for p in transformer.config.patch_size)
        params = list(inspect.signature(transformer.forward).parameters)
        state.cache["hidden_position"] = params.index("hidden_states")

    def observe(self, state: EngineState, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        latents = kwargs["hidden_states"] if "hidden_states" in kwargs else args[state.cache["hidden_position"]]
        p_t, p_h, p_w = state.cache["patch_size"]
        _, _, frames, height, width = latents.shape
        state.cache["frames"] = frames // p_t
        state.grid = (height // p_h, width // p_w)

    def layout_summary(self, model: Any, height: int | None = None, width: int | None = None) -> list[str]:
        config = self.transformer(model).config
        p_t, p_h, p_w = config.patch_size
        height, width = height or 480, width or 832
        scale = getattr(model, "vae_scale_factor_spatial", 8)
        rows, cols = height // scale // p_h, width // scale // p_w
        frames = (81 - 1) // 4 + 1  # Wan's VAE: 4x temporal compression, first frame alone
        return [
            "sites: self-attention over video tokens only (kind image); text cross-attention attn2 stays stock",
            f"video tokens at {height}x{width} px, 81 frames: {frames // p_t} latent frames x {rows} x {cols} "
            f"= {frames // p_t * rows * cols} tokens, frame-major ({scale} px per latent, patch {p_h}x{p_w})",
            "scopes: no text rows in self-attention, so joint = image and pag_mask = identity",
            "blur: separable over (frames, rows, cols); temporal_sigma blurs across frames (0 = per frame)",
        ]
