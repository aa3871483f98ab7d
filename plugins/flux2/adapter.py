"""The FLUX.2 adapter (`Flux2Transformer2DModel`, `Flux2AttnProcessor`, `Flux2ParallelSelfAttnProcessor`).

Double-stream blocks run `Flux2AttnProcessor` (text and image projections, qk RMSNorm on both, RoPE over the
joint [text | image] sequence); single-stream blocks run `Flux2ParallelSelfAttnProcessor` (one fused
QKV + MLP projection, qk RMSNorm, RoPE, and the attention output concatenated with the MLP branch before the
fused output projection). The perturbing processors below are copies of those two `__call__`s (diffusers
0.42) with the attention call routed through the engine's `attend`; the call itself still goes through
`dispatch_attention_fn` with the original processor's backend, so `set_attention_backend` keeps working.

Layout, decided per call: the text length is `encoder_hidden_states.shape[1]` (double-stream) or, for the
single-stream blocks that are not told it, the one the transformer's forward pre-hook recorded from the
same argument (a shape). The image grid (only when the perturbation needs it: `blur` with finite sigma)
is read from `img_ids` (T, H, W, L) once per forward: one small device-to-host copy per perturbed forward,
never per attention call and never cached across forwards (no cache keyed on a tensor's identity).
Reference images (`Flux2Pipeline(image=...)`, Klein with `image=`) append their tokens after the target's
with T = 10, 20, ...: the target is the leading run of tokens with the first token's T (read from the same
copy, only when the layout matters: scope image / pag_mask, blur); scope `image` and blur act on the
target only, and the guidance term is computed on the target tokens the pipeline steps on.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from headhunter.contracts.adapter import ModelAdapter, TokenLayout
from headhunter.engine.attention import EngineState, PerturbingProcessor, needs_target_layout
from headhunter.errors import ModelError
from headhunter.plugin_system.registry import model_of
from headhunter.format.sites import Site

from .sites import flux2_sites


class _BackendPassThrough(PerturbingProcessor):
    """The attention call through diffusers' dispatcher with the wrapped processor's backend (the base class
    forwards `_attention_backend` / `_parallel_config`, so `set_attention_backend` works)."""

    def _dispatch(self, query, key, value, attention_mask):
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        original = self.original
        return lambda: dispatch_attention_fn(
            query, key, value, attn_mask=attention_mask, backend=original._attention_backend,
            parallel_config=original._parallel_config,
        ).transpose(1, 2)


class Flux2PerturbingProcessor(_BackendPassThrough):
    """`Flux2AttnProcessor` (double-stream) with the perturbation added at the attention call."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        entry = self.strength
        if entry is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        if attention_mask is not None:
            raise ModelError(f"{self.site_name}: perturbing attention with an attention_mask is not supported")
        from diffusers.models.embeddings import apply_rotary_emb
        from diffusers.models.transformers.transformer_flux2 import _get_qkv_projections

        # From here on: Flux2AttnProcessor.__call__ (diffusers 0.42.1), with `attend` at the attention call.
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
        text_len = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else 0
        ref_len = self.state.ref_len
        layout = TokenLayout(text_len=text_len, image_len=query.shape[1] - text_len - ref_len, text_first=True,
                             grid=self.state.grid, ref_len=ref_len)
        out = self.attend(entry, query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), layout,
                          self._dispatch(query, key, value, attention_mask))
        hidden_states = out.transpose(1, 2).flatten(2, 3)
        hidden_states = hidden_states.to(query.dtype)
        if encoder_hidden_states is not None:
            encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
                [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1
            )
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if encoder_hidden_states is not None:
            return hidden_states, encoder_hidden_states
        return hidden_states


class Flux2SinglePerturbingProcessor(_BackendPassThrough):
    """`Flux2ParallelSelfAttnProcessor` (single-stream, fused QKV + MLP) with the perturbation at the attention
    call; the MLP branch is untouched."""

    def __call__(self, attn, hidden_states, attention_mask=None, image_rotary_emb=None):
        entry = self.strength
        if entry is None:
            return self.original(attn, hidden_states, attention_mask, image_rotary_emb)
        if attention_mask is not None:
            raise ModelError(f"{self.site_name}: perturbing attention with an attention_mask is not supported")
        text_len = self.state.text_len
        if text_len is None:
            raise ModelError(
                f"{self.site_name}: the text length of this single-stream call is unknown; call the "
                "transformer itself (its forward pre-hook records it), not the block"
            )
        from diffusers.models.embeddings import apply_rotary_emb

        # From here on: Flux2ParallelSelfAttnProcessor.__call__ (diffusers 0.42.1), `attend` at the attention.
        hidden_states = attn.to_qkv_mlp_proj(hidden_states)
        qkv_dim = 3 * attn.inner_dim
        mlp_dim = attn.mlp_hidden_dim * attn.mlp_mult_factor
        local_qkv = hidden_states.shape[-1] * qkv_dim // (qkv_dim + mlp_dim)
        qkv, mlp_hidden_states = torch.split(hidden_states, [local_qkv, hidden_states.shape[-1] - local_qkv], dim=-1)
        query, key, value = qkv.chunk(3, dim=-1)
        query = query.unflatten(-1, (-1, attn.head_dim))
        key = key.unflatten(-1, (-1, attn.head_dim))
        value = value.unflatten(-1, (-1, attn.head_dim))
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        ref_len = self.state.ref_len
        layout = TokenLayout(text_len=text_len, image_len=query.shape[1] - text_len - ref_len, text_first=True,
                             grid=self.state.grid, ref_len=ref_len)
        out = self.attend(entry, query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), layout,
                          self._dispatch(query, key, value, attention_mask))
        hidden_states = out.transpose(1, 2).flatten(2, 3)
        hidden_states = hidden_states.to(query.dtype)
        mlp_hidden_states = attn.mlp_act_fn(mlp_hidden_states)
        hidden_states = torch.cat([hidden_states, mlp_hidden_states], dim=-1)
        return attn.to_out(hidden_states)


