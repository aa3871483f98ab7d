"""headhunter's ComfyUI nodes against the real ComfyUI source (0.3.64): tiny random-weight SD3 / SD3.5 / FLUX
models built from arguments in ComfyUI's own classes (comfy.ldm.modules.diffusionmodules.mmdit.MMDiT,
comfy.ldm.flux.model.Flux inside comfy.model_base + comfy.model_patcher.ModelPatcher), fp32, CPU.

ComfyUI is found through COMFYUI_PATH (default: ../shared/vendor/ComfyUI-0.3.64 beside the checkout). In CI
(HEADHUNTER_CI=1, set by .ci/run) a missing ComfyUI fails these tests; elsewhere they skip, naming the
variable. The tests that need no ComfyUI (imports, the install verb, parameter parsing) always run.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import comfyui_env as env
from headhunter.cli import make_cli
from headhunter.errors import HeadhunterError, HeadSetError, ModelError, PluginError
from headhunter.format.headset import HeadSet
from headhunter.plugins.comfyui import install as inst
from headhunter.plugins.comfyui import nodes, patch, sites as csites

ROOT = Path(__file__).resolve().parents[1]
TOL_REF = 1e-5        # fast fp32 path vs the float64 reference engine
TOL_DIFFUSERS = 1e-4  # ComfyUI vs diffusers, same weights, one guided step
IN_CI = os.environ.get("HEADHUNTER_CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def comfy():
    path = env.comfyui_path()
    if not env.is_tree(path):
        given = os.environ.get("COMFYUI_PATH")
        where = (f"COMFYUI_PATH={given!r} is not a ComfyUI tree (no comfy/model_patcher.py)" if given else
                 f"COMFYUI_PATH is not set and the default {env.DEFAULT_COMFYUI_PATH} does not exist")
        msg = f"ComfyUI source not found: {where}; set COMFYUI_PATH to a ComfyUI 0.3.64 tree"
        if IN_CI:
            pytest.fail(msg + " (HEADHUNTER_CI is set: CI must run these tests)", pytrace=False)
        pytest.skip(msg)
    env.setup()
    return path


@pytest.fixture(scope="module")
def models(comfy):
    return {"sd3": env.tiny_sd3(), "sd35": env.tiny_sd3(qk_norm=True), "flux": env.tiny_flux()}


def _dm(p):
    return p.model.diffusion_model


def _sites(p):
    return csites.comfy_sites(_dm(p))


def make_headset(p, heads, name="hs", **metadata) -> HeadSet:
    """A head set for the ComfyUI model `p` from {site: {head: u}} (diffusers site names)."""
    specs = [(site, h, u) for site, per in heads.items() for h, u in per.items()]
    return HeadSet.from_heads(specs, sites=[s.site for s in _sites(p)],
                              architecture=csites.architecture(_dm(p)), name=name, **metadata)


def _forward(p, plan, inputs, chunk_branch=None, base=None):
    mo = patch.perturbed_model_options(base or {"transformer_options": {}}, plan, chunk_branch or {0: (0, 0)})
    return env.run_apply(p, inputs, mo)


def _conds(p, name, batch=1):
    g = 3.5 if name == "flux" else None
    return env.conditioning(p, batch, 7, seed=1, guidance=g), env.conditioning(p, batch, 7, seed=9, guidance=g)


def _sample(model, name, steps=3, cfg=2.0, scheduler="simple", seed=5, h=8, w=12):
    import comfy.sample

    pos, neg = _conds(model, name)
    noise = torch.randn(1, 16, h, w, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return comfy.sample.sample(model, noise, steps, cfg, "euler", scheduler, pos, neg, torch.zeros(1, 16, h, w),
                                   disable_pbar=True, seed=seed)


class Spy:
    """Records what the engine's mix received and returned at every perturbed attention call."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = patch.mix

        def spy(out, q, k, v, entry, layout, perturbation, scope):
            res = real(out, q, k, v, entry, layout, perturbation, scope)
            self.calls.append(dict(q=q.clone(), k=k.clone(), v=v.clone(), u=entry.u.clone(), layout=layout,
                                   res=res.clone(), perturbation=perturbation, scope=scope))
            return res

        monkeypatch.setattr(patch, "mix", spy)


# one site of every kind per model: SD3 joint (and the last block, context pre_only), SD3.5 joint with qk-norm
# and the image-only attn2, FLUX double- and single-stream
SITES = {
    "sd3": ["transformer_blocks.1.attn", "transformer_blocks.3.attn"],
    "sd35": ["transformer_blocks.2.attn", "transformer_blocks.0.attn2"],
    "flux": ["transformer_blocks.1.attn", "single_transformer_blocks.0.attn"],
}
FAMILIES = ("sd3", "sd35", "flux")


