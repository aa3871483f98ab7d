"""Engine invariants, for every registered perturbation x scope x tiny model family (issue 3, invariants 1-3).

1. strengths absent or all zero, and after remove(): bit-identical to the stock model;
2. the fast path equals the explicit float64 reference (materialised map mixed row-wise with the target);
3. one batched forward with per-sample head sets equals separate forwards, sample by sample;
plus: the hot path never reads a device value (no .item()/bool()/nonzero), and dtype is kept.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny import FAMILIES, attention_lengths, forward, slice_inputs, to_dtype
from torch.utils._python_dispatch import TorchDispatchMode

from headhunter import HeadSet
from headhunter.plan.strengths import batch_strengths
from headhunter.errors import PluginError
from headhunter.plugin_system.registry import get_registry
from headhunter.format.schema import SCOPES
from headhunter.engine.attention import install as engine_install

REGISTRY = get_registry()
EXTRA_PARAMS = {"blur": [{"sigma": math.inf}, {"sigma": math.inf, "mean_over": "all"}, {"sigma": 0.7},
                         {"sigma": 0.7, "temporal_sigma": 1.5}, {"sigma": math.inf, "temporal_sigma": 2.0}]}


def _cases():
    cases = []
    for name in REGISTRY.names("perturbation"):
        for params in [{}] + EXTRA_PARAMS.get(name, []):
            try:
                perturbation = REGISTRY.perturbation(name, **params)
            except PluginError:
                continue  # a third-party perturbation with required parameters
            for scope in perturbation.scopes:
                label = name + "".join(f"-{k}={v}" for k, v in params.items())
                cases.append(pytest.param(name, params, scope, id=f"{label}-{scope}"))
    return cases


CASES = _cases()
FAMILY_NAMES = list(FAMILIES)
_MODELS: dict[str, torch.nn.Module] = {}


def model_and_inputs(family: str, batch: int):
    if family not in _MODELS:
        _MODELS[family] = FAMILIES[family][0]()
    model = _MODELS[family]
    return model, FAMILIES[family][1](model, batch)


def install(model, name, params, scope, mode="fast"):
    """Install a registered perturbation by name, or a perturbation instance (`name`; params ignored)."""
    perturbation = name if not isinstance(name, str) else REGISTRY.perturbation(name, **params)
    return engine_install(REGISTRY.adapter_for(model), model, perturbation, scope, mode=mode)


def per_sample_strengths(sites, batch, seed=0):
    """Different strengths per sample and head; sample 0 unperturbed everywhere."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for site in sites:
        u = torch.rand(batch, site.num_heads, generator=g) * (torch.rand(batch, site.num_heads, generator=g) < 0.6)
        u[0] = 0.0
        u[1, 0] = 1.0
        out[site.name] = u
    return out


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize(("name", "params", "scope"), CASES)
def test_zero_or_absent_strengths_and_remove_are_bit_identical(family, name, params, scope):
    check_zero_is_stock(family, name, params, scope)


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize(("name", "params", "scope"), CASES)
def test_fast_path_equals_float64_reference(family, name, params, scope):
    check_fast_equals_reference(family, name, params, scope)


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize(("name", "params", "scope"), CASES)
def test_batched_head_sets_equal_separate_forwards(family, name, params, scope):
    check_batched_equals_separate(family, name, params, scope)


def check_zero_is_stock(family, name, params, scope):
    model, inputs = model_and_inputs(family, 2)
    stock = forward(model, inputs)
    originals = {k: v for k, v in model.attn_processors.items()}
    inst = install(model, name, params, scope)
    assert torch.equal(forward(model, inputs), stock)
    zeros = {s.name: torch.zeros(2, s.num_heads) for s in inst.sites}
    with inst.strengths(zeros):
        assert inst.active_sites == []
        assert torch.equal(forward(model, inputs), stock)
    one = {s.name: torch.tensor([[0.0] * s.num_heads, [1.0] + [0.0] * (s.num_heads - 1)]) for s in inst.sites}
    with inst.strengths(one):
        out = forward(model, inputs)
    assert torch.equal(out[0], stock[0]), "an unperturbed sample inside a perturbed batch must be exact"
    inst.remove()
    assert torch.equal(forward(model, inputs), stock)
    assert all(model.attn_processors[k] is v for k, v in originals.items())


def check_fast_equals_reference(family, name, params, scope):
    model, inputs = model_and_inputs(family, 3)
    stock = forward(model, inputs)
    with install(model, name, params, scope) as fast:
        strengths = per_sample_strengths(fast.sites, 3)
        with fast.strengths(strengths):
            out = forward(model, inputs)
    with install(model, name, params, scope, mode="reference") as ref:
        with ref.strengths(strengths):
            expected = forward(model, inputs)
    scale = expected.abs().max()
    assert (out - expected).abs().max() <= 1e-5 * scale
    assert torch.equal(out[0], stock[0])
    assert (out[1:] - stock[1:]).abs().max() > 1e-4, "the perturbation must change the perturbed samples"


