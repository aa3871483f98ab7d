"""Tiny random-weight configs and forward inputs for every declared DiT family (headhunter.plugins.dits).

Generated once from diffusers' own model-tester configs (`get_init_dict()` / `get_dummy_inputs()` of
tests/models/transformers in diffusers 0.42.1) where the class has one, else written from the class signature
and how its pipeline calls it (FLUX.3, HunyuanImage, Kandinsky 5/6, QwenImage21, Bria FIBO 2). Random float
inputs are drawn from a fixed seed (`_rn`), ids, masks and index inputs are literal.

`build(cls_name)` -> a model in eval() mode whose zero-initialised parameters (adaLN-zero, final layers) got
small random values, so that every attention reaches the output; `inputs(cls_name)` -> fresh forward inputs.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def _rn(shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1000 + seed)).to(dtype)


#: class name -> (init kwargs, () -> forward inputs)
SPECS: dict[str, tuple[dict[str, Any], Any]] = {
    # manual (refspecs.py)
    'Flux3Transformer2DModel': (
        {'in_channels': 16, 'cond_in_channels': 16, 'num_layers': 1, 'num_single_layers': 1, 'attention_head_dim': 16, 'num_attention_heads': 2, 'joint_attention_dim': 32, 'timestep_channels': 32, 'mlp_ratio': 2.0, 'axes_dims_rope': (4, 4, 4, 4)},
        lambda: {
        'hidden_states': _rn((1, 24, 16), seed=0, dtype=torch.float32),
        'encoder_hidden_states': _rn((1, 5, 32), seed=1, dtype=torch.float32),
        'timestep': torch.full((1,), 0.5, dtype=torch.float32),
        'img_ids': torch.tensor([[0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 2, 0], [0, 0, 3, 0], [0, 0, 4, 0], [0, 0, 5, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 2, 0], [0, 1, 3, 0], [0, 1, 4, 0], [0, 1, 5, 0], [0, 2, 0, 0], [0, 2, 1, 0], [0, 2, 2, 0], [0, 2, 3, 0], [0, 2, 4, 0], [0, 2, 5, 0], [0, 3, 0, 0], [0, 3, 1, 0], [0, 3, 2, 0], [0, 3, 3, 0], [0, 3, 4, 0], [0, 3, 5, 0]], dtype=torch.float32),
        'txt_ids': torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 2], [0, 0, 0, 3], [0, 0, 0, 4]], dtype=torch.float32)},
    ),
    # diffusers tests: test_models_transformer_chroma.py:ChromaTransformerTesterConfig
    'ChromaTransformer2DModel': (
        {'patch_size': 1, 'in_channels': 4, 'num_layers': 1, 'num_single_layers': 1, 'attention_head_dim': 16, 'num_attention_heads': 2, 'joint_attention_dim': 32, 'axes_dims_rope': [4, 4, 8], 'approximator_num_channels': 8, 'approximator_hidden_dim': 16, 'approximator_layers': 1},
        lambda: {
        'hidden_states': _rn((1, 16, 4), seed=0, dtype=torch.float32),
        'encoder_hidden_states': _rn((1, 48, 32), seed=1, dtype=torch.float32),
        'img_ids': _rn((16, 3), seed=2, dtype=torch.float32),
        'txt_ids': _rn((48, 3), seed=3, dtype=torch.float32),
        'timestep': torch.full((1,), 1.0, dtype=torch.float32)},
    ),
    # diffusers tests: test_models_transformer_bria.py:BriaTransformerTesterConfig
    'BriaTransformer2DModel': (
        {'patch_size': 1, 'in_channels': 4, 'num_layers': 1, 'num_single_layers': 1, 'attention_head_dim': 8, 'num_attention_heads': 2, 'joint_attention_dim': 32, 'pooled_projection_dim': None, 'axes_dims_rope': [0, 4, 4]},
        lambda: {
        'hidden_states': _rn((1, 16, 4), seed=0, dtype=torch.float32),
        'encoder_hidden_states': _rn((1, 48, 32), seed=1, dtype=torch.float32),
        'img_ids': _rn((16, 3), seed=2, dtype=torch.float32),
        'txt_ids': _rn((48, 3), seed=3, dtype=torch.float32),
        'timestep': torch.full((1,), 1.0, dtype=torch.float32)},
    ),
    # diffusers tests: test_models_transformer_bria_fibo.py:BriaFiboTransformerTesterConfig
    'BriaFiboTransformer2DModel': (
        {'patch_size': 1, 'in_channels': 48, 'num_layers': 1, 'num_single_layers': 1, 'attention_head_dim': 8, 'num_attention_heads': 2, 'joint_attention_dim': 64, 'text_encoder_dim': 32, 'pooled_projection_dim': None, 'axes_dims_rope': [0, 4, 4]},
        lambda: {
        'hidden_states': _rn((1, 256, 48), seed=0, dtype=torch.float32),
        'encoder_hidden_states': _rn((1, 32, 64), seed=1, dtype=torch.float32),
        'img_ids': _rn((256, 3), seed=2, dtype=torch.float32),
        'txt_ids': _rn((32, 3), seed=3, dtype=torch.float32),
        'timestep': torch.full((1,), 1.0, dtype=torch.float32),
        'text_encoder_layers': [_rn((1, 32, 32), seed=6, dtype=torch.float32), _rn((1, 32, 32), seed=7, dtype=torch.float32)]},
    ),
    # diffusers tests: test_models_transformer_longcat_image.py:LongCatImageTransformerTesterConfig
    'LongCatImageTransformer2DModel': (
        {'patch_size': 1, 'in_channels': 4, 'num_layers': 1, 'num_single_layers': 1, 'attention_head_dim': 16, 'num_attention_heads': 2, 'joint_attention_dim': 32, 'pooled_projection_dim': 32, 'axes_dims_rope': [4, 4, 8]},
        lambda: {
        'hidden_states': _rn((1, 16, 4), seed=0, dtype=torch.float32),
        'encoder_hidden_states': _rn((1, 48, 32), seed=1, dtype=torch.float32),
        'img_ids': _rn((16, 3), seed=2, dtype=torch.float32),
        'txt_ids': _rn((48, 3), seed=3, dtype=torch.float32),
        'timestep': torch.full((1,), 1.0, dtype=torch.float32),
        'guidance': torch.full((1,), 3.5, dtype=torch.float32)},
    ),
    # diffusers tests: test_models_transformer_ovis_image.py:OvisImageTransformerTesterConfig
    'OvisImageTransformer2DModel': (
        {'patch_size': 1, 'in_channels': 4, 'out_channels': 4, 'num_layers': 1, 'num_single_layers': 1, 'attention_head_dim': 16, 'num_attention_heads': 2, 'joint_attention_dim': 32, 'axes_dims_rope': (4, 4, 8)},
        lambda: {
        'hidden_states': _rn((1, 16, 4), seed=0, dtype=torch.float32),
        'encoder_hidden_states': _rn((1, 48, 32), seed=1, dtype=torch.float32),
        'img_ids': _rn((16, 3), seed=2, dtype=torch.float32),
        'txt_ids': _rn((48, 3), seed=3, dtype=torch.float32),
        'timestep': torch.full((1,), 1.0, dtype=torch.float32)},
    ),
    # diffusers tests: test_models_transformer_hunyuan_video.py:HunyuanVideoTransformerTesterConfig
    'HunyuanVideoTransformer3DModel': (
        {'in_channels': 4, 'out_channels': 4, 'num_attention_heads': 2, 'attention_head_dim': 10, 'num_layers': 1, 'num_single_layers': 1, 'num_refiner_layers': 1, 'patch_size': 1, 'patch_size_t': 1, 'guidance_embeds': True, 'text_embed_dim': 16, 'pooled_projection_dim': 8, 'rope_axes_dim': (2, 4, 4), 'image_condition_type': None},
        lambda: {
        'hidden_states': _rn((1, 4, 1, 16, 16), seed=0, dtype=torch.float32),
        'timestep': torch.full((1,), 44.0, dtype=torch.float32),
        'encoder_hidden_states': _rn((1, 12, 16), seed=2, dtype=torch.float32),
        'pooled_projections': _rn((1, 8), seed=3, dtype=torch.float32),
        'encoder_attention_mask': torch.full((1, 12), 1.0, dtype=torch.float32),
        'guidance': torch.full((1,), 44.0, dtype=torch.float32)},
    ),
    # manual (refspecs.py)
    'HunyuanImageTransformer2DModel': (
        {'in_channels': 4, 'out_channels': 4, 'num_attention_heads': 2, 'attention_head_dim': 16, 'num_layers': 1, 'num_single_layers': 1, 'num_refiner_layers': 1, 'patch_size': (1, 1), 'text_embed_dim': 32, 'rope_axes_dim': (8, 8)},
        lambda: {
        'hidden_states': _rn((1, 4, 4, 6), seed=0, dtype=torch.float32),
        'timestep': torch.full((1,), 500.0, dtype=torch.float32),
        'encoder_hidden_states': _rn((1, 5, 32), seed=2, dtype=torch.float32),
        'encoder_attention_mask': torch.full((1, 5), 1, dtype=torch.int64)},
    ),
    # diffusers tests: test_models_transformer_hunyuan_1_5.py:HunyuanVideo15TransformerTesterConfig
    'HunyuanVideo15Transformer3DModel': (
        {'in_channels': 4, 'out_channels': 4, 'num_attention_heads': 2, 'attention_head_dim': 8, 'num_layers': 2, 'num_refiner_layers': 1, 'mlp_ratio': 2.0, 'patch_size': 1, 'patch_size_t': 1, 'text_embed_dim': 16, 'text_embed_2_dim': 8, 'image_embed_dim': 12, 'rope_axes_dim': (2, 2, 4), 'target_size': 16, 'task_type': 't2v'},
        lambda: {
        'hidden_states': _rn((1, 4, 1, 8, 8), seed=0, dtype=torch.float32),
        'timestep': torch.full((1,), 1.0, dtype=torch.float32),
        'encoder_hidden_states': _rn((1, 6, 16), seed=2, dtype=torch.float32),
        'encoder_hidden_states_2': _rn((1, 4, 8), seed=3, dtype=torch.float32),
        'encoder_attention_mask': torch.full((1, 6), 1.0, dtype=torch.float32),
        'encoder_attention_mask_2': torch.full((1, 4), 1.0, dtype=torch.float32),
        'image_embeds': torch.full((1, 3, 12), 0.0, dtype=torch.float32)},
    ),
    # diffusers tests: test_models_transformer_hidream.py:HiDreamTransformerTesterConfig
    'HiDreamImageTransformer2DModel': (
        {'patch_size': 2, 'in_channels': 4, 'out_channels': 4, 'num_layers': 1, 'num_single_layers': 1, 'attention_head_dim': 8, 'num_attention_heads': 4, 'caption_channels': [8, 4], 'text_emb_dim': 8, 'num_routed_experts': 2, 'num_activated_experts': 2, 'axes_dims_rope': (4, 2, 2), 'max_resolution': (32, 32), 'llama_layers': (0, 1), 'force_inference_output': True},
        lambda: {
        'hidden_states': _rn((2, 4, 32, 32), seed=0, dtype=torch.float32),
        'encoder_hidden_states_t5': _rn((2, 8, 8), seed=1, dtype=torch.float32),
        'encoder_hidden_states_llama3': _rn((2, 2, 8, 4), seed=2, dtype=torch.float32),
        'pooled_embeds': _rn((2, 8), seed=3, dtype=torch.float32),
        'timesteps': torch.tensor([44, 239], dtype=torch.int64)},
    ),
    # diffusers tests: test_models_transformer_aura_flow.py:AuraFlowTransformerTesterConfig
    'AuraFlowTransformer2DModel': (
        {'sample_size': 32, 'patch_size': 2, 'in_channels': 4, 'num_mmdit_layers': 1, 'num_single_dit_layers': 1, 'attention_head_dim': 8, 'num_attention_heads': 4, 'caption_projection_dim': 32, 'joint_attention_dim': 32, 'out_channels': 4, 'pos_embed_max_size': 256},
        lambda: {
        'hidden_states': _rn((2, 4, 32, 32), seed=0, dtype=torch.float32),
        'encoder_hidden_states': _rn((2, 256, 32), seed=1, dtype=torch.float32),
        'timestep': torch.tensor([44, 239], dtype=torch.int64)},
    ),
    # diffusers tests: test_models_transformer_motif_video.py:MotifVideoTransformerTesterConfig
    'MotifVideoTransformer3DModel': (
        {'in_channels': 33, 'out_channels': 16, 'num_attention_heads': 2, 'attention_head_dim': 12, 'num_layers': 1, 'num_single_layers': 1, 'num_decoder_layers': 0, 'mlp_ratio': 4.0, 'patch_size': 1, 'patch_size_t': 1, 'qk_norm': 'rms_norm', 'norm_type': 'layer_norm', 'text_embed_dim': 32, 'image_embed_dim': 4, 'rope_theta': 256.0, 'rope_axes_dim': (4, 4, 4), 'enable_text_cross_attention_dual': False, 'enable_text_cross_attention_single': False},
        lambda: {
        'hidden_states': _rn((1, 33, 9, 16, 16), seed=0, dtype=torch.float32),
        'encoder_hidden_states': _rn((1, 12, 32), seed=1, dtype=torch.float32),
        'timestep': torch.full((1,), 44, dtype=torch.int64)},
    ),
    # diffusers tests: test_models_transformer_lumina2.py:Lumina2TransformerTesterConfig
    'Lumina2Transformer2DModel': (
        {'sample_size': 16, 'patch_size': 2, 'in_channels': 4, 'hidden_size': 24, 'num_layers': 2, 'num_refiner_layers': 1, 'num_attention_heads': 3, 'num_kv_heads': 1, 'multiple_of': 2, 'ffn_dim_multiplier': None, 'norm_eps': 1e-05, 'scaling_factor': 1.0, 'axes_dim_rope': (4, 2, 2), 'axes_lens': (128, 128, 128), 'cap_feat_dim': 32},
        lambda: {
        'hidden_states': _rn((2, 4, 16, 16), seed=0, dtype=torch.float32),
        'encoder_hidden_states': _rn((2, 16, 32), seed=1, dtype=torch.float32),
        'timestep': _rn((2,), seed=2, dtype=torch.float32),
        'encoder_attention_mask': torch.full((2, 16), True, dtype=torch.bool)},
    ),
    # diffusers tests: test_models_transformer_z_image.py:ZImageTransformerTesterConfig
    'ZImageTransformer2DModel': (
        {'all_patch_size': (2,), 'all_f_patch_size': (1,), 'in_channels': 16, 'dim': 32, 'n_layers': 1, 'n_refiner_layers': 1, 'n_heads': 2, 'n_kv_heads': 2, 'qk_norm': True, 'cap_feat_dim': 16, 'rope_theta': 256.0, 't_scale': 1000.0, 'axes_dims': [8, 4, 4], 'axes_lens': [256, 32, 32]},
        lambda: {
        'x': [_rn((16, 1, 16, 16), seed=1, dtype=torch.float32)],
        'cap_feats': [_rn((16, 16), seed=2, dtype=torch.float32)],
        't': torch.full((1,), 0.0, dtype=torch.float32)},
    ),
    # diffusers tests: test_models_transformer_krea2.py:Krea2TransformerTesterConfig
    'Krea2Transformer2DModel': (
        {'in_channels': 16, 'num_layers': 2, 'attention_head_dim': 8, 'num_attention_heads': 4, 'num_key_value_heads': 2, 'intermediate_size': 32, 'timestep_embed_dim': 8, 'text_hidden_dim': 16, 'num_text_layers': 3, 'text_num_attention_heads': 2, 'text_num_key_value_heads': 1, 'text_intermediate_size': 16, 'num_layerwise_text_blocks': 1, 'num_refiner_text_blocks': 1, 'axes_dims_rope': (4, 2, 2), 'rope_theta': 1000.0, 'norm_eps': 1e-05},
        lambda: {
        'hidden_states': _rn((1, 4, 16), seed=0, dtype=torch.float32),
        'encoder_hidden_states': _rn((1, 4, 3, 16), seed=1, dtype=torch.float32),
        'timestep': torch.full((1,), 0.5, dtype=torch.float32),
        'position_ids': torch.tensor([[0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]], dtype=torch.float32),
        'encoder_attention_mask': torch.tensor([[True, True, True, False]], dtype=torch.bool)},
    ),
    # diffusers tests: test_models_transformer_ideogram4.py:Ideogram4TransformerTesterConfig
    'Ideogram4Transformer2DModel': (
        {'in_channels': 16, 'num_layers': 2, 'attention_head_dim': 8, 'num_attention_heads': 4, 'intermediate_size': 32, 'adaln_dim': 16, 'llm_features_dim': 24, 'rope_theta': 10000, 'mrope_section': (2, 1, 1), 'norm_eps': 1e-05},
        lambda: {
        'hidden_states': _rn((1, 8, 16), seed=0, dtype=torch.float32),
        'encoder_hidden_states': _rn((1, 8, 24), seed=1, dtype=torch.float32),
        'timestep': torch.full((1,), 0.5, dtype=torch.float32),
        'position_ids': torch.tensor([[[0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3], [65536, 65536, 65536], [65536, 65536, 65537], [65536, 65537, 65536], [65536, 65537, 65537]]], dtype=torch.int64),
        'segment_ids': torch.full((1, 8), 1, dtype=torch.int64),
        'indicator': torch.tensor([[3, 3, 3, 3, 2, 2, 2, 2]], dtype=torch.int64)},
    ),
    # diffusers tests: test_models_transformer_ernie_image.py:ErnieImageTransformerTesterConfig
    'ErnieImageTransformer2DModel': (
        {'hidden_size': 32, 'num_attention_heads': 2, 'num_layers': 1, 'ffn_hidden_size': 32, 'in_channels': 16, 'out_channels': 16, 'patch_size': 1, 'text_in_dim': 16, 'rope_theta': 256, 'rope_axes_dim': (8, 4, 4), 'eps': 1e-06, 'qk_layernorm': True},
        lambda: {
        'hidden_states': _rn((1, 16, 16, 16), seed=0, dtype=torch.float32),
        'timestep': torch.full((1,), 1.0, dtype=torch.float32),
        'text_bth': _rn((1, 16, 16), seed=2, dtype=torch.float32),
        'text_lens': torch.full((1,), 16, dtype=torch.int64)},
    ),
    # diffusers tests: test_models_transformer_glm_image.py:GlmImageTransformerTesterConfig
    'GlmImageTransformer2DModel': (
        {'patch_size': 2, 'in_channels': 4, 'out_channels': 4, 'num_layers': 1, 'attention_head_dim': 8, 'num_attention_heads': 2, 'text_embed_dim': 32, 'time_embed_dim': 16, 'condition_dim': 8, 'prior_vq_quantizer_codebook_size': 64},
        lambda: {
        'hidden_states': _rn((1, 4, 8, 8), seed=0, dtype=torch.float32),
        'encoder_hidden_states': _rn((1, 12, 32), seed=1, dtype=torch.float32),
        'prior_token_id': torch.full((1,), 44, dtype=torch.int64),
        'prior_token_drop': torch.full((1,), False, dtype=torch.bool),
        'timestep': torch.full((1,), 44, dtype=torch.int64),
        'target_size': torch.full((1, 2), 8.0, dtype=torch.float32),
        'crop_coords': torch.full((1, 2), 0.0, dtype=torch.float32)},
    ),
    # diffusers tests: test_models_transformer_cogview4.py:CogView4TransformerTesterConfig
    'CogView4Transformer2DModel': (
        {'patch_size': 2, 'in_channels': 4, 'num_layers': 2, 'attention_head_dim': 4, 'num_attention_heads': 4, 'out_channels': 4, 'text_embed_dim': 8, 'time_embed_dim': 8, 'condition_dim': 4},
        lambda: {
        'hidden_states': _rn((2, 4, 8, 8), seed=0, dtype=torch.float32),
        'encoder_hidden_states': _rn((2, 8, 8), seed=1, dtype=torch.float32),
        'timestep': torch.tensor([44, 239], dtype=torch.int64),
        'original_size': torch.full((2, 2), 64, dtype=torch.int64),
        'target_size': torch.full((2, 2), 64, dtype=torch.int64),
        'crop_coords': torch.full((2, 2), 0, dtype=torch.int64)},
    ),
    # diffusers tests: test_models_transformer_cogview3plus.py:CogView3PlusTransformerTesterConfig
    'CogView3PlusTransformer2DModel': (
        {'patch_size': 2, 'in_channels': 4, 'num_layers': 2, 'attention_head_dim': 4, 'num_attention_heads': 2, 'out_channels': 4, 'text_embed_dim': 8, 'time_embed_dim': 8, 'condition_dim': 2, 'pos_embed_max_size': 8, 'sample_size': 8},
        lambda: {
        'hidden_states': _rn((2, 4, 8, 8), seed=0, dtype=torch.float32),
        'encoder_hidden_states': _rn((2, 8, 8), seed=1, dtype=torch.float32),
        'original_size': torch.full((2, 2), 64, dtype=torch.int64),
        'target_size': torch.full((2, 2), 64, dtype=torch.int64),
        'crop_coords': torch.full((2, 2), 0, dtype=torch.int64),
        'timestep': torch.tensor([44, 239], dtype=torch.int64)},
    ),
    # diffusers tests: test_models_transformer_cogvideox.py:CogVideoXTransformerTesterConfig
    'CogVideoXTransformer3DModel': (
        {'num_attention_heads': 2, 'attention_head_dim': 8, 'in_channels': 4, 'out_channels': 4, 'time_embed_dim': 2, 'text_embed_dim': 8, 'num_layers': 2, 'sample_width': 8, 'sample_height': 8, 'sample_frames': 8, 'patch_size': 2, 'patch_size_t': None, 'temporal_compression_ratio': 4, 'max_text_seq_length': 8},
        lambda: {
        'hidden_states': _rn((2, 1, 4, 8, 8), seed=0, dtype=torch.float32),
        'encoder_hidden_states': _rn((2, 8, 8), seed=1, dtype=torch.float32),
        'timestep': torch.tensor([44, 239], dtype=torch.int64)},
    ),
    # diffusers tests: test_models_transformer_easyanimate.py:EasyAnimateTransformerTesterConfig
    'EasyAnimateTransformer3DModel': (
        {'attention_head_dim': 16, 'num_attention_heads': 2, 'in_channels': 4, 'mmdit_layers': 2, 'num_layers': 2, 'out_channels': 4, 'patch_size': 2, 'sample_height': 60, 'sample_width': 90, 'text_embed_dim': 16, 'time_embed_dim': 8, 'time_position_encoding_type': '3d_rope', 'timestep_activation_fn': 'silu'},
        lambda: {
        'hidden_states': _rn((2, 4, 2, 16, 16), seed=0, dtype=torch.float32),
        'timestep': torch.tensor([44, 239], dtype=torch.int64),
        'timestep_cond': None,
        'encoder_hidden_states': _rn((2, 16, 16), seed=3, dtype=torch.float32),
        'encoder_hidden_states_t5': None,
        'inpaint_latents': None,
        'control_latents': None},
    ),
    # diffusers tests: test_models_transformer_minimax_h3.py:MiniMaxH3TransformerTesterConfig
    'MiniMaxH3Transformer3DModel': (
        {'num_attention_heads': 2, 'attention_head_dim': 16, 'hidden_size': 24, 'num_layers': 2, 'num_refiner_layers': 2, 'ffn_dim': 32, 'in_channels': 4, 'audio_in_channels': 6, 'patch_size': (1, 2, 2), 'text_dim': 8, 'freq_dim': 8, 'time_embed_hidden_dim': 24, 'time_embed_dim': 16, 'rope_freq_dim': 2},
        lambda: {
        'hidden_states': _rn((2, 8, 16), seed=0, dtype=torch.float32),
        'audio_hidden_states': _rn((2, 6, 6), seed=1, dtype=torch.float32),
        'encoder_hidden_states': _rn((2, 4, 8), seed=2, dtype=torch.float32),
        'timestep': _rn((2,), seed=3, dtype=torch.float32),
        'timestep_indices': torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0], dtype=torch.int64),
        'token_tags': torch.tensor([1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0], dtype=torch.int64),
        'position_ids': torch.tensor([[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0], [4, 0, 0], [5, 0, 0], [6, 0, 0], [7, 0, 0], [8, 0, 0], [9, 0, 0], [10, 0, 0], [11, 1, 1], [12, 2, 0], [13, 3, 1], [14, 0, 0], [15, 1, 1], [16, 2, 0], [17, 3, 1]], dtype=torch.float32),
        'video_indices': torch.tensor([10, 11, 12, 13, 14, 15, 16, 17], dtype=torch.int64),
        'audio_indices': torch.tensor([4, 5, 6, 7, 8, 9], dtype=torch.int64),
        'text_indices': torch.tensor([0, 1, 2, 3], dtype=torch.int64)},
    ),
    # diffusers tests: test_models_transformer_omnigen.py:OmniGenTransformerTesterConfig
    'OmniGenTransformer2DModel': (
        {'hidden_size': 16, 'num_attention_heads': 4, 'num_key_value_heads': 4, 'intermediate_size': 32, 'num_layers': 20, 'pad_token_id': 0, 'vocab_size': 1000, 'in_channels': 4, 'time_step_dim': 4, 'rope_scaling': {'long_factor': [1, 2], 'short_factor': [1, 2]}},
        lambda: {
        'hidden_states': _rn((2, 4, 8, 8), seed=0, dtype=torch.float32),
        'timestep': _rn((2,), seed=1, dtype=torch.float32),
        'input_ids': torch.tensor([[4, 9, 3, 0, 3, 9, 7, 3, 7, 3, 1, 6, 6, 9, 8, 6, 6, 8, 4, 3, 6, 9, 1, 4], [4, 1, 9, 9, 9, 0, 1, 2, 3, 0, 5, 5, 2, 9, 1, 8, 8, 3, 6, 9, 1, 7, 3, 5]], dtype=torch.int64),
        'input_img_latents': [_rn((1, 4, 8, 8), seed=4, dtype=torch.float32)],
        'input_image_sizes': {0: [[0, 16]]},
        'attention_mask': torch.full((2, 41, 41), 1.0, dtype=torch.float32),
        'position_ids': torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40]], dtype=torch.int64)},
    ),
    # manual (refspecs.py)
    'BriaFibo2Transformer2DModel': (
        {'in_channels': 4, 'patch_size': 2, 'dim': 32, 'n_layers': 2, 'n_refiner_layers': 1, 'n_heads': 2, 'cap_feat_dim': 24, 'injection_layer_ids': (1,), 'perceiver_num_layers': 1, 'min_num_gist_tokens': 4, 'max_num_gist_tokens': 8, 'gist_step': 4, 'gist_min_text_len': 4, 'gist_max_text_len': 16, 'axes_dims': (4, 6, 6), 'axes_lens': (16, 16, 16)},
        lambda: {
        'hidden_states': _rn((1, 4, 8, 12), seed=0, dtype=torch.float32),
        'timestep': torch.full((1,), 0.5, dtype=torch.float32),
        'encoder_hidden_states': _rn((1, 2, 6, 24), seed=2, dtype=torch.float32)},
    ),
    # diffusers tests: test_models_transformer_mochi.py:MochiTransformerTesterConfig
    'MochiTransformer3DModel': (
        {'patch_size': 2, 'num_attention_heads': 2, 'attention_head_dim': 8, 'num_layers': 2, 'pooled_projection_dim': 16, 'in_channels': 4, 'out_channels': None, 'qk_norm': 'rms_norm', 'text_embed_dim': 16, 'time_embed_dim': 4, 'activation_fn': 'swiglu', 'max_sequence_length': 16},
        lambda: {
        'hidden_states': _rn((2, 4, 2, 16, 16), seed=0, dtype=torch.float32),
        'encoder_hidden_states': _rn((2, 16, 16), seed=1, dtype=torch.float32),
        'timestep': torch.tensor([44, 239], dtype=torch.int64),
        'encoder_attention_mask': torch.full((2, 16), True, dtype=torch.bool)},
    ),
    # diffusers tests: test_models_transformer_prx.py:PRXTransformerTesterConfig
    'PRXTransformer2DModel': (
        {'in_channels': 16, 'patch_size': 2, 'context_in_dim': 1792, 'hidden_size': 1792, 'mlp_ratio': 3.5, 'num_heads': 28, 'depth': 4, 'axes_dim': [32, 32], 'theta': 10000},
        lambda: {
        'hidden_states': _rn((1, 16, 16, 16), seed=0, dtype=torch.float32),
        'encoder_hidden_states': _rn((1, 16, 1792), seed=1, dtype=torch.float32),
        'timestep': torch.full((1,), 1.0, dtype=torch.float32)},
    ),
    # diffusers tests: test_models_transformer_nucleusmoe_image.py:NucleusMoEImageTransformerTesterConfig
    'NucleusMoEImageTransformer2DModel': (
        {'patch_size': 2, 'in_channels': 16, 'out_channels': 4, 'num_layers': 2, 'attention_head_dim': 16, 'num_attention_heads': 4, 'joint_attention_dim': 16, 'axes_dims_rope': (8, 4, 4), 'moe_enabled': False, 'capacity_factors': [8.0, 8.0]},
        lambda: {
        'hidden_states': _rn((1, 16, 16), seed=0, dtype=torch.float32),
        'encoder_hidden_states': _rn((1, 8, 16), seed=1, dtype=torch.float32),
        'encoder_hidden_states_mask': torch.full((1, 8), 1, dtype=torch.int64),
        'timestep': torch.full((1,), 1.0, dtype=torch.float32),
        'img_shapes': [(1, 4, 4)]},
    ),
    # manual (refspecs.py)
    'QwenImage21Transformer2DModel': (
        {'patch_size': 1, 'in_channels': 4, 'out_channels': 4, 'num_layers': 2, 'attention_head_dim': 16, 'num_attention_heads': 2, 'context_in_dim': 8, 'mlp_ratio': 2, 'axes_dims_rope': (4, 6, 6)},
        lambda: {
        'hidden_states': _rn((1, 4, 4), seed=0, dtype=torch.float32),
        'encoder_hidden_states': _rn((1, 4, 8), seed=1, dtype=torch.float32),
        'encoder_hidden_states_mask': torch.full((1, 4), 1, dtype=torch.int64),
        'timestep': torch.full((1,), 1.0, dtype=torch.float32),
        'img_shapes': [[(1, 2, 2)]],
        'img_mask': torch.tensor([[False, False, False, False, True]], dtype=torch.bool)},
    ),
    # diffusers tests: test_models_transformer_wan_vace.py:WanVACETransformer3DTesterConfig
    'WanVACETransformer3DModel': (
        {'patch_size': (1, 2, 2), 'num_attention_heads': 2, 'attention_head_dim': 12, 'in_channels': 16, 'out_channels': 16, 'text_dim': 32, 'freq_dim': 256, 'ffn_dim': 32, 'num_layers': 4, 'cross_attn_norm': True, 'qk_norm': 'rms_norm_across_heads', 'rope_max_seq_len': 32, 'vace_layers': [0, 2], 'vace_in_channels': 48},
        lambda: {
        'hidden_states': _rn((1, 16, 2, 16, 16), seed=0, dtype=torch.float32),
        'encoder_hidden_states': _rn((1, 12, 32), seed=1, dtype=torch.float32),
        'control_hidden_states': _rn((1, 48, 2, 16, 16), seed=2, dtype=torch.float32),
        'timestep': torch.full((1,), 44, dtype=torch.int64)},
    ),
    # diffusers tests: test_models_transformer_skyreels_v2.py:SkyReelsV2TransformerTesterConfig
    'SkyReelsV2Transformer3DModel': (
        {'patch_size': (1, 2, 2), 'num_attention_heads': 2, 'attention_head_dim': 12, 'in_channels': 4, 'out_channels': 4, 'text_dim': 16, 'freq_dim': 256, 'ffn_dim': 32, 'num_layers': 2, 'cross_attn_norm': True, 'qk_norm': 'rms_norm_across_heads', 'rope_max_seq_len': 32},
        lambda: {
        'hidden_states': _rn((1, 4, 2, 16, 16), seed=0, dtype=torch.float32),
        'encoder_hidden_states': _rn((1, 12, 16), seed=1, dtype=torch.float32),
        'timestep': torch.full((1,), 44, dtype=torch.int64)},
    ),
    # diffusers tests: test_models_transformer_helios.py:HeliosTransformer3DTesterConfig
    'HeliosTransformer3DModel': (
        {'patch_size': (1, 2, 2), 'num_attention_heads': 2, 'attention_head_dim': 12, 'in_channels': 4, 'out_channels': 4, 'text_dim': 16, 'freq_dim': 256, 'ffn_dim': 32, 'num_layers': 2, 'cross_attn_norm': True, 'qk_norm': 'rms_norm_across_heads', 'rope_dim': (4, 4, 4), 'has_multi_term_memory_patch': True, 'guidance_cross_attn': True, 'zero_history_timestep': True, 'is_amplify_history': False},
        lambda: {
        'hidden_states': _rn((1, 4, 2, 16, 16), seed=0, dtype=torch.float32),
        'timestep': torch.full((1,), 44, dtype=torch.int64),
        'encoder_hidden_states': _rn((1, 12, 16), seed=2, dtype=torch.float32),
        'indices_hidden_states': torch.full((1, 2), 1.0, dtype=torch.float32),
        'indices_latents_history_short': torch.full((1, 1), 1.0, dtype=torch.float32),
        'indices_latents_history_mid': torch.full((1, 1), 1.0, dtype=torch.float32),
        'indices_latents_history_long': torch.full((1, 4), 1.0, dtype=torch.float32),
        'latents_history_short': _rn((1, 4, 1, 16, 16), seed=7, dtype=torch.float32),
        'latents_history_mid': _rn((1, 4, 1, 16, 16), seed=8, dtype=torch.float32),
        'latents_history_long': _rn((1, 4, 4, 16, 16), seed=9, dtype=torch.float32)},
    ),
    # diffusers tests: test_models_transformer_cosmos.py:CosmosTransformerTesterConfig
    'CosmosTransformer3DModel': (
        {'in_channels': 4, 'out_channels': 4, 'num_attention_heads': 2, 'attention_head_dim': 12, 'num_layers': 2, 'mlp_ratio': 2, 'text_embed_dim': 16, 'adaln_lora_dim': 4, 'max_size': (4, 32, 32), 'patch_size': (1, 2, 2), 'rope_scale': (2.0, 1.0, 1.0), 'concat_padding_mask': False, 'extra_pos_embed_type': 'learnable'},
        lambda: {
        'hidden_states': _rn((1, 4, 1, 16, 16), seed=0, dtype=torch.float32),
        'timestep': torch.full((1,), 44, dtype=torch.int64),
        'encoder_hidden_states': _rn((1, 12, 16), seed=2, dtype=torch.float32),
        'attention_mask': torch.full((1, 12), 1.0, dtype=torch.float32),
        'fps': 30},
    ),
    # diffusers tests: test_models_transformer_ltx.py:LTXTransformerTesterConfig
    'LTXVideoTransformer3DModel': (
        {'in_channels': 4, 'out_channels': 4, 'num_attention_heads': 2, 'attention_head_dim': 8, 'cross_attention_dim': 16, 'num_layers': 1, 'qk_norm': 'rms_norm_across_heads', 'caption_channels': 16},
        lambda: {
        'hidden_states': _rn((2, 512, 4), seed=0, dtype=torch.float32),
        'encoder_hidden_states': _rn((2, 16, 16), seed=1, dtype=torch.float32),
        'timestep': torch.tensor([44, 239], dtype=torch.int64),
        'encoder_attention_mask': torch.full((2, 16), True, dtype=torch.bool),
        'num_frames': 2,
        'height': 16,
        'width': 16},
    ),
    # diffusers tests: test_models_transformer_ltx2.py:LTX2TransformerTesterConfig
    'LTX2VideoTransformer3DModel': (
        {'in_channels': 4, 'out_channels': 4, 'patch_size': 1, 'patch_size_t': 1, 'num_attention_heads': 2, 'attention_head_dim': 8, 'cross_attention_dim': 16, 'audio_in_channels': 4, 'audio_out_channels': 4, 'audio_num_attention_heads': 2, 'audio_attention_head_dim': 4, 'audio_cross_attention_dim': 8, 'num_layers': 2, 'qk_norm': 'rms_norm_across_heads', 'caption_channels': 16, 'rope_double_precision': False},
        lambda: {
        'hidden_states': _rn((2, 512, 4), seed=0, dtype=torch.float32),
        'audio_hidden_states': _rn((2, 9, 4), seed=1, dtype=torch.float32),
        'encoder_hidden_states': _rn((2, 16, 16), seed=2, dtype=torch.float32),
        'audio_encoder_hidden_states': _rn((2, 16, 16), seed=3, dtype=torch.float32),
        'timestep': _rn((2,), seed=4, dtype=torch.float32),
        'encoder_attention_mask': torch.full((2, 16), True, dtype=torch.bool),
        'num_frames': 2,
        'height': 16,
        'width': 16,
        'audio_num_frames': 9,
        'fps': 25.0},
    ),
    # manual (refspecs.py)
    'Kandinsky5Transformer3DModel': (
        {'in_visual_dim': 4, 'in_text_dim': 32, 'in_text_dim2': 16, 'time_dim': 16, 'out_visual_dim': 4, 'patch_size': (1, 2, 2), 'model_dim': 48, 'ff_dim': 64, 'num_text_blocks': 1, 'num_visual_blocks': 2, 'axes_dims': (4, 4, 4)},
        lambda: {
        'hidden_states': _rn((1, 2, 8, 12, 4), seed=0, dtype=torch.float32),
        'encoder_hidden_states': _rn((1, 5, 32), seed=1, dtype=torch.float32),
        'timestep': torch.full((1,), 500.0, dtype=torch.float32),
        'pooled_projections': _rn((1, 16), seed=3, dtype=torch.float32),
        'visual_rope_pos': [torch.tensor([0, 1], dtype=torch.int64), torch.tensor([0, 1, 2, 3], dtype=torch.int64), torch.tensor([0, 1, 2, 3, 4, 5], dtype=torch.int64)],
        'text_rope_pos': torch.tensor([0, 1, 2, 3, 4], dtype=torch.int64)},
    ),
    # manual (refspecs.py)
    'Kandinsky6Transformer3DModel': (
        {'in_visual_dim': 4, 'out_visual_dim': 4, 'in_text_dim': 8, 'in_text_dim2': 8, 'time_dim': 16, 'patch_size': (1, 2, 2), 'model_dim': 48, 'ff_dim': 64, 'num_text_blocks': 1, 'num_visual_blocks': 2, 'axes_dims': (4, 4, 4), 'visual_cond': True, 'in_audio_dim': 4, 'out_audio_dim': 4},
        lambda: {
        'hidden_states': _rn((1, 2, 4, 6, 9), seed=0, dtype=torch.float32),
        'encoder_hidden_states': _rn((1, 6, 8), seed=1, dtype=torch.float32),
        'pooled_projections': _rn((1, 8), seed=2, dtype=torch.float32),
        'timestep': torch.full((1,), 500.0, dtype=torch.float32)},
    ),
    # diffusers tests: test_models_transformer_anyflow_far.py:AnyFlowFARTransformer3DTesterConfig
    'AnyFlowFARTransformer3DModel': (
        {'patch_size': (1, 2, 2), 'compressed_patch_size': (1, 4, 4), 'full_chunk_limit': 3, 'num_attention_heads': 2, 'attention_head_dim': 12, 'in_channels': 4, 'out_channels': 4, 'text_dim': 16, 'freq_dim': 256, 'ffn_dim': 32, 'num_layers': 2, 'cross_attn_norm': True, 'rope_max_seq_len': 32, 'gate_value': 0.25, 'deltatime_type': 'r'},
        lambda: {
        'hidden_states': _rn((1, 4, 4, 16, 16), seed=0, dtype=torch.float32),
        'timestep': torch.full((1, 4), 500.0, dtype=torch.float32),
        'r_timestep': torch.full((1, 4), 250.0, dtype=torch.float32),
        'encoder_hidden_states': _rn((1, 12, 16), seed=3, dtype=torch.float32),
        'chunk_partition': [2, 2]},
    ),
    # diffusers tests: test_models_transformer_cosmos3.py:Cosmos3OmniTransformerTesterConfig
    'Cosmos3OmniTransformer': (
        {'head_dim': 6, 'hidden_act': 'relu2', 'hidden_size': 12, 'intermediate_size': 24, 'latent_channel': 2, 'latent_patch_size': 1, 'num_attention_heads': 2, 'num_hidden_layers': 2, 'num_key_value_heads': 1, 'patch_latent_dim': 2, 'qk_norm_for_text': False, 'rms_norm_eps': 1e-05, 'rope_axes_dim': [1, 1, 1], 'rope_theta': 100000000.0, 'vocab_size': 32},
        lambda: {
        'input_ids': torch.tensor([1, 2], dtype=torch.int64),
        'text_indexes': torch.tensor([0, 1], dtype=torch.int64),
        'position_ids': torch.full((3, 3), 0, dtype=torch.int64),
        'und_len': 2,
        'sequence_length': 3,
        'vision_tokens': [_rn((1, 2, 1, 1, 1), seed=6, dtype=torch.float32)],
        'vision_token_shapes': [(1, 1, 1)],
        'vision_sequence_indexes': torch.full((1,), 2, dtype=torch.int64),
        'vision_mse_loss_indexes': torch.full((1,), 2, dtype=torch.int64),
        'vision_timesteps': torch.full((1,), 1.0, dtype=torch.float32),
        'vision_noisy_frame_indexes': [torch.full((1,), 0, dtype=torch.int64)]},
    ),
    # diffusers tests: test_models_transformer_anyflow.py:AnyFlowTransformer3DTesterConfig
    'AnyFlowTransformer3DModel': (
        {'patch_size': (1, 2, 2), 'num_attention_heads': 2, 'attention_head_dim': 12, 'in_channels': 4, 'out_channels': 4, 'text_dim': 16, 'freq_dim': 256, 'ffn_dim': 32, 'num_layers': 2, 'cross_attn_norm': True, 'rope_max_seq_len': 32, 'gate_value': 0.25, 'deltatime_type': 'r'},
        lambda: {
        'hidden_states': _rn((1, 2, 4, 16, 16), seed=0, dtype=torch.float32),
        'timestep': torch.full((1, 2), 500.0, dtype=torch.float32),
        'r_timestep': torch.full((1, 2), 250.0, dtype=torch.float32),
        'encoder_hidden_states': _rn((1, 12, 16), seed=3, dtype=torch.float32)},
    ),
    # diffusers tests: test_models_transformer_allegro.py:AllegroTransformerTesterConfig
    'AllegroTransformer3DModel': (
        {'num_attention_heads': 2, 'attention_head_dim': 8, 'in_channels': 4, 'out_channels': 4, 'num_layers': 1, 'cross_attention_dim': 16, 'sample_width': 8, 'sample_height': 8, 'sample_frames': 8, 'caption_channels': 8},
        lambda: {
        'hidden_states': _rn((2, 4, 2, 8, 8), seed=0, dtype=torch.float32),
        'encoder_hidden_states': _rn((2, 16, 8), seed=1, dtype=torch.float32),
        'timestep': torch.tensor([44, 239], dtype=torch.int64)},
    ),
    # diffusers tests: test_models_pixart_transformer2d.py:PixArtTransformer2DTesterConfig
    'PixArtTransformer2DModel': (
        {'sample_size': 8, 'num_layers': 1, 'patch_size': 2, 'attention_head_dim': 2, 'num_attention_heads': 2, 'in_channels': 4, 'cross_attention_dim': 8, 'out_channels': 8, 'attention_bias': True, 'activation_fn': 'gelu-approximate', 'num_embeds_ada_norm': 8, 'norm_type': 'ada_norm_single', 'norm_elementwise_affine': False, 'norm_eps': 1e-06, 'use_additional_conditions': False, 'caption_channels': None},
        lambda: {
        'hidden_states': _rn((4, 4, 8, 8), seed=0, dtype=torch.float32),
        'timestep': torch.tensor([44, 239, 933, 760], dtype=torch.int64),
        'encoder_hidden_states': _rn((4, 8, 8), seed=2, dtype=torch.float32),
        'added_cond_kwargs': {'aspect_ratio': None, 'resolution': None}},
    ),
    # diffusers tests: test_models_transformer_hunyuan_dit.py:HunyuanDiTTesterConfig
    'HunyuanDiT2DModel': (
        {'sample_size': 8, 'patch_size': 2, 'in_channels': 4, 'num_layers': 1, 'attention_head_dim': 8, 'num_attention_heads': 2, 'cross_attention_dim': 8, 'cross_attention_dim_t5': 8, 'pooled_projection_dim': 4, 'hidden_size': 16, 'text_len': 4, 'text_len_t5': 4, 'activation_fn': 'gelu-approximate'},
        lambda: {
        'hidden_states': _rn((2, 4, 8, 8), seed=0, dtype=torch.float32),
        'encoder_hidden_states': _rn((2, 4, 8), seed=1, dtype=torch.float32),
        'text_embedding_mask': torch.full((2, 4), 1.0, dtype=torch.float32),
        'encoder_hidden_states_t5': _rn((2, 4, 8), seed=3, dtype=torch.float32),
        'text_embedding_mask_t5': torch.full((2, 4), 1.0, dtype=torch.float32),
        'timestep': torch.tensor([44, 239], dtype=torch.float32),
        'image_meta_size': torch.tensor([[1024, 1024, 16, 16, 0, 0], [1024, 1024, 16, 16, 0, 0]], dtype=torch.float32),
        'style': torch.full((2,), 0, dtype=torch.int64),
        'image_rotary_emb': [torch.full((1, 8), 1.0, dtype=torch.float32), torch.full((1, 8), 0.0, dtype=torch.float32)]},
    ),
    # diffusers tests: test_models_transformer_lumina.py:LuminaNextDiTTesterConfig
    'LuminaNextDiT2DModel': (
        {'sample_size': 16, 'patch_size': 2, 'in_channels': 4, 'hidden_size': 24, 'num_layers': 2, 'num_attention_heads': 3, 'num_kv_heads': 1, 'multiple_of': 16, 'ffn_dim_multiplier': None, 'norm_eps': 1e-05, 'learn_sigma': False, 'qk_norm': True, 'cross_attention_dim': 32, 'scaling_factor': 1.0},
        lambda: {
        'hidden_states': _rn((2, 4, 16, 16), seed=0, dtype=torch.float32),
        'encoder_hidden_states': _rn((2, 16, 32), seed=1, dtype=torch.float32),
        'timestep': _rn((2,), seed=2, dtype=torch.float32),
        'encoder_mask': _rn((2, 16), seed=3, dtype=torch.float32),
        'image_rotary_emb': _rn((384, 384, 4), seed=4, dtype=torch.float32),
        'cross_attention_kwargs': {}},
    ),
    # diffusers tests: test_models_transformer_latte.py:LatteTransformerTesterConfig
    'LatteTransformer3DModel': (
        {'sample_size': 8, 'num_layers': 1, 'patch_size': 2, 'attention_head_dim': 4, 'num_attention_heads': 2, 'caption_channels': 8, 'in_channels': 4, 'cross_attention_dim': 8, 'out_channels': 8, 'attention_bias': True, 'activation_fn': 'gelu-approximate', 'num_embeds_ada_norm': 1000, 'norm_type': 'ada_norm_single', 'norm_elementwise_affine': False, 'norm_eps': 1e-06},
        lambda: {
        'hidden_states': _rn((2, 4, 1, 8, 8), seed=0, dtype=torch.float32),
        'encoder_hidden_states': _rn((2, 8, 8), seed=1, dtype=torch.float32),
        'timestep': torch.tensor([44, 239], dtype=torch.int64),
        'enable_temporal_attentions': True},
    ),
}

#: models whose tiny inputs do not form a two-sample batch by repeating them (HiDream's llama3 states are
#: layer-first, OmniGen's image latents are a per-image list, MiniMax-H3's token indices are packed)
BATCH1 = {"HiDreamImageTransformer2DModel", "MiniMaxH3Transformer3DModel", "OmniGenTransformer2DModel"}
#: Ernie-Image and Z-Image: diffusers' tester configs have one head; two here (head-level checks need two)

#: packed-sequence models (no batch dimension at the attention call): one sample per forward
PACKED = {"Cosmos3OmniTransformer"}


def build(cls_name: str, seed: int = 0) -> torch.nn.Module:
    """The tiny model of `cls_name` (weights from `seed`; zero-initialised parameters made small and random)."""
    import diffusers

    torch.manual_seed(seed)
    model = getattr(diffusers, cls_name)(**SPECS[cls_name][0]).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() and not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


def inputs(cls_name: str) -> dict[str, Any]:
    """Fresh forward inputs of the tiny model of `cls_name` (deterministic)."""
    return SPECS[cls_name][1]()