# ----- without ComfyUI ----------------------------------------------------------------------------------------
def test_importing_the_plugin_and_nodes_needs_no_comfyui():
    code = ("import sys, headhunter, headhunter.plugins.comfyui, headhunter.plugins.comfyui.nodes as n; "
            "from headhunter.plugin_system.registry import builtin_plugins; "
            "assert 'comfy' not in sys.modules and not any(m.startswith('comfy.') for m in sys.modules); "
            "assert 'headhunter.plugins.comfyui' in builtin_plugins(); print(sorted(n.NODE_CLASS_MAPPINGS))")
    env_vars = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env_vars, cwd=ROOT.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["['HeadHunterApplyHeadSet',", "'HeadHunterCombineHeadSets',", "'HeadHunterLoadHeadSet']"]


def _fake_tree(root: Path) -> Path:
    (root / "comfy").mkdir(parents=True)
    (root / "comfy" / "model_patcher.py").write_text("")
    (root / "nodes.py").write_text("")
    (root / "main.py").write_text("")
    return root


def test_install_verb_writes_the_shim_and_refuses_other_trees(tmp_path):
    cli = make_cli()
    tree = _fake_tree(tmp_path / "ComfyUI")
    result = CliRunner().invoke(cli, ["comfyui", "install", str(tree)])
    assert result.exit_code == 0, result.output
    shim = tree / "custom_nodes" / "headhunter" / "__init__.py"
    assert shim.read_text() == inst.SHIM
    assert CliRunner().invoke(cli, ["comfyui", "install", str(tree)]).exit_code == 0  # rewriting ours is fine
    assert not [p for p in shim.parent.iterdir() if p.name.endswith(".tmp")]  # atomic: no temp file left
    # ComfyUI loads a custom-node folder like this (nodes.load_custom_node): the same mappings come back
    spec = importlib.util.spec_from_file_location(str(shim.parent).replace(".", "_x_"), shim)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.NODE_CLASS_MAPPINGS is nodes.NODE_CLASS_MAPPINGS
    assert module.NODE_DISPLAY_NAME_MAPPINGS is nodes.NODE_DISPLAY_NAME_MAPPINGS
    # refusals: one Error line, exit 1
    shim.write_text("# someone else's node\n")
    for args, match in ([str(tree)], "was not written by"), ([str(tmp_path)], "is not a ComfyUI tree: no comfy/model_patcher.py"):
        result = CliRunner().invoke(cli, ["comfyui", "install", *args])
        assert result.exit_code == 1 and result.output.count("Error:") == 1 and match in result.output, result.output
    assert shim.read_text() == "# someone else's node\n"  # untouched


def test_docs_show_the_shim_and_a_workflow_with_the_real_node_inputs():
    doc = (ROOT / "docs" / "comfyui.md").read_text()
    assert inst.SHIM in doc
    assert "headhunter comfyui install" in doc
    (workflow,) = re.findall(r"```json\n(.*?)```", doc, flags=re.S)
    graph = json.loads(workflow)
    ours = {n["class_type"]: n["inputs"] for n in graph.values() if n["class_type"].startswith("HeadHunter")}
    assert set(ours) == {"HeadHunterLoadHeadSet", "HeadHunterApplyHeadSet"}
    for cls, inputs in ours.items():
        spec = nodes.NODE_CLASS_MAPPINGS[cls].INPUT_TYPES()
        allowed = {**spec["required"], **spec.get("optional", {})}
        assert set(spec["required"]) <= set(inputs) <= set(allowed), cls
        for key, value in inputs.items():
            choices = allowed[key][0]
            if isinstance(choices, list) and not isinstance(value, list):
                assert value in choices, (cls, key, value)


def test_the_docs_workflow_uses_comfyui_nodes_that_exist(comfy):
    """The workflow's ComfyUI core nodes exist in the ComfyUI source with those input names (read as text:
    ComfyUI's `nodes` module needs its server's dependencies to import)."""
    doc = (ROOT / "docs" / "comfyui.md").read_text()
    (workflow,) = re.findall(r"```json\n(.*?)```", doc, flags=re.S)
    sources = [Path(comfy, "nodes.py").read_text(), *(f.read_text() for f in sorted(Path(comfy, "comfy_extras").glob("*.py")))]
    for node in json.loads(workflow).values():
        cls = node["class_type"]
        if cls.startswith("HeadHunter"):
            continue
        body = next((src.split(f"class {cls}", 1)[1][:6000] for src in sources if f"class {cls}(" in src or f"class {cls}:" in src), None)
        assert body is not None, f"{cls} is not a ComfyUI node"
        for key in node["inputs"]:
            assert f'"{key}"' in body, (cls, key)
    assert inst.check_tree(comfy) == Path(comfy)  # the install verb accepts the real tree (nothing written)


def test_params_widget_is_checked():
    assert nodes.parse_params("") == {} and nodes.parse_params(' {"sigma": 4} ') == {"sigma": 4}
    for bad, match in (("{sigma: 4}", "not JSON"), ("[1]", "must be a JSON object")):
        with pytest.raises(HeadSetError, match=match):
            nodes.parse_params(bad)


