"""Scheduled head sets in the engine (issue 26): the plan compiles the schedule into per-step strengths.

Checked against a hand loop that switches (constant) head sets per step with today's engine: at the end of
step i a pipeline callback removes the handle and applies `hs.at(sigma_(i+1))`. On the embedded digits model
and on tiny SD3 / FLUX pipelines. A one-interval full-range schedule is bit-identical to the head set; rows
computed once follow each step's segment; under torch.compile (backend="eager": dynamo's guards and
recompiles without code generation) a change of interval adds no graph, even when the perturbed rows change
(rows in full), or none once every interval was seen (rows computed once).
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import headhunter as hh
from headhunter import HeadSet, ModelError, get_registry

from tiny_pipes import FLUX_CALL, SD3_CALL, build_flux, build_sd3

W = 3.0
TOL = 1e-6


def sites_of(pipe):
    adapter = get_registry().adapter_for(pipe)
    return adapter.sites(pipe), adapter.architecture


def make(pipe, notation: str, name: str = "s") -> HeadSet:
    sites, architecture = sites_of(pipe)
    return HeadSet.from_notation(notation, sites=sites, architecture=architecture, name=name)


def hand_loop(pipe, headset: HeadSet, call, steps: int, scale: float = W, **options) -> torch.Tensor:
    """The same call guided by switching constant head sets per step: before step i+1 (a callback at the end
    of step i), the head set acting at sigma_(i+1) = scheduler.sigmas[i+1] is applied, nothing where it has
    no heads. Only today's (constant-set) engine runs."""
    state = {"handle": None}

    def use(sigma: float) -> None:
        if state["handle"] is not None:
            state["handle"].remove()
            state["handle"] = None
        piece = headset.at(sigma)
        if len(piece):
            state["handle"] = hh.apply(pipe, piece, scale=scale, **options)

    def callback(p, i, t, kwargs):
        if i + 1 < len(p.scheduler.sigmas) - 1:
            use(float(p.scheduler.sigmas[i + 1]))
        return kwargs

    pipe.scheduler.set_timesteps(steps)  # the call sets the same schedule again; sigma_0 is read from it
    use(float(pipe.scheduler.sigmas[0]))
    try:
        return call(callback_on_step_end=callback)
    finally:
        if state["handle"] is not None:
            state["handle"].remove()


# ----- the embedded digits model --------------------------------------------------------------------------------
STEPS = 8


@pytest.fixture(scope="module")
def digits():
    return hh.load_model("digits")


def digits_call(pipe, **kw):
    with torch.no_grad():
        return pipe(["3", "7"], num_inference_steps=STEPS, guidance_scale=2.0, output_type="pt",
                    generator=[torch.Generator().manual_seed(s) for s in (11, 12)], **kw).images


@pytest.mark.parametrize("batched", [True, False])
def test_digits_scheduled_guidance_equals_switching_head_sets_per_step(digits, batched):
    sched = make(digits, "L0H1@[0,0.5), L3H2@0.7@[0.5,1], L5H0@[0.2,0.8)")
    sigmas = [float(s) for s in (digits.scheduler.set_timesteps(STEPS) or digits.scheduler.sigmas[:-1])]
    assert len({sched.interval_index(s) for s in sigmas}) >= 3  # the schedule changes inside the call
    with hh.apply(digits, sched, scale=W, batched=batched) as handle:
        scheduled = digits_call(digits)
    reference = hand_loop(digits, sched, lambda **kw: digits_call(digits, **kw), STEPS, batched=batched)
    assert handle.calls["guided_steps"] == STEPS
    assert (scheduled - reference).abs().max().item() <= TOL
    unguided = digits_call(digits)
    assert (scheduled - unguided).abs().max().item() > 1e-3


