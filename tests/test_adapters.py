"""Model adapters (issue 3): site tables, diffusers' PAG equivalence, refusal before any forward, layouts,
attention backends, the digits pipeline without a special case, and the `inspect` / `bench` commands."""

from __future__ import annotations

import json
import re

import pytest
import torch
from click.testing import CliRunner
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
from diffusers.models.attention_processor import (
    FusedJointAttnProcessor2_0,
    JointAttnProcessor2_0,
    PAGJointAttnProcessor2_0,
)
from tiny import GRID, TEXT_LEN, flux_inputs, forward, sd3_inputs, tiny_flux, tiny_sd3, tiny_sd35

from headhunter import HeadSet
from headhunter.plan.strengths import batch_strengths
from headhunter.cli import make_cli
from headhunter.cli.bench import FLUX_DEV, SD3_MEDIUM
from headhunter.errors import HeadSetError, ModelError
from headhunter.plugin_system.registry import get_registry
from headhunter.plugins.flux.sites import flux_sites
from headhunter.plugins.sd3.sites import sd3_sites
from headhunter.engine.attention import install

REGISTRY = get_registry()
SD35_MEDIUM = dict(SD3_MEDIUM, pos_embed_max_size=384, qk_norm="rms_norm", dual_attention_layers=tuple(range(13)))
SD35_LARGE = dict(SD3_MEDIUM, num_layers=38, num_attention_heads=38, caption_projection_dim=2432, qk_norm="rms_norm")


@pytest.mark.parametrize(("repo", "cls", "config"), [
    ("stabilityai/stable-diffusion-3-medium-diffusers", SD3Transformer2DModel, SD3_MEDIUM),
    ("stabilityai/stable-diffusion-3.5-medium", SD3Transformer2DModel, SD35_MEDIUM),
    ("stabilityai/stable-diffusion-3.5-large", SD3Transformer2DModel, SD35_LARGE),
    ("black-forest-labs/FLUX.1-dev", FluxTransformer2DModel, FLUX_DEV),
])
def test_sites_of_real_configs_equal_the_site_tables(repo, cls, config):
    with torch.device("meta"):
        model = cls(**config)
    adapter = REGISTRY.adapter_for(model)
    known = REGISTRY.base_model(repo)
    assert adapter.architecture == known.architecture
    assert adapter.sites(model) == list(known.sites)


def test_tiny_sites_and_paper_order():
    sd35, flux = tiny_sd35(), tiny_flux()
    assert REGISTRY.adapter_for(sd35).sites(sd35) == sd3_sites(3, 4, (0, 1))
    assert REGISTRY.adapter_for(flux).sites(flux) == flux_sites(2, 2, 4)


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("name", ["identity", "softpag"])
def test_pag_mask_equals_diffusers_pag_processor(layer, name):
    """Invariant 4: scope pag_mask, all heads of a layer at u = 1 == the perturbed half of diffusers' PAG."""
    model = tiny_sd3()
    inputs = sd3_inputs(model, 2)
    adapter = REGISTRY.adapter_for(model)
    sites = adapter.sites(model)
    with install(adapter, model, name, "pag_mask") as inst, inst.strengths({sites[layer].name: torch.ones(2, 4)}):
        ours = forward(model, inputs)
    block = model.transformer_blocks[layer].attn
    original = block.processor
    block.set_processor(PAGJointAttnProcessor2_0())
    doubled = {k: torch.cat([v, v]) for k, v in inputs.items()}  # [original | perturbed] halves
    theirs = forward(model, doubled)
    block.set_processor(original)
    assert (ours - theirs[2:]).abs().max() <= 1e-5 * theirs.abs().max()
    assert (ours - forward(model, inputs)).abs().max() > 1e-3