# ----- exactness: every strength 0, the float64 reference ---------------------------------------------------
@pytest.mark.parametrize("name", FAMILIES)
def test_zero_strengths_are_bit_identical(models, name, monkeypatch):
    """Every site of the model perturbed, every head through the engine's mix with u = 0: torch.equal to stock."""
    p = models[name]
    spy = Spy(monkeypatch)
    everything = {s.name: {h: 1.0 for h in range(s.site.num_heads)} for s in _sites(p)}
    plan = patch.compile_for(p, make_headset(p, everything), perturbation="uniform", scope="image")
    for branch in plan.branches:
        for vec in branch.tables[0].values():
            vec[:] = 0.0
    inputs = env.apply_inputs(p, batch=2)
    assert torch.equal(_forward(p, plan, inputs), env.run_apply(p, inputs))
    assert len(spy.calls) == len(_sites(p))  # the mix really ran at every site


@pytest.mark.parametrize("name", FAMILIES)
def test_one_head_matches_the_reference_engine(models, name, monkeypatch):
    """One head at u = 1 (identity): the whole model output, fast path (only that head mixed, the backend's O
    for the rest) vs the same forward with the site recomputed from materialised float64 maps."""
    p = models[name]
    inputs = env.apply_inputs(p, batch=2)
    stock = env.run_apply(p, inputs)
    for site in SITES[name]:
        hs = make_headset(p, {site: {2: 1.0}})
        fast = _forward(p, patch.compile_for(p, hs, perturbation="identity"), inputs)
        ref = _forward(p, patch.compile_for(p, hs, perturbation="identity", engine="reference"), inputs)
        assert (fast - stock).abs().max() > 1e-3  # the head matters
        assert (fast - ref).abs().max() <= TOL_REF, (site, (fast - ref).abs().max().item())


PERTURBATIONS = [("identity", {}), ("softpag", {}), ("uniform", {}), ("drop", {}), ("blur", {"sigma": 1.5}),
                 ("blur", {"sigma": math.inf}), ("blur", {"sigma": math.inf, "mean_over": "all"})]
CASES = [(n, params, scope) for n, params in PERTURBATIONS for scope in ("joint", "image", "pag_mask")
         if scope != "pag_mask" or n in ("identity", "softpag")]


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("pert,params,scope", CASES, ids=[f"{n}-{p.get('sigma', '')}{p.get('mean_over', '')}-{s}" for n, p, s in CASES])
def test_every_perturbation_and_scope_matches_the_reference_engine(models, name, pert, params, scope, monkeypatch):
    """Several heads at different strengths on two sites of every kind, every built-in perturbation (the
    registered plugins) and scope: model output and each site's output vs the float64 reference engine."""
    from headhunter.engine.reference import reference_attention

    p = models[name]
    heads = {site: {0: 0.7, 2: 1.0, 3: 0.3} for site in SITES[name]}
    hs = make_headset(p, heads)
    inputs = env.apply_inputs(p, batch=2)
    spy = Spy(monkeypatch)
    settings = dict(scope=scope, perturbation=pert, params=params)  # files hold finite numbers only: sigma=inf here
    fast = _forward(p, patch.compile_for(p, hs, **settings), inputs)
    ref = _forward(p, patch.compile_for(p, hs, engine="reference", **settings), inputs)
    assert (fast - env.run_apply(p, inputs)).abs().max() > 1e-4
    assert (fast - ref).abs().max() <= TOL_REF, (fast - ref).abs().max().item()
    assert len(spy.calls) == 2
    for c in spy.calls:
        lay = c["layout"]
        assert lay.image_len == 24 and lay.grid == (4, 6) and lay.text_first
        assert lay.text_len in (0, 7)
        want = reference_attention(c["q"], c["k"], c["v"], c["u"], lay, c["perturbation"], c["scope"])
        assert (c["res"].double() - want).abs().max() <= TOL_REF


@pytest.mark.parametrize("name", ["sd35", "flux"])
def test_several_headsets_in_one_perturbed_forward_match_the_reference(models, name):
    """Two head sets as two branches in one forward ([cond, cond], chunk i -> branch i): each chunk equals
    its head set alone and the reference engine."""
    p = models[name]
    a = make_headset(p, {SITES[name][0]: {1: 1.0, 3: 0.5}}, name="a")
    b = make_headset(p, {SITES[name][1]: {0: 0.8}, SITES[name][0]: {2: 0.25}}, name="b")
    inputs = env.apply_inputs(p, batch=2)
    base = {"transformer_options": {}}
    both = patch.compile_for(p, [a, b], scope="joint")
    two = {k: torch.cat([v, v]) if torch.is_tensor(v) and v.ndim else v for k, v in inputs.items()}
    base_two = {"transformer_options": {"cond_or_uncond": [0, 1]}}
    out = _forward(p, both, two, {0: (0, 0), 1: (1, 0)}, base_two).chunk(2)
    ref = _forward(p, patch.compile_for(p, [a, b], scope="joint", engine="reference"), two, {0: (0, 0), 1: (1, 0)}, base_two).chunk(2)
    for i, hs in enumerate((a, b)):
        alone = _forward(p, patch.compile_for(p, hs, scope="joint"), inputs, base=base)
        assert (out[i] - alone).abs().max() <= 1e-5
        assert (out[i] - ref[i]).abs().max() <= TOL_REF
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_token_order_is_text_first_in_comfyui(models):
    """Scope "image" leaves the block's text stream bit-identical (a wrong order would perturb it); the
    recorder is an existing patches_replace entry, so this also checks that ours chains to it."""
    p = models["sd3"]
    inputs = env.apply_inputs(p)
    seen = []

    def recorder(args, extra):
        out = extra["original_block"](args)
        seen.append({k: out[k].clone() for k in ("txt", "img")})
        return out

    base = {"transformer_options": {"patches_replace": {"dit": {("double_block", 1): recorder}}}}
    env.run_apply(p, inputs, base)
    hs = make_headset(p, {"transformer_blocks.1.attn": {h: 1.0 for h in range(4)}})
    _forward(p, patch.compile_for(p, hs, perturbation="softpag", scope="image"), inputs, base=base)
    stock, perturbed = seen
    assert torch.equal(perturbed["txt"], stock["txt"])
    assert (perturbed["img"] - stock["img"]).abs().max() > 1e-3