def test_digits_one_interval_schedule_is_bit_identical_to_the_head_set(digits):
    constant = make(digits, "L0H1, L3H2@0.7, L5H0")
    same_everywhere = HeadSet([constant.strengths()] * 3, constant.metadata, intervals=[(0, 0.3), (0.3, 0.6), (0.6, 1)])
    from_pieces = HeadSet.from_schedule([((0.0, 1.0), constant)])
    assert same_everywhere == constant == from_pieces and not same_everywhere.scheduled
    with hh.apply(digits, constant, scale=W):
        want = digits_call(digits)
    for hs in (same_everywhere, from_pieces):
        with hh.apply(digits, hs, scale=W) as handle:
            assert torch.equal(digits_call(digits), want)
        assert not handle.plan.scheduled


def test_digits_rows_computed_once_follow_each_steps_segment(digits):
    """Early steps (high sigma) perturb block 0, late steps only block 4: the perturbed rows share the
    conditional rows' blocks 0..3 exactly in the late steps (fan-out per step)."""
    sched = make(digits, "L0H1@[0.5,1], L4H2@[0,0.5)")
    digits.scheduler.set_timesteps(STEPS)
    sigmas = [float(s) for s in digits.scheduler.sigmas[:-1]]
    with hh.apply(digits, sched, scale=W) as handle:
        scheduled = digits_call(digits)
    late = sum(s < 0.5 for s in sigmas)
    assert 0 < late < STEPS and handle.fallback is None
    assert handle.shared_row_blocks == late * 2 * 4  # 2 rows x 4 shared blocks per late step, none early
    reference = hand_loop(digits, sched, lambda **kw: digits_call(digits, **kw), STEPS)
    assert (scheduled - reference).abs().max().item() <= TOL


def test_digits_search_rows_may_each_have_a_schedule(digits):
    """per_sample (the search's engine): every row its own schedule, one forward; row i equals row i guided
    alone."""
    rows = [make(digits, "L0H1@[0,0.5)", "a"), make(digits, "L3H2@[0.5,1], L1H1@[0,0.3)", "b")]
    with hh.apply(digits, rows, scale=W, per_sample=True):
        together = digits_call(digits)
    for i, hs in enumerate(rows):
        with hh.apply(digits, hs, scale=W):
            alone = digits_call(digits)
        assert (together[i] - alone[i]).abs().max().item() <= TOL


def test_a_scheduler_without_sigmas_is_refused_for_schedules(digits, monkeypatch):
    sched = make(digits, "L0H1@[0,0.5)")
    scheduler, original = digits.scheduler, digits.scheduler.set_timesteps

    def without_sigmas(*args, **kwargs):  # a scheduler that steps through no sigma
        original(*args, **kwargs)
        scheduler.sigmas = None

    monkeypatch.setattr(scheduler, "set_timesteps", without_sigmas)
    with hh.apply(digits, sched, scale=W), pytest.raises(ModelError, match="no 1-d `sigmas` tensor"):
        digits_call(digits)
    monkeypatch.undo()
    scheduler.set_timesteps(STEPS)


# ----- tiny SD3 / FLUX pipelines --------------------------------------------------------------------------------
TINY_STEPS = 6
PIPES = {
    "sd3": (build_sd3, {**SD3_CALL, "guidance_scale": 3.0}, "L0H1@[0,0.5), L1H2@0.5@[0.5,1], L1H0@[0.3,0.7)"),
    "flux": (lambda: build_flux(num_heads=2), {**FLUX_CALL, "true_cfg_scale": 2.0, "negative_prompt": "a dog"},
             "L0H1@[0,0.6), L1H0@0.7@[0.6,1], L0H0@[0.2,1]"),
}


def tiny_call(pipe, settings, **kw):
    with torch.no_grad():
        return pipe("a photo of a red cat", num_inference_steps=TINY_STEPS, output_type="latent",
                    generator=torch.Generator().manual_seed(0), **settings, **kw).images.float()


