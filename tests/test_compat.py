"""Guidance on the real diffusers stack (issue #12; docs/compatibility.md is this file as a table).

Every row: the guided output of a pipeline using the feature equals the same guidance on a plain pipeline
(within the tolerance the feature allows, stated per row), and N consecutive calls are all guided. Tiny
random-weight SD3 and FLUX pipelines built in memory, CPU only. Offload on a CPU-only machine: diffusers'
own tests pass the device explicitly (`enable_model_cpu_offload(device=torch_device)`), which is what
these do with device="cpu"; the offload hooks then run exactly as on a GPU, moving to the same device.
"""

from __future__ import annotations

import shlex
import warnings

import pytest
import torch
from click.testing import CliRunner

import headhunter
from headhunter import HeadSet, ModelError, get_registry
from headhunter.cli import make_cli

from tiny_pipes import FLUX_CALL, SD3_CALL, build_flux, build_sd3

STEPS = 4
W = 3.0
N_CALLS = 3
PROMPT = "a photo of a red cat"

#: Model -> (builder, call settings with CFG on, head-set notation).
MODELS = {
    "sd3": (build_sd3, {**SD3_CALL, "guidance_scale": 3.0}, "L0H1, L1H2@0.5"),
    "flux": (lambda: build_flux(num_heads=2), {**FLUX_CALL, "true_cfg_scale": 2.0, "negative_prompt": "a dog"},
             "L0H1, L1H0@0.7"),
}


def headset(pipe, notation: str) -> HeadSet:
    adapter = get_registry().adapter_for(pipe)
    return HeadSet.from_notation(notation, sites=adapter.sites(pipe), architecture=adapter.architecture, name="hs")


def run(pipe, settings, seed: int = 0, **over) -> torch.Tensor:
    kwargs = {"num_inference_steps": STEPS, "output_type": "latent", **settings, **over}
    with torch.no_grad():
        out = pipe(PROMPT, generator=torch.Generator().manual_seed(seed), **kwargs).images
    return out.float()


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# ----- the four regressions of issue #12 -----------------------------------------------------------------------
@pytest.mark.slow
def test_model_cpu_offload_keeps_every_call_guided():
    """(1) diffusers re-installs its offload hooks after each call; an instance `forward` wrapper was dropped."""
    build, settings, notation = MODELS["sd3"]
    plain = build()
    hs = headset(plain, notation)
    stock = run(plain, settings)
    with headhunter.apply(plain, hs, scale=W):
        reference = run(plain, settings)
    assert maxdiff(reference, stock) > 1e-3
    pipe = build()
    pipe.enable_model_cpu_offload(device="cpu")
    with headhunter.apply(pipe, hs, scale=W) as handle:
        outs = [run(pipe, settings) for _ in range(N_CALLS)]
    assert all(torch.equal(out, reference) for out in outs)
    assert handle.calls["guided_steps"] == N_CALLS * STEPS
    assert torch.equal(run(pipe, settings), stock)  # removed: stock again, offload still on
    assert hasattr(pipe.transformer, "_hf_hook")


@pytest.mark.slow
def test_flux_blur_grid_follows_every_call_size():
    """(2) the FLUX grid was cached under the img_ids tensor's address: same-token-count sizes got a stale,
    transposed grid. Every call must equal a fresh pipeline at that size."""
    build, settings, notation = MODELS["flux"]
    sizes = [(32, 64), (64, 32), (48, 32), (32, 48), (32, 64)]
    pipe = build()
    hs = headset(pipe, notation)
    with headhunter.apply(pipe, hs, scale=W, perturbation="blur", perturbation_params={"sigma": 1.0}):
        outs = [run(pipe, settings, height=h, width=w) for h, w in sizes]
    for (h, w), out in zip(sizes, outs):
        fresh = build()
        with headhunter.apply(fresh, hs, scale=W, perturbation="blur", perturbation_params={"sigma": 1.0}):
            assert torch.equal(out, run(fresh, settings, height=h, width=w)), (h, w)