def test_flux_kontext_reference_tokens_count_as_image_tokens(models, monkeypatch):
    """FLUX Kontext: reference latents (`ref_latents`) add tokens after the image tokens. They are image rows
    for the perturbation (docs/comfyui.md, limits): the layout counts them, has no single grid, the result
    still matches the reference engine, and a finite blur (which needs the grid) is one clear ModelError."""
    p = models["flux"]
    inputs = dict(env.apply_inputs(p, batch=1), ref_latents=[torch.randn(1, 16, 4, 6, generator=torch.Generator().manual_seed(3))])
    hs = make_headset(p, {"transformer_blocks.0.attn": {1: 1.0}, "single_transformer_blocks.1.attn": {2: 0.5}})
    spy = Spy(monkeypatch)
    fast = _forward(p, patch.compile_for(p, hs, perturbation="softpag", scope="image"), inputs)
    ref = _forward(p, patch.compile_for(p, hs, perturbation="softpag", scope="image", engine="reference"), inputs)
    assert (fast - ref).abs().max() <= TOL_REF
    assert (fast - env.run_apply(p, inputs)).abs().max() > 1e-3
    assert {(c["layout"].image_len, c["layout"].grid, c["layout"].text_len) for c in spy.calls} == {(24 + 6, None, 7)}
    with pytest.raises(ModelError, match="needs the image grid"):
        _forward(p, patch.compile_for(p, hs, perturbation="blur", params={"sigma": 2.0}), inputs)


# ----- sampling ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_a_comfyui_sampling_run_with_the_nodes_is_guided_and_stock_stays_bit_identical(models, name, tmp_path):
    import comfy.patcher_extension as pe

    p = models[name]
    stock = _sample(p, name)
    site = "single_transformer_blocks.1.attn" if name == "flux" else "transformer_blocks.2.attn"
    path = make_headset(p, {site: {1: 1.0}}, guidance={"scale": 3.0}).save(tmp_path / "hs.safetensors")
    (loaded,) = nodes.HeadHunterLoadHeadSet().load(str(path))
    calls = []

    def watch(executor, *args, **kwargs):  # outside our per-pass wrapper: sees every forward of the run
        calls.append("optimized_attention_override" in args[5])
        return executor(*args, **kwargs)

    watched = p.clone()
    watched.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "watch", watch)
    (guided,) = nodes.HeadHunterApplyHeadSet().apply(watched, loaded)
    out = _sample(guided, name)
    assert (out - stock).abs().max() > 1e-3
    assert calls == [False, True] * 3  # per step: the stock [cond, uncond] forward, then the perturbed one
    assert torch.equal(_sample(p, name), stock)
    assert "sampler_post_cfg_function" not in p.model_options
    assert "optimized_attention_override" not in p.model_options.get("transformer_options", {})