@pytest.mark.parametrize("model", sorted(PIPES))
def test_tiny_pipelines_scheduled_guidance_equals_switching_head_sets_per_step(model):
    build, settings, notation = PIPES[model]
    pipe = build()
    sched = make(pipe, notation)
    with hh.apply(pipe, sched, scale=W) as handle:
        scheduled = tiny_call(pipe, settings)
    reference = hand_loop(pipe, sched, lambda **kw: tiny_call(pipe, settings, **kw), TINY_STEPS)
    assert handle.calls["guided_steps"] == TINY_STEPS
    diff = (scheduled - reference).abs().max().item()
    print(f"\n[schedule] {model}: scheduled vs hand loop max |diff| = {diff:.3g}")
    assert diff <= TOL
    assert (scheduled - tiny_call(pipe, settings)).abs().max().item() > 1e-3


# ----- torch.compile: a change of interval recompiles nothing -----------------------------------------------------
def _graphs_per_step(pipe, settings, guide, **apply_options):
    """Run the call twice under `apply(pipe, guide, ...)`; return (output, unique graphs after every step)."""
    seen: list[int] = []

    def callback(p, i, t, kwargs):
        seen.append(counters["stats"]["unique_graphs"])
        return kwargs

    torch._dynamo.reset()  # graphs of earlier tests (same code, same shapes) would be reused
    counters.clear()
    with hh.apply(pipe, guide, scale=W, **apply_options) as handle:
        outs = [tiny_call(pipe, settings, callback_on_step_end=callback) for _ in range(2)]
    return outs, seen, handle