def _row_headsets(sites, architecture):
    first, last = sites[0].name, sites[-1].name
    return [
        None,
        HeadSet.from_heads([(first, 0)], sites=sites, architecture=architecture),
        HeadSet.from_heads([(first, 1, 0.5), (last, 2, 0.25)], sites=sites, architecture=architecture),
        HeadSet.from_heads([(i, h, 0.3) for i in range(len(sites)) for h in (0, 3)], sites=sites,
                           architecture=architecture),
    ]


def check_batched_equals_separate(family, name, params, scope):
    model, inputs = model_and_inputs(family, 4)
    stock = forward(model, inputs)
    with install(model, name, params, scope) as inst:
        rows = _row_headsets(inst.sites, inst.architecture)
        with inst.strengths(inst.batch_strengths(rows)):
            batched = forward(model, inputs)
        separate = []
        for i, row in enumerate(rows):
            with inst.strengths(inst.batch_strengths([row])):
                separate.append(forward(model, slice_inputs(inputs, i, i + 1)))
    separate = torch.cat(separate)
    assert torch.equal(batched[0], stock[0])
    assert (batched - separate).abs().max() <= 1e-5 * separate.abs().max()


def test_batch_strengths_layout_and_sparsity():
    model, _ = model_and_inputs("flux", 1)
    adapter = REGISTRY.adapter_for(model)
    sites = adapter.sites(model)
    hs = HeadSet.from_heads([(2, 1, 0.5)], sites=sites, architecture="flux")
    s = batch_strengths([None, hs], sites, repeat=3, dtype=torch.float64)
    assert list(s) == [sites[2].name] and s.heads == {sites[2].name: [1]}
    u = s[sites[2].name]
    assert u.dtype == torch.float64 and u.shape == (6, 4)
    assert u[:3].abs().sum() == 0 and torch.equal(u[3:, 1], torch.full((3,), 0.5, dtype=torch.float64))
    assert batch_strengths([None, None], sites) == {}


def test_identity_acts_at_full_strength():
    model, inputs = model_and_inputs("sd3", 2)
    sites = REGISTRY.adapter_for(model).sites(model)
    soft = {s.name: torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]) for s in sites}
    weak = {s.name: torch.tensor([[0.2, 0, 0, 0], [0, 0.7, 0, 0]]) for s in sites}
    with install(model, "softpag", {}, "joint") as inst, inst.strengths(soft):
        expected = forward(model, inputs)
    with install(model, "identity", {}, "joint") as inst, inst.strengths(weak):
        assert torch.equal(forward(model, inputs), expected)


@pytest.mark.parametrize("name", ["identity", "softpag", "uniform", "drop"])
def test_scopes_differ_where_they_should(name):
    """joint and image differ through text rows; pag_mask is a different target altogether."""
    model, inputs = model_and_inputs("sd3", 1)
    sites = REGISTRY.adapter_for(model).sites(model)
    full = {sites[0].name: torch.ones(1, 4)}
    outs = {}
    for scope in REGISTRY.perturbation(name).scopes:
        with install(model, name, {}, scope) as inst, inst.strengths(full):
            outs[scope] = forward(model, inputs)
    assert (outs["joint"] - outs["image"]).abs().max() > 1e-6
    if "pag_mask" in outs:
        assert (outs["pag_mask"] - outs["image"]).abs().max() > 1e-4


def test_blur_joint_leaves_text_rows_alone_and_inf_sigma_is_the_mean_query():
    model, inputs = model_and_inputs("flux", 1)
    sites = REGISTRY.adapter_for(model).sites(model)
    full = {s.name: torch.ones(1, 4) for s in sites}
    outs = {}
    for label, params, scope in [("joint", {"sigma": 2.0}, "joint"), ("image", {"sigma": 2.0}, "image"),
                                 ("huge", {"sigma": 1e6}, "image"), ("inf", {"sigma": math.inf}, "image")]:
        with install(model, "blur", params, scope) as inst, inst.strengths(full):
            outs[label] = forward(model, inputs)
    assert torch.equal(outs["joint"], outs["image"])
    assert (outs["huge"] - outs["inf"]).abs().max() <= 1e-5 * outs["inf"].abs().max()


def test_unsupported_scope_and_bad_params_are_refused():
    model, _ = model_and_inputs("sd3", 1)
    adapter = REGISTRY.adapter_for(model)
    with pytest.raises(PluginError, match="does not define scope 'pag_mask'"):
        engine_install(adapter, model, "uniform", "pag_mask")
    with pytest.raises(Exception, match="unknown scope 'everything'"):
        engine_install(adapter, model, "softpag", "everything")
    with pytest.raises(PluginError, match="sigma"):
        REGISTRY.perturbation("blur", sigma=-1)
    with pytest.raises(PluginError, match="mean_over"):
        REGISTRY.perturbation("blur", sigma=3.0, mean_over="all")
    assert set(SCOPES) == {"joint", "image", "pag_mask"}
    assert all(p.attn_processors for p in [model])  # nothing was left installed by the failures
    assert not any(type(p).__name__.endswith("PerturbingProcessor") for p in model.attn_processors.values())