def test_two_patched_models_work_side_by_side_and_stack(models):
    p = models["sd35"]
    stock = _sample(p, "sd35")
    a = make_headset(p, {"transformer_blocks.1.attn": {0: 1.0}}, name="a")
    b = make_headset(p, {"transformer_blocks.0.attn2": {3: 1.0}}, name="b", perturbation={"name": "blur", "params": {"sigma": 1.0}})
    ma, mb = patch.apply_headsets(p, a, scale=3.0), patch.apply_headsets(p, b, scale=2.0)
    mab = patch.apply_headsets(ma, b, scale=2.0)  # stacked: each with its own scale and perturbation
    ra, rb, rs, rab, ra2 = (_sample(m, "sd35") for m in (ma, mb, p, mab, ma))
    assert torch.equal(ra, ra2) and torch.equal(rs, stock)
    assert min((ra - rb).abs().max(), (ra - stock).abs().max(), (rb - stock).abs().max(),
               (rab - ra).abs().max(), (rab - rb).abs().max()) > 1e-3
    assert len(mab.model_options["sampler_post_cfg_function"]) == 2


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_one_euler_step_is_the_paper_combination(models, name):
    """One Euler step from sigma_max to 0 returns the guided denoised prediction: it must equal
    uncond + s (cond - uncond) + w1 (cond - perturbed_1) + w2 (cond - perturbed_2) from single forwards."""
    import comfy.samplers

    p = models[name]
    s, w1, w2 = 2.5, 3.0, 1.5
    a = make_headset(p, {"transformer_blocks.0.attn": {3: 1.0}}, name="a", guidance={"scale": w1})
    b = make_headset(p, {"transformer_blocks.1.attn": {1: 0.5}}, name="b", guidance={"scale": w2})
    plan = patch.compile_for(p, [a, b])
    got = _sample(patch.apply_plan(p, plan), name, steps=1, cfg=s)
    ms = p.get_model_object("model_sampling")
    sigma = float(comfy.samplers.calculate_sigmas(ms, "simple", 1)[0])
    pos, neg = _conds(p, name)
    noise = torch.randn(1, 16, 8, 12, generator=torch.Generator().manual_seed(5))
    x = ms.noise_scaling(torch.tensor([sigma]), noise, torch.zeros_like(noise))

    def call(conds, mo=None):
        n = len(conds)
        kw = dict(x=x.repeat(n, 1, 1, 1), t=torch.full((n,), sigma), c_crossattn=torch.cat([c[0][0] for c in conds]),
                  y=torch.cat([c[0][1]["pooled_output"] for c in conds]))
        if name == "flux":
            kw["guidance"] = torch.full((n,), 3.5)
        return env.run_apply(p, kw, mo)

    c, u = call([pos, neg]).chunk(2)
    pa = call([pos], patch.perturbed_model_options({"transformer_options": {}}, plan, {0: (0, 0)}))
    pb = call([pos], patch.perturbed_model_options({"transformer_options": {}}, plan, {0: (1, 0)}))
    want = p.model.latent_format.process_out(u + s * (c - u) + w1 * (c - pa) + w2 * (c - pb))
    # fp32 rounding of the Euler step and of the sum, on values up to ~40 (FLUX's process_out divides by 0.36);
    # with SDPA (attention_pytorch) a batch of 2 and a batch of 1 also round differently (1.1e-6 relative)
    assert (want - got).abs().max() <= 2e-6 * want.abs().max(), (want - got).abs().max().item()
    batched = _sample(patch.apply_plan(p, plan, mode="batched"), name, steps=1, cfg=s)
    assert (batched - got).abs().max() <= 1e-4


def test_windows_steps_and_sigma(models, monkeypatch):
    p = models["flux"]
    hs = make_headset(p, {"transformer_blocks.0.attn": {0: 1.0}})
    spy = Spy(monkeypatch)
    _sample(patch.apply_headsets(p, hs, scale=3.0, start=0.25, stop=0.75), "flux", steps=4)
    assert len(spy.calls) == 2  # steps 1 and 2 of 4
    spy.calls.clear()
    # window="sigma": percent_to_sigma(stop) < sigma <= percent_to_sigma(start); with the "simple" scheduler
    # sigma_i = percent_to_sigma(i / N), so [0.3, 0.8) guides steps 2 and 3 of 4 (no step sits on a boundary)
    _sample(patch.apply_headsets(p, hs, scale=3.0, start=0.3, stop=0.8, window="sigma"), "flux", steps=4)
    assert len(spy.calls) == 2
    spy.calls.clear()
    ran = _sample(patch.apply_headsets(p, hs, scale=3.0, start=0.5, stop=0.5), "flux", steps=4)  # empty window
    assert not spy.calls and torch.equal(ran, _sample(p, "flux", steps=4))
    sig = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    assert [patch.step_index(v, sig) for v in (1.0, 0.9, 0.75, 0.6, 0.25, 0.1)] == [
        (0, 4), (0, 4), (1, 4), (1, 4), (3, 4), (3, 4)]


def test_a_scheduled_headset_switches_heads_with_the_noise_level(models, monkeypatch):
    """Format 2.0: head set A acts for sigma in [0.5, 1], B for [0, 0.5). Every perturbed forward of a ComfyUI
    run uses A's strengths when its step starts at sigma >= 0.5 and B's below, read at the step's sigma."""
    import comfy.patcher_extension as pe

    p = models["flux"]
    a = make_headset(p, {"transformer_blocks.0.attn": {0: 1.0}}, name="a")
    b = make_headset(p, {"transformer_blocks.0.attn": {1: 0.5}}, name="b")
    hs = HeadSet.from_schedule([((0.0, 0.5), b), ((0.5, 1.0), a)], name="ab")
    assert hs.scheduled and patch.compile_for(p, hs).scheduled
    spy = Spy(monkeypatch)
    sigmas = []

    def watch(executor, *args, **kwargs):
        if "optimized_attention_override" in args[5]:
            sigmas.append(float(args[1][0]))
        return executor(*args, **kwargs)

    m = patch.apply_headsets(p, hs, scale=3.0)
    m.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "watch", watch)
    _sample(m, "flux", steps=6)
    used = [tuple(c["u"][0].tolist()) for c in spy.calls]
    assert len(used) == len(sigmas) == 6
    assert used == [(1.0, 0.0, 0.0, 0.0) if sg >= 0.5 else (0.0, 0.5, 0.0, 0.0) for sg in sigmas]
    assert set(used) == {(1.0, 0.0, 0.0, 0.0), (0.0, 0.5, 0.0, 0.0)}
    full = patch.with_strength(hs, 1.0)  # the strength override keeps the schedule
    assert full.intervals == hs.intervals and full.at(0.2).strengths() == {"transformer_blocks.0.attn": {1: 1.0}}