def test_flux_grid_is_read_from_the_ids_values_not_their_buffer():
    """A refilled ids buffer (same tensor, new values) gives the new grid."""
    from headhunter.plugins.flux.adapter import _target_from_ids

    ids = torch.zeros(8, 3)
    ids[:, 1], ids[:, 2] = torch.arange(2).repeat_interleave(4), torch.arange(4).repeat(2)
    assert _target_from_ids(ids, 8) == (8, (2, 4))
    ids[:, 1], ids[:, 2] = torch.arange(4).repeat_interleave(2), torch.arange(2).repeat(4)
    assert _target_from_ids(ids, 8) == (8, (4, 2))
    # FLUX Kontext: the reference image's tokens (index 1) follow the target's; the grid is the target's
    kontext = torch.cat([ids, torch.tensor([[1.0, 0, 0], [1.0, 0, 1], [1.0, 1, 0]])]).bfloat16()
    assert _target_from_ids(kontext, 11) == (8, (4, 2))


@pytest.mark.slow
def test_cli_generate_flux_with_several_prompts_and_cfg(tmp_path):
    """(3) the CLI passed one negative-prompt string, which FluxPipeline does not repeat over prompts."""
    build, _, notation = MODELS["flux"]
    pipe = build()
    pipe.save_pretrained(tmp_path / "tiny-flux")
    headset(pipe, notation).save(tmp_path / "flux.safetensors")
    out = tmp_path / "out"
    result = CliRunner().invoke(make_cli(), [
        "generate", str(tmp_path / "tiny-flux"), "--headset", str(tmp_path / "flux.safetensors"), "--prompt", "a",
        "--prompt", "b", "--num-images", "2", "--cfg", "2", "--steps", "2", "--height", "32", "--width", "32",
        "--out", str(out)])
    assert result.exit_code == 0, result.output
    import json

    record = json.loads((out / "generate.json").read_text())
    assert len(record["files"]["guided"]) == 4
    assert "--negative-prompt ''" in record["command"] or "--negative-prompt \"\"" in record["command"]
    assert shlex.split(record["command"])  # still one shell-quoted command


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(MODELS))
def test_compiled_wrapper_is_looked_through(model):
    """(4) `pipe.transformer = torch.compile(pipe.transformer)`: the adapter sees `_orig_mod`."""
    build, settings, notation = MODELS[model]
    pipe = build()
    inner = pipe.transformer
    pipe.transformer = torch.compile(inner, backend="eager")
    adapter = get_registry().adapter_for(pipe)
    assert adapter.architecture == model and adapter.transformer(pipe) is inner


def test_no_adapter_message_names_the_transformer():
    """The error names what was not recognised: the transformer class, through the compile wrapper."""

    class Other(torch.nn.Module):
        def forward(self, x):
            return x

    class Pipe:
        transformer = torch.compile(Other(), backend="eager")

    with pytest.raises(ModelError, match=r"its transformer is a Other, seen through the OptimizedModule wrapper"):
        get_registry().adapter_for(Pipe())


# ----- per-call decisions ------------------------------------------------------------------------------------------
def test_transformer_called_outside_a_pipeline_is_refused():
    build, settings, notation = MODELS["sd3"]
    pipe = build()
    with headhunter.apply(pipe, headset(pipe, notation), scale=W):
        x = torch.zeros(1, 4, 16, 16)
        with pytest.raises(ModelError, match="outside a pipeline call"):
            pipe.transformer(hidden_states=x, timestep=torch.ones(1), encoder_hidden_states=torch.zeros(1, 3, 32),
                             pooled_projections=torch.zeros(1, 32))


def test_window_guiding_no_step_warns_once():
    build, settings, notation = MODELS["sd3"]
    pipe = build()
    with headhunter.apply(pipe, headset(pipe, notation), scale=W, start=0.5, stop=0.5):
        with pytest.warns(UserWarning, match="guides none of the steps"):
            run(pipe, settings)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            run(pipe, settings)


