"""Rows computed once under torch.compile (issue 28, item 2).

A compiled transformer (in place, `torch.compile(module)` wrapper, or regionally: its blocks compiled as
diffusers' `compile_repeated_blocks` does) shares the rows equal up to a block exactly as an eager one does:
the fan-out hooks run on the host, outside dynamo's tracing, and each block's forward is compiled as a frame
of its own whose only dependence on the head set is how many rows are present. Checked here:

- exactness: compiled with rows computed once equals the eager full computation (every row at every block)
  within 1e-5, one head set and per-sample head sets, batched and sequential (`backend="eager"`: dynamo's
  tracing, guards and recompiles without code generation; inductor in the slow lane);
- no graph per head set: after the first head sets (each block shape compiled once: static, then dynamic
  rows; the last block's own kind), head sets with new first blocks and per-sample mixtures add no graph;
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_fanout import FAMILIES, headsets, one_call
from torch._dynamo.utils import counters

import headhunter
from headhunter import HeadSet, get_registry
from headhunter.bench.fanout import _call, _Holder, default_inputs

TOL = 1e-5
MODES = ["in place", "wrapper", "regional"]


def compile_transformer(pipe, mode: str, backend: str = "eager") -> None:
    """Compile `pipe.transformer` the way users do: in place, as a wrapper, or block by block."""
    if mode == "in place":
        pipe.transformer.compile(backend=backend)
    elif mode == "wrapper":
        pipe.transformer = torch.compile(pipe.transformer, backend=backend)
    else:
        for name in ("transformer_blocks", "single_transformer_blocks"):
            for block in getattr(pipe.transformer, name, []):
                block.compile(backend=backend)


def compiled_vs_full(family: str, mode: str, per_sample: bool, batched: bool, backend: str = "eager"):
    spec = FAMILIES[family]
    eager = spec["build"]()
    pipe = spec["build"]()  # the same seed: equal weights
    compile_transformer(pipe, mode, backend)
    hs = headsets(eager, spec, per_sample)
    cfg = family not in ("flux", "flux2", "wan", "qwenimage")
    kw = dict(per_sample=per_sample, cfg=cfg, batched=batched)
    torch._dynamo.reset()
    s1, d1, handle = one_call(pipe, family, hs, share=True, **kw)
    s0, d0, _ = one_call(eager, family, hs, share=False, **kw)
    return handle, (s1 - s0).abs().max().item(), (d1 - d0).abs().max().item(), d0.abs().max().item()


#: the fast lane: SD3 per-sample head sets in every mode, FLUX in place; the rest in the slow lane
EXACT = [pytest.param(f, m, p, marks=[] if (f, p) == ("sd3", True) or (f, m, p) == ("flux", "in place", False)
                      else [pytest.mark.slow]) for f in ("sd3", "flux") for m in MODES for p in (False, True)]


@pytest.mark.parametrize(("family", "mode", "per_sample"), EXACT)
def test_compiled_rows_once_equal_the_eager_full_computation(family, mode, per_sample):
    handle, sample_err, delta_err, size = compiled_vs_full(family, mode, per_sample, batched=True)
    assert handle._compiled and handle.fallback is None and handle.shared_row_blocks > 0  # really shared
    assert sample_err <= TOL and delta_err <= TOL, (sample_err, delta_err)
    assert size > 1e-4  # the perturbation did something


@pytest.mark.parametrize("family", ["sd3", pytest.param("flux", marks=pytest.mark.slow)])
def test_compiled_sequential_branches_resume_from_recorded_rows(family):
    """batched=False: the stock call records the conditional rows' inputs where a branch starts, and the
    branch's own forward passes the blocks before it through, also when the blocks are compiled."""
    handle, sample_err, delta_err, _ = compiled_vs_full(family, "in place", per_sample=True, batched=False)
    assert handle.fallback is None and handle.shared_row_blocks > 0
    assert sample_err <= TOL and delta_err <= TOL, (sample_err, delta_err)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["flux2", "qwenimage", "wan"])
def test_compiled_rows_once_other_families(family):
    """The families with other block kinds (FLUX.2's double and single blocks return different things) and
    separate conditional passes (Wan, Qwen-Image: cache_context("cond"))."""
    handle, sample_err, delta_err, _ = compiled_vs_full(family, "in place", per_sample=True, batched=True)
    assert handle.fallback is None and handle.shared_row_blocks > 0
    assert sample_err <= TOL and delta_err <= TOL, (sample_err, delta_err)


@pytest.mark.slow
def test_inductor_compiled_rows_once_equal_the_eager_full_computation():
    handle, sample_err, delta_err, _ = compiled_vs_full("sd3", "in place", per_sample=True, batched=True,
                                                        backend="inductor")
    assert handle.fallback is None and handle.shared_row_blocks > 0
    assert sample_err <= TOL and delta_err <= TOL, (sample_err, delta_err)