# ----- the same numbers as diffusers ------------------------------------------------------------------------
def _diffusers_model(p, name):
    import comfy_diffusers as bridge

    return bridge.diffusers_flux(p) if name == "flux" else bridge.diffusers_sd3(p)


def _diffusers_velocity(dz, name, x, context, pooled, sigma, guidance=3.5):
    import comfy_diffusers as bridge

    B = x.shape[0]
    with torch.no_grad():
        if name == "flux":
            H, W = x.shape[-2:]
            img_ids, txt_ids = bridge.flux_ids(H, W, context.shape[1])
            out = dz(hidden_states=bridge.pack_flux_latent(x), encoder_hidden_states=context, pooled_projections=pooled,
                     timestep=torch.full((B,), sigma), img_ids=img_ids, txt_ids=txt_ids,
                     guidance=torch.full((B,), guidance), return_dict=False)[0]
            return bridge.unpack_flux_latent(out, H, W)
        return dz(hidden_states=x, encoder_hidden_states=context, pooled_projections=pooled,
                  timestep=torch.full((B,), sigma * 1000.0), return_dict=False)[0]


@pytest.mark.parametrize("name,pert,scope", [("sd3", "softpag", "image"), ("sd35", "identity", "pag_mask"),
                                             ("flux", "blur", "joint"), ("flux", "softpag", "image")])
def test_one_guided_step_matches_diffusers(models, name, pert, scope):
    """The same random weights in diffusers (ComfyUI's own key maps, strict load), the same head set applied
    there with the project's diffusers engine (install + set_strengths): one guided Euler step of ComfyUI's
    sampler with the apply node equals uncond + s (cond - uncond) + w (cond - perturbed) from diffusers."""
    from headhunter.engine.attention import install
    from headhunter.plugin_system.registry import get_registry

    p = models[name]
    s, w = 2.0, 3.0
    params = {"sigma": 1.5} if pert == "blur" else {}
    hs = make_headset(p, {site: {1: 1.0, 2: 0.5} for site in SITES[name]},
                      perturbation={"name": pert, "params": params}, guidance={"scale": w, "scope": scope})
    (guided,) = nodes.HeadHunterApplyHeadSet().apply(p, nodes.HeadSetList([hs]))
    got = _sample(guided, name, steps=1, cfg=s)
    stock = _sample(p, name, steps=1, cfg=s)

    dz = _diffusers_model(p, name)
    pos, neg = _conds(p, name)
    x = torch.randn(1, 16, 8, 12, generator=torch.Generator().manual_seed(5))  # sigma_max = 1: x is the noise
    v_c = _diffusers_velocity(dz, name, x, pos[0][0], pos[0][1]["pooled_output"], 1.0)
    v_u = _diffusers_velocity(dz, name, x, neg[0][0], neg[0][1]["pooled_output"], 1.0)
    reg = get_registry()
    with install(reg.adapter_for(dz), dz, reg.perturbation(pert, **params), scope) as inst_:
        inst_.set_strengths(inst_.batch_strengths([hs]))
        v_p = _diffusers_velocity(dz, name, x, pos[0][0], pos[0][1]["pooled_output"], 1.0)
    v = v_u + s * (v_c - v_u) + w * (v_c - v_p)
    want = p.model.latent_format.process_out(x - 1.0 * v)
    assert (got - stock).abs().max() > 1e-2
    assert (got - want).abs().max() <= TOL_DIFFUSERS, (got - want).abs().max().item()


def _guided_sigmas_comfyui(model, name, steps, scheduler):
    import comfy.patcher_extension as pe

    seen = []

    def watch(executor, *args, **kwargs):
        if "optimized_attention_override" in args[5]:
            seen.append(float(args[1][0]))
        return executor(*args, **kwargs)

    watched = model.clone()
    watched.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "watch", watch)
    return watched, seen