# ----- the matrix: {feature} x {SD3, FLUX} ----------------------------------------------------------------------
def _report(feature: str, model: str, diff: float, tol: float) -> None:
    """With HEADHUNTER_COMPAT_REPORT=<file>, append the measured difference (docs/compatibility.md figures)."""
    import json
    import os

    path = os.environ.get("HEADHUNTER_COMPAT_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"feature": feature, "model": model, "max_abs_diff": diff, "tolerance": tol}) + "\n")


def _lora(pipe, seed: int = 1) -> None:
    from peft import LoraConfig

    torch.manual_seed(seed)
    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                            target_modules=["to_q", "to_k", "to_v", "to_out.0"]))


def _merge_lora(pipe) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in pipe.transformer.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()


def _img2img(model: str):
    from diffusers import FluxImg2ImgPipeline, StableDiffusion3Img2ImgPipeline

    return StableDiffusion3Img2ImgPipeline if model == "sd3" else FluxImg2ImgPipeline


IMAGE = torch.linspace(0, 1, 3 * 32 * 32).reshape(1, 3, 32, 32)


# Each feature: setup(pipe, model) -> the pipeline to call (None: the same), and the tolerance it allows over
# the plain pipeline's guided output (same call). 0.0 means bit-identical.
def _model_offload(pipe, model):
    pipe.enable_model_cpu_offload(device="cpu")


def _sequential_offload(pipe, model):
    # what pipe.enable_sequential_cpu_offload does per component; on a CPU-only machine accelerate 1.15 fails
    # on the tiny CLIP text encoders (stock, without headhunter), so only the transformer is offloaded here
    from accelerate import cpu_offload

    cpu_offload(pipe.transformer, execution_device=torch.device("cpu"))
    assert {p.device.type for p in pipe.transformer.parameters()} == {"meta"}


def _group_offload(pipe, model):
    pipe.transformer.enable_group_offload(onload_device=torch.device("cpu"), offload_device=torch.device("cpu"),
                                          offload_type="block_level", num_blocks_per_group=1)


def _compile_in_place(pipe, model, backend: str = "eager"):
    # backend="eager": dynamo's tracing, guards, graph breaks and recompiles exactly as with inductor, without
    # generating C++ (test_inductor_compile_guides_like_a_plain_pipeline runs the default backend)
    pipe.transformer.compile(backend=backend)


def _compile_wrapper(pipe, model, backend: str = "eager"):
    pipe.transformer = torch.compile(pipe.transformer, backend=backend)


def _compile_regional(pipe, model, backend: str = "eager"):
    # regional compile, as diffusers' compile_repeated_blocks does (SD3's class sets no _repeated_blocks, so
    # every block is compiled in place by hand; FLUX's does)
    blocks = [b for name in ("transformer_blocks", "single_transformer_blocks")
              for b in getattr(pipe.transformer, name, [])]
    for block in blocks:
        block.compile(backend=backend)


FEATURES = {
    "model offload": (_model_offload, 0.0),
    "sequential offload": (_sequential_offload, 0.0),
    "group offload": (_group_offload, 0.0),
    "torch.compile in place": (_compile_in_place, 1e-5),
    "torch.compile wrapper": (_compile_wrapper, 1e-5),
    "torch.compile regional": (_compile_regional, 1e-5),
}


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("feature", [pytest.param(f, marks=pytest.mark.slow) if "compile" in f else f
                                     for f in sorted(FEATURES)])
def test_feature_guides_like_a_plain_pipeline(feature, model):
    build, settings, notation = MODELS[model]
    setup, tol = FEATURES[feature]
    plain = build()
    hs = headset(plain, notation)
    stock = run(plain, settings)
    with headhunter.apply(plain, hs, scale=W):
        reference = run(plain, settings)
    pipe = build()
    setup(pipe, model)
    with headhunter.apply(pipe, hs, scale=W) as handle:
        outs = [run(pipe, settings) for _ in range(N_CALLS)]
    diff = max(maxdiff(out, reference) for out in outs)
    _report(feature, model, diff, tol)
    assert diff <= tol
    assert all(maxdiff(out, stock) > 100 * max(tol, 1e-6) for out in outs)  # every call guided
    assert handle.calls["guided_steps"] == N_CALLS * STEPS
    assert maxdiff(run(pipe, settings), stock) <= tol  # removed: stock again, the feature still on


