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
    from headhunter.plugins.flux.adapter import _grid_from_ids

    ids = torch.zeros(8, 3)
    ids[:, 1], ids[:, 2] = torch.arange(2).repeat_interleave(4), torch.arange(4).repeat(2)
    assert _grid_from_ids(ids, 8) == (2, 4)
    ids[:, 1], ids[:, 2] = torch.arange(4).repeat_interleave(2), torch.arange(2).repeat(4)
    assert _grid_from_ids(ids, 8) == (4, 2)


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


def _compile_in_place(pipe, model):
    pipe.transformer.compile(backend="eager")


def _compile_wrapper(pipe, model):
    pipe.transformer = torch.compile(pipe.transformer, backend="eager")


FEATURES = {
    "model offload": (_model_offload, 0.0),
    "sequential offload": (_sequential_offload, 0.0),
    "group offload": (_group_offload, 0.0),
    "torch.compile in place": (_compile_in_place, 1e-5),
    "torch.compile wrapper": (_compile_wrapper, 1e-5),
}


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("feature", sorted(FEATURES))
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
