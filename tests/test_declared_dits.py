"""Declared DiTs (issue 24): every family of headhunter.plugins.dits on its tiny random-weight model (CPU).

Per family (tests/tiny_dits.py): installed without strengths = stock bit for bit; with strengths (sample 0 at
u = 0, sample 1 on half the heads of every site) the fast path equals the float64 reference engine (the call's
own q, k, v, mask and scale, materialised) within 1e-5, sample 0 stays stock bit for bit, another model of the
same class run meanwhile stays stock, every site is intercepted; two heads of one site give different outputs;
batched = one sample at a time; remove() gives stock back bit for bit. With scope="image" (families that
declare a layout) the rows the engine changes at a site are exactly its image rows, counted from the inputs.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from tiny_dits import BATCH1, PACKED, SPECS, build, inputs

from headhunter.engine.attention import install
from headhunter.engine.intercept import DeclaredAdapter, SiteProcessor
from headhunter.errors import ModelError
from headhunter.plugin_system.registry import get_registry
from headhunter.plugins.dits.declarations import DECLARATIONS

warnings.filterwarnings("ignore")
REGISTRY = get_registry()
BY_CLASS = {c: d for d in DECLARATIONS for c in d.classes}
FAMILIES = sorted(BY_CLASS)
MAIN_KEYS = ("hidden_states", "x", "x_video", "input_ids", "sample")
ID_KEYS = ("img_ids", "txt_ids")
NOT_PER_SAMPLE = ("timestep", "timesteps", "t", "time", "guidance", "image_embeds")  # HunyuanVideo-1.5 decides t2v from all image_embeds of the batch being 0
#: inputs that are not per sample although their first dimension is 1 (GLM-Image's prior tokens)
SHARED = ID_KEYS + ("prior_token_id", "prior_token_drop")


def _tensors(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []


def run(model, kwargs):
    with torch.no_grad():
        return _tensors(model(**kwargs))


def identical(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def maxdiff(a, b):
    return max(float((x.double() - y.double()).abs().max()) for x, y in zip(a, b) if x.numel())


def _batch_of(kwargs):
    for key in MAIN_KEYS:
        v = kwargs.get(key)
        if isinstance(v, torch.Tensor):
            return v.shape[0]
        if isinstance(v, list) and v and isinstance(v[0], torch.Tensor):
            return len(v)
    return 1


def batch2(cls_name):
    """Two samples: every per-sample input repeated, float ones nudged so the copies differ (or None when the
    model takes one sample per forward)."""
    kwargs = inputs(cls_name)
    if cls_name in PACKED or cls_name in BATCH1:
        return None
    b0 = _batch_of(kwargs)
    if b0 != 1:
        return kwargs
    g = torch.Generator().manual_seed(123)
    out = {}
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == 1 and k not in SHARED:
            w = torch.cat([v, v], 0)
            if w.is_floating_point() and k not in NOT_PER_SAMPLE:
                w[1:] = w[1:] + 0.1 * torch.randn(w[1:].shape, generator=g)
            out[k] = w
        elif isinstance(v, list) and v and all(isinstance(x, torch.Tensor) and x.shape[:1] == (1,) for x in v) \
                and k not in MAIN_KEYS + ("cap_feats",):  # per-layer text (Bria FIBO): each layer per sample
            out[k] = [torch.cat([x, x + 0.1 * torch.randn(x.shape, generator=g)], 0) for x in v]
        elif isinstance(v, list) and len(v) == 1 and k in MAIN_KEYS + ("cap_feats", "img_shapes"):
            x = v[0]
            out[k] = v + [x + 0.1 * torch.randn(x.shape, generator=g) if isinstance(x, torch.Tensor)
                          and x.is_floating_point() else x]
        else:
            out[k] = v
    return out


def take(kwargs, i, batch):
    """Sample i of a batched input dict (tensors and lists whose first dimension is the batch)."""
    out = {}
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == batch and k not in SHARED:
            out[k] = v[i:i + 1]
        elif isinstance(v, list) and v and all(isinstance(x, torch.Tensor) and x.shape[:1] == (batch,) for x in v) \
                and k not in MAIN_KEYS + ("cap_feats",):
            out[k] = [x[i:i + 1] for x in v]
        elif isinstance(v, list) and len(v) == batch and k in MAIN_KEYS + ("cap_feats", "img_shapes"):
            out[k] = v[i:i + 1]
        else:
            out[k] = v
    return out


def strengths(inst, batch, seed=0, zero_first=True):
    g = torch.Generator().manual_seed(seed)
    table = {}
    for site in inst.sites:
        u = torch.zeros(batch, site.num_heads)
        for b in range(1 if (zero_first and batch > 1) else 0, batch):
            heads = torch.randperm(site.num_heads, generator=g)[: max(1, site.num_heads // 2)]
            u[b, heads] = 0.3 + 0.7 * torch.rand(len(heads), generator=g)
        table[site.name] = u
    return table


def _case(cls_name):
    kwargs = batch2(cls_name)
    if kwargs is None:
        kwargs = inputs(cls_name)
    a, b = build(cls_name), build(cls_name)
    return a, b, kwargs, 1 if cls_name in PACKED else _batch_of(kwargs)


def test_every_declaration_is_registered_and_recognises_its_class():
    for decl in DECLARATIONS:
        assert REGISTRY.get("adapter", decl.name).declaration is decl
    for cls_name in FAMILIES:
        adapter = REGISTRY.adapter_for(build(cls_name))
        assert isinstance(adapter, DeclaredAdapter) and adapter.declaration is BY_CLASS[cls_name]
    assert set(FAMILIES) == set(SPECS)


@pytest.mark.parametrize("cls_name", FAMILIES)
def test_exact_against_float64_reference(cls_name):
    a, b, kwargs, batch = _case(cls_name)
    stock = run(b, kwargs)
    assert identical(run(a, kwargs), stock), "two builds from one seed differ"
    adapter = REGISTRY.adapter_for(a)
    table = None
    with install(adapter, a, "softpag") as inst:
        assert all(isinstance(a.get_submodule(s.name).processor, SiteProcessor) for s in inst.sites)
        assert identical(run(a, kwargs), stock), "installed without strengths must be stock"
        table = strengths(inst, batch)
        inst.set_strengths(table)
        fast = run(a, kwargs)
        assert identical(run(b, kwargs), stock), "another model of the class must stay stock"
        assert maxdiff(fast, stock) > 1e-6, "the perturbation had no effect"
        if batch > 1:
            assert all(torch.equal(x[0], y[0]) for x, y in zip(fast, stock) if x.ndim and x.shape[0] == batch)
    assert identical(run(a, kwargs), stock), "remove() must give stock back"
    with install(adapter, a, "softpag", mode="reference") as ref_inst:
        ref_inst.set_strengths(table)
        ref = run(a, kwargs)
    assert maxdiff(fast, ref) <= 1e-5
    assert identical(run(a, kwargs), stock)


@pytest.mark.parametrize("cls_name", FAMILIES)
def test_two_heads_of_one_site_differ(cls_name):
    a, _, kwargs, batch = _case(cls_name)
    adapter = REGISTRY.adapter_for(a)
    differ = []
    with install(adapter, a, "softpag") as inst:
        for site in [s for s in inst.sites if s.num_heads >= 2][:3]:
            outs = []
            for head in (0, 1):
                u = torch.zeros(batch, site.num_heads)
                u[:, head] = 1.0
                inst.set_strengths({site.name: u})
                outs.append(run(a, kwargs))
            differ.append(maxdiff(*outs))
    assert max(differ) > 1e-6, differ


@pytest.mark.parametrize("cls_name", [c for c in FAMILIES if c not in PACKED | BATCH1])
def test_batched_equals_sequential(cls_name):
    a, _, kwargs, batch = _case(cls_name)
    adapter = REGISTRY.adapter_for(a)
    with install(adapter, a, "softpag") as inst:
        table = strengths(inst, batch, seed=3, zero_first=False)
        inst.set_strengths(table)
        together = run(a, kwargs)
        for i in range(batch):
            inst.set_strengths({name: u[i:i + 1] for name, u in table.items()})
            alone = run(a, take(kwargs, i, batch))
            for x, y in zip(together, alone):
                if x.ndim and x.shape[0] == batch:
                    assert float((x[i:i + 1].double() - y.double()).abs().max()) <= 1e-5


def _text_rows(cls_name, kw, site, q_len):
    """Query rows at `site` that are not the generated image's, counted from the inputs (not the declaration)."""
    ehs = kw.get("encoder_hidden_states")
    if cls_name == "QwenImage21Transformer2DModel":
        return max(q_len - kw["hidden_states"].shape[1], 0)  # the causal prefix (+ flex padding)
    if site.kind == "image" or site.name.startswith("mode_blocks"):
        return 0
    if cls_name == "AuraFlowTransformer2DModel":
        return ehs.shape[1] + 8  # the 8 learned register tokens
    if cls_name == "ZImageTransformer2DModel":
        c, f, h, w = kw["x"][0].shape
        return q_len - f * (h // 2) * (w // 2)  # everything after the image tokens: padding and caption
    if cls_name == "HiDreamImageTransformer2DModel":
        return kw["encoder_hidden_states_t5"].shape[1] + 2 * kw["encoder_hidden_states_llama3"].shape[2]
    if cls_name == "HunyuanVideo15Transformer3DModel":
        return ehs.shape[1] + kw["encoder_hidden_states_2"].shape[1] + kw["image_embeds"].shape[1]
    return ehs.shape[1]


IMAGE_SCOPE = [c for c in FAMILIES if BY_CLASS[c].layout is not None]


@pytest.mark.parametrize("cls_name", IMAGE_SCOPE)
def test_image_scope_leaves_the_text_rows_stock(cls_name, monkeypatch):
    """scope="image": at every perturbed call the rows left exactly as the model computed them are as many as
    the inputs' text (+ registers / padding / prefix) tokens, and the result equals the float64 reference."""
    a, _, kwargs, batch = _case(cls_name)
    adapter = REGISTRY.adapter_for(a)
    seen = []
    real = SiteProcessor._mix

    def recording(self, frame, out, q, k, v, mask, scale, is_causal, layout, q_len, index):
        mixed = real(self, frame, out, q, k, v, mask, scale, is_causal, layout, q_len, index)
        if self.state.mode == "fast":
            same = (mixed == out).all(dim=-1).all(dim=1).all(dim=0)  # [Sq]: rows untouched in every sample/head
            seen.append((self.site, q_len, int(same.sum())))
        return mixed

    monkeypatch.setattr(SiteProcessor, "_mix", recording)
    with install(adapter, a, "softpag", "image") as inst:
        table = {s.name: torch.full((batch, s.num_heads), 1.0) for s in inst.sites}
        inst.set_strengths(table)
        fast = run(a, kwargs)
    with install(adapter, a, "softpag", "image", mode="reference") as ref_inst:
        ref_inst.set_strengths(table)
        ref = run(a, kwargs)
    assert seen and {s.name for s, _, _ in seen} == {s.name for s in inst.sites}
    for site, q_len, untouched in seen:
        if q_len == 1:
            continue  # one query over one key (Latte's temporal attention on one frame): attention = identity
        assert untouched == _text_rows(cls_name, kwargs, site, q_len), (site.name, q_len)
    assert maxdiff(fast, ref) <= 1e-5


@pytest.mark.parametrize("cls_name", ["ChromaTransformer2DModel", "ZImageTransformer2DModel"])
def test_torch_compile_matches_eager_and_new_strengths_do_not_recompile(cls_name):
    """torch.compile (dynamo, eager backend): compiled = eager, and new strength values over the same sites and
    heads reuse the graphs (the rebound processor code is one function per class; the call in progress is a
    thread-local, not a ContextVar)."""
    from torch._dynamo.testing import CompileCounter

    a, _, kwargs, batch = _case(cls_name)
    adapter = REGISTRY.adapter_for(a)
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(a, backend=counter)
    run(compiled, kwargs)  # stock warm-up: Z-Image's RoPE embedder fills a lazy cache on its first call (a guard)
    with install(adapter, compiled, "softpag") as inst:
        first = strengths(inst, batch, seed=0)
        inst.set_strengths(first)
        out = run(compiled, kwargs)
        assert maxdiff(out, run(a, kwargs)) <= 1e-6
        frames = counter.frame_count
        assert frames > 0
        second = {name: u * 0.5 for name, u in first.items()}
        inst.set_strengths(second)
        again = run(compiled, kwargs)
        assert counter.frame_count == frames, "new strength values recompiled"
        assert maxdiff(again, run(a, kwargs)) <= 1e-6
        assert maxdiff(again, out) > 1e-7
    torch._dynamo.reset()