# ----- PEFT LoRA and bf16: the reference is the plain pipeline with the same weights ------------------------------
@pytest.mark.parametrize("model", sorted(MODELS))
def test_peft_lora_guides_like_merged_weights(model):
    """LoRA layers (PEFT) inside the attention projections: equal to a plain pipeline whose weights have the
    LoRA merged in (plain nn.Linear), to float32 rounding of the merge."""
    build, settings, notation = MODELS[model]
    tol = 1e-5
    plain = build()
    _lora(plain)
    _merge_lora(plain)
    hs = headset(plain, notation)
    with headhunter.apply(plain, hs, scale=W):
        reference = run(plain, settings)
    pipe = build()
    _lora(pipe)
    stock = run(pipe, settings)
    with headhunter.apply(pipe, hs, scale=W) as handle:
        outs = [run(pipe, settings) for _ in range(N_CALLS)]
    diff = max(maxdiff(out, reference) for out in outs)
    _report("PEFT LoRA", model, diff, tol)
    assert diff <= tol and all(maxdiff(out, stock) > 1e-3 for out in outs)
    assert handle.calls["guided_steps"] == N_CALLS * STEPS
    assert torch.equal(run(pipe, settings), stock)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_bf16_guides_like_float32_within_bf16_rounding(model):
    """bf16 weights and latents: within a few times bf16's own error on the unguided output (measured in
    the same run), of the float32 guided output; the guidance term itself is far above that."""
    build, settings, notation = MODELS[model]
    plain = build()
    hs = headset(plain, notation)
    stock32 = run(plain, settings)
    with headhunter.apply(plain, hs, scale=W):
        reference = run(plain, settings)
    pipe = build().to(torch.bfloat16)
    stock16 = run(pipe, settings)
    own_error = maxdiff(stock16, stock32)
    tol = 4 * own_error
    with headhunter.apply(pipe, hs, scale=W) as handle:
        outs = [run(pipe, settings) for _ in range(N_CALLS)]
    diff = max(maxdiff(out, reference) for out in outs)
    _report("bf16", model, diff, tol)
    assert diff <= tol
    assert all(maxdiff(out, stock16) > 2 * own_error for out in outs)  # guided, beyond bf16 noise
    assert handle.calls["guided_steps"] == N_CALLS * STEPS
    assert torch.equal(run(pipe, settings), stock16)


# ----- changing image sizes and batch sizes between calls --------------------------------------------------------
@pytest.mark.parametrize("model", sorted(MODELS))
def test_changing_sizes_and_batches_between_calls(model):
    """Each call equals a fresh pipeline guided the same way at that size and batch (bit-identical)."""
    build, settings, notation = MODELS[model]
    calls = [dict(height=32, width=64), dict(height=64, width=32, num_images_per_prompt=2),
             dict(height=48, width=32), dict(height=32, width=48), dict(height=32, width=32, num_images_per_prompt=3)]
    pipe = build()
    hs = headset(pipe, notation)
    with headhunter.apply(pipe, hs, scale=W, perturbation="blur", perturbation_params={"sigma": 1.0}):
        outs = [run(pipe, settings, **call) for call in calls]
    diff = 0.0
    for call, out in zip(calls, outs):
        fresh = build()
        with headhunter.apply(fresh, hs, scale=W, perturbation="blur", perturbation_params={"sigma": 1.0}):
            diff = max(diff, maxdiff(out, run(fresh, settings, **call)))
    _report("changing sizes", model, diff, 0.0)
    assert diff == 0.0


