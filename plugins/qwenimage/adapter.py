"""The Qwen-Image adapter (`QwenImageTransformer2DModel`, `QwenDoubleStreamAttnProcessor2_0`).

Every block is an MMDiT double-stream block whose attention (`transformer_blocks.{i}.attn`, a diffusers
`Attention`) runs one joint attention over [text | image]: separate projections per stream, qk RMSNorm
per stream, Qwen's complex RoPE per stream (`apply_rotary_emb_qwen`, text positions after the image's),
then `dispatch_attention_fn`. The perturbing processor is a copy of that `__call__` (diffusers 0.42.1) with
the attention call routed through the engine's `attend`.

Layout, decided per call: text length = `encoder_hidden_states.shape[1]`, image tokens = `hidden_states.
shape[1]`; the grid comes from the transformer's `img_shapes` argument (host integers (frames, rows,
cols) per image, read by the forward pre-hook; no device read). Edit pipelines (QwenImageEditPipeline,
QwenImageEditPlusPipeline) append their reference images' tokens after the target's and list them after
the target in `img_shapes`: the layout then has `ref_len` reference tokens, scope `image` and blur act on
the target's tokens only (blur on the target's grid), and the guidance term is computed on the target
tokens the pipeline steps on (`noise_pred[:, :latents.size(1)]`; `trailing_references`).

A text mask (`encoder_hidden_states_mask`) in which every token is valid is the same as no mask, and
is accepted: diffusers' modular Qwen-Image loop always passes one. Deciding that needs the mask's
values: the forward pre-hook reads them once per perturbed forward that carries a mask (one small
device-to-host read; stock forwards and calls without a mask read nothing). A mask with padding (the
prompts of one call have different lengths) is refused on perturbed sites: the targets and the float64
reference have no notion of masked keys.
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

from .sites import qwenimage_sites


class QwenImagePerturbingProcessor(PerturbingProcessor):
    """`QwenDoubleStreamAttnProcessor2_0` with the perturbation added at the attention call (same signature,
    so `Attention.forward` filters keyword arguments exactly as for the stock processor)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, encoder_hidden_states_mask=None,
                 attention_mask=None, image_rotary_emb=None):
        entry = self.strength  # this site's SiteStrength, None when it is not perturbed
        if entry is None:
            return self.original(attn, hidden_states, encoder_hidden_states, encoder_hidden_states_mask,
                                 attention_mask, image_rotary_emb)
        if encoder_hidden_states is None:
            raise ValueError("QwenDoubleStreamAttnProcessor2_0 requires encoder_hidden_states (text stream)")
        if encoder_hidden_states_mask is not None and self.state.cache.get("mask_all_valid"):
            encoder_hidden_states_mask = None  # every text token valid (read in observe): the same as no mask
        if attention_mask is not None or encoder_hidden_states_mask is not None:
            raise ModelError(
                f"{self.site_name}: perturbing attention with a text mask that has padding is not supported (the "
                "pipeline passes one when prompts in one call have different lengths); guide one prompt per "
                "call, or pass prompt_embeds of equal length"
            )
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen

        # From here on: QwenDoubleStreamAttnProcessor2_0.__call__ (diffusers 0.42.1), `attend` at the attention.
        seq_txt = encoder_hidden_states.shape[1]
        img_query = attn.to_q(hidden_states)
        img_key = attn.to_k(hidden_states)
        img_value = attn.to_v(hidden_states)
        txt_query = attn.add_q_proj(encoder_hidden_states)
        txt_key = attn.add_k_proj(encoder_hidden_states)
        txt_value = attn.add_v_proj(encoder_hidden_states)
        head_dim = attn.inner_dim // attn.heads
        img_query = img_query.unflatten(-1, (-1, head_dim))
        img_key = img_key.unflatten(-1, (-1, head_dim))
        img_value = img_value.unflatten(-1, (-1, head_dim))
        txt_query = txt_query.unflatten(-1, (-1, head_dim))
        txt_key = txt_key.unflatten(-1, (-1, head_dim))
        txt_value = txt_value.unflatten(-1, (-1, head_dim))
        if attn.norm_q is not None:
            img_query = attn.norm_q(img_query)
        if attn.norm_k is not None:
            img_key = attn.norm_k(img_key)
        if attn.norm_added_q is not None:
            txt_query = attn.norm_added_q(txt_query)
        if attn.norm_added_k is not None:
            txt_key = attn.norm_added_k(txt_key)
        if image_rotary_emb is not None:
            img_freqs, txt_freqs = image_rotary_emb
            img_query = apply_rotary_emb_qwen(img_query, img_freqs, use_real=False)
            img_key = apply_rotary_emb_qwen(img_key, img_freqs, use_real=False)
            txt_query = apply_rotary_emb_qwen(txt_query, txt_freqs, use_real=False)
            txt_key = apply_rotary_emb_qwen(txt_key, txt_freqs, use_real=False)
        joint_query = torch.cat([txt_query, img_query], dim=1)
        joint_key = torch.cat([txt_key, img_key], dim=1)
        joint_value = torch.cat([txt_value, img_value], dim=1)
        ref_len = self.state.ref_len
        layout = TokenLayout(text_len=seq_txt, image_len=hidden_states.shape[1] - ref_len, text_first=True,
                             grid=self.state.grid, ref_len=ref_len)
        original = self.original
        out = self.attend(
            entry, joint_query.transpose(1, 2), joint_key.transpose(1, 2), joint_value.transpose(1, 2), layout,
            lambda: dispatch_attention_fn(
                joint_query, joint_key, joint_value, attn_mask=None, dropout_p=0.0, is_causal=False,
                backend=original._attention_backend, parallel_config=original._parallel_config,
            ).transpose(1, 2),
        )
        joint_hidden_states = out.transpose(1, 2).flatten(2, 3)
        joint_hidden_states = joint_hidden_states.to(joint_query.dtype)
        txt_attn_output = joint_hidden_states[:, :seq_txt, :]
        img_attn_output = joint_hidden_states[:, seq_txt:, :]
        img_attn_output = attn.to_out[0](img_attn_output.contiguous())
        if len(attn.to_out) > 1:
            img_attn_output = attn.to_out[1](img_attn_output)
        txt_attn_output = attn.to_add_out(txt_attn_output.contiguous())
        return img_attn_output, txt_attn_output


