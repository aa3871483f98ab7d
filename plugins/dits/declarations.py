"""Declarations of the DiT families headhunter guides without a copied processor (diffusers 0.42.1).

Each entry says which modules are the attention sites (globs, paper order) and, where the family has one, the
token layout of each attention call (needed for the `image` / `pag_mask` scopes and blur). The engine
(headhunter.engine.intercept) intercepts each site's own attention call. Imports neither torch nor diffusers.
SD3, FLUX.1, FLUX.2, Qwen-Image and Wan keep their copied adapters (plugins sd3, flux, flux2, qwenimage, wan).
"""

from __future__ import annotations

from headhunter.contracts.declaration import (
    AttentionCall,
    CallLayout,
    DiTDeclaration,
    SiteDecl,
    double_single,
    image_only,
    length,
    text_from_facts,
    text_image,
)


def _any_call(q_len: int, k_len: int, index: int) -> bool:
    return True


def _queries_are_last_keys(call: AttentionCall) -> CallLayout:
    """Image queries over `[text | image]` keys (PRX, Cosmos3's generation call)."""
    return CallLayout((("image", call.q_len),), key_start=call.k_len - call.q_len)


def _queries_are_first_keys(call: AttentionCall) -> CallLayout:
    """Image queries over `[image | text]` keys (NucleusMoE)."""
    return CallLayout((("image", call.q_len),), key_start=0)


def _flux3_layout(call: AttentionCall) -> CallLayout:
    """FLUX.3: image-only mode blocks, then single-stream blocks over `[text | image | image_cond]`."""
    if call.site.startswith("mode_blocks"):
        return image_only(call)
    text = call.facts["text_len"]
    return text_image(text, call.q_len - text, text_first=True)


def _qwen21_facts(bound: dict) -> dict:
    return {"target_len": length(bound.get("hidden_states"))}


def _qwen21_layout(call: AttentionCall) -> CallLayout | None:
    """QwenImage21: text and condition images form a causal prefix that is never perturbed. SDPA processor: one
    call per prefix segment (stock) and one call of the target queries over `[prefix | target]` keys; flex
    processor: one call over the whole sequence padded to its block size (the target rows are perturbed)."""
    t = call.facts.get("target_len")
    if call.q_len == t and call.k_len > call.q_len:
        return CallLayout((("image", t),), key_start=call.k_len - t)
    seq = length(call.args.get("hidden_states"))
    if call.q_len == call.k_len and t is not None and seq is not None and call.q_len >= seq > t:
        segs = (("other", seq - t), ("image", t), ("other", call.q_len - seq))
        return CallLayout(tuple(s for s in segs if s[1] > 0))
    return None  # a prefix segment: stock


def _text_at_call(text_first: bool, text_arg: str = "encoder_hidden_states"):
    """One joint stream whose processor gets the text as `text_arg` and concatenates it before (text_first)
    or after the image tokens (CogView, CogVideoX, EasyAnimate, GLM-Image, HunyuanVideo-1.5)."""

    def layout(call: AttentionCall) -> CallLayout:
        text = length(call.args.get(text_arg)) or 0
        return text_image(text, call.q_len - text, text_first=text_first)

    return layout