# ----- diffusers caches ---------------------------------------------------------------------------------------------
def _first_block_cache(pipe, threshold: float) -> None:
    from diffusers import FirstBlockCacheConfig
    from diffusers.hooks import apply_first_block_cache

    apply_first_block_cache(pipe.transformer, FirstBlockCacheConfig(threshold=threshold))


def _pyramid_attention_broadcast(pipe, skip: int) -> None:
    from diffusers import PyramidAttentionBroadcastConfig
    from diffusers.hooks import apply_pyramid_attention_broadcast

    apply_pyramid_attention_broadcast(pipe.transformer, PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=skip, spatial_attention_timestep_skip_range=(-1, 10_000),
        current_timestep_callback=lambda: 500))


CACHES = {"FirstBlockCache": _first_block_cache, "PyramidAttentionBroadcast": _pyramid_attention_broadcast}
#: A setting that never reuses the cache (so the output must be exact), and one that reuses it often.
CACHE_SETTINGS = {"FirstBlockCache": (0.0, 1e9), "PyramidAttentionBroadcast": (1, 2)}


def _cache_settings(cache: str, model: str) -> dict:
    settings = dict(MODELS[model][1])
    if cache == "PyramidAttentionBroadcast" and model == "flux":
        settings.pop("true_cfg_scale"), settings.pop("negative_prompt")  # PAB + true CFG: see the refusal test
    return settings


def test_first_block_cache_on_sd3_is_diffusers_own_limit():
    """diffusers 0.42.1's SD3 pipeline opens no cache context (and SD3Transformer2DModel has no
    enable_cache): FirstBlockCache fails stock with the same error, guided or not."""
    build, settings, notation = MODELS["sd3"]
    pipe = build()
    _first_block_cache(pipe, 0.1)
    with pytest.raises(ValueError, match="No cache context is set"):
        run(pipe, settings)
    with headhunter.apply(pipe, headset(pipe, notation), scale=W):
        with pytest.raises(ValueError, match="No cache context is set"):
            run(pipe, settings)
        assert not pipe.transformer.transformer_blocks[0].attn.processor.state.active  # nothing left set


@pytest.mark.parametrize(("cache", "model"), [("FirstBlockCache", "flux"), ("PyramidAttentionBroadcast", "flux"),
                                              ("PyramidAttentionBroadcast", "sd3")])
@pytest.mark.parametrize("stop", [1.0, 0.5])
def test_cache_guides_like_a_plain_pipeline(cache, model, stop):
    """Never reusing: bit-identical to the plain pipeline. Reusing often: every call equal (no state leaks
    between calls), guided, and a window ending before the last step (batch shrinks) still runs: the
    caches are reset at that step."""
    build, _, notation = MODELS[model]
    settings = _cache_settings(cache, model)
    exact, reusing = CACHE_SETTINGS[cache]
    plain = build()
    hs = headset(plain, notation)
    with headhunter.apply(plain, hs, scale=W, stop=stop):
        reference = run(plain, settings)
    pipe = build()
    CACHES[cache](pipe, exact)
    with headhunter.apply(pipe, hs, scale=W, stop=stop) as handle:
        outs = [run(pipe, settings) for _ in range(N_CALLS)]
    diff = max(maxdiff(out, reference) for out in outs)
    _report(f"{cache} (window stop={stop})", model, diff, 0.0)
    assert diff == 0.0
    assert handle.calls["guided_steps"] == N_CALLS * int(STEPS * stop)

    pipe = build()
    CACHES[cache](pipe, reusing)
    stock = run(pipe, settings)
    with headhunter.apply(pipe, hs, scale=W, stop=stop):
        outs = [run(pipe, settings) for _ in range(N_CALLS)]
    assert all(torch.equal(out, outs[0]) for out in outs)
    assert maxdiff(outs[0], stock) > 1e-3
    assert maxdiff(outs[0], reference) > 0  # the cache did reuse something
    assert torch.equal(run(pipe, settings), stock)