class QwenImageAdapter(ModelAdapter):
    """Qwen-Image (`QwenImageTransformer2DModel`: joint double-stream blocks), and pipelines built on it:
    QwenImagePipeline, and the edit pipelines QwenImageEditPipeline / QwenImageEditPlusPipeline (reference
    tokens after the target's; scope `image` and blur act on the target only; tests/test_edit_pipelines.py)."""

    name = "qwenimage"
    architecture = "qwenimage"
    trailing_references = True
    #: QwenImageTransformerBlock's per-row inputs; it returns (encoder_hidden_states, hidden_states), the default
    #: `block_outputs` (rows computed once: docs/engine.md).
    row_inputs = ("hidden_states", "encoder_hidden_states", "encoder_hidden_states_mask", "temb", "modulate_index")

    @classmethod
    def matches(cls, model: Any) -> bool:
        from diffusers import QwenImageTransformer2DModel

        return isinstance(model_of(model), QwenImageTransformer2DModel)

    def sites(self, model: Any) -> list[Site]:
        blocks = self.transformer(model).transformer_blocks
        heads = {b.attn.heads for b in blocks}
        if len(heads) != 1:
            raise ModelError(f"Qwen-Image blocks with different head counts {sorted(heads)}; expected one")
        return qwenimage_sites(len(blocks), heads.pop())

    def blocks(self, model: Any) -> list[str]:
        """`transformer_blocks.{i}` in order. None with `zero_cond_t` (Qwen-Image-Edit 2511): its blocks get a
        `temb` of twice the batch, which is not per-row, so every row is computed in full there."""
        t = self.transformer(model)
        if getattr(t, "zero_cond_t", False):
            return []
        return [f"transformer_blocks.{i}" for i in range(len(t.transformer_blocks))]

    def make_processor(self, site: Site, module: torch.nn.Module, state: EngineState) -> PerturbingProcessor:
        from diffusers.models.transformers.transformer_qwenimage import QwenDoubleStreamAttnProcessor2_0

        original = self.original_processor(site, module, QwenDoubleStreamAttnProcessor2_0, "put it back")
        return QwenImagePerturbingProcessor(site, original, state)

    def prepare(self, state: EngineState, transformer: torch.nn.Module) -> None:
        params = list(inspect.signature(transformer.forward).parameters)
        state.cache["img_shapes_position"] = params.index("img_shapes") if "img_shapes" in params else None
        state.cache["mask_position"] = params.index("encoder_hidden_states_mask")

    def observe(self, state: EngineState, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        shapes = kwargs.get("img_shapes")
        position = state.cache["img_shapes_position"]
        if shapes is None and position is not None and position < len(args):
            shapes = args[position]
        state.ref_len, state.grid = 0, None
        if needs_target_layout(state):  # host integers only, but strict: refused when they do not add up
            image_len = (kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]).shape[1]
            target_len, state.grid = target_from_shapes(shapes, image_len)
            state.ref_len = image_len - target_len
        mask = kwargs.get("encoder_hidden_states_mask")
        if mask is None and state.cache["mask_position"] < len(args):
            mask = args[state.cache["mask_position"]]
        # One host read per perturbed forward that carries a mask (never per attention call): is it all valid?
        state.cache["mask_all_valid"] = mask is None or bool(mask.detach().to("cpu").bool().all())

    def layout_summary(self, model: Any, height: int | None = None, width: int | None = None) -> list[str]:
        height, width = height or 1328, width or 1328
        scale = getattr(model, "vae_scale_factor", 8) * 2  # 2x2 latent packing
        rows, cols = height // scale, width // scale
        return [
            "token order: [text | image] (joint sites)",
            f"image grid at {height}x{width} px: {rows} x {cols} = {rows * cols} image tokens "
            f"({scale} px per token: VAE x 2x2 packing)",
            "text tokens: the prompt's Qwen2.5-VL tokens (at most max_sequence_length, 512 by default)",
        ]


def target_from_shapes(img_shapes: Any, image_len: int) -> tuple[int, tuple[int, int] | None]:
    """(target image tokens, their (rows, cols)) from the transformer's `img_shapes` (host integers, as
    `QwenEmbedRope` reads them: the first sample's list of (frames, rows, cols), target first). An edit pipeline
    (QwenImageEditPipeline, Edit Plus) lists its reference images after the target: their tokens follow the
    target's and are the reference tokens. The grid is None for a target of several frames. Without
    `img_shapes` every image token is the target's, with no grid."""
    if img_shapes is None:
        return image_len, None
    shapes = img_shapes[0] if isinstance(img_shapes, list) else img_shapes
    if not isinstance(shapes, list):
        shapes = [shapes]
    sizes = [tuple(int(x) for x in shape) for shape in shapes]
    total = sum(f * r * c for f, r, c in sizes)
    if total != image_len:
        raise ModelError(f"img_shapes {sizes} describe {total} image tokens but hidden_states has {image_len}; "
                         "cannot tell the target image's tokens from the reference images'")
    frames, rows, cols = sizes[0]
    return frames * rows * cols, ((rows, cols) if frames == 1 else None)