def test_pag_mask_keeps_qk_norm_where_diffusers_drops_it():
    model = tiny_sd35()
    inputs = sd3_inputs(model, 1)
    site = REGISTRY.adapter_for(model).sites(model)[0].name
    with install(REGISTRY.adapter_for(model), model, "identity", "pag_mask") as inst:
        with inst.strengths({site: torch.ones(1, 4)}):
            ours = forward(model, inputs)
    with install(REGISTRY.adapter_for(model), model, "identity", "pag_mask", mode="reference") as inst:
        with inst.strengths({site: torch.ones(1, 4)}):
            reference = forward(model, inputs)
    assert (ours - reference).abs().max() <= 1e-5 * reference.abs().max()
    block = model.transformer_blocks[0].attn
    original = block.processor
    block.set_processor(PAGJointAttnProcessor2_0())
    theirs = forward(model, {k: torch.cat([v, v]) for k, v in inputs.items()})
    block.set_processor(original)
    assert (theirs[1:] - ours).abs().max() > 1e-3  # diffusers' processor ignores norm_q / norm_k


class _CountForwards:
    def __init__(self, model):
        self.count = 0
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, *args):
        self.count += 1


def test_mismatched_head_sets_are_refused_before_any_forward():
    """Invariant 5: out-of-range heads, unknown sites, another architecture -> HeadSetError, no forward."""
    model = tiny_sd3()
    counter = _CountForwards(model)
    with install(REGISTRY.adapter_for(model), model, "softpag") as inst:
        bigger = sd3_sites(2, 8)
        with pytest.raises(HeadSetError, match="has 4 heads in this model") as err:
            inst.batch_strengths([None, HeadSet.from_heads([(0, 6)], sites=bigger, architecture="sd3")])
        assert "transformer_blocks.0.attn" in str(err.value)
        deeper = sd3_sites(5, 4)
        with pytest.raises(HeadSetError, match="transformer_blocks.4.attn"):
            inst.batch_strengths([HeadSet.from_heads([(4, 0)], sites=deeper, architecture="sd3")])
        flux = HeadSet.from_heads([(0, 0)], sites=flux_sites(2, 2, 4), architecture="flux")
        with pytest.raises(HeadSetError, match="'flux'"):
            inst.validate(flux)
        with pytest.raises(HeadSetError, match="'flux'"):
            batch_strengths([flux], inst.sites, architecture=inst.architecture)
        with pytest.raises(HeadSetError, match="unknown site 'blocks.0'"):
            inst.set_strengths({"blocks.0": torch.ones(1, 4)})
        with pytest.raises(HeadSetError, match=r"expected \[batch, 4\]"):
            inst.set_strengths({"transformer_blocks.0.attn": torch.ones(1, 3)})
        with pytest.raises(HeadSetError, match=r"in \[0, 1\]"):
            inst.set_strengths({"transformer_blocks.0.attn": torch.full((1, 4), 1.5)})
        with pytest.raises(HeadSetError, match="expected a HeadSet"):
            inst.batch_strengths([{"transformer_blocks.0.attn": {0: 1.0}}])
    assert counter.count == 0


def test_wrong_batch_size_is_an_error_naming_the_site():
    model = tiny_sd3()
    with install(REGISTRY.adapter_for(model), model, "softpag") as inst:
        with inst.strengths({"transformer_blocks.1.attn": torch.ones(3, 4)}):
            with pytest.raises(ModelError, match="transformer_blocks.1.attn.*batch 2"):
                forward(model, sd3_inputs(model, 2))


def test_install_refuses_twice_and_unknown_processors_and_leaves_model_untouched():
    model = tiny_sd3()
    inputs = sd3_inputs(model, 1)
    stock = forward(model, inputs)
    adapter = REGISTRY.adapter_for(model)
    with install(adapter, model, "softpag"):
        with pytest.raises(ModelError, match="already installed"):
            install(adapter, model, "softpag")
    model.transformer_blocks[1].attn.set_processor(FusedJointAttnProcessor2_0())
    with pytest.raises(ModelError, match="transformer_blocks.1.attn runs FusedJointAttnProcessor2_0"):
        install(adapter, model, "softpag")
    assert type(model.transformer_blocks[0].attn.processor).__name__ == "JointAttnProcessor2_0"
    model.transformer_blocks[1].attn.set_processor(JointAttnProcessor2_0())
    inst = install(adapter, model, "softpag")
    inst.remove()
    inst.remove()  # idempotent
    with pytest.raises(ModelError, match="removed"):
        inst.set_strengths({})
    assert torch.equal(forward(model, inputs), stock)