def test_pyramid_attention_broadcast_with_flux_true_cfg_is_refused():
    """PAB keeps one cache per attention module for every pass; FLUX's guided conditional pass and its
    negative pass have different batch sizes, so the negative pass is refused before it runs."""
    build, settings, notation = MODELS["flux"]
    pipe = build()
    _pyramid_attention_broadcast(pipe, 2)
    with headhunter.apply(pipe, headset(pipe, notation), scale=W):
        with pytest.raises(ModelError, match=r"PyramidAttentionBroadcastHook.*true_cfg_scale=1"):
            run(pipe, settings)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_sequential_branches_with_a_cache_are_refused(model):
    """batched=False runs extra forwards of other batch sizes through the same cache: refused before any."""
    build, settings, notation = MODELS[model]
    pipe = build()
    _pyramid_attention_broadcast(pipe, 2)
    with headhunter.apply(pipe, headset(pipe, notation), scale=W, batched=False):
        with pytest.raises(ModelError, match="batched=False"):
            run(pipe, _cache_settings("PyramidAttentionBroadcast", model))


# ----- from_pipe: img2img sharing the guided transformer -----------------------------------------------------------
@pytest.mark.parametrize("model", sorted(MODELS))
def test_from_pipe_img2img_is_guided_from_its_own_call(model):
    """apply() on the text-to-image pipeline; an img2img sibling made with from_pipe shares the transformer.
    Its calls are guided from their own state (CFG flag, scheduler position), even right after a
    text-to-image call with CFG off, and equal a fresh img2img pipeline guided directly."""
    build, settings, notation = MODELS[model]
    img2img_cls = _img2img(model)
    call = dict(settings, image=IMAGE, strength=0.75)
    no_cfg = {"guidance_scale": 1.0} if model == "sd3" else {"true_cfg_scale": 1.0}
    fresh = img2img_cls.from_pipe(build())
    hs = headset(fresh, notation)
    stock = run(fresh, call)
    with headhunter.apply(fresh, hs, scale=W):
        reference = run(fresh, call)
    pipe = build()
    sibling = img2img_cls.from_pipe(pipe)
    assert sibling.transformer is pipe.transformer
    with headhunter.apply(pipe, hs, scale=W) as handle:
        outs = []
        for _ in range(N_CALLS):
            run(pipe, settings, **no_cfg)  # leaves the text-to-image pipeline's CFG flag off
            outs.append(run(sibling, call))
    diff = max(maxdiff(out, reference) for out in outs)
    _report("from_pipe img2img", model, diff, 0.0)
    assert diff == 0.0 and maxdiff(outs[0], stock) > 1e-3
    # strength 0.75 of 4 steps runs 3; FLUX img2img's negative pass (no cache context) is not perturbed
    assert handle.calls["guided_steps"] == N_CALLS * (STEPS + 3)
    assert torch.equal(run(sibling, call), stock)


def test_flux_img2img_negative_pass_is_left_stock():
    """FluxImg2ImgPipeline runs its true-CFG negative pass without a cache context: it is recognised as the
    second call of the step (before the scheduler steps) and runs stock, with B rows; the conditional
    pass carries the perturbed copies (2B rows)."""
    build, settings, notation = MODELS["flux"]
    pipe = _img2img("flux").from_pipe(build())
    rows = []
    hook = pipe.transformer.x_embedder.register_forward_pre_hook(lambda m, a: rows.append(a[0].shape[0]))
    with headhunter.apply(pipe, headset(pipe, notation), scale=W) as handle:
        run(pipe, dict(settings, image=IMAGE, strength=1.0), num_images_per_prompt=2)
    hook.remove()
    assert rows == [4, 2] * STEPS and handle.calls["guided_steps"] == STEPS


def test_one_step_calls_are_each_guided():
    """A one-step schedule: the second call is a new pipeline call (new timesteps), not a second pass."""
    build, settings, notation = MODELS["sd3"]
    pipe = build()
    with headhunter.apply(pipe, headset(pipe, notation), scale=W) as handle:
        first, second = (run(pipe, settings, num_inference_steps=1) for _ in range(2))
    assert torch.equal(first, second) and handle.calls["guided_steps"] == 2


