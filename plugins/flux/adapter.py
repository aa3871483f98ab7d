"""The FLUX.1 adapter (`FluxTransformer2DModel`, `FluxAttnProcessor`); imports torch and diffusers.

Sites in paper order: the double-stream `transformer_blocks.{i}.attn` (joint), then the single-stream
`single_transformer_blocks.{i}.attn` (single); token order [text | image] in both (named by
`headhunter.plugins.flux.sites.flux_sites`, which also describes the published models; this module is registered
without being imported by `headhunter.plugins.flux`). Single-stream processors are not told the text length: a forward pre-hook on the transformer
records it from `encoder_hidden_states` (a shape, never a value). The attention call goes through
diffusers' `dispatch_attention_fn` with the original processor's backend, so `set_attention_backend`
keeps working, before and after installation.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from diffusers import FluxTransformer2DModel
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, _get_qkv_projections

from headhunter.contracts.adapter import ModelAdapter, TokenLayout
from headhunter.engine.attention import EngineState, PerturbingProcessor, needs_target_layout
from headhunter.errors import ModelError
from headhunter.plugin_system.registry import model_of
from headhunter.format.sites import Site

from .sites import flux_sites


class FluxPerturbingProcessor(PerturbingProcessor):
    """`FluxAttnProcessor` with the perturbation added at the attention call (same signature)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        entry = self.strength
        if entry is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        if attention_mask is not None:
            raise ModelError(f"{self.site_name}: perturbing attention with an attention_mask is not supported")
        # From here on: FluxAttnProcessor.__call__ (diffusers 0.42), with `attend` at the attention call.
        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states
        )
        query = query.unflatten(-1, (-1, attn.head_dim))
        key = key.unflatten(-1, (-1, attn.head_dim))
        value = value.unflatten(-1, (-1, attn.head_dim))
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        if attn.added_kv_proj_dim is not None:
            encoder_query = encoder_query.unflatten(-1, (-1, attn.head_dim))
            encoder_key = encoder_key.unflatten(-1, (-1, attn.head_dim))
            encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))
            encoder_query = attn.norm_added_q(encoder_query)
            encoder_key = attn.norm_added_k(encoder_key)
            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        layout = self._layout(query.shape[1], encoder_hidden_states)
        original = self.original
        out = self.attend(
            entry, query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), layout,
            lambda: dispatch_attention_fn(
                query, key, value, attn_mask=attention_mask, backend=original._attention_backend,
                parallel_config=original._parallel_config,
            ).transpose(1, 2),
        )
        hidden_states = out.transpose(1, 2).flatten(2, 3)
        hidden_states = hidden_states.to(query.dtype)
        if encoder_hidden_states is not None:
            encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
                [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1
            )
            hidden_states = attn.to_out[0](hidden_states.contiguous())
            hidden_states = attn.to_out[1](hidden_states)
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
            return hidden_states, encoder_hidden_states
        return hidden_states

    def _layout(self, seq_len: int, encoder_hidden_states: torch.Tensor | None) -> TokenLayout:
        if encoder_hidden_states is not None:
            text_len = encoder_hidden_states.shape[1]
        else:
            text_len = self.state.text_len
            if text_len is None:
                raise ModelError(
                    f"{self.site_name}: the text length of this single-stream call is unknown; call the "
                    "transformer itself (its forward pre-hook records it), not the block"
                )
        ref_len = self.state.ref_len
        return TokenLayout(text_len=text_len, image_len=seq_len - text_len - ref_len, text_first=True,
                           grid=self.state.grid, ref_len=ref_len)