@pytest.mark.parametrize("share", [False, True], ids=["rows in full", "rows once"])
@pytest.mark.parametrize("case", ["sites change", "rows change", "empty interval"])
def test_compiled_transformer_does_not_recompile_when_the_interval_changes(case, share, monkeypatch):
    """Rows in full (`headhunter.engine.fanout.enabled = False`): strengths of every segment live in one set of
    preallocated tensors written in place: across interval changes (perturbed sites change; per-sample
    perturbed rows change; an interval with no heads) the graph count after the first step never grows.
    Rows computed once: a new interval moves the rows' first perturbed blocks, so the blocks see new row
    counts; dynamo compiles each block shape once (static, then dynamic; the last block's own kind), and
    the second call, which goes through every interval again, compiles nothing. Both equal the uncompiled
    output."""
    import headhunter.engine.fanout as fanout

    monkeypatch.setattr(fanout, "enabled", share)
    build, settings, _ = PIPES["sd3"]
    pipe = build()
    per_sample = case == "rows change"
    guide = {
        "sites change": make(pipe, "L0H1@[0,0.5), L1H2@0.5@[0.5,1]"),
        "rows change": [make(pipe, "L0H1@[0,0.5)", "a")],
        "empty interval": make(pipe, "L1H3@[0.3,1]"),
    }[case]
    if per_sample:
        settings = {**settings, "num_images_per_prompt": 2}
        guide = guide + [make(pipe, "L1H2@[0.5,1], L0H0@[0,0.2)", "b")]
    with hh.apply(pipe, guide, scale=W, per_sample=per_sample):
        eager = tiny_call(pipe, settings)
    pipe.transformer.compile(backend="eager")
    outs, seen, handle = _graphs_per_step(pipe, settings, guide, per_sample=per_sample)
    assert handle.plan.scheduled
    if share:
        assert handle.fallback is None and handle.shared_row_blocks > 0
        recompiles = seen[-1] - seen[len(seen) // 2 - 1]  # during the second call
    else:
        assert handle._stable and handle.fanout is None
        recompiles = seen[-1] - seen[0]
    print(f"\n[schedule] compile ({case}, {'rows once' if share else 'rows in full'}): graphs per step {seen}")
    assert recompiles == 0, seen
    assert all((out - eager).abs().max().item() <= 1e-5 for out in outs)


def test_compile_counter_sees_recompiles_of_per_segment_tensors(monkeypatch):
    """The control for the test above: with a schedule's per-segment maps (what an uncompiled transformer is
    given), a change of perturbed sites does add graphs, so the counter above would see a recompile."""
    import headhunter.engine.fanout as fanout

    monkeypatch.setattr(fanout, "enabled", False)
    build, settings, _ = PIPES["sd3"]
    pipe = build()
    sched = make(pipe, "L0H1@[0,0.5), L1H2@0.5@[0.5,1]")
    pipe.transformer.compile(backend="eager")
    seen: list[int] = []

    def callback(p, i, t, kwargs):
        seen.append(counters["stats"]["unique_graphs"])
        return kwargs

    torch._dynamo.reset()
    counters.clear()
    with hh.apply(pipe, sched, scale=W) as handle:
        handle._stable = handle._compiled = False  # the per-segment maps an uncompiled transformer gets
        tiny_call(pipe, settings, callback_on_step_end=callback)
    assert seen[-1] > seen[0], seen


# ----- HeadHunterGuidance (modular pipelines) ------------------------------------------------------------------
@pytest.mark.parametrize("batched", [False, True])
def test_guider_runs_schedules_like_apply(batched):
    """diffusers' modular SD3 loop with `HeadHunterGuidance` and a scheduled head set (plus one without a
    schedule) equals `apply` on the stock pipeline; sigma is read from the loop's timestep (1000 sigma)."""
    from diffusers.modular_pipelines import StableDiffusion3AutoBlocks

    from headhunter.engine.guider import HeadHunterGuidance

    pipe = build_sd3()
    sched, plain = make(pipe, "L0H1@[0,0.5), L1H3@0.5@[0.5,1]", "a"), make(pipe, "L1H0@[0.8,1]", "b")
    guider = HeadHunterGuidance(headsets=[sched, plain], perturbed_guidance_scale=[2.0, 1.5], guidance_scale=4.5,
                                batched=batched)
    components = {k: v for k, v in pipe.components.items() if v is not None}
    mp = StableDiffusion3AutoBlocks().init_pipeline()
    mp.update_components(**components, guider=guider)
    mp.set_progress_bar_config(disable=True)
    got = mp(prompt="a photo of a red cat", negative_prompt="", num_inference_steps=TINY_STEPS,
             generator=torch.Generator().manual_seed(0), output="latents", **SD3_CALL)
    with hh.apply(pipe, [sched, plain], scale=[2.0, 1.5]):
        want = pipe("a photo of a red cat", guidance_scale=4.5, num_inference_steps=TINY_STEPS, output_type="latent",
                    generator=torch.Generator().manual_seed(0), **SD3_CALL).images
    assert (got - want).abs().max().item() < 1e-5


# ----- command line ------------------------------------------------------------------------------------------------
def test_cli_show_and_generate_take_scheduled_files(digits, tmp_path):
    from click.testing import CliRunner

    from headhunter.cli import make_cli

    sched = make(digits, "L0H1@[0,0.5), L3H2@0.7@[0.5,1]", "sched")
    path = sched.save(tmp_path / "sched.safetensors")
    shown = CliRunner().invoke(make_cli(), ["show", str(path)])
    assert shown.exit_code == 0 and "sigma in [0.5,1]" in shown.output and "L3H2@0.7@[0.5,1]" in shown.output
    as_json = CliRunner().invoke(make_cli(), ["show", str(path), "--json"])
    assert HeadSet._from_json_text(as_json.output, source="show") == hh.load_headset(path)
    out = tmp_path / "gen"
    made = CliRunner().invoke(make_cli(), ["generate", "digits", "--headset", str(path), "--prompt", "3",
                                           "--steps", "4", "--out", str(out)])
    assert made.exit_code == 0, made.output
    record = (out / "generate.json").read_text()
    assert "L3H2@0.7@[0.5,1]" in record and (out / "guided_000_seed0.png").exists()