@pytest.mark.parametrize("how", ["window", "schedule"])
@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_a_window_guides_the_same_steps_as_diffusers(models, name, how):
    """Window [0.25, 0.75) of 8 steps (or a format-2.0 schedule: heads only for sigma in [0, 0.5)), the same
    sampling schedule on both sides (SD3: diffusers' default FlowMatchEulerDiscreteScheduler(shift=3) ==
    ComfyUI "normal"; FLUX: the pipeline's dynamic shift mu == ComfyUI "simple" on ModelSamplingFlux(shift=mu)):
    the sigmas of the guided steps agree, and for the window they are steps 2-5, as headhunter.apply guides
    them in a diffusers pipeline."""
    import comfy.model_sampling
    import headhunter
    from diffusers import FlowMatchEulerDiscreteScheduler
    from headhunter.plugin_system.registry import get_registry
    from tiny_pipes import FLUX_CALL, SD3_CALL, build_flux, build_sd3

    steps, start, stop = 8, 0.25, 0.75
    pipe = build_sd3() if name == "sd3" else build_flux(num_heads=2)
    if name == "flux":  # FLUX.1-dev's scheduler configuration
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                         max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    adapter = get_registry().adapter_for(pipe)
    pipe_hs = HeadSet.from_notation("L0H1", sites=adapter.sites(pipe), architecture=adapter.architecture)
    if how == "schedule":
        start, stop, pipe_hs = 0.0, 1.0, pipe_hs.restricted(0.0, 0.5)
    record = []

    def pre(module, args, kwargs):
        t = float(kwargs["timestep"].flatten()[0])
        record.append((t / 1000.0 if name == "sd3" else t, kwargs["hidden_states"].shape[0], kwargs["hidden_states"].shape[1]))

    handle = pipe.transformer.register_forward_pre_hook(pre, with_kwargs=True)
    with headhunter.apply(pipe, pipe_hs, scale=3.0, start=start, stop=stop):
        pipe("a", num_inference_steps=steps, guidance_scale=2.0, generator=torch.Generator().manual_seed(0),
             output_type="latent", **(SD3_CALL if name == "sd3" else FLUX_CALL))
    handle.remove()
    plain = min(r[1] for r in record)
    diffusers_guided = [i for i, r in enumerate(record) if r[1] > plain]
    diffusers_sigmas = [r[0] for r in record if r[1] > plain]
    if how == "window":
        assert diffusers_guided == [2, 3, 4, 5]
    else:
        assert 0 < len(diffusers_guided) < steps
        assert all(r[0] < 0.5 for r in record if r[1] > plain) and min(abs(r[0] - 0.5) for r in record) > 1e-3

    p = models[name]
    if name == "flux":
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        cfg = pipe.scheduler.config
        mu = calculate_shift(record[0][2], cfg.base_image_seq_len, cfg.max_image_seq_len, cfg.base_shift, cfg.max_shift)
        class Sampling(comfy.model_sampling.ModelSamplingFlux, comfy.model_sampling.CONST):  # as ComfyUI's ModelSamplingFlux node
            pass

        ms = Sampling(p.model.model_config)
        ms.set_parameters(shift=mu)
        p = p.clone()
        p.add_object_patch("model_sampling", ms)
    hs = make_headset(p, {"transformer_blocks.0.attn": {1: 1.0}})
    if how == "schedule":
        hs = hs.restricted(0.0, 0.5)
        assert hs.scheduled
    watched, seen = _guided_sigmas_comfyui(patch.apply_headsets(p, hs, scale=3.0, start=start, stop=stop), name, steps, None)
    _sample(watched, name, steps=steps, scheduler="normal" if name == "sd3" else "simple")
    assert len(seen) == len(diffusers_guided)
    assert max(abs(a - b) for a, b in zip(seen, diffusers_sigmas)) <= 2e-4, (seen, diffusers_sigmas)


# ----- wrong models, bad parameters: one clear error ----------------------------------------------------------
def test_a_headset_for_another_model_is_refused_naming_both(models):
    flux_hs = make_headset(models["flux"], {"single_transformer_blocks.0.attn": {0: 1.0}}, name="fluxy")
    with pytest.raises(HeadSetError) as err:
        nodes.HeadHunterApplyHeadSet().apply(models["sd3"], nodes.HeadSetList([flux_hs]))
    msg = str(err.value)
    assert "'fluxy' was made for flux" in msg and "this ComfyUI MODEL is sd3" in msg and "joint_blocks.0" in msg
    big = HeadSet.from_notation("L20H3", base_model="stabilityai/stable-diffusion-3-medium-diffusers", name="medium")
    with pytest.raises(HeadSetError, match=r"'medium' \(made for sd3 \(stabilityai/stable-diffusion-3-medium-diffusers: "
                                           r"24 sites.*perturbs site 'transformer_blocks.20.attn'.*4 sites"):
        patch.compile_for(models["sd3"], big)
    small = HeadSet.from_notation("L0H3", base_model="stabilityai/stable-diffusion-3-medium-diffusers", name="medium")
    with pytest.raises(HeadSetError, match=r"24 heads at 'transformer_blocks.0.attn'; this ComfyUI MODEL has 4 there \(joint_blocks.0\)"):
        patch.compile_for(models["sd3"], small)
    with pytest.raises(ModelError, match="torch.nn.modules.linear.Linear.*guide comfy.ldm.modules"):
        patch.compile_for(torch.nn.Linear(2, 2), small)