def test_layouts_and_grids_are_recorded_on_non_square_inputs():
    for model, make in ((tiny_sd3(), sd3_inputs), (tiny_flux(), flux_inputs)):
        adapter = REGISTRY.adapter_for(model)
        sites = adapter.sites(model)
        with install(adapter, model, "blur", "image") as inst, inst.strengths({sites[-1].name: torch.ones(1, 4)}):
            forward(model, make(model, 1))
            assert inst.layout["grid"] == GRID
            if adapter.name == "flux":
                assert inst.layout["text_len"] == TEXT_LEN


def test_flux_single_stream_needs_the_text_length():
    model = tiny_flux()
    site = "single_transformer_blocks.0.attn"
    attn = model.get_submodule(site)
    with install(REGISTRY.adapter_for(model), model, "softpag", "image") as inst, \
            inst.strengths({site: torch.ones(1, 4)}):
        with pytest.raises(ModelError, match="text length"):
            attn(hidden_states=torch.randn(1, 10, 64))


def test_flux_attention_backend_passes_through():
    model = tiny_flux()
    inputs = flux_inputs(model, 2)
    model.set_attention_backend("_native_math")
    stock = forward(model, inputs)
    adapter = REGISTRY.adapter_for(model)
    with install(adapter, model, "softpag") as inst:
        processor = model.get_submodule("transformer_blocks.0.attn").processor
        assert processor._attention_backend == processor.original._attention_backend is not None
        with inst.strengths({s.name: torch.tensor([[0.0] * 4, [1.0] * 4]) for s in inst.sites}):
            out = forward(model, inputs)
        assert torch.equal(out[0], stock[0])
        model.set_attention_backend("native")  # set while installed: reaches the original processors
    assert model.get_submodule("transformer_blocks.0.attn").processor._attention_backend.value == "native"
    model.reset_attention_backend()


def test_digits_pipeline_is_plain_sd3():
    from headhunter.plugins.digits.model import DigitsPipeline, build_pipeline

    torch.manual_seed(0)
    pipe = build_pipeline()
    assert isinstance(pipe, DigitsPipeline)
    adapter = REGISTRY.adapter_for(pipe)
    assert adapter.name == "sd3"
    sites = adapter.sites(pipe)

    def run():
        return pipe(["3", "7"], num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                    output_type="latent").images

    stock = run()
    headset = HeadSet.from_heads([(0, 1), (len(sites) - 1, 5, 0.5)], sites=sites, architecture="sd3")
    with install(adapter, pipe, "softpag") as inst:
        with inst.strengths(inst.batch_strengths([None, headset])):
            guided = run()
        assert torch.equal(run(), stock)
    assert torch.equal(guided[0], stock[0]) and (guided[1] - stock[1]).abs().max() > 1e-4
    assert torch.equal(run(), stock)


