"""torch.compile and head sets: a compiled transformer (in place and wrapper) guides like the eager one
(<= 1e-5, against the eager full computation and the eager rows-computed-once path) and compiles its graphs
for the first batch of candidates, none per head set or per step after it (dynamo's own counters). The eager backend runs
dynamo's tracing, guards and recompiles exactly as inductor does, without generating code (fast lane);
inductor itself runs in the slow lane."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import headhunter.engine.fanout as fanout_module
from headhunter import GuidanceSettings, HeadSet, get_registry
from headhunter.engine.runner import Row, generate_rows
from headhunter.format.schema import GenerationSettings

GEN = GenerationSettings(guidance=GuidanceSettings(scale=2.0), steps=3)
#: per batch: (layer, head) of two candidates' rows + one unguided row, as the search batches them
BATCHES = [((0, 0), (1, 1)), ((1, 0), (2, 1)), ((2, 0), (0, 1)), ((3, 1), (2, 0))]


def _pipe():
    from headhunter.plugins.digits.model import build_pipeline, build_transformer

    torch.manual_seed(0)
    pipe = build_pipeline(build_transformer(num_layers=4, num_attention_heads=2, attention_head_dim=8))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _rows(pipe, batch):
    adapter = get_registry().adapter_for(pipe)
    sites = adapter.sites(pipe)
    out = []
    for k, (layer, head) in enumerate(batch):
        hs = HeadSet.from_heads([(layer, head, 1.0)], sites=sites, architecture=adapter.architecture)
        out += [Row(hs, "3", 10 * k), Row(hs, "7", 10 * k + 1)]
    return out + [Row(None, "1", 99)]


def _check(mode: str, backend: str) -> None:
    torch._dynamo.reset()
    eager = _pipe()
    pipe = _pipe()
    if mode == "in place":
        pipe.transformer.compile(backend=backend)
    else:
        pipe.transformer = torch.compile(pipe.transformer, backend=backend)
    graphs = []
    for batch in BATCHES:
        rows = _rows(pipe, batch)
        before = counters["stats"]["unique_graphs"]
        got = generate_rows(pipe, rows, GEN)
        graphs.append(counters["stats"]["unique_graphs"] - before)
        shared = generate_rows(eager, rows, GEN)  # eager: rows computed once (the default)
        fanout_module.enabled = False
        try:
            full = generate_rows(eager, rows, GEN)  # eager: every row at every block
        finally:
            fanout_module.enabled = True
        assert (got - full).abs().max().item() <= 1e-5
        assert (shared - full).abs().max().item() <= 1e-5
        stock = generate_rows(eager, [Row(None, r.prompt, r.seed) for r in rows], GEN)
        assert (got - stock).abs().max().item() > 1e-3  # guided, not stock
    # the first batches compile each block shape once (rows are computed once: a block sees the rows present
    # there, static then dynamic, guided or stock, the last block its own kind; and the transformer around
    # them): measured 6 + 1; later candidates compile nothing
    print(f"\n[compile heads] {mode} ({backend}): graphs per batch of candidates {graphs}")
    assert 1 <= graphs[0] and sum(graphs[:2]) <= 8, graphs
    assert graphs[2:] == [0] * (len(BATCHES) - 2), f"graphs compiled per batch of new head sets: {graphs}"


@pytest.mark.parametrize("mode", ["in place", "wrapper"])
def test_compiled_guides_like_eager_and_compiles_once_for_every_head_set(mode):
    _check(mode, "eager")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["in place", "wrapper"])
def test_inductor_guides_like_eager_and_compiles_once_for_every_head_set(mode):
    _check(mode, "inductor")