@pytest.mark.parametrize("settings,error,match", [
    ({"scale": -2.0}, HeadSetError, r"scale=-2.0.*allowed: \[0, inf\)"),
    ({"start": 0.8, "stop": 0.2}, HeadSetError, "start=0.8 is after stop=0.2"),
    ({"stop": 1.5}, HeadSetError, r"stop=1.5.*allowed: \[0, 1\]"),
    ({"strength": 1.5}, HeadSetError, r"strength 1.5 out of range; allowed: \(0, 1\]"),
    ({"scope": "text"}, HeadSetError, "scope='text'.*allowed: 'joint', 'image', 'pag_mask'"),
    ({"perturbation": "bogus"}, PluginError, "bogus"),
    ({"perturbation": "blur", "params": {"sigma": -1}}, PluginError, r"sigma=-1.*greater than 0"),
    ({"perturbation": "softpag", "params": {"sigma": 1}}, PluginError, "sigma"),
    ({"perturbation": "uniform", "scope": "pag_mask"}, PluginError, "does not define scope 'pag_mask'"),
    ({"window": "bogus"}, HeadSetError, "window 'bogus'; allowed: steps, sigma"),
    ({"mode": "bogus"}, HeadSetError, "mode 'bogus'; allowed: sequential, batched"),
])
def test_bad_parameters_give_one_clear_error(models, settings, error, match):
    p = models["sd3"]
    hs = make_headset(p, {"transformer_blocks.0.attn": {1: 1.0}})
    with pytest.raises(error, match=match) as err:
        patch.apply_headsets(p, hs, **settings)
    assert isinstance(err.value, HeadhunterError)
    assert "sampler_post_cfg_function" not in p.model_options


def test_node_widgets_and_combine(models):
    p = models["sd3"]
    a = make_headset(p, {"transformer_blocks.0.attn": {1: 1.0}}, name="a", perturbation={"name": "blur", "params": {"sigma": 2.0}})
    b = make_headset(p, {"transformer_blocks.0.attn": {1: 0.5, 2: 1.0}}, name="b")
    (sep,) = nodes.HeadHunterCombineHeadSets().combine(nodes.HeadSetList([a]), nodes.HeadSetList([b]), "separate")
    assert [hs.name for hs in sep] == ["a", "b"]
    (merged,) = nodes.HeadHunterCombineHeadSets().combine(nodes.HeadSetList([a]), nodes.HeadSetList([b]), "merge-max")
    assert len(merged) == 1 and merged[0].strengths() == {"transformer_blocks.0.attn": {1: 1.0, 2: 1.0}}
    with pytest.raises(HeadSetError, match="different perturbation"):  # a is blur, b softpag
        nodes.HeadHunterApplyHeadSet().apply(p, sep)
    (m,) = nodes.HeadHunterApplyHeadSet().apply(p, sep, perturbation="softpag", scale=2.0)
    assert len(m.model_options["sampler_post_cfg_function"]) == 1  # one function, two branches
    (m0,) = nodes.HeadHunterApplyHeadSet().apply(p, sep, perturbation="softpag", strength=0.0)
    assert "sampler_post_cfg_function" not in m0.model_options  # u = 0 everywhere: nothing installed
    (mp,) = nodes.HeadHunterApplyHeadSet().apply(p, nodes.HeadSetList([a]), params='{"sigma": 3}')
    plan = patch.compile_for(p, a, perturbation="blur", params={"sigma": 3})
    assert plan.perturbation.params.sigma == 3.0
    with pytest.raises(HeadSetError, match="connect the output"):
        nodes.HeadHunterApplyHeadSet().apply(p, "preset:x")


# ----- full-size site tables and the shipped presets --------------------------------------------------------
def _full_size(arch):
    import comfy.ldm.flux.model
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit
    import comfy.ops

    meta = torch.device("meta")
    if arch == "sd3":
        return mmdit.OpenAISignatureMMDITWrapper(
            in_channels=16, out_channels=16, patch_size=2, depth=24, input_size=None, adm_in_channels=2048,
            context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 1536}},
            num_patches=192 * 192, pos_embed_max_size=192, pos_embed_scaling_factor=None, x_block_self_attn_layers=[],
            device=meta, dtype=torch.float16, operations=comfy.ops.disable_weight_init)
    return comfy.ldm.flux.model.Flux(
        image_model="flux", in_channels=16, out_channels=16, patch_size=2, vec_in_dim=768, context_in_dim=4096,
        hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=19, depth_single_blocks=38, axes_dim=[16, 56, 56],
        theta=10000, qkv_bias=True, guidance_embed=True, device=meta, dtype=torch.float16,
        operations=comfy.ops.disable_weight_init)


def test_full_size_models_have_the_published_sites_and_every_preset_compiles(comfy):
    from headhunter.format.presets import list_presets, load_preset
    from headhunter.plugin_system.registry import get_registry

    reg = get_registry()
    dms = {"sd3": _full_size("sd3"), "flux": _full_size("flux")}
    published = {"sd3": "stabilityai/stable-diffusion-3-medium-diffusers", "flux": "black-forest-labs/FLUX.1-dev"}
    for arch, dm in dms.items():
        table = csites.comfy_sites(dm)
        assert [s.site for s in table] == list(reg.base_model(published[arch]).sites)
    table = csites.comfy_sites(dms["flux"])
    assert table[19].name == "single_transformer_blocks.0.attn" and table[19].block == ("single_block", 0)
    compiled = 0
    for preset in list_presets():
        hs = load_preset(preset.name)
        if hs.metadata.base_model in published.values():
            plan = patch.compile_for(dms[hs.metadata.architecture], hs)
            assert plan.entries
            compiled += 1
    assert compiled >= 2