# ----- graphs: none per head set ----------------------------------------------------------------------------
#: Warm-up: the last block alone (its own kind in SD3), then a middle block (the blocks between see rows
#: added); afterwards every first block, several heads, and per-sample mixtures of first blocks.
WARM_UP = ["L5H1", "L3H1"]
LATER = ["L0H1", "L4H1", "L2H1", "L1H1", "L2H0, L4H3", "L5H2, L1H0@0.5"]
PER_SAMPLE = [["L1H0", "L4H1", None], ["L3H2", None, "L0H1"], ["L5H0", "L2H1", "L4H3"]]


def _graph_counts(mode: str, traced_hook: bool = False, monkeypatch=None) -> list[int]:
    """Unique graphs after each head set on a 6-block SD3 transformer (transformer calls as a pipeline makes
    them; two steps per head set); the compiled output is checked against the eager one at every head set."""
    from diffusers import SD3Transformer2DModel
    from tiny import SD3_CONFIG

    import headhunter.engine.fanout as fanout

    if traced_hook:  # the control: the block hook traced into the compiled code, as a plain hook is
        monkeypatch.setattr(fanout, "_CompiledBlockHook", fanout._BlockHook)
    torch.manual_seed(0)
    eager = SD3Transformer2DModel(**dict(SD3_CONFIG, num_layers=6)).eval()
    compiled = copy.deepcopy(eager)
    if mode == "regional":
        for block in compiled.transformer_blocks:
            block.compile(backend="eager")
        holder = _Holder(compiled, False)
    elif mode == "wrapper":
        holder = _Holder(torch.compile(compiled, backend="eager"), False)
    else:
        compiled.compile(backend="eager")
        holder = _Holder(compiled, False)
    reference = _Holder(eager, False)
    adapter = get_registry().adapter_for(eager)
    sites = adapter.sites(eager)

    def make(text):
        return None if text is None else HeadSet.from_notation(text, sites=sites, architecture="sd3", name="x")

    make_inputs = default_inputs(eager, grid=(8, 8), text_len=7)
    torch._dynamo.reset()
    counters.clear()
    counts = []
    with torch.no_grad():
        for spec in [*WARM_UP, *LATER, *PER_SAMPLE]:
            per_sample = isinstance(spec, list)
            hs = [make(t) for t in spec] if per_sample else make(spec)
            inputs = make_inputs(3 if per_sample else 1)
            with headhunter.apply(reference, hs, scale=3.0, per_sample=per_sample) as he, \
                    headhunter.apply(holder, hs, scale=3.0, per_sample=per_sample) as hc:
                he.fanout.remove()  # the reference: every row at every block
                he.fanout = None
                for _ in range(2):
                    he._end_of_call()
                    hc._end_of_call()
                    want, got = _call(reference, inputs), _call(holder, inputs)
                    assert (want - got).abs().max().item() <= TOL
                assert hc.fallback is None
            counts.append(counters["stats"]["unique_graphs"])
    return counts


@pytest.mark.parametrize("mode", ["in place", *(pytest.param(m, marks=pytest.mark.slow) for m in MODES[1:])])
def test_compiled_rows_once_compile_no_graph_per_head_set(mode):
    counts = _graph_counts(mode)
    print(f"\n[compiled fan-out] {mode}: unique graphs after each head set {counts}")
    warm = len(WARM_UP)
    assert counts[warm - 1] == counts[warm + len(LATER) - 1], counts  # new first blocks: nothing new
    # per-sample rows (3 cond rows): their block shapes once, then nothing for other mixtures
    assert counts[-1] == counts[-len(PER_SAMPLE)], counts


def test_compiled_rows_once_compose_with_controlnet_residuals():
    """SD3 ControlNet residuals (one full-batch tensor per block, indexed inside the transformer's loop to
    the rows present after each block) under a compiled transformer."""
    spec = FAMILIES["sd3"]
    eager, pipe = spec["build"](), spec["build"]()
    compile_transformer(pipe, "in place")
    hs = headsets(eager, spec, per_sample=True)
    g = torch.Generator().manual_seed(4)
    residuals = [torch.randn(6, 64, 32, generator=g) for _ in range(2)]  # 2 residuals for 4 blocks
    torch._dynamo.reset()
    s1, d1, handle = one_call(pipe, "sd3", hs, share=True, cfg=True, per_sample=True, residuals=residuals)
    s0, d0, _ = one_call(eager, "sd3", hs, share=False, cfg=True, per_sample=True, residuals=residuals)
    assert handle.fallback is None and handle.shared_row_blocks > 0
    assert (s1 - s0).abs().max().item() <= TOL and (d1 - d0).abs().max().item() <= TOL