class FluxAdapter(ModelAdapter):
    """FLUX.1 (`FluxTransformer2DModel`: double-stream then single-stream blocks), and pipelines built on it,
    edit pipelines included (FluxKontextPipeline, FluxKontextInpaintPipeline: reference tokens after the
    target's, left unperturbed by scope `image` and blur)."""

    name = "flux"
    architecture = "flux"
    trailing_references = True

    @classmethod
    def matches(cls, model: Any) -> bool:
        return isinstance(model_of(model), FluxTransformer2DModel)

    def sites(self, model: Any) -> list[Site]:
        t = self.transformer(model)
        return flux_sites(len(t.transformer_blocks), len(t.single_transformer_blocks), t.config.num_attention_heads)

    def blocks(self, model: Any) -> list[str]:
        """Double-stream blocks, then single-stream blocks (the order FluxTransformer2DModel.forward runs them)."""
        t = self.transformer(model)
        return ([f"transformer_blocks.{i}" for i in range(len(t.transformer_blocks))]
                + [f"single_transformer_blocks.{i}" for i in range(len(t.single_transformer_blocks))])

    def make_processor(self, site: Site, module: torch.nn.Module, state: EngineState) -> FluxPerturbingProcessor:
        original = self.original_processor(site, module, FluxAttnProcessor,
                                           "unload IP adapters, or put FluxAttnProcessor back")
        return FluxPerturbingProcessor(site, original, state)

    def prepare(self, state: EngineState, transformer: torch.nn.Module) -> None:
        params = list(inspect.signature(transformer.forward).parameters)
        names = ("hidden_states", "encoder_hidden_states", "img_ids")
        state.cache["positions"] = {name: params.index(name) for name in names if name in params}

    def observe(self, state: EngineState, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        positions = state.cache["positions"]

        def arg(name):
            if name in kwargs:
                return kwargs[name]
            index = positions.get(name)
            return args[index] if index is not None and index < len(args) else None

        text = arg("encoder_hidden_states")
        state.text_len = None if text is None else text.shape[1]
        state.ref_len, state.grid = 0, None
        if needs_target_layout(state):
            image_len = arg("hidden_states").shape[1]
            target_len, state.grid = _target_from_ids(arg("img_ids"), image_len)
            state.ref_len = image_len - target_len

    def layout_summary(self, model: Any, height: int | None = None, width: int | None = None) -> list[str]:
        height, width = height or 1024, width or 1024
        scale = getattr(model, "vae_scale_factor", 8) * 2  # 2x2 latent packing
        rows, cols = height // scale, width // scale
        return [
            "token order: [text | image] (double- and single-stream sites)",
            f"image grid at {height}x{width} px: {rows} x {cols} = {rows * cols} image tokens "
            f"({scale} px per token: VAE x 2x2 packing)",
            "text tokens: T5 max_sequence_length (512 for FLUX.1-dev, 256 for schnell by default)",
            "single-stream sites are not told the text length; the adapter records it per forward",
        ]


def _target_from_ids(img_ids: torch.Tensor | None, image_len: int) -> tuple[int, tuple[int, int] | None]:
    """(target image tokens, their (rows, cols)) from FLUX's img_ids [N, 3] = (index, row, col).

    The target image's tokens come first with index 0; FLUX Kontext (and Kontext inpaint) append the reference
    image's tokens with index 1 (`cat([latents, image_latents], 1)`); the pipeline steps on the first
    `latents.size(1)` tokens. Read on the host once per forward that needs the layout
    (`needs_target_layout`: scope image / pag_mask, blur), never per attention call. Not cached: a cache keyed
    on the ids tensor (its memory address) handed a later call of another size the previous grid, transposed,
    when memory was reused or the ids buffer refilled in place (issue #12). Converted to float64 before numpy
    (numpy has no bfloat16, and FLUX is usually loaded in bf16: issue 24). The grid is None when the target's
    ids are not one rows x cols grid (then finite blur refuses, naming it).
    """
    if img_ids is None:
        return image_len, None
    ids = img_ids.reshape(-1, img_ids.shape[-1])[-image_len:].detach().to(device="cpu", dtype=torch.float64).numpy()
    index = ids[:, 0]
    other = index != index[0]
    target_len = int(other.argmax()) if other.any() else len(index)
    if (index[target_len:] == index[0]).any():
        raise ModelError(f"FLUX img_ids put target-image tokens (index {index[0]:g}) after reference-image tokens; "
                         "headhunter expects the target's tokens first, as FluxKontextPipeline orders them")
    target = ids[:target_len]
    rows = int(target[:, 1].max() - target[:, 1].min()) + 1
    cols = int(target[:, 2].max() - target[:, 2].min()) + 1
    return target_len, ((rows, cols) if rows * cols == target_len else None)
