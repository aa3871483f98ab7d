"""Declared DiTs through their real diffusers pipelines (issue 24): `headhunter.apply` on tiny random-weight
ChromaPipeline (no CFG) and CogView4Pipeline (CFG as separate passes under `cache_context("cond")`), prompt
embeddings passed directly (no tokenizer download). Reference: the same pipeline whose transformer forward is
replaced by `cond + w (cond - perturbed)` written out here, with the perturbed pass from the engine's own
installation (as tests/test_dit_pipelines.py's loops). Also: the text length the declaration records per
forward is the prompt embeddings' sequence length, and `remove()` gives the stock pipeline back bit for bit.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from diffusers import AutoencoderKL, ChromaPipeline, CogView4Pipeline, FlowMatchEulerDiscreteScheduler
from tiny_dits import build

import headhunter
from headhunter import HeadSet, get_registry
from headhunter.engine.attention import install
from headhunter.engine.intercept import DeclaredAdapter
from headhunter.plan.strengths import batch_strengths

warnings.filterwarnings("ignore")
STEPS, W, TEXT = 2, 2.0, 7


def _vae(latent_channels: int) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8,), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                         up_block_types=("UpDecoderBlock2D",), latent_channels=latent_channels, norm_num_groups=8,
                         sample_size=16).eval()


def _embeds(dim: int, seed: int) -> torch.Tensor:
    return torch.randn(1, TEXT, dim, generator=torch.Generator().manual_seed(seed))


def chroma():
    tr = build("ChromaTransformer2DModel")
    pipe = ChromaPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae(tr.config.in_channels // 4),
                          text_encoder=None, tokenizer=None, transformer=tr)
    dim = tr.config.joint_attention_dim
    return pipe, dict(prompt_embeds=_embeds(dim, 1), prompt_attention_mask=torch.ones(1, TEXT), guidance_scale=1.0,
                      height=16, width=16)


def cogview4():
    tr = build("CogView4Transformer2DModel")
    pipe = CogView4Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae(tr.config.in_channels),
                            text_encoder=None, tokenizer=None, transformer=tr)
    dim = tr.config.text_embed_dim
    return pipe, dict(prompt_embeds=_embeds(dim, 1), negative_prompt_embeds=_embeds(dim, 2), guidance_scale=3.0,
                      height=16, width=16)


BUILDERS = {"chroma": chroma, "cogview4": cogview4}


def _call(pipe, kwargs):
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        return pipe(num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output_type="latent",
                    **kwargs).images


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_apply_equals_the_written_out_guidance_and_remove_restores_stock(name, monkeypatch):
    pipe, kwargs = BUILDERS[name]()
    stock = _call(pipe, kwargs)
    adapter = get_registry().adapter_for(pipe)
    assert isinstance(adapter, DeclaredAdapter) and adapter.name == name
    sites = adapter.sites(pipe)
    headset = HeadSet.from_notation(["L0H0", f"L{len(sites) - 1}H1"], sites=sites, architecture=adapter.architecture,
                                    name="t")
    text_lens = []
    real_observe = DeclaredAdapter.observe

    def observe(self, state, args, kw):
        real_observe(self, state, args, kw)
        text_lens.append(state.text_len)

    monkeypatch.setattr(DeclaredAdapter, "observe", observe)
    handle = headhunter.apply(pipe, headset, scale=W, scope="joint", perturbation="softpag")
    guided = _call(pipe, kwargs)
    assert handle.calls["guided_steps"] == STEPS
    handle.remove()
    assert torch.equal(_call(pipe, kwargs), stock), "remove() must give the stock pipeline back"
    if adapter.declaration.facts is not None:  # the declared text length is the prompt embeddings' length
        assert text_lens and set(text_lens) == {TEXT}

    # reference: the transformer's forward replaced by cond + (w / s) (cond - perturbed) on the conditional passes,
    # so that the pipeline's CFG `uncond + s (cond - uncond)` adds exactly w (cond - perturbed) (DESIGN.md)
    s = kwargs["guidance_scale"] if kwargs["guidance_scale"] > 1 else 1.0
    inst = install(adapter, pipe, "softpag", "joint")
    transformer = pipe.transformer
    real = transformer.forward
    cond_embeds = kwargs["prompt_embeds"]

    def forward(*args, **kw):
        out = real(*args, **kw)
        if not torch.equal(kw["encoder_hidden_states"], cond_embeds.to(kw["encoder_hidden_states"].dtype)):
            return out  # the negative pass of CFG: stock
        rows = kw["hidden_states"].shape[0]
        with inst.strengths(batch_strengths([headset], inst.sites, repeat=rows)):
            ptb = real(*args, **kw)
        cond, ptb = out[0], ptb[0]
        return (cond + (W / s) * (cond - ptb),) + tuple(out[1:])

    monkeypatch.setattr(transformer, "forward", forward)
    reference = _call(pipe, kwargs)
    inst.remove()
    assert float((guided - stock).abs().max()) > 1e-4, "guidance had no effect"
    assert float((guided - reference).abs().max()) <= 1e-5