def _image_tokens(bound: dict) -> dict:
    """facts: image tokens of a [B, C, H, W] latent patchified by the config's patch_size (HiDream)."""
    hs, cfg = bound.get("hidden_states"), bound.get("__config__")
    p = int(getattr(cfg, "patch_size", 1) or 1)
    if hs is None or hs.ndim != 4:
        return {}
    return {"image_len": (int(hs.shape[-2]) // p) * (int(hs.shape[-1]) // p)}


def _hidream_layout(call: AttentionCall) -> CallLayout:
    """HiDream: double-stream `[image | text]` (text = the call's encoder_hidden_states); single-stream
    `[image | t5 + llama | llama of this block]`, the image first (its length from the forward)."""
    text = length(call.args.get("encoder_hidden_states"))
    if text is None:
        image = call.facts["image_len"]
        return text_image(call.q_len - image, image, text_first=False)
    return text_image(text, call.q_len - text, text_first=False)


def _auraflow_facts(bound: dict) -> dict:
    return {"text_len": length(bound.get("encoder_hidden_states"))}


def _auraflow_layout(call: AttentionCall) -> CallLayout:
    """AuraFlow: `[registers | text | image]` in both kinds of block; the register count is the call's
    encoder_hidden_states minus the forward's text (joint blocks), the config's 8 learned tokens otherwise."""
    text = call.facts["text_len"]
    ehs = length(call.args.get("encoder_hidden_states"))
    registers = (ehs - text) if ehs is not None else 8
    image = call.q_len - registers - text
    return CallLayout(tuple(s for s in (("other", registers), ("text", text), ("image", image)) if s[1] > 0))


def _zimage_facts(bound: dict) -> dict:
    """Z-Image (basic mode): image tokens of the first latent [C, F, H, W] (the batch shares one size), and the
    length the transformer pads them to (a multiple of 32)."""
    x = bound.get("x")
    first = x[0] if isinstance(x, (list, tuple)) and x else None
    if first is None or not hasattr(first, "shape") or first.ndim != 4:
        return {}
    p, fp = int(bound.get("patch_size", 2) or 2), int(bound.get("f_patch_size", 1) or 1)
    _, f, h, w = (int(d) for d in first.shape)
    n = (f // fp) * (h // p) * (w // p)
    return {"image_len": n, "image_padded": n + (-n) % 32}


def _zimage_layout(call: AttentionCall) -> CallLayout:
    """Z-Image: noise refiner over the padded image tokens; main layers over `[image | pad | caption | pad]`
    per sample, padded to the batch (the image part has one length: first). Padding rows are `other`."""
    n, padded = call.facts["image_len"], call.facts["image_padded"]
    if call.site.startswith("noise_refiner"):
        return CallLayout(tuple(s for s in (("image", n), ("other", call.q_len - n)) if s[1] > 0))
    return CallLayout(tuple(s for s in (("image", n), ("other", padded - n), ("text", call.q_len - padded)) if s[1] > 0))


def _krea2_layout(call: AttentionCall) -> CallLayout:
    """Krea 2: `[text | image]`, concatenated in the transformer's forward (the text length from it)."""
    text = call.facts["text_len"]
    return text_image(text, call.q_len - text, text_first=True)


def _d(name: str, cls: str, sites: list[SiteDecl], description: str, **kw) -> DiTDeclaration:
    return DiTDeclaration(name=name, classes=(cls,), sites=tuple(sites), description=description, **kw)


def _mmdit(name: str, cls: str, description: str, text_first: bool = True) -> DiTDeclaration:
    """Double-stream `transformer_blocks.*.attn` then single-stream `single_transformer_blocks.*.attn`."""
    return _d(name, cls, [SiteDecl("transformer_blocks.*.attn"), SiteDecl("single_transformer_blocks.*.attn", "single")],
              description, facts=text_from_facts(), layout=double_single(text_first),
              layout_lines=(f"token order: {'[text | image]' if text_first else '[image | text]'} (double- and "
                            "single-stream sites)",))


def _video_self(name: str, cls: str, pattern: str, description: str, grid: bool = False, **site_kw) -> DiTDeclaration:
    """Self-attention over image / video tokens only (the text comes in by cross-attention, left stock).
    `grid=True`: the latent video [B, C, F, H, W] is patchified by the config's `patch_size` (p_t, p_h, p_w) into
    frame-major tokens (Wan-style), so the layout also gives frames and the grid (finite-sigma blur)."""
    extra = {"facts": _video_grid, "layout": _video_layout} if grid else {"layout": image_only}
    return _d(name, cls, [SiteDecl(pattern, "image", **site_kw)], description,
              layout_lines=("sites: self-attention over image/video tokens only; cross-attention stays stock",
                            *(("grid: latent frames x rows x cols / patch_size",) if grid else ())), **extra)


def _video_grid(bound: dict) -> dict:
    """facts: `frames` and `grid` of a [B, C, F, H, W] latent patchified by the config's (p_t, p_h, p_w)."""
    hs, cfg = bound.get("hidden_states"), bound.get("__config__")
    patch = tuple(getattr(cfg, "patch_size", None) or ())
    if hs is None or hs.ndim != 5 or len(patch) != 3:
        return {}
    pt, ph, pw = (int(p) for p in patch)
    return {"frames": int(hs.shape[2]) // pt, "grid": (int(hs.shape[3]) // ph, int(hs.shape[4]) // pw)}


def _video_layout(call: AttentionCall) -> CallLayout:
    """Every query row a video token; frames and grid when they account for every row (else no grid)."""
    frames, grid = call.facts.get("frames"), call.facts.get("grid")
    if frames is None or grid is None or frames * grid[0] * grid[1] != call.q_len:
        return image_only(call)
    return CallLayout((("image", call.q_len),), grid=grid, frames=frames)


DECLARATIONS: tuple[DiTDeclaration, ...] = (
    # MMDiT, [text | image], double + single stream
    _mmdit("chroma", "ChromaTransformer2DModel", "Chroma (FLUX-style double/single stream, FluxAttnProcessor)"),
    _d("flux3", "Flux3Transformer2DModel",
       [SiteDecl("mode_blocks.image.*.attn", "image"), SiteDecl("single_transformer_blocks.*.attn", "single")],
       "FLUX.3 (image mode blocks, then single-stream blocks)", facts=text_from_facts(), layout=_flux3_layout,
       layout_lines=("image mode blocks: image tokens only; single-stream: [text | image | image_cond]",)),
    _mmdit("bria", "BriaTransformer2DModel", "Bria (FLUX-style)"),
    _mmdit("bria_fibo", "BriaFiboTransformer2DModel", "Bria FIBO (FLUX-style)"),
    _mmdit("longcat_image", "LongCatImageTransformer2DModel", "LongCat-Image (FLUX-style)"),
    _mmdit("ovis_image", "OvisImageTransformer2DModel", "Ovis-Image (FLUX-style)"),
    # MMDiT, [image | text]
    _mmdit("hunyuanvideo", "HunyuanVideoTransformer3DModel", "HunyuanVideo (double/single stream)", text_first=False),
    _mmdit("hunyuanimage", "HunyuanImageTransformer2DModel", "HunyuanImage-2.1 (double/single stream)",
           text_first=False),
    _d("hunyuanvideo15", "HunyuanVideo15Transformer3DModel", [SiteDecl("transformer_blocks.*.attn")],
       "HunyuanVideo-1.5 ([video | text | byT5 | image_embeds] joint attention)", layout=_text_at_call(False),
       layout_lines=("token order: [video | condition] (condition: valid image_embeds, byT5 and MLLM text "
                     "tokens per sample, then the invalid ones; all counted as text rows)",)),
    _d("hidream", "HiDreamImageTransformer2DModel",
       [SiteDecl("double_stream_blocks.*.block.attn1"), SiteDecl("single_stream_blocks.*.block.attn1", "single")],
       "HiDream-I1 (double/single stream, per-block llama text)", facts=_image_tokens, layout=_hidream_layout,
       layout_lines=("token order: [image | text] (single-stream text: t5 + llama + this block's llama)",)),
    _d("auraflow", "AuraFlowTransformer2DModel",
       [SiteDecl("joint_transformer_blocks.*.attn"), SiteDecl("single_transformer_blocks.*.attn", "single")],
       "AuraFlow ([registers + text | image])", facts=_auraflow_facts, layout=_auraflow_layout,
       layout_lines=("token order: [8 registers | text | image]; registers are never perturbed",)),
    _d("motif_video", "MotifVideoTransformer3DModel",
       [SiteDecl("transformer_blocks.*.attn"), SiteDecl("single_transformer_blocks.*.attn", "single")],
       "Motif-Video (double/single stream)", facts=text_from_facts(), layout=double_single(False)),
    # one sequence built in the transformer's forward
    _d("lumina2", "Lumina2Transformer2DModel", [SiteDecl("noise_refiner.*.attn", "image"), SiteDecl("layers.*.attn", "single")],
       "Lumina-Image 2.0 (noise refiner, then unified [text | image] layers)"),
    _d("zimage", "ZImageTransformer2DModel",
       [SiteDecl("noise_refiner.*.attention", "image"), SiteDecl("layers.*.attention", "single")],
       "Z-Image (noise refiner, then unified layers)", facts=_zimage_facts, layout=_zimage_layout,
       layout_lines=("token order: [image | pad | caption | pad] (basic mode); padding rows are never perturbed",)),
    _d("krea2", "Krea2Transformer2DModel", [SiteDecl("transformer_blocks.*.attn", "single")], "Krea 2 (GQA)",
       facts=text_from_facts(), layout=_krea2_layout),
    _d("ideogram4", "Ideogram4Transformer2DModel", [SiteDecl("layers.*.attention", "single")], "Ideogram 4"),
    _d("ernie_image", "ErnieImageTransformer2DModel", [SiteDecl("layers.*.self_attention", "single")], "ERNIE-Image"),
    _d("glm_image", "GlmImageTransformer2DModel", [SiteDecl("transformer_blocks.*.attn1")], "GLM-Image",
       layout=_text_at_call(True)),
    _d("cogview4", "CogView4Transformer2DModel", [SiteDecl("transformer_blocks.*.attn1")], "CogView4 ([text | image])",
       layout=_text_at_call(True)),
    _d("cogview3plus", "CogView3PlusTransformer2DModel", [SiteDecl("transformer_blocks.*.attn1")], "CogView3-Plus",
       layout=_text_at_call(True)),
    _d("cogvideox", "CogVideoXTransformer3DModel", [SiteDecl("transformer_blocks.*.attn1")], "CogVideoX ([text | video])",
       layout=_text_at_call(True)),
    _d("easyanimate", "EasyAnimateTransformer3DModel", [SiteDecl("transformer_blocks.*.attn1")], "EasyAnimate",
       layout=_text_at_call(True)),
    _d("minimax_h3", "MiniMaxH3Transformer3DModel", [SiteDecl("transformer_blocks.*.attn")],
       "MiniMax-H3 ([text | video | audio], modular pipelines only)"),
    _d("omnigen", "OmniGenTransformer2DModel", [SiteDecl("layers.*.self_attn", "single")], "OmniGen"),
    _d("bria_fibo2", "BriaFibo2Transformer2DModel",
       [SiteDecl("noise_refiner.*.attention", "image"), SiteDecl("layers.*.attention", "single")], "Bria FIBO 2"),
    _d("mochi", "MochiTransformer3DModel", [SiteDecl("transformer_blocks.*.attn1", batch="per_call")],
       "Mochi 1 (one attention call per sample over its valid text)"),
    # image queries over [text | image] or [image | text] keys
    _d("prx", "PRXTransformer2DModel", [SiteDecl("blocks.*.attention", "image", calls=_any_call)],
       "PRX (image queries over [text | image] keys)", layout=_queries_are_last_keys),
    _d("nucleus_moe", "NucleusMoEImageTransformer2DModel", [SiteDecl("transformer_blocks.*.attn", "image", calls=_any_call)],
       "NucleusMoE-Image (image queries over [image | text] keys)", layout=_queries_are_first_keys),
    _d("qwenimage21", "QwenImage21Transformer2DModel", [SiteDecl("transformer_blocks.*.attn", "image", calls=_any_call)],
       "Qwen-Image 2.1 (causal text/condition prefix, never perturbed; the target image rows are)",
       facts=_qwen21_facts, layout=_qwen21_layout, layout_always=True),
    _d("cosmos3", "Cosmos3OmniTransformer", [SiteDecl("layers.*.self_attn", "image", calls=lambda q, k, i: q < k)],
       "Cosmos 3 Omni (packed sequences: the generation-query call only; one sample per forward)",
       layout=_queries_are_last_keys),
    # self-attention over image / video tokens only
    _video_self("wan_vace", "WanVACETransformer3DModel", "blocks.*.attn1", "Wan-VACE", grid=True),
    _video_self("skyreels_v2", "SkyReelsV2Transformer3DModel", "blocks.*.attn1", "SkyReels-V2", grid=True),
    _video_self("helios", "HeliosTransformer3DModel", "blocks.*.attn1", "Helios ([history | current] frames)"),
    _video_self("cosmos", "CosmosTransformer3DModel", "transformer_blocks.*.attn1", "Cosmos (+ Anima)"),
    _video_self("ltx", "LTXVideoTransformer3DModel", "transformer_blocks.*.attn1", "LTX-Video"),
    _video_self("ltx2", "LTX2VideoTransformer3DModel", "transformer_blocks.*.attn1", "LTX-2 (video self-attention)"),
    _video_self("kandinsky5", "Kandinsky5Transformer3DModel", "visual_transformer_blocks.*.self_attention", "Kandinsky 5"),
    _video_self("kandinsky6", "Kandinsky6Transformer3DModel",
                "visual_transformer_blocks.*.video_dec_block.self_attention", "Kandinsky 6"),
    _video_self("anyflow_far", "AnyFlowFARTransformer3DModel", "blocks.*.attn1", "AnyFlow FAR (causal chunks, flex BlockMask)"),
    _video_self("anyflow", "AnyFlowTransformer3DModel", "blocks.*.attn1", "AnyFlow"),
    _video_self("allegro", "AllegroTransformer3DModel", "transformer_blocks.*.attn1", "Allegro"),
    _video_self("pixart", "PixArtTransformer2DModel", "transformer_blocks.*.attn1", "PixArt-α / Σ"),
    _video_self("hunyuandit", "HunyuanDiT2DModel", "blocks.*.attn1", "Hunyuan-DiT"),
    _video_self("lumina_next", "LuminaNextDiT2DModel", "layers.*.attn1", "Lumina-Next"),
    _d("latte", "LatteTransformer3DModel",
       [SiteDecl("transformer_blocks.*.attn1", "image", batch="repeat"),
        SiteDecl("temporal_transformer_blocks.*.attn1", "image", batch="repeat")],
       "Latte (spatial (b f) and temporal (b h w) folding)", layout=image_only),
)

BY_NAME = {d.name: d for d in DECLARATIONS}