def test_inspect_local_folders_and_errors(tmp_path):
    cli = make_cli()
    runner = CliRunner()
    tiny_sd3().save_pretrained(tmp_path / "transformer")
    result = runner.invoke(cli, ["inspect", str(tmp_path / "transformer")])
    assert result.exit_code == 0, result.output
    assert re.search(r"L1 +transformer_blocks\.1\.attn +4 heads +joint", result.output)
    assert "[image | text]" in result.output
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"block_out_channels": [8, 8]}))
    result = runner.invoke(cli, ["inspect", str(tmp_path), "--json"])
    data = json.loads(result.output)
    assert [s["name"] for s in data["sites"]] == ["transformer_blocks.0.attn", "transformer_blocks.1.attn"]
    assert data["architecture"] == "sd3" and any("8 x 8 = 64 image tokens" in line for line in data["layout"])
    result = runner.invoke(cli, ["inspect", "nobody/nothing", "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code != 0
    assert "'nobody/nothing' is not in the local Hugging Face cache" in result.output
    assert "`hf download " in result.output


def test_inspect_a_cached_hub_model(tmp_path):
    """A Hub repo id resolves from the local cache, offline: FLUX.1-dev's configs, no weights."""
    snapshot = tmp_path / "models--black-forest-labs--FLUX.1-dev" / "snapshots" / ("a" * 40)
    (snapshot / "transformer").mkdir(parents=True)
    (tmp_path / "models--black-forest-labs--FLUX.1-dev" / "refs").mkdir()
    (tmp_path / "models--black-forest-labs--FLUX.1-dev" / "refs" / "main").write_text("a" * 40)
    (snapshot / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    config = {"_class_name": "FluxTransformer2DModel", **FLUX_DEV, "axes_dims_rope": list(FLUX_DEV["axes_dims_rope"])}
    (snapshot / "transformer" / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(make_cli(), ["inspect", "black-forest-labs/FLUX.1-dev", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "57 (1368 heads)" in result.output
    assert re.search(r"L19 +single_transformer_blocks\.0\.attn +24 heads +single", result.output)
    assert "[text | image]" in result.output


@pytest.mark.slow
def test_bench_runs_on_tiny_settings(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(make_cli(), ["bench", "--model", "flux-small", "--batch", "2", "--rounds", "1",
                                             "--min-time", "0", "--heads", "4", "--dtype", "bf16", "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert rows[0]["batch"] == 2 and rows[0]["heads"] == 4
    assert {"stock_ms", "installed_ratio", "heads_ratio", "pag_mask_ratio"} <= set(rows[0])


def test_inspect_a_registered_model():
    """`headhunter inspect NAME` loads a model registered by a plugin (the digits demo is one); the CLI uses the
    plugin manager it was built with, not the process-wide registry."""
    from headhunter.plugin_system.hookspecs import hookimpl
    from headhunter.plugins.digits.model import build_pipeline
    from headhunter.plugin_system.registry import get_plugin_manager

    class DemoModels:
        @hookimpl
        def register_models(self, register):
            register("tiny-digits", build_pipeline)

    pm = get_plugin_manager(load_entry_points=False)
    pm.register(DemoModels(), name="demo-models")
    result = CliRunner().invoke(make_cli(pm), ["inspect", "tiny-digits"])
    assert result.exit_code == 0, result.output
    assert "registered model" in result.output and "architecture: sd3" in result.output
    assert re.search(r"L5 +transformer_blocks\.5\.attn +8 heads +joint", result.output)
    assert "8 x 8 = 64 image tokens" in result.output


def test_original_processor_refuses_a_processor_the_adapter_did_not_copy():
    """Every adapter's make_processor goes through ModelAdapter.original_processor: a subclass that keeps the
    original __call__ passes; any other processor is a ModelError naming the site, the class and the hint."""
    from types import SimpleNamespace

    from diffusers.models.attention_processor import AttnProcessor2_0, JointAttnProcessor2_0

    from headhunter.errors import ModelError
    from headhunter.plugins.sd3.adapter import SD3Adapter
    from headhunter.format.sites import Site

    class Same(JointAttnProcessor2_0):
        pass

    adapter, site = SD3Adapter(), Site(name="transformer_blocks.0.attn", num_heads=4)
    same = Same()
    assert adapter.original_processor(site, SimpleNamespace(processor=same), JointAttnProcessor2_0, "x") is same
    with pytest.raises(ModelError, match=r"transformer_blocks\.0\.attn runs AttnProcessor2_0; the sd3 adapter "
                                         r"reproduces JointAttnProcessor2_0 only \(put it back\)"):
        adapter.original_processor(site, SimpleNamespace(processor=AttnProcessor2_0()), JointAttnProcessor2_0,
                                   "put it back")