class Flux2Adapter(ModelAdapter):
    """FLUX.2 (`Flux2Transformer2DModel`: double-stream then single-stream blocks), and pipelines built on it
    (Flux2Pipeline, Flux2KleinPipeline)."""

    name = "flux2"
    architecture = "flux2"
    trailing_references = True
    #: Per-row inputs of both block kinds (rows computed once, docs/engine.md): Flux2TransformerBlock(hidden_states,
    #: encoder_hidden_states, temb_mod_img, temb_mod_txt, ...) -> (encoder_hidden_states, hidden_states);
    #: Flux2SingleTransformerBlock(hidden_states, encoder_hidden_states=None, temb_mod, ...) -> hidden_states
    #: ([text | image] joined). The modulations are per row ([B, k * dim]); the rotary embedding is shared.
    row_inputs = ("hidden_states", "encoder_hidden_states", "temb_mod_img", "temb_mod_txt", "temb_mod")
    block_outputs = {"transformer_blocks.": ("encoder_hidden_states", "hidden_states"),
                     "single_transformer_blocks.": ("hidden_states",)}

    @classmethod
    def matches(cls, model: Any) -> bool:
        from diffusers import Flux2Transformer2DModel

        return isinstance(model_of(model), Flux2Transformer2DModel)

    def sites(self, model: Any) -> list[Site]:
        t = self.transformer(model)
        heads = {b.attn.heads for b in (*t.transformer_blocks, *t.single_transformer_blocks)}
        if len(heads) != 1:
            raise ModelError(f"FLUX.2 blocks with different head counts {sorted(heads)}; expected one")
        return flux2_sites(len(t.transformer_blocks), len(t.single_transformer_blocks), heads.pop())

    def blocks(self, model: Any) -> list[str]:
        """Double-stream blocks, then single-stream blocks (the order Flux2Transformer2DModel.forward runs them)."""
        t = self.transformer(model)
        return ([f"transformer_blocks.{i}" for i in range(len(t.transformer_blocks))]
                + [f"single_transformer_blocks.{i}" for i in range(len(t.single_transformer_blocks))])

    def make_processor(self, site: Site, module: torch.nn.Module, state: EngineState) -> PerturbingProcessor:
        from diffusers.models.transformers.transformer_flux2 import Flux2AttnProcessor, Flux2ParallelSelfAttnProcessor

        expected, cls = ((Flux2AttnProcessor, Flux2PerturbingProcessor) if site.kind == "joint"
                         else (Flux2ParallelSelfAttnProcessor, Flux2SinglePerturbingProcessor))
        original = self.original_processor(site, module, expected, "the KV-cache processors of FLUX.2 Klein KV are "
                                           "not supported: put the default processor back")
        return cls(site, original, state)

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
            target_len, state.grid = target_from_ids(arg("img_ids"), image_len)
            state.ref_len = image_len - target_len

    def layout_summary(self, model: Any, height: int | None = None, width: int | None = None) -> list[str]:
        height, width = height or 1024, width or 1024
        scale = getattr(model, "vae_scale_factor", 8) * 2  # 2x2 latent packing
        rows, cols = height // scale, width // scale
        return [
            "token order: [text | image] (double- and single-stream sites)",
            f"image grid at {height}x{width} px: {rows} x {cols} = {rows * cols} image tokens "
            f"({scale} px per token: VAE x 2x2 packing); reference images of an edit append their tokens",
            "text tokens: the prompt encoder's length (Flux2Pipeline: max_sequence_length, 512 by default)",
            "single-stream sites are not told the text length; the adapter records it per forward",
        ]


def target_from_ids(img_ids: torch.Tensor | None, image_len: int) -> tuple[int, tuple[int, int] | None]:
    """(target image tokens, their (rows, cols)) from FLUX.2's `img_ids` [(B,) N, 4] = (T, H, W, L).

    One device-to-host copy (float64: numpy has no bfloat16) of the first sample's ids. The target's tokens
    come first (T = 0); reference images follow with T = 10, 20, ... The grid is None when the target's ids are
    not one rows x cols grid."""
    if img_ids is None:
        return image_len, None
    ids = (img_ids[0] if img_ids.ndim == 3 else img_ids).detach().to(device="cpu", dtype=torch.float64).numpy()
    if ids.shape[0] != image_len or image_len == 0:
        raise ModelError(f"FLUX.2 img_ids hold {ids.shape[0]} positions for {image_len} image tokens")
    t = ids[:, 0]
    other = t != t[0]
    target_len = int(other.argmax()) if other.any() else len(t)
    if (t[target_len:] == t[0]).any():
        raise ModelError(f"FLUX.2 img_ids put target-image tokens (T={t[0]:g}) after reference-image tokens; "
                         "headhunter expects the target's tokens first, as Flux2Pipeline orders them")
    target = ids[:target_len]
    rows = int(target[:, 1].max() - target[:, 1].min()) + 1
    cols = int(target[:, 2].max() - target[:, 2].min()) + 1
    return target_len, ((rows, cols) if rows * cols == target_len else None)