def test_img2img_window_counts_the_full_schedule():
    """strength 0.5 of 4 steps runs steps 2 and 3; a window [0, 0.5) guides none of them (and warns),
    [0.5, 1) guides both."""
    build, settings, notation = MODELS["sd3"]
    pipe = _img2img("sd3").from_pipe(build())
    hs = headset(pipe, notation)
    call = dict(settings, image=IMAGE, strength=0.5)
    stock = run(pipe, call)
    with headhunter.apply(pipe, hs, scale=W, stop=0.5) as handle:
        with pytest.warns(UserWarning, match="starts at step 2"):
            assert torch.equal(run(pipe, call), stock)
    assert handle.calls["guided_steps"] == 0
    with headhunter.apply(pipe, hs, scale=W, start=0.5) as handle:
        assert maxdiff(run(pipe, call), stock) > 1e-3
    assert handle.calls["guided_steps"] == 2


# ----- torch.compile: no recompiling for a new head set -------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("feature", ["torch.compile in place", "torch.compile wrapper", "torch.compile regional"])
def test_compiled_transformer_compiles_one_graph_for_every_head_set(feature, model):
    """Strengths are tensors the graph reads, and a compiled transformer gets them on every installed site
    (zeros where nothing is perturbed, GuidanceHandle._dense): after the first guided call compiles the
    guided graph, neither a new head set over the same sites nor a new set of perturbed sites adds a graph.
    remove() runs the stock graph again."""
    from torch._dynamo.utils import counters

    build, settings, notation = MODELS[model]
    pipe = build()
    FEATURES[feature][0](pipe, model)
    first, other_heads = ("L0H1, L1H0", "L0H0, L1H1@0.5")
    only_first_site = "L0H1"

    def graphs() -> int:
        return counters["stats"]["unique_graphs"]

    torch._dynamo.reset()  # graphs compiled by earlier tests (same code, same shapes) would be reused
    counters.clear()
    stock = run(pipe, settings)
    counts = [graphs()]
    for notation_ in (first, other_heads, only_first_site, first):
        with headhunter.apply(pipe, headset(pipe, notation_), scale=W):
            run(pipe, settings)
        counts.append(graphs())
    assert torch.equal(run(pipe, settings), stock)
    added = [b - a for a, b in zip(counts, counts[1:])]
    _report(f"{feature}: graphs added per apply", model, float(added[1]), 0.0)
    # one graph for the guided batch layout; other heads, other sites and the first set again add nothing
    assert added[0] >= 1 and added[1:] == [0, 0, 0], added


@pytest.mark.slow
@pytest.mark.parametrize(("feature", "model"), [("torch.compile in place", "sd3")])
def test_inductor_compile_guides_like_a_plain_pipeline(feature, model):
    """The default backend (inductor, C++ on CPU): generated kernels round differently from eager. One row
    only: inductor's code generation takes minutes on a busy CPU (the FLUX wrapper row was measured once
    by hand, docs/compatibility.md)."""
    build, settings, notation = MODELS[model]
    tol = 1e-4
    plain = build()
    hs = headset(plain, notation)
    stock = run(plain, settings)
    with headhunter.apply(plain, hs, scale=W):
        reference = run(plain, settings)
    pipe = build()
    torch._dynamo.reset()
    FEATURES[feature][0](pipe, model, backend="inductor")
    with headhunter.apply(pipe, hs, scale=W) as handle:
        outs = [run(pipe, settings) for _ in range(2)]
    diff = max(maxdiff(out, reference) for out in outs)
    _report(f"{feature} (inductor)", model, diff, tol)
    assert diff <= tol and all(maxdiff(out, stock) > 1e-3 for out in outs)
    assert handle.calls["guided_steps"] == 2 * STEPS
    assert maxdiff(run(pipe, settings), stock) <= tol