class _SyncSpy(TorchDispatchMode):
    """Counts the ops that read a tensor's value back to the host (a device sync on GPU)."""

    SYNCING = ("_local_scalar_dense", "nonzero", "is_nonzero", "equal", "allclose")

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name in self.SYNCING:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize(("name", "params", "scope"), [
    ("softpag", {}, "pag_mask"), ("identity", {}, "joint"), ("blur", {"sigma": 1.0}, "image"),
    ("blur", {"sigma": math.inf, "mean_over": "all"}, "joint"), ("uniform", {}, "image"), ("drop", {}, "joint"),
])
def test_hot_path_reads_no_device_values(family, name, params, scope):
    model, inputs = model_and_inputs(family, 2)
    with _SyncSpy() as spy:
        forward(model, inputs)
    stock_reads = list(spy.seen)
    with install(model, name, params, scope) as inst:
        with inst.strengths(per_sample_strengths(inst.sites, 2)):
            forward(model, inputs)  # warm-up (FLUX + blur copies img_ids to the host once per forward for the grid)
            with _SyncSpy() as spy:
                forward(model, inputs)
    assert spy.seen == stock_reads


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_half_precision_keeps_dtype(family):
    model = FAMILIES[family][0]().to(torch.bfloat16)
    inputs = to_dtype(FAMILIES[family][1](model, 2), torch.bfloat16)
    stock = forward(model, inputs)
    for scope in ("joint", "pag_mask"):
        with install(model, "softpag", {}, scope) as inst, inst.strengths(per_sample_strengths(inst.sites, 2)):
            out = forward(model, inputs)
        assert out.dtype == torch.bfloat16 and torch.equal(out[0], stock[0])
        assert torch.isfinite(out).all()


def _doc_blocks():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "engine.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_docs_usage_example_runs():
    model, inputs = model_and_inputs("sd3", 2)
    stock = forward(model, inputs)
    namespace = {"model": model, "inputs": inputs}
    with torch.no_grad():
        exec(_doc_blocks()[0], namespace)
    out = namespace["out"]
    assert torch.equal(out[0], stock[0]) and (out[1] - stock[1]).abs().max() > 1e-4
    assert torch.equal(forward(model, inputs), stock)


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("scope", ["joint", "image"])
def test_docs_example_perturbation_passes_the_contract(family, scope):
    namespace = {}
    exec(_doc_blocks()[1], namespace)
    shift = namespace["Shift"]()
    check_zero_is_stock(family, shift, {}, scope)
    check_fast_equals_reference(family, shift, {}, scope)
    check_batched_equals_separate(family, shift, {}, scope)


def test_a_strength_map_is_prepared_once_per_installation():
    model, inputs = model_and_inputs("sd3", 4)
    with install(model, "softpag", {}, "pag_mask") as inst:
        rows = _row_headsets(inst.sites, inst.architecture)
        strengths = inst.batch_strengths(rows)
        assert strengths.samples[inst.sites[0].name] == [1, 2, 3]
        inst.set_strengths(strengths)
        prepared = inst._state.active
        first = forward(model, inputs)
        inst.set_strengths(None)
        inst.set_strengths(strengths)
        assert inst._state.active is prepared
        assert torch.equal(forward(model, inputs), first)
    with install(model, "identity", {}, "pag_mask") as other:
        other.set_strengths(strengths)
        assert other._state.active is not prepared


class _SquareSpy(TorchDispatchMode):
    """Records ops whose output ends in an [S, S] block (an attention map) for the given sequence lengths."""

    def __init__(self, lengths):
        super().__init__()
        self.lengths = set(lengths)
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        shape = getattr(out, "shape", ())
        if len(shape) >= 2 and shape[-1] == shape[-2] and shape[-1] in self.lengths:
            self.seen.append(f"{func.__name__}{list(shape)}")
        return out


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize(("name", "params", "scope"), [
    ("identity", {}, "joint"), ("softpag", {}, "pag_mask"), ("uniform", {}, "image"), ("drop", {}, "joint"),
    ("blur", {"sigma": math.inf}, "joint"), ("blur", {"sigma": math.inf, "mean_over": "all"}, "joint"),
])
def test_no_attention_map_is_materialised(family, name, params, scope):
    model, inputs = model_and_inputs(family, 2)
    with install(model, name, params, scope) as inst, inst.strengths(per_sample_strengths(inst.sites, 2)):
        with _SquareSpy(attention_lengths(family)) as spy:
            forward(model, inputs)
    assert spy.seen == []