def test_flux_attention_backend_is_kept_by_guided_calls():
    """FLUX dispatches attention through diffusers' backend registry: with `_native_math` set, guided calls
    equal the plain pipeline's (default SDPA) to the backends' rounding, and the backend stays set."""
    build, settings, notation = MODELS["flux"]
    tol = 1e-5
    plain = build()
    hs = headset(plain, notation)
    with headhunter.apply(plain, hs, scale=W):
        reference = run(plain, settings)
    pipe = build()
    pipe.transformer.set_attention_backend("_native_math")
    try:
        with headhunter.apply(pipe, hs, scale=W) as handle:
            outs = [run(pipe, settings) for _ in range(N_CALLS)]
        backend = pipe.transformer.transformer_blocks[0].attn.processor._attention_backend
    finally:
        pipe.transformer.reset_attention_backend()
    diff = max(maxdiff(out, reference) for out in outs)
    _report("attention backend _native_math", "flux", diff, tol)
    assert diff <= tol and handle.calls["guided_steps"] == N_CALLS * STEPS
    assert backend.value == "_native_math"


def test_from_pipe_sd3_controlnet_is_guided():
    """A ControlNet sibling (from_pipe with a tiny SD3ControlNetModel): its per-block residuals get the
    conditional rows' copies for the perturbed branch; equal to a fresh ControlNet pipeline guided
    directly, every call guided."""
    from diffusers import StableDiffusion3ControlNetPipeline
    from diffusers.models import SD3ControlNetModel

    build, settings, notation = MODELS["sd3"]

    def controlnet():
        torch.manual_seed(3)
        return SD3ControlNetModel(
            sample_size=16, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
            joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=32, out_channels=4,
            pos_embed_max_size=32).eval()

    call = dict(settings, control_image=IMAGE)
    fresh = StableDiffusion3ControlNetPipeline.from_pipe(build(), controlnet=controlnet())
    hs = headset(fresh, notation)
    stock = run(fresh, call)
    with headhunter.apply(fresh, hs, scale=W):
        reference = run(fresh, call)
    pipe = build()
    sibling = StableDiffusion3ControlNetPipeline.from_pipe(pipe, controlnet=controlnet())
    with headhunter.apply(pipe, hs, scale=W) as handle:
        outs = [run(sibling, call) for _ in range(N_CALLS)]
    diff = max(maxdiff(out, reference) for out in outs)
    _report("from_pipe ControlNet", "sd3", diff, 0.0)
    assert diff == 0.0 and maxdiff(outs[0], stock) > 1e-3
    assert handle.calls["guided_steps"] == N_CALLS * STEPS


def test_flux_bf16_finite_blur_runs_and_matches_float32():
    """Issue 24 (3): FLUX loaded in bf16 with finite-sigma blur crashed before the first step (the image grid was
    read from bf16 `img_ids` with `.numpy()`, which has no bfloat16). Now it runs, is guided, and equals the
    float32 guided output within a few times bf16's own error on the unguided output (measured here)."""
    build, settings, notation = MODELS["flux"]
    blur = {"perturbation": "blur", "perturbation_params": {"sigma": 1.0}}
    plain = build()
    hs = headset(plain, notation)
    stock32 = run(plain, settings)
    with headhunter.apply(plain, hs, scale=W, **blur):
        reference = run(plain, settings)
    pipe = build().to(torch.bfloat16)
    stock16 = run(pipe, settings)
    own_error = maxdiff(stock16, stock32)
    with headhunter.apply(pipe, hs, scale=W, **blur) as handle:
        out = run(pipe, settings)
        assert handle.installation.layout["grid"] == (8, 8)
    diff = maxdiff(out, reference)
    _report("bf16 blur", "flux", diff, 4 * own_error)
    assert diff <= 4 * own_error
    assert maxdiff(out, stock16) > 2 * own_error  # guided, beyond bf16 noise
    assert handle.calls["guided_steps"] == STEPS
